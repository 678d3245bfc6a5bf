package httpapi_test

import (
	"net/http"
	"testing"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
)

// withRevocations gives the server the store's revocation service.
func withRevocations(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) { s.Revocations = sqlstore.NewRevocationService(e.db) }
}

// revocationMatrix is the authorization matrix of the revocation routes:
// they need certificate.revoke (admin, operator).
var revocationMatrix = []call{
	{"POST", "/api/v1/devices/{serial}/revoke", func(e *env, r cradle.Role) (string, string, string) {
		e.issueCert("REV-" + string(r))
		return "/api/v1/devices/REV-" + string(r) + "/revoke", "application/json", `{"reason":"keyCompromise"}`
	}, [4]int{200, 200, 403, 403}},
	{"POST", "/api/v1/device-revocations", jsonCall("/api/v1/device-revocations", `{"selector":"fleet=none","reason":"keyCompromise"}`), [4]int{200, 200, 403, 403}},
}

// TestRevocationOpenAPISchemas holds the schemas of the device revocation
// routes equal to their Go types.
func TestRevocationOpenAPISchemas(t *testing.T) {
	doc := loadDoc(t)
	checkSchemas(t, doc, map[string]any{
		"DeviceRevocation": cradle.DeviceRevocation{}, "BulkRevocation": cradle.BulkRevocation{},
		"BulkRevocationRequest": httpapi.BulkRevocationRequest{}, "DecommissionedCredential": cradle.DecommissionedCredential{},
	}, nil)
}

// TestRevokeDeviceRoutes revokes one device and then a selector's devices
// through the API and the client.
func TestRevokeDeviceRoutes(t *testing.T) {
	e := newEnv(t)
	cert := e.issueCert("SN-1")
	tok := e.deviceToken("SN-1")
	cl := e.client(cradle.RoleOperator)

	r, err := cl.RevokeDevice(t.Context(), "SN-1", cradle.ReasonKeyCompromise)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range r.Revoked {
		got[c.Kind] = c.ID
	}
	if r.Serial != "SN-1" || r.Reason != cradle.ReasonKeyCompromise || got["certificate:ldevid"] != cert || got["token:target"] != tok.Token.ID || len(r.Revoked) != 2 {
		t.Errorf("revocation %+v", r)
	}
	c, err := cl.FindCertificateBySerial(t.Context(), cert)
	if err != nil || c.Status != cradle.CertRevoked {
		t.Errorf("certificate after the revocation: %+v, %v", c, err)
	}
	// Refusals: no reason, an unknown one, an unknown device, an auditor,
	// another tenant's admin (not found), a bad selector.
	for _, tc := range []struct {
		path, token, body string
		status            int
	}{
		{"/api/v1/devices/SN-1/revoke", e.tokens[cradle.RoleAdmin], `{}`, http.StatusBadRequest},
		{"/api/v1/devices/SN-1/revoke", e.tokens[cradle.RoleAdmin], `{"reason":"bored"}`, http.StatusBadRequest},
		{"/api/v1/devices/SN-404/revoke", e.tokens[cradle.RoleAdmin], `{"reason":"keyCompromise"}`, http.StatusNotFound},
		{"/api/v1/devices/SN-1/revoke", e.tokens[cradle.RoleAuditor], `{"reason":"keyCompromise"}`, http.StatusForbidden},
		{"/api/v1/devices/SN-1/revoke", e.other, `{"reason":"keyCompromise"}`, http.StatusNotFound},
		{"/api/v1/device-revocations", e.tokens[cradle.RoleAdmin], `{"selector":"","reason":"keyCompromise"}`, http.StatusBadRequest},
		{"/api/v1/device-revocations", e.tokens[cradle.RoleAdmin], `{"selector":"a=b","reason":"keyCompromise","extra":1}`, http.StatusBadRequest},
	} {
		if resp := e.doJSON("POST", tc.path, tc.token, tc.body); resp.status != tc.status {
			t.Errorf("POST %s %s: %d %s, want %d", tc.path, tc.body, resp.status, resp.body, tc.status)
		} else {
			resp.errorBody(t)
		}
	}

	for _, s := range []string{"SN-2", "SN-3"} {
		e.issueCert(s)
		if _, err := cl.UpdateDevice(t.Context(), s, cradle.DeviceUpdate{SetLabels: map[string]string{"batch": "B-7"}}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := cl.RevokeDevices(t.Context(), "batch in (B-7)", cradle.ReasonCACompromise)
	if err != nil {
		t.Fatal(err)
	}
	if b.Selector != "batch in (B-7)" || len(b.Devices) != 2 || b.Devices[0] != "SN-2" || b.Certificates != 2 || b.Tokens != 0 {
		t.Errorf("bulk revocation %+v", b)
	}
}

// TestRevokeWithoutService answers 501.
func TestRevokeWithoutService(t *testing.T) {
	e := newEnv(t, func(s *httpapi.Server) { s.Revocations = nil })
	if resp := e.doJSON("POST", "/api/v1/devices/SN-1/revoke", e.tokens[cradle.RoleAdmin], `{"reason":"keyCompromise"}`); resp.status != http.StatusNotImplemented {
		t.Errorf("status %d, want 501", resp.status)
	}
}
