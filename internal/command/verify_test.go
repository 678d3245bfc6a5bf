package command_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/command"
	"cradle/internal/pki"
)

func TestVerifyAccepts(t *testing.T) {
	h := hierarchy(t, "prod")
	store := &command.MemorySequence{}
	at := now
	v := h.verifier(store, &at)
	want := cmd(7)
	got, err := v.Verify(h.sign(t, want))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if diff := cmp.Diff(&want, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("command (-want +got):\n%s", diff)
	}
	if store.Last() != 7 {
		t.Errorf("sequence store at %d after accepting 7", store.Last())
	}
	// The next sequence, issued just inside the skew, is accepted too.
	next := cmd(8)
	next.IssuedAt = at.Add(command.DefaultMaxSkew)
	next.ExpiresAt = next.IssuedAt.Add(time.Hour)
	if _, err := v.Verify(h.sign(t, next)); err != nil {
		t.Errorf("Verify(sequence 8 issued within the skew): %v", err)
	}
}

// TestVerifyRefuses covers every refusal; each case runs on a store at
// sequence 10, which a refusal must leave alone.
func TestVerifyRefuses(t *testing.T) {
	h := hierarchy(t, "prod")
	other := hierarchy(t, "other")
	testH := hierarchy(t, "test")
	ctx := context.Background()

	// A command signer under the production root but marked test.
	testMarked, err := pki.Issue(ctx, h.h.Root, h.keys[pki.NameRoot], h.signer().Public(), &x509.Certificate{},
		append(pki.CommandSigner("Acme", t0, pki.CommandSignerLifetime), pki.MarkTest())...)
	if err != nil {
		t.Fatal(err)
	}
	if !pki.IsTestCertificate(testMarked) {
		t.Fatal("MarkTest did not mark the certificate")
	}
	good := cmd(11)
	goodPayload, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	withSeq := func(seq uint64) []byte { return h.sign(t, cmd(seq)) }
	with := func(f func(*command.Command)) []byte {
		c := cmd(11)
		f(&c)
		return h.sign(t, c)
	}

	tests := []struct {
		name string
		env  []byte
		at   time.Time // zero means now
		want error
	}{
		{"oversize", make([]byte, command.MaxEnvelopeSize+1), time.Time{}, command.ErrTooLarge},
		{"not JSON", []byte("reboot now"), time.Time{}, command.ErrMalformed},
		{"empty", nil, time.Time{}, command.ErrMalformed},
		{"unknown field", []byte(`{"payload":"e30=","signature":"AA==","chain":["AA=="],"x":1}`), time.Time{}, command.ErrMalformed},
		{"bad base64", []byte(`{"payload":"!!","signature":"AA==","chain":["AA=="]}`), time.Time{}, command.ErrMalformed},
		{"trailing data", append(withSeq(11), []byte(`{}`)...), time.Time{}, command.ErrMalformed},
		{"trailing garbage", append(withSeq(11), []byte(` x`)...), time.Time{}, command.ErrMalformed},
		{"two envelopes", append(withSeq(11), withSeq(12)...), time.Time{}, command.ErrMalformed},
		{"no chain", envelope(t, goodPayload, signP256(t, h.signer(), goodPayload)), time.Time{}, command.ErrMalformed},
		{"no signature", envelope(t, goodPayload, nil, h.h.CommandSigner), time.Time{}, command.ErrMalformed},
		{"chain not DER", []byte(`{"payload":"e30=","signature":"AA==","chain":["AAAA"]}`), time.Time{}, command.ErrMalformed},
		{"chain from another root", other.sign(t, good), time.Time{}, command.ErrUntrustedChain},
		{"test hierarchy signer", testH.sign(t, good), time.Time{}, command.ErrUntrustedChain},
		{"signer expired", withSeq(11), t0.Add(pki.CommandSignerLifetime + time.Hour), command.ErrUntrustedChain},
		{"signer not yet valid", withSeq(11), t0.Add(-time.Hour), command.ErrUntrustedChain},
		{"server TLS certificate", envelope(t, goodPayload, signP256(t, h.keys[pki.NameServer], goodPayload), h.h.Server), time.Time{}, command.ErrNotCommandSigner},
		{"device CA", envelope(t, goodPayload, signP256(t, h.keys[pki.NameDeviceCA], goodPayload), h.h.DeviceCA()), time.Time{}, command.ErrNotCommandSigner},
		{"test-marked signer under a production root", envelope(t, goodPayload, signP256(t, h.signer(), goodPayload), testMarked), time.Time{}, command.ErrTestSigner},
		{"forged signature", envelope(t, goodPayload, signP256(t, newKey(t), goodPayload), h.h.CommandSigner), time.Time{}, command.ErrBadSignature},
		{"tampered payload", tamper(t, withSeq(11)), time.Time{}, command.ErrBadSignature},
		{"signature of another command", envelope(t, goodPayload, signP256(t, h.signer(), []byte(`{"id":"x"}`)), h.h.CommandSigner), time.Time{}, command.ErrBadSignature},
		{"signed but unknown kind", signedRaw(t, h, `{"id":"c","device":"SN-0001","kind":"format-disk","sequence":11,"issued_at":"2026-03-01T13:00:00Z","expires_at":"2026-03-01T14:00:00Z"}`), time.Time{}, command.ErrMalformed},
		{"signed but args not an object", signedRaw(t, h, `{"id":"c","device":"SN-0001","kind":"ping","args":[1],"sequence":11,"issued_at":"2026-03-01T13:00:00Z","expires_at":"2026-03-01T14:00:00Z"}`), time.Time{}, command.ErrMalformed},
		{"signed but trailing garbage", signedRaw(t, h, `{"id":"c","device":"SN-0001","kind":"ping","sequence":11,"issued_at":"2026-03-01T13:00:00Z","expires_at":"2026-03-01T14:00:00Z"}]`), time.Time{}, command.ErrMalformed},
		{"signed but unknown field", signedRaw(t, h, `{"id":"c","device":"SN-0001","kind":"ping","tenant":"x","sequence":11,"issued_at":"2026-03-01T13:00:00Z","expires_at":"2026-03-01T14:00:00Z"}`), time.Time{}, command.ErrMalformed},
		{"foreign device", with(func(c *command.Command) { c.Device = "SN-0002" }), time.Time{}, command.ErrForeignDevice},
		{"foreign and expired: target first", with(func(c *command.Command) { c.Device = "SN-0002" }), issued.Add(2 * time.Hour), command.ErrForeignDevice},
		{"expired", withSeq(11), issued.Add(time.Hour), command.ErrExpired},
		{"issued in the future", with(func(c *command.Command) {
			c.IssuedAt = now.Add(command.DefaultMaxSkew + time.Second)
			c.ExpiresAt = c.IssuedAt.Add(time.Hour)
		}), time.Time{}, command.ErrNotYetValid},
		{"replay of the last sequence", withSeq(10), time.Time{}, command.ErrReplay},
		{"older sequence", withSeq(3), time.Time{}, command.ErrReplay},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store, err := command.OpenSequenceFile(filepath.Join(t.TempDir(), "seq"))
			if err != nil {
				t.Fatal(err)
			}
			if err := store.Advance(10); err != nil {
				t.Fatal(err)
			}
			at := now
			if !tc.at.IsZero() {
				at = tc.at
			}
			got, err := h.verifier(store, &at).Verify(tc.env)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v; want %v", err, tc.want)
			}
			if got != nil {
				t.Errorf("Verify returned a command with the error %v", err)
			}
			var ve *command.VerifyError
			if !errors.As(err, &ve) || ve.Detail == "" {
				t.Errorf("error %v is not a *VerifyError with a detail", err)
			}
			if store.Last() != 10 {
				t.Errorf("a refused command moved the sequence to %d", store.Last())
			}
		})
	}
}

// tamper flips one byte of the payload of an envelope.
func tamper(t testing.TB, env []byte) []byte {
	t.Helper()
	var e command.Envelope
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	e.Payload = []byte(strings.Replace(string(e.Payload), `"reboot"`, `"rekey"`, 1))
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// signedRaw signs an arbitrary payload with h's command signer.
func signedRaw(t *testing.T, h *hier, payload string) []byte {
	t.Helper()
	return envelope(t, []byte(payload), signP256(t, h.signer(), []byte(payload)), h.h.CommandSigner)
}

func TestVerifyReplayAndOrder(t *testing.T) {
	h := hierarchy(t, "prod")
	path := filepath.Join(t.TempDir(), "sequence")
	store, err := command.OpenSequenceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := now
	v := h.verifier(store, &at)
	first := h.sign(t, cmd(1))
	if _, err := v.Verify(first); err != nil {
		t.Fatalf("first command: %v", err)
	}
	if _, err := v.Verify(first); !errors.Is(err, command.ErrReplay) {
		t.Fatalf("replay: %v; want ErrReplay", err)
	}
	five := h.sign(t, cmd(5))
	four := h.sign(t, cmd(4))
	if _, err := v.Verify(five); err != nil {
		t.Fatalf("sequence 5: %v", err)
	}
	_, err = v.Verify(four)
	var ve *command.VerifyError
	if !errors.Is(err, command.ErrReplay) || !errors.As(err, &ve) || ve.Command == nil || ve.Command.ID != "cmd-4" {
		t.Fatalf("sequence 4 after 5: %v; want ErrReplay naming cmd-4", err)
	}
	r := command.Refused(err, at)
	if r.CommandID != "cmd-4" || r.Sequence != 4 || r.Status != command.StatusRefused || !strings.Contains(r.Error, "not above the last accepted 5") {
		t.Errorf("Refused = %+v", r)
	}

	// After a restart the replay guard still holds and refusals did not move it.
	reopened, err := command.OpenSequenceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if reopened.Last() != 5 {
		t.Fatalf("reopened store at %d; want 5", reopened.Last())
	}
	v2 := h.verifier(reopened, &at)
	for _, env := range [][]byte{first, four, five} {
		if _, err := v2.Verify(env); !errors.Is(err, command.ErrReplay) {
			t.Errorf("after reopen: %v; want ErrReplay", err)
		}
	}
	if _, err := v2.Verify(h.sign(t, cmd(6))); err != nil {
		t.Errorf("sequence 6 after reopen: %v", err)
	}
}

func TestVerifyIntermediate(t *testing.T) {
	// A command signer issued by a CA under the root, sent with that CA.
	h := hierarchy(t, "prod")
	k := newKey(t)
	leaf, err := pki.Issue(context.Background(), h.h.DeviceCA(), h.keys[pki.NameDeviceCA], k.Public(), &x509.Certificate{},
		pki.CommandSigner("Acme", t0, 24*time.Hour)...)
	if err != nil {
		t.Fatal(err)
	}
	env, err := command.Sign(cmd(1), k, []*x509.Certificate{leaf, h.h.DeviceCA()})
	if err != nil {
		t.Fatal(err)
	}
	at := now
	if _, err := h.verifier(&command.MemorySequence{}, &at).Verify(env); err != nil {
		t.Errorf("Verify with an intermediate: %v", err)
	}
	env, err = command.Sign(cmd(1), k, []*x509.Certificate{leaf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.verifier(&command.MemorySequence{}, &at).Verify(env); !errors.Is(err, command.ErrUntrustedChain) {
		t.Errorf("Verify without the intermediate: %v; want ErrUntrustedChain", err)
	}
}

func TestVerifyTestDevice(t *testing.T) {
	// A device of a test hierarchy takes commands from its own test signer.
	h := hierarchy(t, "test")
	at := now
	if _, err := h.verifier(&command.MemorySequence{}, &at).Verify(h.sign(t, cmd(1))); err != nil {
		t.Errorf("test device, test signer: %v", err)
	}
	prod := hierarchy(t, "prod")
	if _, err := h.verifier(&command.MemorySequence{}, &at).Verify(prod.sign(t, cmd(1))); !errors.Is(err, command.ErrUntrustedChain) {
		t.Errorf("test device, production signer: %v; want ErrUntrustedChain", err)
	}
}

// failingStore is a store whose disk is full.
type failingStore struct{}

func (failingStore) Last() uint64         { return 0 }
func (failingStore) Advance(uint64) error { return errors.New("disk full") }

func TestVerifyStoreFailure(t *testing.T) {
	h := hierarchy(t, "prod")
	at := now
	got, err := h.verifier(&failingStore{}, &at).Verify(h.sign(t, cmd(1)))
	if got != nil || !errors.Is(err, command.ErrSequenceStore) || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Verify = %v, %v; want no command and ErrSequenceStore with the cause", got, err)
	}
}

func TestVerifierConfig(t *testing.T) {
	h := hierarchy(t, "prod")
	env := h.sign(t, cmd(1))
	for name, v := range map[string]*command.Verifier{
		"no root":   {Serial: serial, Sequence: &command.MemorySequence{}},
		"no serial": {Root: h.h.Root, Sequence: &command.MemorySequence{}},
		"no store":  {Root: h.h.Root, Serial: serial},
	} {
		if _, err := v.Verify(env); err == nil {
			t.Errorf("%s: Verify accepted", name)
		}
	}
}
