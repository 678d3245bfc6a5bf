package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
	"cradle/internal/sim"
	"cradle/internal/sqlstore"
)

// simServer is a real server on :0 with a test PKI (file keys), and what
// the simulator needs to set up its line.
type simServer struct {
	m       *Main
	dataDir string
	admin   string
	line    sim.LineConfig
}

func newSimServer(t *testing.T, units int) *simServer {
	t.Helper()
	isolateCLI(t)
	setPassphrase(t, pkiTestPassphrase)
	s := &simServer{dataDir: t.TempDir()}
	ok(t, "pki", "init", "--data-dir", s.dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1")
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.Device.Listen = s.dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.Device.MQTTListen = "127.0.0.1:0"
	var boot strings.Builder
	s.m = &Main{Config: cfg, Stdout: &boot, Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError}))}
	if err := s.m.Run(t.Context()); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { s.m.Close() })
	s.admin = tokenRE.FindStringSubmatch(boot.String())[1]
	h, keys, closeKeys, err := openPKI(t.Context(), s.dataDir, noPrompt(), pki.NameManufacturingCA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeKeys() })
	s.line = sim.LineConfig{API: s.m.Addr(), Token: s.admin, Root: h.Root, ManufacturingCA: h.ManufacturingCA,
		ManufacturingKey: keys[pki.NameManufacturingCA], CommandSigner: h.CommandSigner, Units: units, Org: "Acme"}
	return s
}

func (s *simServer) options() sim.Options {
	return sim.Options{ServerURL: s.m.device.Addr(), MQTTAddr: s.m.device.mqtt.Addr().String()}
}

// newSimFleet provisions n units through the simulator's line on s and
// enrolls them.
func newSimFleet(t *testing.T, ctx context.Context, s *simServer, n int) (*sim.Fleet, []string, sim.ProvisionReport, sim.EnrollReport) {
	t.Helper()
	dir := t.TempDir()
	line, err := sim.SetUpLine(ctx, dir, s.line)
	if err != nil {
		t.Fatal(err)
	}
	defer line.Close()
	prov, err := sim.Provision(ctx, line, filepath.Join(dir, "fleet"), nil)
	if err != nil || prov.OK != n || prov.Uploaded != n {
		t.Fatalf("provision: %+v, %v", prov, err)
	}
	f, err := sim.Open(ctx, filepath.Join(dir, "fleet"), s.options())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Devices) != n {
		t.Fatalf("the fleet has %d devices, want %d", len(f.Devices), n)
	}
	enr := f.Enroll(ctx, nil)
	if enr.Enrolled != n {
		t.Fatalf("enroll: %+v", enr)
	}
	return f, line.Batches, prov, enr
}

// storedTelemetry returns how many telemetry messages of each device the
// server stored: its points of battery.pct, which every simulated
// device's messages carry (one point per message; the store keeps a
// point once per time).
func storedTelemetry(t *testing.T, ctx context.Context, s *simServer, f *sim.Fleet) map[string]int64 {
	t.Helper()
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	svc := sqlstore.NewTelemetryService(s.m.db)
	out := map[string]int64{}
	for _, d := range f.Devices {
		samples, err := svc.QueryTelemetry(sys, cradle.TelemetryQuery{Serial: d.Serial, Metric: cradle.MetricBatteryPct})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range samples {
			out[d.Serial] += x.Count
		}
	}
	return out
}

// checkDelivered checks that the server stored what the devices say it
// acknowledged: at least TelemetrySent messages, at most those plus the
// ones still spooled (sent but unacknowledged when the run ended).
func checkDelivered(t *testing.T, rep sim.RunReport, stored map[string]int64) int64 {
	t.Helper()
	var total int64
	for _, n := range stored {
		total += n
	}
	if total < rep.TelemetrySent || total > rep.TelemetrySent+rep.Unsent {
		t.Errorf("the server stored %d telemetry messages; the devices had %d acknowledged and %d still spooled", total, rep.TelemetrySent, rep.Unsent)
	}
	return total
}

// TestSimFleet: 1,000 simulated devices (100 with -short), provisioned by
// real stations, enroll over EST, connect over MQTT with their LDevIDs,
// report telemetry that the server stores, and apply a configuration
// change: an operator sets a group config for their batches, and every
// device applies it and reports it (the server sees every twin in sync).
func TestSimFleet(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	began := time.Now()
	s := newSimServer(t, n)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	f, batches, prov, enr := newSimFleet(t, ctx, s, n)

	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	devs := sqlstore.NewDeviceService(s.m.db)
	for _, d := range f.Devices {
		got, err := devs.FindDeviceBySerial(sys, d.Serial)
		if err != nil || got.State != cradle.StateDeployed {
			t.Fatalf("%s on the server: %v, %v", d.Serial, got, err)
		}
	}

	// The run lasts until every device has applied the configuration (a
	// minute at most).
	done := make(chan struct{})
	type result struct {
		rep sim.RunReport
		err error
	}
	ran := make(chan result, 1)
	runStart := time.Now()
	go func() {
		rep, err := f.Run(ctx, sim.RunConfig{Scenario: sim.Steady, Duration: time.Minute, Interval: 2 * time.Second, Done: done})
		ran <- result{rep, err}
	}()
	// Devices connecting after the change get it when they subscribe,
	// those connected before get it pushed.
	time.Sleep(time.Second)
	api := httpapi.NewClient(s.m.Addr(), s.admin, &http.Client{})
	config := `{"mode":"eco","telemetry":{"interval_s":30}}`
	if _, err := api.PutConfigGroup(ctx, "sim-fleet", cradle.ConfigGroupPut{Selector: "batch in (" + strings.Join(batches, ",") + ")", Config: json.RawMessage(config)}); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	inSync := 0
	// 9.5 s on a quiet machine; 54 s was seen with the machine shared by other builds.
	for deadline := time.Now().Add(120 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if inSync = countTwins(t, ctx, api, cradle.DriftInSync); inSync == n {
			break
		}
	}
	applied := time.Since(changed)
	time.Sleep(2 * time.Second) // one more telemetry round with everyone connected
	close(done)
	r := <-ran
	if r.err != nil {
		t.Fatal(r.err)
	}
	rep := r.rep
	if inSync != n {
		t.Errorf("%d of %d devices in sync with the group config; drift: %v", inSync, n, driftCounts(t, ctx, api))
	}
	for _, d := range f.Devices {
		if b, err := os.ReadFile(d.ConfigFile()); err != nil || strings.TrimSpace(string(b)) != config {
			t.Errorf("%s runs %q (%v), want %s", d.Serial, b, err, config)
			break
		}
	}
	if rep.Connected != n || len(rep.Errors) > 0 {
		t.Errorf("%d of %d devices connected at the end; errors: %v", rep.Connected, n, rep.Errors)
	}
	if rep.ConfigApplied != n || rep.ConfigNotApplied != 0 {
		t.Errorf("the devices say the config is applied on %d and not on %d, want %d and 0", rep.ConfigApplied, rep.ConfigNotApplied, n)
	}
	stored := storedTelemetry(t, ctx, s, f)
	for _, d := range f.Devices {
		if stored[d.Serial] == 0 {
			t.Errorf("no telemetry stored for %s", d.Serial)
		}
	}
	total := checkDelivered(t, rep, stored)
	t.Logf("%d devices: provisioned in %s, enrolled in %s (p50 %s, p99 %s); run %s: %d connections, config change applied by all in %s (run started %s before it), %d telemetry messages acknowledged, %d stored; whole test %s",
		n, prov.Elapsed.Round(time.Millisecond), enr.Elapsed.Round(time.Millisecond), enr.P50.Round(time.Millisecond), enr.P99.Round(time.Millisecond),
		rep.Elapsed.Round(time.Millisecond), rep.Connections, applied.Round(time.Millisecond), changed.Sub(runStart).Round(time.Millisecond),
		rep.TelemetrySent, total, time.Since(began).Round(time.Millisecond))
}

// driftCounts counts the twins per drift state.
func driftCounts(t *testing.T, ctx context.Context, api *httpapi.Client) map[cradle.DriftState]int {
	t.Helper()
	out := map[cradle.DriftState]int{}
	for _, st := range cradle.DriftStates {
		if n := countTwins(t, ctx, api, st); n > 0 {
			out[st] = n
		}
	}
	return out
}

// countTwins counts the twins in drift state st, through the API.
func countTwins(t *testing.T, ctx context.Context, api *httpapi.Client, st cradle.DriftState) int {
	t.Helper()
	n, cursor := 0, ""
	for {
		page, next, err := api.FindTwins(ctx, cradle.TwinFilter{Drift: &st, Cursor: cursor, Limit: cradle.MaxPageSize})
		if err != nil {
			t.Fatal(err)
		}
		n += len(page)
		if next == "" {
			return n
		}
		cursor = next
	}
}

// TestSimScenarios: churn and offline on a small fleet. Devices whose
// link is pulled keep collecting into their spool and flush it when they
// are back: the server's series of every device has no hole.
func TestSimScenarios(t *testing.T) {
	const n = 30
	s := newSimServer(t, n)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	f, _, _, _ := newSimFleet(t, ctx, s, n)
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	svc := sqlstore.NewTelemetryService(s.m.db)
	const interval = 500 * time.Millisecond

	tests := []struct {
		name  string
		cfg   sim.RunConfig
		check func(t *testing.T, rep sim.RunReport)
	}{
		{"offline", sim.RunConfig{Scenario: sim.Offline, Duration: 9 * time.Second, OfflineShare: 0.5, OfflineFor: 3 * time.Second}, func(t *testing.T, rep sim.RunReport) {
			if rep.LinkDowns != n/2 {
				t.Errorf("%d devices went offline, want %d", rep.LinkDowns, n/2)
			}
			// Three seconds offline at two messages a second.
			if rep.Spooled < int64(n/2*5) {
				t.Errorf("%d messages spooled while offline, want at least %d", rep.Spooled, n/2*5)
			}
		}},
		{"churn", sim.RunConfig{Scenario: sim.Churn, Duration: 20 * time.Second, ChurnRate: 1}, func(t *testing.T, rep sim.RunReport) {
			if rep.LinkDowns == 0 || rep.Connections <= int64(n) {
				t.Errorf("churn: %d link cuts, %d connections for %d devices: nobody reconnected", rep.LinkDowns, rep.Connections, n)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Interval, tt.cfg.Seed = interval, 7
			before := storedTelemetry(t, ctx, s, f)
			start := time.Now()
			rep, err := f.Run(ctx, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Connected != n || len(rep.Errors) > 0 {
				t.Errorf("%d of %d devices connected at the end; errors: %v", rep.Connected, n, rep.Errors)
			}
			after := storedTelemetry(t, ctx, s, f)
			for serial, c := range before {
				after[serial] -= c
			}
			checkDelivered(t, rep, after)
			tt.check(t, rep)
			// No hole in any device's series: what was collected offline
			// reached the server afterwards.
			for _, d := range f.Devices {
				samples, err := svc.QueryTelemetry(sys, cradle.TelemetryQuery{Serial: d.Serial, Metric: cradle.MetricBatteryPct, From: start})
				if err != nil {
					t.Fatal(err)
				}
				prev := start
				for _, x := range samples {
					if gap := x.Time.Sub(prev); gap > 4*interval {
						t.Errorf("%s: no telemetry stored from %s to %s (%s)", d.Serial, prev.Format(time.StampMilli), x.Time.Format(time.StampMilli), gap)
					}
					prev = x.Time
				}
			}
			t.Logf("%+v", rep)
		})
	}
}

// TestSimCommand: cradle sim against a running server, as the help says:
// provision, enroll, a steady run, the JSON summary; a second run on the
// same directory provisions nothing and enrolls nobody again.
func TestSimCommand(t *testing.T) {
	s := newSimServer(t, 0)
	dir := filepath.Join(t.TempDir(), "fleet")
	args := []string{"sim", "--devices", "6", "--data-dir", s.dataDir, "--dir", dir, "--device-url", s.m.device.Addr(),
		"--mqtt", s.m.device.mqtt.Addr().String(), "--duration", "3s", "--interval", "500ms", "--json", "--server", s.m.Addr(), "--token", s.admin}
	first := decodeJSON[simSummary](t, ok(t, args...))
	if p := first.Provisioned; p == nil || p.OK != 6 || p.Uploaded != 6 {
		t.Errorf("provisioned: %+v", p)
	}
	if e := first.Enrolled; e.Enrolled != 6 || e.P50 <= 0 || e.P99 < e.P50 {
		t.Errorf("enrolled: %+v", e)
	}
	if r := first.Run; r == nil || r.Connected != 6 || r.TelemetrySent < 6 || len(r.Errors) > 0 {
		t.Errorf("run: %+v", r)
	}
	// Offline from 2 s to 3 s of 6 s: back well before the end.
	second := decodeJSON[simSummary](t, ok(t, append(args, "--scenario", "offline", "--duration", "6s", "--offline-for", "1s")...))
	if second.Provisioned != nil || second.Enrolled.Enrolled != 6 || second.Enrolled.P50 != 0 {
		t.Errorf("a second run provisioned or enrolled again: %+v", second)
	}
	if r := second.Run; r == nil || r.Scenario != "offline" || r.LinkDowns != 1 || r.Connected != 6 {
		t.Errorf("offline run: %+v", r)
	}

	for _, tt := range []struct {
		name, want string
		args       []string
	}{
		{"no devices", "--devices N is required", []string{"sim"}},
		{"scenario", `unknown scenario "storm"`, []string{"sim", "--devices", "1", "--scenario", "storm"}},
		{"device url", "invalid --device-url", []string{"sim", "--devices", "1", "--device-url", "http://x"}},
		{"no data dir", "--data-dir is required to provision 1 devices", []string{"sim", "--devices", "1", "--dir", t.TempDir()}},
	} {
		t.Run(tt.name, func(t *testing.T) { fails(t, tt.want, tt.args...) })
	}
}

// TestSimEnrollUnreachable: against a closed port every unit fails, says
// why, and Enroll gives up at its deadline; the same units enroll once
// the fleet is opened with the right address.
func TestSimEnrollUnreachable(t *testing.T) {
	const n = 3
	s := newSimServer(t, n)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	line, err := sim.SetUpLine(ctx, dir, s.line)
	if err != nil {
		t.Fatal(err)
	}
	defer line.Close()
	fleet := filepath.Join(dir, "fleet")
	if rep, err := sim.Provision(ctx, line, fleet, nil); err != nil || rep.OK != n {
		t.Fatalf("provision: %+v, %v", rep, err)
	}
	down, err := sim.Open(ctx, fleet, sim.Options{ServerURL: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	er := down.Enroll(dctx, nil)
	dcancel()
	if er.Enrolled != 0 || er.Failed != n || len(er.Errors) != n || !strings.Contains(er.Errors[0], "connection refused") || er.P50 != 0 {
		t.Errorf("enrolling against a closed port: %+v", er)
	}
	f, err := sim.Open(ctx, fleet, s.options())
	if err != nil {
		t.Fatal(err)
	}
	if er := f.Enroll(ctx, nil); er.Enrolled != n || er.P50 <= 0 {
		t.Errorf("enrolling against the server afterwards: %+v", er)
	}
}
