//go:build cgo

package tuf_test

import (
	"context"
	"crypto"
	"testing"

	"cradle/internal/kms"
	"cradle/internal/testkit"
	"cradle/internal/tuf"
)

// TestPKCS11Keys: a root key and the targets key in a SoftHSM2 token sign
// the repository through internal/kms, and go-tuf's client accepts it.
func TestPKCS11Keys(t *testing.T) {
	hsm := testkit.NewSoftHSM(t, "tuf")
	ctx := context.Background()
	gen := func(object string) crypto.Signer {
		s, err := kms.Generate(ctx, hsm.URI("tuf", object), kms.ECDSAP256, kms.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kms.Close(s) })
		return s
	}
	f := &fixture{dir: t.TempDir(), clock: newClock()}
	f.root = []crypto.Signer{gen("root-1"), newKey(t, kms.Ed25519)}
	f.keys = tuf.Signers{Root: f.root, Targets: newKey(t, kms.Ed25519), Snapshot: newKey(t, kms.ECDSAP256), Timestamp: newKey(t, kms.Ed25519)}
	repo, err := tuf.Init(ctx, f.options(), tuf.RootSpec{Keys: publics(f.root...), Threshold: 2}, f.keys)
	if err != nil {
		t.Fatal(err)
	}
	f.repo = repo
	rootV1, _ := repo.Root()
	s := newServer(t, f.dir)
	f.publish(t, s, "gw/1.bin", custom("gw", 1))

	hsmTargets := gen("targets")
	if err := repo.RotateKey(ctx, "targets", hsmTargets, f.keys); err != nil {
		t.Fatal(err)
	}
	f.keys.Targets = hsmTargets
	want := f.publish(t, s, "gw/2.bin", custom("gw", 2))
	got, err := download(client(t, s, rootV1, f.clock.Now()), "gw/2.bin")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("downloaded %q", got)
	}
}
