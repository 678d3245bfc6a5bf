package storetest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"time"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

func create(t *testing.T, e *Env, ctx context.Context, serial, model string, labels map[string]string) *cradle.Device {
	t.Helper()
	d, err := e.Devices.CreateDevice(ctx, cradle.DeviceCreate{Serial: serial, Model: model, Labels: labels})
	if err != nil {
		t.Fatalf("create %s: %v", serial, err)
	}
	return d
}

func testDeviceCreate(t *testing.T, e *Env) {
	_, ctx := e.Tenant("acme", cradle.RoleOperator)
	d, err := e.Devices.CreateDevice(ctx, cradle.DeviceCreate{
		Serial: "SN-0001", Model: "gw-100", HardwareRevision: "B2", HardwareUID: "uid-ABC",
		MACs: []string{"02-00-5E-10-00-01", "02:00:5e:10:00:02"}, Labels: map[string]string{"site": "berlin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(ctx, "SN-0001"))
	if diff := cmp.Diff(d, got); diff != "" {
		t.Fatalf("stored device differs from the created one (-created +stored):\n%s", diff)
	}
	want := &cradle.Device{ID: d.ID, TenantID: d.TenantID, Serial: "SN-0001", HardwareUID: "uid-ABC",
		MACs: []string{"02:00:5e:10:00:01", "02:00:5e:10:00:02"}, Model: "gw-100", HardwareRevision: "B2",
		Labels: map[string]string{"site": "berlin"}, State: cradle.StateFactory, Protocol: cradle.ProtocolCradle, CreatedAt: Epoch, UpdatedAt: Epoch, StateChangedAt: Epoch}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("device (-want +got):\n%s", diff)
	}

	_, err = e.Devices.CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-0001", Model: "gw-100"})
	wantCode(t, err, cradle.ECONFLICT, "already exists")
	for _, bad := range []cradle.DeviceCreate{
		{Serial: "", Model: "m"},
		{Serial: "has space", Model: "m"},
		{Serial: "ok", Model: ""},
		{Serial: "ok", Model: "m", MACs: []string{"02:00:5e:10:00"}},
		{Serial: "ok", Model: "m", Labels: map[string]string{"-bad": "x"}},
		{Serial: "ok", Model: "m", State: cradle.StateDeployed},
	} {
		_, err := e.Devices.CreateDevice(ctx, bad)
		wantCode(t, err, cradle.EINVALID)
	}
	list, _ := must2(t)(e.Devices.FindDevices(ctx, cradle.DeviceFilter{}))
	if len(list) != 1 {
		t.Fatalf("after refused creates the registry holds %d devices, want 1", len(list))
	}
	_, err = e.Devices.FindDeviceBySerial(ctx, "SN-404")
	wantCode(t, err, cradle.ENOTFOUND, "SN-404")
	_, err = e.Devices.FindDeviceBySerial(ctx, "bad serial/../x")
	wantCode(t, err, cradle.ENOTFOUND)
}

func must2(t *testing.T) func([]*cradle.Device, string, error) ([]*cradle.Device, string) {
	return func(d []*cradle.Device, next string, err error) ([]*cradle.Device, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return d, next
	}
}

func testDeviceIsolation(t *testing.T, e *Env) {
	_, acme := e.Tenant("acme", cradle.RoleAdmin)
	_, globex := e.Tenant("globex", cradle.RoleAdmin)
	create(t, e, acme, "SN-1", "m", nil)
	// The same serial may exist in another tenant.
	create(t, e, globex, "SN-1", "other", nil)
	create(t, e, acme, "SN-2", "m", nil)

	d := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(globex, "SN-1"))
	if d.Model != "other" {
		t.Fatalf("globex reads acme's device: %+v", d)
	}
	for name, err := range map[string]error{
		"get":        second(e.Devices.FindDeviceBySerial(globex, "SN-2")),
		"history":    second(e.Devices.FindDeviceHistory(globex, "SN-2")),
		"update":     second(e.Devices.UpdateDevice(globex, "SN-2", cradle.DeviceUpdate{SetLabels: map[string]string{"a": "b"}})),
		"transition": second(e.Devices.TransitionDevice(globex, "SN-2", cradle.DeviceTransition{To: cradle.StateProvisioned})),
	} {
		if cradle.ErrorCode(err) != cradle.ENOTFOUND {
			t.Errorf("%s of another tenant's device: %v, want not_found", name, err)
		}
	}
	list, _ := must2(t)(e.Devices.FindDevices(globex, cradle.DeviceFilter{}))
	if len(list) != 1 || list[0].Model != "other" {
		t.Fatalf("globex lists %d devices", len(list))
	}
	acmeDev := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(acme, "SN-2"))
	if acmeDev.State != cradle.StateFactory || len(acmeDev.Labels) != 0 {
		t.Fatalf("another tenant changed acme's device: %+v", acmeDev)
	}
	entries := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(globex, cradle.AuditFilter{Limit: 1000}))
	for _, en := range entries {
		if strings.Contains(en.Subject, "SN-2") && en.Action == "device.create" {
			t.Fatalf("globex sees acme's audit entry %+v", en)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func testDeviceFilters(t *testing.T, e *Env) {
	_, ctx := e.Tenant("acme", cradle.RoleAdmin)
	create(t, e, ctx, "GW-001", "gw", map[string]string{"env": "prod", "site": "berlin"})
	create(t, e, ctx, "GW-002", "gw", map[string]string{"env": "staging", "site": "berlin"})
	create(t, e, ctx, "GW-010", "gw", map[string]string{"env": "prod"})
	create(t, e, ctx, "SNS-001", "sensor", map[string]string{"env": "dev", "site": "paris"})
	create(t, e, ctx, "SNS-002", "sensor", nil)
	if _, err := e.Devices.TransitionDevice(ctx, "GW-002", cradle.DeviceTransition{To: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	sel := func(s string) *cradle.LabelSelector {
		ls, err := cradle.ParseLabelSelector(s)
		if err != nil {
			t.Fatal(err)
		}
		return ls
	}
	st := cradle.StateProvisioned
	tests := []struct {
		name string
		f    cradle.DeviceFilter
		want []string
	}{
		{"all", cradle.DeviceFilter{}, []string{"GW-001", "GW-002", "GW-010", "SNS-001", "SNS-002"}},
		{"state", cradle.DeviceFilter{State: &st}, []string{"GW-002"}},
		{"model", cradle.DeviceFilter{Model: ptr("sensor")}, []string{"SNS-001", "SNS-002"}},
		{"prefix", cradle.DeviceFilter{SerialPrefix: ptr("GW-00")}, []string{"GW-001", "GW-002"}},
		{"prefix whole serial", cradle.DeviceFilter{SerialPrefix: ptr("GW-010")}, []string{"GW-010"}},
		{"prefix none", cradle.DeviceFilter{SerialPrefix: ptr("X")}, nil},
		{"equals", cradle.DeviceFilter{Selector: sel("env=prod")}, []string{"GW-001", "GW-010"}},
		{"not equals", cradle.DeviceFilter{Selector: sel("env!=prod")}, []string{"GW-002", "SNS-001", "SNS-002"}},
		{"in", cradle.DeviceFilter{Selector: sel("env in (dev, staging)")}, []string{"GW-002", "SNS-001"}},
		{"notin", cradle.DeviceFilter{Selector: sel("env notin (prod)")}, []string{"GW-002", "SNS-001", "SNS-002"}},
		{"exists", cradle.DeviceFilter{Selector: sel("site")}, []string{"GW-001", "GW-002", "SNS-001"}},
		{"not exists", cradle.DeviceFilter{Selector: sel("!site")}, []string{"GW-010", "SNS-002"}},
		{"combined", cradle.DeviceFilter{Model: ptr("gw"), Selector: sel("env=prod,site=berlin")}, []string{"GW-001"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list, next := must2(t)(e.Devices.FindDevices(ctx, tt.f))
			if next != "" {
				t.Fatalf("unexpected next cursor %q", next)
			}
			var got []string
			for _, d := range list {
				got = append(got, d.Serial)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("serials (-want +got):\n%s", diff)
			}
			// The store and the domain's matcher agree.
			if tt.f.Selector != nil {
				for _, d := range list {
					if !tt.f.Selector.Matches(d.Labels) {
						t.Fatalf("%s returned by the store but not matched by %s", d.Serial, tt.f.Selector)
					}
				}
			}
		})
	}
	bad := cradle.StateFactory + "x"
	for name, f := range map[string]cradle.DeviceFilter{
		"bad state":  {State: &bad},
		"bad prefix": {SerialPrefix: ptr("a b")},
		"bad cursor": {Cursor: "garbage!"},
		"neg limit":  {Limit: -1},
		"big limit":  {Limit: cradle.MaxPageSize + 1},
	} {
		_, _, err := e.Devices.FindDevices(ctx, f)
		if cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
}

func testDevicePagination(t *testing.T, e *Env) {
	_, ctx := e.Tenant("acme", cradle.RoleAdmin)
	var want []string
	for i := range 23 {
		s := fmt.Sprintf("P-%03d", i)
		want = append(want, s)
		create(t, e, ctx, s, "m", nil)
	}
	var got []string
	cursor, pages := "", 0
	for {
		list, next := must2(t)(e.Devices.FindDevices(ctx, cradle.DeviceFilter{Limit: 5, Cursor: cursor}))
		pages++
		for _, d := range list {
			got = append(got, d.Serial)
		}
		if next == "" {
			break
		}
		cursor = next
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if pages != 5 || !slices.Equal(got, want) {
		t.Fatalf("walked %d pages: %v", pages, got)
	}
}

func testDeviceLabels(t *testing.T, e *Env) {
	_, ctx := e.Tenant("acme", cradle.RoleOperator)
	create(t, e, ctx, "SN-1", "m", map[string]string{"a": "1", "b": "2"})
	d, err := e.Devices.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{SetLabels: map[string]string{"b": "3", "c": "4"}, RemoveLabels: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"b": "3", "c": "4"}
	if diff := cmp.Diff(want, d.Labels); diff != "" {
		t.Fatalf("labels (-want +got):\n%s", diff)
	}
	got := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(ctx, "SN-1"))
	if diff := cmp.Diff(want, got.Labels); diff != "" {
		t.Fatalf("stored labels (-want +got):\n%s", diff)
	}
	_, err = e.Devices.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{})
	wantCode(t, err, cradle.EINVALID, "nothing to update")
	_, err = e.Devices.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{SetLabels: map[string]string{"x": "1"}, RemoveLabels: []string{"x"}})
	wantCode(t, err, cradle.EINVALID, "both set and removed")
	many := map[string]string{}
	for i := range cradle.MaxLabels - 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	_, err = e.Devices.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{SetLabels: many})
	wantCode(t, err, cradle.EINVALID, "too many labels")
	got = must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(ctx, "SN-1"))
	if diff := cmp.Diff(want, got.Labels); diff != "" {
		t.Fatalf("a refused update changed the labels (-want +got):\n%s", diff)
	}
	_, err = e.Devices.UpdateDevice(ctx, "SN-404", cradle.DeviceUpdate{SetLabels: map[string]string{"a": "b"}})
	wantCode(t, err, cradle.ENOTFOUND)
}

func testTransitions(t *testing.T, e *Env) {
	tn, factory := e.Tenant("acme", cradle.RoleFactory)
	operator, admin, device := e.As(tn.ID, cradle.RoleOperator), e.As(tn.ID, cradle.RoleAdmin), e.As(tn.ID, cradle.RoleDevice)
	create(t, e, factory, "SN-1", "m", nil)
	steps := []struct {
		ctx  context.Context
		to   cradle.State
		code string
	}{
		{operator, cradle.StateProvisioned, cradle.ECONFLICT}, // only the factory provisions
		{factory, cradle.StateProvisioned, ""},
		{factory, cradle.StateDeployed, cradle.ECONFLICT},
		{device, cradle.StateDeployed, ""},
		{operator, cradle.StateSuspended, ""},
		{operator, cradle.StateDeployed, ""},
		{operator, cradle.StateRMA, ""},
		{operator, cradle.StateProvisioned, cradle.ECONFLICT}, // rma leaves only through the factory
		{factory, cradle.StateProvisioned, ""},
		{operator, cradle.StateEOL, cradle.ECONFLICT}, // only admins decommission
		{admin, cradle.StateEOL, cradle.ECONFLICT},    // and only through decommissioning, never a plain move
		{admin, cradle.StateDeployed, ""},
		{admin, cradle.StateEOL, cradle.ECONFLICT}, // from deployed neither
	}
	state := cradle.StateFactory
	for i, s := range steps {
		e.Clock.Add(time.Minute)
		d, err := e.Devices.TransitionDevice(s.ctx, "SN-1", cradle.DeviceTransition{To: s.to, Reason: fmt.Sprintf("step %d", i)})
		if cradle.ErrorCode(err) != s.code {
			t.Fatalf("step %d (%s → %s): %v, want code %q", i, state, s.to, err, s.code)
		}
		if err != nil {
			if !strings.Contains(cradle.ErrorMessage(err), string(state)) {
				t.Fatalf("step %d: refusal %q does not name the current state %s", i, cradle.ErrorMessage(err), state)
			}
			continue
		}
		if d.State != s.to || !d.StateChangedAt.Equal(e.Clock.Now().Truncate(time.Microsecond)) {
			t.Fatalf("step %d: device = %+v", i, d)
		}
		state = s.to
	}
	hist := must[[]*cradle.StateChange](t)(e.Devices.FindDeviceHistory(admin, "SN-1"))
	var path []string
	for i, h := range hist {
		if h.Seq != int64(i+1) {
			t.Fatalf("history seq %d at index %d", h.Seq, i)
		}
		path = append(path, string(h.From)+">"+string(h.To))
	}
	want := []string{">factory", "factory>provisioned", "provisioned>deployed", "deployed>suspended", "suspended>deployed",
		"deployed>rma", "rma>provisioned", "provisioned>deployed"}
	if diff := cmp.Diff(want, path); diff != "" {
		t.Fatalf("history (-want +got):\n%s", diff)
	}
	if hist[1].Reason != "step 1" || !strings.Contains(hist[1].Actor, "factory") {
		t.Fatalf("history entry = %+v", hist[1])
	}
	_, err := e.Devices.TransitionDevice(admin, "SN-1", cradle.DeviceTransition{To: "gone"})
	wantCode(t, err, cradle.EINVALID, "unknown lifecycle state")
	_, err = e.Devices.TransitionDevice(admin, "SN-1", cradle.DeviceTransition{To: cradle.StateRMA, Reason: strings.Repeat("x", cradle.MaxReasonLen+1)})
	wantCode(t, err, cradle.EINVALID, "reason")
	// Every refusal left an audit entry naming it.
	refusals := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(admin, cradle.AuditFilter{Action: ptr("device.transition.refused"), Limit: 100}))
	if len(refusals) != 6 {
		t.Fatalf("%d refusal entries, want 6", len(refusals))
	}
	// The refusal of a plain move to eol says how to decommission.
	_, err = e.Devices.TransitionDevice(admin, "SN-1", cradle.DeviceTransition{To: cradle.StateEOL})
	wantCode(t, err, cradle.ECONFLICT, "cradle device decommission SN-1")
	if d := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(admin, "SN-1")); d.State != cradle.StateDeployed {
		t.Fatalf("after a refused move to eol: %s", d.State)
	}
}

func testAuthorization(t *testing.T, e *Env) {
	tn, admin := e.Tenant("acme", cradle.RoleAdmin)
	create(t, e, admin, "SN-1", "m", nil)
	created := 0
	type op struct {
		name string
		perm cradle.Permission
		call func(ctx context.Context) error
	}
	ops := []op{
		{"get", cradle.PermDeviceRead, func(ctx context.Context) error { return second(e.Devices.FindDeviceBySerial(ctx, "SN-1")) }},
		{"list", cradle.PermDeviceRead, func(ctx context.Context) error {
			_, _, err := e.Devices.FindDevices(ctx, cradle.DeviceFilter{})
			return err
		}},
		{"history", cradle.PermDeviceRead, func(ctx context.Context) error { return second(e.Devices.FindDeviceHistory(ctx, "SN-1")) }},
		{"create", cradle.PermDeviceCreate, func(ctx context.Context) error {
			created++
			return second(e.Devices.CreateDevice(ctx, cradle.DeviceCreate{Serial: fmt.Sprintf("N-%d", created), Model: "m"}))
		}},
		{"import", cradle.PermDeviceCreate, func(ctx context.Context) error {
			return second(e.Devices.ImportDevices(ctx, cradle.ImportJSONL, strings.NewReader("")))
		}},
		{"update", cradle.PermDeviceUpdate, func(ctx context.Context) error {
			return second(e.Devices.UpdateDevice(ctx, "SN-1", cradle.DeviceUpdate{SetLabels: map[string]string{"k": "v"}}))
		}},
		{"audit list", cradle.PermAuditRead, func(ctx context.Context) error { return second(e.Audit.FindAuditEntries(ctx, cradle.AuditFilter{})) }},
		{"audit verify", cradle.PermAuditRead, func(ctx context.Context) error { return second(e.Audit.VerifyAudit(ctx)) }},
		{"token list", cradle.PermTokenRead, func(ctx context.Context) error { return second(e.Tokens.FindTokens(ctx)) }},
		{"token create", cradle.PermTokenWrite, func(ctx context.Context) error {
			_, _, err := e.Tokens.CreateToken(ctx, cradle.TokenCreate{Name: "x", Role: cradle.RoleAuditor})
			return err
		}},
		{"token revoke", cradle.PermTokenWrite, func(ctx context.Context) error { return e.Tokens.RevokeToken(ctx, "0000000000000000") }},
	}
	for _, role := range cradle.TokenRoles {
		for _, o := range ops {
			t.Run(string(role)+"/"+o.name, func(t *testing.T) {
				err := o.call(e.As(tn.ID, role))
				if role.Allowed(o.perm) {
					if c := cradle.ErrorCode(err); c == cradle.EFORBIDDEN || c == cradle.EUNAUTHORIZED {
						t.Fatalf("allowed call refused: %v", err)
					}
					return
				}
				wantCode(t, err, cradle.EFORBIDDEN, string(role))
			})
		}
	}
	for _, o := range ops {
		if err := o.call(context.Background()); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
			t.Errorf("%s without an actor: %v, want unauthorized", o.name, err)
		}
	}
	refused := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(admin, cradle.AuditFilter{Limit: 1000}))
	n := 0
	for _, en := range refused {
		if strings.HasSuffix(en.Action, ".refused") {
			n++
		}
	}
	if n == 0 {
		t.Fatal("authorization refusals were not audited")
	}
}
