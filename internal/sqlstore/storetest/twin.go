package storetest

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// twinKit is one tenant with devices and a twin store whose notifications
// are recorded.
type twinKit struct {
	t      *testing.T
	e      *Env
	svc    *sqlstore.TwinService
	tenant *cradle.Tenant
	op     context.Context

	mu      sync.Mutex
	changes []cradle.TwinChange
}

func newTwinKit(t *testing.T, e *Env, tenant string, devices map[string]map[string]string) *twinKit {
	t.Helper()
	tn, op := e.Tenant(tenant, cradle.RoleOperator)
	k := &twinKit{t: t, e: e, svc: sqlstore.NewTwinService(e.DB), tenant: tn, op: op}
	e.DB.SetTwinNotifier(func(cs []cradle.TwinChange) {
		k.mu.Lock()
		k.changes = append(k.changes, cs...)
		k.mu.Unlock()
	})
	for _, s := range slices.Sorted(func(yield func(string) bool) {
		for s := range devices {
			if !yield(s) {
				return
			}
		}
	}) {
		model := "gw-1"
		if strings.HasPrefix(s, "SN-S") {
			model = "sensor-2"
		}
		if _, err := e.Devices.CreateDevice(op, cradle.DeviceCreate{Serial: s, Model: model, Labels: devices[s]}); err != nil {
			t.Fatalf("create device %s: %v", s, err)
		}
	}
	return k
}

func (k *twinKit) device(serial string) context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: k.tenant.ID, Role: cradle.RoleDevice, Kind: "device", ID: serial})
}

// took returns the notifications since the last call, as serial → version.
func (k *twinKit) took() map[string]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int64{}
	for _, c := range k.changes {
		var d cradle.TwinDesired
		if err := json.Unmarshal(c.Desired, &d); err != nil {
			k.t.Fatalf("notified desired document of %s: %v", c.Serial, err)
		}
		if c.TenantID != k.tenant.ID {
			k.t.Fatalf("notification for tenant %d, want %d", c.TenantID, k.tenant.ID)
		}
		out[c.Serial] = d.Version
	}
	k.changes = nil
	return out
}

func (k *twinKit) group(name, selector string, priority int, config string) {
	k.t.Helper()
	if _, err := k.svc.PutConfigGroup(k.op, name, cradle.ConfigGroupPut{Selector: selector, Priority: priority, Config: json.RawMessage(config)}); err != nil {
		k.t.Fatalf("put config group %s: %v", name, err)
	}
}

// desired returns a device's effective document as "version config".
func (k *twinKit) desired(serial string) string {
	k.t.Helper()
	d, err := k.svc.FindDesired(k.device(serial), serial)
	if err != nil {
		k.t.Fatalf("find desired of %s: %v", serial, err)
	}
	if d == nil {
		return "none"
	}
	b, _ := json.Marshal(d)
	return string(b)
}

func testTwinPrecedence(t *testing.T, e *Env) {
	k := newTwinKit(t, e, "acme", map[string]map[string]string{
		"SN-1": {"env": "prod", "site": "north"},
		"SN-2": {"env": "prod"},
		"SN-3": {"env": "dev"},
	})
	if got := k.desired("SN-1"); got != "none" {
		t.Fatalf("desired before any config = %s, want none", got)
	}
	k.group("prod", "env=prod", 10, `{"log":{"level":"info","format":"json"},"ntp":["a","b"],"mtu":1500}`)
	k.group("north", "site=north", 20, `{"log":{"level":"debug"},"ntp":["c"]}`)
	// Same priority as north: ties go by name, so "a-north" merges first.
	k.group("a-north", "site=north", 20, `{"mtu":1400,"log":{"level":"warn"}}`)
	if diff := cmp.Diff(map[string]int64{"SN-1": 3, "SN-2": 1}, k.took()); diff != "" {
		t.Errorf("notified (-want +got):\n%s", diff)
	}
	want := map[string]string{
		"SN-1": `{"version":3,"config":{"log":{"format":"json","level":"debug"},"mtu":1400,"ntp":["c"]}}`,
		"SN-2": `{"version":1,"config":{"log":{"format":"json","level":"info"},"mtu":1500,"ntp":["a","b"]}}`,
		"SN-3": "none",
	}
	for s, w := range want {
		if got := k.desired(s); got != w {
			t.Errorf("desired of %s = %s, want %s", s, got, w)
		}
	}
	// The device's own document goes on top of every group.
	tw := must[*cradle.Twin](t)(k.svc.SetDeviceConfig(k.op, "SN-1", []byte(`{"log":{"level":"error"},"extra":true}`)))
	if tw.Desired == nil || tw.Desired.Version != 4 || string(tw.Desired.Config) != `{"extra":true,"log":{"format":"json","level":"error"},"mtu":1400,"ntp":["c"]}` {
		t.Fatalf("twin after device config = %+v", tw.Desired)
	}
	if diff := cmp.Diff([]string{"prod", "a-north", "north"}, tw.Groups); diff != "" {
		t.Errorf("groups in merge order (-want +got):\n%s", diff)
	}
	// Setting the same document again changes nothing: no new version.
	must[*cradle.Twin](t)(k.svc.SetDeviceConfig(k.op, "SN-1", []byte(`{"extra":true, "log":{"level":"error"}}`)))
	if got := k.took(); !cmp.Equal(got, map[string]int64{"SN-1": 4}) {
		t.Errorf("notified after device config twice = %v, want SN-1 at 4 once", got)
	}
	// A group change that does not alter a device's effective document
	// leaves its version alone; one that does bumps it.
	k.group("north", "site=north", 20, `{"log":{"level":"debug"},"ntp":["c"],"mtu":1400}`)
	if got := k.took(); len(got) != 0 {
		t.Errorf("notified after a no-op group change: %v", got)
	}
	k.group("prod", "env in (prod,dev)", 10, `{"mtu":1500}`)
	if diff := cmp.Diff(map[string]int64{"SN-1": 5, "SN-2": 2, "SN-3": 1}, k.took()); diff != "" {
		t.Errorf("notified after widening prod (-want +got):\n%s", diff)
	}
	// Labels choose groups: moving SN-2 north recomputes it.
	must[*cradle.Device](t)(e.Devices.UpdateDevice(k.op, "SN-2", cradle.DeviceUpdate{SetLabels: map[string]string{"site": "north"}}))
	if got := k.desired("SN-2"); got != `{"version":3,"config":{"log":{"level":"debug"},"mtu":1400,"ntp":["c"]}}` {
		t.Errorf("desired of SN-2 after the label change = %s", got)
	}
	// Deleting every source leaves {} under a new version.
	if err := k.svc.DeleteConfigGroup(k.op, "prod"); err != nil {
		t.Fatal(err)
	}
	if got := k.desired("SN-3"); got != `{"version":2,"config":{}}` {
		t.Errorf("desired of SN-3 after its only group went = %s", got)
	}
	wantCode(t, k.svc.DeleteConfigGroup(k.op, "prod"), cradle.ENOTFOUND, "prod")
	must[*cradle.Twin](t)(k.svc.DeleteDeviceConfig(k.op, "SN-1"))
	_, err := k.svc.DeleteDeviceConfig(k.op, "SN-1")
	wantCode(t, err, cradle.ENOTFOUND, "no configuration of its own")
	groups := must[[]*cradle.ConfigGroup](t)(k.svc.FindConfigGroups(k.op))
	var names []string
	for _, g := range groups {
		names = append(names, g.Name)
	}
	if diff := cmp.Diff([]string{"a-north", "north"}, names); diff != "" {
		t.Errorf("groups (-want +got):\n%s", diff)
	}
	g := must[*cradle.ConfigGroup](t)(k.svc.FindConfigGroup(k.op, "north"))
	if g.Selector != "site=north" || g.Priority != 20 || !g.UpdatedAt.Equal(Epoch) {
		t.Errorf("group north = %+v", g)
	}
	_, err = k.svc.FindConfigGroup(k.op, "prod")
	wantCode(t, err, cradle.ENOTFOUND)

	// Devices created or imported later get the groups that match them.
	k.took()
	must[*cradle.Device](t)(e.Devices.CreateDevice(k.op, cradle.DeviceCreate{Serial: "SN-4", Model: "gw-1", Labels: map[string]string{"site": "north"}}))
	rep := must[*cradle.ImportReport](t)(e.Devices.ImportDevices(k.op, cradle.ImportJSONL, strings.NewReader(`{"serial":"SN-5","model":"gw-1","labels":{"site":"north"}}`+"\n"+`{"serial":"SN-6","model":"gw-1"}`+"\n")))
	if !rep.Committed {
		t.Fatalf("import: %+v", rep)
	}
	for _, s := range []string{"SN-4", "SN-5"} {
		if got := k.desired(s); got != `{"version":1,"config":{"log":{"level":"debug"},"mtu":1400,"ntp":["c"]}}` {
			t.Errorf("desired of %s, created after its groups = %s", s, got)
		}
	}
	if got := k.desired("SN-6"); got != "none" {
		t.Errorf("desired of SN-6, which no group matches = %s", got)
	}
	if diff := cmp.Diff(map[string]int64{"SN-4": 1, "SN-5": 1}, k.took()); diff != "" {
		t.Errorf("notified for new devices (-want +got):\n%s", diff)
	}

	// Another tenant's groups never reach this tenant's devices.
	_, other := e.Tenant("globex", cradle.RoleOperator)
	if _, err := k.svc.PutConfigGroup(other, "all", cradle.ConfigGroupPut{Selector: "env", Config: json.RawMessage(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	if got := k.desired("SN-3"); got != `{"version":2,"config":{}}` {
		t.Errorf("another tenant's group reached SN-3: %s", got)
	}
	_, err = k.svc.FindTwin(other, "SN-3")
	wantCode(t, err, cradle.ENOTFOUND)
}

func testTwinInvalid(t *testing.T, e *Env) {
	k := newTwinKit(t, e, "acme", map[string]map[string]string{"SN-1": {"env": "prod"}, "SN-S1": {"env": "prod"}})
	k.group("base", "env=prod", 0, `{"mtu":1500}`)
	k.took()
	for _, tc := range []struct {
		name, doc, code, msg string
	}{
		{"not an object", `[1,2]`, cradle.EINVALID, "must be a JSON object, not an array"},
		{"null", `null`, cradle.EINVALID, "not null"},
		{"duplicate key", `{"a":{"b":1,"b":2}}`, cradle.EINVALID, "duplicate key at /a/b"},
		{"trailing data", `{"a":1} {}`, cradle.EINVALID, "unexpected data"},
		{"broken", `{"a":`, cradle.EINVALID, "invalid configuration"},
		{"too deep", strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40), cradle.EINVALID, "nested deeper than 32"},
		{"too large", `{"a":"` + strings.Repeat("x", cradle.MaxConfigBytes) + `"}`, cradle.ETOOLARGE, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := k.svc.SetDeviceConfig(k.op, "SN-1", []byte(tc.doc))
			wantCode(t, err, tc.code, tc.msg)
		})
	}
	// A schema for the sensor model: the gateway is not bound by it.
	schema := `{"type":"object","properties":{"mtu":{"type":"integer","maximum":1500},"log":{"type":"object","properties":{"level":{"enum":["debug","info"]}}}}}`
	cs := must[*cradle.ConfigSchema](t)(k.svc.PutConfigSchema(k.op, "sensor-2", []byte(schema)))
	if cs.Model != "sensor-2" || cs.UpdatedBy == "" {
		t.Errorf("schema = %+v", cs)
	}
	_, err := k.svc.SetDeviceConfig(k.op, "SN-S1", []byte(`{"log":{"level":"trace"}}`))
	wantCode(t, err, cradle.EINVALID, "device SN-S1 (model sensor-2)", "at /log/level")
	if got := k.desired("SN-S1"); got != `{"version":1,"config":{"mtu":1500}}` {
		t.Errorf("desired after a refused document = %s", got)
	}
	// The gateway takes the same document.
	must[*cradle.Twin](t)(k.svc.SetDeviceConfig(k.op, "SN-1", []byte(`{"log":{"level":"trace"}}`)))
	// A group whose merge fails a device's schema is refused whole: no
	// device changes, not even those it would be valid for.
	_, err = k.svc.PutConfigGroup(k.op, "base", cradle.ConfigGroupPut{Selector: "env=prod", Config: json.RawMessage(`{"mtu":9000}`)})
	wantCode(t, err, cradle.EINVALID, "SN-S1", "at /mtu")
	if got := k.desired("SN-1"); got != `{"version":2,"config":{"log":{"level":"trace"},"mtu":1500}}` {
		t.Errorf("desired of SN-1 after a refused group = %s", got)
	}
	if got := k.took(); !cmp.Equal(got, map[string]int64{"SN-1": 2}) {
		t.Errorf("notified = %v; a refused change must notify nothing", got)
	}
	// A schema that a device's current document fails is refused.
	_, err = k.svc.PutConfigSchema(k.op, "gw-1", []byte(`{"type":"object","additionalProperties":false,"properties":{"mtu":{}}}`))
	wantCode(t, err, cradle.EINVALID, "device SN-1", "log")
	_, err = k.svc.FindConfigSchema(k.op, "gw-1")
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.svc.PutConfigSchema(k.op, "gw-1", []byte(`{"type":"nope"}`))
	wantCode(t, err, cradle.EINVALID, "invalid config schema")
	_, err = k.svc.PutConfigSchema(k.op, "gw-1", []byte(`{"$ref":"file:///etc/passwd"}`))
	wantCode(t, err, cradle.EINVALID, "invalid config schema")
	// Bad group requests.
	for _, tc := range []struct {
		name string
		put  cradle.ConfigGroupPut
		msg  string
	}{
		{"Bad_Name", cradle.ConfigGroupPut{Selector: "env", Config: json.RawMessage(`{}`)}, "invalid config group name"},
		{"sel", cradle.ConfigGroupPut{Selector: "env in (", Config: json.RawMessage(`{}`)}, "selector"},
		{"noconfig", cradle.ConfigGroupPut{Selector: "env"}, "needs a config object"},
		{"prio", cradle.ConfigGroupPut{Selector: "env", Priority: 2000000, Config: json.RawMessage(`{}`)}, "priority"},
	} {
		_, err := k.svc.PutConfigGroup(k.op, tc.name, tc.put)
		wantCode(t, err, cradle.EINVALID, tc.msg)
	}
	// Refusals are audited; the accepted changes too.
	entries := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(k.op, cradle.AuditFilter{}))
	var actions []string
	for _, en := range entries {
		if strings.HasPrefix(en.Action, "twin.") || strings.HasPrefix(en.Action, "config_") {
			actions = append(actions, en.Action)
		}
	}
	for _, want := range []string{"config_group.put", "config_schema.put", "twin.desired", "twin.desired.refused", "config_group.put.refused", "config_schema.put.refused"} {
		if !slices.Contains(actions, want) {
			t.Errorf("audit has no %s entry; has %v", want, actions)
		}
	}
}

func testTwinDrift(t *testing.T, e *Env) {
	k := newTwinKit(t, e, "acme", map[string]map[string]string{"SN-1": {"env": "prod"}, "SN-2": {"env": "prod"}, "SN-3": {}})
	k.group("base", "env=prod", 0, `{"mtu":1500}`)
	report := func(serial string, r cradle.TwinReported) {
		t.Helper()
		if r.At.IsZero() {
			r.At = Epoch
		}
		if err := k.svc.ReportTwin(k.device(serial), serial, &r); err != nil {
			t.Fatalf("report %s: %v", serial, err)
		}
	}
	drift := func(serial string) cradle.DriftState {
		t.Helper()
		return must[*cradle.Twin](t)(k.svc.FindTwin(k.op, serial)).Drift
	}
	if got := drift("SN-1"); got != cradle.DriftPending {
		t.Fatalf("drift before any report = %s, want pending", got)
	}
	report("SN-1", cradle.TwinReported{Version: 1, Status: cradle.ReportApplied, Config: json.RawMessage(`{ "mtu": 1500 }`)})
	if got := drift("SN-1"); got != cradle.DriftInSync {
		t.Errorf("drift after applying = %s, want in-sync", got)
	}
	e.Clock.Add(time.Minute)
	report("SN-1", cradle.TwinReported{Version: 1, Status: cradle.ReportApplied, Config: json.RawMessage(`{"mtu":1400}`)})
	tw := must[*cradle.Twin](t)(k.svc.FindTwin(k.op, "SN-1"))
	if tw.Drift != cradle.DriftDrifted || tw.ReportedAt == nil || !tw.ReportedAt.Equal(Epoch.Add(time.Minute)) || string(tw.Reported.Config) != `{"mtu":1400}` {
		t.Errorf("twin after a drifted report = drift %s reported %+v at %v", tw.Drift, tw.Reported, tw.ReportedAt)
	}
	report("SN-2", cradle.TwinReported{Version: 1, Status: cradle.ReportRejected, Error: "config does not match the schema: at /mtu: too big", Config: json.RawMessage(`{}`)})
	report("SN-3", cradle.TwinReported{Version: 0, Status: cradle.ReportApplied, Config: json.RawMessage(`{}`)})
	// A new desired version makes every reached device pending again.
	k.group("base", "env=prod", 0, `{"mtu":1492}`)
	if got := drift("SN-2"); got != cradle.DriftPending {
		t.Errorf("drift of SN-2 after a new version = %s, want pending", got)
	}
	report("SN-2", cradle.TwinReported{Version: 2, Status: cradle.ReportFailed, Error: "hook exited 1", Config: json.RawMessage(`{"mtu":1500}`)})
	list := func(state *cradle.DriftState) map[string]cradle.DriftState {
		t.Helper()
		out := map[string]cradle.DriftState{}
		cursor := ""
		for {
			page, next, err := k.svc.FindTwins(k.op, cradle.TwinFilter{Drift: state, Cursor: cursor, Limit: 1})
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range page {
				out[st.Serial] = st.Drift
			}
			if next == "" {
				return out
			}
			cursor = next
		}
	}
	if diff := cmp.Diff(map[string]cradle.DriftState{"SN-1": cradle.DriftPending, "SN-2": cradle.DriftFailed, "SN-3": cradle.DriftNone}, list(nil)); diff != "" {
		t.Errorf("drift listing (-want +got):\n%s", diff)
	}
	failed := cradle.DriftFailed
	if diff := cmp.Diff(map[string]cradle.DriftState{"SN-2": cradle.DriftFailed}, list(&failed)); diff != "" {
		t.Errorf("failed listing (-want +got):\n%s", diff)
	}
	bad := cradle.DriftState("lost")
	_, _, err := k.svc.FindTwins(k.op, cradle.TwinFilter{Drift: &bad})
	wantCode(t, err, cradle.EINVALID, "unknown drift state")

	// Bad reports are refused and change nothing.
	for _, r := range []cradle.TwinReported{
		{Version: 2, Status: "done", Config: json.RawMessage(`{}`), At: Epoch},
		{Version: 2, Status: cradle.ReportRejected, Config: json.RawMessage(`{}`), At: Epoch},
		{Version: 2, Status: cradle.ReportApplied, Config: json.RawMessage(`[]`), At: Epoch},
		{Version: 2, Status: cradle.ReportApplied, Config: json.RawMessage(`{}`)},
	} {
		wantCode(t, k.svc.ReportTwin(k.device("SN-2"), "SN-2", &r), cradle.EINVALID)
	}
	if got := drift("SN-2"); got != cradle.DriftFailed {
		t.Errorf("drift after refused reports = %s, want failed", got)
	}
}

func testTwinPermissions(t *testing.T, e *Env) {
	k := newTwinKit(t, e, "acme", map[string]map[string]string{"SN-1": {}, "SN-2": {}})
	must[*cradle.Twin](t)(k.svc.SetDeviceConfig(k.op, "SN-1", []byte(`{"a":1}`)))
	auditor := e.As(k.tenant.ID, cradle.RoleAuditor)
	must[*cradle.Twin](t)(k.svc.FindTwin(auditor, "SN-1"))
	_, err := k.svc.SetDeviceConfig(auditor, "SN-1", []byte(`{}`))
	wantCode(t, err, cradle.EFORBIDDEN, "change desired configurations")
	_, err = k.svc.PutConfigGroup(e.As(k.tenant.ID, cradle.RoleFactory), "g", cradle.ConfigGroupPut{Selector: "a", Config: json.RawMessage(`{}`)})
	wantCode(t, err, cradle.EFORBIDDEN)
	// A device reads and reports only for itself, and changes nothing.
	_, err = k.svc.FindDesired(k.device("SN-2"), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN, `device "SN-2" may not read`)
	err = k.svc.ReportTwin(k.device("SN-2"), "SN-1", &cradle.TwinReported{Version: 1, Status: cradle.ReportApplied, Config: json.RawMessage(`{"a":1}`), At: Epoch})
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.SetDeviceConfig(k.device("SN-1"), "SN-1", []byte(`{}`))
	wantCode(t, err, cradle.EFORBIDDEN)
	err = k.svc.ReportTwin(k.op, "SN-1", &cradle.TwinReported{Version: 1, Status: cradle.ReportApplied, Config: json.RawMessage(`{"a":1}`), At: Epoch})
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.FindTwin(context.Background(), "SN-1")
	wantCode(t, err, cradle.EUNAUTHORIZED)
	_, err = k.svc.SetDeviceConfig(k.op, "SN-9", []byte(`{}`))
	wantCode(t, err, cradle.ENOTFOUND)
	if got := must[*cradle.Twin](t)(k.svc.FindTwin(k.op, "SN-1")); got.Desired.Version != 1 {
		t.Errorf("version after refused writes = %d, want 1", got.Desired.Version)
	}
}

// testTwinFactoryUnits: units a station allocates are devices created in
// the allocation, and get the desired document of the groups that match
// them (their batch label) there, as created and imported devices do.
func testTwinFactoryUnits(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	twins := sqlstore.NewTwinService(e.DB)
	if _, err := twins.PutConfigGroup(k.admin, "batch-b1", cradle.ConfigGroupPut{Selector: "batch=B1", Config: json.RawMessage(`{"mtu":1400}`)}); err != nil {
		t.Fatal(err)
	}
	k.batch("B1", 5, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	for _, u := range k.allocate("B1", "st-1", 2) {
		d, err := twins.FindDesired(k.admin, u.Serial)
		if err != nil || d == nil || d.Version != 1 || string(d.Config) != `{"mtu":1400}` {
			t.Errorf("desired of unit %s: %+v, %v; want version 1 of the batch's group", u.Serial, d, err)
		}
	}
}

// testTwinClaimedDevices: a claim labels the device site=… and owner=…;
// the groups those labels select apply in the claim's transaction.
func testTwinClaimedDevices(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	twins := sqlstore.NewTwinService(e.DB)
	if _, err := twins.PutConfigGroup(k.admin, "plant-7", cradle.ConfigGroupPut{Selector: "site=plant-7", Config: json.RawMessage(`{"ntp":["p7"]}`)}); err != nil {
		t.Fatal(err)
	}
	k.batch("b1", 5, cradle.ProfileTest)
	k.station("line-1", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	u := k.allocate("b1", "line-1", 1)[0]
	code := claimUnit(t, k, "line-1", u)
	if d := must[*cradle.TwinDesired](t)(twins.FindDesired(k.admin, u.Serial)); d != nil {
		t.Fatalf("desired before the claim: %+v, want none", d)
	}
	if _, err := sqlstore.NewClaimService(e.DB).ClaimDevice(k.as(cradle.RoleOperator), u.Serial, cradle.DeviceClaim{Code: code, Site: "plant-7"}); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if d := must[*cradle.TwinDesired](t)(twins.FindDesired(k.admin, u.Serial)); d == nil || d.Version != 1 || string(d.Config) != `{"ntp":["p7"]}` {
		t.Errorf("desired after the claim: %+v, want version 1 of the site's group", d)
	}
}
