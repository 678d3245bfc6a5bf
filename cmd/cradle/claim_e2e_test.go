package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// TestClaimEndToEnd: zero-touch from the factory line to a claimed device.
// The station provisions a unit and prints its claim code (--json); the
// tenant quarantines unclaimed devices; the unit enrolls with its IDevID
// and lands in quarantine; a wrong code is refused and audited; the right
// one binds it to a site and owner and lifts the quarantine. Then its
// telemetry and status through the CLI, and a suspension that closes its
// live MQTT session at once.
func TestClaimEndToEnd(t *testing.T) {
	l := newFactoryLine(t, 2, 2)
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	cli := func(args ...string) string { t.Helper(); return ok(t, append(args, srv...)...) }

	if out := cli("policy", "set", "--quarantine-unclaimed=true"); !strings.Contains(out, "quarantine_unclaimed:  true") {
		t.Fatalf("policy set:\n%s", out)
	}

	specs := makeUnits(t, t.TempDir(), 1)
	events := parseEvents(t, ok(t, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release,
		"--operator", "ada", "--device", specs[0], "--json"))
	serial, code := events[0].Serial, events[0].ClaimCode
	if events[0].Status != cradle.UnitProvisioned || code == "" {
		t.Fatalf("the station's unit line: %+v; want a provisioned unit with a claim code", events[0])
	}
	if _, err := cradle.ParseClaimCode(code); err != nil {
		t.Fatalf("the station printed claim code %q: %v", code, err)
	}
	// The signed record, as the server keeps it, holds the code's hash
	// and not the code.
	trace := cli("device", "trace", serial, "--json")
	if !strings.Contains(trace, cradle.ClaimCodeHash(serial, code)) || strings.Contains(trace, code) || strings.Contains(trace, strings.ReplaceAll(code, "-", "")) {
		t.Fatalf("the trace of %s does not hold the claim code's hash alone:\n%s", serial, trace)
	}

	// The unit enrolls with its IDevID (as cradle-agent does) and, being
	// unclaimed, is quarantined.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dev, err := hw.OpenSimDevice(specs[0])
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	id, err := agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: stateDir, ServerURL: l.m.device.Addr()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; id.State().Status != agent.StatusEnrolled; i++ {
		if _, err := id.Step(ctx, time.Now()); err != nil || i > 3 {
			t.Fatalf("enrollment step %d: %v (status %s)", i, err, id.State().Status)
		}
	}
	d := decodeJSON[deviceDetail](t, cli("device", "show", serial, "--json"))
	if d.Device.State != cradle.StateDeployed || d.Device.Labels["quarantine"] != "true" {
		t.Fatalf("after enrollment: %s %v; want deployed and quarantined", d.Device.State, d.Device.Labels)
	}
	if out := cli("device", "list", "--selector", "quarantine=true"); !strings.Contains(out, serial) {
		t.Fatalf("the quarantine group does not list %s:\n%s", serial, out)
	}

	// A wrong code is refused, with a clear error, and audited.
	wrong, _ := cradle.NewClaimCode()
	res := fails(t, "does not match", append([]string{"device", "claim", serial, "--code", wrong, "--site", "plant-7"}, srv...)...)
	if !strings.Contains(res.stderr, "4 more wrong codes lock claiming it") {
		t.Errorf("the wrong code's error does not say what follows: %s", res.stderr)
	}
	fails(t, "the check symbol does not match", append([]string{"device", "claim", serial, "--code", code[:len(code)-1] + flip(code[len(code)-1]), "--site", "plant-7"}, srv...)...)
	// The right code, typed loosely: bound, out of quarantine, audited.
	claimed := decodeJSON[cradle.Device](t, cli("device", "claim", serial, "--code", strings.ToLower(strings.ReplaceAll(code, "-", " ")),
		"--site", "plant-7", "--owner", "acme-ops", "--json"))
	if claimed.Labels["site"] != "plant-7" || claimed.Labels["owner"] != "acme-ops" || claimed.Labels["quarantine"] != "" {
		t.Fatalf("claimed device labels: %v", claimed.Labels)
	}
	if out := cli("device", "list", "--selector", "quarantine=true"); strings.Contains(out, serial) {
		t.Errorf("%s is still in the quarantine group:\n%s", serial, out)
	}
	if out := cli("device", "show", serial); !strings.Contains(out, "owner=acme-ops") || !strings.Contains(out, "site=plant-7") {
		t.Errorf("device show does not show the claim:\n%s", out)
	}
	fails(t, "already claimed", append([]string{"device", "claim", serial, "--code", code, "--site", "plant-8"}, srv...)...)
	audit := cli("audit", "list", "--json")
	for _, action := range []string{`"device.quarantine"`, `"device.claim.refused"`, `"device.claim"`, `"policy.update"`} {
		if !strings.Contains(audit, action) {
			t.Errorf("the audit log has no %s entry", action)
		}
	}

	// Telemetry and status through the CLI.
	now := time.Now().UTC().Truncate(time.Second)
	var pts []cradle.TelemetryPoint
	for i := range 6 {
		pts = append(pts, cradle.TelemetryPoint{Metric: "health.cpu_pct", Time: now.Add(time.Duration(i-6) * 10 * time.Minute), Value: float64(10 + i)})
	}
	pts = append(pts, cradle.TelemetryPoint{Metric: "battery.pct", Time: now, Value: 7},
		cradle.TelemetryPoint{Metric: "security.secure_boot", Time: now, Value: 1},
		cradle.TelemetryPoint{Metric: "security.debug_locked", Time: now, Value: 1})
	// The default tenant is 1.
	asDevice := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: serial})
	if err := sqlstore.NewTelemetryService(l.m.db).RecordTelemetry(asDevice, serial, pts); err != nil {
		t.Fatal(err)
	}
	raw := cli("device", "telemetry", serial, "--metric", "health.cpu_pct", "--since", "2h")
	if rows := tableRows(raw); len(rows) != 7 || rows[1][1] != "10" || rows[6][1] != "15" || rows[6][2] != "%" {
		t.Errorf("raw telemetry table:\n%s", raw)
	}
	series := decodeJSON[httpapi.TelemetrySeries](t, cli("device", "telemetry", serial, "--metric", "health.cpu_pct", "--since", "2h", "--step", "1h", "--json"))
	var n int64
	for _, s := range series.Samples {
		n += s.Count
	}
	if n != 6 || series.Step != "1h0m0s" || len(series.Samples) == 0 || len(series.Samples) > 2 {
		t.Errorf("hourly telemetry: %+v", series)
	}
	status := cli("device", "status", serial)
	for _, want := range []string{"firmware:", "1.4.2 (factory)", "connection:", "online", "battery low:", "yes", "battery low: 7 %", "insecure:", "battery.pct", "health.cpu_pct"} {
		if !strings.Contains(status, want) {
			t.Errorf("device status does not say %q:\n%s", want, status)
		}
	}
	fails(t, "--metric is required", append([]string{"device", "telemetry", serial}, srv...)...)
	fails(t, "invalid --since", append([]string{"device", "telemetry", serial, "--metric", "health.cpu_pct", "--since", "yesterday"}, srv...)...)

	// A suspension closes the device's live MQTT session within a second.
	sub := testkit.NeedProgram(t, "mosquitto_sub")
	st := id.State()
	certFile := filepath.Join(t.TempDir(), "ldevid.pem")
	os.WriteFile(certFile, []byte(st.Current.Chain), 0o600)
	keyFile := filepath.Join(specs[0], "keys", st.Current.KeyName+".key")
	args := append(mosquittoArgs(l.m, l.dataDir, certFile, keyFile), "-t", "cradle/devices/"+serial+"/commands", "-q", "1")
	checkSessionClosed(ctx, t, l, sub, serial, args, "suspension", func() {
		cli("device", "transition", serial, "suspended", "--reason", "stolen")
	})
	if n := l.m.device.mqtt.Sessions(inDefaultTenant(serial)); n != 0 {
		t.Errorf("%d sessions of %s after the suspension", n, serial)
	}
}

// flip returns a claim check symbol other than c.
func flip(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}
