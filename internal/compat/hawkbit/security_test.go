package hawkbit_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"cradle"
	"cradle/internal/sqlstore"
)

// A tenant's gateway token acts only for hawkBit devices, and for a
// provisioned device on its first contact: never for a device of the
// native or Mender API, whose protocol admitting it would switch.
func TestGatewayTokenScope(t *testing.T) {
	e := newEnv(t)
	devices := sqlstore.NewDeviceService(e.db)
	e.device("SN-NEW", nil)
	tokHB := e.device("SN-HB", nil)
	e.base(t, "SN-HB", tokHB) // admitted: hawkbit, deployed
	e.device("SN-MENDER", nil)
	deviceCtx := func(serial string) context.Context {
		return cradle.NewContextWithActor(t.Context(), cradle.Actor{TenantID: e.tenant, Role: cradle.RoleDevice, Kind: "device", ID: serial})
	}
	if _, err := e.protocol.AdmitDevice(deviceCtx("SN-MENDER"), "SN-MENDER", cradle.ProtocolMender); err != nil {
		t.Fatal(err)
	}
	e.device("SN-NATIVE", nil)
	if _, err := devices.TransitionDevice(e.admin, "SN-NATIVE", cradle.DeviceTransition{To: cradle.StateDeployed, Reason: "enrolled"}); err != nil {
		t.Fatal(err)
	}
	gw, err := e.protocol.CreateDeviceToken(e.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, Name: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	get := func(serial string) *http.Response {
		req, _ := http.NewRequest("GET", e.srv.URL+"/default/controller/v1/"+serial, nil)
		req.Header.Set("Authorization", "GatewayToken "+gw.Secret)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for serial, want := range map[string]struct {
		status int
		says   string
	}{
		"SN-NEW":    {200, ""},
		"SN-HB":     {200, ""},
		"SN-MENDER": {403, "talks the mender protocol"},
		"SN-NATIVE": {403, "is deployed and not a hawkBit device"},
	} {
		body := expect(t, get(serial), want.status, "gateway token for "+serial)
		if !strings.Contains(body, want.says) {
			t.Errorf("%s: %s does not say %q", serial, body, want.says)
		}
	}
	for serial, want := range map[string]cradle.Protocol{"SN-NEW": cradle.ProtocolHawkbit, "SN-MENDER": cradle.ProtocolMender, "SN-NATIVE": cradle.ProtocolCradle} {
		if d, err := devices.FindDeviceBySerial(e.admin, serial); err != nil || d.Protocol != want {
			t.Errorf("%s after the gateway's polls: %+v, %v; want protocol %s", serial, d, err, want)
		}
	}
}

// countingRollouts counts the reads of rollouts' device lists of the real
// service it wraps.
type countingRollouts struct {
	cradle.RolloutService
	pages atomic.Int64
}

func (c *countingRollouts) FindRolloutDevices(ctx context.Context, id string, f cradle.RolloutDeviceFilter) ([]*cradle.RolloutDevice, error) {
	c.pages.Add(1)
	return c.RolloutService.FindRolloutDevices(ctx, id, f)
}

// GET installedBase/{id} does not page through the rollout's devices on
// every request: the action that installed what the device runs is known,
// and another action's answer is kept.
func TestInstalledBaseLookups(t *testing.T) {
	e := newEnv(t)
	counted := &countingRollouts{RolloutService: e.rollouts}
	e.handler.Rollouts = counted
	tok1 := e.device("SN-1", map[string]string{"hb": "ok"})
	tok2 := e.device("SN-2", map[string]string{"hb": "bad"})
	e.base(t, "SN-1", tok1)
	e.base(t, "SN-2", tok2)
	actionOf := func(serial, tok string) string {
		href := e.base(t, serial, tok).Links["deploymentBase"].Href
		if href == "" {
			t.Fatalf("%s was offered no deployment", serial)
		}
		return href[strings.LastIndex(href, "/")+1 : strings.Index(href, "?")]
	}
	feedback := func(serial, tok, id, finished string) {
		expect(t, e.do("POST", "/default/controller/v1/"+serial+"/deploymentBase/"+id+"/feedback", tok,
			`{"status":{"execution":"closed","result":{"finished":"`+finished+`"}}}`), 200, serial+" feedback")
		e.step()
	}
	e.rollout("ok")
	id1 := actionOf("SN-1", tok1)
	feedback("SN-1", tok1, id1, "success")
	e.rollout("bad")
	id2 := actionOf("SN-2", tok2)
	feedback("SN-2", tok2, id2, "failure")

	before := counted.pages.Load()
	for range 3 {
		expect(t, e.do("GET", "/default/controller/v1/SN-1/installedBase/"+id1, tok1, ""), 200, "installedBase of the install")
		expect(t, e.do("GET", "/default/controller/v1/SN-2/installedBase/"+id2, tok2, ""), 404, "installedBase of a failure")
	}
	if n := counted.pages.Load() - before; n != 1 {
		t.Errorf("3 GETs of each installedBase read %d pages of rollout devices, want 1 (the failed action's, once)", n)
	}
	expect(t, e.do("GET", "/default/controller/v1/SN-2/installedBase/"+id1, tok2, ""), 404, "another device's action")
}
