package tuf_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"cradle/internal/kms"
	"cradle/internal/tuf"
)

// server serves a repository directory at /metadata/ and target files at
// /targets/ (hash-prefixed, as a client asks with consistent snapshots).
type server struct {
	*httptest.Server
	mu      sync.Mutex
	targets map[string][]byte
}

func newServer(t *testing.T, dir string) *server {
	s := &server{targets: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.Handle("/metadata/", http.StripPrefix("/metadata/", http.FileServer(http.Dir(dir))))
	mux.HandleFunc("/targets/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		b, ok := s.targets[strings.TrimPrefix(r.URL.Path, "/targets/")]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *server) addTarget(path string, content []byte) {
	sum := sha256.Sum256(content)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets[tuf.TargetURLPath(path, sum[:])] = content
}

// client is go-tuf's own updater, trusting trustedRoot, at reference time
// at, with a fresh cache.
func client(t *testing.T, s *server, trustedRoot []byte, at time.Time) *updater.Updater {
	t.Helper()
	return cachedClient(t, s, trustedRoot, at, t.TempDir())
}

// cachedClient is client with its trusted metadata cached in cache, as a
// device keeps it between updates.
func cachedClient(t *testing.T, s *server, trustedRoot []byte, at time.Time, cache string) *updater.Updater {
	t.Helper()
	cfg, err := config.New(s.URL+"/metadata", trustedRoot)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = s.URL + "/targets"
	cfg.LocalMetadataDir = cache
	cfg.LocalTargetsDir = t.TempDir()
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	up.UnsafeSetRefTime(at)
	return up
}

// download refreshes the client and downloads path.
func download(up *updater.Updater, path string) ([]byte, error) {
	if err := up.Refresh(); err != nil {
		return nil, err
	}
	info, err := up.GetTargetInfo(path)
	if err != nil {
		return nil, err
	}
	_, data, err := up.DownloadTarget(info, filepath.Join(os.TempDir(), "ignored"), "")
	return data, err
}

func (f *fixture) publish(t *testing.T, s *server, path string, c tuf.Custom) []byte {
	t.Helper()
	content := []byte("image " + path)
	if err := f.repo.AddTarget(path, target(content, c)); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(context.Background(), f.keys); err != nil {
		t.Fatal(err)
	}
	s.addTarget(path, content)
	return content
}

// TestClientFollowsRotations: a client that trusts root v1 follows two
// root key rotations and a targets key rotation, checks the custom
// metadata, and downloads a target signed after them.
func TestClientFollowsRotations(t *testing.T) {
	f := newFixture(t)
	s := newServer(t, f.dir)
	ctx := context.Background()
	rootV1, err := f.repo.Root()
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, s, "gw/1.bin", custom("gw", 1))

	// Rotation 1: three new root keys, 2 of 3, signed by 2 old and 2 new.
	second := []crypto.Signer{newKey(t, kms.Ed25519), newKey(t, kms.ECDSAP256), newKey(t, kms.Ed25519)}
	rs := f.keys
	rs.Root = append([]crypto.Signer{f.root[0], f.root[2]}, second[1:]...)
	if err := f.repo.RotateRoot(ctx, tuf.RootSpec{Keys: publics(second...), Threshold: 2}, rs); err != nil {
		t.Fatal(err)
	}
	// A targets key rotation, signed by the current root keys.
	oldTargets := f.keys.Targets
	newTargets := newKey(t, kms.Ed25519)
	rs.Root = second[:2]
	if err := f.repo.RotateKey(ctx, "targets", newTargets, rs); err != nil {
		t.Fatal(err)
	}
	f.keys.Targets = newTargets
	// Rotation 2: one new root key, 1 of 1.
	third := newKey(t, kms.ECDSAP256)
	rs.Root = []crypto.Signer{second[0], second[2], third}
	if err := f.repo.RotateRoot(ctx, tuf.RootSpec{Keys: publics(third), Threshold: 1}, rs); err != nil {
		t.Fatal(err)
	}
	f.keys.Root = []crypto.Signer{third}
	want := f.publish(t, s, "gw/2.bin", custom("gw", 2))

	up := client(t, s, rootV1, f.clock.Now())
	got, err := download(up, "gw/2.bin")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("downloaded %q, want %q", got, want)
	}
	trusted := up.GetTrustedMetadataSet()
	if v := trusted.Root.Signed.Version; v != 4 {
		t.Fatalf("client trusts root version %d, want 4", v)
	}
	info, err := up.GetTargetInfo("gw/2.bin")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tuf.ParseCustom(*info.Custom)
	if err != nil {
		t.Fatal(err)
	}
	if c.Model != "gw" || c.SecurityCounter != 2 {
		t.Fatalf("custom %+v", c)
	}

	// The retired targets key can no longer sign targets.
	forge(t, f, oldTargets, "gw/evil.bin")
	_, err = download(client(t, s, rootV1, f.clock.Now()), "gw/2.bin")
	if err == nil || !strings.Contains(err.Error(), "targets") {
		t.Fatalf("a client accepted targets signed by the retired key: %v", err)
	}
	t.Logf("retired targets key: %v", err)
	// Control: the same forgery signed by the current targets key passes,
	// so the refusal above is the key's doing.
	forge(t, f, newTargets, "gw/evil.bin")
	if _, err := download(client(t, s, rootV1, f.clock.Now()), "gw/2.bin"); err != nil {
		t.Fatalf("control: %v", err)
	}
}

// forge writes, by hand and beside the repository, a targets version with
// an extra target signed by targetsKey, and a snapshot and timestamp that
// point to it signed by the online keys (as a thief of the online keys and
// of targetsKey could).
func forge(t *testing.T, f *fixture, targetsKey crypto.Signer, path string) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(f.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write := func(name string, md interface{ ToBytes(bool) ([]byte, error) }) []byte {
		b, err := md.ToBytes(true)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(f.dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return b
	}
	targets, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(read("targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	tf, err := metadata.TargetFile().FromBytes(path, []byte("evil"), "sha256")
	if err != nil {
		t.Fatal(err)
	}
	targets.Signed.Targets[path] = tf
	targets.Signed.Version++
	targets.ClearSignatures()
	if _, err := targets.Sign(tuf.MetadataSigner(targetsKey)); err != nil {
		t.Fatal(err)
	}
	tb := write(strconv.FormatInt(targets.Signed.Version, 10)+".targets.json", targets)

	snap, err := new(metadata.Metadata[metadata.SnapshotType]).FromBytes(read("snapshot.json"))
	if err != nil {
		t.Fatal(err)
	}
	snap.Signed.Version++
	snap.Signed.Meta["targets.json"] = metaFile(targets.Signed.Version, tb)
	snap.ClearSignatures()
	if _, err := snap.Sign(tuf.MetadataSigner(f.keys.Snapshot)); err != nil {
		t.Fatal(err)
	}
	sb := write(strconv.FormatInt(snap.Signed.Version, 10)+".snapshot.json", snap)

	ts, err := new(metadata.Metadata[metadata.TimestampType]).FromBytes(read("timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	ts.Signed.Version++
	ts.Signed.Meta["snapshot.json"] = metaFile(snap.Signed.Version, sb)
	ts.ClearSignatures()
	if _, err := ts.Sign(tuf.MetadataSigner(f.keys.Timestamp)); err != nil {
		t.Fatal(err)
	}
	write("timestamp.json", ts)
}

func metaFile(version int64, data []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(data)
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(data))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// TestClientExpiredTimestamp: a client refuses a timestamp past its expiry
// and accepts the repository again once Refresh has re-signed it.
func TestClientExpiredTimestamp(t *testing.T) {
	f := newFixture(t)
	s := newServer(t, f.dir)
	rootV1, _ := f.repo.Root()
	want := f.publish(t, s, "gw/1.bin", custom("gw", 1))
	if _, err := download(client(t, s, rootV1, f.clock.Now()), "gw/1.bin"); err != nil {
		t.Fatal(err)
	}

	f.clock.Advance(25 * time.Hour)
	_, err := download(client(t, s, rootV1, f.clock.Now()), "gw/1.bin")
	if _, ok := err.(*metadata.ErrExpiredMetadata); !ok {
		t.Fatalf("a client accepted an expired timestamp: %v (%T)", err, err)
	}
	if !strings.Contains(err.Error(), "timestamp") {
		t.Fatalf("error %q does not name the timestamp", err)
	}

	refreshed, err := f.repo.Refresh(context.Background(), f.keys)
	if err != nil || len(refreshed) != 1 {
		t.Fatalf("refresh: %v %v", refreshed, err)
	}
	got, err := download(client(t, s, rootV1, f.clock.Now()), "gw/1.bin")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("downloaded %q", got)
	}

	// A snapshot past its expiry is refused too, even with a fresh
	// timestamp (the repository would have refreshed it; a stale copy
	// served by a mirror is what this models).
	f.clock.Advance(8 * 24 * time.Hour)
	ts := f.keys
	ts.Snapshot = nil
	if _, err := f.repo.Refresh(context.Background(), ts); err == nil {
		t.Fatal("refresh without the snapshot key reported no error")
	}
	if _, err := download(client(t, s, rootV1, f.clock.Now()), "gw/1.bin"); err == nil {
		t.Fatal("a client accepted an expired snapshot")
	}
}

// TestClientMixAndMatch: metadata of different versions served together is
// refused.
func TestClientMixAndMatch(t *testing.T) {
	f := newFixture(t)
	s := newServer(t, f.dir)
	rootV1, _ := f.repo.Root()
	f.publish(t, s, "gw/1.bin", custom("gw", 1))
	f.publish(t, s, "gw/2.bin", custom("gw", 2))
	// Now: targets 3, snapshot 3, timestamp 3.
	copyFile := func(from, to string) {
		b, err := os.ReadFile(filepath.Join(f.dir, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(f.dir, to), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keep := func(name string) func() {
		b, err := os.ReadFile(filepath.Join(f.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.WriteFile(filepath.Join(f.dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tt := range []struct{ name, from, to string }{
		{"old snapshot under the new name", "2.snapshot.json", "3.snapshot.json"},
		{"old targets under the new name", "2.targets.json", "3.targets.json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			restore := keep(tt.to)
			defer restore()
			copyFile(tt.from, tt.to)
			_, err := download(client(t, s, rootV1, f.clock.Now()), "gw/2.bin")
			if err == nil {
				t.Fatal("a client accepted mixed metadata")
			}
			t.Logf("refused: %v", err)
		})
	}
	// An old timestamp after a newer one was seen (a rollback) is refused.
	cache := t.TempDir()
	if _, err := download(cachedClient(t, s, rootV1, f.clock.Now(), cache), "gw/2.bin"); err != nil {
		t.Fatal(err)
	}
	restoreOld := keep("timestamp.json")
	f.publish(t, s, "gw/3.bin", custom("gw", 3))
	restoreNew := keep("timestamp.json")
	if err := cachedClient(t, s, rootV1, f.clock.Now(), cache).Refresh(); err != nil {
		t.Fatal(err)
	}
	restoreOld() // serve timestamp 3 again to a client that has seen 4
	if err := cachedClient(t, s, rootV1, f.clock.Now(), cache).Refresh(); err == nil || !strings.Contains(err.Error(), "timestamp") {
		t.Fatalf("a client accepted a rolled back timestamp: %v", err)
	}
	restoreNew()
	// Control: served whole, the repository is accepted.
	if _, err := download(client(t, s, rootV1, f.clock.Now()), "gw/2.bin"); err != nil {
		t.Fatalf("control: %v", err)
	}
}
