package update_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
)

// killAt runs the offer on u and stops the updater (as a kill -9 would)
// right after it saves phase.
func killAt(t *testing.T, u *unit, phase update.Phase) {
	t.Helper()
	u.opts = func(o *update.Options) {
		o.Observe = func(s update.State) {
			if s.Phase == phase {
				runtime.Goexit()
			}
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.updater().Check(context.Background())
	}()
	<-done
	u.opts = nil
	if got := u.updater().State().Phase; got != phase {
		t.Fatalf("killed in %s, want %s", got, phase)
	}
}

// TestUpdateCommitAfterBootloaderRollback: the agent is killed right
// after it decided to commit, and the unit then resets past the boot
// limit before the agent runs again, so the bootloader goes back to the
// old slot. The resumed commit must not confirm the new slot nor burn
// its security counter into the fuses while the old image runs (that
// would make the running image one the bootloader refuses); it reports
// the rollback by the bootloader.
func TestUpdateCommitAfterBootloaderRollback(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.offerOf(v2, 1)
	killAt(t, u, update.PhaseCommitting)
	for range hw.DefaultBootLimit {
		if err := u.boot(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if !u.lastBoot.RolledBack || u.lastBoot.Slot != hw.SlotA {
		t.Fatalf("the bootloader did not roll back: %+v", u.lastBoot)
	}
	runToIdle(t, u.updater())
	wantFinal(t, w, cradle.UpdateFailed, "rollback by bootloader")
	if n := u.antiRollback(); n != 0 {
		t.Fatalf("anti_rollback advanced to %d while the old image (counter 1) runs", n)
	}
	if err := u.boot(context.Background()); err != nil || u.lastBoot.Slot != hw.SlotA || u.lastBoot.FellBack {
		t.Fatalf("next boot %+v (%v), want slot a without a fallback", u.lastBoot, err)
	}
	if got := w.lastSoftware(); got != v1.digest() {
		t.Fatalf("software reported %s, want v1", got)
	}
}

// TestUpdateTrialHangingCheckRollsBack: a health check that never
// answers (a server that accepts and stalls, a liveness probe stuck) must
// not keep the trial open past the deadline: it is cut at the deadline
// and the trial rolls back with the check's failure.
func TestUpdateTrialHangingCheckRollsBack(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	u.opts = func(o *update.Options) {
		o.HealthTimeout = 2 * time.Second
		o.Liveness = func(ctx context.Context) error {
			<-ctx.Done() // stuck until cut
			return ctx.Err()
		}
	}
	w.offerOf(v2, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		up := u.updater()
		up.Check(context.Background())
		for i := 0; i < 5 && up.State().Phase != update.PhaseIdle; i++ {
			up.Resume(context.Background())
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the trial is still running 30 s after a 2 s health deadline")
	}
	wantFinal(t, w, cradle.UpdateFailed, "health check failed: agent liveness: context deadline exceeded")
	if slot, _ := u.running(); slot != hw.SlotA || u.antiRollback() != 0 {
		t.Fatalf("running %s, anti_rollback %d after the rollback", slot, u.antiRollback())
	}
}

// TestUpdateFinalReportSentOnce: the server takes the final report but
// is unavailable for the software report that follows; the retry sends
// the software report only, not the outcome again.
func TestUpdateFinalReportSentOnce(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.offerOf(v2, 1)
	w.swFail = 1
	up := u.updater()
	if _, err := up.Check(context.Background()); !update.IsTransient(err) {
		t.Fatalf("check with the software report failing: %v, want a transient error", err)
	}
	if up.State().Phase != update.PhaseReporting {
		t.Fatalf("phase %s, want reporting", up.State().Phase)
	}
	runToIdle(t, u.updater()) // a new agent process
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if got := w.lastSoftware(); got != v2.digest() {
		t.Fatalf("software reported %q, want v2", got)
	}
}

// TestTUFTargetNeedsFreshRefresh: after a refresh that fails (here the
// metadata expired: a freeze), Target answers nothing, not the targets
// of the last refresh that succeeded, so no caller can install from
// metadata the client no longer trusts.
func TestTUFTargetNeedsFreshRefresh(t *testing.T) {
	w := newWorld(t)
	v1, _ := w.releases(4 << 10)
	w.publish(v1, nil)
	now := time.Now()
	m := &update.TUF{Dir: t.TempDir(), TrustedRoot: w.root, HTTP: w.srv.Client(), Now: func() time.Time { return now }}
	url := w.srv.URL + "/device/v1/tuf/"
	if err := m.Refresh(context.Background(), url); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Target(v1.path); err != nil {
		t.Fatalf("target after a good refresh: %v", err)
	}
	now = now.Add(72 * time.Hour)
	if err := m.Refresh(context.Background(), url); err == nil {
		t.Fatal("refresh of expired metadata succeeded")
	}
	if tg, err := m.Target(v1.path); err == nil {
		t.Fatalf("target %s answered after a failed refresh", tg.Path)
	}
}
