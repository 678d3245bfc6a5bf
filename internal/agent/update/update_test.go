package update_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
)

// runToIdle resumes the updater until it is idle, as the agent's loop
// does across transient failures.
func runToIdle(t *testing.T, up *update.Updater) {
	t.Helper()
	ctx := context.Background()
	for i := 0; up.State().Phase != update.PhaseIdle; i++ {
		if i > 20 {
			t.Fatalf("updater stuck in %s", up.State().Phase)
		}
		if err := up.Resume(ctx); err != nil {
			t.Logf("resume: %v", err)
		}
	}
}

// check takes the offer and runs the update to its end.
func check(t *testing.T, up *update.Updater) {
	t.Helper()
	taken, err := up.Check(context.Background())
	if !taken {
		t.Fatalf("no update taken: %v", err)
	}
	runToIdle(t, up)
}

func wantFinal(t *testing.T, w *world, state, reasonPart string) {
	t.Helper()
	f := w.finalReports()
	if len(f) != 1 {
		t.Fatalf("final reports %+v, want one", f)
	}
	if f[0].State != state || !strings.Contains(f[0].Reason, reasonPart) {
		t.Fatalf("final report %+v, want %s with %q", f[0], state, reasonPart)
	}
}

func TestUpdateSuccess(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(200 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.offerOf(v2, 1)
	check(t, u.updater())

	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if slot, d := u.running(); slot != hw.SlotB || d != v2.digest() {
		t.Fatalf("running slot %s %s, want b %s", slot, d, v2.digest())
	}
	if got := w.lastSoftware(); got != v2.digest() {
		t.Fatalf("software reported %s, want %s", got, v2.digest())
	}
	env, _ := u.dev.BootEnv.Get(context.Background())
	if env[hw.EnvUpgradeAvailable] == "1" {
		t.Fatalf("trial not committed: %v", env)
	}
	if n := u.antiRollback(); n != 2 {
		t.Fatalf("anti_rollback %d, want 2", n)
	}
	var states []string
	for _, r := range w.reports {
		states = append(states, r.State)
	}
	if got := strings.Join(states, ","); got != "downloading,installing,succeeded" {
		t.Fatalf("reports %s", got)
	}
	// The next boot stays on the committed slot.
	if err := u.boot(context.Background()); err != nil || u.lastBoot.Slot != hw.SlotB {
		t.Fatalf("boot after commit: %v %+v", err, u.lastBoot)
	}
}

func TestUpdateDelta(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(200 << 10)
	w.publish(v1, nil)
	p := w.publishDelta(v1, v2)
	u := w.newUnit(v1)
	w.offerDelta(v1, v2, p)
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if slot, d := u.running(); slot != hw.SlotB || d != v2.digest() {
		t.Fatalf("running slot %s %s, want b %s", slot, d, v2.digest())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ranges) != 1 {
		t.Fatalf("%d artifact requests; want the patch only", len(w.ranges))
	}
}

func TestUpdateResumesDownload(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(300 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.offerOf(v2, 1)
	w.cutAfter = 100 << 10
	up := u.updater()
	if _, err := up.Check(context.Background()); !update.IsTransient(err) {
		t.Fatalf("cut download: %v, want a transient error", err)
	}
	if st := up.State(); st.Phase != update.PhaseDownloading || st.Offset < 64<<10 {
		t.Fatalf("state after the cut %+v", st)
	}
	// A new agent process resumes from what the slot holds.
	runToIdle(t, u.updater())
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	w.mu.Lock()
	last := w.ranges[len(w.ranges)-1]
	w.mu.Unlock()
	if !strings.HasPrefix(last, "bytes=") || last == "bytes=0-" {
		t.Fatalf("resume asked %q, want a Range from the written prefix", last)
	}
}

// TestUpdateRollbackOnHealth: the new image boots but the health checks
// fail until the deadline: the agent rolls back and reports why.
func TestUpdateRollbackOnHealth(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(100 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	u.opts = func(o *update.Options) {
		o.HealthTimeout = 3 * time.Second
		o.Liveness = func(context.Context) error { return errors.New("app crashed on start") }
	}
	w.offerOf(v2, 1)
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateFailed, "health check failed: agent liveness: app crashed on start")
	if slot, d := u.running(); slot != hw.SlotA || d != v1.digest() {
		t.Fatalf("running %s %s after rollback, want a %s", slot, d, v1.digest())
	}
	if got := w.lastSoftware(); got != v1.digest() {
		t.Fatalf("software reported %s, want v1", got)
	}
	if n := u.antiRollback(); n != 0 {
		t.Fatalf("anti_rollback advanced to %d on a rollback", n)
	}
}

// TestUpdateRollbackByBootloader: the new image never comes up (the unit
// resets before the agent runs, past the boot limit): the bootloader
// goes back, and the agent reports it.
func TestUpdateRollbackByBootloader(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(100 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	u.opts = func(o *update.Options) {
		o.Reboot = func(ctx context.Context) error {
			for range hw.DefaultBootLimit + 1 { // crash loop
				if err := u.boot(ctx); err != nil {
					return err
				}
			}
			return nil
		}
	}
	w.offerOf(v2, 1)
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateFailed, "rollback by bootloader")
	if slot, _ := u.running(); slot != hw.SlotA {
		t.Fatalf("running %s, want a", slot)
	}
}

// TestUpdateKilledInEveryState kills the agent right after each save of
// its state machine (the state on disk, nothing after it done) in three
// updates: a full image that succeeds, a delta that succeeds, and a full
// image whose health checks fail, so that it rolls back. A new agent
// process then takes over from the state directory and must end exactly
// as an uninterrupted one: one final report, the right slot running, the
// anti-rollback fuses where they belong. Together the three cover every
// phase of the state machine.
func TestUpdateKilledInEveryState(t *testing.T) {
	seen := map[update.Phase]bool{}
	saves := 0
	for _, sc := range []struct {
		name     string
		delta    bool
		rollback bool
	}{
		{"full image", false, false},
		{"delta", true, false},
		{"rollback", false, true},
	} {
		t.Run(sc.name, func(t *testing.T) {
			n := killInEveryState(t, sc.delta, sc.rollback, seen)
			saves += n
		})
	}
	all := []update.Phase{update.PhaseIdle, update.PhaseFetching, update.PhaseDownloading, update.PhaseApplying,
		update.PhaseVerifying, update.PhaseInstalling, update.PhaseRebooting, update.PhaseTrial,
		update.PhaseCommitting, update.PhaseRollingBack, update.PhaseReverting, update.PhaseReporting}
	for _, p := range all {
		if !seen[p] {
			t.Errorf("no kill in state %s", p)
		}
	}
	t.Logf("killed after each of %d saves of three updates, covering %d of the %d phases", saves, len(seen), len(all))
}

// killInEveryState runs one update (a delta or a full image; healthy or
// rolled back) once to count its saves, then once per save, killed right
// after it, and finished by a new updater. It records the phases killed in
// seen and returns the number of saves.
func killInEveryState(t *testing.T, withDelta, rollback bool, seen map[update.Phase]bool) int {
	w := newWorld(t)
	v1, v2 := w.releases(100 << 10)
	w.publish(v1, nil)
	offer := func() { w.offerOf(v2, 1) }
	if withDelta {
		p := w.publishDelta(v1, v2)
		offer = func() { w.offerDelta(v1, v2, p) }
	} else {
		w.publish(v2, nil)
	}
	health := func(o *update.Options) {
		if rollback {
			// The checks fail at once; the deadline ends the trial.
			o.HealthTimeout, o.HealthRetry = 300*time.Millisecond, 50*time.Millisecond
			o.Liveness = func(context.Context) error { return errors.New("app crashed on start") }
		}
	}
	wantState, wantSlot, wantDigest, wantCounter := cradle.UpdateSucceeded, hw.SlotB, v2.digest(), 2
	if rollback {
		wantState, wantSlot, wantDigest, wantCounter = cradle.UpdateFailed, hw.SlotA, v1.digest(), 0
	}

	// A first run counts the saves.
	u := w.newUnit(v1)
	var phases []update.Phase
	u.opts = func(o *update.Options) {
		health(o)
		o.Observe = func(s update.State) { phases = append(phases, s.Phase) }
	}
	offer()
	check(t, u.updater())
	if f := w.finalReports(); len(f) != 1 || f[0].State != wantState {
		t.Fatalf("uninterrupted update: final reports %+v, want one %s", f, wantState)
	}
	t.Logf("%d saved states: %v", len(phases), phases)

	for k := 1; k <= len(phases); k++ {
		w.mu.Lock()
		w.reports, w.software = nil, nil
		w.mu.Unlock()
		u := w.newUnit(v1)
		n := 0
		u.opts = func(o *update.Options) {
			health(o)
			o.Observe = func(s update.State) {
				if n++; n == k {
					seen[s.Phase] = true
					runtime.Goexit() // killed right after the save
				}
			}
		}
		offer()
		done := make(chan struct{})
		go func() {
			defer close(done)
			u.updater().Check(context.Background())
		}()
		<-done
		u.opts = health
		runToIdle(t, u.updater())
		f := w.finalReports()
		if len(f) != 1 || f[0].State != wantState {
			t.Fatalf("killed after save %d (%s): final reports %+v, want one %s", k, phases[k-1], f, wantState)
		}
		if slot, d := u.running(); slot != wantSlot || d != wantDigest || u.antiRollback() != wantCounter {
			t.Fatalf("killed after save %d (%s): running %s %s, anti-rollback %d", k, phases[k-1], slot, d, u.antiRollback())
		}
	}
	return len(phases)
}

// TestOfferOfRunningImage: the server may offer the attempt the unit has
// just finished again, before it consumed the report. The unit does not
// install the image it runs a second time (into the other slot); it
// reports it installed.
func TestOfferOfRunningImage(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(200 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.offerOf(v2, 1)
	check(t, u.updater())
	before := len(w.reports)
	w.offerOf(v2, 1) // offered again: the report not yet consumed
	up := u.updater()
	if took, err := up.Check(context.Background()); err != nil || took {
		t.Fatalf("second check of the same offer: took %v, %v", took, err)
	}
	if slot, d := u.running(); slot != hw.SlotB || d != v2.digest() {
		t.Fatalf("running slot %s %s after the repeated offer, want b %s", slot, d, v2.digest())
	}
	if len(w.reports) != before+1 {
		t.Fatalf("%d reports after the repeated offer, want one more than %d", len(w.reports), before)
	}
	if r := w.reports[len(w.reports)-1]; r.State != cradle.UpdateSucceeded || r.Attempt != 1 || !strings.Contains(r.Reason, "already running") {
		t.Fatalf("report %+v", r)
	}
	if up.State().Phase != update.PhaseIdle {
		t.Fatalf("phase %s, want idle", up.State().Phase)
	}
}
