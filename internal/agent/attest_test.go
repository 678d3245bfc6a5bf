package agent_test

import (
	"testing"
	"time"

	"cradle/internal/pki"
)

// TestNoAttestationWithoutTPM: a unit whose key store is not a TPM
// enrolls without attesting (the EST stack serves no attestation route)
// and its security state says not attested. The TPM flow is
// cmd/cradle's TestTPMAttestationEndToEnd, against swtpm.
func TestNoAttestationWithoutTPM(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	u := s.unit(t, "SN-1")
	now := s.clock.Now()
	id := u.open(t, now)
	if _, err := id.Step(t.Context(), now); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if id.Attested() || id.State().Attestation != nil {
		t.Errorf("a file key store unit says it is attested: %+v", id.State().Attestation)
	}
}
