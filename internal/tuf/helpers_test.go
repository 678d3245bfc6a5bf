package tuf_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/kms"
	"cradle/internal/tuf"
)

// clock is an injected clock a test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newKey makes a key file through internal/kms, as an operator would.
func newKey(t *testing.T, alg kms.Algorithm) crypto.Signer {
	t.Helper()
	s, err := kms.Generate(context.Background(), filepath.Join(t.TempDir(), "key.pem"), alg, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fixture is a repository in a directory with its keys: root 2 of 3
// (ECDSA P-256 and Ed25519 mixed).
type fixture struct {
	dir   string
	clock *clock
	repo  *tuf.Repository
	root  []crypto.Signer
	keys  tuf.Signers // all online keys and two root keys
}

func publics(ss ...crypto.Signer) []crypto.PublicKey {
	var out []crypto.PublicKey
	for _, s := range ss {
		out = append(out, s.Public())
	}
	return out
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), clock: newClock()}
	f.root = []crypto.Signer{newKey(t, kms.ECDSAP256), newKey(t, kms.Ed25519), newKey(t, kms.ECDSAP256)}
	f.keys = tuf.Signers{
		Root:      f.root[:2],
		Targets:   newKey(t, kms.ECDSAP256),
		Snapshot:  newKey(t, kms.Ed25519),
		Timestamp: newKey(t, kms.ECDSAP256),
	}
	repo, err := tuf.Init(context.Background(), f.options(), tuf.RootSpec{Keys: publics(f.root...), Threshold: 2}, f.keys)
	if err != nil {
		t.Fatal(err)
	}
	f.repo = repo
	return f
}

func (f *fixture) options() tuf.Options {
	return tuf.Options{Store: tuf.DirStore{Dir: f.dir}, Now: f.clock.Now}
}

// snapshotDir returns every file of the repository directory, to prove an
// operation wrote nothing.
func (f *fixture) snapshotDir(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(f.dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func (f *fixture) assertUnchanged(t *testing.T, before map[string][]byte) {
	t.Helper()
	after := f.snapshotDir(t)
	if len(after) != len(before) {
		t.Fatalf("repository has %d files, had %d", len(after), len(before))
	}
	for name, b := range before {
		if !bytes.Equal(after[name], b) {
			t.Fatalf("%s changed", name)
		}
	}
}

func custom(model string, counter uint32) tuf.Custom {
	return tuf.Custom{Model: model, HardwareRevisions: []string{"a", "b"}, Version: "1.0." + string(rune('0'+counter%10)), SecurityCounter: counter}
}

func target(content []byte, c tuf.Custom) tuf.Target {
	sum := sha256.Sum256(content)
	return tuf.Target{Length: int64(len(content)), SHA256: sum[:], Custom: c}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", code)
	}
	if got := cradle.ErrorCode(err); got != code {
		t.Fatalf("got %v (code %s), want code %s", err, got, code)
	}
}
