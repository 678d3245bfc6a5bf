package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

// twinMatrix is the authorization matrix of the twin routes: operators
// and admins read and write, auditors read, the factory neither.
var twinMatrix = []call{
	{"GET", "/api/v1/devices/{serial}/twin", jsonCall("/api/v1/devices/SN-READ/twin", ""), [4]int{200, 200, 403, 200}},
	{"PUT", "/api/v1/devices/{serial}/twin/desired", jsonCall("/api/v1/devices/SN-READ/twin/desired", `{"log":{"level":"info"}}`), [4]int{200, 200, 403, 403}},
	{"DELETE", "/api/v1/devices/{serial}/twin/desired", func(e *env, r cradle.Role) (string, string, string) {
		serial := "TWDEL-" + string(r)
		e.createDevice(serial, cradle.StateFactory)
		if _, err := e.client(cradle.RoleAdmin).SetDeviceConfig(e.t.Context(), serial, []byte(`{"a":1}`)); err != nil {
			e.t.Fatal(err)
		}
		return "/api/v1/devices/" + serial + "/twin/desired", "", ""
	}, [4]int{200, 200, 403, 403}},
	{"GET", "/api/v1/twins", jsonCall("/api/v1/twins?drift=pending", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/config-groups", jsonCall("/api/v1/config-groups", ""), [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/config-groups/{name}", func(e *env, r cradle.Role) (string, string, string) {
		e.putGroup("matrix", `{"selector":"nobody","config":{}}`)
		return "/api/v1/config-groups/matrix", "", ""
	}, [4]int{200, 200, 403, 200}},
	{"PUT", "/api/v1/config-groups/{name}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/config-groups/g-" + string(r), "application/json", `{"selector":"nobody","priority":3,"config":{"x":1}}`
	}, [4]int{200, 200, 403, 403}},
	{"DELETE", "/api/v1/config-groups/{name}", func(e *env, r cradle.Role) (string, string, string) {
		e.putGroup("del-"+string(r), `{"selector":"nobody","config":{}}`)
		return "/api/v1/config-groups/del-" + string(r), "", ""
	}, [4]int{204, 204, 403, 403}},
	{"GET", "/api/v1/config-schemas/{model}", func(e *env, r cradle.Role) (string, string, string) {
		if _, err := e.client(cradle.RoleAdmin).PutConfigSchema(e.t.Context(), "matrix-model", []byte(`{"type":"object"}`)); err != nil {
			e.t.Fatal(err)
		}
		return "/api/v1/config-schemas/matrix-model", "", ""
	}, [4]int{200, 200, 403, 200}},
	{"PUT", "/api/v1/config-schemas/{model}", func(e *env, r cradle.Role) (string, string, string) {
		return "/api/v1/config-schemas/m-" + string(r), "application/json", `{"type":"object"}`
	}, [4]int{200, 200, 403, 403}},
}

func (e *env) putGroup(name, body string) {
	e.t.Helper()
	var p cradle.ConfigGroupPut
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.client(cradle.RoleAdmin).PutConfigGroup(e.t.Context(), name, p); err != nil {
		e.t.Fatal(err)
	}
}

func TestTwinRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	op := e.client(cradle.RoleOperator)
	e.createDevice("SN-1", cradle.StateFactory)
	e.createDevice("SN-2", cradle.StateFactory)
	if _, err := op.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{SetLabels: map[string]string{"env": "prod"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := op.PutConfigSchema(ctx, "gw-100", []byte(`{"type":"object","properties":{"mtu":{"type":"integer","maximum":1500}}}`)); err != nil {
		t.Fatal(err)
	}
	g, err := op.PutConfigGroup(ctx, "prod", cradle.ConfigGroupPut{Selector: "env = prod", Priority: 1, Config: json.RawMessage(`{"mtu":1500,"log":{"level":"info"}}`)})
	if err != nil {
		t.Fatal(err)
	}
	if g.Selector != "env=prod" || string(g.Config) != `{"log":{"level":"info"},"mtu":1500}` {
		t.Errorf("group = %+v", g)
	}
	tw, err := op.SetDeviceConfig(ctx, "SN-1", []byte(`{"log":{"level":"debug"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &cradle.Twin{Serial: "SN-1", Model: "gw-100", DeviceConfig: json.RawMessage(`{"log":{"level":"debug"}}`), Groups: []string{"prod"},
		Desired: &cradle.TwinDesired{Version: 2, Config: json.RawMessage(`{"log":{"level":"debug"},"mtu":1500}`)}, DesiredAt: tw.DesiredAt, Drift: cradle.DriftPending}
	if diff := cmp.Diff(want, tw); diff != "" {
		t.Errorf("twin (-want +got):\n%s", diff)
	}
	got, err := e.client(cradle.RoleAuditor).FindTwin(ctx, "SN-1")
	if err != nil || !cmp.Equal(got, tw) {
		t.Errorf("FindTwin = %+v, %v; want what the change returned", got, err)
	}
	// The schema refuses an MTU above 1500: 400 naming the path, and the
	// twin is unchanged.
	resp := e.doJSON("PUT", "/api/v1/devices/SN-1/twin/desired", e.tokens[cradle.RoleOperator], `{"mtu":9000}`)
	if resp.status != http.StatusBadRequest || !strings.Contains(resp.errorBody(t).Message, "at /mtu") {
		t.Errorf("schema refusal: %d %s", resp.status, resp.body)
	}
	for body, status := range map[string]int{
		`[1]`:           http.StatusBadRequest,
		`{"a":1,"a":2}`: http.StatusBadRequest,
		`{"a":"` + strings.Repeat("x", cradle.MaxConfigBytes) + `"}`: http.StatusRequestEntityTooLarge,
	} {
		resp := e.doJSON("PUT", "/api/v1/devices/SN-1/twin/desired", e.tokens[cradle.RoleOperator], body)
		if resp.status != status {
			t.Errorf("PUT desired %.40s: status %d, want %d; %s", body, resp.status, status, resp.body)
		}
		resp.errorBody(t)
	}
	if got, _ := op.FindTwin(ctx, "SN-1"); got.Desired.Version != 2 {
		t.Errorf("version after refusals = %d, want 2", got.Desired.Version)
	}
	resp = e.do("PUT", "/api/v1/devices/SN-1/twin/desired", e.tokens[cradle.RoleOperator], "text/plain", strings.NewReader(`{}`))
	if resp.status != http.StatusBadRequest {
		t.Errorf("text/plain body: %d", resp.status)
	}
	// The drift listing.
	pending := cradle.DriftPending
	ts, next, err := op.FindTwins(ctx, cradle.TwinFilter{Drift: &pending})
	if err != nil || next != "" || len(ts) != 1 || ts[0].Serial != "SN-1" || ts[0].DesiredVersion != 2 {
		t.Errorf("drift listing = %+v %q %v", ts, next, err)
	}
	resp = e.doJSON("GET", "/api/v1/twins?drift=lost", e.tokens[cradle.RoleOperator], "")
	if resp.status != http.StatusBadRequest || !strings.Contains(resp.errorBody(t).Message, "unknown drift state") {
		t.Errorf("bad drift state: %d %s", resp.status, resp.body)
	}
	// Groups and schemas.
	gs, err := op.FindConfigGroups(ctx)
	if err != nil || len(gs) != 1 || gs[0].Name != "prod" {
		t.Errorf("groups = %+v, %v", gs, err)
	}
	if _, err := op.FindConfigGroup(ctx, "nope"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("unknown group: %v", err)
	}
	if _, err := op.PutConfigGroup(ctx, "Bad Name", cradle.ConfigGroupPut{Selector: "a", Config: json.RawMessage(`{}`)}); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Errorf("bad group name: %v", err)
	}
	cs, err := op.FindConfigSchema(ctx, "gw-100")
	if err != nil || !strings.Contains(string(cs.Schema), `"maximum":1500`) {
		t.Errorf("schema = %+v, %v", cs, err)
	}
	if _, err := op.PutConfigSchema(ctx, "gw-100", []byte(`{"type":"object","properties":{"mtu":{"maximum":1000}}}`)); cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(err.Error(), "device SN-1") {
		t.Errorf("a schema the fleet fails: %v", err)
	}
	if err := op.DeleteConfigGroup(ctx, "prod"); err != nil {
		t.Fatal(err)
	}
	if got, _ := op.FindTwin(ctx, "SN-1"); got.Desired.Version != 3 || string(got.Desired.Config) != `{"log":{"level":"debug"}}` {
		t.Errorf("twin after deleting its group = %+v", got.Desired)
	}
	// Another tenant sees none of it.
	other := e.doJSON("GET", "/api/v1/devices/SN-1/twin", e.other, "")
	if other.status != http.StatusNotFound {
		t.Errorf("another tenant's admin: %d %s", other.status, other.body)
	}
}
