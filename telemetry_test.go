package cradle_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

func TestParseTelemetry(t *testing.T) {
	at := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		payload string
		want    []cradle.TelemetryPoint
	}{
		{"object", `{"time":"2026-03-01T09:00:00Z","metrics":{"health.cpu_pct":12.5,"battery.charging":true,"link.rssi_dbm":-67}}`,
			[]cradle.TelemetryPoint{{Metric: "health.cpu_pct", Time: at, Value: 12.5}, {Metric: "battery.charging", Time: at, Value: 1},
				{Metric: "link.rssi_dbm", Time: at, Value: -67}}},
		{"no time", ` {"metrics":{"energy.wh":1e3,"security.debug_locked":false}} `,
			[]cradle.TelemetryPoint{{Metric: "energy.wh", Value: 1000}, {Metric: "security.debug_locked", Value: 0}}},
		{"array", `[{"time":"2026-03-01T09:00:00Z","metrics":{"health.temp_c":41}},{"time":"2026-03-01T10:00:00.5+01:00","metrics":{"health.temp_c":42}}]`,
			[]cradle.TelemetryPoint{{Metric: "health.temp_c", Time: at, Value: 41}, {Metric: "health.temp_c", Time: at.Add(500 * time.Millisecond), Value: 42}}},
		{"unknown metric", `{"metrics":{"acme.pump.flow_lpm":3.25}}`, []cradle.TelemetryPoint{{Metric: "acme.pump.flow_lpm", Value: 3.25}}},
		{"expired certificate", `{"metrics":{"security.cert_expiry_s":-60}}`, []cradle.TelemetryPoint{{Metric: "security.cert_expiry_s", Value: -60}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cradle.ParseTelemetry(strings.NewReader(tt.payload), 0)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
				t.Errorf("points (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseTelemetryRejects(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"metrics":{`)
	for i := range cradle.MaxTelemetryPoints + 1 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"m.x%d":1`, i)
	}
	b.WriteString(`}}`)
	many := b.String()
	tests := []struct {
		name, payload string
		limit         int
		code          string
		mention       string
	}{
		{"empty", "  ", 0, cradle.EINVALID, "empty"},
		{"empty array", "[]", 0, cradle.EINVALID, "empty array"},
		{"not json", "cpu=12", 0, cradle.EINVALID, "not an object"},
		{"no metrics", `{"time":"2026-03-01T09:00:00Z"}`, 0, cradle.EINVALID, "metrics is missing"},
		{"empty metrics", `{"metrics":{}}`, 0, cradle.EINVALID, "metrics is empty"},
		{"metrics not object", `{"metrics":[1,2]}`, 0, cradle.EINVALID, "not an object of metric names"},
		{"unknown field", `{"metrics":{"health.cpu_pct":1},"seq":4}`, 0, cradle.EINVALID, `"seq"`},
		{"bad time", `{"time":"yesterday","metrics":{"health.cpu_pct":1}}`, 0, cradle.EINVALID, `time "yesterday"`},
		{"bad time in array", `[{"metrics":{"health.cpu_pct":1}},{"time":"1700000000","metrics":{"health.cpu_pct":1}}]`, 0, cradle.EINVALID, "[1].time"},
		{"bad name", `{"metrics":{"CPU":1}}`, 0, cradle.EINVALID, `metrics["CPU"]`},
		{"name without dot", `{"metrics":{"cpu":1}}`, 0, cradle.EINVALID, `metrics["cpu"]`},
		{"long name", `{"metrics":{"a.` + strings.Repeat("b", 63) + `":1}}`, 0, cradle.EINVALID, "up to 64"},
		{"string value", `{"metrics":{"health.cpu_pct":"12"}}`, 0, cradle.EINVALID, `metrics["health.cpu_pct"]: value is not a number`},
		{"null value", `{"metrics":{"health.cpu_pct":null}}`, 0, cradle.EINVALID, "not a number"},
		{"nested value", `{"metrics":{"health.cpu_pct":{"v":1}}}`, 0, cradle.EINVALID, "not a number"},
		{"infinite", `{"metrics":{"energy.wh":1e999}}`, 0, cradle.EINVALID, `metrics["energy.wh"]: value 1e999 is out of range`},
		{"NaN literal", `{"metrics":{"energy.wh":NaN}}`, 0, cradle.EINVALID, "invalid character 'N'"},
		{"out of range", `{"metrics":{"health.cpu_pct":140}}`, 0, cradle.EINVALID, "out of its range"},
		{"not boolean", `{"metrics":{"security.secure_boot":0.5}}`, 0, cradle.EINVALID, "not 0 or 1"},
		{"duplicate", `{"metrics":{"health.cpu_pct":1,"health.cpu_pct":2}}`, 0, cradle.EINVALID, "twice"},
		{"trailing", `{"metrics":{"health.cpu_pct":1}} {"metrics":{}}`, 0, cradle.EINVALID, "trailing"},
		{"trailing in array", `[{"metrics":{"health.cpu_pct":1}}]]`, 0, cradle.EINVALID, "not a JSON array"},
		{"cut short", `{"metrics":{"health.cpu_pct":1`, 0, cradle.EINVALID, "telemetry payload"},
		{"over limit", `{"metrics":{"health.cpu_pct":1}}`, 10, cradle.ETOOLARGE, "larger than 10 bytes"},
		{"too many points", many, cradle.MaxTelemetryBytes, cradle.ETOOLARGE, "more than 10000 points"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pts, err := cradle.ParseTelemetry(strings.NewReader(tt.payload), tt.limit)
			if cradle.ErrorCode(err) != tt.code {
				t.Fatalf("ParseTelemetry = %v, %v; want code %s", pts, err, tt.code)
			}
			if !strings.Contains(cradle.ErrorMessage(err), tt.mention) {
				t.Errorf("error %q does not mention %q", cradle.ErrorMessage(err), tt.mention)
			}
		})
	}
}

// FuzzParseTelemetry checks that every accepted payload yields valid,
// bounded points, and that refusals carry a client-visible code.
func FuzzParseTelemetry(f *testing.F) {
	for _, s := range []string{
		`{"time":"2026-03-01T09:00:00Z","metrics":{"health.cpu_pct":12.5,"battery.charging":true}}`,
		`[{"metrics":{"health.temp_c":41}},{"time":"2026-03-01T10:00:00+01:00","metrics":{"energy.wh":1e3}}]`,
		`{"metrics":{"a.b":1e999}}`, `{"metrics":{"a.b":1,"a.b":2}}`, `{"metrics":{}}`, `[]`, `{"metrics":{"x":1}}`, `{"metrics":{"a.b":-0}} x`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		pts, err := cradle.ParseTelemetry(strings.NewReader(payload), 4096)
		if err != nil {
			if c := cradle.ErrorCode(err); c != cradle.EINVALID && c != cradle.ETOOLARGE {
				t.Fatalf("payload %q: error %v has code %q", payload, err, c)
			}
			return
		}
		if len(pts) == 0 || len(pts) > cradle.MaxTelemetryPoints {
			t.Fatalf("payload %q: %d points", payload, len(pts))
		}
		for _, p := range pts {
			if cradle.ValidateMetricName(p.Metric) != nil || cradle.ValidateMetricValue(p.Metric, p.Value) != nil ||
				math.IsNaN(p.Value) || math.IsInf(p.Value, 0) {
				t.Fatalf("payload %q: accepted bad point %+v", payload, p)
			}
		}
	})
}

func TestValidateMetricName(t *testing.T) {
	for _, ok := range []string{"health.cpu_pct", "a.b", "a.b.c", "x_1.y_2", "0.0", "a." + strings.Repeat("b", 62)} {
		if err := cradle.ValidateMetricName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "cpu", ".a", "a.", "a..b", "A.b", "a.b-c", "a b.c", "a.b\x00", "a." + strings.Repeat("b", 63), "é.b"} {
		if err := cradle.ValidateMetricName(bad); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, m := range cradle.TelemetryMetrics {
		if err := cradle.ValidateMetricName(m.Name); err != nil {
			t.Errorf("vocabulary metric %s: %v", m.Name, err)
		}
		if m.Unit == "" || m.Description == "" || m.Min > m.Max {
			t.Errorf("vocabulary metric %s is not documented or has an empty range", m.Name)
		}
	}
}

func TestValidateTelemetry(t *testing.T) {
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		pts     []cradle.TelemetryPoint
		code    string
		mention string
	}{
		{"fine", []cradle.TelemetryPoint{{Metric: "health.cpu_pct", Value: 1}, {Metric: "x.y", Time: now.Add(59 * time.Minute), Value: -1e300}}, "", ""},
		{"clock not set", []cradle.TelemetryPoint{{Metric: "health.cpu_pct", Time: time.Unix(10, 0), Value: 1}}, cradle.EINVALID, "device clock"},
		{"future", []cradle.TelemetryPoint{{Metric: "health.cpu_pct", Value: 1}, {Metric: "health.cpu_pct", Time: now.Add(2 * time.Hour), Value: 1}}, cradle.EINVALID, "point 1"},
		{"NaN", []cradle.TelemetryPoint{{Metric: "x.y", Value: math.NaN()}}, cradle.EINVALID, "not a finite number"},
		{"range", []cradle.TelemetryPoint{{Metric: "battery.pct", Value: -1}}, cradle.EINVALID, "battery.pct"},
		{"name", []cradle.TelemetryPoint{{Metric: "Battery", Value: 1}}, cradle.EINVALID, "invalid metric name"},
		{"too many", make([]cradle.TelemetryPoint, cradle.MaxTelemetryPoints+1), cradle.ETOOLARGE, "at most 10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cradle.ValidateTelemetry(tt.pts, now)
			if cradle.ErrorCode(err) != tt.code || (err != nil && !strings.Contains(cradle.ErrorMessage(err), tt.mention)) {
				t.Fatalf("ValidateTelemetry = %v, want code %q mentioning %q", err, tt.code, tt.mention)
			}
		})
	}
}

func TestDeriveStatus(t *testing.T) {
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	pt := func(metric string, v float64, ago time.Duration) cradle.TelemetryPoint {
		return cradle.TelemetryPoint{Metric: metric, Time: now.Add(-ago), Value: v}
	}
	latest := func(pts ...cradle.TelemetryPoint) map[string]cradle.TelemetryPoint {
		m := map[string]cradle.TelemetryPoint{}
		for _, p := range pts {
			m[p.Metric] = p
		}
		return m
	}
	day := 24 * time.Hour
	tests := []struct {
		name     string
		latest   map[string]cradle.TelemetryPoint
		lastSeen time.Time
		policy   cradle.StatusPolicy
		want     cradle.DeviceStatus // Reasons are checked by count
		reasons  int
	}{
		{"never seen", nil, time.Time{}, cradle.StatusPolicy{}, cradle.DeviceStatus{}, 1},
		{"healthy", latest(pt("battery.pct", 80, 0), pt("security.secure_boot", 1, 0), pt("security.debug_locked", 1, 0), pt("security.cert_expiry_s", 30*86400, 0)),
			now.Add(-3 * time.Minute), cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now.Add(-3 * time.Minute)}, 0},
		{"offline after three missed intervals", nil, now.Add(-3*time.Minute - time.Second), cradle.StatusPolicy{},
			cradle.DeviceStatus{LastSeen: now.Add(-3*time.Minute - time.Second)}, 1},
		{"last seen from newest point", latest(pt("health.cpu_pct", 1, 10*time.Minute), pt("health.mem_pct", 1, time.Minute)), time.Time{}, cradle.StatusPolicy{},
			cradle.DeviceStatus{Online: true, LastSeen: now.Add(-time.Minute)}, 0},
		{"custom interval", nil, now.Add(-10 * time.Minute), cradle.StatusPolicy{Interval: 5 * time.Minute, MissedIntervals: 2},
			cradle.DeviceStatus{Online: true, LastSeen: now.Add(-10 * time.Minute)}, 0},
		{"battery low", latest(pt("battery.pct", 14.9, 0)), now, cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now, BatteryLow: true}, 1},
		{"battery at threshold", latest(pt("battery.pct", 15, 0)), now, cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now}, 0},
		{"battery custom threshold", latest(pt("battery.pct", 20, 0)), now, cradle.StatusPolicy{BatteryLowPct: 25}, cradle.DeviceStatus{Online: true, LastSeen: now, BatteryLow: true}, 1},
		// 15 days left when reported two days ago: 13 days left now.
		{"certificate expiring", latest(pt("security.cert_expiry_s", 15*86400, 2*day)), now, cradle.StatusPolicy{},
			cradle.DeviceStatus{Online: true, LastSeen: now, CertExpiring: true}, 1},
		{"certificate not yet expiring", latest(pt("security.cert_expiry_s", 15*86400, 0)), now, cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now}, 0},
		{"certificate expired", latest(pt("security.cert_expiry_s", -1, 0)), now, cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now, CertExpiring: true}, 1},
		{"certificate far off", latest(pt("security.cert_expiry_s", 1e300, 0)), now, cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now}, 0},
		{"secure boot off", latest(pt("security.secure_boot", 0, 0)), now, cradle.StatusPolicy{}, cradle.DeviceStatus{Online: true, LastSeen: now, Insecure: true}, 1},
		{"debug unlocked", latest(pt("security.debug_locked", 0, 0), pt("security.secure_boot", 1, 0)), now, cradle.StatusPolicy{},
			cradle.DeviceStatus{Online: true, LastSeen: now, Insecure: true}, 1},
		{"everything wrong", latest(pt("security.debug_locked", 0, day), pt("security.secure_boot", 0, day), pt("battery.pct", 3, day), pt("security.cert_expiry_s", 0, day)),
			time.Time{}, cradle.StatusPolicy{}, cradle.DeviceStatus{LastSeen: now.Add(-day), Insecure: true, BatteryLow: true, CertExpiring: true}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := cradle.DeriveStatus(tt.latest, tt.lastSeen, now, tt.policy)
			if len(got.Reasons) != tt.reasons {
				t.Errorf("reasons = %q, want %d", got.Reasons, tt.reasons)
			}
			got.Reasons = nil
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("status (-want +got):\n%s", diff)
			}
		})
	}
}
