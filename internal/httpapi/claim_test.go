package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// withClaims is the claims and telemetry part of every test server.
func withClaims(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) {
		s.Claims = sqlstore.NewClaimService(e.db)
		s.Telemetry = sqlstore.NewTelemetryService(e.db)
		s.Clock = e.clock
	}
}

// claimable provisions a unit of tenant 1 through a signed trace record
// that carries the hash of a fresh claim code, and returns its serial and
// code.
func (e *env) claimable() (string, string) {
	e.t.Helper()
	fx := e.fixture()
	u := fx.allocate(e.t)
	code, err := cradle.NewClaimCode()
	if err != nil {
		e.t.Fatal(err)
	}
	rec := fx.record(e.t, u, cradle.UnitProvisioned)
	rec.ClaimCodeHash = cradle.ClaimCodeHash(u.Serial, code)
	if _, _, err := fx.factory.RecordTrace(fx.line, rec, fx.sign(e.t, rec)); err != nil {
		e.t.Fatal(err)
	}
	return u.Serial, code
}

// claimMatrix are the claim, policy, telemetry and status rows of the
// authorization matrix: device.claim for admin and operator,
// policy.write for admin, device.read and telemetry.read for every role.
var claimMatrix = []call{
	{"POST", "/api/v1/devices/{serial}/claim", func(e *env, r cradle.Role) (string, string, string) {
		serial, code := e.claimable()
		return "/api/v1/devices/" + serial + "/claim", "application/json", `{"code":"` + code + `","site":"plant-` + string(r) + `"}`
	}, [4]int{200, 200, 403, 403}},
	{"GET", "/api/v1/policy", jsonCall("/api/v1/policy", ""), [4]int{200, 200, 200, 200}},
	{"PUT", "/api/v1/policy", jsonCall("/api/v1/policy", `{"quarantine_unclaimed":false}`), [4]int{200, 403, 403, 403}},
	{"GET", "/api/v1/devices/{serial}/telemetry", jsonCall("/api/v1/devices/SN-READ/telemetry?metric=health.cpu_pct", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/devices/{serial}/status", jsonCall("/api/v1/devices/SN-READ/status", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/device-status", jsonCall("/api/v1/device-status?limit=5", ""), [4]int{200, 200, 200, 200}},
}

// TestClaimSchemasMatchTypes holds this feature's schemas to their Go
// types, as TestOpenAPISchemasMatchTypes does for the others.
func TestClaimSchemasMatchTypes(t *testing.T) {
	doc := loadDoc(t)
	types := map[string]any{
		"TenantPolicy":       cradle.TenantPolicy{},
		"TelemetrySample":    cradle.TelemetrySample{},
		"TelemetryPoint":     cradle.TelemetryPoint{},
		"TelemetrySeries":    httpapi.TelemetrySeries{},
		"DeviceStatus":       cradle.DeviceStatus{},
		"DeviceStatusReport": httpapi.DeviceStatusReport{},
		"DeviceStatusList":   httpapi.DeviceStatusList{},
		"TraceRecord":        cradle.TraceRecord{},
		"DeviceClaim":        cradle.DeviceClaim{},
	}
	// DeviceClaim is an input: code is all it requires.
	checkSchemas(t, doc, types, func(name string) bool { return name == "DeviceClaim" })
}

func TestClaimRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	admin, operator := e.client(cradle.RoleAdmin), e.client(cradle.RoleOperator)

	if _, err := admin.UpdatePolicy(ctx, cradle.TenantPolicy{QuarantineUnclaimed: true}); err != nil {
		t.Fatal(err)
	}
	if p, err := operator.FindPolicy(ctx); err != nil || !p.QuarantineUnclaimed {
		t.Fatalf("FindPolicy = %+v, %v", p, err)
	}
	if r := e.doJSON("PUT", "/api/v1/policy", e.tokens[cradle.RoleAdmin], `{"quarantine":true}`); r.status != http.StatusBadRequest {
		t.Errorf("PUT /api/v1/policy with an unknown field: %d %s", r.status, r.body)
	}

	serial, code := e.claimable()
	// Enrollment under the policy quarantines it.
	dev := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: serial})
	if e.ca == nil {
		e.ca = newTestCA(t)
	}
	if _, err := sqlstore.NewCertificateService(e.db).IssueCertificate(dev, cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Deploy: true,
		States: []cradle.State{cradle.StateProvisioned}, Issue: e.ca.issue(e.clock.Now(), 24*time.Hour)}); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	quarantined, _, err := admin.FindDevices(ctx, cradle.DeviceFilter{Selector: must(cradle.ParseLabelSelector("quarantine=true"))})
	if err != nil || len(quarantined) != 1 || quarantined[0].Serial != serial {
		t.Fatalf("devices in quarantine: %v, %v", quarantined, err)
	}

	for _, tc := range []struct {
		name, body string
		status     int
		msg        string
	}{
		{"malformed code", `{"code":"12","site":"a"}`, 400, "has 2 symbols"},
		{"no site nor owner", `{"code":"` + code + `"}`, 400, "give a site, an owner or both"},
		{"unknown field", `{"code":"` + code + `","room":"a"}`, 400, "room"},
		{"wrong code", `{"code":"` + strings.Repeat("0", 11) + `","site":"a"}`, 403, "does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.doJSON("POST", "/api/v1/devices/"+serial+"/claim", e.tokens[cradle.RoleOperator], tc.body)
			if r.status != tc.status || !strings.Contains(r.errorBody(t).Message, tc.msg) {
				t.Errorf("status %d body %s; want %d with %q", r.status, r.body, tc.status, tc.msg)
			}
		})
	}
	d, err := operator.ClaimDevice(ctx, serial, cradle.DeviceClaim{Code: code, Site: "plant-7", Owner: "acme-ops"})
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if d.Labels["site"] != "plant-7" || d.Labels["owner"] != "acme-ops" || d.Labels["quarantine"] != "" {
		t.Errorf("claimed device labels %v", d.Labels)
	}
	_, err = operator.ClaimDevice(ctx, serial, cradle.DeviceClaim{Code: code, Site: "plant-8"})
	if cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("claim for another site: %v, want conflict", err)
	}
	entries := auditSince(t, e, 0)
	var actions []string
	for _, en := range entries {
		if strings.HasPrefix(en.Action, "device.claim") || en.Action == "device.quarantine" || en.Action == "policy.update" {
			actions = append(actions, en.Action)
		}
	}
	want := []string{"policy.update", "device.quarantine", "device.claim.refused", "device.claim.refused", "device.claim.refused", "device.claim", "device.claim.refused"}
	if diff := cmp.Diff(want, actions); diff != "" {
		t.Errorf("audited claim actions (-want +got):\n%s", diff)
	}
}

func TestTelemetryRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.createDevice("SN-T", cradle.StateProvisioned)
	e.createDevice("SN-QUIET", cradle.StateProvisioned)
	now := e.clock.Now()
	var pts []cradle.TelemetryPoint
	for i := range 12 {
		pts = append(pts, cradle.TelemetryPoint{Metric: "health.cpu_pct", Time: now.Add(time.Duration(i-12) * time.Minute), Value: float64(10 * (i % 3))})
	}
	pts = append(pts,
		cradle.TelemetryPoint{Metric: "battery.pct", Time: now.Add(-time.Minute), Value: 9},
		cradle.TelemetryPoint{Metric: "security.secure_boot", Time: now.Add(-time.Minute), Value: 0},
		cradle.TelemetryPoint{Metric: "security.attested", Time: now.Add(-time.Minute), Value: 1})
	dev := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: "SN-T"})
	if err := sqlstore.NewTelemetryService(e.db).RecordTelemetry(dev, "SN-T", pts); err != nil {
		t.Fatal(err)
	}
	c := e.client(cradle.RoleAuditor)

	raw, err := c.DeviceTelemetry(ctx, cradle.TelemetryQuery{Serial: "SN-T", Metric: "health.cpu_pct", From: now.Add(-time.Hour)})
	if err != nil || len(raw.Samples) != 12 || raw.Step != "" || raw.Samples[1].Avg != 10 {
		t.Fatalf("raw query: %+v, %v", raw, err)
	}
	buckets, err := c.DeviceTelemetry(ctx, cradle.TelemetryQuery{Serial: "SN-T", Metric: "health.cpu_pct", From: now.Add(-time.Hour), Step: 6 * time.Minute})
	if err != nil || buckets.Step != "6m0s" {
		t.Fatalf("bucketed query: %+v, %v", buckets, err)
	}
	var n int64
	for _, s := range buckets.Samples {
		n += s.Count
		if s.Min != 0 || s.Max != 20 {
			t.Errorf("bucket %+v: want min 0 max 20", s)
		}
	}
	if n != 12 || len(buckets.Samples) != 2 {
		t.Errorf("buckets %+v: want 2 holding 12 points", buckets.Samples)
	}

	st, err := c.DeviceStatus(ctx, "SN-T")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Status.Online || !st.Status.BatteryLow || !st.Status.Insecure || st.Status.CertExpiring || st.Status.Attested == nil || !*st.Status.Attested ||
		st.State != cradle.StateProvisioned || st.Latest["battery.pct"].Value != 9 {
		t.Errorf("status of SN-T: %+v", st)
	}
	e.clock.Add(10 * time.Minute)
	if st, err := c.DeviceStatus(ctx, "SN-T"); err != nil || st.Status.Online || !strings.Contains(strings.Join(st.Status.Reasons, ";"), "offline") {
		t.Errorf("status 10 minutes later: %+v, %v; want offline", st, err)
	}
	fleet, err := c.FleetStatus(ctx, cradle.DeviceFilter{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range fleet.Devices {
		got[r.Serial] = r.Status.LastSeen.IsZero()
	}
	if never, ok := got["SN-QUIET"]; !ok || !never || got["SN-T"] {
		t.Errorf("fleet status: %v; want SN-QUIET never seen and SN-T seen", got)
	}

	for _, tc := range []struct{ path, msg string }{
		{"/api/v1/devices/SN-T/telemetry", "metric is required"},
		{"/api/v1/devices/SN-T/telemetry?metric=Bad", "invalid metric name"},
		{"/api/v1/devices/SN-T/telemetry?metric=health.cpu_pct&step=-5m", "not a positive duration"},
		{"/api/v1/devices/SN-T/telemetry?metric=health.cpu_pct&from=yesterday", "not an RFC 3339 time"},
		{"/api/v1/devices/SN-T/telemetry?metric=health.cpu_pct&from=2026-03-01T10:00:00Z&to=2026-03-01T09:00:00Z", "time range is empty"},
		{"/api/v1/devices/SN-T/status?x=1", "unknown query parameter"},
		{"/api/v1/device-status?limit=500", "at most 200"},
	} {
		r := e.doJSON("GET", tc.path, e.tokens[cradle.RoleOperator], "")
		if r.status != http.StatusBadRequest || !strings.Contains(r.errorBody(t).Message, tc.msg) {
			t.Errorf("GET %s: %d %s; want 400 with %q", tc.path, r.status, r.body, tc.msg)
		}
	}
	if r := e.doJSON("GET", "/api/v1/devices/NOPE/status", e.tokens[cradle.RoleOperator], ""); r.status != http.StatusNotFound {
		t.Errorf("status of an unknown device: %d", r.status)
	}
	// Another tenant does not see the device.
	r := e.doJSON("GET", "/api/v1/devices/SN-T/telemetry?metric=health.cpu_pct", e.other, "")
	if r.status != http.StatusNotFound {
		t.Errorf("another tenant's telemetry query: %d %s", r.status, r.body)
	}
	var series httpapi.TelemetrySeries
	if r := e.doJSON("GET", "/api/v1/devices/SN-QUIET/telemetry?metric=health.cpu_pct", e.tokens[cradle.RoleOperator], ""); r.status != 200 ||
		json.Unmarshal(r.body, &series) != nil || series.Samples == nil || len(series.Samples) != 0 {
		t.Errorf("telemetry of a quiet device: %d %s; want an empty list", r.status, r.body)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
