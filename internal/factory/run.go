package factory

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"cradle"
)

// Event is one line of `cradle factory provision --json`: a unit's
// outcome ("unit"), or the run's summary ("summary").
type Event struct {
	Event  string            `json:"event"`
	Unit   string            `json:"unit,omitempty"` // the unit's spec
	Serial string            `json:"serial,omitempty"`
	MAC    string            `json:"mac,omitempty"`
	Status cradle.UnitStatus `json:"status,omitempty"`
	Step   string            `json:"step,omitempty"`
	Error  string            `json:"error,omitempty"`
	Record string            `json:"record,omitempty"`
	// ClaimCode is the claim code of a provisioned unit, for its label
	// printer; the server knows only its hash.
	ClaimCode string      `json:"claim_code,omitempty"`
	Millis    float64     `json:"ms,omitempty"`
	Done      int         `json:"done"`
	Total     int         `json:"total"`
	OK        int         `json:"ok"`
	Failed    int         `json:"failed"`
	Skipped   int         `json:"skipped"` // refused before allocation: untouched
	PerMin    float64     `json:"units_per_minute,omitempty"`
	HSMShare  float64     `json:"hsm_share,omitempty"` // of the total time
	Synced    *SyncReport `json:"sync,omitempty"`
}

// Progress shows a run: a bar redrawn in place on a terminal, or JSON
// lines for scripts.
type Progress struct {
	W     io.Writer
	JSON  bool
	Total int
	start time.Time
	last  Event
}

// Unit reports one unit's result.
func (p *Progress) Unit(spec string, r *Result) {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	e := &p.last
	e.Event, e.Total, e.Done = "unit", p.Total, e.Done+1
	e.Unit, e.Serial, e.MAC, e.Status, e.Step, e.Error, e.Record, e.ClaimCode = spec, "", "", "", "", "", "", ""
	if r.Record != nil {
		e.Serial, e.MAC, e.Status, e.Record = r.Record.Serial, r.Record.MAC, r.Record.Status, r.Record.ID
	}
	switch {
	case r.Err == nil:
		e.OK++
		e.ClaimCode = r.ClaimCode
	case r.Record == nil:
		e.Skipped++
		e.Step, e.Error = FailedStep(r.Err), r.Err.Error()
	default:
		e.Failed++
		e.Step, e.Error = r.Record.FailedStep, r.Err.Error()
	}
	e.Millis = float64(r.Total.Microseconds()) / 1000
	e.PerMin = float64(e.Done) / time.Since(p.start).Minutes()
	if p.JSON {
		b, _ := json.Marshal(e)
		fmt.Fprintf(p.W, "%s\n", b)
		return
	}
	if r.Err != nil {
		fmt.Fprintf(p.W, "\r\033[K%s: %s\n", unitName(e), r.Err)
	}
	if e.ClaimCode != "" {
		fmt.Fprintf(p.W, "\r\033[K%s: claim code %s\n", unitName(e), e.ClaimCode)
	}
	fmt.Fprintf(p.W, "\r\033[K%s %d/%d  ok %d  failed %d  skipped %d  %.1f units/min%s", bar(e.Done, p.Total, 24), e.Done, p.Total, e.OK, e.Failed, e.Skipped, e.PerMin, eta(p.start, e.Done, p.Total))
}

func unitName(e *Event) string {
	if e.Serial != "" {
		return e.Serial + " (" + e.Unit + ")"
	}
	return e.Unit
}

// Summary ends the run's display.
func (p *Progress) Summary(hsm, total time.Duration, sync *SyncReport) Event {
	e := p.last
	e.Event, e.Total = "summary", p.Total
	e.Unit, e.Serial, e.MAC, e.Status, e.Step, e.Error, e.Record, e.Millis = "", "", "", "", "", "", "", 0
	if total > 0 {
		e.HSMShare = hsm.Seconds() / total.Seconds()
		e.PerMin = float64(e.Done) / total.Minutes()
	}
	e.Synced = sync
	if p.JSON {
		b, _ := json.Marshal(e)
		fmt.Fprintf(p.W, "%s\n", b)
		return e
	}
	fmt.Fprintf(p.W, "\r\033[K%s %d/%d  ok %d  failed %d  skipped %d\n", bar(e.Done, p.Total, 24), e.Done, p.Total, e.OK, e.Failed, e.Skipped)
	fmt.Fprintf(p.W, "%.1f units/min; %.0f%% of the time signing in the HSM\n", e.PerMin, 100*e.HSMShare)
	if sync != nil {
		fmt.Fprintf(p.W, "server: %d records uploaded, %d already there, %d pending", sync.Uploaded, sync.Known, sync.Pending)
		if sync.Pending > 0 {
			fmt.Fprint(p.W, " (run cradle factory sync when the server is back)")
		}
		fmt.Fprintln(p.W)
		for _, r := range sync.Refused {
			fmt.Fprintf(p.W, "refused: %s\n", r)
		}
	}
	return e
}

func bar(done, total, width int) string {
	if total <= 0 {
		return ""
	}
	n := min(width, done*width/total)
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
}

func eta(start time.Time, done, total int) string {
	if done == 0 || total <= done {
		return ""
	}
	per := time.Since(start) / time.Duration(done)
	return "  eta " + (per * time.Duration(total-done)).Round(time.Second).String()
}

// RunStats sums a run.
type RunStats struct {
	Units, OK, Failed, Skipped int
	Total, HSM, Device         time.Duration
	Stopped                    error // the station error that stopped the run, if any
}

// Run provisions a stream of units of one batch: next yields the units
// (ok false at the end; an error is reported for that unit and the run
// goes on). It stops at a station error (HSM, journal). Records are synced
// in the background as they are journaled, and once more at the end.
func (s *Station) Run(ctx context.Context, batch string, rel *Release, next func() (Unit, bool, error), p *Progress) (RunStats, *SyncReport, error) {
	var st RunStats
	b, err := s.Batch(ctx, batch)
	if err != nil {
		return st, nil, err
	}
	if err := rel.CheckFor(b, s.cfg.Profile); err != nil {
		return st, nil, err
	}
	if bad := s.cfg.Journal.Corrupt(); len(bad) > 0 {
		return st, nil, fmt.Errorf("factory: the journal is corrupt: %v (and %d more): the station provisions nothing until it is repaired; cradle factory sync uploads the intact records", bad[0], len(bad)-1)
	}
	if _, err := s.Recover(ctx, s.cfg.OpenUnit); err != nil {
		return st, nil, err
	}
	var syncer *Syncer
	if s.cfg.Server != nil {
		syncer = s.StartSyncer(ctx)
	}
	start := time.Now()
	if p != nil && p.start.IsZero() {
		p.start = start
	}
	for ctx.Err() == nil {
		u, ok, err := next()
		if !ok && err == nil {
			break
		}
		var r *Result
		if err != nil {
			r = &Result{Err: &stepError{"preflight", err}}
		} else {
			r = s.Provision(ctx, b, rel, u)
		}
		st.Units++
		st.HSM += r.HSM
		st.Device += r.Device
		switch {
		case r.Err == nil:
			st.OK++
		case r.Record == nil:
			st.Skipped++
		default:
			st.Failed++
		}
		if p != nil {
			p.Unit(u.Spec, r)
		}
		if syncer != nil && r.Record != nil {
			syncer.Kick()
		}
		if IsStationError(r.Err) {
			st.Stopped = r.Err
			break
		}
	}
	st.Total = time.Since(start)
	var rep *SyncReport
	if syncer != nil {
		total := syncer.Stop()
		// An unreachable server is no failure of the run: what was not
		// uploaded is counted as pending in the report, for a later sync.
		last, _ := s.Sync(ctx)
		total.add(last)
		rep = &total
	}
	if p != nil {
		p.Summary(st.HSM, st.Total, rep)
	}
	return st, rep, st.Stopped
}
