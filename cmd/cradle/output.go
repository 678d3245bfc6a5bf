package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"cradle"
)

// writeJSON writes v as indented JSON. Outputs are the API's own JSON
// objects, so they are as stable as the API: fields are only ever added.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns; call flush when done.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cols ...string) {
	for i, c := range cols {
		// Tabs and newlines in values would break the columns.
		cols[i] = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, c)
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// writeList prints a listing: with asJSON as the listing object wrap
// makes of items (an empty list, never null), else as a table under
// header, a row an item.
func writeList[T any](w io.Writer, asJSON bool, items []T, wrap func([]T) any, header []string, row func(T) []string) error {
	if items == nil {
		items = []T{}
	}
	if asJSON {
		return writeJSON(w, wrap(items))
	}
	t := newTable(w, header...)
	for _, it := range items {
		t.row(row(it)...)
	}
	return t.flush()
}

// tokenStatus is a token's status at now: revoked, expired or active.
func tokenStatus(revokedAt, expiresAt *time.Time, now time.Time) string {
	switch {
	case revokedAt != nil:
		return "revoked"
	case expiresAt != nil && !expiresAt.After(now):
		return "expired"
	}
	return "active"
}

// formatTime writes a time in RFC 3339, UTC, to the second.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return formatTime(*t)
}

// formatLabels writes labels as k=v pairs in key order.
func formatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	keys := cradle.SortedLabelKeys(labels)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}

// count writes n and a noun in the right number: "1 row", "2 rows",
// "0 rows". The plural is the noun with an s.
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeDevice writes one device as aligned "field: value" lines.
func writeDevice(w io.Writer, d *cradle.Device) error {
	t := newTable(w)
	t.row("serial:", d.Serial)
	t.row("model:", d.Model)
	t.row("hardware revision:", orDash(d.HardwareRevision))
	t.row("hardware uid:", orDash(d.HardwareUID))
	t.row("macs:", orDash(strings.Join(d.MACs, ",")))
	t.row("labels:", formatLabels(d.Labels))
	t.row("state:", string(d.State))
	t.row("protocol:", orDash(string(d.Protocol)))
	t.row("state changed:", formatTime(d.StateChangedAt))
	t.row("created:", formatTime(d.CreatedAt))
	t.row("updated:", formatTime(d.UpdatedAt))
	t.row("attestation:", attestationState(d.Labels))
	return t.flush()
}

// humanBytes writes a byte count for people: 512 B, 3.4 MiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
