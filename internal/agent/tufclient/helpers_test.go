package tufclient_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
	"cradle/internal/agent/tufclient"
	"cradle/internal/tuf"
)

// clock is an injected clock a test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

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

func ecKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func edKey(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func publics(ss ...crypto.Signer) []crypto.PublicKey {
	var out []crypto.PublicKey
	for _, s := range ss {
		out = append(out, s.Public())
	}
	return out
}

// repo is a real internal/tuf repository in a directory, served over
// httptest at /device/v1/tuf/ as the server does, with its keys.
type repo struct {
	t     testing.TB
	dir   string
	clock *clock
	repo  *tuf.Repository
	root  []crypto.Signer
	keys  tuf.Signers
	srv   *httptest.Server
	url   string // the metadata URL
	root1 []byte // root version 1, the device's factory root

	mu       sync.Mutex
	override map[string][]byte // served instead of the file of that name
	requests map[string]int
}

func newRepo(t testing.TB) *repo {
	t.Helper()
	r := &repo{t: t, dir: t.TempDir(), clock: &clock{t: time.Now().UTC().Truncate(time.Second)}, override: map[string][]byte{}, requests: map[string]int{}}
	r.root = []crypto.Signer{ecKey(t), edKey(t), ecKey(t)}
	r.keys = tuf.Signers{Root: r.root[:2], Targets: ecKey(t), Snapshot: edKey(t), Timestamp: ecKey(t)}
	var err error
	r.repo, err = tuf.Init(context.Background(), tuf.Options{Store: tuf.DirStore{Dir: r.dir}, Now: r.clock.Now},
		tuf.RootSpec{Keys: publics(r.root...), Threshold: 2}, r.keys)
	if err != nil {
		t.Fatal(err)
	}
	if r.root1, err = r.repo.Root(); err != nil {
		t.Fatal(err)
	}
	files := http.StripPrefix("/device/v1/tuf/", http.FileServer(http.Dir(r.dir)))
	mux := http.NewServeMux()
	mux.HandleFunc("/device/v1/tuf/", func(w http.ResponseWriter, req *http.Request) {
		name := req.URL.Path[len("/device/v1/tuf/"):]
		r.mu.Lock()
		r.requests[name]++
		b, ok := r.override[name]
		r.mu.Unlock()
		if ok {
			w.Write(b)
			return
		}
		files.ServeHTTP(w, req)
	})
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	r.url = r.srv.URL + "/device/v1/tuf/"
	return r
}

// serve makes the server answer name with b instead of the file.
func (r *repo) serve(name string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.override[name] = b
}

func (r *repo) requested(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests[name]
}

// publish adds a target of model gw, revisions a and b, and publishes.
func (r *repo) publish(path string, counter uint32, revisions ...string) []byte {
	r.t.Helper()
	if len(revisions) == 0 {
		revisions = []string{"a", "b"}
	}
	content := []byte("image " + path)
	sum := sha256.Sum256(content)
	c := tuf.Custom{Model: "gw", HardwareRevisions: revisions, Version: "1." + strconv.Itoa(int(counter)), SecurityCounter: counter}
	if err := r.repo.AddTarget(path, tuf.Target{Length: int64(len(content)), SHA256: sum[:], Custom: c}); err != nil {
		r.t.Fatal(err)
	}
	if err := r.repo.Publish(context.Background(), r.keys); err != nil {
		r.t.Fatal(err)
	}
	return content
}

func (r *repo) read(name string) []byte {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, name))
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (r *repo) write(name string, b []byte) {
	r.t.Helper()
	if err := os.WriteFile(filepath.Join(r.dir, name), b, 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// client opens a device's client with state in dir (a fresh one when dir
// is ""), trusting root version 1 from the factory.
func (r *repo) client(dir string) *tufclient.Client {
	r.t.Helper()
	if dir == "" {
		dir = r.t.TempDir()
	}
	c, err := tufclient.Open(tufclient.Options{Dir: dir, MetadataURL: r.url, HTTPClient: r.srv.Client(), TrustedRoot: r.root1, Now: r.clock.Now})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// signed re-signs md with key and returns its canonical bytes.
func signed[T metadata.Roles](t testing.TB, md *metadata.Metadata[T], key crypto.Signer) []byte {
	t.Helper()
	md.ClearSignatures()
	if _, err := md.Sign(tuf.MetadataSigner(key)); err != nil {
		t.Fatal(err)
	}
	b, err := md.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parse[T metadata.Roles](t testing.TB, b []byte) *metadata.Metadata[T] {
	t.Helper()
	md, err := new(metadata.Metadata[T]).FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func metaFile(version int64, data []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(data)
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(data))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// forgeSnapshot writes, beside the repository, a snapshot of the next
// version recording targets (version, bytes) signed by key, and returns
// its bytes and version.
func (r *repo) forgeSnapshot(targetsVersion int64, targets []byte, key crypto.Signer) ([]byte, int64) {
	r.t.Helper()
	snap := parse[metadata.SnapshotType](r.t, r.read("snapshot.json"))
	snap.Signed.Version++
	snap.Signed.Meta["targets.json"] = metaFile(targetsVersion, targets)
	b := signed(r.t, snap, key)
	r.write(strconv.FormatInt(snap.Signed.Version, 10)+".snapshot.json", b)
	return b, snap.Signed.Version
}

// forgeTimestamp writes a timestamp.json of the next version recording
// snapshot (version, bytes), signed by key.
func (r *repo) forgeTimestamp(snapVersion int64, snapshot []byte, key crypto.Signer) {
	r.t.Helper()
	ts := parse[metadata.TimestampType](r.t, r.read("timestamp.json"))
	ts.Signed.Version++
	ts.Signed.Meta["snapshot.json"] = metaFile(snapVersion, snapshot)
	r.write("timestamp.json", signed(r.t, ts, key))
}

// forgeTargets writes a targets version with an extra target signed by
// key, and a snapshot and timestamp pointing to it signed by the online
// keys (what a thief of the online keys and of key could publish).
func (r *repo) forgeTargets(key crypto.Signer, path string) {
	r.t.Helper()
	targets := parse[metadata.TargetsType](r.t, r.read("targets.json"))
	tf, err := metadata.TargetFile().FromBytes(path, []byte("evil"), "sha256")
	if err != nil {
		r.t.Fatal(err)
	}
	custom := []byte(`{"model":"gw","hardware_revisions":["*"],"version":"6.6.6","security_counter":99,"delta_bases":[]}`)
	raw := json.RawMessage(custom)
	tf.Custom = &raw
	targets.Signed.Targets[path] = tf
	targets.Signed.Version++
	tb := signed(r.t, targets, key)
	r.write(strconv.FormatInt(targets.Signed.Version, 10)+".targets.json", tb)
	sb, sv := r.forgeSnapshot(targets.Signed.Version, tb, r.keys.Snapshot)
	r.forgeTimestamp(sv, sb, r.keys.Timestamp)
}

// wantAttack fails unless err is a refusal naming attack for role.
func wantAttack(t testing.TB, err error, attack tufclient.Attack, role string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want a %s refusal", attack)
	}
	var e *tufclient.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want a %s refusal", err, err, attack)
	}
	if e.Attack != attack || e.Role != role {
		t.Fatalf("got %v (attack %s, role %s), want attack %s, role %s", err, e.Attack, e.Role, attack, role)
	}
	t.Logf("refused: %v", err)
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := cradle.ErrorCode(err); err == nil || got != code {
		t.Fatalf("got %v (code %s), want code %s", err, got, code)
	}
}

type tufTimestamp = metadata.TimestampType
