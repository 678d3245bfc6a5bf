package httpapi_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/httpapi"
	"cradle/internal/kms"
	"cradle/internal/ota"
	"cradle/internal/sqlstore"
	"cradle/internal/tuf"

	"github.com/google/go-cmp/cmp"
)

// withOTA gives the server the store's release, rollout and update
// services and a publisher over an artifact directory and a TUF
// repository of tenant 1 ("default") with online keys in files.
func withOTA(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) {
		s.Releases = sqlstore.NewReleaseService(e.db)
		s.Rollouts = sqlstore.NewRolloutService(e.db)
		s.Updates = sqlstore.NewUpdateService(e.db)
		s.Publisher = newPublisher(e.t, e.db, e.clock, s.Releases, s.Rollouts)
	}
}

func newPublisher(t testing.TB, db *sqlstore.DB, clock cradle.Clock, releases cradle.ReleaseService, rollouts cradle.RolloutService) *ota.Publisher {
	t.Helper()
	ctx := t.Context()
	dataDir := t.TempDir()
	dir := artifact.NewDir(filepath.Join(dataDir, "artifacts"))
	dir.Now = clock.Now
	repos := &ota.Repos{DataDir: dataDir, Clock: clock}
	t.Cleanup(func() { repos.Close() })
	keyDir := filepath.Join(ota.TenantDir(dataDir, "default"), "keys")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	keys := ota.OnlineKeys{}
	for _, role := range ota.OnlineRoles {
		if _, err := kms.Generate(ctx, filepath.Join(keyDir, role+".key"), kms.Ed25519, kms.Options{}); err != nil {
			t.Fatal(err)
		}
		keys[role] = "keys/" + role + ".key"
	}
	_, root, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := repos.Init(ctx, "default", tuf.RootSpec{Keys: []crypto.PublicKey{root.Public()}, Threshold: 1}, []crypto.Signer{root}, keys); err != nil {
		t.Fatal(err)
	}
	tenants := sqlstore.NewTenantService(db)
	return &ota.Publisher{Releases: releases, Rollouts: rollouts, Artifacts: dir, Repos: repos, MaxImageSize: 1 << 20, Logger: slog.New(slog.DiscardHandler),
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
			return "", fmt.Errorf("tenant %d not found", id)
		}}
}

// uploadPath is the upload route's path for body as an opaque file.
func uploadPath(version string, body []byte, extra string) string {
	sum := sha256.Sum256(body)
	return "/api/v1/releases?model=gw-100&version=" + version + "&kind=file&file_name=fw.bin&security_counter=1&sha256=" + hex.EncodeToString(sum[:]) + extra
}

// uploaded uploads an opaque file as release version of gw-100 through the
// API, signed when sign.
func (e *env) uploaded(version string, sign bool) *cradle.Release {
	e.t.Helper()
	body := []byte("firmware " + version)
	sum := sha256.Sum256(body)
	rel, err := e.client(cradle.RoleAdmin).UploadRelease(e.t.Context(), cradle.ReleaseUpload{Model: "gw-100", Version: version, Kind: cradle.ReleaseFile,
		FileName: "fw.bin", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body)), SecurityCounter: 1, Sign: sign}, bytes.NewReader(body))
	if err != nil {
		e.t.Fatalf("upload %s: %v", version, err)
	}
	return rel
}

// signedRelease records a signed release of gw-100 in tenant 1 through
// the store, as the publisher does after it stored and signed the bytes.
func (e *env) signedRelease(version string) *cradle.Release {
	e.t.Helper()
	ctx := cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(1, "test"))
	sum := sha256.Sum256([]byte("image " + version))
	rel, err := e.api.Releases.CreateRelease(ctx, cradle.ReleaseCreate{Model: "gw-100", Version: version, Kind: cradle.ReleaseFile,
		SHA256: hex.EncodeToString(sum[:]), Size: 1000, FileName: "fw.bin", SecurityCounter: 1})
	if err != nil {
		e.t.Fatalf("release %s: %v", version, err)
	}
	if rel, err = e.api.Releases.MarkReleaseSigned(ctx, rel.ID, "gw-100/"+version+"/fw.bin", nil); err != nil {
		e.t.Fatal(err)
	}
	return rel
}

// matrixRelease is the signed release the matrix rows roll out, made once
// per env.
func (e *env) matrixRelease() string {
	e.t.Helper()
	ctx := cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(1, "test"))
	if rs, err := e.api.Releases.FindReleases(ctx, cradle.ReleaseFilter{Model: "gw-100"}); err == nil {
		for _, r := range rs {
			if r.Version == "0.0.1-matrix" {
				return r.ID
			}
		}
	}
	return e.signedRelease("0.0.1-matrix").ID
}

// matrixRollout starts a rollout of the matrix release to new deployed
// devices named after tag: one canary, then a phase that asks for
// approval.
func (e *env) matrixRollout(tag string) string {
	e.t.Helper()
	a, b := "RO-"+tag+"-a", "RO-"+tag+"-b"
	e.deployDevice(a)
	e.deployDevice(b)
	ro, err := e.client(cradle.RoleAdmin).CreateRollout(e.t.Context(), cradle.RolloutSpec{ReleaseID: e.matrixRelease(),
		Target: cradle.RolloutTarget{Serials: []string{a, b}}, Phases: []cradle.RolloutPhase{{Count: 1}, {Percent: 100, Approval: true}},
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		e.t.Fatalf("rollout %s: %v", tag, err)
	}
	return ro.ID
}

// otaFixture makes SN-OTA, a deployed device that reported its software
// and downloaded an artifact, once per env.
func (e *env) otaFixture() string {
	e.t.Helper()
	const serial = "SN-OTA"
	ctx := cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(1, "test"))
	if _, err := e.api.Devices.FindDeviceBySerial(ctx, serial); err == nil {
		return serial
	}
	e.deployDevice(serial)
	rel := e.signedRelease("0.0.2-ota")
	if err := e.api.Updates.ReportSoftware(ctx, serial, rel.SHA256); err != nil {
		e.t.Fatal(err)
	}
	at := e.clock.Now()
	if err := e.api.Updates.RecordDownloads(ctx, []cradle.DownloadRecord{
		{TenantID: 1, Serial: serial, SHA256: rel.SHA256, Bytes: 400, At: at},
		{TenantID: 1, Serial: serial, SHA256: rel.SHA256, Bytes: 600, Complete: true, At: at},
	}); err != nil {
		e.t.Fatal(err)
	}
	return serial
}

func rolloutBody(release string, serials ...string) string {
	return fmt.Sprintf(`{"release_id":%q,"target":{"serials":["%s"]},"phases":[{"percent":100}],"failure_threshold":{"count":1,"action":"pause"}}`,
		release, strings.Join(serials, `","`))
}

// otaMatrix is the authorization matrix of the release-record, image-key,
// rollout and device-software routes: admins and operators read and
// write, auditors read, the factory neither (but for the device routes,
// which need device.read, which the factory has).
var otaMatrix = []call{
	{"POST", "/api/v1/releases", func(e *env, r cradle.Role) (string, string, string) {
		body := "firmware up-" + string(r)
		return uploadPath("up-"+string(r), []byte(body), ""), "application/octet-stream", body
	}, [4]int{201, 201, 403, 403}},
	{"POST", "/api/v1/releases/{id}/sign", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/releases/" + e.uploaded("sign-"+string(r), false).ID + "/sign", "", ""
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/releases/{id}/deprecate", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/releases/" + e.uploaded("dep-"+string(r), true).ID + "/deprecate", "application/json", `{"reason":"matrix"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/releases/{id}/yank", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/releases/" + e.uploaded("yank-"+string(r), true).ID + "/yank", "application/json", `{"reason":"matrix"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/releases/{id}/remediation", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/releases/" + e.uploaded("fix-"+string(r), true).ID + "/remediation", "application/json", `{"remediation":true}`
	}, [4]int{200, 200, 403, 403}},
	{"GET", "/api/v1/tuf", jsonCall("/api/v1/tuf", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/releases", jsonCall("/api/v1/releases?model=gw-100&state=signed&limit=5", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/releases/{id}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/releases/" + e.matrixRelease(), "", ""
	}, [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/image-keys", jsonCall("/api/v1/image-keys?model=gw-100", ""), [4]int{200, 200, 403, 200}},
	{"POST", "/api/v1/image-keys", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/image-keys", "application/json", fmt.Sprintf(`{"model":"gw-100","public_key":%q,"name":"%s"}`, newKeyPEM(e.t), r)
	}, [4]int{201, 201, 403, 403}},
	{"DELETE", "/api/v1/image-keys/{fingerprint}", func(e *env, r cradle.Role) (string, string, string) {
		k, err := e.client(cradle.RoleAdmin).AddImageKey(e.t.Context(), cradle.ImageKey{Model: "gw-100", PublicKey: newKeyPEM(e.t)})
		if err != nil {
			e.t.Fatal(err)
		}
		return "/api/v1/image-keys/" + k.Fingerprint, "", ""
	}, [4]int{204, 204, 403, 403}},
	{"POST", "/api/v1/rollouts", func(e *env, r cradle.Role) (string, string, string) {
		serial := "RC-" + string(r)
		e.deployDevice(serial)
		return "/api/v1/rollouts", "application/json", rolloutBody(e.matrixRelease(), serial)
	}, [4]int{201, 201, 403, 403}},
	{"GET", "/api/v1/rollouts", jsonCall("/api/v1/rollouts?state=running&limit=5", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/rollouts/{id}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/rollouts/" + e.matrixRollout("get-"+string(r)), "", ""
	}, [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/rollouts/{id}/devices", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/rollouts/" + e.matrixRollout("dev-"+string(r)) + "/devices?phase=0&limit=10", "", ""
	}, [4]int{200, 200, 403, 200}},
	{"POST", "/api/v1/rollouts/{id}/pause", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/rollouts/" + e.matrixRollout("pause-"+string(r)) + "/pause", "application/json", `{"reason":"matrix"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/rollouts/{id}/resume", func(e *env, r cradle.Role) (string, string, string) {
		id := e.matrixRollout("resume-" + string(r))
		if _, err := e.client(cradle.RoleAdmin).PauseRollout(e.t.Context(), id, "to resume"); err != nil {
			e.t.Fatal(err)
		}
		return "/api/v1/rollouts/" + id + "/resume", "", ""
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/rollouts/{id}/abort", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/rollouts/" + e.matrixRollout("abort-"+string(r)) + "/abort", "application/json", `{"reason":"matrix"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/rollouts/{id}/approve", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/rollouts/" + e.matrixRollout("approve-"+string(r)) + "/approve", "application/json", `{"phase":1}`
	}, [4]int{200, 200, 403, 403}},
	{"GET", "/api/v1/devices/{serial}/software", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/devices/" + e.otaFixture() + "/software", "", ""
	}, [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/devices/{serial}/downloads", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/devices/" + e.otaFixture() + "/downloads", "", ""
	}, [4]int{200, 200, 200, 200}},
}

// TestRolloutRoutes drives the rollout routes through the Go client:
// create, list, show, page through devices, the operator's decisions, and
// the refusals, each a JSON error that changed nothing.
func TestRolloutRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	op := e.client(cradle.RoleOperator)
	rel := e.signedRelease("1.0.0")
	var serials []string
	for i := range 5 {
		s := fmt.Sprintf("RR-%02d", i)
		e.deployDevice(s)
		serials = append(serials, s)
	}
	spec := cradle.RolloutSpec{ReleaseID: rel.ID, Target: cradle.RolloutTarget{Serials: serials},
		Phases:           []cradle.RolloutPhase{{Name: "canary", Count: 1}, {Percent: 40}, {Percent: 100, Approval: true}},
		FailureThreshold: cradle.FailureThreshold{Percent: 20, Action: cradle.FailureAbort}, RateLimit: 10}
	ro, err := op.CreateRollout(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ro.Status.State != cradle.RolloutRunning || ro.Status.Devices != 5 || len(ro.Status.Phases) != 3 || ro.ReleaseID != rel.ID {
		t.Fatalf("created rollout = %+v", ro)
	}
	got, err := e.client(cradle.RoleAuditor).FindRollout(ctx, ro.ID)
	if err != nil || !cmp.Equal(got.RolloutSpec, ro.RolloutSpec) || got.Status.Devices != 5 {
		t.Errorf("FindRollout = %+v, %v", got, err)
	}
	running := cradle.RolloutRunning
	list, err := op.FindRollouts(ctx, cradle.RolloutFilter{State: &running, ReleaseID: rel.ID})
	if err != nil || len(list) != 1 || list[0].ID != ro.ID {
		t.Errorf("FindRollouts = %+v, %v", list, err)
	}
	// Paging through the devices, two at a time, in the rollout's order.
	var paged []string
	after := ""
	for range 10 {
		resp := e.doJSON("GET", "/api/v1/rollouts/"+ro.ID+"/devices?limit=2&after="+after, e.tokens[cradle.RoleOperator], "")
		if resp.status != http.StatusOK {
			t.Fatalf("devices page: %d %s", resp.status, resp.body)
		}
		var page httpapi.RolloutDeviceList
		decodeInto(t, resp.body, &page)
		for _, d := range page.Devices {
			paged = append(paged, d.Serial)
		}
		if page.NextAfter == "" {
			break
		}
		after = page.NextAfter
	}
	if diff := cmp.Diff(serials, paged); diff != "" {
		t.Errorf("paged devices (-want +got):\n%s", diff)
	}
	phase0 := 0
	canary, err := op.FindRolloutDevices(ctx, ro.ID, cradle.RolloutDeviceFilter{Phase: &phase0})
	if err != nil || len(canary) != 1 || canary[0].Serial != serials[0] || canary[0].State != cradle.DeviceStarted {
		t.Errorf("canary = %+v, %v", canary, err)
	}
	pending := cradle.DevicePending
	if ds, err := op.FindRolloutDevices(ctx, ro.ID, cradle.RolloutDeviceFilter{State: &pending}); err != nil || len(ds) != 4 {
		t.Errorf("pending devices = %d, %v; want 4", len(ds), err)
	}

	// Decisions.
	if ro, err = op.ApproveRollout(ctx, ro.ID, 2); err != nil || !ro.Status.Phases[2].Approved {
		t.Errorf("approve = %+v, %v", ro, err)
	}
	if ro, err = op.PauseRollout(ctx, ro.ID, "looking at the canary"); err != nil || ro.Status.State != cradle.RolloutPaused || ro.Status.Reason != "looking at the canary" {
		t.Errorf("pause = %+v, %v", ro.Status, err)
	}
	if _, err := op.PauseRollout(ctx, ro.ID, "again"); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("pausing a paused rollout: %v, want conflict", err)
	}
	if ro, err = op.ResumeRollout(ctx, ro.ID); err != nil || ro.Status.State != cradle.RolloutRunning {
		t.Errorf("resume = %+v, %v", ro.Status, err)
	}
	// The spec is read strictly; every refusal is a JSON error.
	for _, tt := range []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"unknown field", "POST", "/api/v1/rollouts", `{"release_id":"x","colour":1}`, 400, "colour"},
		{"bad cron", "POST", "/api/v1/rollouts", strings.Replace(rolloutBody(rel.ID, "RR-00"), `"phases"`, `"windows":[{"cron":"99 * * * *","duration":"1h"}],"phases"`, 1), 400, "windows[0]"},
		{"no failure threshold", "POST", "/api/v1/rollouts", `{"release_id":"x","target":{"selector":"a=b"},"phases":[{"percent":100}]}`, 400, "failure_threshold"},
		{"overlapping list", "POST", "/api/v1/rollouts", rolloutBody(rel.ID, "RR-01"), 409, "RR-01"},
		{"unknown release", "POST", "/api/v1/rollouts", rolloutBody("rel_00000000000000000000", "RR-01"), 404, ""},
		{"unknown state", "GET", "/api/v1/rollouts?state=sleeping", "", 400, "unknown rollout state"},
		{"unknown parameter", "GET", "/api/v1/rollouts?colour=red", "", 400, "colour"},
		{"bad phase", "GET", "/api/v1/rollouts/" + ro.ID + "/devices?phase=x", "", 400, "phase"},
		{"unknown device state", "GET", "/api/v1/rollouts/" + ro.ID + "/devices?state=sleeping", "", 400, "unknown device update state"},
		{"approve a phase without approval", "POST", "/api/v1/rollouts/" + ro.ID + "/approve", `{"phase":1}`, 400, "does not ask for approval"},
		{"approve with a stray field", "POST", "/api/v1/rollouts/" + ro.ID + "/approve", `{"phase":2,"why":1}`, 400, "why"},
		{"abort without a body", "POST", "/api/v1/rollouts/" + ro.ID + "/abort", "", 400, "JSON body"},
		{"resume with a body", "POST", "/api/v1/rollouts/" + ro.ID + "/resume", `{"x":1}`, 400, "x"},
		{"unknown rollout", "GET", "/api/v1/rollouts/ro_nope", "", 404, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.doJSON(tt.method, tt.path, e.tokens[cradle.RoleOperator], tt.body)
			if resp.status != tt.status {
				t.Fatalf("status %d, want %d; %s", resp.status, tt.status, resp.body)
			}
			if msg := resp.errorBody(t).Message; !strings.Contains(msg, tt.msg) {
				t.Errorf("message %q does not mention %q", msg, tt.msg)
			}
		})
	}
	if all, _ := op.FindRollouts(ctx, cradle.RolloutFilter{}); len(all) != 1 {
		t.Errorf("%d rollouts after the refusals, want 1", len(all))
	}
	if ro, err = op.AbortRollout(ctx, ro.ID, "enough"); err != nil || ro.Status.State != cradle.RolloutAborted {
		t.Errorf("abort = %+v, %v", ro.Status, err)
	}
	if _, err := op.ResumeRollout(ctx, ro.ID); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("resuming an aborted rollout: %v, want conflict", err)
	}
}

// TestDeviceSoftwareRoutes reads what a device reported running and its
// download totals.
func TestDeviceSoftwareRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	serial := e.otaFixture()
	sw, err := e.client(cradle.RoleAuditor).FindSoftware(ctx, serial)
	if err != nil || sw.Version != "0.0.2-ota" || sw.ReleaseID == "" {
		t.Errorf("software = %+v, %v", sw, err)
	}
	ds, err := e.client(cradle.RoleOperator).FindDownloads(ctx, serial)
	if err != nil || len(ds) != 1 || ds[0].Bytes != 1000 || ds[0].Requests != 2 || ds[0].Completes != 1 || ds[0].SHA256 != sw.SHA256 {
		t.Errorf("downloads = %+v, %v", ds, err)
	}
	e.deployDevice("SN-QUIET")
	if _, err := e.client(cradle.RoleOperator).FindSoftware(ctx, "SN-QUIET"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("software of a device that never reported: %v, want not found", err)
	}
	if ds, err := e.client(cradle.RoleOperator).FindDownloads(ctx, "SN-QUIET"); err != nil || len(ds) != 0 {
		t.Errorf("downloads of a quiet device = %+v, %v; want none", ds, err)
	}
	// Another tenant sees nothing.
	if _, err := httpapi.NewClient(e.url, e.other, nil).FindSoftware(ctx, serial); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("other tenant: %v, want not found", err)
	}
}

// TestOTARoutesWithoutServices: a server without the services answers
// their routes with a JSON error, not a panic; without a publisher the
// publisher's routes say how to make a repository.
func TestOTARoutesWithoutServices(t *testing.T) {
	e := newEnv(t, func(s *httpapi.Server) { s.Releases, s.Rollouts, s.Updates, s.Publisher = nil, nil, nil, nil })
	for _, tt := range []struct {
		method, path string
		status       int
		msg          string
	}{
		{"POST", "/api/v1/releases?model=m&version=1&sha256=00", 503, "run cradle release repo init"},
		{"POST", "/api/v1/releases/rel_x/sign", 503, "run cradle release repo init"},
		{"POST", "/api/v1/releases/rel_x/deprecate", 503, "run cradle release repo init"},
		{"POST", "/api/v1/releases/rel_x/yank", 503, "run cradle release repo init"},
		{"GET", "/api/v1/tuf", 503, "run cradle release repo init"},
		{"GET", "/api/v1/releases", 501, "not available"},
		{"GET", "/api/v1/image-keys", 501, "not available"},
		{"GET", "/api/v1/rollouts", 501, "not available"},
		{"GET", "/api/v1/devices/SN-1/software", 501, "not available"},
	} {
		resp := e.do(tt.method, tt.path, e.tokens[cradle.RoleAdmin], "application/octet-stream", strings.NewReader("x"))
		if resp.status != tt.status || !strings.Contains(resp.errorBody(t).Message, tt.msg) {
			t.Errorf("%s %s: %d %s; want %d mentioning %q", tt.method, tt.path, resp.status, resp.body, tt.status, tt.msg)
		}
	}
}

// newKeyPEM returns a fresh Ed25519 public key as PEM.
func newKeyPEM(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// decodeInto decodes a JSON answer strictly.
func decodeInto(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
}
