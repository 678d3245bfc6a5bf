package rollout_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/rollout"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC)

func candidates(n int, labels map[string]string) []rollout.Candidate {
	out := make([]rollout.Candidate, n)
	for i := range out {
		out[i] = rollout.Candidate{Serial: fmt.Sprintf("D%04d", i), Labels: labels}
	}
	return out
}

func baseSpec() cradle.RolloutSpec {
	return cradle.RolloutSpec{
		ReleaseID:        "rel-1",
		Target:           cradle.RolloutTarget{Selector: "env=prod"},
		Phases:           []cradle.RolloutPhase{{Percent: 100}},
		FailureThreshold: cradle.FailureThreshold{Count: 5, Action: cradle.FailurePause},
	}
}

func begin(t *testing.T, spec cradle.RolloutSpec, cands []rollout.Candidate) (*rollout.Engine, *fakeClock, rollout.Plan) {
	t.Helper()
	clock := &fakeClock{t: t0}
	e, err := rollout.New("r1", spec, rollout.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.Begin(cands)
	if err != nil {
		t.Fatal(err)
	}
	return e, clock, p
}

func serials(p rollout.Plan) []string {
	var out []string
	for _, s := range p.Start {
		out = append(out, s.Serial)
	}
	return out
}

func mustEvent(t *testing.T, e *rollout.Engine, kind rollout.EventKind, serials ...string) {
	t.Helper()
	for _, s := range serials {
		if err := e.Event(rollout.Event{Kind: kind, Serial: s}); err != nil {
			t.Fatalf("%s %s: %v", kind, s, err)
		}
	}
}

func wantCode(t *testing.T, err error, code, substr string) {
	t.Helper()
	if cradle.ErrorCode(err) != code || !strings.Contains(cradle.ErrorMessage(err), substr) {
		t.Fatalf("got %v, want %s containing %q", err, code, substr)
	}
}

func TestExplicitListOrderIsCanaryOrder(t *testing.T) {
	spec := baseSpec()
	spec.Target = cradle.RolloutTarget{Serials: []string{"D0003", "D0001", "D0000", "D0002"}}
	spec.Phases = []cradle.RolloutPhase{{Count: 2}, {Percent: 100}}
	e, _, p := begin(t, spec, candidates(4, nil))
	if diff := cmp.Diff([]string{"D0003", "D0001"}, serials(p)); diff != "" {
		t.Fatalf("canary (-want +got):\n%s", diff)
	}
	mustEvent(t, e, rollout.EventSucceeded, "D0003", "D0001")
	if diff := cmp.Diff([]string{"D0000", "D0002"}, serials(e.Plan())); diff != "" {
		t.Fatalf("wave (-want +got):\n%s", diff)
	}
}

func TestCanaryWavesSoakAndApproval(t *testing.T) {
	spec := baseSpec()
	spec.Phases = []cradle.RolloutPhase{
		{Count: 3, Soak: cradle.Duration(time.Hour)},
		{Percent: 50, Soak: cradle.Duration(30 * time.Minute), Approval: true},
		{Percent: 100},
	}
	e, clock, p := begin(t, spec, candidates(20, map[string]string{"env": "prod"}))
	if len(p.Start) != 3 {
		t.Fatalf("canary started %d devices, want 3", len(p.Start))
	}
	mustEvent(t, e, rollout.EventSucceeded, serials(p)...)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatalf("started %d devices while the canary soaks", len(p.Start))
	}
	if ps := e.Rollout().Status.Phases[0]; ps.State != cradle.PhaseSoaking || !ps.SoakUntil.Equal(t0.Add(time.Hour)) {
		t.Fatalf("canary: %+v", ps)
	}
	clock.Advance(59 * time.Minute)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatal("started before the soak ended")
	}
	clock.Advance(time.Minute)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatal("started a phase that waits for approval")
	}
	r := e.Rollout()
	if r.Status.Phase != 1 || r.Status.Phases[1].State != cradle.PhaseAwaiting {
		t.Fatalf("phase %d is %s, want 1 awaiting approval", r.Status.Phase, r.Status.Phases[1].State)
	}
	wantCode(t, e.Approve(2), cradle.EINVALID, "does not ask for approval")
	wantCode(t, e.Approve(7), cradle.EINVALID, "no phase 7")
	if err := e.Approve(1); err != nil {
		t.Fatal(err)
	}
	p = e.Plan()
	if len(p.Start) != 7 { // 50% of 20 is 10, of which 3 were canaries
		t.Fatalf("wave 1 started %d devices, want 7", len(p.Start))
	}
	wantCode(t, e.Approve(1), cradle.ECONFLICT, "approval comes before")
	mustEvent(t, e, rollout.EventDownloading, serials(p)...)
	mustEvent(t, e, rollout.EventInstalling, serials(p)...)
	mustEvent(t, e, rollout.EventSucceeded, serials(p)...)
	e.Plan()
	clock.Advance(30 * time.Minute)
	p = e.Plan()
	if len(p.Start) != 10 {
		t.Fatalf("last wave started %d devices, want 10", len(p.Start))
	}
	mustEvent(t, e, rollout.EventSucceeded, serials(p)...)
	e.Plan()
	if st := e.Rollout().Status; st.State != cradle.RolloutCompleted {
		t.Fatalf("rollout is %s, want completed", st.State)
	}
	wantCode(t, e.Pause(""), cradle.ECONFLICT, "only a running rollout")
	wantCode(t, e.Abort(""), cradle.ECONFLICT, "already completed")
}

func TestFailureThresholdAbort(t *testing.T) {
	spec := baseSpec()
	spec.FailureThreshold = cradle.FailureThreshold{Percent: 10, Action: cradle.FailureAbort}
	e, _, p := begin(t, spec, candidates(30, map[string]string{"env": "prod"}))
	if len(p.Start) != 30 {
		t.Fatalf("started %d", len(p.Start))
	}
	mustEvent(t, e, rollout.EventFailed, "D0000", "D0001")
	if st := e.Rollout().Status.State; st != cradle.RolloutRunning {
		t.Fatalf("aborted at 2 failures of 30 with a 10%% threshold: %s", st)
	}
	mustEvent(t, e, rollout.EventFailed, "D0002")
	st := e.Rollout().Status
	if st.State != cradle.RolloutAborted || !strings.Contains(st.Reason, "3 devices failed (threshold 3)") {
		t.Fatalf("after 3 failures: %s %q", st.State, st.Reason)
	}
	// Devices already updating still report; the rollout stays aborted.
	mustEvent(t, e, rollout.EventSucceeded, "D0003")
	mustEvent(t, e, rollout.EventFailed, "D0004")
	if p := e.Plan(); len(p.Start) != 0 || e.Rollout().Status.State != cradle.RolloutAborted {
		t.Fatal("an aborted rollout planned starts")
	}
	wantCode(t, e.Resume(), cradle.ECONFLICT, "only a paused rollout")
}

func TestPauseResumeAbortByOperator(t *testing.T) {
	spec := baseSpec()
	spec.RateLimit = 2
	e, clock, p := begin(t, spec, candidates(6, map[string]string{"env": "prod"}))
	if len(p.Start) != 2 {
		t.Fatalf("started %d, rate limit 2", len(p.Start))
	}
	if err := e.Pause("looking at the canary"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.Pause(""), cradle.ECONFLICT, "only a running")
	clock.Advance(time.Hour)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatal("a paused rollout started devices")
	}
	if err := e.Resume(); err != nil {
		t.Fatal(err)
	}
	if p := e.Plan(); len(p.Start) != 2 {
		t.Fatalf("after resume started %d, want 2", len(p.Start))
	}
	if err := e.Abort(""); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatal("an aborted rollout started devices")
	}
	if st := e.Rollout().Status; st.Reason != "aborted by an operator" {
		t.Fatalf("reason %q", st.Reason)
	}
}

// TestAbortTimesOutInFlight: devices updating when the rollout is aborted
// still report, and those that fall silent time out after DeviceTimeout,
// also in an engine loaded again from the records (as the scheduler does);
// the timed-out attempt fails for good, with retries left, starts nobody
// and counts toward no threshold.
func TestAbortTimesOutInFlight(t *testing.T) {
	spec := baseSpec()
	spec.DeviceTimeout = cradle.Duration(10 * time.Minute)
	spec.Retries = 2
	spec.FailureThreshold = cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}
	e, clock, p := begin(t, spec, candidates(3, map[string]string{"env": "prod"}))
	if len(p.Start) != 3 {
		t.Fatalf("started %d, want 3", len(p.Start))
	}
	if err := e.Abort("bad build"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Minute)
	mustEvent(t, e, rollout.EventDownloading, "D0001") // reports still taken
	mustEvent(t, e, rollout.EventSucceeded, "D0002")
	e.Changes()

	clock.Advance(5*time.Minute - time.Second)
	if p := e.Plan(); len(p.Start) != 0 || len(e.Changes()) != 0 {
		t.Fatal("changed a device before its timeout")
	}
	clock.Advance(time.Second)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatalf("an aborted rollout started %v", serials(p))
	}
	ch := e.Changes()
	if len(ch) != 1 || ch[0].Serial != "D0000" || ch[0].State != cradle.DeviceFailed || ch[0].Attempt != 1 || ch[0].Reason != "attempt 1: no report for 10m0s" {
		t.Fatalf("changes at the first timeout: %+v", ch)
	}

	// A restart: the engine loaded from the records times D0001 out too.
	e, err := rollout.Load(e.Rollout(), e.Devices(), rollout.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Minute)
	for range 3 {
		if p := e.Plan(); len(p.Start) != 0 {
			t.Fatalf("an aborted rollout started %v", serials(p))
		}
		clock.Advance(time.Hour)
	}
	want := map[string]cradle.DeviceUpdateState{"D0000": cradle.DeviceFailed, "D0001": cradle.DeviceFailed, "D0002": cradle.DeviceSucceeded}
	for serial, st := range want {
		if d, _ := e.Device(serial); d.State != st || d.Attempt != 1 {
			t.Fatalf("%s: %s attempt %d, want %s attempt 1", serial, d.State, d.Attempt, st)
		}
	}
	st := e.Rollout().Status
	if st.State != cradle.RolloutAborted || st.Reason != "bad build" || st.Failures != 0 {
		t.Fatalf("rollout %s (%q), %d failures counted", st.State, st.Reason, st.Failures)
	}
	if ph := st.Phases[0]; ph.Downloading+ph.Installing+ph.Pending != 0 || ph.Failed != 2 || ph.Succeeded != 1 {
		t.Fatalf("phase counts %+v", ph)
	}
	err = e.Event(rollout.Event{Kind: rollout.EventSucceeded, Serial: "D0001"})
	wantCode(t, err, cradle.ECONFLICT, "is failed")
}

func TestRateLimitSlidingMinute(t *testing.T) {
	spec := baseSpec()
	spec.RateLimit = 10
	e, clock, p := begin(t, spec, candidates(100, map[string]string{"env": "prod"}))
	got := []int{len(p.Start)}
	for range 7 {
		clock.Advance(20 * time.Second)
		got = append(got, len(e.Plan().Start))
	}
	// 10 at 0s, none until 60s, 10 at 60s, none until 120s ...
	if diff := cmp.Diff([]int{10, 0, 0, 10, 0, 0, 10, 0}, got); diff != "" {
		t.Fatalf("starts per 20 s (-want +got):\n%s", diff)
	}
}

func TestConcurrencyCapCountsDownloadsOnly(t *testing.T) {
	spec := baseSpec()
	spec.MaxConcurrent = 3
	e, _, p := begin(t, spec, candidates(10, map[string]string{"env": "prod"}))
	if len(p.Start) != 3 {
		t.Fatalf("started %d, cap 3", len(p.Start))
	}
	mustEvent(t, e, rollout.EventDownloading, p.Start[0].Serial)
	if n := len(e.Plan().Start); n != 0 {
		t.Fatalf("started %d while 3 download", n)
	}
	mustEvent(t, e, rollout.EventInstalling, p.Start[0].Serial, p.Start[1].Serial)
	if n := len(e.Plan().Start); n != 2 {
		t.Fatalf("started %d after 2 moved to installing, want 2", n)
	}
}

func TestTimeoutAndRetries(t *testing.T) {
	spec := baseSpec()
	spec.DeviceTimeout = cradle.Duration(10 * time.Minute)
	spec.Retries = 2
	e, clock, p := begin(t, spec, candidates(1, map[string]string{"env": "prod"}))
	if diff := cmp.Diff([]rollout.Start{{Serial: "D0000", Phase: 0, Attempt: 1}}, p.Start); diff != "" {
		t.Fatal(diff)
	}
	clock.Advance(9 * time.Minute)
	mustEvent(t, e, rollout.EventDownloading, "D0000") // progress restarts the timeout
	clock.Advance(9 * time.Minute)
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatal("timed out a device that reported 9 minutes ago")
	}
	clock.Advance(time.Minute)
	p = e.Plan()
	if diff := cmp.Diff([]rollout.Start{{Serial: "D0000", Phase: 0, Attempt: 2}}, p.Start); diff != "" {
		t.Fatalf("retry after timeout: %s", diff)
	}
	// A late report about attempt 1 is stale.
	err := e.Event(rollout.Event{Kind: rollout.EventSucceeded, Serial: "D0000", Attempt: 1})
	wantCode(t, err, cradle.ECONFLICT, "attempt 2 is current")
	// The device gives up itself; the third attempt is the last.
	mustEvent(t, e, rollout.EventTimedOut, "D0000")
	p = e.Plan()
	if len(p.Start) != 1 || p.Start[0].Attempt != 3 {
		t.Fatalf("third attempt: %+v", p.Start)
	}
	if err := e.Event(rollout.Event{Kind: rollout.EventFailed, Serial: "D0000", Reason: "flash write error"}); err != nil {
		t.Fatal(err)
	}
	d, _ := e.Device("D0000")
	if d.State != cradle.DeviceFailed || d.Reason != "attempt 3: flash write error" {
		t.Fatalf("device %+v", d)
	}
	if p := e.Plan(); len(p.Start) != 0 {
		t.Fatal("retried past the retries")
	}
	// 1 failure of 1 device: below the 100% success threshold, below the
	// failure count of 5: the phase is done and the rollout pauses.
	st := e.Rollout().Status
	if st.State != cradle.RolloutPaused || !strings.Contains(st.Reason, "below the success threshold") {
		t.Fatalf("%s: %q", st.State, st.Reason)
	}
	if err := e.Resume(); err != nil {
		t.Fatal(err)
	}
	e.Plan()
	if st := e.Rollout().Status; st.State != cradle.RolloutCompleted || !st.Phases[0].Accepted {
		t.Fatalf("after resume: %s, phase %+v", st.State, st.Phases[0])
	}
}

func TestEventRefusals(t *testing.T) {
	e, _, p := begin(t, baseSpec(), candidates(2, map[string]string{"env": "prod"}))
	wantCode(t, e.Event(rollout.Event{Kind: rollout.EventSucceeded, Serial: "nope"}), cradle.ENOTFOUND, "not in rollout")
	wantCode(t, e.Event(rollout.Event{Kind: "exploded", Serial: p.Start[0].Serial}), cradle.EINVALID, "unknown event kind")
	mustEvent(t, e, rollout.EventInstalling, p.Start[0].Serial)
	wantCode(t, e.Event(rollout.Event{Kind: rollout.EventDownloading, Serial: p.Start[0].Serial}), cradle.ECONFLICT, "cannot go back")
	mustEvent(t, e, rollout.EventSucceeded, p.Start[0].Serial)
	wantCode(t, e.Event(rollout.Event{Kind: rollout.EventFailed, Serial: p.Start[0].Serial}), cradle.ECONFLICT, "is succeeded")
	wantCode(t, e.Event(rollout.Event{Kind: rollout.EventJoined, Serial: "new", Labels: map[string]string{"env": "prod"}}), cradle.ECONFLICT, "not dynamic")

	draft, err := rollout.New("r2", baseSpec(), rollout.Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, draft.Event(rollout.Event{Kind: rollout.EventSucceeded, Serial: "x"}), cradle.ECONFLICT, "has not started")
	if p := draft.Plan(); len(p.Start) != 0 {
		t.Fatal("a draft planned starts")
	}
	if _, err := e.Begin(candidates(1, map[string]string{"env": "prod"})); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("second Begin: %v", err)
	}
}

func TestDynamicJoin(t *testing.T) {
	spec := baseSpec()
	spec.Dynamic = true
	spec.Phases = []cradle.RolloutPhase{{Count: 1}, {Percent: 100}}
	prod := map[string]string{"env": "prod"}
	e, _, p := begin(t, spec, candidates(2, prod))
	join := func(serial string, labels map[string]string, other string) error {
		return e.Event(rollout.Event{Kind: rollout.EventJoined, Serial: serial, Labels: labels, ActiveRollout: other})
	}
	// Joining during the canary: the canary phase takes it.
	if err := join("J1", prod, ""); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Device("J1"); d.Phase != 0 || d.State != cradle.DevicePending {
		t.Fatalf("J1: %+v", d)
	}
	wantCode(t, join("J2", map[string]string{"env": "dev"}, ""), cradle.EINVALID, "does not match")
	if err := join("J1", prod, ""); err != nil {
		t.Fatalf("joining twice: %v", err)
	}
	if err := join("J3", prod, "r-other"); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Device("J3"); d.State != cradle.DeviceSkipped || d.Reason != "in active rollout r-other" {
		t.Fatalf("J3: %+v", d)
	}
	started := serials(p)
	mustEvent(t, e, rollout.EventSucceeded, started...)
	for range 5 {
		p := e.Plan()
		started = append(started, serials(p)...)
		mustEvent(t, e, rollout.EventSucceeded, serials(p)...)
	}
	st := e.Rollout().Status
	if st.State != cradle.RolloutRunning || st.Phases[1].State != cradle.PhaseCompleted {
		t.Fatalf("a dynamic rollout after its last phase: %s, %+v", st.State, st.Phases[1])
	}
	// Joining after the last phase: it runs again.
	if err := join("J4", prod, ""); err != nil {
		t.Fatal(err)
	}
	p = e.Plan()
	if diff := cmp.Diff([]string{"J4"}, serials(p)); diff != "" {
		t.Fatalf("late joiner (-want +got):\n%s", diff)
	}
	if len(started) != 3 {
		t.Fatalf("started %v, want the 2 first devices and J1", started)
	}
	if st := e.Rollout().Status; st.Devices != 5 || st.Skipped != 1 {
		t.Fatalf("devices %d skipped %d", st.Devices, st.Skipped)
	}
	if err := e.Abort(""); err != nil {
		t.Fatal(err)
	}
	wantCode(t, join("J5", prod, ""), cradle.ECONFLICT, "no longer join")
}

func TestConflicts(t *testing.T) {
	prod := map[string]string{"env": "prod"}
	t.Run("explicit list overlaps an active rollout", func(t *testing.T) {
		spec := baseSpec()
		spec.Target = cradle.RolloutTarget{Serials: []string{"D0000", "D0001"}}
		cands := candidates(2, nil)
		cands[1].ActiveRollout = "r-old"
		wantCode(t, rollout.CheckTarget(&spec, cands), cradle.ECONFLICT, "D0001 (rollout r-old) already in an active rollout")
		e, _ := rollout.New("r1", spec, rollout.Options{})
		_, err := e.Begin(cands)
		wantCode(t, err, cradle.ECONFLICT, "r-old")
		if st := e.Rollout().Status.State; st != cradle.RolloutDraft {
			t.Fatalf("a refused start left the rollout %s", st)
		}
	})
	t.Run("selector skips devices of another rollout", func(t *testing.T) {
		cands := candidates(4, prod)
		cands[2].ActiveRollout = "r-old"
		e, _, p := begin(t, baseSpec(), cands)
		if len(p.Start) != 3 {
			t.Fatalf("started %d, want 3", len(p.Start))
		}
		d, _ := e.Device("D0002")
		if d.State != cradle.DeviceSkipped || d.Phase != -1 || d.Reason != "in active rollout r-old" {
			t.Fatalf("%+v", d)
		}
	})
	for _, tc := range []struct {
		name   string
		spec   func(*cradle.RolloutSpec)
		cands  []rollout.Candidate
		code   string
		substr string
	}{
		{"empty target", nil, nil, cradle.EINVALID, "target has no devices"},
		{"unknown serial", func(s *cradle.RolloutSpec) { s.Target = cradle.RolloutTarget{Serials: []string{"D0000", "X"}} }, candidates(1, nil), cradle.EINVALID, `no device "X"`},
		{"extra candidate", func(s *cradle.RolloutSpec) { s.Target = cradle.RolloutTarget{Serials: []string{"D0000"}} }, candidates(2, nil), cradle.EINVALID, "serial list 1"},
		{"candidate off the selector", nil, candidates(1, map[string]string{"env": "dev"}), cradle.EINVALID, "does not match"},
		{"duplicate candidate", nil, append(candidates(1, prod), candidates(1, prod)...), cradle.EINVALID, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := baseSpec()
			if tc.spec != nil {
				tc.spec(&spec)
			}
			e, err := rollout.New("r1", spec, rollout.Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.Begin(tc.cands)
			wantCode(t, err, tc.code, tc.substr)
		})
	}
}

func TestWindowsGlobalZone(t *testing.T) {
	spec := baseSpec()
	// 22:00 to 02:00 in Berlin (UTC+2 in June): 20:00 to 00:00 UTC.
	spec.Windows = []cradle.MaintenanceWindow{{Cron: "0 22 * * *", Duration: cradle.Duration(4 * time.Hour), TimeZone: "Europe/Berlin"}}
	spec.RateLimit = 1
	e, clock, p := begin(t, spec, candidates(1000, map[string]string{"env": "prod"}))
	if len(p.Start) != 0 {
		t.Fatal("started at 10:00 UTC, outside the window")
	}
	var at []string
	for range 24 * 60 {
		clock.Advance(time.Minute)
		if p := e.Plan(); len(p.Start) > 0 {
			at = append(at, clock.Now().Format("15:04"))
			mustEvent(t, e, rollout.EventSucceeded, serials(p)...)
		}
	}
	if len(at) != 240 || at[0] != "20:00" || at[len(at)-1] != "23:59" {
		t.Fatalf("%d starts from %v to %v, want 240 from 20:00 to 23:59 UTC", len(at), at[0], at[len(at)-1])
	}
}

func TestWindowOpenAtAcrossDST(t *testing.T) {
	w, err := rollout.ParseWindow(cradle.MaintenanceWindow{Cron: "30 2 * * *", Duration: cradle.Duration(time.Hour), TimeZone: "Europe/Berlin"})
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	for _, tc := range []struct {
		at   time.Time
		open bool
	}{
		{time.Date(2026, 6, 1, 2, 29, 59, 0, berlin), false},
		{time.Date(2026, 6, 1, 2, 30, 0, 0, berlin), true},
		{time.Date(2026, 6, 1, 3, 29, 59, 0, berlin), true},
		{time.Date(2026, 6, 1, 3, 30, 0, 0, berlin), false},
		// 2026-03-29: clocks jump from 02:00 to 03:00; 02:30 does not exist.
		{time.Date(2026, 3, 29, 3, 15, 0, 0, berlin), false},
		{time.Date(2026, 3, 30, 2, 45, 0, 0, berlin), true},
	} {
		if got := w.OpenAt(tc.at, nil); got != tc.open {
			t.Errorf("open at %v = %v, want %v", tc.at, got, tc.open)
		}
	}
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	at := time.Date(2026, 6, 1, 2, 40, 0, 0, tokyo)
	if !w.OpenAt(at, tokyo) || w.OpenAt(at, berlin) {
		t.Error("a device-local reading must use the device's zone")
	}
}

func TestLoadContinuesWhereItStopped(t *testing.T) {
	spec := baseSpec()
	spec.Phases = []cradle.RolloutPhase{{Count: 2}, {Percent: 100}}
	spec.RateLimit = 3
	cands := candidates(10, map[string]string{"env": "prod"})
	e, clock, p := begin(t, spec, cands)
	mustEvent(t, e, rollout.EventSucceeded, serials(p)...)
	p = e.Plan()
	mustEvent(t, e, rollout.EventDownloading, p.Start[0].Serial)

	// Persist as JSON, as a store would, and load into a new engine.
	rb, _ := json.Marshal(e.Rollout())
	db, _ := json.Marshal(e.Devices())
	var r cradle.Rollout
	var devs []cradle.RolloutDevice
	if err := json.Unmarshal(rb, &r); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(db, &devs); err != nil {
		t.Fatal(err)
	}
	loaded, err := rollout.Load(r, devs, rollout.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(e.Rollout(), loaded.Rollout()); diff != "" {
		t.Fatalf("loaded rollout (-want +got):\n%s", diff)
	}
	clock.Advance(time.Minute)
	if diff := cmp.Diff(e.Plan(), loaded.Plan()); diff != "" {
		t.Fatalf("plans differ (-original +loaded):\n%s", diff)
	}
	// Changes: everything started since the last call, in order.
	if ch := e.Changes(); len(ch) != 10 {
		t.Fatalf("%d changes, want all 10 records (none read yet)", len(ch))
	}
	if ch := e.Changes(); len(ch) != 0 {
		t.Fatalf("%d changes right after reading them", len(ch))
	}
	r.Status.Phases = r.Status.Phases[:1]
	if _, err := rollout.Load(r, devs, rollout.Options{}); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Fatalf("loading a status that does not fit its spec: %v", err)
	}
}

// TestSkipReason: a candidate the store gives a skip reason (a suspended
// device and a release that is not a remediation) is recorded as skipped
// with it, is not counted for the phase sizes, and does not trip the
// conflict rule of an explicit list even when another rollout holds it.
func TestSkipReason(t *testing.T) {
	spec := baseSpec()
	spec.Target = cradle.RolloutTarget{Serials: []string{"D0000", "D0001", "D0002", "D0003", "D0004"}}
	spec.Phases = []cradle.RolloutPhase{{Percent: 50}, {Percent: 100}}
	cands := candidates(5, nil)
	cands[1].SkipReason = cradle.RolloutSkipSuspended
	cands[1].ActiveRollout = "r-old"
	e, _, p := begin(t, spec, cands)
	// Four eligible: 50% is two (of five it would be three).
	if diff := cmp.Diff([]string{"D0000", "D0002"}, serials(p)); diff != "" {
		t.Fatalf("first phase (-want +got):\n%s", diff)
	}
	r := e.Rollout()
	if r.Status.Devices != 5 || r.Status.Skipped != 1 {
		t.Fatalf("status: %d devices, %d skipped", r.Status.Devices, r.Status.Skipped)
	}
	for _, d := range e.Devices() {
		if d.Serial == "D0001" && (d.State != cradle.DeviceSkipped || d.Reason != cradle.RolloutSkipSuspended || d.Phase != -1) {
			t.Fatalf("skipped device %+v", d)
		}
	}
	// Without the reason, the same hold is a conflict.
	cands[1].SkipReason = ""
	e2, err := rollout.New("r2", spec, rollout.Options{Clock: &fakeClock{t: t0}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e2.Begin(cands)
	wantCode(t, err, cradle.ECONFLICT, "D0001 (rollout r-old)")
}
