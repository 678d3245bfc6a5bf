package mender_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/compat/mender"
	"cradle/internal/sqlstore"
)

// env is the Mender API over a real SQLite store, served by httptest.
type env struct {
	t         testing.TB
	db        *sqlstore.DB
	raw       *sql.DB // the same file, for fixture rollouts
	protocols *sqlstore.ProtocolService
	updates   *sqlstore.UpdateService
	releases  *sqlstore.ReleaseService
	signer    *artifact.URLSigner
	admin     context.Context
	server    *mender.Server
	srv       *httptest.Server
	key       deviceKey
}

func newEnv(t testing.TB, configure ...func(*mender.Server)) *env {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cradle.db")
	_, auditKey, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, path, sqlstore.Options{AuditKey: auditKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := sqlstore.NewTokenService(db).Bootstrap(ctx); err != nil { // tenant 1, "default"
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	signer, err := artifact.NewURLSigner(bytes.Repeat([]byte{1}, artifact.MinKeySize), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, raw: raw, protocols: sqlstore.NewProtocolService(db), updates: sqlstore.NewUpdateService(db),
		releases: sqlstore.NewReleaseService(db), signer: signer, key: testKeys(t)["ecdsa"],
		admin: cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})}
	s := &mender.Server{Protocols: e.protocols, Updates: e.updates,
		DefaultTenant: func(context.Context) (int64, error) { return 1, nil },
		SignURL: func(r *http.Request, dev *cradle.Device, rel *cradle.Release) (string, time.Time, error) {
			d, err := artifact.ParseDigest(rel.SHA256)
			if err != nil {
				return "", time.Time{}, err
			}
			exp := time.Now().Add(time.Hour)
			return "https://" + r.Host + signer.Sign(artifact.Ticket{Digest: d, Device: dev.Serial, Expires: exp}), exp, nil
		}}
	for _, f := range configure {
		f(s)
	}
	e.server = s
	e.srv = httptest.NewTLSServer(s.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

// do sends a request and returns the status and body.
func (e *env) do(method, path, token string, body []byte, hdr ...string) (int, []byte, http.Header) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if body == nil {
		req.Body = nil
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// login sends a signed auth request of mac.
func (e *env) login(mac, tenantToken string) (int, []byte, http.Header) {
	body := authBody(e.t, map[string]string{"mac": mac}, e.key, tenantToken)
	return e.do("POST", "/api/devices/v1/authentication/auth_requests", "", body, "X-MEN-Signature", sign(e.t, e.key, body), "Content-Type", "application/json")
}

// admitted logs a device in, accepting its pending set as serial, and
// returns its session token.
func (e *env) admitted(mac, serial string) string {
	e.t.Helper()
	if code, body, _ := e.login(mac, ""); code != http.StatusUnauthorized {
		e.t.Fatalf("first login: %d %s, want 401 (pending)", code, body)
	}
	sets, err := e.protocols.FindMenderAuthSets(e.admin, cradle.MenderAuthFilter{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range sets {
		if strings.Contains(s.IDData, mac) {
			if _, err := e.protocols.AcceptMenderAuthSet(e.admin, s.ID, cradle.MenderAccept{Serial: serial, Model: "gw-m"}); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	code, body, hdr := e.login(mac, "")
	if code != http.StatusOK || hdr.Get("Content-Type") != "application/jwt" || len(body) == 0 {
		e.t.Fatalf("login after accept: %d %s (%s)", code, body, hdr.Get("Content-Type"))
	}
	return string(body)
}

// wantError checks a Mender error answer.
func wantError(t *testing.T, what string, code int, body []byte, wantCode int, msg string) {
	t.Helper()
	var e struct {
		Error     string `json:"error"`
		RequestID string `json:"request_id"`
	}
	if code != wantCode || json.Unmarshal(body, &e) != nil || e.RequestID == "" || !strings.Contains(e.Error, msg) {
		t.Fatalf("%s: %d %s, want %d with a Mender error saying %q", what, code, body, wantCode, msg)
	}
}

// TestAuthRequests: a bad signature stores nothing; an unknown device is
// pending (401) until accepted, then gets a token; tenant tokens must be
// Mender tenant tokens, not gateway or session tokens; oversize bodies are
// refused.
func TestAuthRequests(t *testing.T) {
	e := newEnv(t)
	body := authBody(t, map[string]string{"mac": "02:00:00:00:00:01"}, e.key, "")
	code, got, _ := e.do("POST", "/api/devices/v1/authentication/auth_requests", "", body, "X-MEN-Signature", sign(t, testKeys(t)["ed25519"], body))
	wantError(t, "wrong key's signature", code, got, http.StatusUnauthorized, "does not verify")
	if sets, err := e.protocols.FindMenderAuthSets(e.admin, cradle.MenderAuthFilter{}); err != nil || len(sets) != 0 {
		t.Fatalf("after a bad signature: %d auth sets, %v; want none", len(sets), err)
	}
	code, got, _ = e.login("02:00:00:00:00:01", "not-a-token")
	wantError(t, "bogus tenant token", code, got, http.StatusUnauthorized, "tenant_token")
	big := append(bytes.Repeat([]byte(" "), mender.MaxAuthRequestBytes), body...)
	code, got, _ = e.do("POST", "/api/devices/v1/authentication/auth_requests", "", big, "X-MEN-Signature", sign(t, e.key, big))
	wantError(t, "oversize auth request", code, got, http.StatusRequestEntityTooLarge, "larger than")

	tok := e.admitted("02:00:00:00:00:01", "SN-1")
	d, err := sqlstore.NewDeviceService(e.db).FindDeviceBySerial(e.admin, "SN-1")
	if err != nil || d.Protocol != cradle.ProtocolMender || d.State != cradle.StateDeployed {
		t.Fatalf("device after login: %+v, %v", d, err)
	}
	// A Mender tenant token names the tenant; a gateway token (which
	// would also open the hawkBit API) or a session token does not.
	tt, err := e.protocols.CreateDeviceToken(e.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenMenderTenant, Name: "mender"})
	if err != nil {
		t.Fatal(err)
	}
	if code, got, _ := e.login("02:00:00:00:00:01", tt.Secret); code != http.StatusOK {
		t.Fatalf("login with a tenant token: %d %s", code, got)
	}
	gw, err := e.protocols.CreateDeviceToken(e.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, Name: "hawkbit"})
	if err != nil {
		t.Fatal(err)
	}
	code, got, _ = e.login("02:00:00:00:00:01", gw.Secret)
	wantError(t, "a gateway token as tenant token", code, got, http.StatusUnauthorized, "not a Mender tenant token")
	code, got, _ = e.login("02:00:00:00:00:01", tok)
	wantError(t, "a session token as tenant token", code, got, http.StatusUnauthorized, "not a Mender tenant token")
}

// TestInventory: PUT replaces, PATCH merges, as the device; no or a bad
// token is 401; a bad body 400.
func TestInventory(t *testing.T) {
	e := newEnv(t)
	tok := e.admitted("02:00:00:00:00:02", "SN-2")
	const path = "/api/devices/v1/inventory/device/attributes"
	if code, got, _ := e.do("PUT", path, tok, []byte(`[{"name":"device_type","value":"gw-m"},{"name":"artifact_name","value":"r0"},{"name":"ip","value":["a","b"]}]`)); code != http.StatusOK {
		t.Fatalf("PUT: %d %s", code, got)
	}
	if code, got, _ := e.do("PATCH", path, tok, []byte(`[{"name":"artifact_name","value":"r1"},{"name":"mem","value":512}]`)); code != http.StatusOK {
		t.Fatalf("PATCH: %d %s", code, got)
	}
	attrs := e.attributes("SN-2")
	if want := "artifact_name=r1 device_type=gw-m ip=[\"a\",\"b\"] mem=512"; attrs != want {
		t.Fatalf("attributes %s, want %s", attrs, want)
	}
	if code, got, _ := e.do("PUT", path, tok, []byte(`[{"name":"mem","value":1}]`)); code != http.StatusOK || e.attributes("SN-2") != "mem=1" {
		t.Fatalf("PUT replacing: %d %s, attributes %s", code, got, e.attributes("SN-2"))
	}
	code, got, _ := e.do("PUT", path, tok, []byte(`[{"name":"x","value":{}}]`))
	wantError(t, "object value", code, got, http.StatusBadRequest, `inventory attribute "x"`)
	code, got, _ = e.do("PUT", path, "", []byte(`[]`))
	wantError(t, "no token", code, got, http.StatusUnauthorized, "Bearer")
	code, got, _ = e.do("PUT", path, "dtk_0000000000000000.nope", []byte(`[]`))
	wantError(t, "unknown token", code, got, http.StatusUnauthorized, "")
	code, got, _ = e.do("PUT", path, tok, bytes.Repeat([]byte(" "), mender.MaxInventoryBytes+1))
	wantError(t, "oversize inventory", code, got, http.StatusRequestEntityTooLarge, "larger than")
	code, got, _ = e.do("GET", "/api/devices/v1/nothing", tok, nil)
	wantError(t, "unknown route", code, got, http.StatusNotFound, "not a route")
	// A suspended device's token is refused with 403, and so is its login.
	if _, err := sqlstore.NewDeviceService(e.db).TransitionDevice(e.admin, "SN-2", cradle.DeviceTransition{To: cradle.StateSuspended, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	code, got, _ = e.do("PUT", path, tok, []byte(`[]`))
	wantError(t, "suspended device", code, got, http.StatusForbidden, "suspended")
	code, got, _ = e.login("02:00:00:00:00:02", "")
	wantError(t, "suspended device's login", code, got, http.StatusForbidden, "suspended")
}

func (e *env) attributes(serial string) string {
	e.t.Helper()
	attrs, err := e.protocols.FindDeviceAttributes(e.admin, serial)
	if err != nil {
		e.t.Fatal(err)
	}
	var s []string
	for _, a := range attrs {
		s = append(s, a.Name+"="+a.Value)
	}
	return strings.Join(s, " ")
}

// release records a release of model gw-m.
func (e *env) release(version string, kind cradle.ReleaseKind, name string) *cradle.Release {
	e.t.Helper()
	sum := sha256.Sum256([]byte(version))
	r, err := e.releases.CreateRelease(e.admin, cradle.ReleaseCreate{Model: "gw-m", Version: version, Kind: kind, SHA256: hex.EncodeToString(sum[:]),
		Size: 5000, FileName: "app.mender", ArtifactName: name})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// rollout inserts a rollout of rel in state with serial's attempt in
// devState, directly (a fixture: the device side is under test).
// rollout stores a rollout with the device in it, and tells the server
// as the rollout scheduler does when it starts a device.
func (e *env) rollout(id string, rel *cradle.Release, state cradle.RolloutState, serial string, devState cradle.DeviceUpdateState, attempt int) {
	e.t.Helper()
	e.rolloutRows(id, rel, state, serial, devState, attempt)
	e.server.Invalidate(1, []string{serial})
}

// rolloutRows stores a rollout with the device in it, behind the server's
// back.
func (e *env) rolloutRows(id string, rel *cradle.Release, state cradle.RolloutState, serial string, devState cradle.DeviceUpdateState, attempt int) {
	e.t.Helper()
	now := time.Now().UnixMicro()
	e.exec(`INSERT INTO rollouts (tenant_id, public_id, release_id, spec, status, state, in_flight, revision, created_by, created_at, updated_at)
		SELECT 1, ?, id, '{}', '{}', ?, 1, 1, 'test', ?, ? FROM releases WHERE public_id = ?`, id, string(state), now, now, rel.ID)
	e.exec(`INSERT INTO rollout_devices (rollout_id, position, device_id, serial, state, phase, attempt)
		SELECT r.id, 0, d.id, d.serial, ?, 0, ? FROM rollouts r, devices d WHERE r.public_id = ? AND d.serial = ?`, string(devState), attempt, id, serial)
}

func (e *env) exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.raw.Exec(q, args...); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
}

// events lists the queued reports of a rollout as "kind/attempt/reason".
func (e *env) events(rolloutID string) []string {
	e.t.Helper()
	rows, err := e.raw.Query(`SELECT ev.kind, ev.attempt, ev.reason FROM rollout_events ev JOIN rollouts r ON r.id = ev.rollout_id WHERE r.public_id = ? ORDER BY ev.seq`, rolloutID)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var kind, reason string
		var attempt int
		if err := rows.Scan(&kind, &attempt, &reason); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s/%d/%s", kind, attempt, reason))
	}
	return out
}

// TestDeployments: update checks (v2, v1 POST, v1 GET), status reports,
// logs, aborted rollouts and ended attempts.
func TestDeployments(t *testing.T) {
	e := newEnv(t)
	tok := e.admitted("02:00:00:00:00:03", "SN-3")
	v2 := func(deviceType string) (int, []byte) {
		code, body, _ := e.do("POST", "/api/devices/v2/deployments/device/deployments/next", tok,
			[]byte(`{"device_provides":{"artifact_name":"r0","device_type":"`+deviceType+`"},"update_control_map":true}`+"\n"))
		return code, body
	}
	if code, body := v2("gw-m"); code != http.StatusNoContent {
		t.Fatalf("next without a rollout: %d %s", code, body)
	}
	rel := e.release("2.0.0", cradle.ReleaseMender, "app-2")
	e.rollout("ro_a", rel, cradle.RolloutRunning, "SN-3", cradle.DeviceStarted, 1)
	code, body := v2("gw-m")
	var dep struct {
		ID       string `json:"id"`
		Artifact struct {
			ID           string `json:"id"`
			ArtifactName string `json:"artifact_name"`
			Source       struct {
				URI    string `json:"uri"`
				Expire string `json:"expire"`
			} `json:"source"`
			DeviceTypes []string `json:"device_types_compatible"`
		} `json:"artifact"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &dep) != nil {
		t.Fatalf("next: %d %s", code, body)
	}
	if dep.ID != "ro_a-1" || dep.Artifact.ID != rel.ID || dep.Artifact.ArtifactName != "app-2" || len(dep.Artifact.DeviceTypes) != 1 || dep.Artifact.DeviceTypes[0] != "gw-m" {
		t.Fatalf("deployment %s", body)
	}
	u, err := url.Parse(dep.Artifact.Source.URI)
	if err != nil {
		t.Fatal(err)
	}
	if tk, err := e.signer.Verify(u.Path, u.RawQuery, time.Now()); err != nil || tk.Digest.String() != rel.SHA256 || tk.Device != "SN-3" {
		t.Fatalf("artifact URI %s: %+v, %v", dep.Artifact.Source.URI, tk, err)
	}
	if exp, err := time.Parse(time.RFC3339, dep.Artifact.Source.Expire); err != nil || exp.Before(time.Now()) {
		t.Fatalf("expire %q: %v", dep.Artifact.Source.Expire, err)
	}
	code, b1, _ := e.do("POST", "/api/devices/v1/deployments/device/deployments/next", tok, []byte(`{"artifact_name":"r0","device_type":"gw-m"}`))
	code2, b2, _ := e.do("GET", "/api/devices/v1/deployments/device/deployments/next?artifact_name=r0&device_type=gw-m", tok, nil)
	if code != http.StatusOK || code2 != http.StatusOK || !strings.Contains(string(b1), `"id":"ro_a-1"`) || !strings.Contains(string(b2), `"id":"ro_a-1"`) {
		t.Fatalf("v1 next: %d %s; GET: %d %s", code, b1, code2, b2)
	}
	c, got, _ := e.do("POST", "/api/devices/v2/deployments/device/deployments/next", tok, []byte(`{"device_provides":{}}`))
	wantError(t, "next without device_type", c, got, http.StatusBadRequest, "no device_type")
	// What a v1 body said is remembered for v1 checks only.
	c, got, _ = e.do("POST", "/api/devices/v2/deployments/device/deployments/next", tok, []byte(`{"artifact_name":"r0","device_type":"gw-m"}`))
	wantError(t, "v2 next with the v1 body", c, got, http.StatusBadRequest, "artifact_name")

	status := func(id, s string) (int, []byte) {
		code, body, _ := e.do("PUT", "/api/devices/v1/deployments/device/deployments/"+id+"/status", tok, []byte(`{"status":"`+s+`"}`+"\n"))
		return code, body
	}
	for _, s := range []string{"downloading", "downloading", "installing", "rebooting"} {
		if code, body := status("ro_a-1", s); code != http.StatusNoContent {
			t.Fatalf("status %s: %d %s", s, code, body)
		}
	}
	c, got = status("ro_nope-1", "downloading")
	wantError(t, "status of another rollout", c, got, http.StatusNotFound, "ro_nope")
	c, got = status("garbage", "downloading")
	wantError(t, "status of a malformed id", c, got, http.StatusNotFound, "deployment ids are")
	c, got = status("ro_a-1", "finished")
	wantError(t, "unknown status", c, got, http.StatusBadRequest, `unknown status "finished"`)
	if code, body := status("ro_a-1", "success"); code != http.StatusNoContent {
		t.Fatalf("status success: %d %s", code, body)
	}
	want := []string{"downloading/1/", "downloading/1/", "installing/1/", "installing/1/", "succeeded/1/"}
	if got := e.events("ro_a"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("reports %v, want %v", got, want)
	}
	if sw, err := e.updates.FindSoftware(e.admin, "SN-3"); err != nil || sw.SHA256 != rel.SHA256 {
		t.Fatalf("software after success: %+v, %v", sw, err)
	}
	// The engine ends the attempt; a repeated report changes nothing.
	e.exec(`UPDATE rollout_devices SET state = 'succeeded'`)
	if code, body := status("ro_a-1", "success"); code != http.StatusNoContent || len(e.events("ro_a")) != len(want) {
		t.Fatalf("repeated success: %d %s, reports %v", code, body, e.events("ro_a"))
	}
	if code, body := v2("gw-m"); code != http.StatusNoContent {
		t.Fatalf("next after the attempt ended: %d %s", code, body)
	}

	// A failure: the log comes, and the repeated failure carries its
	// last error line.
	rel2 := e.release("2.0.1", cradle.ReleaseMender, "app-3")
	e.rollout("ro_b", rel2, cradle.RolloutRunning, "SN-3", cradle.DeviceInstalling, 2)
	if code, body := status("ro_b-2", "failure"); code != http.StatusNoContent {
		t.Fatalf("status failure: %d %s", code, body)
	}
	logBody := []byte(`{"messages":[{"timestamp":"2026-01-01T00:00:00Z","level":"error","message":"module exited 1"},{"level":"info","message":"rolling back"}]}`)
	if code, body, _ := e.do("PUT", "/api/devices/v1/deployments/device/deployments/ro_b-2/log", tok, logBody); code != http.StatusNoContent {
		t.Fatalf("log: %d %s", code, body)
	}
	if code, body := status("ro_b-2", "failure"); code != http.StatusNoContent {
		t.Fatalf("status failure again: %d %s", code, body)
	}
	want = []string{"failed/2/the Mender client reported failure", "failed/2/the Mender client reported failure: module exited 1"}
	if got := e.events("ro_b"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("reports %q, want %q", got, want)
	}
	logs, err := e.protocols.FindUpdateLogs(e.admin, "SN-3", "ro_b")
	if err != nil || len(logs) != 1 || logs[0].Log != string(logBody) || logs[0].Attempt != 2 {
		t.Fatalf("stored logs %+v, %v", logs, err)
	}
	c, got, _ = e.do("PUT", "/api/devices/v1/deployments/device/deployments/ro_b-2/log", tok, bytes.Repeat([]byte(" "), mender.MaxLogBytes+1))
	wantError(t, "oversize log", c, got, http.StatusRequestEntityTooLarge, "larger than")
	c, got, _ = e.do("PUT", "/api/devices/v1/deployments/device/deployments/ro_b-2/log", tok, []byte(`{"messages":{}}`))
	wantError(t, "malformed log", c, got, http.StatusBadRequest, "messages")
	e.exec(`UPDATE rollout_devices SET state = 'failed'`)

	// An aborted rollout: no offer, and its in-flight attempt's reports
	// are refused with 409.
	rel3 := e.release("2.0.2", cradle.ReleaseMender, "app-4")
	e.rollout("ro_c", rel3, cradle.RolloutAborted, "SN-3", cradle.DeviceDownloading, 1)
	if code, body := v2("gw-m"); code != http.StatusNoContent {
		t.Fatalf("next in an aborted rollout: %d %s", code, body)
	}
	c, got = status("ro_c-1", "installing")
	wantError(t, "status in an aborted rollout", c, got, http.StatusConflict, "aborted")
	e.exec(`UPDATE rollout_devices SET state = 'aborted'`)

	// A release the client cannot install, or for another device type:
	// the attempt fails, saying why, and nothing is offered.
	rel4 := e.release("3.0.0", cradle.ReleaseMCUboot, "")
	e.rollout("ro_d", rel4, cradle.RolloutRunning, "SN-3", cradle.DeviceStarted, 1)
	if code, body := v2("gw-m"); code != http.StatusNoContent || !strings.Contains(strings.Join(e.events("ro_d"), ""), "only Mender artifacts") {
		t.Fatalf("next of an MCUboot release: %d %s, reports %v", code, body, e.events("ro_d"))
	}
	e.exec(`UPDATE rollout_devices SET state = 'failed'`)
	rel5 := e.release("3.0.1", cradle.ReleaseMender, "app-5")
	e.rollout("ro_e", rel5, cradle.RolloutRunning, "SN-3", cradle.DeviceStarted, 1)
	if code, body := v2("gw-other"); code != http.StatusNoContent || !strings.Contains(strings.Join(e.events("ro_e"), ""), "device_type is gw-other") {
		t.Fatalf("next for another device type: %d %s, reports %v", code, body, e.events("ro_e"))
	}
}

// TestPollCache: update checks keep what they read of the device's update
// until the scheduler's Invalidate or the device's own report drops it;
// status reports always read the store; PollCache < 0 keeps nothing.
func TestPollCache(t *testing.T) {
	const path = "/api/devices/v2/deployments/device/deployments/next"
	body := []byte(`{"device_provides":{"artifact_name":"r0","device_type":"gw-m"}}`)
	t.Run("cached", func(t *testing.T) {
		e := newEnv(t)
		tok := e.admitted("02:00:00:00:00:07", "SN-7")
		next := func(what string, want int) {
			t.Helper()
			if code, got, _ := e.do("POST", path, tok, body); code != want {
				t.Fatalf("next %s: %d %s, want %d", what, code, got, want)
			}
		}
		next("without a rollout", http.StatusNoContent)
		rel := e.release("2.0.0", cradle.ReleaseMender, "app-2")
		e.rolloutRows("ro_q", rel, cradle.RolloutRunning, "SN-7", cradle.DeviceStarted, 1)
		next("after a start nobody was told of", http.StatusNoContent)
		e.server.Invalidate(1, []string{"SN-1", "SN-7"})
		next("after Invalidate", http.StatusOK)
		// An abort reaches update checks at the TTL or at the device's
		// next report, which reads the store and drops the reading.
		e.exec(`UPDATE rollouts SET state = 'aborted'`)
		next("right after an abort", http.StatusOK)
		code, got, _ := e.do("PUT", "/api/devices/v1/deployments/device/deployments/ro_q-1/status", tok, []byte(`{"status":"downloading"}`))
		wantError(t, "status after the abort", code, got, http.StatusConflict, "aborted")
		next("after the report", http.StatusNoContent)
	})
	t.Run("uncached", func(t *testing.T) {
		e := newEnv(t, func(s *mender.Server) { s.PollCache = -1 })
		tok := e.admitted("02:00:00:00:00:08", "SN-8")
		if code, got, _ := e.do("POST", path, tok, body); code != http.StatusNoContent {
			t.Fatalf("next without a rollout: %d %s", code, got)
		}
		e.rolloutRows("ro_u", e.release("2.0.0", cradle.ReleaseMender, "app-2"), cradle.RolloutRunning, "SN-8", cradle.DeviceStarted, 1)
		if code, got, _ := e.do("POST", path, tok, body); code != http.StatusOK {
			t.Fatalf("next after a start, uncached: %d %s", code, got)
		}
	})
}
