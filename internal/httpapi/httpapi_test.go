package httpapi_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
)

// env is a real server over a real SQLite store in a temporary directory,
// with tokens of every role in the default tenant (1) and an admin token
// of a second tenant.
type env struct {
	t      *testing.T
	db     *sqlstore.DB
	clock  *storetest.Clock
	api    *httpapi.Server
	url    string
	tokens map[cradle.Role]string // tenant 1
	other  string                 // admin of tenant "other"
	ids    map[cradle.Role]string // token ids, tenant 1
	ca     *testCA
	fx     *factoryFixture // made by fixture
	events atomic.Int64    // calls of OnFactoryEvent
}

func newEnv(t *testing.T, configure ...func(*httpapi.Server)) *env {
	t.Helper()
	ctx := t.Context()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, clock: storetest.NewClock(storetest.Epoch), tokens: map[cradle.Role]string{}, ids: map[cradle.Role]string{}}
	e.db, err = sqlstore.Open(ctx, filepath.Join(t.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: key, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	tokens := sqlstore.NewTokenService(e.db)
	if e.tokens[cradle.RoleAdmin], err = tokens.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	for _, r := range []cradle.Role{cradle.RoleOperator, cradle.RoleFactory, cradle.RoleAuditor} {
		tok, secret, err := tokens.CreateToken(sys, cradle.TokenCreate{Name: string(r), Role: r})
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[r], e.ids[r] = secret, tok.ID
	}
	other, err := sqlstore.NewTenantService(e.db).CreateTenant(sys, "other")
	if err != nil {
		t.Fatal(err)
	}
	osys := cradle.NewContextWithActor(ctx, cradle.SystemActor(other.ID, "test"))
	if _, e.other, err = tokens.CreateToken(osys, cradle.TokenCreate{Name: "other-admin", Role: cradle.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	e.api = &httpapi.Server{
		Devices:      sqlstore.NewDeviceService(e.db),
		Tokens:       tokens,
		Audit:        sqlstore.NewAuditService(e.db),
		Certificates: sqlstore.NewCertificateService(e.db),
		Twins:        sqlstore.NewTwinService(e.db),
		Ready:        e.db.Ping,
		Registerer:   prometheus.NewRegistry(),
		MaxBodyBytes: 64 << 10,
	}
	for _, c := range append([]func(*httpapi.Server){withFactory(e), withClaims(e), withCommands(e), withDecommissions(e), withOTA(e), withProtocols(e), withRevocations(e)}, configure...) {
		c(e.api)
	}
	srv := httptest.NewServer(e.api.Handler())
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

// client returns an API client with the token of role r in tenant 1.
func (e *env) client(r cradle.Role) *httpapi.Client {
	return httpapi.NewClient(e.url, e.tokens[r], nil)
}

// response is what a raw request got.
type response struct {
	status int
	header http.Header
	body   []byte
}

// errorBody decodes an error response, failing the test unless it is
// exactly {"code","message"} with a message.
func (r response) errorBody(t *testing.T) cradle.Error {
	t.Helper()
	var e cradle.Error
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Code == "" || e.Message == "" {
		t.Fatalf("status %d with body %q: not a JSON error {code, message}: %v", r.status, r.body, err)
	}
	return e
}

// do sends a raw request with an optional token and body.
func (e *env) do(method, path, token, contentType string, body io.Reader) response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *env) doJSON(method, path, token, body string) response {
	e.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	return e.do(method, path, token, "application/json", r)
}

// createDevice registers a device in tenant 1 through the API.
func (e *env) createDevice(serial string, state cradle.State) {
	e.t.Helper()
	if _, err := e.client(cradle.RoleAdmin).CreateDevice(e.t.Context(), cradle.DeviceCreate{Serial: serial, Model: "gw-100", State: state}); err != nil {
		e.t.Fatalf("creating %s: %v", serial, err)
	}
}

// issueCert registers the device in tenant 1 if it is new and issues it
// a certificate from a test CA through the store, as enrollment would; it
// returns the certificate's serial.
func (e *env) issueCert(serial string) string {
	e.t.Helper()
	ctx := cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(1, "test"))
	if _, err := sqlstore.NewDeviceService(e.db).FindDeviceBySerial(ctx, serial); cradle.ErrorCode(err) == cradle.ENOTFOUND {
		if _, err := sqlstore.NewDeviceService(e.db).CreateDevice(ctx, cradle.DeviceCreate{Serial: serial, Model: "gw-100", State: cradle.StateProvisioned}); err != nil {
			e.t.Fatal(err)
		}
	}
	if e.ca == nil {
		e.ca = newTestCA(e.t)
	}
	c, err := sqlstore.NewCertificateService(e.db).IssueCertificate(ctx, cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID,
		States: []cradle.State{cradle.StateProvisioned, cradle.StateDeployed}, Issue: e.ca.issue(e.clock.Now(), 90*24*time.Hour)})
	if err != nil {
		e.t.Fatal(err)
	}
	return c.Serial
}

// roles are the token roles in the order of the matrix columns.
var roles = []cradle.Role{cradle.RoleAdmin, cradle.RoleOperator, cradle.RoleFactory, cradle.RoleAuditor}

// call is one request of the authorization matrix, built for a role (each
// role gets its own records, so that its call can succeed).
type call struct {
	method, pattern string
	// request returns the path and JSON body for role r.
	request func(e *env, r cradle.Role) (path, contentType, body string)
	// want is the status for admin, operator, factory, auditor.
	want [4]int
}

func jsonCall(path, body string) func(*env, cradle.Role) (string, string, string) {
	return func(*env, cradle.Role) (string, string, string) { return path, "application/json", body }
}

// matrix is the role × endpoint table, written out by hand from the
// permission table of ARCHITECTURE.md rather than computed from the code
// under test.
var matrix = []call{
	{"GET", "/api/v1/whoami", jsonCall("/api/v1/whoami", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/devices", jsonCall("/api/v1/devices?limit=5", ""), [4]int{200, 200, 200, 200}},
	{"POST", "/api/v1/devices", func(_ *env, r cradle.Role) (string, string, string) {
		return "/api/v1/devices", "application/json", fmt.Sprintf(`{"serial":"NEW-%s","model":"gw-100"}`, r)
	}, [4]int{201, 201, 201, 403}},
	{"GET", "/api/v1/devices/{serial}", jsonCall("/api/v1/devices/SN-READ", ""), [4]int{200, 200, 200, 200}},
	{"PATCH", "/api/v1/devices/{serial}", jsonCall("/api/v1/devices/SN-READ", `{"set_labels":{"site":"berlin"}}`), [4]int{200, 200, 403, 403}},
	{"GET", "/api/v1/devices/{serial}/transitions", jsonCall("/api/v1/devices/SN-READ/transitions", ""), [4]int{200, 200, 200, 200}},
	{"POST", "/api/v1/devices/{serial}/transitions", func(e *env, r cradle.Role) (string, string, string) {
		// A move the lifecycle table allows the role, so that only the
		// permission decides.
		from, to := map[cradle.Role][2]cradle.State{
			cradle.RoleAdmin:    {cradle.StateProvisioned, cradle.StateDeployed},
			cradle.RoleOperator: {cradle.StateProvisioned, cradle.StateRMA},
			cradle.RoleFactory:  {cradle.StateFactory, cradle.StateProvisioned},
			cradle.RoleAuditor:  {cradle.StateProvisioned, cradle.StateRMA},
		}[r][0], map[cradle.Role]cradle.State{
			cradle.RoleAdmin: cradle.StateDeployed, cradle.RoleOperator: cradle.StateRMA,
			cradle.RoleFactory: cradle.StateProvisioned, cradle.RoleAuditor: cradle.StateRMA,
		}[r]
		serial := "MOVE-" + string(r)
		e.createDevice(serial, from)
		return "/api/v1/devices/" + serial + "/transitions", "application/json", fmt.Sprintf(`{"to":%q,"reason":"matrix"}`, to)
	}, [4]int{200, 200, 200, 403}},
	{"POST", "/api/v1/device-imports", func(_ *env, r cradle.Role) (string, string, string) {
		return "/api/v1/device-imports?format=csv", "text/csv", fmt.Sprintf("serial,model\nIMP-%s,gw-100\n", r)
	}, [4]int{200, 200, 200, 403}},
	{"GET", "/api/v1/audit", jsonCall("/api/v1/audit?limit=5", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/audit/verify", jsonCall("/api/v1/audit/verify", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/certificates", jsonCall("/api/v1/certificates?limit=5", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/certificates/{serial}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/certificates/" + e.issueCert("CERT-READ"), "", ""
	}, [4]int{200, 200, 403, 200}},
	{"POST", "/api/v1/certificates/{serial}/revoke", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/certificates/" + e.issueCert("CERT-"+string(r)) + "/revoke", "application/json", `{"reason":"keyCompromise"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/devices/{serial}/certificates/revoke", func(e *env, r cradle.Role) (string, string, string) {
		e.issueCert("DEVCERT-" + string(r))
		return "/api/v1/devices/DEVCERT-" + string(r) + "/certificates/revoke", "application/json", `{"reason":"cessationOfOperation"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/devices/{serial}/certificates", func(e *env, r cradle.Role) (string, string, string) {
		serial := "IDEV-" + string(r)
		e.createDevice(serial, cradle.StateFactory)
		if e.ca == nil {
			e.ca = newTestCA(e.t)
		}
		cert, err := e.ca.issue(e.clock.Now(), 24*time.Hour)(e.t.Context(), &cradle.Device{Serial: serial})
		if err != nil {
			e.t.Fatal(err)
		}
		body, _ := json.Marshal(httpapi.CertificateRecord{Kind: cradle.CertIDevID, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))})
		return "/api/v1/devices/" + serial + "/certificates", "application/json", string(body)
	}, [4]int{403, 403, 201, 403}},
	{"GET", "/api/v1/tokens", jsonCall("/api/v1/tokens", ""), [4]int{200, 403, 403, 200}},
	{"POST", "/api/v1/tokens", jsonCall("/api/v1/tokens", `{"name":"ci","role":"auditor"}`), [4]int{201, 403, 403, 403}},
	{"DELETE", "/api/v1/tokens/{id}", func(e *env, r cradle.Role) (string, string, string) {
		// Each role tries to revoke a fresh token of its own tenant.
		tok, _, err := e.client(cradle.RoleAdmin).CreateToken(e.t.Context(), cradle.TokenCreate{Name: "victim-" + string(r), Role: cradle.RoleAuditor})
		if err != nil {
			e.t.Fatal(err)
		}
		return "/api/v1/tokens/" + tok.ID, "", ""
	}, [4]int{204, 403, 403, 403}},
}

// TestAuthorizationMatrix sends every route of the API with a token of
// every role, with no token and with a bad one, and checks the status,
// that a refusal is a JSON error, that it changed nothing, and that it was
// audited.
func TestAuthorizationMatrix(t *testing.T) {
	e := newEnv(t)
	e.createDevice("SN-READ", cradle.StateFactory)

	// Every route that needs a token has a row; a new route without one
	// fails here.
	rows := append(append(append(slices.Clip(matrix), factoryMatrix...), claimMatrix...), commandMatrix...)
	rows = append(rows, twinMatrix...)
	rows = append(rows, otaMatrix...)
	rows = append(rows, protocolMatrix...)
	rows = append(rows, revocationMatrix...)
	rows = append(rows, decommissionMatrix...)
	covered := map[string]bool{}
	for _, c := range rows {
		covered[c.method+" "+c.pattern] = true
	}
	for _, r := range e.api.Routes() {
		if !r.Public && !covered[r.Method+" "+r.Pattern] {
			t.Errorf("route %s %s has no row in the authorization matrix", r.Method, r.Pattern)
		}
	}

	for _, c := range rows {
		for i, role := range roles {
			t.Run(fmt.Sprintf("%s %s as %s", c.method, c.pattern, role), func(t *testing.T) {
				path, ct, body := c.request(e, role)
				before := auditCount(t, e)
				var rd io.Reader
				if body != "" {
					rd = strings.NewReader(body)
				}
				resp := e.do(c.method, path, e.tokens[role], ct, rd)
				if resp.status != c.want[i] {
					t.Fatalf("status %d, want %d; body %s", resp.status, c.want[i], resp.body)
				}
				if resp.status != http.StatusForbidden {
					return
				}
				if got := resp.errorBody(t); got.Code != cradle.EFORBIDDEN || !strings.Contains(got.Message, "role "+string(role)) {
					t.Errorf("403 body %+v; want code forbidden naming the role", got)
				}
				// The refusal is in the audit log, and nothing else is.
				entries := auditSince(t, e, before)
				if len(entries) != 1 || !strings.HasSuffix(entries[0].Action, ".refused") || !strings.Contains(entries[0].Actor, "("+string(role)+")") {
					t.Errorf("audit entries after a refusal: %+v; want one *.refused entry by the %s token", entries, role)
				}
			})
		}
		t.Run(c.method+" "+c.pattern+" without a token", func(t *testing.T) {
			path, ct, body := c.request(e, cradle.RoleAdmin+"-anon")
			for _, token := range []string{"", "cradle_0123456789abcdef_" + strings.Repeat("x", 43), "not-a-token"} {
				resp := e.do(c.method, path, token, ct, strings.NewReader(body))
				if resp.status != http.StatusUnauthorized {
					t.Fatalf("token %q: status %d, want 401; body %s", token, resp.status, resp.body)
				}
				if got := resp.errorBody(t); got.Code != cradle.EUNAUTHORIZED {
					t.Errorf("token %q: code %q, want unauthorized", token, got.Code)
				}
				if resp.header.Get("WWW-Authenticate") == "" {
					t.Errorf("token %q: a 401 without WWW-Authenticate", token)
				}
			}
		})
	}

	// The refused writes left nothing behind.
	for _, serial := range []string{"NEW-auditor", "IMP-auditor"} {
		if _, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(t.Context(), serial); cradle.ErrorCode(err) != cradle.ENOTFOUND {
			t.Errorf("device %s after a refused create: %v, want not found", serial, err)
		}
	}
	if d, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(t.Context(), "MOVE-auditor"); err != nil || d.State != cradle.StateProvisioned {
		t.Errorf("device after a refused transition: %+v, %v; want it still provisioned", d, err)
	}
	if d, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(t.Context(), "SN-READ"); err != nil || d.Labels["site"] != "berlin" {
		t.Errorf("SN-READ labels %v, %v", d.Labels, err)
	}
}

func auditCount(t *testing.T, e *env) int64 {
	t.Helper()
	entries := auditSince(t, e, 0)
	if len(entries) == 0 {
		return 0
	}
	return entries[len(entries)-1].Seq
}

// auditSince returns tenant 1's audit entries after seq, read with the
// admin token (which itself is not audited: reads change nothing).
func auditSince(t *testing.T, e *env, seq int64) []*cradle.AuditEntry {
	t.Helper()
	var all []*cradle.AuditEntry
	for {
		page, err := e.client(cradle.RoleAdmin).FindAuditEntries(t.Context(), cradle.AuditFilter{AfterSeq: seq, Limit: cradle.MaxPageSize})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if len(page) < cradle.MaxPageSize {
			return all
		}
		seq = page[len(page)-1].Seq
	}
}

// TestTenantIsolation checks that another tenant's records do not exist
// for a token: 404, never 403, and no trace in listings.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t)
	e.createDevice("SN-MINE", cradle.StateProvisioned)
	mine := e.client(cradle.RoleAdmin)
	other := httpapi.NewClient(e.url, e.other, nil)
	ctx := t.Context()

	notFound := func(what string, err error) {
		t.Helper()
		if cradle.ErrorCode(err) != cradle.ENOTFOUND {
			t.Errorf("%s from the other tenant: %v, want not found", what, err)
		}
	}
	_, err := other.FindDeviceBySerial(ctx, "SN-MINE")
	notFound("get", err)
	_, err = other.UpdateDevice(ctx, "SN-MINE", cradle.DeviceUpdate{SetLabels: map[string]string{"x": "y"}})
	notFound("update", err)
	_, err = other.TransitionDevice(ctx, "SN-MINE", cradle.DeviceTransition{To: cradle.StateDeployed})
	notFound("transition", err)
	_, err = other.FindDeviceHistory(ctx, "SN-MINE")
	notFound("history", err)
	notFound("revoke", other.RevokeToken(ctx, e.ids[cradle.RoleOperator]))

	if list, _, err := other.FindDevices(ctx, cradle.DeviceFilter{}); err != nil || len(list) != 0 {
		t.Errorf("the other tenant lists %d devices (%v), want none", len(list), err)
	}
	if toks, err := other.FindTokens(ctx); err != nil || len(toks) != 1 || toks[0].Name != "other-admin" {
		t.Errorf("the other tenant's tokens: %v, %v; want only its own", toks, err)
	}
	entries, err := other.FindAuditEntries(ctx, cradle.AuditFilter{Limit: cradle.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range entries {
		if a.TenantID != 2 || strings.Contains(a.Subject, "SN-MINE") {
			t.Errorf("the other tenant sees audit entry %+v", a)
		}
	}

	// The same serial may exist in both tenants, independently.
	if _, err := other.CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-MINE", Model: "x-1"}); err != nil {
		t.Fatalf("the other tenant cannot register its own SN-MINE: %v", err)
	}
	if d, err := mine.FindDeviceBySerial(ctx, "SN-MINE"); err != nil || d.Model != "gw-100" || d.State != cradle.StateProvisioned {
		t.Errorf("tenant 1's SN-MINE is now %+v, %v", d, err)
	}
	// The refusals are in the other tenant's own audit log, not tenant 1's.
	v, err := mine.VerifyAudit(ctx)
	if err != nil || !v.OK {
		t.Errorf("tenant 1's audit chain: %+v, %v", v, err)
	}
}

// TestErrors sends bad requests and checks that each gets the right status
// and a message that says what was wrong, and that nothing was stored.
func TestErrors(t *testing.T) {
	e := newEnv(t)
	e.createDevice("SN-1", cradle.StateFactory)
	admin := e.tokens[cradle.RoleAdmin]
	big := `{"serial":"SN-BIG","model":"gw-100","labels":{"note":"` + strings.Repeat("x", 70<<10) + `"}}`
	for _, tc := range []struct {
		name, method, path, ct, body string
		status                       int
		code, message                string
	}{
		{"malformed JSON", "POST", "/api/v1/devices", "application/json", `{"serial":"SN-2",`, 400, "invalid", "invalid JSON"},
		{"unknown field", "POST", "/api/v1/devices", "application/json", `{"serial":"SN-2","model":"m","colour":"red"}`, 400, "invalid", `unknown field "colour"`},
		{"trailing data", "POST", "/api/v1/devices", "application/json", `{"serial":"SN-2","model":"m"} {}`, 400, "invalid", "unexpected data after the object"},
		{"wrong type", "POST", "/api/v1/devices", "application/json", `{"serial":2,"model":"m"}`, 400, "invalid", `field "serial" must be string`},
		{"empty body", "POST", "/api/v1/devices", "application/json", ``, 400, "invalid", "needs a JSON body"},
		{"not JSON", "POST", "/api/v1/devices", "text/plain", `serial=SN-2`, 400, "invalid", "Content-Type application/json"},
		{"oversize", "POST", "/api/v1/devices", "application/json", big, 413, "too_large", "larger than the limit of 65536 bytes"},
		{"invalid serial", "POST", "/api/v1/devices", "application/json", `{"serial":"SN 2","model":"m"}`, 400, "invalid", `invalid serial "SN 2"`},
		{"invalid MAC", "POST", "/api/v1/devices", "application/json", `{"serial":"SN-2","model":"m","macs":["zz"]}`, 400, "invalid", `invalid MAC address "zz"`},
		{"duplicate serial", "POST", "/api/v1/devices", "application/json", `{"serial":"SN-1","model":"m"}`, 409, "conflict", `"SN-1" already exists`},
		{"unknown state", "POST", "/api/v1/devices/SN-1/transitions", "application/json", `{"to":"lost"}`, 400, "invalid", `"lost"`},
		{"illegal transition", "POST", "/api/v1/devices/SN-1/transitions", "application/json", `{"to":"deployed"}`, 409, "conflict", "from factory to deployed"},
		{"unknown device", "GET", "/api/v1/devices/SN-404", "", "", 404, "not_found", `"SN-404"`},
		{"unknown query parameter", "GET", "/api/v1/devices?colour=red", "", "", 400, "invalid", `unknown query parameter "colour"`},
		{"parameter twice", "GET", "/api/v1/devices?state=factory&state=deployed", "", "", 400, "invalid", `"state" is given 2 times`},
		{"bad limit", "GET", "/api/v1/devices?limit=-1", "", "", 400, "invalid", "limit"},
		{"limit too large", "GET", "/api/v1/devices?limit=5000", "", "", 400, "invalid", "1000"},
		{"bad selector", "GET", "/api/v1/devices?selector=a%3D%3D%3Db", "", "", 400, "invalid", "label selector"},
		{"bad cursor", "GET", "/api/v1/devices?cursor=garbage", "", "", 400, "invalid", "cursor"},
		{"bad state filter", "GET", "/api/v1/devices?state=lost", "", "", 400, "invalid", `"lost"`},
		{"query on a route that takes none", "GET", "/api/v1/devices/SN-1?x=1", "", "", 400, "invalid", "takes none"},
		{"unknown route", "GET", "/api/v1/gadgets", "", "", 404, "not_found", "no route for GET /api/v1/gadgets"},
		{"import without a format", "POST", "/api/v1/device-imports", "application/octet-stream", "serial,model\n", 400, "invalid", "format=csv"},
		{"import with an unknown format", "POST", "/api/v1/device-imports?format=xml", "", "<x/>", 400, "invalid", `unknown import format "xml"`},
		{"revoke an unknown token", "DELETE", "/api/v1/tokens/tok_0000000000000000", "", "", 404, "not_found", "tok_0000000000000000"},
		{"token with an unknown role", "POST", "/api/v1/tokens", "application/json", `{"name":"x","role":"root"}`, 400, "invalid", `unknown role "root"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(tc.method, tc.path, admin, tc.ct, strings.NewReader(tc.body))
			if resp.status != tc.status {
				t.Fatalf("status %d, want %d; body %s", resp.status, tc.status, resp.body)
			}
			got := resp.errorBody(t)
			if got.Code != tc.code || !strings.Contains(got.Message, tc.message) {
				t.Errorf("error %+v; want code %s and a message containing %q", got, tc.code, tc.message)
			}
		})
	}
	// Nothing of the refused creates was stored.
	list, _, err := e.client(cradle.RoleAdmin).FindDevices(t.Context(), cradle.DeviceFilter{})
	if err != nil || len(list) != 1 {
		t.Errorf("devices after bad requests: %d (%v), want only SN-1", len(list), err)
	}

	t.Run("method not allowed", func(t *testing.T) {
		resp := e.do("PUT", "/api/v1/devices/SN-1", admin, "application/json", strings.NewReader(`{}`))
		if resp.status != http.StatusMethodNotAllowed || resp.header.Get("Allow") != "GET, HEAD, PATCH" {
			t.Errorf("status %d, Allow %q; want 405 and GET, HEAD, PATCH", resp.status, resp.header.Get("Allow"))
		}
		if got := resp.errorBody(t); got.Code != cradle.EINVALID || !strings.Contains(got.Message, "method PUT is not allowed") {
			t.Errorf("error %+v", got)
		}
	})

	t.Run("expired and revoked tokens", func(t *testing.T) {
		c := e.client(cradle.RoleAdmin)
		exp := storetest.Epoch.Add(time.Hour)
		_, soon, err := c.CreateToken(t.Context(), cradle.TokenCreate{Name: "soon", Role: cradle.RoleOperator, ExpiresAt: &exp})
		if err != nil {
			t.Fatal(err)
		}
		tok, revoked, err := c.CreateToken(t.Context(), cradle.TokenCreate{Name: "gone", Role: cradle.RoleOperator})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.RevokeToken(t.Context(), tok.ID); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(2 * time.Hour)
		for token, want := range map[string]string{soon: "expired at", revoked: "was revoked at"} {
			resp := e.do("GET", "/api/v1/devices", token, "", nil)
			if resp.status != 401 {
				t.Fatalf("status %d, want 401", resp.status)
			}
			if got := resp.errorBody(t); !strings.Contains(got.Message, want) {
				t.Errorf("message %q, want one containing %q", got.Message, want)
			}
		}
		// DELETE is idempotent: revoking again succeeds and changes nothing.
		before := auditCount(t, e)
		if err := c.RevokeToken(t.Context(), tok.ID); err != nil {
			t.Errorf("revoking twice: %v", err)
		}
		if after := auditCount(t, e); after != before {
			t.Errorf("revoking twice wrote %d audit entries", after-before)
		}
	})
}

// TestImport checks the import route end to end: a committed import, a
// rejected one that stores nothing and reports every bad row in line
// order, and an oversize one.
func TestImport(t *testing.T) {
	e := newEnv(t, func(s *httpapi.Server) { s.MaxImportBytes = 1 << 20 })
	e.createDevice("SN-0003", cradle.StateFactory)
	admin := e.tokens[cradle.RoleAdmin]

	resp := e.do("POST", "/api/v1/device-imports", admin, "application/jsonl",
		strings.NewReader(`{"serial":"SN-0001","model":"gw-100","labels":{"site":"berlin"}}`+"\n"+`{"serial":"SN-0002","model":"gw-100","macs":["02-00-5E-10-00-01"]}`+"\n"))
	if resp.status != 200 {
		t.Fatalf("import: %d %s", resp.status, resp.body)
	}
	var rep cradle.ImportReport
	if err := json.Unmarshal(resp.body, &rep); err != nil || !rep.Committed || rep.Accepted != 2 {
		t.Fatalf("report %s (%v)", resp.body, err)
	}
	d, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(t.Context(), "SN-0002")
	if err != nil || !slices.Equal(d.MACs, []string{"02:00:5e:10:00:01"}) {
		t.Errorf("imported device %+v, %v", d, err)
	}

	csv := "serial,model,macs\nSN-0010,gw-100,\nSN-0003,gw-100,\nbad serial,gw-100,\nSN-0011,gw-100,zz\nSN-0010,gw-100,\n"
	rp, err := e.client(cradle.RoleOperator).ImportDevices(t.Context(), cradle.ImportCSV, strings.NewReader(csv))
	if err != nil {
		t.Fatalf("a rejected import returned an error: %v", err)
	}
	want := &cradle.ImportReport{Committed: false, Accepted: 1, RejectedCount: 4, Rejected: []cradle.ImportError{
		{Line: 3, Serial: "SN-0003"}, {Line: 4, Serial: "bad serial"}, {Line: 5, Serial: "SN-0011"}, {Line: 6, Serial: "SN-0010"},
	}}
	if diff := cmp.Diff(want, rp, cmp.Transformer("noReason", func(e cradle.ImportError) cradle.ImportError { e.Reason = ""; return e })); diff != "" {
		t.Errorf("rejected import report (-want +got):\n%s", diff)
	}
	for _, r := range rp.Rejected {
		if r.Reason == "" {
			t.Errorf("line %d rejected without a reason", r.Line)
		}
	}
	if _, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(t.Context(), "SN-0010"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("a row of a rejected import was stored: %v", err)
	}

	var buf bytes.Buffer
	buf.WriteString("serial,model\n")
	for i := 0; buf.Len() <= 1<<20; i++ {
		fmt.Fprintf(&buf, "BIG-%07d,gw-100\n", i)
	}
	// Sent chunked, so that the limit is found while streaming, not from
	// the Content-Length.
	resp = e.do("POST", "/api/v1/device-imports?format=csv", admin, "", io.MultiReader(&buf))
	if resp.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversize import: %d %s", resp.status, resp.body)
	}
	if got := resp.errorBody(t); got.Code != cradle.ETOOLARGE || !strings.Contains(got.Message, "1048576") {
		t.Errorf("oversize import: %+v", got)
	}
	if _, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(t.Context(), "BIG-0000000"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("a row of an oversize import was stored: %v", err)
	}
}

// TestClientRoundTrip drives every client method against the server.
func TestClientRoundTrip(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	c := e.client(cradle.RoleAdmin)

	who, err := c.WhoAmI(ctx)
	if err != nil || who.TenantID != 1 || who.Role != cradle.RoleAdmin || who.Kind != "token" || !strings.HasPrefix(who.ID, "tok_") || who.Actor != "token:"+who.ID+"(admin)" {
		t.Fatalf("whoami: %+v, %v", who, err)
	}
	d, err := c.CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-1", Model: "gw-100", Labels: map[string]string{"site": "berlin", "tier": "edge"}})
	if err != nil || d.State != cradle.StateFactory {
		t.Fatalf("create: %+v, %v", d, err)
	}
	for i := 2; i <= 5; i++ {
		if _, err := c.CreateDevice(ctx, cradle.DeviceCreate{Serial: fmt.Sprintf("SN-%d", i), Model: "gw-200", Labels: map[string]string{"site": "paris"}}); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := cradle.ParseLabelSelector("site in (berlin,rome),tier")
	if err != nil {
		t.Fatal(err)
	}
	if list, next, err := c.FindDevices(ctx, cradle.DeviceFilter{Selector: sel}); err != nil || len(list) != 1 || list[0].Serial != "SN-1" || next != "" {
		t.Errorf("selector: %v, %q, %v", list, next, err)
	}
	model, prefix := "gw-200", "SN-"
	var serials []string
	f := cradle.DeviceFilter{Model: &model, SerialPrefix: &prefix, Limit: 3}
	for {
		page, next, err := c.FindDevices(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page {
			serials = append(serials, d.Serial)
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if diff := cmp.Diff([]string{"SN-2", "SN-3", "SN-4", "SN-5"}, serials); diff != "" {
		t.Errorf("paged listing (-want +got):\n%s", diff)
	}
	if d, err = c.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{SetLabels: map[string]string{"tier": "core"}, RemoveLabels: []string{"site"}}); err != nil || !cmp.Equal(d.Labels, map[string]string{"tier": "core"}) {
		t.Errorf("update: %+v, %v", d, err)
	}
	if d, err = c.TransitionDevice(ctx, "SN-1", cradle.DeviceTransition{To: cradle.StateProvisioned, Reason: "line 3"}); err != nil || d.State != cradle.StateProvisioned {
		t.Fatalf("transition: %+v, %v", d, err)
	}
	_, err = c.TransitionDevice(ctx, "SN-1", cradle.DeviceTransition{To: cradle.StateFactory})
	if want := cradle.CheckTransition("SN-1", cradle.StateProvisioned, cradle.StateFactory, cradle.RoleAdmin); cradle.ErrorCode(err) != cradle.ECONFLICT || cradle.ErrorMessage(err) != cradle.ErrorMessage(want) {
		t.Errorf("illegal transition: %v, want %v", err, want)
	}
	st := cradle.StateProvisioned
	if list, _, err := c.FindDevices(ctx, cradle.DeviceFilter{State: &st}); err != nil || len(list) != 1 {
		t.Errorf("state filter: %v, %v", list, err)
	}
	h, err := c.FindDeviceHistory(ctx, "SN-1")
	if err != nil || len(h) != 2 || h[0].To != cradle.StateFactory || h[1].From != cradle.StateFactory || h[1].To != cradle.StateProvisioned || h[1].Reason != "line 3" {
		t.Errorf("history: %+v, %v", h, err)
	}

	action := "device.transition"
	entries, err := c.FindAuditEntries(ctx, cradle.AuditFilter{Action: &action})
	if err != nil || len(entries) != 1 || entries[0].Subject != "device:SN-1" {
		t.Errorf("audit by action: %+v, %v", entries, err)
	}
	refused := "device.transition.refused"
	if entries, err := c.FindAuditEntries(ctx, cradle.AuditFilter{Action: &refused}); err != nil || len(entries) != 1 {
		t.Errorf("the refused transition is not audited: %+v, %v", entries, err)
	}
	v, err := c.VerifyAudit(ctx)
	if err != nil || !v.OK || v.TenantID != 1 || v.Checkpoint == nil || v.HeadSeq != v.Entries {
		t.Errorf("verify: %+v, %v", v, err)
	}

	tok, secret, err := c.CreateToken(ctx, cradle.TokenCreate{Name: "reader", Role: cradle.RoleAuditor})
	if err != nil || !strings.HasPrefix(secret, "cradle_") {
		t.Fatalf("create token: %+v, %v", tok, err)
	}
	toks, err := c.FindTokens(ctx)
	if err != nil || !slices.ContainsFunc(toks, func(x *cradle.Token) bool { return x.ID == tok.ID && x.Role == cradle.RoleAuditor }) {
		t.Errorf("tokens: %v, %v", toks, err)
	}
	reader := httpapi.NewClient(e.url, secret, nil)
	if _, err := reader.CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-9", Model: "m"}); cradle.ErrorCode(err) != cradle.EFORBIDDEN {
		t.Errorf("auditor create: %v, want forbidden", err)
	}
	if err := c.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	// Revocation on this replica takes effect at once.
	if _, err := reader.WhoAmI(ctx); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("revoked token: %v, want unauthorized", err)
	}

	// A server that is not there: one clear sentence naming it.
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	_, err = httpapi.NewClient(down.URL, "x", nil).WhoAmI(ctx)
	if err == nil || !strings.HasPrefix(err.Error(), "cannot reach the Cradle server at "+down.URL+" (") || strings.Count(err.Error(), down.URL) != 1 {
		t.Errorf("a server that is down: %v", err)
	}

	// An answer that is not one of ours still becomes a *cradle.Error.
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
	}))
	defer proxy.Close()
	_, err = httpapi.NewClient(proxy.URL, "x", nil).WhoAmI(ctx)
	if cradle.ErrorCode(err) != cradle.EINTERNAL || !strings.Contains(cradle.ErrorMessage(err), "504 Gateway Timeout: upstream timed out") {
		t.Errorf("a proxy's error page: %v", err)
	}
}

// TestOperations checks /healthz, /readyz (and draining), /metrics and the
// document route, none of which need a token.
func TestOperations(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/healthz", "/readyz", "/api/v1/openapi.json"} {
		if resp := e.do("GET", p, "", "", nil); resp.status != 200 || !json.Valid(resp.body) {
			t.Errorf("GET %s: %d %s", p, resp.status, resp.body)
		}
	}
	e.do("GET", "/api/v1/devices", e.tokens[cradle.RoleAuditor], "", nil)
	resp := e.do("GET", "/metrics", "", "", nil)
	for _, want := range []string{
		`cradle_http_requests_total{method="GET",route="/api/v1/devices",status="2xx"} 1`,
		`cradle_http_request_duration_seconds_bucket{method="GET",route="/api/v1/devices",le="+Inf"} 1`,
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(string(resp.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	e.api.SetDraining(true)
	resp = e.do("GET", "/readyz", "", "", nil)
	if resp.status != 503 || resp.errorBody(t).Code != cradle.EUNAVAILABLE {
		t.Errorf("readyz while draining: %d %s", resp.status, resp.body)
	}
	// Requests are still served while draining.
	if resp := e.do("GET", "/api/v1/whoami", e.tokens[cradle.RoleAuditor], "", nil); resp.status != 200 {
		t.Errorf("whoami while draining: %d", resp.status)
	}
	e.api.SetDraining(false)
	e.db.Close()
	if resp := e.do("GET", "/readyz", "", "", nil); resp.status != 503 {
		t.Errorf("readyz with the store closed: %d %s", resp.status, resp.body)
	}
}

// FuzzListDevicesQuery sends arbitrary query strings to the device listing:
// the answer is a page or a 400 with a JSON error, never a 500.
func FuzzListDevicesQuery(f *testing.F) {
	for _, s := range []string{
		"", "limit=2", "state=deployed&model=gw-100", "selector=site%3Dberlin%2Ctier+in+(a,b)",
		"serial_prefix=SN-", "cursor=abc", "limit=99999999999999999999", "selector=%ff", "a=%zz", "state=factory&state=eol",
		"selector=!site,x!=y,z+notin+(1)", "cursor=" + strings.Repeat("A", 300), "protocol=mender", "protocol=MENDER&state=deployed",
	} {
		f.Add(s)
	}
	e := newHandlerEnv(f, 5)
	f.Fuzz(func(t *testing.T, q string) {
		req := httptest.NewRequest("GET", "/api/v1/devices", nil)
		req.URL.RawQuery = q
		req.Header.Set("Authorization", "Bearer "+e.token)
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			var page httpapi.DeviceList
			if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
				t.Fatalf("query %q: 200 with %q", q, rec.Body)
			}
		case 400:
			var e cradle.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != cradle.EINVALID || e.Message == "" {
				t.Fatalf("query %q: 400 with %q", q, rec.Body)
			}
		default:
			t.Fatalf("query %q: status %d %s", q, rec.Code, rec.Body)
		}
	})
}

// handlerEnv is the API's handler over a SQLite store holding n devices,
// with an admin token, for fuzzing and benchmarks.
type handlerEnv struct {
	handler http.Handler
	token   string
}

func newHandlerEnv(f testing.TB, n int) *handlerEnv {
	_, key, _ := ed25519.GenerateKey(nil)
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, filepath.Join(f.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: key})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	tokens := sqlstore.NewTokenService(db)
	secret, err := tokens.Bootstrap(ctx)
	if err != nil {
		f.Fatal(err)
	}
	devices := sqlstore.NewDeviceService(db)
	actx := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "fuzz"))
	var csv strings.Builder
	csv.WriteString("serial,model,macs,labels\n")
	for i := range n {
		fmt.Fprintf(&csv, "SN-%d,gw-100,02:00:5e:%02x:%02x:%02x,site=berlin;batch=%d\n", i, byte(i>>16), byte(i>>8), byte(i), i/1000)
	}
	if rep, err := devices.ImportDevices(actx, cradle.ImportCSV, strings.NewReader(csv.String())); err != nil || !rep.Committed {
		f.Fatalf("import: %+v, %v", rep, err)
	}
	api := &httpapi.Server{Devices: devices, Tokens: tokens, Audit: sqlstore.NewAuditService(db)}
	return &handlerEnv{handler: api.Handler(), token: secret}
}

// FuzzRequestBody sends arbitrary bodies to every route that takes JSON:
// the answer is a success or a JSON error of the client's making (4xx),
// never a 500, a dropped connection or a panic.
func FuzzRequestBody(f *testing.F) {
	targets := []struct{ method, path string }{
		{"POST", "/api/v1/devices"},
		{"PATCH", "/api/v1/devices/SN-1"},
		{"POST", "/api/v1/devices/SN-2/transitions"},
		{"POST", "/api/v1/tokens"},
		{"POST", "/api/v1/device-imports?format=jsonl"},
		{"POST", "/api/v1/device-imports?format=csv"},
	}
	for i, s := range []string{
		`{"serial":"SN-X","model":"gw-100","macs":["02:00:5e:10:00:01"],"labels":{"a":"b"}}`,
		`{"set_labels":{"site":"berlin"},"remove_labels":["tier"]}`,
		`{"to":"provisioned","reason":"line"}`,
		`{"name":"ci","role":"auditor","expires_at":"2030-01-01T00:00:00Z"}`,
		`{"serial":"SN-Y","model":"m"}` + "\n" + `{"serial":"SN-Y","model":"m"}`,
		"serial,model\nSN-Z,m\n\"bad",
		`{"serial":"SN-X","model":"gw-100"} x`, `[]`, `null`, `{"labels":{"":""}}`, "\xff", `{"expires_at":"yesterday"}`,
	} {
		f.Add(uint8(i), []byte(s))
	}
	e := newHandlerEnv(f, 5)
	f.Fuzz(func(t *testing.T, target uint8, body []byte) {
		tg := targets[int(target)%len(targets)]
		req := httptest.NewRequest(tg.method, tg.path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e.token)
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		if rec.Code >= 200 && rec.Code < 300 {
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s %q: %d with %q", tg.method, tg.path, body, rec.Code, rec.Body)
			}
			return
		}
		var got cradle.Error
		if rec.Code == http.StatusUnprocessableEntity {
			var rep cradle.ImportReport
			if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil || rep.Committed || rep.RejectedCount == 0 {
				t.Fatalf("%s %s %q: 422 with %q", tg.method, tg.path, body, rec.Body)
			}
			return
		}
		if rec.Code < 400 || rec.Code >= 500 || json.Unmarshal(rec.Body.Bytes(), &got) != nil || got.Message == "" {
			t.Fatalf("%s %s %q: %d with %q", tg.method, tg.path, body, rec.Code, rec.Body)
		}
	})
}

// FuzzAuthorization sends arbitrary Authorization headers: only the real
// token gets in; everything else is a 401 with a JSON error.
func FuzzAuthorization(f *testing.F) {
	e := newHandlerEnv(f, 1)
	for _, s := range []string{"", "Bearer ", "Bearer " + e.token, "bearer " + e.token, "Basic dXNlcjpwYXNz",
		"Bearer cradle_0123456789abcdef_" + strings.Repeat("A", 43), "Bearer " + e.token[:len(e.token)-1] + "B",
		"Bearer cradle_zz", "Bearer " + e.token + " ", "Bearer\t" + e.token} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		req := httptest.NewRequest("GET", "/api/v1/whoami", nil)
		req.Header["Authorization"] = []string{h}
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		ok := strings.TrimSpace(h[min(len(h), 7):]) == e.token && len(h) > 7 && strings.EqualFold(h[:7], "bearer ")
		switch {
		case ok && rec.Code != 200:
			t.Fatalf("header %q with the real token: %d %s", h, rec.Code, rec.Body)
		case !ok && rec.Code != 401:
			t.Fatalf("header %q: %d %s; want 401", h, rec.Code, rec.Body)
		case !ok:
			var got cradle.Error
			if json.Unmarshal(rec.Body.Bytes(), &got) != nil || got.Code != cradle.EUNAUTHORIZED {
				t.Fatalf("header %q: 401 with %q", h, rec.Body)
			}
		}
	})
}
