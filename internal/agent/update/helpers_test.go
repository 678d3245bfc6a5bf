package update_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/bootsim"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
	"cradle/internal/delta"
	"cradle/internal/kms"
	"cradle/internal/mcuboot"
	"cradle/internal/tuf"
)

const model = "gw-100"

func newKey(t *testing.T, alg kms.Algorithm) crypto.Signer {
	t.Helper()
	s, err := kms.Generate(context.Background(), filepath.Join(t.TempDir(), "key.pem"), alg, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// release is an image published in the repository and served by the
// server.
type release struct {
	path    string
	image   []byte
	version string
	counter uint32
}

func (r release) digest() string { s := sha256.Sum256(r.image); return hex.EncodeToString(s[:]) }

// world is a TUF repository, a device API server speaking the shape of
// cradle's, and the image key.
type world struct {
	t        *testing.T
	repoDir  string
	repo     *tuf.Repository
	keys     tuf.Signers
	root     []byte // the root metadata devices trust from the factory
	imageKey crypto.Signer
	srv      *httptest.Server

	mu        sync.Mutex
	blobs     map[string][]byte // artifacts by hex digest
	offer     *update.Offer
	reports   []cradle.UpdateReport
	software  []string
	ranges    []string // Range headers of artifact requests
	cutAfter  int64    // >0: artifact bodies stop after this many bytes (once)
	extra     []byte   // appended to every artifact body (endless data)
	healthErr error    // the update check answers 503 while set
	sig       string   // when set, artifact URLs need ?sig= with it (else 403), as signed links do
	refused   int      // artifact requests answered 403
	swFail    int      // software reports answered 503 before one is taken
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, repoDir: t.TempDir(), blobs: map[string][]byte{}, imageKey: newKey(t, kms.ECDSAP256)}
	rootKey := newKey(t, kms.ECDSAP256)
	w.keys = tuf.Signers{Root: []crypto.Signer{rootKey}, Targets: newKey(t, kms.ECDSAP256), Snapshot: newKey(t, kms.Ed25519), Timestamp: newKey(t, kms.ECDSAP256)}
	repo, err := tuf.Init(context.Background(), tuf.Options{Store: tuf.DirStore{Dir: w.repoDir}}, tuf.RootSpec{Keys: []crypto.PublicKey{rootKey.Public()}, Threshold: 1}, w.keys)
	if err != nil {
		t.Fatal(err)
	}
	w.repo = repo
	if w.root, err = repo.Root(); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /device/v1/update", func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		o, herr := w.offer, w.healthErr
		w.mu.Unlock()
		switch {
		case herr != nil:
			http.Error(rw, `{"code":"EUNAVAILABLE","message":"`+herr.Error()+`"}`, http.StatusServiceUnavailable)
		case o == nil: // like the server, an offer stands whatever the unit runs
			rw.WriteHeader(http.StatusNoContent)
		default:
			json.NewEncoder(rw).Encode(o)
		}
	})
	mux.HandleFunc("POST /device/v1/update/status", func(rw http.ResponseWriter, r *http.Request) {
		var rep cradle.UpdateReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			http.Error(rw, err.Error(), 400)
			return
		}
		w.mu.Lock()
		w.reports = append(w.reports, rep)
		if rep.State == cradle.UpdateSucceeded || rep.State == cradle.UpdateFailed {
			w.offer = nil // the attempt is over
		}
		w.mu.Unlock()
		rw.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /device/v1/software", func(rw http.ResponseWriter, r *http.Request) {
		var s struct{ SHA256 string }
		json.NewDecoder(r.Body).Decode(&s)
		w.mu.Lock()
		if w.swFail > 0 {
			w.swFail--
			w.mu.Unlock()
			http.Error(rw, `{"code":"EUNAVAILABLE","message":"try later"}`, http.StatusServiceUnavailable)
			return
		}
		w.software = append(w.software, s.SHA256)
		w.mu.Unlock()
		rw.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("GET /device/v1/tuf/", http.StripPrefix("/device/v1/tuf/", http.FileServer(http.Dir(w.repoDir))))
	mux.HandleFunc("GET /artifacts/{hex}", func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		b, ok := w.blobs[r.PathValue("hex")]
		w.ranges = append(w.ranges, r.Header.Get("Range"))
		cut, extra := w.cutAfter, w.extra
		w.cutAfter = 0
		expired := w.sig != "" && r.URL.Query().Get("sig") != w.sig
		if expired {
			w.refused++
		}
		w.mu.Unlock()
		if expired {
			http.Error(rw, `{"code":"EFORBIDDEN","message":"download URL expired"}`, http.StatusForbidden)
			return
		}
		if !ok {
			http.NotFound(rw, r)
			return
		}
		if extra != nil {
			rw.Write(append(append([]byte(nil), b...), extra...))
			return
		}
		if cut > 0 && r.Header.Get("Range") == "" {
			rw.Header().Set("Content-Length", fmt.Sprint(len(b)))
			rw.Write(b[:cut])
			panic(http.ErrAbortHandler) // the connection drops mid-body
		}
		http.ServeContent(rw, r, "", time.Time{}, strings.NewReader(string(b)))
	})
	w.srv = httptest.NewServer(mux)
	t.Cleanup(w.srv.Close)
	return w
}

// image signs body as an MCUboot image with counter.
func (w *world) image(body []byte, version string, counter uint32, key crypto.Signer) []byte {
	w.t.Helper()
	v, err := mcuboot.ParseVersion(version)
	if err != nil {
		w.t.Fatal(err)
	}
	img, err := mcuboot.Sign(body, mcuboot.Options{Version: v, SecurityCounter: &counter, PadHeader: true, Key: key})
	if err != nil {
		w.t.Fatal(err)
	}
	return img
}

// publish adds a release to the repository (custom c, or the default for
// model) and to the artifact store.
func (w *world) publish(r release, c *tuf.Custom) {
	w.t.Helper()
	if c == nil {
		c = &tuf.Custom{Model: model, HardwareRevisions: []string{"*"}, Version: r.version, SecurityCounter: r.counter}
	}
	sum := sha256.Sum256(r.image)
	if err := w.repo.AddTarget(r.path, tuf.Target{Length: int64(len(r.image)), SHA256: sum[:], Custom: *c}); err != nil {
		w.t.Fatal(err)
	}
	if err := w.repo.Publish(context.Background(), w.keys); err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	w.blobs[hex.EncodeToString(sum[:])] = r.image
	w.mu.Unlock()
}

// offerOf makes the server offer r.
func (w *world) offerOf(r release, attempt int) *update.Offer {
	o := &update.Offer{RolloutID: "ro_test", Attempt: attempt}
	o.Release.ID, o.Release.Model, o.Release.Version, o.Release.Kind = "rel_test", model, r.version, "mcuboot"
	o.Release.SecurityCounter, o.Release.SHA256, o.Release.Size, o.Release.TargetPath = r.counter, r.digest(), int64(len(r.image)), r.path
	o.Artifact.URL, o.Artifact.SHA256, o.Artifact.Size = w.srv.URL+"/artifacts/"+r.digest(), r.digest(), int64(len(r.image))
	o.TUF.MetadataURL = w.srv.URL + "/device/v1/tuf/"
	w.mu.Lock()
	if w.sig != "" {
		o.Artifact.URL += "?sig=" + w.sig
	}
	w.offer = o
	w.mu.Unlock()
	return o
}

func (w *world) finalReports() []cradle.UpdateReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []cradle.UpdateReport
	for _, r := range w.reports {
		if r.State == cradle.UpdateSucceeded || r.State == cradle.UpdateFailed {
			out = append(out, r)
		}
	}
	return out
}

func (w *world) lastSoftware() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.software) == 0 {
		return ""
	}
	return w.software[len(w.software)-1]
}

// unit is a simulated device with its agent state.
type unit struct {
	t        *testing.T
	w        *world
	devDir   string
	dev      *hw.Device
	stateDir string
	tufDir   string
	boots    int
	lastBoot bootsim.Result
	now      time.Time
	opts     func(*update.Options)
}

// newUnit makes a provisioned unit running base in slot A with secure
// boot on and the image key fused.
func (w *world) newUnit(base release) *unit {
	t := w.t
	t.Helper()
	u := &unit{t: t, w: w, devDir: t.TempDir(), stateDir: t.TempDir(), tufDir: t.TempDir(), now: time.Now()}
	dev, err := hw.CreateSimDevice(u.devDir, "uid-1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kh, _ := mcuboot.KeyHash(w.imageKey.Public())
	for f, v := range map[string][]byte{hw.FuseImageKeyHash: kh, hw.FuseSecureBoot: {1}} {
		if err := dev.Fuses.Program(ctx, f, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dev.Slots.Write(ctx, hw.SlotA, strings.NewReader(string(base.image))); err != nil {
		t.Fatal(err)
	}
	if err := dev.BootEnv.Set(ctx, map[string]string{hw.EnvBootSlot: "a"}); err != nil {
		t.Fatal(err)
	}
	u.dev = dev
	return u
}

// reopen powers the unit up again after a cut.
func (u *unit) reopen() {
	u.t.Helper()
	dev, err := hw.OpenSimDevice(u.devDir)
	if err != nil {
		u.t.Fatal(err)
	}
	u.dev = dev
}

// boot runs the simulated bootloader.
func (u *unit) boot(ctx context.Context) error {
	res, err := bootsim.Boot(ctx, u.dev, bootsim.Options{Keys: []crypto.PublicKey{u.w.imageKey.Public()}})
	if err != nil {
		return err
	}
	u.boots++
	u.lastBoot = res
	if res.Bricked {
		return fmt.Errorf("bricked: %s", res.Reason)
	}
	return nil
}

func (u *unit) options() update.Options {
	o := update.Options{
		Device: u.dev, Writer: u.dev.Sim, StateDir: u.stateDir,
		Server:   &update.Client{ServerURL: u.w.srv.URL, HTTP: u.w.srv.Client()},
		Metadata: &update.TUF{Dir: u.tufDir, TrustedRoot: u.w.root, HTTP: u.w.srv.Client()},
		Model:    model, HardwareRevision: "B",
		ImageKeys: []crypto.PublicKey{u.w.imageKey.Public()},
		Reboot:    u.boot,
		BootID:    func() string { return fmt.Sprint(u.boots) },
		// A healthy trial passes at its first check; the deadline only
		// has to outlast a slow check on a loaded machine (checks are
		// cut at it). Tests of failing checks set a shorter one.
		HealthRetry: time.Millisecond, HealthTimeout: 20 * time.Second,
		SaveEvery: 32 << 10,
	}
	if u.opts != nil {
		u.opts(&o)
	}
	return o
}

func (u *unit) updater() *update.Updater {
	u.t.Helper()
	up, err := update.New(u.options())
	if err != nil {
		u.t.Fatal(err)
	}
	return up
}

// running returns the booted slot and the digest of its image.
func (u *unit) running() (hw.Slot, string) {
	u.t.Helper()
	env, err := u.dev.BootEnv.Get(context.Background())
	if err != nil {
		u.t.Fatal(err)
	}
	s := hw.Slot(env[hw.EnvBootSlot])
	d, err := u.dev.Slots.Digest(context.Background(), s)
	if err != nil {
		u.t.Fatal(err)
	}
	return s, hex.EncodeToString(d[:])
}

func (u *unit) antiRollback() int {
	u.t.Helper()
	f, err := u.dev.Fuses.Read(context.Background())
	if err != nil {
		u.t.Fatal(err)
	}
	n, err := hw.ThermometerCount(f[hw.FuseAntiRollback])
	if err != nil {
		u.t.Fatal(err)
	}
	return n
}

// releases builds v1 (counter 1) and v2 (counter 2, a small change of v1).
func (w *world) releases(size int) (v1, v2 release) {
	rng := rand.New(rand.NewPCG(1, 2))
	body := make([]byte, size)
	for i := range body {
		body[i] = byte(rng.IntN(16)) // compressible, like code
	}
	body2 := append([]byte(nil), body...)
	for i := 0; i < len(body2); i += 4096 {
		body2[i] ^= 0x5a
	}
	v1 = release{path: model + "/1.0.0/app.bin", image: w.image(body, "1.0.0", 1, w.imageKey), version: "1.0.0", counter: 1}
	v2 = release{path: model + "/2.0.0/app.bin", image: w.image(body2, "2.0.0", 2, w.imageKey), version: "2.0.0", counter: 2}
	return v1, v2
}

// publishDelta publishes v2 with a delta from v1 and offers it with the delta.
// offerDelta offers v2 as offerOf does, with patch p from v1.
func (w *world) offerDelta(v1, v2 release, p *delta.Patch) *update.Offer {
	o := w.offerOf(v2, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	o.Delta = &struct {
		URL        string `json:"url"`
		SHA256     string `json:"sha256"`
		Size       int64  `json:"size"`
		FromSHA256 string `json:"from_sha256"`
	}{URL: w.srv.URL + "/artifacts/" + p.PatchSHA256.String(), SHA256: p.PatchSHA256.String(), Size: int64(len(p.Data)), FromSHA256: v1.digest()}
	return o
}

func (w *world) publishDelta(v1, v2 release) *delta.Patch {
	w.t.Helper()
	p, err := delta.Generate(v1.image, v2.image)
	if err != nil {
		w.t.Fatal(err)
	}
	patchPath := v2.path + ".from-1.0.0.zst"
	c := tuf.Custom{Model: model, HardwareRevisions: []string{"*"}, Version: v2.version, SecurityCounter: v2.counter,
		DeltaBases: []tuf.DeltaBase{{From: v1.digest(), Patch: patchPath, Length: int64(len(p.Data)), Hashes: map[string]string{"sha256": p.PatchSHA256.String()}}}}
	w.publish(release{path: patchPath, image: p.Data}, &c)
	w.publish(v2, &c)
	return p
}
