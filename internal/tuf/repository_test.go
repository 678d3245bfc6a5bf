package tuf_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/kms"
	"cradle/internal/tuf"
)

// TestInit: version 1 of every role, the files a client fetches, and a
// repository that reopens to the same state.
func TestInit(t *testing.T) {
	f := newFixture(t)
	want := map[string]int64{"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}
	if diff := cmp.Diff(want, f.repo.Versions()); diff != "" {
		t.Fatalf("versions (-want +got):\n%s", diff)
	}
	for _, name := range []string{"1.root.json", "root.json", "1.targets.json", "targets.json", "1.snapshot.json", "snapshot.json", "timestamp.json"} {
		if _, err := os.Stat(filepath.Join(f.dir, name)); err != nil {
			t.Errorf("missing %s: %v", name, err)
		}
	}
	exp := f.repo.Expires()
	now := f.clock.Now()
	for role, d := range map[string]time.Duration{"root": 365 * 24 * time.Hour, "targets": 90 * 24 * time.Hour, "snapshot": 7 * 24 * time.Hour, "timestamp": 24 * time.Hour} {
		if !exp[role].Equal(now.Add(d)) {
			t.Errorf("%s expires %s, want %s", role, exp[role], now.Add(d))
		}
	}
	_, err := tuf.Init(context.Background(), f.options(), tuf.RootSpec{Keys: publics(f.root...), Threshold: 2}, f.keys)
	wantCode(t, err, cradle.ECONFLICT)

	if err := f.repo.AddTarget("gw/1.bin", target([]byte("one"), custom("gw", 1))); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(context.Background(), f.keys); err != nil {
		t.Fatal(err)
	}
	re, err := tuf.Open(context.Background(), f.options())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f.repo.Versions(), re.Versions()); diff != "" {
		t.Fatalf("reopened versions (-want +got):\n%s", diff)
	}
	got, err := re.Targets()
	if err != nil {
		t.Fatal(err)
	}
	if got["gw/1.bin"].Model != "gw" || len(got) != 1 {
		t.Fatalf("reopened targets: %+v", got)
	}
}

// TestInitRefusals: bad root specs and keys leave the store empty.
func TestInitRefusals(t *testing.T) {
	root := []crypto.Signer{newKey(t, kms.ECDSAP256), newKey(t, kms.Ed25519)}
	online := newKey(t, kms.ECDSAP256)
	p384 := newKey(t, kms.ECDSAP384)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ok := tuf.Signers{Root: root, Targets: online, Snapshot: online, Timestamp: online}
	tests := []struct {
		name string
		spec tuf.RootSpec
		s    tuf.Signers
		msg  string
	}{
		{"threshold above keys", tuf.RootSpec{Keys: publics(root...), Threshold: 3}, ok, "larger than the number of root keys"},
		{"threshold zero", tuf.RootSpec{Keys: publics(root...), Threshold: 0}, ok, "at least 1"},
		{"too few root signatures", tuf.RootSpec{Keys: publics(root...), Threshold: 2}, tuf.Signers{Root: root[:1], Targets: online, Snapshot: online, Timestamp: online}, "needs 2 signature"},
		{"root signer not a root key", tuf.RootSpec{Keys: publics(root...), Threshold: 1}, tuf.Signers{Root: []crypto.Signer{online}, Targets: online, Snapshot: online, Timestamp: online}, "is not a root key"},
		{"rsa root key", tuf.RootSpec{Keys: []crypto.PublicKey{rsaKey.Public()}, Threshold: 1}, ok, "use ecdsa-p256 or ed25519"},
		{"p384 targets key", tuf.RootSpec{Keys: publics(root...), Threshold: 1}, tuf.Signers{Root: root, Targets: p384, Snapshot: online, Timestamp: online}, "curve P-384"},
		{"duplicate root key", tuf.RootSpec{Keys: publics(root[0], root[0]), Threshold: 1}, ok, "listed twice"},
		{"no online keys", tuf.RootSpec{Keys: publics(root...), Threshold: 1}, tuf.Signers{Root: root}, "needs the targets, snapshot and timestamp keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := tuf.Init(context.Background(), tuf.Options{Store: tuf.DirStore{Dir: dir}}, tt.spec, tt.s)
			wantCode(t, err, cradle.EINVALID)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not say %q", err, tt.msg)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("a refused init wrote %d files", len(entries))
			}
		})
	}
}

// TestAddTargetRefusals: bad targets and downgrades are refused and the
// staged set stays as it was.
func TestAddTargetRefusals(t *testing.T) {
	f := newFixture(t)
	if err := f.repo.AddTarget("gw/5.bin", target([]byte("five"), custom("gw", 5))); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(context.Background(), f.keys); err != nil {
		t.Fatal(err)
	}
	noModel := custom("", 1)
	noRev := custom("gw", 6)
	noRev.HardwareRevisions = nil
	noVersion := custom("gw", 6)
	noVersion.Version = ""
	badDelta := custom("gw", 6)
	badDelta.DeltaBases = []tuf.DeltaBase{{From: "abc", Patch: "gw/p", Length: 1, Hashes: map[string]string{"sha256": strings.Repeat("0", 64)}}}
	tests := []struct {
		name, path string
		t          tuf.Target
		msg        string
	}{
		{"downgrade", "gw/4.bin", target([]byte("four"), custom("gw", 4)), "a downgrade"},
		{"no model", "gw/x.bin", target([]byte("x"), noModel), "no model"},
		{"no hardware revision", "gw/x.bin", target([]byte("x"), noRev), "no hardware revision"},
		{"no version", "gw/x.bin", target([]byte("x"), noVersion), "no version"},
		{"bad delta base", "gw/x.bin", target([]byte("x"), badDelta), "from_sha256"},
		{"absolute path", "/gw/x.bin", target([]byte("x"), custom("gw", 6)), "must be relative"},
		{"dot-dot path", "gw/../x.bin", target([]byte("x"), custom("gw", 6)), "must be relative"},
		{"zero length", "gw/x.bin", tuf.Target{SHA256: make([]byte, 32), Custom: custom("gw", 6)}, "length 0"},
		{"short digest", "gw/x.bin", tuf.Target{Length: 1, SHA256: make([]byte, 20), Custom: custom("gw", 6)}, "not 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.repo.AddTarget(tt.path, tt.t)
			wantCode(t, err, cradle.EINVALID)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not say %q", err, tt.msg)
			}
		})
	}
	// Same counter, a higher one, and another model's lower one are fine.
	for _, c := range []tuf.Custom{custom("gw", 5), custom("gw", 6), custom("sensor", 1)} {
		if err := f.repo.AddTarget(c.Model+"/"+c.Version, target([]byte(c.Version), c)); err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
	}
	// A staged target counts too.
	wantCode(t, f.repo.AddTarget("gw/5b.bin", target([]byte("5b"), custom("gw", 5))), cradle.EINVALID)
	wantCode(t, f.repo.RemoveTarget("gw/none"), cradle.ENOTFOUND)
	if err := f.repo.Publish(context.Background(), f.keys); err != nil {
		t.Fatal(err)
	}
	got, err := f.repo.Targets()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for p := range got {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	if diff := cmp.Diff([]string{"gw/1.0.5", "gw/1.0.6", "gw/5.bin", "sensor/1.0.1"}, paths); diff != "" {
		t.Fatalf("targets (-want +got):\n%s", diff)
	}
}

// TestPublishRefusals: an expired root, a key root does not list, or a
// missing key refuse the publish and write nothing.
func TestPublishRefusals(t *testing.T) {
	f := newFixture(t)
	if err := f.repo.AddTarget("gw/1.bin", target([]byte("one"), custom("gw", 1))); err != nil {
		t.Fatal(err)
	}
	before := f.snapshotDir(t)
	versions := f.repo.Versions()

	stray := f.keys
	stray.Targets = newKey(t, kms.ECDSAP256)
	err := f.repo.Publish(context.Background(), stray)
	wantCode(t, err, cradle.EINVALID)
	if !strings.Contains(err.Error(), "is not a targets key of root version 1") {
		t.Fatalf("error %q", err)
	}
	swapped := f.keys
	swapped.Snapshot, swapped.Timestamp = f.keys.Timestamp, f.keys.Snapshot
	wantCode(t, f.repo.Publish(context.Background(), swapped), cradle.EINVALID)
	noTimestamp := f.keys
	noTimestamp.Timestamp = nil
	wantCode(t, f.repo.Publish(context.Background(), noTimestamp), cradle.EINVALID)

	f.clock.Advance(366 * 24 * time.Hour)
	err = f.repo.Publish(context.Background(), f.keys)
	wantCode(t, err, cradle.EINVALID)
	if !strings.Contains(err.Error(), "root version 1 expired") {
		t.Fatalf("error %q", err)
	}
	f.assertUnchanged(t, before)
	if diff := cmp.Diff(versions, f.repo.Versions()); diff != "" {
		t.Fatalf("versions moved (-want +got):\n%s", diff)
	}

	// Renewing root with the same keys lets publishing resume.
	if err := f.repo.RotateRoot(context.Background(), tuf.RootSpec{Keys: publics(f.root...), Threshold: 2}, f.keys); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(context.Background(), f.keys); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"root": 2, "targets": 2, "snapshot": 2, "timestamp": 2}
	if diff := cmp.Diff(want, f.repo.Versions()); diff != "" {
		t.Fatalf("versions (-want +got):\n%s", diff)
	}
}

// failingStore fails writes of one file name.
type failingStore struct {
	tuf.DirStore
	fail string
}

func (s failingStore) Put(ctx context.Context, name string, data []byte) error {
	if name == s.fail {
		return errors.New("disk full")
	}
	return s.DirStore.Put(ctx, name, data)
}

// TestPublishStoreFailure: a store failure part way leaves timestamp.json
// and the repository's state as they were, and a retry publishes.
func TestPublishStoreFailure(t *testing.T) {
	f := newFixture(t)
	opts := f.options()
	opts.Store = failingStore{DirStore: tuf.DirStore{Dir: f.dir}, fail: "snapshot.json"}
	repo, err := tuf.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := os.ReadFile(filepath.Join(f.dir, "timestamp.json"))
	if err := repo.AddTarget("gw/1.bin", target([]byte("one"), custom("gw", 1))); err != nil {
		t.Fatal(err)
	}
	if err := repo.Publish(context.Background(), f.keys); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("publish: %v", err)
	}
	if now, _ := os.ReadFile(filepath.Join(f.dir, "timestamp.json")); string(now) != string(ts) {
		t.Fatal("timestamp.json changed")
	}
	if v := repo.Versions()["targets"]; v != 1 {
		t.Fatalf("targets version %d after a failed publish", v)
	}
	if err := f.repo.AddTarget("gw/1.bin", target([]byte("one"), custom("gw", 1))); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(context.Background(), f.keys); err != nil {
		t.Fatal(err)
	}
	if _, err := tuf.Open(context.Background(), f.options()); err != nil {
		t.Fatal(err)
	}
}

// TestRefresh: each role is re-signed once less than half of its period
// remains, the chain after it too, and a missing key is named while the
// others are still refreshed.
func TestRefresh(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	step := func(advance time.Duration, s tuf.Signers, want []string, wantErr string) {
		t.Helper()
		f.clock.Advance(advance)
		got, err := f.repo.Refresh(ctx, s)
		if wantErr == "" && err != nil || wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)) {
			t.Fatalf("after %s: error %v, want %q", advance, err, wantErr)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("after %s: refreshed (-want +got):\n%s", advance, diff)
		}
	}
	step(11*time.Hour, f.keys, nil, "")
	step(2*time.Hour, f.keys, []string{"timestamp"}, "")
	step(time.Hour, f.keys, nil, "")
	step(3*24*time.Hour, f.keys, []string{"snapshot", "timestamp"}, "")
	noTargets := f.keys
	noTargets.Targets = nil
	step(42*24*time.Hour, noTargets, []string{"snapshot", "timestamp"}, "targets expire(s) soon")
	step(0, f.keys, []string{"targets", "snapshot", "timestamp"}, "")
	want := map[string]int64{"root": 1, "targets": 2, "snapshot": 4, "timestamp": 5}
	if diff := cmp.Diff(want, f.repo.Versions()); diff != "" {
		t.Fatalf("versions (-want +got):\n%s", diff)
	}
	exp := f.repo.Expires()
	if !exp["timestamp"].Equal(f.clock.Now().Add(24 * time.Hour)) {
		t.Fatalf("timestamp expires %s", exp["timestamp"])
	}
	f.clock.Advance(400 * 24 * time.Hour)
	_, err := f.repo.Refresh(ctx, f.keys)
	wantCode(t, err, cradle.EINVALID)
}

// TestRotateRefusals: a rotation without a threshold of the old root keys,
// or of the new ones, is refused and writes nothing.
func TestRotateRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	newRoot := []crypto.Signer{newKey(t, kms.Ed25519), newKey(t, kms.ECDSAP256)}
	spec := tuf.RootSpec{Keys: publics(newRoot...), Threshold: 2}
	before := f.snapshotDir(t)
	for _, tt := range []struct {
		name string
		root []crypto.Signer
		msg  string
	}{
		{"only new keys", newRoot, "by keys of root version 1"},
		{"only old keys", f.root, "by its own root keys"},
		{"one old key", append([]crypto.Signer{f.root[0]}, newRoot...), "by keys of root version 1"},
		{"stranger", append(slices.Clone(f.root), append(newRoot, newKey(t, kms.ECDSAP256))...), "is not a root key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := f.keys
			s.Root = tt.root
			err := f.repo.RotateRoot(ctx, spec, s)
			wantCode(t, err, cradle.EINVALID)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not say %q", err, tt.msg)
			}
		})
	}
	wantCode(t, f.repo.RotateRoot(ctx, tuf.RootSpec{Keys: publics(newRoot...), Threshold: 3}, f.keys), cradle.EINVALID)
	wantCode(t, f.repo.RotateKey(ctx, "root", newRoot[0], f.keys), cradle.EINVALID)
	s := f.keys
	s.Root = f.root[:1]
	wantCode(t, f.repo.RotateKey(ctx, "targets", newRoot[0], s), cradle.EINVALID)
	wrongCurve, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	wantCode(t, f.repo.RotateKey(ctx, "targets", wrongCurve, f.keys), cradle.EINVALID)
	f.assertUnchanged(t, before)
	if v := f.repo.Versions()["root"]; v != 1 {
		t.Fatalf("root version %d", v)
	}
}

// TestStagedSurvivesRefreshAndRotation: re-signing targets for expiry or a
// key rotation publishes the published set, and staged changes wait for
// Publish; replacing a target with a lower counter is a downgrade too.
func TestStagedSurvivesRefreshAndRotation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if err := f.repo.AddTarget("gw/3.bin", target([]byte("three"), custom("gw", 3))); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(ctx, f.keys); err != nil {
		t.Fatal(err)
	}
	wantCode(t, f.repo.AddTarget("gw/3.bin", target([]byte("three again"), custom("gw", 2))), cradle.EINVALID)
	if err := f.repo.AddTarget("gw/4.bin", target([]byte("four"), custom("gw", 4))); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(50 * 24 * time.Hour)
	if done, err := f.repo.Refresh(ctx, f.keys); err != nil || len(done) != 3 {
		t.Fatalf("refresh: %v %v", done, err)
	}
	newTargets := newKey(t, kms.Ed25519)
	if err := f.repo.RotateKey(ctx, "targets", newTargets, f.keys); err != nil {
		t.Fatal(err)
	}
	got, _ := f.repo.Targets()
	if _, ok := got["gw/4.bin"]; ok || len(got) != 1 {
		t.Fatalf("a staged target was published without Publish: %v", got)
	}
	f.keys.Targets = newTargets
	if err := f.repo.Publish(ctx, f.keys); err != nil {
		t.Fatal(err)
	}
	got, _ = f.repo.Targets()
	if _, ok := got["gw/4.bin"]; !ok || len(got) != 2 {
		t.Fatalf("targets after publish: %v", got)
	}
	want := map[string]int64{"root": 2, "targets": 5, "snapshot": 5, "timestamp": 5}
	if diff := cmp.Diff(want, f.repo.Versions()); diff != "" {
		t.Fatalf("versions (-want +got):\n%s", diff)
	}
}

// TestOpenRefusesTampering: metadata whose signature no longer matches is
// refused when the repository is opened, and so are bad file names.
func TestOpenRefusesTampering(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(f.dir, "targets.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), `"version": 1`, `"version": 7`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tuf.Open(context.Background(), f.options()); err == nil || !strings.Contains(err.Error(), "targets.json is not signed by the targets keys") {
		t.Fatalf("open: %v", err)
	}
	_, err = tuf.Open(context.Background(), tuf.Options{Store: tuf.DirStore{Dir: t.TempDir()}})
	wantCode(t, err, cradle.ENOTFOUND)
	for _, name := range []string{"../root.json", ".root.json", "Root.json", ""} {
		if err := (tuf.DirStore{Dir: f.dir}).Put(context.Background(), name, nil); err == nil {
			t.Errorf("Put(%q) succeeded", name)
		}
	}
}
