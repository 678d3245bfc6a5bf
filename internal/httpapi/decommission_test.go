package httpapi_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// withDecommissions serves the decommissioning routes, signing wipe
// commands with the shared test hierarchy's command signer.
func withDecommissions(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) {
		th := sharedHierarchy(e.t)
		s.Decommissions = sqlstore.NewDecommissionService(e.db, func(c command.Command) ([]byte, error) {
			return command.Sign(c, th.keys[pki.NameCommandSigner], []*x509.Certificate{th.h.CommandSigner})
		})
	}
}

// otherAdmin acts as an admin of tenant 1 that is not the admin token.
func (e *env) otherAdmin() context.Context {
	return cradle.NewContextWithActor(e.t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "test", ID: "other-admin"})
}

// awaitingApproval makes a deployed device whose decommissioning, asked
// by otherAdmin under the two-approver policy, awaits approval; the
// policy is back to one approver after.
func (e *env) awaitingApproval(serial string) {
	e.t.Helper()
	e.deployDevice(serial)
	claims := sqlstore.NewClaimService(e.db)
	if _, err := claims.UpdatePolicy(e.otherAdmin(), cradle.TenantPolicy{DecommissionApprovers: 2}); err != nil {
		e.t.Fatal(err)
	}
	defer claims.UpdatePolicy(e.otherAdmin(), cradle.TenantPolicy{})
	if _, err := e.api.Decommissions.RequestDecommission(e.otherAdmin(), serial, "retired"); err != nil {
		e.t.Fatal(err)
	}
}

// decommissionedFixture is a device decommissioned once per env.
func (e *env) decommissionedFixture() string {
	e.t.Helper()
	serial := "DEC-READ"
	if _, err := e.api.Decommissions.FindDecommission(e.otherAdmin(), serial); err == nil {
		return serial
	}
	e.deployDevice(serial)
	if _, err := e.api.Decommissions.RequestDecommission(e.otherAdmin(), serial, "retired"); err != nil {
		e.t.Fatal(err)
	}
	return serial
}

// decommissionMatrix: asking and approving need an admin (the lifecycle
// refuses operator and factory with conflict); reading the record needs
// device.read, the certificate audit.read too.
var decommissionMatrix = []call{
	{"POST", "/api/v1/devices/{serial}/decommission", func(e *env, r cradle.Role) (string, string, string) {
		serial := "DEC-" + string(r)
		e.deployDevice(serial)
		return "/api/v1/devices/" + serial + "/decommission", "application/json", `{"reason":"retired"}`
	}, [4]int{200, 409, 409, 403}},
	{"POST", "/api/v1/devices/{serial}/decommission/approve", func(e *env, r cradle.Role) (string, string, string) {
		serial := "DAP-" + string(r)
		e.awaitingApproval(serial)
		return "/api/v1/devices/" + serial + "/decommission/approve", "", ""
	}, [4]int{200, 409, 409, 403}},
	{"GET", "/api/v1/devices/{serial}/decommission", func(e *env, _ cradle.Role) (string, string, string) {
		return "/api/v1/devices/" + e.decommissionedFixture() + "/decommission", "", ""
	}, [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/devices/{serial}/decommission/certificate", func(e *env, _ cradle.Role) (string, string, string) {
		return "/api/v1/devices/" + e.decommissionedFixture() + "/decommission/certificate", "", ""
	}, [4]int{200, 200, 403, 200}},
}

func TestDecommission(t *testing.T) {
	e := newEnv(t)
	admin := e.client(cradle.RoleAdmin)
	ctx := t.Context()
	e.deployDevice("GW-1")
	e.deployDevice("GW-2")

	// One approver: executed at once.
	x, err := admin.RequestDecommission(ctx, "GW-1", "end of service")
	if err != nil {
		t.Fatal(err)
	}
	if x.State != cradle.DecommissionWiping || x.CommandID == "" || x.ExecutedAt == nil {
		t.Fatalf("record: %+v", x)
	}
	if d, _ := admin.FindDeviceBySerial(ctx, "GW-1"); d.State != cradle.StateEOL {
		t.Fatalf("device: %+v", d)
	}
	if got, err := e.client(cradle.RoleAuditor).FindDecommission(ctx, "GW-1"); err != nil || got.CommandID != x.CommandID {
		t.Fatalf("find: %+v, %v", got, err)
	}

	// Two approvers: 202, and the requester may not approve.
	if _, err := admin.UpdatePolicy(ctx, cradle.TenantPolicy{DecommissionApprovers: 2}); err != nil {
		t.Fatal(err)
	}
	// Two admins, each with a token of their own made before the request
	// (a token the requester's token made is not a second admin).
	_, first, err := admin.CreateToken(ctx, cradle.TokenCreate{Name: "first-admin", Role: cradle.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	_, second, err := admin.CreateToken(ctx, cradle.TokenCreate{Name: "second-admin", Role: cradle.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	firstAdmin := httpapi.NewClient(e.url, first, nil)
	resp := e.do("POST", "/api/v1/devices/GW-2/decommission", first, "application/json", strings.NewReader(`{"reason":"stolen"}`))
	if resp.status != http.StatusAccepted || !strings.Contains(string(resp.body), `"awaiting-approval"`) {
		t.Fatalf("two approvers: %d %s", resp.status, resp.body)
	}
	_, err = firstAdmin.ApproveDecommission(ctx, "GW-2")
	if cradle.ErrorCode(err) != cradle.EFORBIDDEN || !strings.Contains(cradle.ErrorMessage(err), "second admin") {
		t.Fatalf("approval by the requester: %v", err)
	}
	_, own, err := firstAdmin.CreateToken(ctx, cradle.TokenCreate{Name: "first-admin-again", Role: cradle.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	_, err = httpapi.NewClient(e.url, own, nil).ApproveDecommission(ctx, "GW-2")
	if cradle.ErrorCode(err) != cradle.EFORBIDDEN || !strings.Contains(cradle.ErrorMessage(err), "second admin") {
		t.Fatalf("approval by another token of the requester: %v", err)
	}
	if x, err := httpapi.NewClient(e.url, second, nil).ApproveDecommission(ctx, "GW-2"); err != nil || x.State != cradle.DecommissionWiping || x.ApprovedBy == "" {
		t.Fatalf("approval by a second admin: %+v, %v", x, err)
	}

	// The certificate: JSON signed with the audit key; a printable page.
	c, err := admin.DecommissionCertificate(ctx, "GW-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(e.db.AuditPublicKey()); err != nil {
		t.Fatalf("certificate over HTTP: %v", err)
	}
	page, err := admin.DecommissionCertificatePage(ctx, "GW-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<!DOCTYPE html>", "GW-1", "end of service", x.CommandID, "decommission.execute", c.KeyID} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the HTML certificate lacks %q", want)
		}
	}
	for _, asset := range []string{"src=", "href=", "@import", "url("} {
		if strings.Contains(string(page), asset) {
			t.Errorf("the HTML certificate refers to an external asset (%s)", asset)
		}
	}
	resp = e.do("GET", "/api/v1/devices/GW-1/decommission/certificate?format=html", e.tokens[cradle.RoleAdmin], "", nil)
	if ct := resp.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}

	// Refusals.
	tests := []struct {
		name, method, path, body string
		status                   int
		code, msg                string
	}{
		{"no reason", "POST", "/api/v1/devices/GW-3/decommission", `{}`, 400, cradle.EINVALID, "reason"},
		{"unknown field", "POST", "/api/v1/devices/GW-1/decommission", `{"reason":"x","force":true}`, 400, cradle.EINVALID, ""},
		{"again", "POST", "/api/v1/devices/GW-1/decommission", `{"reason":"again"}`, 409, cradle.ECONFLICT, "already"},
		{"unknown device", "POST", "/api/v1/devices/NOPE/decommission", `{"reason":"x"}`, 404, cradle.ENOTFOUND, ""},
		{"never asked", "GET", "/api/v1/devices/GW-3/decommission", "", 404, cradle.ENOTFOUND, "no decommissioning"},
		{"bad format", "GET", "/api/v1/devices/GW-1/decommission/certificate?format=pdf", "", 400, cradle.EINVALID, "format"},
		{"bare wipe", "POST", "/api/v1/devices/GW-3/commands", `{"kind":"wipe"}`, 400, cradle.EINVALID, "decommissioning"},
	}
	e.deployDevice("GW-3")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := ""
			if tt.body != "" {
				ct = "application/json"
			}
			resp := e.do(tt.method, tt.path, e.tokens[cradle.RoleAdmin], ct, strings.NewReader(tt.body))
			got := resp.errorBody(t)
			if resp.status != tt.status || got.Code != tt.code || !strings.Contains(got.Message, tt.msg) {
				t.Fatalf("%d %+v; want %d %s with %q", resp.status, got, tt.status, tt.code, tt.msg)
			}
		})
	}
}

// TestDecommissionNotConfigured: without a command signer the routes
// answer not_implemented.
func TestDecommissionNotConfigured(t *testing.T) {
	e := newEnv(t, func(s *httpapi.Server) { s.Decommissions = nil })
	resp := e.do("GET", "/api/v1/devices/GW-1/decommission", e.tokens[cradle.RoleAdmin], "", nil)
	if resp.status != http.StatusNotImplemented || resp.errorBody(t).Code != cradle.ENOTIMPLEMENTED {
		t.Fatalf("%d %s", resp.status, resp.body)
	}
}
