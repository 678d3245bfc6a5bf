package update_test

// The attacks of TUF's threat model (and the device's own: wrong hardware,
// a lower security counter, an image not signed by the fused key), each
// played against a whole updater: the real TUF repository and client, a
// simulated unit with the bootloader simulator, and the device API over
// httptest. Each test checks that the unit stays on its slot (boot
// environment as it was, the running image unchanged, nothing on trial,
// the next boot on the old slot, the anti-rollback fuses unchanged) and
// that the server's final report is a failure whose reason names the
// attack.

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
	"cradle/internal/kms"
	"cradle/internal/tuf"
)

// scene is a world with v1 published and a unit running it; v2 is built
// (counter 2) but not published.
func scene(t *testing.T) (w *world, v1, v2 release, u *unit) {
	t.Helper()
	w = newWorld(t)
	v1, v2 = w.releases(64 << 10)
	w.publish(v1, nil)
	u = w.newUnit(v1)
	return w, v1, v2, u
}

// wantRefused runs the update the server offers and checks that the unit
// refused it: one failed final report whose reason holds each of
// reasonParts, and the unit unchanged, still running running.
func wantRefused(t *testing.T, w *world, u *unit, running release, reasonParts ...string) {
	t.Helper()
	ctx := context.Background()
	envBefore, err := u.dev.BootEnv.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	counterBefore := u.antiRollback()

	check(t, u.updater())

	f := w.finalReports()
	if len(f) != 1 || f[0].State != cradle.UpdateFailed {
		t.Fatalf("final reports %+v, want one %s", f, cradle.UpdateFailed)
	}
	for _, p := range reasonParts {
		if !strings.Contains(f[0].Reason, p) {
			t.Fatalf("reason %q does not say %q", f[0].Reason, p)
		}
	}
	t.Logf("reported: %s: %s", f[0].State, f[0].Reason)
	envAfter, err := u.dev.BootEnv.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(envBefore, envAfter) {
		t.Fatalf("boot environment changed: %v → %v", envBefore, envAfter)
	}
	if slot, d := u.running(); slot != hw.SlotA || d != running.digest() {
		t.Fatalf("running %s %s, want a %s", slot, d, running.digest())
	}
	if got := w.lastSoftware(); got != running.digest() {
		t.Fatalf("software reported %q, want %s", got, running.digest())
	}
	if n := u.antiRollback(); n != counterBefore {
		t.Fatalf("anti_rollback %d → %d on a refusal", counterBefore, n)
	}
	if st := u.updater().State(); st.Phase != update.PhaseIdle {
		t.Fatalf("updater left in %s", st.Phase)
	}
	if err := u.boot(ctx); err != nil || u.lastBoot.Slot != hw.SlotA {
		t.Fatalf("next boot: %v %+v, want slot a", err, u.lastBoot)
	}
	if env, _ := u.dev.BootEnv.Get(ctx); env[hw.EnvUpgradeAvailable] == "1" || env[hw.EnvBootSlot] != string(hw.SlotA) {
		t.Fatalf("boot environment after the next boot: %v", env)
	}
}

// wantInstalled runs the offered update and checks that r runs committed
// (the control of an attack test: the same path with honest input works).
func wantInstalled(t *testing.T, w *world, u *unit, r release) {
	t.Helper()
	w.mu.Lock()
	w.reports, w.software = nil, nil
	w.mu.Unlock()
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if _, d := u.running(); d != r.digest() {
		t.Fatalf("control: running %s, want %s", d, r.digest())
	}
}

// trustNow refreshes the unit's TUF client, as an earlier update check
// would have: what it accepts is the floor from then on.
func (u *unit) trustNow() {
	u.t.Helper()
	m := &update.TUF{Dir: u.tufDir, TrustedRoot: u.w.root, HTTP: u.w.srv.Client()}
	if err := m.Refresh(context.Background(), u.w.srv.URL+"/device/v1/tuf/"); err != nil {
		u.t.Fatal(err)
	}
}

func (w *world) readRepo(name string) []byte {
	w.t.Helper()
	b, err := os.ReadFile(filepath.Join(w.repoDir, name))
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

func (w *world) writeRepo(name string, b []byte) {
	w.t.Helper()
	if err := os.WriteFile(filepath.Join(w.repoDir, name), b, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func parseMeta[T metadata.Roles](t *testing.T, b []byte) *metadata.Metadata[T] {
	t.Helper()
	md, err := new(metadata.Metadata[T]).FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func signMeta[T metadata.Roles](t *testing.T, md *metadata.Metadata[T], key crypto.Signer) []byte {
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

func metaRecord(version int64, data []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(data)
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(data))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// forgeTargets writes the next targets version, listing r as well, signed
// by key alone, with a snapshot and timestamp recording it signed by the
// repository's online keys: what a thief of those and of key could serve.
// The artifact store serves r.
func (w *world) forgeTargets(key crypto.Signer, r release) {
	t := w.t
	t.Helper()
	targets := parseMeta[metadata.TargetsType](t, w.readRepo("targets.json"))
	tf, err := metadata.TargetFile().FromBytes(r.path, r.image, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(tuf.Custom{Model: model, HardwareRevisions: []string{"*"}, Version: r.version, SecurityCounter: r.counter, DeltaBases: []tuf.DeltaBase{}})
	if err != nil {
		t.Fatal(err)
	}
	raw := json.RawMessage(c)
	tf.Custom = &raw
	targets.Signed.Targets[r.path] = tf
	targets.Signed.Version++
	tb := signMeta(t, targets, key)
	w.writeRepo(strconv.FormatInt(targets.Signed.Version, 10)+".targets.json", tb)

	snap := parseMeta[metadata.SnapshotType](t, w.readRepo("snapshot.json"))
	snap.Signed.Version++
	snap.Signed.Meta["targets.json"] = metaRecord(targets.Signed.Version, tb)
	sb := signMeta(t, snap, w.keys.Snapshot)
	w.writeRepo(strconv.FormatInt(snap.Signed.Version, 10)+".snapshot.json", sb)

	ts := parseMeta[metadata.TimestampType](t, w.readRepo("timestamp.json"))
	ts.Signed.Version++
	ts.Signed.Meta["snapshot.json"] = metaRecord(snap.Signed.Version, sb)
	w.writeRepo("timestamp.json", signMeta(t, ts, w.keys.Timestamp))

	w.mu.Lock()
	w.blobs[r.digest()] = r.image
	w.mu.Unlock()
}

// TestAttackRollbackMetadata: v2 is withdrawn from the repository; a
// mirror replays the older metadata that still lists it to a unit that
// has already trusted the newer. The TUF client refuses the older
// timestamp. Control: a unit that never saw the newer metadata takes the
// replay (it is validly signed and not expired), so the refusal is the
// rollback check.
func TestAttackRollbackMetadata(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, nil)
	replay := w.readRepo("timestamp.json")
	if err := w.repo.RemoveTarget(v2.path); err != nil {
		t.Fatal(err)
	}
	if err := w.repo.Publish(context.Background(), w.keys); err != nil {
		t.Fatal(err)
	}
	u.trustNow()
	w.writeRepo("timestamp.json", replay)
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "TUF metadata refused", "rollback refused (timestamp)")

	fresh := w.newUnit(v1)
	w.offerOf(v2, 1)
	wantInstalled(t, w, fresh, v2)
}

// TestAttackRollbackSecurityCounter: a unit that committed v2 (its
// anti-rollback fuses at 2) is offered v1, validly signed, with security
// counter 1: it refuses the downgrade.
func TestAttackRollbackSecurityCounter(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v2)
	fuse, err := hw.Thermometer(2, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.dev.Fuses.Program(context.Background(), hw.FuseAntiRollback, fuse); err != nil {
		t.Fatal(err)
	}
	w.offerOf(v1, 1)
	wantRefused(t, w, u, v2, "lower-security-counter: ", "security counter 1, below the device's 2: a rollback")
}

// TestAttackFreeze: the repository's timestamp is past its expiry (a
// mirror that stopped at yesterday's repository, hiding every update
// since): refused as an indefinite freeze.
func TestAttackFreeze(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, nil)
	u.opts = func(o *update.Options) {
		o.Metadata = &update.TUF{Dir: u.tufDir, TrustedRoot: w.root, HTTP: w.srv.Client(),
			Now: func() time.Time { return time.Now().Add(72 * time.Hour) }}
	}
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "TUF metadata refused", "freeze refused (timestamp)")
}

// TestAttackMixAndMatch: the latest timestamp, but the previous snapshot
// served under the latest snapshot's name: its hash and length are not
// what the timestamp records.
func TestAttackMixAndMatch(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, nil)
	sv := w.repo.Versions()[tuf.RoleSnapshot]
	w.writeRepo(fmt.Sprintf("%d.snapshot.json", sv), w.readRepo(fmt.Sprintf("%d.snapshot.json", sv-1)))
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "TUF metadata refused", "mix-and-match refused (snapshot)")
}

// TestAttackUnsignedImage: a target the TUF metadata lists (a build
// pipeline tricked into publishing it) whose MCUboot image carries no
// signature: refused before the slot is marked bootable.
func TestAttackUnsignedImage(t *testing.T) {
	w, v1, v2, u := scene(t)
	bad := release{path: v2.path, image: w.image(v2.image[512:], "2.0.0", 2, nil), version: "2.0.0", counter: 2}
	w.publish(bad, nil)
	w.offerOf(bad, 1)
	wantRefused(t, w, u, v1, "arbitrary-software: image signature")
}

// TestAttackImageWrongKey: a listed target whose image is signed by a key
// that is not the one fused into the unit.
func TestAttackImageWrongKey(t *testing.T) {
	w, v1, v2, u := scene(t)
	bad := release{path: v2.path, image: w.image(v2.image[512:], "2.0.0", 2, newKey(t, kms.ECDSAP256)), version: "2.0.0", counter: 2}
	w.publish(bad, nil)
	w.offerOf(bad, 1)
	wantRefused(t, w, u, v1, "arbitrary-software: image signature")
}

// TestAttackTargetsWrongKey: targets metadata listing v2, signed by a key
// root does not give the targets role (with snapshot and timestamp signed
// by the real online keys). Control: the same forgery signed by the real
// targets key is installed, so the refusal is the signature check.
func TestAttackTargetsWrongKey(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.forgeTargets(newKey(t, kms.ECDSAP256), v2)
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "TUF metadata refused", "arbitrary-software refused (targets)")

	w, _, v2, u = scene(t)
	w.forgeTargets(w.keys.Targets, v2)
	w.offerOf(v2, 1)
	wantInstalled(t, w, u, v2)
}

// TestAttackRotatedOutTargetsKey: the targets key was rotated (a new root
// version lists a new key); a thief of the retired key forges targets
// listing v2. The unit, which trusted metadata signed by the retired key
// before, refuses. Control: v2 published with the new key is installed
// by the same unit. (The thief also holds the online keys, so the unit
// keeps the forged timestamp and snapshot, validly signed by them; as
// after any compromise of those keys, the repository publishes past
// their versions to recover.)
func TestAttackRotatedOutTargetsKey(t *testing.T) {
	w, v1, v2, u := scene(t)
	u.trustNow()
	retired, fresh := w.keys.Targets, newKey(t, kms.Ed25519)
	if err := w.repo.RotateKey(context.Background(), tuf.RoleTargets, fresh, w.keys); err != nil {
		t.Fatal(err)
	}
	w.keys.Targets = fresh
	w.forgeTargets(retired, v2)
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "TUF metadata refused", "arbitrary-software refused (targets)")

	w.publish(v2, nil)
	if err := w.repo.Publish(context.Background(), w.keys); err != nil {
		t.Fatal(err)
	}
	w.offerOf(v2, 2)
	wantInstalled(t, w, u, v2)
}

// TestAttackTargetNotSigned: the server offers an image the signed
// metadata does not list at all.
func TestAttackTargetNotSigned(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.mu.Lock()
	w.blobs[v2.digest()] = v2.image
	w.mu.Unlock()
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "arbitrary-software: target "+v2.path+" is not in the signed metadata")
}

// TestAttackOfferDisagrees: the server offers a signed target's path but
// another image's digest and size.
func TestAttackOfferDisagrees(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, nil)
	o := w.offerOf(v2, 1)
	w.mu.Lock()
	o.Release.SHA256, o.Release.Size = strings.Repeat("5e", 32), 12345
	w.mu.Unlock()
	wantRefused(t, w, u, v1, "arbitrary-software: the server offers "+strings.Repeat("5e", 32)+" (12345 bytes)")
}

// TestAttackTamperedArtifact: the artifact's bytes are changed in transit
// (same length): the digest computed while streaming is not the signed
// one, and the slot is erased.
func TestAttackTamperedArtifact(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, nil)
	tampered := append([]byte(nil), v2.image...)
	tampered[len(tampered)/2] ^= 1
	w.mu.Lock()
	w.blobs[v2.digest()] = tampered
	w.mu.Unlock()
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "arbitrary-software: the downloaded image has digest")
	if n, err := u.dev.Sim.Size(context.Background(), hw.SlotB); err != nil || n != 0 {
		t.Fatalf("slot b holds %d bytes (%v) after a refused download, want erased", n, err)
	}
}

// TestAttackImageCounterMismatch: the signed metadata says counter 3, the
// image itself carries 2 (metadata and image from different builds).
func TestAttackImageCounterMismatch(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, &tuf.Custom{Model: model, HardwareRevisions: []string{"*"}, Version: "2.0.0", SecurityCounter: 3})
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, "arbitrary-software: the image's security counter is 2; the signed metadata says 3")
}

// TestAttackEndlessData: the server keeps sending after the signed length;
// the updater stops at the first byte too many.
func TestAttackEndlessData(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, nil)
	w.extra = make([]byte, 1<<20)
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, fmt.Sprintf("endless-data: the download is longer than the %d bytes", len(v2.image)))
	if n, err := u.dev.Sim.Size(context.Background(), hw.SlotB); err != nil || n > int64(len(v2.image)) {
		t.Fatalf("slot b holds %d bytes (%v), more than the signed %d", n, err, len(v2.image))
	}
}

// TestAttackWrongModel: a validly signed target for another model.
func TestAttackWrongModel(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, &tuf.Custom{Model: "sensor-7", HardwareRevisions: []string{"*"}, Version: "2.0.0", SecurityCounter: 2})
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, `wrong-hardware: target `+v2.path+` is for model "sensor-7"; this device is a "`+model+`"`)
}

// TestAttackWrongHardwareRevision: a validly signed target for this model
// but other board revisions (the unit is revision B).
func TestAttackWrongHardwareRevision(t *testing.T) {
	w, v1, v2, u := scene(t)
	w.publish(v2, &tuf.Custom{Model: model, HardwareRevisions: []string{"A", "C"}, Version: "2.0.0", SecurityCounter: 2})
	w.offerOf(v2, 1)
	wantRefused(t, w, u, v1, `wrong-hardware: target `+v2.path+` is for hardware revisions [A C]; this device is revision "B"`)
}
