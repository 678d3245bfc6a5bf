package httpapi_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
)

// TestProtocolOpenAPISchemas holds the schemas of the Mender and hawkBit
// operator routes equal to their Go types.
func TestProtocolOpenAPISchemas(t *testing.T) {
	doc := loadDoc(t)
	types := map[string]any{
		"MenderAuthSet": cradle.MenderAuthSet{}, "MenderAuthSetList": httpapi.MenderAuthSetList{},
		"MenderAccept": cradle.MenderAccept{}, "MenderPreauth": cradle.MenderPreauth{},
		"DeviceToken": cradle.DeviceToken{}, "DeviceTokenCreate": cradle.DeviceTokenCreate{},
		"IssuedToken": cradle.IssuedToken{}, "DeviceTokenList": httpapi.DeviceTokenList{},
		"TokensRevoked": httpapi.TokensRevoked{}, "DeviceAttribute": cradle.DeviceAttribute{},
		"AttributeList": httpapi.AttributeList{}, "UpdateLog": cradle.UpdateLog{}, "UpdateLogList": httpapi.UpdateLogList{},
	}
	checkSchemas(t, doc, types, func(name string) bool { return strings.HasSuffix(name, "Create") })
}

// withProtocols gives the server the store's protocol service.
func withProtocols(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) { s.Protocols = sqlstore.NewProtocolService(e.db) }
}

// menderKey is a device's Ed25519 key as a Mender auth request carries it.
type menderKey struct {
	pem, fingerprint string
}

func newMenderKey(t *testing.T) menderKey {
	t.Helper()
	_, canon, fp, err := cradle.ParseDevicePublicKey(newKeyPEM(t))
	if err != nil {
		t.Fatal(err)
	}
	return menderKey{pem: canon, fingerprint: fp}
}

// menderAuth sends an auth request of identity idData with key k through
// the store, as the Mender device API does once it has checked the
// signature, in tenant 1.
func menderAuth(t *testing.T, svc cradle.ProtocolService, idData string, k menderKey) (*cradle.IssuedToken, *cradle.Device, error) {
	t.Helper()
	canon, mac, err := cradle.CanonicalMenderIDData(idData)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cradle.NewContextWithActor(t.Context(), cradle.SystemActor(1, "mender"))
	return svc.MenderAuthenticate(ctx, cradle.MenderAuthRequest{IDData: canon, PublicKey: k.pem, KeyFingerprint: k.fingerprint, MAC: mac}, time.Hour)
}

// pendingSet makes a pending auth set in tenant 1 (a device that asked to
// be admitted with an identity nobody knows) and returns its id.
func (e *env) pendingSet(tag string) string {
	e.t.Helper()
	svc := e.api.Protocols
	if _, _, err := menderAuth(e.t, svc, fmt.Sprintf(`{"mac":"02:00:00:00:ff:01","tag":%q}`, tag), newMenderKey(e.t)); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		e.t.Fatalf("a first auth request of an unknown identity: %v, want unauthorized (pending)", err)
	}
	ctx := cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(1, "test"))
	st := cradle.MenderPending
	sets, err := svc.FindMenderAuthSets(ctx, cradle.MenderAuthFilter{Status: &st, Limit: cradle.MaxPageSize})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range sets {
		if strings.Contains(s.IDData, fmt.Sprintf(`"tag":%q`, tag)) {
			return s.ID
		}
	}
	e.t.Fatalf("no pending set with tag %s among %d", tag, len(sets))
	return ""
}

// deviceToken makes a target token of a deployed device in tenant 1.
func (e *env) deviceToken(serial string) *cradle.IssuedToken {
	e.t.Helper()
	if _, err := e.client(cradle.RoleAdmin).FindDeviceBySerial(e.t.Context(), serial); cradle.ErrorCode(err) == cradle.ENOTFOUND {
		e.deployDevice(serial)
	}
	it, err := e.client(cradle.RoleAdmin).CreateDeviceToken(e.t.Context(), cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial})
	if err != nil {
		e.t.Fatal(err)
	}
	return it
}

// protocolMatrix is the authorization matrix of the Mender and hawkBit
// operator routes: auth sets are device records (device.read to see,
// device.transition to decide, which the factory has as well); device
// tokens are tokens (token.read, token.write: admins; auditors read).
var protocolMatrix = []call{
	{"GET", "/api/v1/mender/auth-sets", jsonCall("/api/v1/mender/auth-sets?status=pending&limit=5", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/mender/auth-sets/{id}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/mender/auth-sets/" + e.pendingSet("get-"+string(r)), "", ""
	}, [4]int{200, 200, 200, 200}},
	{"POST", "/api/v1/mender/auth-sets/{id}/accept", func(e *env, r cradle.Role) (string, string, string) {
		serial := "MA-" + string(r)
		e.createDevice(serial, cradle.StateProvisioned)
		return "/api/v1/mender/auth-sets/" + e.pendingSet("acc-"+string(r)) + "/accept", "application/json", fmt.Sprintf(`{"serial":%q}`, serial)
	}, [4]int{200, 200, 200, 403}},
	{"POST", "/api/v1/mender/auth-sets/{id}/reject", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/mender/auth-sets/" + e.pendingSet("rej-"+string(r)) + "/reject", "application/json", `{"reason":"matrix"}`
	}, [4]int{200, 200, 200, 403}},
	{"POST", "/api/v1/mender/preauthorizations", func(e *env, r cradle.Role) (string, string, string) {
		serial := "PA-" + string(r)
		e.createDevice(serial, cradle.StateProvisioned)
		body, _ := json.Marshal(cradle.MenderPreauth{Serial: serial, IDData: fmt.Sprintf(`{"serial":%q}`, serial), PublicKey: newMenderKey(e.t).pem})
		return "/api/v1/mender/preauthorizations", "application/json", string(body)
	}, [4]int{201, 201, 201, 403}},
	{"GET", "/api/v1/device-tokens", jsonCall("/api/v1/device-tokens", ""), [4]int{200, 403, 403, 200}},
	{"POST", "/api/v1/device-tokens", func(e *env, r cradle.Role) (string, string, string) {
		serial := "TK-" + string(r)
		e.deployDevice(serial)
		return "/api/v1/device-tokens", "application/json", fmt.Sprintf(`{"kind":"target","serial":%q}`, serial)
	}, [4]int{201, 403, 403, 403}},
	{"DELETE", "/api/v1/device-tokens/{id}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/device-tokens/" + e.deviceToken("TD-"+string(r)).Token.ID, "", ""
	}, [4]int{204, 403, 403, 403}},
	{"POST", "/api/v1/devices/{serial}/tokens/revoke", func(e *env, r cradle.Role) (string, string, string) {
		serial := "TR-" + string(r)
		e.deviceToken(serial)
		return "/api/v1/devices/" + serial + "/tokens/revoke", "", ""
	}, [4]int{200, 403, 403, 403}},
	{"GET", "/api/v1/devices/{serial}/attributes", jsonCall("/api/v1/devices/SN-READ/attributes", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/devices/{serial}/update-logs", jsonCall("/api/v1/devices/SN-READ/update-logs", ""), [4]int{200, 200, 200, 200}},
}

// TestMenderAuthSetRoutes drives the auth set routes through the Go
// client: a pending set listed, accepted for a new device (which is then
// admitted at its next request, as a Mender device), another rejected,
// one preauthorized; and the refusals, each a JSON error that changed
// nothing.
func TestMenderAuthSetRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	op := e.client(cradle.RoleOperator)

	key := newMenderKey(t)
	idData := `{"mac":"02:00:00:00:aa:01","cpu":"arm"}`
	if _, _, err := menderAuth(t, e.api.Protocols, idData, key); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Fatalf("first auth request: %v, want unauthorized", err)
	}
	pending := cradle.MenderPending
	sets, err := op.FindMenderAuthSets(ctx, cradle.MenderAuthFilter{Status: &pending})
	if err != nil || len(sets) != 1 {
		t.Fatalf("pending sets: %v, %v; want one", sets, err)
	}
	set := sets[0]
	if set.IDData != `{"cpu":"arm","mac":"02:00:00:00:aa:01"}` || set.PublicKey != key.pem || set.KeyFingerprint != key.fingerprint || set.DeviceSerial != "" {
		t.Errorf("pending set %+v", set)
	}
	if got, err := op.FindMenderAuthSet(ctx, set.ID); err != nil || got.ID != set.ID || got.Status != cradle.MenderPending {
		t.Errorf("get %s: %+v, %v", set.ID, got, err)
	}

	// Refusals: each a JSON error, nothing changed.
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"unknown status", "GET", "/api/v1/mender/auth-sets?status=waiting", "", 400, `unknown auth set status "waiting"`},
		{"unknown parameter", "GET", "/api/v1/mender/auth-sets?state=pending", "", 400, `unknown query parameter "state"`},
		{"bad limit", "GET", "/api/v1/mender/auth-sets?limit=-1", "", 400, "limit"},
		{"unknown set", "GET", "/api/v1/mender/auth-sets/mas_0000000000000000", "", 404, ""},
		{"unknown field", "POST", "/api/v1/mender/auth-sets/" + set.ID + "/accept", `{"serial":"MX-1","model":"gw-100","colour":"red"}`, 400, "colour"},
		{"no body", "POST", "/api/v1/mender/auth-sets/" + set.ID + "/accept", "", 400, "JSON body"},
		{"trailing data", "POST", "/api/v1/mender/auth-sets/" + set.ID + "/accept", `{"serial":"MX-1","model":"gw-100"} {}`, 400, ""},
		{"new device without a model", "POST", "/api/v1/mender/auth-sets/" + set.ID + "/accept", `{"serial":"MX-1"}`, 400, "model"},
		{"accept an unknown set", "POST", "/api/v1/mender/auth-sets/mas_0000000000000000/accept", `{"serial":"MX-1","model":"gw-100"}`, 404, ""},
		{"reject with an unknown field", "POST", "/api/v1/mender/auth-sets/" + set.ID + "/reject", `{"reason":"x","why":"y"}`, 400, "why"},
		{"preauthorize a bad key", "POST", "/api/v1/mender/preauthorizations", `{"serial":"SN-PRE","id_data":"{\"mac\":\"02:00:00:00:aa:09\"}","pubkey":"not a key"}`, 400, "PUBLIC KEY"},
		{"preauthorize bad identity", "POST", "/api/v1/mender/preauthorizations", fmt.Sprintf(`{"serial":"SN-PRE","id_data":"[1]","pubkey":%q}`, newMenderKey(t).pem), 400, "id_data"},
		{"preauthorize an unknown device", "POST", "/api/v1/mender/preauthorizations", fmt.Sprintf(`{"serial":"SN-NONE","id_data":"{\"a\":\"b\"}","pubkey":%q}`, newMenderKey(t).pem), 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "preauthorize a bad key" {
				e.createDevice("SN-PRE", cradle.StateProvisioned)
			}
			resp := e.doJSON(tc.method, tc.path, e.tokens[cradle.RoleOperator], tc.body)
			if resp.status != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.status, tc.status, resp.body)
			}
			if got := resp.errorBody(t); !strings.Contains(got.Message, tc.want) {
				t.Errorf("message %q, want it to contain %q", got.Message, tc.want)
			}
		})
	}
	if got, err := op.FindMenderAuthSet(ctx, set.ID); err != nil || got.Status != cradle.MenderPending {
		t.Fatalf("after the refusals: %+v, %v; want still pending", got, err)
	}
	if _, err := op.FindDeviceBySerial(ctx, "MX-1"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("a refused accept created the device: %v", err)
	}

	// Accept for a new device; its next request is admitted, as Mender.
	acc, err := op.AcceptMenderAuthSet(ctx, set.ID, cradle.MenderAccept{Serial: "MD-1", Model: "gw-100", HardwareRevision: "B"})
	if err != nil {
		t.Fatal(err)
	}
	if acc.Status != cradle.MenderAccepted || acc.DeviceSerial != "MD-1" || acc.DecidedBy == "" {
		t.Errorf("accepted set %+v", acc)
	}
	tok, dev, err := menderAuth(t, e.api.Protocols, idData, key)
	if err != nil || tok.Secret == "" || dev.Serial != "MD-1" {
		t.Fatalf("auth request after the accept: %+v, %+v, %v", tok, dev, err)
	}
	mender := cradle.ProtocolMender
	list, _, err := op.FindDevices(ctx, cradle.DeviceFilter{Protocol: &mender})
	if err != nil || len(list) != 1 || list[0].Serial != "MD-1" || list[0].Protocol != cradle.ProtocolMender || list[0].Model != "gw-100" || list[0].HardwareRevision != "B" {
		t.Errorf("devices with protocol mender: %+v, %v; want MD-1 alone", list, err)
	}
	if resp := e.doJSON("GET", "/api/v1/devices?protocol=carrier-pigeon", e.tokens[cradle.RoleOperator], ""); resp.status != 400 ||
		!strings.Contains(resp.errorBody(t).Message, `unknown protocol "carrier-pigeon"`) {
		t.Errorf("device list with an unknown protocol: %d %s", resp.status, resp.body)
	}
	if got, err := op.FindMenderAuthSets(ctx, cradle.MenderAuthFilter{Serial: "MD-1"}); err != nil || len(got) != 1 || got[0].ID != set.ID {
		t.Errorf("sets of MD-1: %+v, %v", got, err)
	}

	// Reject it: the session token ends and the next request is refused.
	rej, err := op.RejectMenderAuthSet(ctx, set.ID, "key leaked")
	if err != nil || rej.Status != cradle.MenderRejected || rej.Reason != "key leaked" {
		t.Fatalf("reject: %+v, %v", rej, err)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test"))
	if _, err := e.api.Protocols.AuthenticateDeviceToken(sys, tok.Secret); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("the session token after the reject: %v, want unauthorized", err)
	}
	if _, _, err := menderAuth(t, e.api.Protocols, idData, key); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("auth request after the reject: %v, want unauthorized", err)
	}

	// Preauthorize a device's key: its first request is admitted.
	e.createDevice("MD-2", cradle.StateProvisioned)
	key2 := newMenderKey(t)
	pre, err := op.PreauthorizeMender(ctx, cradle.MenderPreauth{Serial: "MD-2", IDData: `{ "serial" : "MD-2" }`, PublicKey: key2.pem})
	if err != nil || pre.Status != cradle.MenderPreauthorized || pre.DeviceSerial != "MD-2" || pre.IDData != `{"serial":"MD-2"}` {
		t.Fatalf("preauthorize: %+v, %v", pre, err)
	}
	if _, dev, err := menderAuth(t, e.api.Protocols, `{"serial":"MD-2"}`, key2); err != nil || dev.Serial != "MD-2" {
		t.Errorf("first request of a preauthorized device: %+v, %v", dev, err)
	}
	body, _ := json.Marshal(cradle.MenderPreauth{Serial: "MD-2", IDData: `{"serial":"MD-2"}`, PublicKey: key2.pem})
	if resp := e.doJSON("POST", "/api/v1/mender/preauthorizations", e.tokens[cradle.RoleOperator], string(body)); resp.status != http.StatusConflict {
		t.Errorf("preauthorizing a known pair: %d %s, want 409", resp.status, resp.body)
	}

	// Attributes and logs of a device: empty lists, not null; unknown
	// devices are 404.
	if attrs, err := op.FindDeviceAttributes(ctx, "MD-2"); err != nil || attrs == nil || len(attrs) != 0 {
		t.Errorf("attributes of MD-2: %#v, %v", attrs, err)
	}
	if logs, err := op.FindUpdateLogs(ctx, "MD-2", ""); err != nil || logs == nil || len(logs) != 0 {
		t.Errorf("update logs of MD-2: %#v, %v", logs, err)
	}
	if _, err := op.FindDeviceAttributes(ctx, "NOPE"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("attributes of an unknown device: %v", err)
	}
	if resp := e.doJSON("GET", "/api/v1/devices/MD-2/update-logs?attempt=1", e.tokens[cradle.RoleOperator], ""); resp.status != 400 {
		t.Errorf("update logs with an unknown parameter: %d %s", resp.status, resp.body)
	}

	// Another tenant sees none of it.
	other := httpapi.NewClient(e.url, e.other, nil)
	if _, err := other.FindMenderAuthSet(ctx, set.ID); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("the other tenant gets set %s: %v, want not found", set.ID, err)
	}
	if _, err := other.AcceptMenderAuthSet(ctx, set.ID, cradle.MenderAccept{Serial: "MD-9", Model: "gw-100"}); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("the other tenant accepts set %s: %v, want not found", set.ID, err)
	}
	if got, err := other.FindMenderAuthSets(ctx, cradle.MenderAuthFilter{}); err != nil || len(got) != 0 {
		t.Errorf("the other tenant lists %d sets (%v)", len(got), err)
	}
}

// TestDeviceTokenRoutes creates, lists and revokes target, gateway and
// Mender tenant tokens through the Go client, and checks each against the store's
// authentication of device tokens.
func TestDeviceTokenRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	admin := e.client(cradle.RoleAdmin)
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test"))
	e.deployDevice("HB-1")

	exp := e.clock.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	it, err := admin.CreateDeviceToken(ctx, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "HB-1", Name: "suricatta", ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if it.Secret == "" || !strings.HasPrefix(it.Secret, it.Token.ID+".") || it.Token.Kind != cradle.TokenHawkbitTarget || it.Token.DeviceSerial != "HB-1" ||
		it.Token.Name != "suricatta" || it.Token.ExpiresAt == nil || !it.Token.ExpiresAt.Equal(exp) {
		t.Errorf("issued token %+v", it)
	}
	auth, err := e.api.Protocols.AuthenticateDeviceToken(sys, it.Secret)
	if err != nil || auth.Device == nil || auth.Device.Serial != "HB-1" || auth.TenantID != 1 {
		t.Fatalf("authenticating the new token: %+v, %v", auth, err)
	}
	gw, err := admin.CreateDeviceToken(ctx, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, Name: "line-3"})
	if err != nil || gw.Token.DeviceSerial != "" || gw.Token.Kind != cradle.TokenGateway {
		t.Fatalf("gateway token: %+v, %v", gw, err)
	}
	tt, err := admin.CreateDeviceToken(ctx, cradle.DeviceTokenCreate{Kind: cradle.TokenMenderTenant, Name: "fleet"})
	if err != nil || tt.Token.DeviceSerial != "" || tt.Token.Kind != cradle.TokenMenderTenant {
		t.Fatalf("tenant token: %+v, %v", tt, err)
	}
	if auth, err := e.api.Protocols.AuthenticateDeviceToken(sys, tt.Secret); err != nil || auth.Token.Kind != cradle.TokenMenderTenant || auth.Device != nil {
		t.Fatalf("authenticating the tenant token: %+v, %v", auth, err)
	}

	// Listings never carry secrets.
	toks, err := admin.FindDeviceTokens(ctx, "HB-1")
	if err != nil || len(toks) != 1 || toks[0].ID != it.Token.ID {
		t.Errorf("tokens of HB-1: %+v, %v", toks, err)
	}
	if gws, err := e.client(cradle.RoleAuditor).FindDeviceTokens(ctx, ""); err != nil || len(gws) != 2 || gws[0].ID != tt.Token.ID || gws[1].ID != gw.Token.ID {
		t.Errorf("tenant-wide tokens: %+v, %v", gws, err)
	}
	resp := e.doJSON("GET", "/api/v1/device-tokens?serial=HB-1", e.tokens[cradle.RoleAdmin], "")
	if resp.status != 200 || strings.Contains(string(resp.body), it.Secret[len(it.Token.ID)+1:]) || strings.Contains(string(resp.body), "secret") {
		t.Errorf("the listing shows a secret: %s", resp.body)
	}

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"unknown kind", "POST", "/api/v1/device-tokens", `{"kind":"mender","serial":"HB-1"}`, 400, ""},
		{"tenant token of a device", "POST", "/api/v1/device-tokens", `{"kind":"tenant","serial":"HB-1"}`, 400, "tenant's"},
		{"unknown field", "POST", "/api/v1/device-tokens", `{"kind":"target","serial":"HB-1","secret":"mine"}`, 400, "secret"},
		{"unknown device", "POST", "/api/v1/device-tokens", `{"kind":"target","serial":"HB-NONE"}`, 404, ""},
		{"unknown parameter", "GET", "/api/v1/device-tokens?device=HB-1", "", 400, `unknown query parameter "device"`},
		{"unknown token", "DELETE", "/api/v1/device-tokens/dtk_0000000000000000", "", 404, ""},
		{"revoke-all with a body", "POST", "/api/v1/devices/HB-1/tokens/revoke", `{"all":true}`, 400, "all"},
		{"revoke-all of an unknown device", "POST", "/api/v1/devices/HB-NONE/tokens/revoke", "", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.doJSON(tc.method, tc.path, e.tokens[cradle.RoleAdmin], tc.body)
			if resp.status != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.status, tc.status, resp.body)
			}
			if got := resp.errorBody(t); !strings.Contains(got.Message, tc.want) {
				t.Errorf("message %q, want it to contain %q", got.Message, tc.want)
			}
		})
	}
	if toks, _ := admin.FindDeviceTokens(ctx, "HB-1"); len(toks) != 1 || toks[0].RevokedAt != nil {
		t.Errorf("after the refusals, HB-1's tokens: %+v", toks)
	}

	// Revoke one; twice is fine; then every live token of the device.
	if err := admin.RevokeDeviceToken(ctx, it.Token.ID); err != nil {
		t.Fatal(err)
	}
	if err := admin.RevokeDeviceToken(ctx, it.Token.ID); err != nil {
		t.Errorf("revoking twice: %v", err)
	}
	if _, err := e.api.Protocols.AuthenticateDeviceToken(sys, it.Secret); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("a revoked token authenticates: %v", err)
	}
	a, b := e.deviceToken("HB-1"), e.deviceToken("HB-1")
	n, err := admin.RevokeDeviceTokens(ctx, "HB-1")
	if err != nil || n != 2 {
		t.Errorf("revoking all of HB-1: %d, %v; want 2 (the revoked one not counted)", n, err)
	}
	for _, s := range []string{a.Secret, b.Secret} {
		if _, err := e.api.Protocols.AuthenticateDeviceToken(sys, s); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
			t.Errorf("a token after revoke-all authenticates: %v", err)
		}
	}
	if _, err := e.api.Protocols.AuthenticateDeviceToken(sys, gw.Secret); err != nil {
		t.Errorf("the gateway token after revoking HB-1's: %v", err)
	}

	other := httpapi.NewClient(e.url, e.other, nil)
	if err := other.RevokeDeviceToken(ctx, gw.Token.ID); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("the other tenant revokes a gateway token: %v, want not found", err)
	}
}

// TestProtocolRoutesWithoutService checks that a server without the
// protocol service answers its routes 501.
func TestProtocolRoutesWithoutService(t *testing.T) {
	e := newEnv(t, func(s *httpapi.Server) { s.Protocols = nil })
	for _, p := range []string{"/api/v1/mender/auth-sets", "/api/v1/device-tokens", "/api/v1/devices/X/attributes", "/api/v1/devices/X/update-logs"} {
		resp := e.doJSON("GET", p, e.tokens[cradle.RoleAdmin], "")
		if resp.status != http.StatusNotImplemented || resp.errorBody(t).Code != cradle.ENOTIMPLEMENTED {
			t.Errorf("GET %s: %d %s, want 501", p, resp.status, resp.body)
		}
	}
}

// FuzzProtocolRequests sends arbitrary query strings to the auth set and
// device token listings and arbitrary bodies to the accept, reject,
// preauthorize and token routes: the answer is a success or a JSON error
// of the client's making, never a 500.
func FuzzProtocolRequests(f *testing.F) {
	targets := []struct{ method, path string }{
		{"GET", "/api/v1/mender/auth-sets"},
		{"GET", "/api/v1/device-tokens"},
		{"GET", "/api/v1/devices/SN-1/update-logs"},
		{"POST", "/api/v1/mender/auth-sets/mas_0123456789abcdef/accept"},
		{"POST", "/api/v1/mender/auth-sets/mas_0123456789abcdef/reject"},
		{"POST", "/api/v1/mender/preauthorizations"},
		{"POST", "/api/v1/device-tokens"},
		{"POST", "/api/v1/devices/SN-1/tokens/revoke"},
	}
	for i, s := range []string{
		"status=pending&serial=SN-1&limit=5", "serial=SN-1", "rollout=ro_1",
		`{"serial":"SN-1","model":"gw-100"}`, `{"reason":"x"}`, `{"serial":"SN-1","id_data":"{\"mac\":\"02:00:00:00:00:01\"}","pubkey":"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"}`,
		`{"kind":"gateway","expires_at":"2030-01-01T00:00:00Z"}`, "", "status=%zz", `{"kind":"target","serial":"SN-1"} x`, "\xff", `null`,
	} {
		f.Add(uint8(i), s)
	}
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
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "fuzz"))
	if _, err := devices.CreateDevice(sys, cradle.DeviceCreate{Serial: "SN-1", Model: "gw-100", State: cradle.StateProvisioned}); err != nil {
		f.Fatal(err)
	}
	api := (&httpapi.Server{Devices: devices, Tokens: tokens, Audit: sqlstore.NewAuditService(db), Protocols: sqlstore.NewProtocolService(db)}).Handler()
	f.Fuzz(func(t *testing.T, target uint8, in string) {
		tg := targets[int(target)%len(targets)]
		req := httptest.NewRequest(tg.method, tg.path, strings.NewReader(in))
		if tg.method == "GET" {
			req = httptest.NewRequest(tg.method, tg.path, nil)
			req.URL.RawQuery = in
		}
		req.Header.Set("Authorization", "Bearer "+secret)
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		if rec.Code >= 200 && rec.Code < 300 {
			if rec.Code != http.StatusNoContent && !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s %q: %d with %q", tg.method, tg.path, in, rec.Code, rec.Body)
			}
			return
		}
		var got cradle.Error
		if rec.Code < 400 || rec.Code >= 500 || json.Unmarshal(rec.Body.Bytes(), &got) != nil || got.Message == "" {
			t.Fatalf("%s %s %q: %d with %q", tg.method, tg.path, in, rec.Code, rec.Body)
		}
	})
}
