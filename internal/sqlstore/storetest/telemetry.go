package storetest

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// telemetryKit is one tenant with devices and a telemetry store.
type telemetryKit struct {
	t      *testing.T
	e      *Env
	svc    *sqlstore.TelemetryService
	tenant *cradle.Tenant
	admin  context.Context
	system context.Context
}

func newTelemetryKit(t *testing.T, e *Env, tenant string, serials ...string) *telemetryKit {
	t.Helper()
	tn, admin := e.Tenant(tenant, cradle.RoleAdmin)
	k := &telemetryKit{t: t, e: e, svc: sqlstore.NewTelemetryService(e.DB), tenant: tn, admin: admin, system: e.As(tn.ID, cradle.RoleSystem)}
	for _, s := range serials {
		if _, err := e.Devices.CreateDevice(admin, cradle.DeviceCreate{Serial: s, Model: "gw-1"}); err != nil {
			t.Fatalf("create device %s: %v", s, err)
		}
	}
	return k
}

// device returns a context acting as the device serial.
func (k *telemetryKit) device(serial string) context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: k.tenant.ID, Role: cradle.RoleDevice, Kind: "device", ID: serial})
}

func (k *telemetryKit) record(serial string, pts ...cradle.TelemetryPoint) {
	k.t.Helper()
	if err := k.svc.RecordTelemetry(k.device(serial), serial, pts); err != nil {
		k.t.Fatalf("record telemetry of %s: %v", serial, err)
	}
}

func (k *telemetryKit) query(q cradle.TelemetryQuery) []cradle.TelemetrySample {
	k.t.Helper()
	got, err := k.svc.QueryTelemetry(k.admin, q)
	if err != nil {
		k.t.Fatalf("query %+v: %v", q, err)
	}
	return got
}

// series returns n points of metric from start, every interval, with
// values from f.
func series(metric string, start time.Time, interval time.Duration, n int, f func(i int) float64) []cradle.TelemetryPoint {
	pts := make([]cradle.TelemetryPoint, n)
	for i := range pts {
		pts[i] = cradle.TelemetryPoint{Metric: metric, Time: start.Add(time.Duration(i) * interval), Value: f(i)}
	}
	return pts
}

// aggregate computes, in Go, the samples a query with step would return
// for pts (all of one metric), for comparison with what the database does.
func aggregate(pts []cradle.TelemetryPoint, step time.Duration) []cradle.TelemetrySample {
	var out []cradle.TelemetrySample
	for _, p := range pts {
		b := p.Time
		if step > 0 { // buckets are aligned to the Unix epoch
			us := p.Time.UnixMicro()
			b = time.UnixMicro(us - us%step.Microseconds()).UTC()
		}
		if len(out) == 0 || !out[len(out)-1].Time.Equal(b) {
			out = append(out, cradle.TelemetrySample{Time: b, Min: math.Inf(1), Max: math.Inf(-1)})
		}
		s := &out[len(out)-1]
		s.Min, s.Max = math.Min(s.Min, p.Value), math.Max(s.Max, p.Value)
		s.Avg = (s.Avg*float64(s.Count) + p.Value) / float64(s.Count+1)
		s.Count++
	}
	return out
}

var sampleCmp = cmp.Options{cmpopts.EquateApprox(0, 1e-9), cmpopts.EquateEmpty()}

func testTelemetryRecordQuery(t *testing.T, e *Env) {
	k := newTelemetryKit(t, e, "acme", "dev-1", "dev-2")
	start := Epoch.Add(-time.Hour)
	cpu := series("health.cpu_pct", start, 10*time.Second, 90, func(i int) float64 { return float64(i%17) * 1.5 })
	k.record("dev-1", cpu...)
	k.record("dev-2", series("health.cpu_pct", start, 10*time.Second, 90, func(int) float64 { return 99 })...)

	t.Run("raw", func(t *testing.T) {
		got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.cpu_pct"})
		if diff := cmp.Diff(aggregate(cpu, 0), got, sampleCmp); diff != "" {
			t.Errorf("raw samples (-want +got):\n%s", diff)
		}
	})
	t.Run("downsampled", func(t *testing.T) {
		for _, step := range []time.Duration{time.Minute, 7 * time.Minute, time.Hour} {
			got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.cpu_pct", Step: step})
			if diff := cmp.Diff(aggregate(cpu, step), got, sampleCmp); diff != "" {
				t.Errorf("step %s (-want +got):\n%s", step, diff)
			}
		}
	})
	t.Run("range", func(t *testing.T) {
		from, to := start.Add(5*time.Minute), start.Add(9*time.Minute)
		got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.cpu_pct", From: from, To: to, Step: time.Minute})
		if diff := cmp.Diff(aggregate(cpu[30:54], time.Minute), got, sampleCmp); diff != "" {
			t.Errorf("[from, to) (-want +got):\n%s", diff)
		}
	})
	t.Run("resend is ignored", func(t *testing.T) {
		again := append([]cradle.TelemetryPoint(nil), cpu[:10]...)
		for i := range again {
			again[i].Value = 100
		}
		k.record("dev-1", again...)
		got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.cpu_pct", Step: time.Hour})
		if diff := cmp.Diff(aggregate(cpu, time.Hour), got, sampleCmp); diff != "" {
			t.Errorf("after a resend (-want +got):\n%s", diff)
		}
	})
	t.Run("unknown metric", func(t *testing.T) {
		if got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "battery.pct"}); len(got) != 0 {
			t.Errorf("samples of a metric never reported: %v", got)
		}
	})
	t.Run("latest and status", func(t *testing.T) {
		e.Clock.Add(time.Second)
		k.record("dev-1", cradle.TelemetryPoint{Metric: "battery.pct", Value: 9}, cradle.TelemetryPoint{Metric: "security.secure_boot", Value: 1},
			cradle.TelemetryPoint{Metric: "acme.pump.flow_lpm", Time: start, Value: 3.5})
		latest, err := k.svc.LatestTelemetry(k.admin, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		now := e.Clock.Now()
		want := map[string]cradle.TelemetryPoint{
			"health.cpu_pct":       {Serial: "dev-1", Metric: "health.cpu_pct", Time: cpu[89].Time, Value: cpu[89].Value},
			"battery.pct":          {Serial: "dev-1", Metric: "battery.pct", Time: now, Value: 9}, // no time: stamped on receipt
			"security.secure_boot": {Serial: "dev-1", Metric: "security.secure_boot", Time: now, Value: 1},
			"acme.pump.flow_lpm":   {Serial: "dev-1", Metric: "acme.pump.flow_lpm", Time: start, Value: 3.5},
		}
		if diff := cmp.Diff(want, latest); diff != "" {
			t.Errorf("latest (-want +got):\n%s", diff)
		}
		st := cradle.DeriveStatus(latest, time.Time{}, now.Add(2*time.Minute), cradle.StatusPolicy{})
		if !st.Online || !st.BatteryLow || st.Insecure || !st.LastSeen.Equal(now) {
			t.Errorf("status = %+v", st)
		}
		other, err := k.svc.LatestTelemetry(k.admin, "dev-2")
		if err != nil || len(other) != 1 || other["health.cpu_pct"].Value != 99 {
			t.Errorf("latest of dev-2 = %v, %v", other, err)
		}
	})
	t.Run("system and readers", func(t *testing.T) {
		if err := k.svc.RecordTelemetry(k.system, "dev-2", []cradle.TelemetryPoint{{Metric: "link.reconnects", Value: 2}}); err != nil {
			t.Fatalf("system records: %v", err)
		}
		for _, role := range []cradle.Role{cradle.RoleOperator, cradle.RoleAuditor, cradle.RoleFactory, cradle.RoleSystem} {
			if got, err := k.svc.QueryTelemetry(e.As(k.tenant.ID, role), cradle.TelemetryQuery{Serial: "dev-2", Metric: "link.reconnects"}); err != nil || len(got) != 1 {
				t.Errorf("%s reads: %v, %v", role, got, err)
			}
		}
	})
}

func testTelemetryRefusals(t *testing.T, e *Env) {
	k := newTelemetryKit(t, e, "acme", "dev-1", "dev-2")
	other := newTelemetryKit(t, e, "other", "dev-x")
	pt := []cradle.TelemetryPoint{{Metric: "health.cpu_pct", Value: 1}}
	tests := []struct {
		name    string
		err     error
		code    string
		mention string
	}{
		{"device for another device", k.svc.RecordTelemetry(k.device("dev-1"), "dev-2", pt), cradle.EFORBIDDEN, `"dev-2"`},
		{"unknown device", k.svc.RecordTelemetry(k.system, "nope", pt), cradle.ENOTFOUND, `"nope"`},
		{"device of another tenant", k.svc.RecordTelemetry(k.system, "dev-x", pt), cradle.ENOTFOUND, `"dev-x"`},
		{"reader records", k.svc.RecordTelemetry(e.As(k.tenant.ID, cradle.RoleOperator), "dev-1", pt), cradle.EFORBIDDEN, "operator"},
		{"device reads", func() error {
			_, err := k.svc.QueryTelemetry(k.device("dev-1"), cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.cpu_pct"})
			return err
		}(), cradle.EFORBIDDEN, "device"},
		{"no actor", k.svc.RecordTelemetry(context.Background(), "dev-1", pt), cradle.EUNAUTHORIZED, ""},
		{"not finite", k.svc.RecordTelemetry(k.device("dev-1"), "dev-1", []cradle.TelemetryPoint{{Metric: "x.y", Value: math.Inf(1)}}), cradle.EINVALID, "finite"},
		{"clock not set", k.svc.RecordTelemetry(k.device("dev-1"), "dev-1", []cradle.TelemetryPoint{{Metric: "x.y", Time: time.Unix(0, 0)}}), cradle.EINVALID, "device clock"},
		{"bad name", k.svc.RecordTelemetry(k.device("dev-1"), "dev-1", []cradle.TelemetryPoint{{Metric: "X"}}), cradle.EINVALID, "metric name"},
		{"query of another tenant's device", func() error {
			_, err := k.svc.LatestTelemetry(k.admin, "dev-x")
			return err
		}(), cradle.ENOTFOUND, `"dev-x"`},
		{"query bad metric", func() error {
			_, err := k.svc.QueryTelemetry(k.admin, cradle.TelemetryQuery{Serial: "dev-1", Metric: "cpu"})
			return err
		}(), cradle.EINVALID, "metric name"},
		{"query small step", func() error {
			_, err := k.svc.QueryTelemetry(k.admin, cradle.TelemetryQuery{Serial: "dev-1", Metric: "a.b", Step: time.Millisecond})
			return err
		}(), cradle.EINVALID, "step"},
		{"query empty range", func() error {
			_, err := k.svc.QueryTelemetry(k.admin, cradle.TelemetryQuery{Serial: "dev-1", Metric: "a.b", From: Epoch, To: Epoch})
			return err
		}(), cradle.EINVALID, "empty"},
		{"admin prunes", func() error {
			_, err := k.svc.PruneTelemetry(k.admin, Epoch, Epoch)
			return err
		}(), cradle.EFORBIDDEN, "may not record or prune"},
		{"device prunes", func() error {
			_, err := k.svc.PruneTelemetry(k.device("dev-1"), Epoch, Epoch)
			return err
		}(), cradle.EFORBIDDEN, "retention is applied by the server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.err, tt.code, tt.mention) })
	}
	t.Run("refusals audited", func(t *testing.T) {
		action := "telemetry."
		entries, err := e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Action: &action})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, en := range entries {
			seen[en.Action] = true
		}
		for _, a := range []string{"telemetry.record.refused", "telemetry.read.refused", "telemetry.prune.refused"} {
			if !seen[a] {
				t.Errorf("no %s in the audit log", a)
			}
		}
	})
	t.Run("too many metric names", func(t *testing.T) {
		var pts []cradle.TelemetryPoint
		for i := range 1025 {
			pts = append(pts, cradle.TelemetryPoint{Metric: fmt.Sprintf("spam.m%d", i), Value: 1})
		}
		wantCode(t, k.svc.RecordTelemetry(k.device("dev-1"), "dev-1", pts), cradle.EINVALID, "limit of 1024")
		// The refused batch left nothing behind: the other tenant and
		// a normal batch still work.
		other.record("dev-x", pts[:1000]...)
		k.record("dev-1", pts[:1000]...)
	})
	t.Run("too many samples", func(t *testing.T) {
		mem := series("health.mem_pct", Epoch.Add(-3*time.Hour), time.Second, cradle.MaxTelemetrySamples+1, func(int) float64 { return 1 })
		k.record("dev-2", mem[:5000]...)
		k.record("dev-2", mem[5000:]...)
		_, err := k.svc.QueryTelemetry(k.admin, cradle.TelemetryQuery{Serial: "dev-2", Metric: "health.mem_pct"})
		wantCode(t, err, cradle.EINVALID, "larger step")
		got := k.query(cradle.TelemetryQuery{Serial: "dev-2", Metric: "health.mem_pct", Step: time.Minute})
		if len(got) != 167 {
			t.Errorf("%d one-minute samples of 10001 s, want 167", len(got))
		}
	})
}

func testTelemetryRetention(t *testing.T, e *Env) {
	k := newTelemetryKit(t, e, "acme", "dev-1")
	other := newTelemetryKit(t, e, "other", "dev-x")
	start := Epoch.Add(-5 * time.Hour) // Epoch is on the hour
	temp := series("health.temp_c", start, 30*time.Second, 600, func(i int) float64 { return 20 + float64(i%50)/4 })
	k.record("dev-1", temp...)
	other.record("dev-x", temp...)
	hourly := aggregate(temp, time.Hour)

	// Fold 2.5 hours (300 points), then another hour: the hour cut in two
	// is merged.
	n, err := k.svc.PruneTelemetry(k.system, start.Add(150*time.Minute), time.Time{})
	if err != nil || n != 300 {
		t.Fatalf("prune = %d, %v; want 300 raw points", n, err)
	}
	if got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.temp_c", Step: time.Hour}); !cmp.Equal(hourly, got, sampleCmp) {
		t.Errorf("hourly after a partial fold (-want +got):\n%s", cmp.Diff(hourly, got, sampleCmp))
	}
	if n, err = k.svc.PruneTelemetry(k.system, start.Add(210*time.Minute), time.Time{}); err != nil || n != 120 {
		t.Fatalf("second prune = %d, %v; want 120", n, err)
	}
	if got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.temp_c", Step: time.Hour}); !cmp.Equal(hourly, got, sampleCmp) {
		t.Errorf("hourly after two folds (-want +got):\n%s", cmp.Diff(hourly, got, sampleCmp))
	}
	// Raw queries give the rollups where the points are gone.
	raw := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.temp_c"})
	// Hours 0–2 are whole rollups, hour 3 is a rollup of its first half,
	// then come the raw points still kept.
	wantRaw := append(append(append([]cradle.TelemetrySample{}, hourly[:3]...), aggregate(temp[360:420], time.Hour)...), aggregate(temp[420:], 0)...)
	if diff := cmp.Diff(wantRaw, raw, sampleCmp); diff != "" {
		t.Errorf("raw after folds (-want +got):\n%s", diff)
	}
	latest, err := k.svc.LatestTelemetry(k.admin, "dev-1")
	if err != nil || !latest["health.temp_c"].Time.Equal(temp[599].Time) {
		t.Errorf("latest after prune = %v, %v", latest, err)
	}
	// Rollups of the first two hours go.
	if n, err = k.svc.PruneTelemetry(k.system, time.Time{}, start.Add(2*time.Hour)); err != nil || n != 2 {
		t.Fatalf("rollup prune = %d, %v; want 2", n, err)
	}
	if got := k.query(cradle.TelemetryQuery{Serial: "dev-1", Metric: "health.temp_c", Step: time.Hour}); !cmp.Equal(hourly[2:], got, sampleCmp) {
		t.Errorf("hourly after the rollup prune (-want +got):\n%s", cmp.Diff(hourly[2:], got, sampleCmp))
	}
	// The other tenant was not touched.
	if got := other.query(cradle.TelemetryQuery{Serial: "dev-x", Metric: "health.temp_c"}); len(got) != 600 {
		t.Errorf("other tenant has %d raw points after acme's prune, want 600", len(got))
	}
}
