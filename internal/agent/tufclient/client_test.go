package tufclient_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/tufclient"
	"cradle/internal/tuf"
)

var ctx = context.Background()

// TestRefreshLookupSelect: a device refreshes, finds a target with its
// length, digest, custom metadata and URL, and keeps its trusted state
// across a restart without fetching what did not change.
func TestRefreshLookupSelect(t *testing.T) {
	r := newRepo(t)
	content := r.publish("gw/1.bin", 3)
	dir := t.TempDir()
	c := r.client(dir)
	if _, err := c.Lookup("gw/1.bin"); cradle.ErrorCode(err) != cradle.EUNAVAILABLE {
		t.Fatalf("lookup before refresh: %v", err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := c.Select("gw", "b", 3, "gw/1.bin")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	if got.Length != int64(len(content)) || got.SHA256 != hex.EncodeToString(sum[:]) || got.Custom.SecurityCounter != 3 || got.Custom.Model != "gw" {
		t.Fatalf("target %+v", got)
	}
	if want := r.url + "targets/gw/" + hex.EncodeToString(sum[:]) + ".1.bin"; got.URL != want {
		t.Fatalf("URL %s, want %s", got.URL, want)
	}
	if v := c.Versions(); v["targets"] != 2 || v["snapshot"] != 2 || v["timestamp"] != 2 || v["root"] != 1 {
		t.Fatalf("versions %v", v)
	}
	_, err = c.Lookup("gw/none.bin")
	wantCode(t, err, cradle.ENOTFOUND)

	// A restart: the state directory holds the trust; no factory root is
	// needed and unchanged snapshot and targets are not fetched again.
	again, err := tufclient.Open(tufclient.Options{Dir: dir, MetadataURL: r.url, HTTPClient: r.srv.Client(), Now: r.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.requested("2.snapshot.json") + r.requested("2.targets.json"); n != 2 {
		t.Fatalf("snapshot and targets fetched %d times in all, want once each", n)
	}
	// A newer release is found after the next refresh.
	r.publish("gw/2.bin", 4)
	if err := again.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := again.Lookup("gw/2.bin"); err != nil {
		t.Fatal(err)
	}
}

// TestOpenRefusals: no trusted root at all, or a factory root that does
// not verify, is refused before anything is fetched.
func TestOpenRefusals(t *testing.T) {
	r := newRepo(t)
	_, err := tufclient.Open(tufclient.Options{Dir: t.TempDir(), MetadataURL: r.url})
	wantCode(t, err, cradle.EINVALID)
	bad := bytes.Replace(r.root1, []byte(`"consistent_snapshot": true`), []byte(`"consistent_snapshot": false`), 1)
	if bytes.Equal(bad, r.root1) {
		t.Fatal("test root has no consistent_snapshot field to alter")
	}
	_, err = tufclient.Open(tufclient.Options{Dir: t.TempDir(), MetadataURL: r.url, TrustedRoot: bad})
	wantAttack(t, err, tufclient.ArbitrarySoftware, "root")
	_, err = tufclient.Open(tufclient.Options{Dir: t.TempDir(), MetadataURL: "ftp://x/", TrustedRoot: r.root1})
	wantCode(t, err, cradle.EINVALID)
}

// TestAttackRollbackTimestamp: an older timestamp served after a newer one
// was trusted is refused, also after a restart of the agent.
func TestAttackRollbackTimestamp(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1)
	old := r.read("timestamp.json")
	r.publish("gw/2.bin", 2)
	dir := t.TempDir()
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	r.serve("timestamp.json", old)
	wantAttack(t, r.client(dir).Refresh(ctx), tufclient.Rollback, "timestamp")
	// Control: a device that never saw the newer timestamp accepts the old.
	if err := r.client("").Refresh(ctx); err != nil {
		t.Fatalf("control: %v", err)
	}
}

// TestAttackRollbackSnapshot: a new timestamp (signed by the timestamp
// key) that names an older snapshot version than the trusted one.
func TestAttackRollbackSnapshot(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1)
	oldSnap := r.read("2.snapshot.json")
	r.publish("gw/2.bin", 2)
	dir := t.TempDir()
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	r.forgeTimestamp(2, oldSnap, r.keys.Timestamp)
	wantAttack(t, r.client(dir).Refresh(ctx), tufclient.Rollback, "timestamp")
}

// TestAttackRollbackTargets: a new snapshot and timestamp (signed by the
// online keys) that record an older targets version than the trusted
// snapshot does.
func TestAttackRollbackTargets(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1)
	oldTargets := r.read("2.targets.json")
	r.publish("gw/2.bin", 2)
	dir := t.TempDir()
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	sb, sv := r.forgeSnapshot(2, oldTargets, r.keys.Snapshot)
	r.forgeTimestamp(sv, sb, r.keys.Timestamp)
	wantAttack(t, r.client(dir).Refresh(ctx), tufclient.Rollback, "snapshot")
	// Control: a device that never trusted targets 3 takes the forgery
	// (it is validly signed), so the refusal above is the rollback check.
	if err := r.client("").Refresh(ctx); err != nil {
		t.Fatalf("control: %v", err)
	}
}

// TestAttackRollbackRoot: an old root served as the next root version.
func TestAttackRollbackRoot(t *testing.T) {
	r := newRepo(t)
	r.write("2.root.json", r.root1)
	wantAttack(t, r.client("").Refresh(ctx), tufclient.Rollback, "root")
}

// TestAttackFreeze: a timestamp past its expiry is refused (an attacker
// replaying yesterday's repository), and the same repository refreshed by
// its owner is accepted again.
func TestAttackFreeze(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1)
	dir := t.TempDir()
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(25 * time.Hour)
	c := r.client(dir)
	wantAttack(t, c.Refresh(ctx), tufclient.Freeze, "timestamp")
	if _, err := c.Lookup("gw/1.bin"); cradle.ErrorCode(err) != cradle.EUNAVAILABLE {
		t.Fatalf("lookup after a refused refresh: %v", err)
	}
	if _, err := r.repo.Refresh(ctx, r.keys); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// An expired root is a freeze too.
	r.clock.Advance(400 * 24 * time.Hour)
	wantAttack(t, r.client("").Refresh(ctx), tufclient.Freeze, "root")
}

// TestAttackMixAndMatch: files of different repository versions served
// together (an old snapshot or old targets under the new name).
func TestAttackMixAndMatch(t *testing.T) {
	for _, tt := range []struct{ name, from, to, role string }{
		{"old snapshot under the new name", "2.snapshot.json", "3.snapshot.json", "snapshot"},
		{"old targets under the new name", "2.targets.json", "3.targets.json", "targets"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRepo(t)
			r.publish("gw/1.bin", 1)
			r.publish("gw/2.bin", 2)
			r.serve(tt.to, r.read(tt.from))
			wantAttack(t, r.client("").Refresh(ctx), tufclient.MixAndMatch, tt.role)
		})
	}
	// A snapshot signed by the snapshot key whose version is not the one
	// the timestamp records.
	t.Run("snapshot version differs from the timestamp's record", func(t *testing.T) {
		r := newRepo(t)
		r.publish("gw/1.bin", 1)
		sb, sv := r.forgeSnapshot(2, r.read("2.targets.json"), r.keys.Snapshot)
		r.forgeTimestamp(sv+1, sb, r.keys.Timestamp) // records version sv+1, serves sv
		r.write("4.snapshot.json", sb)
		wantAttack(t, r.client("").Refresh(ctx), tufclient.MixAndMatch, "snapshot")
	})
}

// TestAttackArbitrarySoftware: targets signed by a key root does not list,
// and a timestamp whose signature is damaged.
func TestAttackArbitrarySoftware(t *testing.T) {
	t.Run("targets signed by a wrong key", func(t *testing.T) {
		r := newRepo(t)
		r.publish("gw/1.bin", 1)
		r.forgeTargets(ecKey(t), "gw/evil.bin")
		wantAttack(t, r.client("").Refresh(ctx), tufclient.ArbitrarySoftware, "targets")
	})
	t.Run("control: the same forgery with the targets key passes", func(t *testing.T) {
		r := newRepo(t)
		r.publish("gw/1.bin", 1)
		r.forgeTargets(r.keys.Targets, "gw/evil.bin")
		c := r.client("")
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Lookup("gw/evil.bin"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("timestamp with a bad signature", func(t *testing.T) {
		r := newRepo(t)
		r.publish("gw/1.bin", 1)
		ts := parse[tufTimestamp](t, r.read("timestamp.json"))
		ts.Signatures[0].Signature[len(ts.Signatures[0].Signature)-1] ^= 1
		b, err := ts.ToBytes(true)
		if err != nil {
			t.Fatal(err)
		}
		r.serve("timestamp.json", b)
		wantAttack(t, r.client("").Refresh(ctx), tufclient.ArbitrarySoftware, "timestamp")
	})
}

// TestAttackEndlessData: metadata longer than its recorded length or than
// the size limit, with and without a Content-Length.
func TestAttackEndlessData(t *testing.T) {
	t.Run("snapshot longer than the timestamp records", func(t *testing.T) {
		r := newRepo(t)
		r.publish("gw/1.bin", 1)
		r.serve("2.snapshot.json", append(r.read("2.snapshot.json"), bytes.Repeat([]byte(" "), 10)...))
		wantAttack(t, r.client("").Refresh(ctx), tufclient.EndlessData, "snapshot")
	})
	t.Run("targets longer than the snapshot records", func(t *testing.T) {
		r := newRepo(t)
		r.publish("gw/1.bin", 1)
		r.serve("2.targets.json", append(r.read("2.targets.json"), '\n'))
		wantAttack(t, r.client("").Refresh(ctx), tufclient.EndlessData, "targets")
	})
	t.Run("endless timestamp without a length", func(t *testing.T) {
		r := newRepo(t)
		mux := http.NewServeMux()
		mux.HandleFunc("/device/v1/tuf/timestamp.json", func(w http.ResponseWriter, _ *http.Request) {
			chunk := bytes.Repeat([]byte("x"), 4096)
			for range 1 << 12 { // 16 MiB, streamed without Content-Length
				if _, err := w.Write(chunk); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		})
		mux.Handle("/", r.srv.Config.Handler)
		r.srv.Config.Handler = mux
		wantAttack(t, r.client("").Refresh(ctx), tufclient.EndlessData, "timestamp")
	})
}

// TestSelectWrongHardware: a target for another model or hardware revision
// is refused; "*" fits every revision.
func TestSelectWrongHardware(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1, "a")
	r.publish("gw/any.bin", 1, "*")
	c := r.client("")
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c.Select("sensor", "a", 0, "gw/1.bin")
	wantAttack(t, err, tufclient.WrongHardware, "gw/1.bin")
	_, err = c.Select("gw", "c", 0, "gw/1.bin")
	wantAttack(t, err, tufclient.WrongHardware, "gw/1.bin")
	if _, err := c.Select("gw", "a", 0, "gw/1.bin"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("gw", "zz", 0, "gw/any.bin"); err != nil {
		t.Fatal(err)
	}
}

// TestSelectLowerSecurityCounter: a target below the device's counter is
// refused; equal or higher is taken.
func TestSelectLowerSecurityCounter(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/5.bin", 5)
	c := r.client("")
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c.Select("gw", "a", 6, "gw/5.bin")
	wantAttack(t, err, tufclient.LowerSecurityCounter, "gw/5.bin")
	for _, counter := range []uint32{0, 5} {
		if _, err := c.Select("gw", "a", counter, "gw/5.bin"); err != nil {
			t.Fatalf("counter %d: %v", counter, err)
		}
	}
}

// TestAttackRetiredTargetsKey: after the targets key is rotated, metadata
// signed only by the retired key is refused, by a device that trusted the
// old key before and by one that never did.
func TestAttackRetiredTargetsKey(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1)
	dir := t.TempDir()
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	retired := r.keys.Targets
	fresh := edKey(t)
	if err := r.repo.RotateKey(ctx, "targets", fresh, r.keys); err != nil {
		t.Fatal(err)
	}
	r.keys.Targets = fresh
	r.forgeTargets(retired, "gw/evil.bin")
	wantAttack(t, r.client(dir).Refresh(ctx), tufclient.ArbitrarySoftware, "targets")
	wantAttack(t, r.client("").Refresh(ctx), tufclient.ArbitrarySoftware, "targets")
	r.forgeTargets(fresh, "gw/evil.bin")
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatalf("control: %v", err)
	}
}

// TestRootRotations: a device offline across two root rotations (new keys
// and threshold each time) and a timestamp key rotation walks the chain
// from its factory root and updates; root version 1's keys alone can no
// longer sign a root.
func TestRootRotations(t *testing.T) {
	r := newRepo(t)
	r.publish("gw/1.bin", 1)
	dir := t.TempDir()
	if err := r.client(dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	second := []crypto.Signer{edKey(t), ecKey(t), edKey(t)}
	rs := r.keys
	rs.Root = append([]crypto.Signer{r.root[0], r.root[2]}, second[1:]...)
	if err := r.repo.RotateRoot(ctx, tuf.RootSpec{Keys: publics(second...), Threshold: 2}, rs); err != nil {
		t.Fatal(err)
	}
	third := ecKey(t)
	rs.Root = []crypto.Signer{second[0], second[2], third}
	if err := r.repo.RotateRoot(ctx, tuf.RootSpec{Keys: publics(third), Threshold: 1}, rs); err != nil {
		t.Fatal(err)
	}
	r.keys.Root = []crypto.Signer{third}
	ts := ecKey(t)
	if err := r.repo.RotateKey(ctx, "timestamp", ts, r.keys); err != nil {
		t.Fatal(err)
	}
	r.keys.Timestamp = ts
	r.publish("gw/2.bin", 2)

	for name, d := range map[string]string{"offline since the last update": dir, "fresh from the factory": ""} {
		t.Run(name, func(t *testing.T) {
			c := r.client(d)
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			if v := c.Versions()["root"]; v != 4 {
				t.Fatalf("trusts root version %d, want 4", v)
			}
			if _, err := c.Select("gw", "a", 2, "gw/2.bin"); err != nil {
				t.Fatal(err)
			}
		})
	}
	stored, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if err != nil || !bytes.Equal(stored, r.read("4.root.json")) {
		t.Fatalf("the state directory does not hold root version 4: %v", err)
	}
}
