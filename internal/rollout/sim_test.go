package rollout_test

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/rollout"
)

// fakeClock is the injected clock: it moves only when a test says so.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

// fate is what a simulated device does with an attempt.
type fate int

const (
	succeeds    fate = iota
	fails            // every attempt fails while installing
	failsOnce        // the first attempt fails, the second succeeds
	hangsOnce        // the first attempt never reports; the second succeeds
	timesOutOut      // the first attempt reports a timeout of its own
)

// report is a device report due at a time.
type report struct {
	at      time.Time
	serial  string
	attempt int
	kind    rollout.EventKind
}

type reports []report

func (h reports) Len() int { return len(h) }
func (h reports) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].serial < h[j].serial
}
func (h reports) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *reports) Push(x any)   { *h = append(*h, x.(report)) }
func (h *reports) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// fleet simulates devices answering an engine, and checks the engine's
// promises at every step independently of the engine's own counters.
type fleet struct {
	t      *testing.T
	clock  *fakeClock
	eng    *rollout.Engine
	fates  map[string]fate
	zones  map[string]*time.Location // the zone each device's window is read in
	rng    *rand.Rand
	queue  reports
	state  map[string]cradle.DeviceUpdateState // as Changes reported it
	starts []time.Time                         // every start, in order
	// windowHours, when set, is the local hour range [from, to) in which
	// a start is allowed.
	windowFrom, windowTo int

	downloading   int // devices started or downloading, from Changes
	failed        int // devices failed for good, from Changes
	failedAtReset int // failed when the rollout was last resumed
	pauses        int
	phaseStarted  map[int]time.Time
}

// sync reads the engine's changed records and checks each against the
// simulation's own view.
func (f *fleet) sync() {
	f.t.Helper()
	for _, d := range f.eng.Changes() {
		old := f.state[d.Serial]
		if d.State == cradle.DeviceFailed && old != cradle.DeviceFailed {
			f.failed++
		}
		if downloading(old) {
			f.downloading--
		}
		if downloading(d.State) {
			f.downloading++
		}
		f.state[d.Serial] = d.State
	}
}

func downloading(s cradle.DeviceUpdateState) bool {
	return s == cradle.DeviceStarted || s == cradle.DeviceDownloading
}

// checkThreshold checks that the rollout is paused exactly when the
// failures since the last resume reach limit.
func (f *fleet) checkThreshold(limit int, wasRunning bool) {
	f.t.Helper()
	r := f.eng.Rollout()
	since := f.failed - f.failedAtReset
	if r.Status.Failures != since {
		f.t.Fatalf("engine counts %d failures since resume, the fleet saw %d", r.Status.Failures, since)
	}
	if !wasRunning {
		return
	}
	switch {
	case r.Status.State == cradle.RolloutRunning && since >= limit:
		f.t.Fatalf("%d failures (threshold %d) and the rollout still runs", since, limit)
	case r.Status.State == cradle.RolloutPaused && strings.HasPrefix(r.Status.Reason, "failure threshold") && since != limit:
		f.t.Fatalf("paused at %d failures, threshold %d: %s", since, limit, r.Status.Reason)
	}
}

func (f *fleet) deliver(limit int) {
	f.t.Helper()
	for f.queue.Len() > 0 && !f.queue[0].at.After(f.clock.Now()) {
		ev := heap.Pop(&f.queue).(report)
		was := f.eng.Rollout().Status.State == cradle.RolloutRunning
		if err := f.eng.Event(rollout.Event{Kind: ev.kind, Serial: ev.serial, Attempt: ev.attempt}); err != nil {
			f.t.Fatalf("event %s for %s attempt %d: %v", ev.kind, ev.serial, ev.attempt, err)
		}
		f.sync()
		f.checkThreshold(limit, was)
	}
}

// plan runs one step and schedules the started devices' reports.
func (f *fleet) plan(limit int, spec *cradle.RolloutSpec) {
	f.t.Helper()
	before := f.eng.Rollout()
	p := f.eng.Plan()
	f.sync()
	f.checkThreshold(limit, before.Status.State == cradle.RolloutRunning)
	after := f.eng.Rollout()
	now := f.clock.Now()
	if len(p.Start) > 0 && after.Status.State != cradle.RolloutRunning {
		f.t.Fatalf("plan started %d devices but the rollout is %s", len(p.Start), after.Status.State)
	}
	for _, s := range p.Start {
		// Phases: only the current one starts, after the previous ones
		// completed and soaked.
		if s.Phase != after.Status.Phase {
			f.t.Fatalf("%s started in phase %d while phase %d is current", s.Serial, s.Phase, after.Status.Phase)
		}
		for k := 0; k < s.Phase; k++ {
			ps := after.Status.Phases[k]
			if ps.State != cradle.PhaseCompleted {
				f.t.Fatalf("%s started in phase %d while phase %d is %s", s.Serial, s.Phase, k, ps.State)
			}
			if end := ps.FinishedAt.Add(time.Duration(spec.Phases[k].Soak)); now.Before(end) {
				f.t.Fatalf("phase %d started at %v, before phase %d finished soaking at %v", s.Phase, now, k, end)
			}
		}
		if _, ok := f.phaseStarted[s.Phase]; !ok {
			f.phaseStarted[s.Phase] = now
		}
		if f.windowTo > f.windowFrom {
			if h := now.In(f.zones[s.Serial]).Hour(); h < f.windowFrom || h >= f.windowTo {
				f.t.Fatalf("%s started at %v, local hour %d, outside the window [%d, %d)", s.Serial, now.In(f.zones[s.Serial]), h, f.windowFrom, f.windowTo)
			}
		}
		f.starts = append(f.starts, now)
		f.schedule(s)
	}
	// The concurrency cap, from the fleet's own view.
	if spec.MaxConcurrent > 0 {
		if n := f.downloading; n > spec.MaxConcurrent {
			f.t.Fatalf("%d devices downloading, cap %d", n, spec.MaxConcurrent)
		}
	}
}

func (f *fleet) schedule(s rollout.Start) {
	now := f.clock.Now()
	fa := f.fates[s.Serial]
	dl := now.Add(time.Duration(30+f.rng.IntN(90)) * time.Second)
	in := dl.Add(time.Duration(60+f.rng.IntN(240)) * time.Second)
	end := in.Add(time.Duration(30+f.rng.IntN(120)) * time.Second)
	first := s.Attempt == 1
	switch {
	case fa == hangsOnce && first:
		return // never reports: the engine's timeout ends the attempt
	case fa == timesOutOut && first:
		heap.Push(&f.queue, report{dl, s.Serial, s.Attempt, rollout.EventTimedOut})
		return
	}
	heap.Push(&f.queue, report{dl, s.Serial, s.Attempt, rollout.EventDownloading})
	heap.Push(&f.queue, report{in, s.Serial, s.Attempt, rollout.EventInstalling})
	last := rollout.EventSucceeded
	if fa == fails || fa == failsOnce && first {
		last = rollout.EventFailed
	}
	heap.Push(&f.queue, report{end, s.Serial, s.Attempt, last})
}

// maxPerMinute returns the most starts in any 60-second span.
func maxPerMinute(starts []time.Time) int {
	best, lo := 0, 0
	for hi := range starts {
		for !starts[hi].Before(starts[lo].Add(time.Minute)) {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

func newFleet(t *testing.T, n int, seed uint64, zoneNames []string) (*fleet, []rollout.Candidate) {
	t.Helper()
	f := &fleet{
		t: t, clock: &fakeClock{t: time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC)},
		fates: map[string]fate{}, zones: map[string]*time.Location{}, state: map[string]cradle.DeviceUpdateState{},
		rng: rand.New(rand.NewPCG(seed, 1)), phaseStarted: map[int]time.Time{},
	}
	cands := make([]rollout.Candidate, n)
	for i := range cands {
		serial := fmt.Sprintf("SN%06d", i)
		labels := map[string]string{"fleet": "sim"}
		zone := zoneNames[i%len(zoneNames)]
		if zone != "" {
			labels[cradle.RolloutTZLabel] = zone
		}
		loc, err := time.LoadLocation(zone)
		if err != nil {
			loc = time.UTC // the window's own zone is the fallback
		}
		f.zones[serial] = loc
		switch x := f.rng.IntN(1000); {
		case x < 30:
			f.fates[serial] = fails
		case x < 50:
			f.fates[serial] = failsOnce
		case x < 60:
			f.fates[serial] = hangsOnce
		case x < 70:
			f.fates[serial] = timesOutOut
		}
		cands[i] = rollout.Candidate{Serial: serial, Labels: labels}
	}
	return f, cands
}

// TestSimulation runs 10,000 devices, 3% of which fail every attempt and
// 4% the first one, through a canary and three waves with soak, a rate
// limit, a concurrency cap and device-local nightly windows in several
// zones. The rollout must pause at exactly the failure threshold each
// time, start nothing while paused, resume, and complete.
func TestSimulation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		threshold cradle.FailureThreshold
		limit     int
	}{
		{"count", cradle.FailureThreshold{Count: 60, Action: cradle.FailurePause}, 60},
		{"percent", cradle.FailureThreshold{Percent: 1.5, Action: cradle.FailurePause}, 150},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 10_000
			zones := []string{"Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC", "Not/AZone", ""}
			f, cands := newFleet(t, n, 7, zones)
			f.windowFrom, f.windowTo = 1, 5
			spec := cradle.RolloutSpec{
				ReleaseID: "rel-2",
				Target:    cradle.RolloutTarget{Selector: "fleet=sim"},
				Phases: []cradle.RolloutPhase{
					{Name: "canary", Count: 100, Soak: cradle.Duration(2 * time.Hour)},
					{Percent: 10, Soak: cradle.Duration(time.Hour)},
					{Percent: 50, Soak: cradle.Duration(time.Hour)},
					{Percent: 100},
				},
				RateLimit:        120,
				MaxConcurrent:    200,
				SuccessThreshold: 90,
				FailureThreshold: tc.threshold,
				Windows:          []cradle.MaintenanceWindow{{Cron: "0 1 * * *", Duration: cradle.Duration(4 * time.Hour), DeviceLocal: true}},
				DeviceTimeout:    cradle.Duration(20 * time.Minute),
				Retries:          1,
			}
			eng, err := rollout.New("r-sim", spec, rollout.Options{Clock: f.clock})
			if err != nil {
				t.Fatal(err)
			}
			f.eng = eng
			p, err := eng.Begin(cands)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Start) != 0 {
				t.Fatalf("started %d devices at noon UTC, outside every zone's window", len(p.Start))
			}
			f.sync()
			var pausedAt time.Time
			for step := 0; ; step++ {
				if step > 200_000 {
					t.Fatalf("no completion after %d steps: %+v", step, eng.Rollout().Status)
				}
				f.clock.Advance(15 * time.Second)
				f.deliver(tc.limit)
				f.plan(tc.limit, &spec)
				r := eng.Rollout()
				switch r.Status.State {
				case cradle.RolloutCompleted:
					goto done
				case cradle.RolloutPaused:
					if pausedAt.IsZero() {
						pausedAt = f.clock.Now()
						f.pauses++
					}
					// An operator looks at it half an hour later and resumes.
					if f.clock.Now().Sub(pausedAt) >= 30*time.Minute {
						if err := eng.Resume(); err != nil {
							t.Fatal(err)
						}
						f.failedAtReset = f.failed
						pausedAt = time.Time{}
					}
				case cradle.RolloutRunning:
				default:
					t.Fatalf("rollout is %s: %s", r.Status.State, r.Status.Reason)
				}
			}
		done:
			r := eng.Rollout()
			wantFailed := 0
			for _, fa := range f.fates {
				if fa == fails {
					wantFailed++
				}
			}
			if f.failed != wantFailed {
				t.Errorf("%d devices failed, want the %d that fail every attempt", f.failed, wantFailed)
			}
			succeeded := 0
			for _, st := range f.state {
				if st == cradle.DeviceSucceeded {
					succeeded++
				}
			}
			if succeeded != n-wantFailed {
				t.Errorf("%d devices succeeded, want %d", succeeded, n-wantFailed)
			}
			if f.pauses == 0 {
				t.Errorf("never paused for %d failures with threshold %d", wantFailed, tc.limit)
			}
			if since := f.failed - f.failedAtReset; since >= tc.limit {
				t.Errorf("completed with %d failures since the last resume, threshold %d", since, tc.limit)
			}
			if got := maxPerMinute(f.starts); got > spec.RateLimit {
				t.Errorf("%d starts in one minute, rate limit %d", got, spec.RateLimit)
			} else if got < spec.RateLimit/2 {
				t.Errorf("at most %d starts in a minute: the rate limit %d is never approached, the test proves little", got, spec.RateLimit)
			}
			if len(f.phaseStarted) != len(spec.Phases) {
				t.Errorf("phases started: %v", f.phaseStarted)
			}
			for i, ps := range r.Status.Phases {
				if ps.State != cradle.PhaseCompleted {
					t.Errorf("phase %d is %s", i, ps.State)
				}
			}
			if c := r.Status.Phases[0].Devices; c != 100 {
				t.Errorf("canary has %d devices, want 100", c)
			}
			t.Logf("%d starts, %d pauses, %d failed, finished at %v", len(f.starts), f.pauses, f.failed, f.clock.Now())
		})
	}
}
