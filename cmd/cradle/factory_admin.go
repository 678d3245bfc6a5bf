package main

import (
	"fmt"
	"io"
	"strconv"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/httpapi"

	"github.com/spf13/cobra"
)

// factoryCmd is `cradle factory`: the operator's side of the factory
// (batches, the MAC pool, the stations enrolled), clients of the API.
// The commands that run on a station itself (station enroll, provision,
// sync) are attached to the command this returns and to its station
// subcommand by the station's own files.
func (a *app) factoryCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "factory",
		Short: "Production batches, the MAC pool, factory stations, and provisioning units at a station",
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.factoryBatchCmd(), a.factoryMACRangeCmd(), a.factoryStationCmd())
	cmd.AddCommand(a.factoryStationCmds()...)
	return cmd
}

func (a *app) factoryBatchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "batch",
		Short: "Create, list, show and export production batches",
	}
	cmd.AddCommand(a.batchCreateCmd(), a.batchListCmd(), a.batchShowCmd(), a.batchExportCmd())
	return cmd
}

func (a *app) batchCreateCmd() *cobra.Command {
	var (
		c        cradle.BatchCreate
		profile  string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "create --id ID --model MODEL --hw-rev REV --quantity N --firmware VERSION --profile test|production --serial-pattern PATTERN",
		Short: "Create a production batch",
		Long: `Create a production batch: a quantity of units of one model and hardware
revision, built with one firmware release under one profile. The profile must be
the server PKI's (a test batch belongs on a test deployment). Units get serials
from the pattern: literal text around {seq} or {seq:N}, the unit's number in the
batch from 1, zero-padded to N digits.`,
		Example: `  cradle factory batch create --id B-2648 --model gw-100 --hw-rev c --quantity 100 \
      --firmware 2.1.0 --profile production --serial-pattern 'CR-2648-{seq:05}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.Profile = cradle.Profile(profile)
			if err := c.Validate(); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			b, err := cl.CreateBatch(cmd.Context(), c)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, b)
			}
			return writeBatch(a.stdout, b)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.ID, "id", "", "batch id (required)")
	f.StringVar(&c.Model, "model", "", "model (required)")
	f.StringVar(&c.HardwareRevision, "hw-rev", "", "hardware revision (required)")
	f.IntVar(&c.Quantity, "quantity", 0, "number of good units to build (required)")
	f.StringVar(&c.FirmwareVersion, "firmware", "", "firmware release written at the factory (required)")
	f.StringVar(&profile, "profile", "", "test or production: the server PKI's (required)")
	f.StringVar(&c.SerialPattern, "serial-pattern", "", "serial pattern, e.g. 'CR-2648-{seq:05}' (required)")
	f.BoolVar(&jsonFlag, "json", false, "print the batch as JSON")
	for _, n := range []string{"id", "model", "hw-rev", "quantity", "firmware", "profile", "serial-pattern"} {
		cmd.MarkFlagRequired(n)
	}
	cmd.RegisterFlagCompletionFunc("profile", cobra.FixedCompletions([]string{"test", "production"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// batchList is the API's listing object, and --json's output.
type batchList struct {
	Batches    []*cradle.Batch `json:"batches"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

func (a *app) batchListCmd() *cobra.Command {
	var (
		cursor        string
		limit         int
		all, jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List batches, newest first, one page at a time or --all",
		Example: `  cradle factory batch list --all --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out batchList
			out.Batches, out.NextCursor, err = collectPages(cursor, all, func(cursor string) ([]*cradle.Batch, string, error) {
				return cl.Batches(cmd.Context(), cursor, limit)
			})
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, out)
			}
			t := newTable(a.stdout, "ID", "MODEL", "REV", "FIRMWARE", "PROFILE", "QUANTITY", "PROVISIONED", "FAILED", "OPEN", "CREATED")
			for _, b := range out.Batches {
				t.row(b.ID, b.Model, b.HardwareRevision, b.FirmwareVersion, string(b.Profile), strconv.Itoa(b.Quantity),
					strconv.Itoa(b.Provisioned), strconv.Itoa(b.Failed), strconv.Itoa(b.Open()), formatTime(b.CreatedAt))
			}
			if err := t.flush(); err != nil {
				return err
			}
			if out.NextCursor != "" {
				fmt.Fprintf(a.stderr, "more batches: --cursor %s, or --all\n", out.NextCursor)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cursor, "cursor", "", "continue after the page that printed this cursor")
	f.IntVar(&limit, "limit", 0, fmt.Sprintf("page size, 1 to %d (default %d)", cradle.MaxPageSize, cradle.DefaultPageSize))
	f.BoolVar(&all, "all", false, "fetch every page")
	f.BoolVar(&jsonFlag, "json", false, "print JSON")
	return cmd
}

func (a *app) batchShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a batch and its counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			b, err := cl.Batch(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, b)
			}
			return writeBatch(a.stdout, b)
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the batch as JSON")
	return cmd
}

// writeBatch writes one batch as aligned "field: value" lines.
func writeBatch(w io.Writer, b *cradle.Batch) error {
	t := newTable(w)
	t.row("id:", b.ID)
	t.row("model:", b.Model)
	t.row("hardware revision:", b.HardwareRevision)
	t.row("firmware:", b.FirmwareVersion)
	t.row("profile:", string(b.Profile))
	t.row("serial pattern:", b.SerialPattern)
	t.row("quantity:", strconv.Itoa(b.Quantity))
	t.row("allocated:", strconv.Itoa(b.Allocated))
	t.row("provisioned:", strconv.Itoa(b.Provisioned))
	t.row("failed:", strconv.Itoa(b.Failed))
	t.row("open:", strconv.Itoa(b.Open()))
	t.row("created:", formatTime(b.CreatedAt)+" by "+b.CreatedBy)
	return t.flush()
}

func (a *app) batchExportCmd() *cobra.Command {
	var format, output string
	cmd := &cobra.Command{
		Use:   "export ID [--format csv|json] [-o FILE]",
		Short: "Export a batch's trace records as CSV or JSON for MES and ERP systems",
		Long: `Export the trace record of every unit of a batch, in the order received.

CSV (RFC 4180) has a header row and one row per record: batch, serial, mac,
hardware_uid, status, failed_step, reason, station, operator, profile, model,
hardware_revision, started_at, finished_at (RFC 3339), firmware_version,
firmware_digest, bootloader_digest, idevid_serial, idevid_fingerprint, one
fuse_<field> column per fuse (secure_boot, debug_lock, image_key_hash, lifecycle,
anti_rollback), and tests (name=pass|fail, separated by ';'). A cell that a
spreadsheet would run as a formula (starting with =, +, -, @, a tab or a carriage
return) is written with a leading single quote, as spreadsheet exports do.

JSON is an array of the records as the stations signed them.

With -o the export goes to FILE, which appears only once it is complete.`,
		Example: `  cradle factory batch export B-2648 --format csv -o B-2648.csv
  cradle factory batch export B-2648 --format json | jq '.[] | select(.status=="failed")'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != httpapi.ExportCSV && format != httpapi.ExportJSON {
				return fmt.Errorf("invalid --format %q: use csv or json", format)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				return cl.ExportBatch(cmd.Context(), args[0], format, a.stdout)
			}
			return atomicfile.Write(output, 0o644, func(w io.Writer) error {
				return cl.ExportBatch(cmd.Context(), args[0], format, w)
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", httpapi.ExportCSV, "csv or json")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to FILE instead of stdout")
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"csv", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func (a *app) factoryMACRangeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mac-range",
		Short: "Add and list the blocks of MAC addresses that stations give units",
	}
	var jsonAdd, jsonList bool
	add := &cobra.Command{
		Use:   "add FIRST-LAST",
		Short: "Add a block of EUI-48 addresses (first and last included) to the pool",
		Long: `Add a block of EUI-48 addresses that the tenant owns (an IEEE assignment, or a
locally administered block) to the pool stations take MAC addresses from. An
address is handed out once, never again, not even after the unit failed.`,
		Example: `  cradle factory mac-range add 02:00:5e:10:00:00-02:00:5e:10:ff:ff`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			first, last, err := parseMACRange(args[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			m, err := cl.AddMACRange(cmd.Context(), first, last)
			if err != nil {
				return err
			}
			if jsonAdd {
				return writeJSON(a.stdout, m)
			}
			noun := "addresses"
			if macCount(m) == 1 {
				noun = "address"
			}
			_, err = fmt.Fprintf(a.stdout, "added %s-%s (%d %s)\n", m.First, m.Last, macCount(m), noun)
			return err
		},
	}
	add.Flags().BoolVar(&jsonAdd, "json", false, "print the block as JSON")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the pool's blocks and how much of each is used",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			ms, err := cl.MACRanges(cmd.Context())
			if err != nil {
				return err
			}
			if ms == nil {
				ms = []*cradle.MACRange{}
			}
			if jsonList {
				return writeJSON(a.stdout, httpapi.MACRangeList{MACRanges: ms})
			}
			t := newTable(a.stdout, "FIRST", "LAST", "SIZE", "USED", "FREE")
			for _, m := range ms {
				n := macCount(m)
				t.row(m.First, m.Last, strconv.FormatInt(n, 10), strconv.FormatInt(m.Used, 10), strconv.FormatInt(n-m.Used, 10))
			}
			return t.flush()
		},
	}
	list.Flags().BoolVar(&jsonList, "json", false, "print JSON")
	cmd.AddCommand(add, list)
	return cmd
}

// parseMACRange splits FIRST-LAST. MAC addresses may be written with
// '-' too (AA-BB-…), so the split is at the '-' that leaves two valid
// addresses.
func parseMACRange(s string) (first, last string, err error) {
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			continue
		}
		if _, err1 := cradle.ParseMAC(s[:i]); err1 == nil {
			if _, err2 := cradle.ParseMAC(s[i+1:]); err2 == nil {
				return s[:i], s[i+1:], nil
			}
		}
	}
	return "", "", fmt.Errorf("invalid MAC range %q: write FIRST-LAST, e.g. 02:00:5e:10:00:00-02:00:5e:10:ff:ff", s)
}

func macCount(m *cradle.MACRange) int64 {
	lo, err1 := cradle.ParseMAC(m.First)
	hi, err2 := cradle.ParseMAC(m.Last)
	if err1 != nil || err2 != nil || hi < lo {
		return 0
	}
	return int64(hi-lo) + 1
}

func (a *app) factoryStationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "station",
		Short: "Enroll this station; list and show the factory stations enrolled",
	}
	cmd.AddCommand(a.factoryStationEnrollCmd())
	var jsonList, jsonShow bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the enrolled factory stations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			sts, err := cl.Stations(cmd.Context())
			if err != nil {
				return err
			}
			if sts == nil {
				sts = []*cradle.Station{}
			}
			if jsonList {
				return writeJSON(a.stdout, httpapi.StationList{Stations: sts})
			}
			t := newTable(a.stdout, "NAME", "PROFILE", "CERTIFICATE", "ENROLLED", "BY")
			for _, s := range sts {
				t.row(s.Name, string(s.Profile), s.CertSerial, formatTime(s.EnrolledAt), s.EnrolledBy)
			}
			return t.flush()
		},
	}
	list.Flags().BoolVar(&jsonList, "json", false, "print JSON")
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a factory station",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			s, err := cl.Station(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonShow {
				return writeJSON(a.stdout, s)
			}
			return writeStation(a.stdout, s)
		},
	}
	show.Flags().BoolVar(&jsonShow, "json", false, "print the station as JSON")
	cmd.AddCommand(list, show)
	return cmd
}

func writeStation(w io.Writer, s *cradle.Station) error {
	t := newTable(w)
	t.row("name:", s.Name)
	t.row("profile:", string(s.Profile))
	t.row("certificate serial:", s.CertSerial)
	t.row("fingerprint:", s.Fingerprint)
	t.row("enrolled:", formatTime(s.EnrolledAt)+" by "+s.EnrolledBy)
	t.row("api token:", orDash(s.TokenID))
	return t.flush()
}
