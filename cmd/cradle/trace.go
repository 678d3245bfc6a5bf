package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"cradle"
	"cradle/internal/httpapi"

	"github.com/spf13/cobra"
)

func (a *app) deviceTraceCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "trace SERIAL",
		Short: "Show a unit's chain from its production batch to today",
		Long: `Show where a unit comes from and what happened to it since: its batch (model,
hardware revision, firmware, profile), every factory attempt (station, operator,
times, result or failed step and reason, firmware digest, IDevID, fuses read back,
tests), its certificates, and its lifecycle history up to its current state.

--json prints the whole chain, with the trace records as the stations signed them.`,
		Example: `  cradle device trace CR-2648-00042
  cradle device trace CR-2648-00042 --json | jq '.records[].record.operator'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			t, err := cl.UnitTrace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, t)
			}
			return writeUnitTrace(a.stdout, t)
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the chain as JSON")
	return cmd
}

// writeUnitTrace writes a unit's chain for people, oldest first.
func writeUnitTrace(w io.Writer, t *cradle.UnitTrace) error {
	d := t.Device
	p := &printer{w: w}
	p.line("unit %s: model %s, hardware revision %s, state %s", d.Serial, d.Model, orDash(d.HardwareRevision), d.State)
	p.line("  hardware uid %s, mac %s", orDash(d.HardwareUID), orDash(strings.Join(d.MACs, ",")))
	p.line("")
	if b := t.Batch; b != nil {
		p.line("batch %s: model %s, hardware revision %s, firmware %s, profile %s", b.ID, b.Model, b.HardwareRevision, b.FirmwareVersion, b.Profile)
		p.line("  created %s by %s; %d of %d provisioned, %d failed", formatTime(b.CreatedAt), b.CreatedBy, b.Provisioned, b.Quantity, b.Failed)
	} else {
		p.line("batch: none (the unit was not built through a Cradle factory station)")
	}
	p.line("")
	p.line("factory attempts: %d", len(t.Records))
	for i, st := range t.Records {
		r := &st.Record
		result := string(r.Status)
		if r.Status == cradle.UnitFailed {
			result = fmt.Sprintf("failed at %s: %s", r.FailedStep, r.Reason)
		}
		rma := ""
		if r.RMA {
			rma = " (re-provisioning after rma)"
		}
		p.line("  %d. %s%s", i+1, result, rma)
		p.line("     station %s%s, operator %s", r.Station, stationCert(t.Stations, r.Station), r.Operator)
		p.line("     %s to %s, received %s, record %s", formatTime(r.StartedAt), formatTime(r.FinishedAt), formatTime(st.ReceivedAt), r.ID)
		if r.FirmwareVersion != "" || r.FirmwareDigest != "" {
			p.line("     firmware %s sha256 %s, bootloader sha256 %s", orDash(r.FirmwareVersion), orDash(r.FirmwareDigest), orDash(r.BootloaderDigest))
		}
		if r.IDevIDSerial != "" {
			p.line("     IDevID serial %s, fingerprint %s", r.IDevIDSerial, orDash(r.IDevIDFingerprint))
		}
		p.line("     fuses: %s", formatFuses(r.Fuses))
		if len(r.Tests) > 0 {
			p.line("     tests: %s", formatTests(r.Tests))
		}
	}
	p.line("")
	p.line("certificates: %d", len(t.Certificates))
	for _, c := range t.Certificates {
		status := string(c.Status)
		if c.Reason != nil {
			status += " (" + c.Reason.String() + ", " + formatTimePtr(c.RevokedAt) + ")"
		}
		p.line("  %-7s %s  %s to %s  %s", c.Kind, c.Serial, formatTime(c.NotBefore), formatNotAfter(c), status)
	}
	p.line("")
	p.line("lifecycle:")
	for _, h := range t.History {
		from := "created"
		if h.From != "" {
			from = string(h.From)
		}
		reason := ""
		if h.Reason != "" {
			reason = ": " + h.Reason
		}
		p.line("  %s  %s -> %s by %s%s", formatTime(h.At), from, h.To, h.Actor, reason)
	}
	p.line("  now %s", d.State)
	return p.err
}

// printer writes lines and keeps the first error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(format string, args ...any) {
	if p.err == nil {
		// A value from the records must not forge lines of its own.
		s := strings.Map(func(r rune) rune {
			if r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, fmt.Sprintf(format, args...))
		_, p.err = fmt.Fprintln(p.w, s)
	}
}

// stationCert names the certificate of a station for a trace line.
func stationCert(sts []*cradle.Station, name string) string {
	for _, s := range sts {
		if s.Name == name {
			return fmt.Sprintf(" (%s, certificate %s)", s.Profile, s.CertSerial)
		}
	}
	return ""
}

// formatNotAfter writes an IDevID's "no well-defined expiration" as such.
func formatNotAfter(c *cradle.Certificate) string {
	if c.NotAfter.Year() == 9999 {
		return "no expiry"
	}
	return formatTime(c.NotAfter)
}

// formatFuses writes fuse values as field=value: the known fields in
// their order, then any others sorted.
func formatFuses(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, f := range httpapi.FuseFields {
		if v, ok := m[f]; ok {
			parts = append(parts, f+"="+v)
		}
	}
	for _, k := range cradle.SortedLabelKeys(m) {
		if !slices.Contains(httpapi.FuseFields, k) {
			parts = append(parts, k+"="+m[k])
		}
	}
	return strings.Join(parts, " ")
}

func formatTests(ts []cradle.TestResult) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.Name + "=fail"
		if t.Passed {
			parts[i] = t.Name + "=pass"
		}
		if t.Detail != "" {
			parts[i] += " (" + t.Detail + ")"
		}
	}
	return strings.Join(parts, " ")
}
