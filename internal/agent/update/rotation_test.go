package update_test

// Signing-key rotation that offline devices survive (issue 9): the
// repository rotates its targets key and its root keys twice while units
// are offline; when they come back they walk the root chain, install a
// release signed after the rotations, and refuse from then on what only a
// retired key signed. The same for the MCUboot image key.

import (
	"context"
	"crypto"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/tufclient"
	"cradle/internal/agent/update"
	"cradle/internal/kms"
	"cradle/internal/tuf"
)

// trustedRootVersion is the version of the root the unit's TUF client
// keeps.
func (u *unit) trustedRootVersion() int64 {
	u.t.Helper()
	b, err := os.ReadFile(filepath.Join(u.tufDir, "root.json"))
	if err != nil {
		u.t.Fatal(err)
	}
	return parseMeta[metadata.RootType](u.t, b).Signed.Version
}

// wantStays runs the offered update and checks that the unit refused it
// with a reason holding each of parts, and still runs running from the
// same slot with the same boot environment and fuses.
func wantStays(t *testing.T, w *world, u *unit, running release, parts ...string) {
	t.Helper()
	ctx := context.Background()
	w.resetReports()
	env, err := u.dev.BootEnv.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slot, _ := u.running()
	counter := u.antiRollback()
	check(t, u.updater())
	f := w.finalReports()
	if len(f) != 1 || f[0].State != cradle.UpdateFailed {
		t.Fatalf("final reports %+v, want one %s", f, cradle.UpdateFailed)
	}
	for _, p := range parts {
		if !strings.Contains(f[0].Reason, p) {
			t.Fatalf("reason %q does not say %q", f[0].Reason, p)
		}
	}
	t.Logf("refused: %s", f[0].Reason)
	after, _ := u.dev.BootEnv.Get(ctx)
	if !maps.Equal(env, after) {
		t.Fatalf("boot environment changed: %v → %v", env, after)
	}
	if s, d := u.running(); s != slot || d != running.digest() {
		t.Fatalf("running %s %s, want %s %s", s, d, slot, running.digest())
	}
	if n := u.antiRollback(); n != counter {
		t.Fatalf("anti_rollback %d → %d on a refusal", counter, n)
	}
}

func (w *world) resetReports() {
	w.mu.Lock()
	w.reports, w.software = nil, nil
	w.mu.Unlock()
}

// TestOfflineAcrossTwoRotations: a unit that last refreshed at root
// version 1 and a unit fresh from the factory (root v1 in its factory
// data, never online) are offline while the repository rotates the
// targets key (root v2), the root keys to a new single key (root v3), the
// targets key again (root v4) and the root keys to 2 of 3 new keys (root
// v5). v2, published after that with the third targets key, is installed
// by both through the real updater; their TUF clients now trust root v5.
// Afterwards a thief of each retired targets key forges targets listing
// v3, and a thief of every retired root key forges root v6 giving the
// targets role to a key of his: every forgery is refused as
// arbitrary-software, the unit stays on v2; the honest v3 is installed.
func TestOfflineAcrossTwoRotations(t *testing.T) {
	ctx := context.Background()
	w, v1, v2, seen := scene(t)
	seen.trustNow() // the last time it was online: root v1
	if v := seen.trustedRootVersion(); v != 1 {
		t.Fatalf("trusted root v%d before the rotations, want 1", v)
	}
	fresh := w.newUnit(v1)

	retiredTargets := []crypto.Signer{w.keys.Targets}
	retiredRoot := append([]crypto.Signer(nil), w.keys.Root...)
	rotateTargets := func() {
		t.Helper()
		k := newKey(t, kms.Ed25519)
		if err := w.repo.RotateKey(ctx, tuf.RoleTargets, k, w.keys); err != nil {
			t.Fatal(err)
		}
		w.keys.Targets = k
	}
	rotateRoot := func(n, threshold int) {
		t.Helper()
		var keys []crypto.Signer
		var pubs []crypto.PublicKey
		for range n {
			k := newKey(t, kms.ECDSAP256)
			keys, pubs = append(keys, k), append(pubs, k.Public())
		}
		// A threshold of the old root's keys and of the new root's.
		s := w.keys
		s.Root = append(append([]crypto.Signer(nil), w.keys.Root...), keys[:threshold]...)
		if err := w.repo.RotateRoot(ctx, tuf.RootSpec{Keys: pubs, Threshold: threshold}, s); err != nil {
			t.Fatal(err)
		}
		w.keys.Root = keys[:threshold]
	}
	rotateTargets()
	retiredTargets = append(retiredTargets, w.keys.Targets)
	rotateRoot(1, 1)
	retiredRoot = append(retiredRoot, w.keys.Root...)
	rotateTargets()
	rotateRoot(3, 2)
	if v := w.repo.Versions()[tuf.RoleRoot]; v != 5 {
		t.Fatalf("repository at root v%d after four rotations, want 5", v)
	}

	w.publish(v2, nil)
	for name, u := range map[string]*unit{"seen at v1": seen, "from the factory": fresh} {
		w.offerOf(v2, 1)
		wantInstalled(t, w, u, v2)
		if v := u.trustedRootVersion(); v != 5 {
			t.Fatalf("unit %s trusts root v%d after the update, want 5", name, v)
		}
		t.Logf("unit %s: root v1 → v5, installed %s", name, v2.version)
	}

	u := seen
	v3 := release{path: model + "/3.0.0/app.bin", image: w.image(v2.image[512:], "3.0.0", 3, w.imageKey), version: "3.0.0", counter: 3}
	for i, k := range retiredTargets {
		w.forgeTargets(k, v3)
		w.offerOf(v3, 1+i)
		wantStays(t, w, u, v2, "TUF metadata refused", "arbitrary-software refused (targets)")
	}

	// Root v6 signed by every retired root key (v1's and v3's), listing
	// the thief's targets key.
	thief := newKey(t, kms.ECDSAP256)
	root := parseMeta[metadata.RootType](t, w.readRepo("root.json"))
	root.Signed.Version++
	for _, id := range root.Signed.Roles[tuf.RoleTargets].KeyIDs {
		if err := root.Signed.RevokeKey(id, tuf.RoleTargets); err != nil {
			t.Fatal(err)
		}
	}
	tk, err := metadata.KeyFromPublicKey(thief.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Signed.AddKey(tk, tuf.RoleTargets); err != nil {
		t.Fatal(err)
	}
	root.ClearSignatures()
	for _, k := range retiredRoot {
		if _, err := root.Sign(tuf.MetadataSigner(k)); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := root.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	w.writeRepo("6.root.json", rb)
	w.forgeTargets(thief, v3)
	w.offerOf(v3, 3)
	wantStays(t, w, u, v2, "TUF metadata refused", "arbitrary-software refused (root)")
	if v := u.trustedRootVersion(); v != 5 {
		t.Fatalf("unit trusts root v%d after the forged root, want 5", v)
	}
	// The client's own answer is the typed refusal.
	m := &update.TUF{Dir: u.tufDir, HTTP: w.srv.Client()}
	err = m.Refresh(ctx, w.srv.URL+"/device/v1/tuf/")
	var refusal *tufclient.Error
	if !errors.As(err, &refusal) || refusal.Attack != tufclient.ArbitrarySoftware || refusal.Role != tuf.RoleRoot {
		t.Fatalf("refresh against the forged root: %v, want an arbitrary-software refusal of root", err)
	}

	// The repository publishes on; the honest v3 is installed.
	if err := os.Remove(filepath.Join(w.repoDir, "6.root.json")); err != nil {
		t.Fatal(err)
	}
	w.publish(v3, nil)
	// Past the versions the thief's timestamp and snapshot took.
	for range 4 {
		if err := w.repo.Publish(ctx, w.keys); err != nil {
			t.Fatal(err)
		}
	}
	w.offerOf(v3, 4)
	wantInstalled(t, w, u, v3)
}

// TestRetiredImageKeyRefused: the image key is rotated and the old one
// retired; the unit's configuration lists only the new key (its
// image_key_hash fuse is blank, so the configured keys decide). An image
// signed by the retired key, listed in validly signed TUF metadata, is
// refused by the updater's signature check before anything is marked
// bootable; the same release signed by the new key is installed.
func TestRetiredImageKeyRefused(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	retired, current := w.imageKey, newKey(t, kms.ECDSAP256)

	u := &unit{t: t, w: w, devDir: t.TempDir(), stateDir: t.TempDir(), tufDir: t.TempDir()}
	dev, err := hw.CreateSimDevice(u.devDir, "uid-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Slots.Write(ctx, hw.SlotA, strings.NewReader(string(v1.image))); err != nil {
		t.Fatal(err)
	}
	if err := dev.BootEnv.Set(ctx, map[string]string{hw.EnvBootSlot: "a"}); err != nil {
		t.Fatal(err)
	}
	u.dev = dev
	u.opts = func(o *update.Options) { o.ImageKeys = []crypto.PublicKey{current.Public()} }

	body := v2.image[512:]
	old := release{path: v2.path, image: w.image(body, "2.0.0", 2, retired), version: "2.0.0", counter: 2}
	w.publish(old, nil)
	w.offerOf(old, 1)
	check(t, u.updater())
	f := w.finalReports()
	if len(f) != 1 || f[0].State != cradle.UpdateFailed || !strings.Contains(f[0].Reason, "arbitrary-software: image signature") {
		t.Fatalf("final reports %+v, want one failure for the image signature", f)
	}
	if _, d := u.running(); d != v1.digest() {
		t.Fatalf("running %s after the refusal, want v1", d)
	}
	if env, _ := u.dev.BootEnv.Get(ctx); env[hw.EnvBootSlot] != "a" || env[hw.EnvUpgradeAvailable] == "1" {
		t.Fatalf("boot environment after the refusal: %v", env)
	}

	w.imageKey = current
	good := release{path: model + "/2.0.1/app.bin", image: w.image(body, "2.0.1", 2, current), version: "2.0.1", counter: 2}
	w.publish(good, nil)
	w.offerOf(good, 2)
	wantInstalled(t, w, u, good)
}
