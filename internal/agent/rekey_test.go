package agent_test

import (
	"crypto/ecdsa"
	"strings"
	"testing"
	"time"

	"cradle/internal/agent"
	"cradle/internal/pki"
)

// TestRekey: an enrolled unit replaces its key on demand, long before
// its renewal time; with the server down a rekey fails and the working
// identity stays; a unit not enrolled refuses.
func TestRekey(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	ctx := t.Context()
	u := s.unit(t, "SN-RK")
	now := s.clock.Now()
	id := u.open(t, now)
	if err := id.Rekey(ctx, now); err == nil || !strings.Contains(err.Error(), "not enrolled") {
		t.Fatalf("rekey before enrolling: %v", err)
	}
	if _, err := id.Step(ctx, now); err != nil {
		t.Fatal(err)
	}
	first := leaf(t, id.State())

	s.down.Store(true)
	if err := id.Rekey(ctx, now.Add(time.Hour)); err == nil {
		t.Fatal("rekey with the server down succeeded")
	}
	if st := id.State(); !leaf(t, st).Equal(first) || st.Status != agent.StatusEnrolled || !keyExists(t, u.dev, "ldevid-1") || keyExists(t, u.dev, "ldevid-2") {
		t.Fatalf("after a failed rekey: status %s, key %s; want the working identity kept and no new key left", st.Status, st.Current.KeyName)
	}

	s.down.Store(false)
	if err := id.Rekey(ctx, now.Add(time.Hour)); err != nil {
		t.Fatalf("rekey: %v", err)
	}
	st := id.State()
	second := leaf(t, st)
	if st.Status != agent.StatusEnrolled || st.Current.KeyName != "ldevid-2" || second.Equal(first) || second.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
		t.Fatalf("after rekey: status %s, key %s; want enrolled with a new key and certificate", st.Status, st.Current.KeyName)
	}
	if keyExists(t, u.dev, "ldevid-1") {
		t.Error("the old key survived the rekey")
	}
	// Reopened, the unit has the new identity.
	if got := leaf(t, u.open(t, now.Add(2*time.Hour)).State()); !got.Equal(second) {
		t.Error("a reopened identity lost the new LDevID")
	}
}
