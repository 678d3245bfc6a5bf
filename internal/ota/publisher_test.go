package ota_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	_ "github.com/jackc/pgx/v5/stdlib"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/delta"
	"cradle/internal/kms"
	"cradle/internal/mcuboot"
	"cradle/internal/ota"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"
	"cradle/internal/tuf"
)

// env is one test's OTA service: a real store (SQLite, or PostgreSQL when
// CRADLE_TEST_POSTGRES is set), a real artifact directory and a TUF
// repository made by Repos.Init.
type env struct {
	t         *testing.T
	clock     *storetest.Clock
	db        *sqlstore.DB
	dataDir   string
	artifacts *artifact.Dir
	repos     *ota.Repos
	pub       *ota.Publisher
	releases  *sqlstore.ReleaseService
	rollouts  *sqlstore.RolloutService
	admin     context.Context
	root      []crypto.Signer
}

func storeDSN(t *testing.T) string {
	base := os.Getenv("CRADLE_TEST_POSTGRES")
	if base == "" {
		return filepath.Join(t.TempDir(), "cradle.db")
	}
	return storetest.PostgresSchema(t, base, "cradle_ota_")
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, clock: storetest.NewClock(storetest.Epoch), dataDir: t.TempDir()}
	_, key, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, storeDSN(t), sqlstore.Options{AuditKey: key, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.db = db
	if _, err := sqlstore.NewTokenService(db).Bootstrap(ctx); err != nil { // creates tenant 1, "default"
		t.Fatal(err)
	}
	e.admin = cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	e.artifacts = artifact.NewDir(filepath.Join(e.dataDir, "artifacts"))
	e.artifacts.Now = e.clock.Now
	e.repos = &ota.Repos{DataDir: e.dataDir, Clock: e.clock}
	t.Cleanup(func() { e.repos.Close() })
	e.releases, e.rollouts = sqlstore.NewReleaseService(db), sqlstore.NewRolloutService(db)
	tenants := sqlstore.NewTenantService(db)
	e.pub = &ota.Publisher{
		Releases: e.releases, Rollouts: e.rollouts, Artifacts: e.artifacts, Repos: e.repos,
		TenantName: func(ctx context.Context, id int64) (string, error) {
			all, err := tenants.FindTenants(ctx)
			if err != nil {
				return "", err
			}
			for _, tn := range all {
				if tn.ID == id {
					return tn.Name, nil
				}
			}
			return "", cradle.Errorf(cradle.ENOTFOUND, "tenant %d", id)
		},
	}
	// The repository, with online keys in files named by keys.json.
	keyDir := filepath.Join(ota.TenantDir(e.dataDir, "default"), "keys")
	os.MkdirAll(keyDir, 0o700)
	keys := ota.OnlineKeys{}
	for _, role := range ota.OnlineRoles {
		if _, err := kms.Generate(ctx, filepath.Join(keyDir, role+".key"), kms.Ed25519, kms.Options{}); err != nil {
			t.Fatal(err)
		}
		keys[role] = "keys/" + role + ".key"
	}
	for range 2 {
		_, k, _ := ed25519.GenerateKey(nil)
		e.root = append(e.root, k)
	}
	spec := tuf.RootSpec{Keys: []crypto.PublicKey{e.root[0].Public(), e.root[1].Public()}, Threshold: 2}
	if err := e.repos.Init(ctx, "default", spec, e.root, keys); err != nil {
		t.Fatal(err)
	}
	if err := e.repos.Init(ctx, "default", spec, e.root, keys); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("a second Init: %v, want ECONFLICT", err)
	}
	return e
}

// imageKey makes an image signing key trusted for model.
func (e *env) imageKey(model string) crypto.Signer {
	e.t.Helper()
	_, k, _ := ed25519.GenerateKey(nil)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if _, err := e.releases.AddImageKey(e.admin, cradle.ImageKey{Model: model, PublicKey: pemText}); err != nil {
		e.t.Fatal(err)
	}
	return k
}

// firmware is a deterministic 64 KiB body; variant changes a few bytes.
func firmware(variant byte) []byte {
	b := make([]byte, 64<<10)
	seed := sha256.Sum256([]byte("firmware"))
	for i := 0; i < len(b); i += 32 {
		seed = sha256.Sum256(seed[:])
		copy(b[i:], seed[:])
	}
	for i := range 64 {
		b[i*997%len(b)] ^= variant
	}
	return b
}

func signImage(t *testing.T, key crypto.Signer, body []byte, counter uint32) []byte {
	t.Helper()
	img, err := mcuboot.Sign(body, mcuboot.Options{Key: key, PadHeader: true, SecurityCounter: &counter, Version: mcuboot.Version{Major: 1, Minor: uint8(counter)}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func upload(model, version string, data []byte) cradle.ReleaseUpload {
	sum := sha256.Sum256(data)
	return cradle.ReleaseUpload{Model: model, Version: version, FileName: "zephyr.signed.bin", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

func (e *env) blobs() int {
	e.t.Helper()
	n := 0
	if err := e.artifacts.List(context.Background(), func(artifact.Info) error { n++; return nil }); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// tufClient is go-tuf's updater, trusting root v1 of the tenant's
// repository, fetching targets from the artifact store by the digest in
// their name, as the device listener does.
func (e *env) tufClient() *updater.Updater {
	e.t.Helper()
	repoDir := ota.RepositoryDir(e.dataDir, "default")
	mux := http.NewServeMux()
	mux.Handle("/metadata/", http.StripPrefix("/metadata/", http.FileServer(http.Dir(repoDir))))
	mux.HandleFunc("/targets/", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		hexDigest, _, _ := strings.Cut(name, ".")
		d, err := artifact.ParseDigest(hexDigest)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		rd, _, err := e.artifacts.Open(r.Context(), d)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer rd.Close()
		http.ServeContent(w, r, name, time.Time{}, rd)
	})
	srv := httptest.NewServer(mux)
	e.t.Cleanup(srv.Close)
	rootV1, err := os.ReadFile(filepath.Join(repoDir, "1.root.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg, err := config.New(srv.URL+"/metadata", rootV1)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.RemoteTargetsURL = srv.URL + "/targets"
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = e.t.TempDir(), e.t.TempDir()
	up, err := updater.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	up.UnsafeSetRefTime(e.clock.Now())
	if err := up.Refresh(); err != nil {
		e.t.Fatalf("TUF client refresh: %v", err)
	}
	return up
}

func download(t *testing.T, up *updater.Updater, path string) ([]byte, tuf.Custom) {
	t.Helper()
	info, err := up.GetTargetInfo(path)
	if err != nil {
		t.Fatalf("target %s: %v", path, err)
	}
	_, data, err := up.DownloadTarget(info, filepath.Join(t.TempDir(), "dl"), "")
	if err != nil {
		t.Fatalf("download %s: %v", path, err)
	}
	c, err := tuf.ParseCustom(*info.Custom)
	if err != nil {
		t.Fatalf("custom of %s: %v", path, err)
	}
	return data, c
}

// TestUploadSignDelta: two signed MCUboot releases; the second gets a
// delta from the first; a TUF client verifies both targets, and the patch
// it downloads rebuilds the second image from the first.
func TestUploadSignDelta(t *testing.T) {
	e := newEnv(t)
	key := e.imageKey("gw-100")
	v1 := signImage(t, key, firmware(1), 1)
	v2 := signImage(t, key, firmware(2), 2)

	u := upload("gw-100", "1.1.0", v1)
	u.Sign = true
	r1, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(v1))
	if err != nil {
		t.Fatal(err)
	}
	if r1.State != cradle.ReleaseSigned || r1.Kind != cradle.ReleaseMCUboot || r1.SecurityCounter != 1 || r1.TargetPath != "gw-100/1.1.0/zephyr.signed.bin" || len(r1.Deltas) != 0 {
		t.Fatalf("first release %+v", r1)
	}
	r2, err := e.pub.UploadRelease(e.admin, upload("gw-100", "1.2.0", v2), bytes.NewReader(v2))
	if err != nil {
		t.Fatal(err)
	}
	if r2.State != cradle.ReleaseUploaded || r2.SecurityCounter != 2 || r2.ImageKey == "" {
		t.Fatalf("uploaded release %+v", r2)
	}
	r2, err = e.pub.SignRelease(e.admin, r2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(r2.Deltas) != 1 || r2.Deltas[0].FromRelease != r1.ID || r2.Deltas[0].TargetPath != "gw-100/1.2.0/zephyr.signed.bin.from-1.1.0.zst" {
		t.Fatalf("deltas %+v", r2.Deltas)
	}
	if r2.Deltas[0].Size*100 > r2.Size*delta.MaxRatioPercent {
		t.Fatalf("a patch of %d bytes for an image of %d was kept", r2.Deltas[0].Size, r2.Size)
	}
	if _, err := e.pub.SignRelease(e.admin, "rel_00000000000000000000"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Fatalf("sign a missing release: %v", err)
	}

	up := e.tufClient()
	got, c := download(t, up, r2.TargetPath)
	if !bytes.Equal(got, v2) {
		t.Fatal("the client downloaded other bytes than the image")
	}
	if c.Model != "gw-100" || c.Version != "1.2.0" || c.SecurityCounter != 2 || len(c.HardwareRevisions) != 1 || c.HardwareRevisions[0] != ota.AllHardwareRevisions {
		t.Fatalf("custom metadata %+v", c)
	}
	if len(c.DeltaBases) != 1 || c.DeltaBases[0].From != r1.SHA256 || c.DeltaBases[0].Patch != r2.Deltas[0].TargetPath {
		t.Fatalf("delta bases %+v", c.DeltaBases)
	}
	patch, pc := download(t, up, c.DeltaBases[0].Patch)
	if pc.Version != "1.2.0" {
		t.Fatalf("patch custom %+v", pc)
	}
	var rebuilt bytes.Buffer
	if _, err := delta.Apply(&rebuilt, v1, bytes.NewReader(patch), delta.Expect{BaseSHA256: delta.Sum(v1), TargetSHA256: delta.Sum(v2), Limit: int64(len(v2)), TargetSize: int64(len(v2))}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rebuilt.Bytes(), v2) {
		t.Fatal("the patch does not rebuild the image")
	}

	st, err := e.pub.RepositoryStatus(e.admin)
	if err != nil {
		t.Fatal(err)
	}
	if st.Targets != 3 || st.Roles["root"].Threshold != 2 || len(st.Roles["root"].KeyIDs) != 2 || st.Roles["targets"].Version != 3 {
		t.Fatalf("status %+v", st)
	}
}

// TestUploadRefusals: each bad input is refused with a clear error, and
// a mismatching upload stores nothing.
func TestUploadRefusals(t *testing.T) {
	e := newEnv(t)
	key := e.imageKey("gw-a")
	otherKey := e.imageKey("gw-b")
	good := signImage(t, key, firmware(1), 5)
	u := upload("gw-a", "1.0.0", good)
	u.Sign = true
	if _, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	_, unknown, _ := ed25519.GenerateKey(nil)
	unknownImg := signImage(t, unknown, firmware(3), 6)
	unknownHash, _ := mcuboot.KeyHash(unknown.Public())
	wrongModel := signImage(t, otherKey, firmware(4), 6)
	low := signImage(t, key, firmware(5), 4)
	higher := signImage(t, key, firmware(6), 7)
	swu := swuImage("070702", "sw-description")
	reader := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: 1, Role: cradle.RoleAuditor, Kind: "token", ID: "aud"})

	for _, tt := range []struct {
		name   string
		ctx    context.Context
		u      cradle.ReleaseUpload
		body   []byte
		code   string
		want   string
		stored bool // the bytes reach the store before the refusal
	}{
		{"digest mismatch", e.admin, func() cradle.ReleaseUpload {
			x := upload("gw-a", "2.0.0", higher)
			x.SHA256 = upload("", "", good).SHA256
			return x
		}(), higher, cradle.EINVALID, "", false},
		{"zero digest", e.admin, func() cradle.ReleaseUpload {
			x := upload("gw-a", "2.0.0", higher)
			x.SHA256 = strings.Repeat("0", 64)
			return x
		}(), higher, cradle.EINVALID, "sha256", false},
		{"length mismatch", e.admin, func() cradle.ReleaseUpload { x := upload("gw-a", "2.0.0", higher); x.Size--; return x }(), higher, cradle.EINVALID, "", false},
		{"too large", e.admin, func() cradle.ReleaseUpload { x := upload("gw-a", "2.0.0", higher); x.Size = 2 << 30; return x }(), higher, cradle.ETOOLARGE, "limit", false},
		{"bad version", e.admin, upload("gw-a", "2.0/0", higher), higher, cradle.EINVALID, "slash", false},
		{"no permission", reader, upload("gw-a", "2.0.0", higher), higher, cradle.EFORBIDDEN, "", false},
		{"unknown key", e.admin, upload("gw-a", "2.0.0", unknownImg), unknownImg, cradle.EINVALID, "unknown key (KEYHASH " + hex.EncodeToString(unknownHash), true},
		{"wrong model", e.admin, upload("gw-a", "2.0.0", wrongModel), wrongModel, cradle.EINVALID, "image signed by the key of model gw-b, not gw-a", true},
		{"downgrade", e.admin, upload("gw-a", "2.0.0", low), low, cradle.EINVALID, "downgrade", true},
		{"counter mismatch", e.admin, func() cradle.ReleaseUpload { x := upload("gw-a", "2.0.0", higher); x.SecurityCounter = 9; return x }(), higher, cradle.EINVALID, "SEC_CNT is 7", true},
		{"kind mismatch", e.admin, func() cradle.ReleaseUpload {
			x := upload("gw-a", "2.0.0", swu)
			x.Kind = cradle.ReleaseMender
			return x
		}(), swu, cradle.EINVALID, "not of kind mender", true},
		{"mcuboot as file", e.admin, func() cradle.ReleaseUpload {
			x := upload("gw-a", "2.0.0", higher)
			x.Kind = cradle.ReleaseFile
			return x
		}(), higher, cradle.EINVALID, "is a mcuboot artifact", true},
		{"version exists", e.admin, upload("gw-a", "1.0.0", higher), higher, cradle.ECONFLICT, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := e.blobs()
			_, err := e.pub.UploadRelease(tt.ctx, tt.u, bytes.NewReader(tt.body))
			if cradle.ErrorCode(err) != tt.code || !strings.Contains(cradle.ErrorMessage(err), tt.want) {
				t.Fatalf("err = %v, want %s containing %q", err, tt.code, tt.want)
			}
			if after := e.blobs(); !tt.stored && after != before {
				t.Fatalf("a refused upload stored a blob (%d → %d)", before, after)
			}
		})
	}
	list, err := e.releases.FindReleases(e.admin, cradle.ReleaseFilter{Model: "gw-a"})
	if err != nil || len(list) != 1 {
		t.Fatalf("releases after the refusals: %d %v", len(list), err)
	}

	// Foreign artifacts are recognised, parsed whole and keep the
	// security counter given.
	valid := swuFile(t, swuSigner(t), nil, []byte("image"))
	r, err := e.pub.UploadRelease(e.admin, func() cradle.ReleaseUpload { x := upload("gw-a", "3.0.0", valid); x.SecurityCounter = 8; return x }(), bytes.NewReader(valid))
	if err != nil || r.Kind != cradle.ReleaseSWUpdate || r.SecurityCounter != 8 {
		t.Fatalf("swu upload: %+v %v", r, err)
	}
}

// TestSignRootExpired: with root expired, signing is refused with the
// command that renews it, and nothing is published.
func TestSignRootExpired(t *testing.T) {
	e := newEnv(t)
	key := e.imageKey("gw")
	img := signImage(t, key, firmware(1), 1)
	r, err := e.pub.UploadRelease(e.admin, upload("gw", "1.0.0", img), bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(ota.RepositoryDir(e.dataDir, "default"), "timestamp.json"))
	e.clock.Add(366 * 24 * time.Hour)
	_, err = e.pub.SignRelease(e.admin, r.ID)
	if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "rotate-root") {
		t.Fatalf("sign with root expired: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(ota.RepositoryDir(e.dataDir, "default"), "timestamp.json"))
	if !bytes.Equal(before, after) {
		t.Fatal("something was published")
	}
	if got, _ := e.releases.FindRelease(e.admin, r.ID); got.State != cradle.ReleaseUploaded {
		t.Fatalf("release is %s", got.State)
	}
	// Renewing root (the same keys) makes signing work again.
	err = e.repos.Do(e.admin, "default", func(repo *tuf.Repository, s tuf.Signers) error {
		s.Root = e.root
		return repo.RotateRoot(e.admin, tuf.RootSpec{Keys: []crypto.PublicKey{e.root[0].Public(), e.root[1].Public()}, Threshold: 2}, s)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.pub.SignRelease(e.admin, r.ID); err != nil {
		t.Fatalf("sign after renewal: %v", err)
	}
}

// TestYank: yanking removes the target and its patch from the repository,
// marks the release and aborts its running rollout.
func TestYank(t *testing.T) {
	e := newEnv(t)
	key := e.imageKey("gw")
	v1, v2 := signImage(t, key, firmware(1), 1), signImage(t, key, firmware(2), 2)
	for _, x := range []struct {
		v    string
		data []byte
	}{{"1", v1}, {"2", v2}} {
		u := upload("gw", x.v, x.data)
		u.Sign = true
		if _, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(x.data)); err != nil {
			t.Fatal(err)
		}
	}
	list, _ := e.releases.FindReleases(e.admin, cradle.ReleaseFilter{Model: "gw"})
	r2 := list[0]
	if r2.Version != "2" || len(r2.Deltas) != 1 {
		t.Fatalf("release %+v", r2)
	}
	devices := sqlstore.NewDeviceService(e.db)
	if _, err := devices.CreateDevice(e.admin, cradle.DeviceCreate{Serial: "d1", Model: "gw", State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	if _, err := devices.TransitionDevice(e.admin, "d1", cradle.DeviceTransition{To: cradle.StateDeployed}); err != nil {
		t.Fatal(err)
	}
	ro, err := e.rollouts.CreateRollout(e.admin, cradle.RolloutSpec{ReleaseID: r2.ID, Target: cradle.RolloutTarget{Serials: []string{"d1"}},
		Phases: []cradle.RolloutPhase{{Percent: 100}}, FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.pub.YankRelease(e.admin, r2.ID, ""); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Fatalf("yank without a reason: %v", err)
	}
	y, err := e.pub.YankRelease(e.admin, r2.ID, "bricks the radio")
	if err != nil {
		t.Fatal(err)
	}
	if y.State != cradle.ReleaseYanked {
		t.Fatalf("state %s", y.State)
	}
	if got, err := e.rollouts.FindRollout(e.admin, ro.ID); err != nil || got.Status.State != cradle.RolloutAborted {
		t.Fatalf("rollout after yank: %+v %v", got, err)
	}
	up := e.tufClient()
	if _, err := up.GetTargetInfo(r2.TargetPath); err == nil {
		t.Fatal("the yanked release is still a target")
	}
	if _, err := up.GetTargetInfo(r2.Deltas[0].TargetPath); err == nil {
		t.Fatal("the yanked release's patch is still a target")
	}
	if _, err := up.GetTargetInfo("gw/1/zephyr.signed.bin"); err != nil {
		t.Fatalf("the other release went too: %v", err)
	}
	if _, err := e.pub.YankRelease(e.admin, r2.ID, "again"); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("yank twice: %v", err)
	}
	d, err := e.pub.DeprecateRelease(e.admin, list[1].ID, "old")
	if err != nil || d.State != cradle.ReleaseDeprecated {
		t.Fatalf("deprecate: %+v %v", d, err)
	}
}

// TestCollectGarbage: referenced blobs stay; an unreferenced one goes once
// its grace period is over, not before.
func TestCollectGarbage(t *testing.T) {
	e := newEnv(t)
	key := e.imageKey("gw")
	good := signImage(t, key, firmware(1), 1)
	if _, err := e.pub.UploadRelease(e.admin, upload("gw", "1", good), bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	_, unknown, _ := ed25519.GenerateKey(nil)
	bad := signImage(t, unknown, firmware(2), 2)
	if _, err := e.pub.UploadRelease(e.admin, upload("gw", "2", bad), bytes.NewReader(bad)); err == nil {
		t.Fatal("an image of an unknown key was accepted")
	}
	if n := e.blobs(); n != 2 {
		t.Fatalf("%d blobs, want 2", n)
	}
	st, err := ota.CollectGarbage(context.Background(), e.artifacts, e.releases, time.Hour, e.clock.Now().Add(30*time.Minute))
	if err != nil || st.Deleted != 0 || st.Young != 1 || st.Kept != 1 {
		t.Fatalf("within grace: %+v %v", st, err)
	}
	st, err = ota.CollectGarbage(context.Background(), e.artifacts, e.releases, time.Hour, e.clock.Now().Add(2*time.Hour))
	if err != nil || st.Deleted != 1 || st.Kept != 1 {
		t.Fatalf("after grace: %+v %v", st, err)
	}
	sum := sha256.Sum256(good)
	if _, err := e.artifacts.Stat(context.Background(), artifact.Digest(sum)); err != nil {
		t.Fatalf("the referenced blob is gone: %v", err)
	}
}

// TestRefreshAll: metadata near expiry is re-signed with the keys of
// keys.json, and a client at that time accepts it.
func TestRefreshAll(t *testing.T) {
	e := newEnv(t)
	e.clock.Add(20 * time.Hour) // timestamp (1 day) has under half left
	done, err := e.repos.RefreshAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := done["default"]; len(got) == 0 || !strings.Contains(strings.Join(got, ","), "timestamp") {
		t.Fatalf("refreshed %v", done)
	}
	e.clock.Add(10 * time.Hour) // past the first timestamp's expiry
	e.tufClient()
	if _, err := (&ota.Repos{DataDir: t.TempDir()}).Status(context.Background(), "default"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Fatalf("status of a missing repository: %v", err)
	}
}

// hookReleases is the real release store with a hook run once after the
// next FindRelease, to interleave another operator's call.
type hookReleases struct {
	cradle.ReleaseService
	after func()
}

func (h *hookReleases) FindRelease(ctx context.Context, id string) (*cradle.Release, error) {
	r, err := h.ReleaseService.FindRelease(ctx, id)
	if f := h.after; f != nil {
		h.after = nil
		f()
	}
	return r, err
}

// TestSignYankRace: a yank and a signing of the same release that
// interleave, in either order, never leave a published target of a
// yanked release.
func TestSignYankRace(t *testing.T) {
	for _, first := range []string{"yank inside sign", "sign inside yank"} {
		t.Run(first, func(t *testing.T) {
			e := newEnv(t)
			key := e.imageKey("gw")
			v1 := signImage(t, key, firmware(1), 1)
			r, err := e.pub.UploadRelease(e.admin, upload("gw", "1", v1), bytes.NewReader(v1))
			if err != nil {
				t.Fatal(err)
			}
			hooked := *e.pub
			h := &hookReleases{ReleaseService: e.releases}
			hooked.Releases = h
			var outer, inner error
			if first == "yank inside sign" {
				h.after = func() { _, inner = e.pub.YankRelease(e.admin, r.ID, "bad") }
				_, outer = hooked.SignRelease(e.admin, r.ID)
				if inner != nil || cradle.ErrorCode(outer) != cradle.ECONFLICT {
					t.Fatalf("yank: %v; sign: %v, want ECONFLICT", inner, outer)
				}
			} else {
				h.after = func() { _, inner = e.pub.SignRelease(e.admin, r.ID) }
				_, outer = hooked.YankRelease(e.admin, r.ID, "bad")
				if inner != nil || outer != nil {
					t.Fatalf("sign: %v; yank: %v", inner, outer)
				}
			}
			got, err := e.releases.FindRelease(e.admin, r.ID)
			if err != nil || got.State != cradle.ReleaseYanked {
				t.Fatalf("release after the race: %+v %v", got, err)
			}
			up := e.tufClient()
			if _, err := up.GetTargetInfo("gw/1/zephyr.signed.bin"); err == nil {
				t.Fatal("the yanked release is a published target")
			}
		})
	}
}
