package factory

import (
	"errors"
	"strings"
	"testing"
	"time"

	"cradle"
)

// TestProgress: the terminal display redraws one line with a bar and the
// counts, prints failures on their own lines, and ends with a summary.
func TestProgress(t *testing.T) {
	var out strings.Builder
	p := &Progress{W: &out, Total: 4}
	ok := &Result{Record: &cradle.TraceRecord{Serial: "SX-1", Status: cradle.UnitProvisioned}, Total: time.Millisecond}
	failed := &Result{Record: &cradle.TraceRecord{Serial: "SX-2", Status: cradle.UnitFailed, FailedStep: "fuses"},
		Err: &stepError{"fuses", errors.New("voltage dropped")}, Total: time.Millisecond}
	p.Unit("units/1", ok)
	p.Unit("units/2", failed)
	sum := p.Summary(time.Millisecond, 4*time.Millisecond, &SyncReport{Uploaded: 1, Pending: 1})
	s := out.String()
	for _, want := range []string{
		"\r\033[K[============            ] 2/4  ok 1  failed 1  skipped 0",
		"SX-2 (units/2): step fuses: voltage dropped\n",
		"25% of the time signing in the HSM",
		"1 pending (run cradle factory sync when the server is back)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("display lacks %q:\n%q", want, s)
		}
	}
	if sum.OK != 1 || sum.Failed != 1 || sum.HSMShare != 0.25 {
		t.Errorf("summary %+v", sum)
	}
	var js strings.Builder
	pj := &Progress{W: &js, JSON: true, Total: 1}
	pj.Unit("units/1", ok)
	if !strings.HasPrefix(js.String(), `{"event":"unit","unit":"units/1","serial":"SX-1"`) {
		t.Errorf("JSON line: %s", js.String())
	}
}
