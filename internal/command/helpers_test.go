package command_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"cradle/internal/command"
	"cradle/internal/pki"
)

// t0 is when every test hierarchy is made; commands are issued an hour
// later and devices read the clock at now.
var (
	t0     = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	issued = t0.Add(time.Hour)
	now    = issued.Add(time.Minute)
)

const serial = "SN-0001"

// hier is a hierarchy made by pki.Init with its in-memory ECDSA keys.
type hier struct {
	h    *pki.Hierarchy
	keys map[string]crypto.Signer
}

func (h *hier) key(name string) (crypto.Signer, error) {
	if k, ok := h.keys[name]; ok {
		return k, nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	h.keys[name] = k
	return k, nil
}

var (
	hierMu sync.Mutex
	hiers  = map[string]*hier{}
)

// hierarchy returns the shared hierarchy called name (profile test when
// name starts with "test", else production).
func hierarchy(t testing.TB, name string) *hier {
	t.Helper()
	hierMu.Lock()
	defer hierMu.Unlock()
	if h, ok := hiers[name]; ok {
		return h
	}
	profile := pki.ProfileProduction
	if len(name) >= 4 && name[:4] == "test" {
		profile = pki.ProfileTest
	}
	h := &hier{keys: map[string]crypto.Signer{}}
	var err error
	h.h, err = pki.Init(context.Background(), pki.InitOptions{
		Profile: profile, Org: "Acme " + name, Hostnames: []string{"cradle.example.test"},
		Keys: h.key, Now: func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatalf("pki.Init(%s): %v", name, err)
	}
	hiers[name] = h
	return h
}

func (h *hier) signer() crypto.Signer { return h.keys[pki.NameCommandSigner] }

// cmd is a valid command for serial with sequence seq.
func cmd(seq uint64) command.Command {
	return command.Command{
		ID: fmt.Sprintf("cmd-%d", seq), Device: serial, Kind: command.KindReboot,
		Args:     json.RawMessage(`{"delay_s":5}`),
		Sequence: seq, IssuedAt: issued, ExpiresAt: issued.Add(time.Hour),
	}
}

// sign signs c with h's command signer.
func (h *hier) sign(t testing.TB, c command.Command) []byte {
	t.Helper()
	env, err := command.Sign(c, h.signer(), []*x509.Certificate{h.h.CommandSigner})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return env
}

// verifier is a device trusting h's root, at clock *at.
func (h *hier) verifier(store command.SequenceStore, at *time.Time) *command.Verifier {
	return &command.Verifier{Root: h.h.Root, Serial: serial, Sequence: store, Now: func() time.Time { return *at }}
}

// envelope builds an envelope by hand, bypassing Sign's checks.
func envelope(t testing.TB, payload, sig []byte, chain ...*x509.Certificate) []byte {
	t.Helper()
	e := command.Envelope{Payload: payload, Signature: sig}
	for _, c := range chain {
		e.Chain = append(e.Chain, c.Raw)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signP256 signs payload the way Sign does for a P-256 key.
func signP256(t testing.TB, k crypto.Signer, payload []byte) []byte {
	t.Helper()
	d := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, k.(*ecdsa.PrivateKey), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
