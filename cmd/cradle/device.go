package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"cradle"

	"github.com/spf13/cobra"
)

func (a *app) deviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Register, list, label and move devices through their lifecycle",
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.deviceCreateCmd(), a.deviceListCmd(), a.deviceShowCmd(), a.deviceLabelCmd(),
		a.deviceTransitionCmd(), a.deviceImportCmd(), a.deviceTraceCmd(), a.deviceConfigCmd(),
		a.deviceClaimCmd(), a.deviceTelemetryCmd(), a.deviceStatusCmd(), a.deviceCommandCmd(), a.deviceCommandsCmd(),
		a.deviceMenderCmd(), a.deviceTokenCmd(), a.deviceAttributesCmd(), a.deviceLogsCmd(), a.deviceRevokeCmd(),
		a.deviceDecommissionCmd())
	return cmd
}

func (a *app) deviceCreateCmd() *cobra.Command {
	var (
		c        cradle.DeviceCreate
		labels   []string
		state    string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "create --serial SERIAL --model MODEL",
		Short: "Register a device",
		Example: `  cradle device create --serial SN-0001 --model gw-100 --mac 02:00:5e:10:00:01 --label site=berlin
  cradle device create --serial SN-0002 --model gw-100 --state provisioned`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, remove, err := parseLabelChanges(labels)
			if err != nil {
				return err
			}
			if len(remove) > 0 {
				return fmt.Errorf("--label %s-: removing a label makes no sense on create; use key=value", remove[0])
			}
			c.Labels = set
			c.State = cradle.State(state)
			cl, err := a.client()
			if err != nil {
				return err
			}
			d, err := cl.CreateDevice(cmd.Context(), c)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, d)
			}
			return writeDevice(a.stdout, d)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Serial, "serial", "", "serial number (required)")
	f.StringVar(&c.Model, "model", "", "model (required)")
	f.StringVar(&c.HardwareUID, "hardware-uid", "", "hardware unique id")
	f.StringVar(&c.HardwareRevision, "hardware-revision", "", "hardware revision")
	f.StringArrayVar(&c.MACs, "mac", nil, "MAC address (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.StringVar(&state, "state", "", "initial state: factory (default) or provisioned")
	f.BoolVar(&jsonFlag, "json", false, "print the device as JSON")
	cmd.MarkFlagRequired("serial")
	cmd.MarkFlagRequired("model")
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{"factory", "provisioned"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// deviceList is the API's listing object, and --json's output.
type deviceList struct {
	Devices    []*cradle.Device `json:"devices"`
	NextCursor string           `json:"next_cursor,omitempty"`
}

func (a *app) deviceListCmd() *cobra.Command {
	var (
		state, model, protocol, prefix, selector, cursor string
		limit                                            int
		all, jsonFlag                                    bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices, one page at a time or --all",
		Example: `  cradle device list --state deployed --selector 'site=berlin,tier in (edge,core)'
  cradle device list --all --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			f := cradle.DeviceFilter{Cursor: cursor, Limit: limit}
			if state != "" {
				st, err := cradle.ParseState(state)
				if err != nil {
					return err
				}
				f.State = &st
			}
			if model != "" {
				f.Model = &model
			}
			if protocol != "" {
				p := cradle.Protocol(protocol)
				if !slices.Contains(cradle.Protocols, p) {
					return fmt.Errorf("unknown --protocol %q; use cradle, mender or hawkbit", protocol)
				}
				f.Protocol = &p
			}
			if prefix != "" {
				f.SerialPrefix = &prefix
			}
			if selector != "" {
				sel, err := cradle.ParseLabelSelector(selector)
				if err != nil {
					return err
				}
				f.Selector = sel
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out deviceList
			out.Devices, out.NextCursor, err = collectPages(f.Cursor, all, func(cursor string) ([]*cradle.Device, string, error) {
				f.Cursor = cursor
				return cl.FindDevices(cmd.Context(), f)
			})
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, out)
			}
			t := newTable(a.stdout, "SERIAL", "MODEL", "STATE", "PROTOCOL", "LABELS", "UPDATED")
			for _, d := range out.Devices {
				t.row(d.Serial, d.Model, string(d.State), orDash(string(d.Protocol)), formatLabels(d.Labels), formatTime(d.UpdatedAt))
			}
			if err := t.flush(); err != nil {
				return err
			}
			if out.NextCursor != "" {
				fmt.Fprintf(a.stderr, "more devices: add --cursor %s for the next page, or --all\n", out.NextCursor)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&state, "state", "", "only devices in this lifecycle state")
	fl.StringVar(&model, "model", "", "only devices of this model")
	fl.StringVar(&protocol, "protocol", "", "only devices that talk this protocol: cradle, mender or hawkbit")
	fl.StringVar(&prefix, "serial-prefix", "", "only serials starting with this")
	fl.StringVar(&selector, "selector", "", "label selector, e.g. 'env=prod,site in (a,b),!retired'")
	fl.IntVar(&limit, "limit", 0, fmt.Sprintf("page size (default %d, at most %d)", cradle.DefaultPageSize, cradle.MaxPageSize))
	fl.StringVar(&cursor, "cursor", "", "continue where a previous page ended")
	fl.BoolVar(&all, "all", false, "follow the cursor to the last page")
	fl.BoolVar(&jsonFlag, "json", false, `print {"devices":[…],"next_cursor":"…"}`)
	cmd.RegisterFlagCompletionFunc("state", completeStates)
	cmd.RegisterFlagCompletionFunc("protocol", cobra.FixedCompletions([]string{"cradle", "mender", "hawkbit"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// deviceDetail is `device show --json`: the device and its lifecycle
// history, each as the API returns it.
type deviceDetail struct {
	Device      *cradle.Device        `json:"device"`
	Transitions []*cradle.StateChange `json:"transitions"`
}

func (a *app) deviceShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show SERIAL",
		Short: "Show a device and its lifecycle history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			d, err := cl.FindDeviceBySerial(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			hist, err := cl.FindDeviceHistory(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if hist == nil {
				hist = []*cradle.StateChange{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, deviceDetail{Device: d, Transitions: hist})
			}
			if err := writeDevice(a.stdout, d); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout)
			t := newTable(a.stdout, "SEQ", "AT", "FROM", "TO", "ACTOR", "REASON")
			for _, h := range hist {
				t.row(strconv.FormatInt(h.Seq, 10), formatTime(h.At), orDash(string(h.From)), string(h.To), h.Actor, orDash(h.Reason))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"device":{…},"transitions":[…]}`)
	return cmd
}

// parseLabelChanges reads kubectl-style label arguments: key=value sets a
// label, key- removes one.
func parseLabelChanges(args []string) (set map[string]string, remove []string, err error) {
	set = map[string]string{}
	for _, arg := range args {
		if k, v, ok := strings.Cut(arg, "="); ok {
			if k == "" {
				return nil, nil, fmt.Errorf("label %q has no key; use key=value", arg)
			}
			if _, dup := set[k]; dup {
				return nil, nil, fmt.Errorf("label %q is given twice", k)
			}
			set[k] = v
			continue
		}
		if k, ok := strings.CutSuffix(arg, "-"); ok && k != "" {
			remove = append(remove, k)
			continue
		}
		return nil, nil, fmt.Errorf("label change %q: use key=value to set a label or key- to remove it", arg)
	}
	return set, remove, nil
}

func (a *app) deviceLabelCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "label SERIAL key=value… key-…",
		Short: "Set (key=value) and remove (key-) labels of a device",
		Example: `  cradle device label SN-0001 env=prod site=berlin
  cradle device label SN-0001 site-`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, remove, err := parseLabelChanges(args[1:])
			if err != nil {
				return err
			}
			u := cradle.DeviceUpdate{SetLabels: set, RemoveLabels: remove}
			if len(set) == 0 {
				u.SetLabels = nil
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			d, err := cl.UpdateDevice(cmd.Context(), args[0], u)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, d)
			}
			return writeDevice(a.stdout, d)
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the device as JSON")
	return cmd
}

func (a *app) deviceTransitionCmd() *cobra.Command {
	var (
		reason   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "transition SERIAL STATE",
		Short: "Move a device to another lifecycle state",
		Long: `Move a device to another lifecycle state. The lifecycle table decides which moves
each role may make; a refused move names the moves that are allowed.

States: factory, provisioned, deployed, suspended, rma, eol (final).

A device reaches eol only through decommissioning (cradle device decommission
SERIAL --reason R), which revokes its credentials and sends it the signed wipe:
a plain move to eol is refused, from every state.`,
		Example: `  cradle device transition SN-0001 provisioned --reason "passed end-of-line test"`,
		Args:    cobra.ExactArgs(2),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return stateNames(), cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			d, err := cl.TransitionDevice(cmd.Context(), args[0], cradle.DeviceTransition{To: cradle.State(args[1]), Reason: reason})
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, d)
			}
			return writeDevice(a.stdout, d)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the history and the audit log)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the device as JSON")
	return cmd
}

// importFormatOf picks the import format from a flag or the file name.
func importFormatOf(flag, name string) (cradle.ImportFormat, error) {
	switch flag {
	case "csv":
		return cradle.ImportCSV, nil
	case "jsonl":
		return cradle.ImportJSONL, nil
	case "":
	default:
		return "", fmt.Errorf("unknown import format %q; use --format csv or --format jsonl", flag)
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".csv":
		return cradle.ImportCSV, nil
	case ".jsonl", ".ndjson":
		return cradle.ImportJSONL, nil
	}
	if name == "-" {
		return "", errors.New("reading from stdin: say the format with --format csv or --format jsonl")
	}
	return "", fmt.Errorf("cannot tell the format of %s from its extension (.csv, .jsonl, .ndjson); use --format csv or --format jsonl", name)
}

func (a *app) deviceImportCmd() *cobra.Command {
	var (
		format   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "import FILE|-",
		Short: "Register many devices from a CSV or JSON-lines file, all or none",
		Long: `Register many devices from a CSV or JSON-lines file (or stdin: -). The file is
streamed to the server, which stores every row or, when any row is rejected,
none; rejected rows are listed and the command exits 1.

CSV: a header row names the columns, in any order: serial and model (required),
hardware_uid, hardware_revision, macs (separated by ';' or spaces), labels
(k=v separated by ';') and state. Other columns are refused.

JSON lines: one object per line with the fields serial and model (required),
hardware_uid, hardware_revision, macs (an array of strings), labels (an object
of string values) and state. Blank lines are skipped. Other fields are refused,
so the output of "device create --json" or "device list --json" (which adds
created_at and more) cannot be imported as it is.

state is the initial state: factory (the default) or provisioned.`,
		Example: `  cradle device import devices.csv
  generate-units | cradle device import --format jsonl -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			f, err := importFormatOf(format, name)
			if err != nil {
				return err
			}
			var r io.Reader = a.stdin
			if name != "-" {
				file, err := os.Open(name)
				if err != nil {
					return err
				}
				defer file.Close()
				r = file
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if isTerminal(a.stderr) {
				p := newProgress(r, a.stderr)
				defer p.stop()
				r = p
			}
			rep, err := cl.ImportDevices(cmd.Context(), f, r)
			if rep == nil {
				if err == nil {
					err = errors.New("import: the server sent no report")
				}
				return err
			}
			if jsonFlag {
				if err := writeJSON(a.stdout, rep); err != nil {
					return err
				}
			} else if err := writeImportReport(a.stdout, rep); err != nil {
				return err
			}
			if !rep.Committed {
				return importRejected(rep)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "csv or jsonl (default: from the file's extension)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the import report as JSON")
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"csv", "jsonl"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// importRejected is the error of an import that stored nothing.
func importRejected(rep *cradle.ImportReport) error {
	total := rep.Accepted + rep.RejectedCount
	var what string
	switch {
	case total == 1 && rep.RejectedCount == 1:
		what = "its only row is invalid"
	case rep.RejectedCount == total:
		what = fmt.Sprintf("all %d rows are invalid", total)
	case rep.RejectedCount == 1:
		what = fmt.Sprintf("1 of %d rows is invalid", total)
	default:
		what = fmt.Sprintf("%d of %d rows are invalid", rep.RejectedCount, total)
	}
	return fmt.Errorf("import rejected: %s; nothing was stored", what)
}

func writeImportReport(w io.Writer, rep *cradle.ImportReport) error {
	if rep.Committed {
		_, err := fmt.Fprintf(w, "imported %s\n", count(rep.Accepted, "device"))
		return err
	}
	var notStored string
	switch rep.Accepted {
	case 0:
	case 1:
		notStored = " (1 valid row was not stored either)"
	default:
		notStored = fmt.Sprintf(" (%d valid rows were not stored either)", rep.Accepted)
	}
	fmt.Fprintf(w, "rejected %s%s:\n", count(rep.RejectedCount, "row"), notStored)
	t := newTable(w, "LINE", "SERIAL", "REASON")
	for _, e := range rep.Rejected {
		t.row(strconv.Itoa(e.Line), orDash(e.Serial), e.Reason)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if n := rep.RejectedCount - len(rep.Rejected); n > 0 {
		fmt.Fprintf(w, "… and %d more\n", n)
	}
	return nil
}

func stateNames() []string {
	out := make([]string, len(cradle.States))
	for i, s := range cradle.States {
		out[i] = string(s)
	}
	return out
}

func completeStates(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return stateNames(), cobra.ShellCompDirectiveNoFileComp
}

// isTerminal reports whether w is a terminal, where progress may be shown.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress counts the bytes read through it and reports them on a
// terminal twice a second.
type progress struct {
	r    io.Reader
	n    atomic.Int64
	done chan struct{}
	fin  chan struct{}
}

func newProgress(r io.Reader, w io.Writer) *progress {
	p := &progress{r: r, done: make(chan struct{}), fin: make(chan struct{})}
	go func() {
		defer close(p.fin)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				fmt.Fprintf(w, "\rsent %s\n", humanBytes(p.n.Load()))
				return
			case <-t.C:
				fmt.Fprintf(w, "\rsent %s…", humanBytes(p.n.Load()))
			}
		}
	}()
	return p
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n.Add(int64(n))
	return n, err
}

func (p *progress) stop() {
	close(p.done)
	<-p.fin
}
