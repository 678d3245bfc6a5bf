package hw_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

// TestTPMKeyStoreOrphans: a key whose index entry was lost is listed by
// ListOrphans and evicted by DestroyOrphan (then ErrNotFound); a key the
// index names, an endorsement key tpm2_createek put in the range, and a
// handle outside the range are refused with ErrInvalid and stay.
func TestTPMKeyStoreOrphans(t *testing.T) {
	ctx := t.Context()
	sw := testkit.StartSWTPM(t)
	createek := testkit.NeedProgram(t, "tpm2_createek")
	state := t.TempDir()
	ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)
	for _, n := range []string{"kept", "lost"} {
		if _, err := ks.CreateKey(ctx, n, ""); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Run(t, createek, "--tcti", sw.TCTI(), "-c", "0x810100F0", "-G", "ecc", "-u", filepath.Join(t.TempDir(), "ek.pub"))
	if got, err := ks.ListOrphans(ctx); err != nil || len(got) != 0 {
		t.Fatalf("ListOrphans with a whole index: %v, %v", got, err)
	}
	index := filepath.Join(state, "tpm-keys.json")
	b, _ := os.ReadFile(index)
	var idx map[string]any
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	delete(idx["keys"].(map[string]any), "lost")
	b, _ = json.Marshal(idx)
	os.WriteFile(index, b, 0o600)

	got, err := ks.ListOrphans(ctx)
	if err != nil || !slices.Equal(got, []string{"handle:0x81010001"}) {
		t.Fatalf("ListOrphans: %v, %v; want the lost key at 0x81010001", got, err)
	}
	for _, o := range []string{"handle:0x81010000", "handle:0x810100f0", "handle:0x81000001", "0x81010001", "handle:x"} {
		if err := ks.DestroyOrphan(ctx, o); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("DestroyOrphan(%s): %v, want ErrInvalid", o, err)
		}
	}
	if err := ks.DestroyOrphan(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if err := ks.DestroyOrphan(ctx, got[0]); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("second DestroyOrphan: %v, want ErrNotFound", err)
	}
	out := persistentHandles(t, sw)
	if strings.Contains(out, "0x81010001") || !strings.Contains(out, "0x81010000") || !strings.Contains(out, "0x810100F0") {
		t.Errorf("persistent handles after DestroyOrphan:\n%s", out)
	}
	if _, err := ks.Key(ctx, "kept"); err != nil {
		t.Errorf("the named key: %v", err)
	}
}
