package update_test

import (
	"context"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
)

// TestUpdateRenewsExpiredURL: the download is cut, and by the time the
// agent resumes, its signed artifact URL has expired (403). The agent
// does not retry the dead URL: it takes the fresh offer's URL and
// resumes the download from what the slot holds.
func TestUpdateRenewsExpiredURL(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(300 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.sig = "first"
	w.offerOf(v2, 1)
	w.cutAfter = 100 << 10
	up := u.updater()
	if _, err := up.Check(context.Background()); !update.IsTransient(err) {
		t.Fatalf("cut download: %v, want a transient error", err)
	}
	// The link expires; the server's offer now carries a new one.
	w.mu.Lock()
	w.sig = "second"
	w.mu.Unlock()
	w.offerOf(v2, 1)

	if err := up.Resume(context.Background()); err != nil {
		t.Fatalf("resume after the link expired: %v", err)
	}
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if slot, d := u.running(); slot != hw.SlotB || d != v2.digest() {
		t.Fatalf("running slot %s %s, want b %s", slot, d, v2.digest())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.refused != 1 {
		t.Fatalf("%d artifact requests refused, want 1 (the expired URL tried once)", w.refused)
	}
	if last := w.ranges[len(w.ranges)-1]; !strings.HasPrefix(last, "bytes=") || last == "bytes=0-" {
		t.Fatalf("the renewed download asked %q, want a Range from the written prefix", last)
	}
}

// TestUpdateExpiredURLNoOffer: the link expired and the server no longer
// offers the update (the rollout was aborted): the update ends as failed
// with the reason, on the old slot, instead of retrying forever.
func TestUpdateExpiredURLNoOffer(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(100 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	w.offerOf(v2, 1)
	w.mu.Lock()
	w.offer.Artifact.URL += "?sig=old"
	w.sig = "new"
	w.mu.Unlock()
	// The rollout is aborted once the download has begun.
	u.opts = func(o *update.Options) {
		o.Observe = func(s update.State) {
			if s.Phase == update.PhaseDownloading {
				w.mu.Lock()
				w.offer = nil
				w.mu.Unlock()
			}
		}
	}
	up := u.updater()
	if _, err := up.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	runToIdle(t, up)
	wantFinal(t, w, cradle.UpdateFailed, "no longer offers this update")
	if slot, d := u.running(); slot != hw.SlotA || d != v1.digest() {
		t.Fatalf("running slot %s %s, want a %s", slot, d, v1.digest())
	}
}
