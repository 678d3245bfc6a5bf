package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/command"
	"cradle/internal/kms"
	"cradle/internal/pki"
	"cradle/internal/testkit"
)

// TestWipeStrayKeys: the wipe leaves none of the agent's keys that a
// name alone would not find. In a PKCS#11 token (SoftHSM2): a second key
// pair under the LDevID key's label, and a private key whose public half
// is gone, both made with pkcs11-tool. In a TPM (swtpm): a key the store
// made persistent but whose index entry was lost (a crash between the
// two). Another program's key, and an endorsement key that tpm2_createek
// put in the store's handle range, stay.
func TestWipeStrayKeys(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	p := commandPKI(t, "Acme")
	newTombstoneInbox(t, s)

	t.Run(hw.KeyStorePKCS11, func(t *testing.T) {
		h := testkit.NewSoftHSM(t, "se")
		ks, err := hw.NewPKCS11KeyStore(h.Module, "se", "file:"+h.PINFile)
		if errors.Is(err, kms.ErrNoPKCS11) {
			t.Skip("this build has no cgo, hence no PKCS#11")
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ks.Close() })
		w := newWipeUnit(t, s, p, "SN-S1", hw.KeyStorePKCS11, ks, agent.WipeOptions{})
		tool := testkit.NeedProgram(t, "pkcs11-tool")
		login := []string{"--module", h.Module, "--token-label", "se", "--login", "--pin", h.PIN}
		testkit.Run(t, tool, append(login, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "ldevid-1", "--id", "99")...)
		testkit.Run(t, tool, append(login, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "ldevid-7", "--id", "98")...)
		testkit.Run(t, tool, append(login, "--delete-object", "--type", "pubkey", "--label", "ldevid-7")...)
		before := h.Objects(t, "se")
		if n := strings.Count(before, "label:      ldevid-1"); n != 4 {
			t.Fatalf("want two key pairs labelled ldevid-1, pkcs11-tool lists %d objects:\n%s", n, before)
		}
		if n := strings.Count(before, "label:      ldevid-7"); n != 1 {
			t.Fatalf("want a private key alone labelled ldevid-7, pkcs11-tool lists %d objects:\n%s", n, before)
		}
		if res := w.wipe(t); res.Status != command.StatusDone {
			t.Fatalf("wipe result %+v", res)
		}
		out := h.Objects(t, "se")
		if strings.Contains(out, "ldevid") || strings.Contains(out, "label:      idevid") || !strings.Contains(out, "other-app") {
			t.Errorf("pkcs11-tool lists after the wipe:\n%s", out)
		}
		w.checkWiped(t, w.u.dev)
	})

	t.Run(hw.KeyStoreTPM, func(t *testing.T) {
		sw := testkit.StartSWTPM(t)
		getcap := testkit.NeedProgram(t, "tpm2_getcap")
		createek := testkit.NeedProgram(t, "tpm2_createek")
		state := filepath.Join(t.TempDir(), "tpm")
		ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)
		var erased []cradle.ErasedObject
		opts := agent.WipeOptions{}
		opts.Send = func(_ context.Context, st cradle.SignedTombstone) error {
			var ts cradle.Tombstone
			if err := json.Unmarshal(st.Payload, &ts); err != nil {
				return err
			}
			erased = ts.Erased
			return nil
		}
		w := newWipeUnit(t, s, p, "SN-S2", hw.KeyStoreTPM, ks, opts)
		// A key made persistent whose index entry is lost.
		if _, err := ks.CreateKey(t.Context(), "ldevid-2", ""); err != nil {
			t.Fatal(err)
		}
		index := filepath.Join(state, "tpm-keys.json")
		b, err := os.ReadFile(index)
		if err != nil {
			t.Fatal(err)
		}
		var idx struct {
			Version int                        `json:"version"`
			Keys    map[string]json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			t.Fatal(err)
		}
		var lost struct{ Handle uint32 }
		json.Unmarshal(idx.Keys["ldevid-2"], &lost)
		var other struct{ Handle uint32 }
		json.Unmarshal(idx.Keys["other-app"], &other)
		delete(idx.Keys, "ldevid-2")
		b, _ = json.Marshal(idx)
		if err := os.WriteFile(index, b, 0o600); err != nil {
			t.Fatal(err)
		}
		orphan := fmt.Sprintf("0x%X", lost.Handle) // as tpm2_getcap writes handles
		const ek = "0x810100F0"
		testkit.Run(t, createek, "--tcti", sw.TCTI(), "-c", ek, "-G", "ecc", "-u", filepath.Join(t.TempDir(), "ek.pub"))
		handles := testkit.Run(t, getcap, "--tcti", sw.TCTI(), "handles-persistent")
		if lost.Handle == 0 || !strings.Contains(handles, orphan) || !strings.Contains(handles, ek) {
			t.Fatalf("before the wipe, want the orphan at %s and the EK at %s:\n%s", orphan, ek, handles)
		}
		if res := w.wipe(t); res.Status != command.StatusDone {
			t.Fatalf("wipe result %+v", res)
		}
		handles = testkit.Run(t, getcap, "--tcti", sw.TCTI(), "handles-persistent")
		if strings.Contains(handles, orphan) {
			t.Errorf("the orphaned key at %s survived the wipe:\n%s", orphan, handles)
		}
		if !strings.Contains(handles, ek) || !strings.Contains(handles, fmt.Sprintf("0x%X", other.Handle)) {
			t.Errorf("the wipe evicted the endorsement key at %s or the other program's key at %#x:\n%s", ek, other.Handle, handles)
		}
		if !slices.Contains(erased, cradle.ErasedObject{Store: hw.KeyStoreTPM, Kind: "key", Name: fmt.Sprintf("%s%#x", hw.OrphanKeyPrefix, lost.Handle)}) {
			t.Errorf("the tombstone does not list the orphaned key: %+v", erased)
		}
		w.checkWiped(t, w.u.dev)
	})
}
