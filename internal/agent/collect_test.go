package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
)

// fixtureRoot copies testdata/linux (a unit's /proc and /sys) to a
// directory the test may change.
func fixtureRoot(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.CopyFS(root, os.DirFS("testdata/linux")); err != nil {
		t.Fatal(err)
	}
	return root
}

func collect(t *testing.T, c *agent.Collector, now time.Time) map[string]float64 {
	t.Helper()
	b, err := c.Collect(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	// What the server reads: every point valid, all at now.
	pts, err := cradle.ParseTelemetry(bytes.NewReader(b), 0)
	if err != nil {
		t.Fatalf("the server refuses the payload: %v\n%s", err, b)
	}
	if err := cradle.ValidateTelemetry(pts, now); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, p := range pts {
		if !p.Time.Equal(now) {
			t.Errorf("point %s at %v, want %v", p.Metric, p.Time, now)
		}
		got[p.Metric] = p.Value
	}
	return got
}

func TestCollectorFixtures(t *testing.T) {
	root := fixtureRoot(t)
	dev, err := hw.CreateSimDevice(t.TempDir(), "UID-COLLECT-1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rollback, _ := hw.Thermometer(3, 64)
	for field, v := range map[string][]byte{hw.FuseSecureBoot: {1}, hw.FuseAntiRollback: rollback} {
		if err := dev.Fuses.Program(ctx, field, v); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	reconnects := int64(2)
	c := agent.NewCollector(agent.CollectorOptions{
		Root: root, DataDir: t.TempDir(), Device: dev,
		CertNotAfter: func() time.Time { return now.Add(90 * 24 * time.Hour) },
		Reconnects:   func() int64 { return reconnects },
	})
	first := collect(t, c, now)
	storage := first["health.storage_pct"]
	if storage <= 0 || storage > 100 {
		t.Errorf("health.storage_pct %v", storage)
	}
	delete(first, "health.storage_pct") // of the machine running the test
	want := map[string]float64{
		"health.uptime_s":           12345.67,
		"health.mem_pct":            75,
		"health.temp_c":             52.25,
		"battery.pct":               83,
		"battery.voltage_v":         3.912,
		"battery.charging":          1,
		"link.up":                   1,
		"link.rssi_dbm":             -61,
		"link.reconnects":           2,
		"security.secure_boot":      1,
		"security.debug_locked":     0,
		"security.rollback_version": 3,
		"security.cert_expiry_s":    90 * 24 * 3600,
	}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first collection (-want +got):\n%s", diff)
	}

	// CPU load is measured between two collections: 1,000 more jiffies,
	// 250 of them busy. A power monitor adds energy and overrides the
	// battery readings of sysfs.
	os.WriteFile(filepath.Join(root, "proc/stat"), []byte("cpu  1200 0 550 8700 550 0 0 0 0 0\n"), 0o644)
	os.Remove(filepath.Join(root, "proc/net/wireless"))
	os.WriteFile(filepath.Join(dev.Sim.Dir(), hw.PowerFile), []byte(`{"battery_pct": 41.5, "charging": false, "energy_wh": 1234.5}`), 0o644)
	c = agent.NewCollector(agent.CollectorOptions{Root: root, Power: hw.SimPower{Dir: dev.Sim.Dir()}})
	collect(t, c, now)
	os.WriteFile(filepath.Join(root, "proc/stat"), []byte("cpu  1400 0 600 9400 600 0 0 0 0 0\n"), 0o644)
	second := collect(t, c, now.Add(time.Minute))
	for name, v := range map[string]float64{"health.cpu_pct": 25, "battery.pct": 41.5, "battery.charging": 0, "battery.voltage_v": 3.912, "energy.wh": 1234.5} {
		if second[name] != v {
			t.Errorf("%s = %v, want %v", name, second[name], v)
		}
	}
	for _, name := range []string{"link.rssi_dbm", "security.secure_boot", "link.reconnects"} {
		if _, ok := second[name]; ok {
			t.Errorf("%s reported without its source", name)
		}
	}
}

func TestCollectorNothingToRead(t *testing.T) {
	c := agent.NewCollector(agent.CollectorOptions{Root: t.TempDir()})
	if b, err := c.Collect(context.Background(), time.Now()); err == nil {
		t.Errorf("collected %s from nothing", b)
	}
}

func TestCollectorDropsOutOfRange(t *testing.T) {
	root := fixtureRoot(t)
	os.WriteFile(filepath.Join(root, "sys/class/power_supply/BAT0/capacity"), []byte("140\n"), 0o644)
	b, err := agent.NewCollector(agent.CollectorOptions{Root: root}).Collect(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var p struct{ Metrics map[string]float64 }
	json.Unmarshal(b, &p)
	if _, ok := p.Metrics["battery.pct"]; ok {
		t.Errorf("battery.pct 140 %% was reported")
	}
}
