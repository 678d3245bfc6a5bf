package main

import (
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// TestRetentionJob runs the server with a short prune interval: points
// older than the raw retention become an hourly rollup, those older than
// the rollup retention disappear, recent ones stay raw.
func TestRetentionJob(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen = t.TempDir(), "127.0.0.1:0"
	cfg.Telemetry = TelemetryConfig{RawRetention: 24 * time.Hour, RollupRetention: 48 * time.Hour, PruneInterval: 20 * time.Millisecond}
	m := &Main{Config: cfg}
	if err := m.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	sys := cradle.NewContextWithActor(t.Context(), cradle.SystemActor(1, "test"))
	if _, err := sqlstore.NewDeviceService(m.db).CreateDevice(sys, cradle.DeviceCreate{Serial: "SN-R", Model: "gw"}); err != nil {
		t.Fatal(err)
	}
	hour := time.Now().UTC().Truncate(time.Hour)
	old := hour.Add(-36 * time.Hour)
	pts := []cradle.TelemetryPoint{
		{Metric: "health.cpu_pct", Time: hour.Add(-72 * time.Hour), Value: 99}, // past the rollup retention
		{Metric: "health.cpu_pct", Time: old.Add(10 * time.Minute), Value: 10}, // past the raw retention:
		{Metric: "health.cpu_pct", Time: old.Add(20 * time.Minute), Value: 30}, // one hourly rollup
		{Metric: "health.cpu_pct", Time: time.Now().Add(-time.Minute), Value: 5},
	}
	dev := cradle.NewContextWithActor(t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: "SN-R"})
	svc := sqlstore.NewTelemetryService(m.db)
	if err := svc.RecordTelemetry(dev, "SN-R", pts); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := svc.QueryTelemetry(sys, cradle.TelemetryQuery{Serial: "SN-R", Metric: "health.cpu_pct"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 2 && got[0].Time.Equal(old) && got[0].Count == 2 && got[0].Avg == 20 && got[1].Count == 1 && got[1].Avg == 5 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s of a 20 ms prune interval the series is %+v; want the rollup of %s (2 points, avg 20) and the recent point", got, old)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTelemetryConfig(t *testing.T) {
	c, err := loadConfig("", envMap(map[string]string{"CRADLE_TELEMETRY_RAW_RETENTION": "36h", "CRADLE_TELEMETRY_ROLLUP_RETENTION": "30d"}),
		map[string]string{"telemetry-prune-interval": "5m"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (TelemetryConfig{RawRetention: 36 * time.Hour, RollupRetention: 30 * day, PruneInterval: 5 * time.Minute}); c.Telemetry != want {
		t.Errorf("telemetry config %+v, want %+v", c.Telemetry, want)
	}
	if c, err := loadConfig("", envMap(map[string]string{"CRADLE_TELEMETRY_RAW_RETENTION": "0", "CRADLE_TELEMETRY_ROLLUP_RETENTION": "0"}), nil); err != nil || c.Telemetry.RawRetention != 0 {
		t.Errorf("retention 0 (keep everything): %+v, %v", c.Telemetry, err)
	}
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"CRADLE_TELEMETRY_RAW_RETENTION": "a week"}, `config: telemetry.raw_retention: "a week" is not a span such as 7d`},
		{map[string]string{"CRADLE_TELEMETRY_ROLLUP_RETENTION": "-1d"}, `telemetry.rollup_retention: "-1d" is not a span`},
		{map[string]string{"CRADLE_TELEMETRY_PRUNE_INTERVAL": "0s"}, `telemetry.prune_interval: "0s" is not a positive duration`},
		{map[string]string{"CRADLE_TELEMETRY_RAW_RETENTION": "30d", "CRADLE_TELEMETRY_ROLLUP_RETENTION": "7d"}, "telemetry.rollup_retention: 7d is shorter than telemetry.raw_retention (30d)"},
		{map[string]string{"CRADLE_TELEMETRY_RAW_RETENTION": "0"}, "telemetry.raw_retention 0 keeps raw points forever"},
	} {
		if _, err := loadConfig("", envMap(tc.env), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("loadConfig(%v) = %v, want an error containing %q", tc.env, err, tc.want)
		}
	}
}
