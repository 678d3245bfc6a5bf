package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// TestAgentRunEnrolls: a unit provisioned by the station, then the real
// cradle-agent binary run on it: it enrolls with its IDevID and the server
// sees the device deployed; SIGTERM stops it cleanly.
func TestAgentRunEnrolls(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	l := newFactoryLine(t, 2, 2)
	unit := provisionUnit(t, l)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := buildAgent(t, ctx)
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("device: %s\nstate_dir: %s\nserver: %s\n", unit, state, l.m.device.Addr())), 0o600)
	cmd := exec.CommandContext(ctx, bin, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	serial := "SX-2648-00001"
	deadline := time.Now().Add(30 * time.Second)
	for {
		d := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", serial, "--json"}, srv...)...))
		if d.Device.State == cradle.StateDeployed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not enroll within 30 s: device is %s", d.Device.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
	certs := ok(t, append([]string{"pki", "expiring", "--within", "3650d"}, srv...)...)
	if !strings.Contains(certs, serial) {
		t.Errorf("no LDevID for %s:\n%s", serial, certs)
	}
	// The server deploys the device before the agent confirms its
	// LDevID and saves "enrolled": wait for that before stopping it.
	waitUntil(t, 30*time.Second, "the agent's state enrolled", func() bool {
		b, _ := os.ReadFile(filepath.Join(state, "state.json"))
		return strings.Contains(string(b), `"enrolled"`)
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("cradle-agent after SIGTERM: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(state, "state.json"))
	if err != nil || !strings.Contains(string(b), `"enrolled"`) {
		t.Errorf("agent state: %s %v", b, err)
	}

	// MQTT with the LDevID the agent got: its own topics only, and the
	// live session is closed within a second of the revocation.
	var st struct {
		Current struct {
			KeyName string `json:"key_name"`
			Chain   string `json:"chain"`
		} `json:"current"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Current.KeyName == "" {
		t.Fatalf("agent state: %v", err)
	}
	sub := testkit.NeedProgram(t, "mosquitto_sub")
	pub := testkit.NeedProgram(t, "mosquitto_pub")
	dir := t.TempDir()
	certFile := filepath.Join(dir, "ldevid.pem")
	os.WriteFile(certFile, []byte(st.Current.Chain), 0o600)
	keyFile := filepath.Join(unit, "keys", st.Current.KeyName+".key")
	tlsArgs := mosquittoArgs(l.m, l.dataDir, certFile, keyFile)
	topic := "cradle/devices/" + serial
	if out, err := exec.CommandContext(ctx, pub, append(tlsArgs, "-t", topic+"/telemetry", "-m", `{"metrics":{"health.cpu_pct":3}}`, "-q", "1")...).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub to its own topic: %v\n%s", err, out)
	}
	// MQTT 5 answers a refused QoS 1 publish with "not authorized" in the
	// PUBACK, which mosquitto_pub does not turn into an exit status: the
	// broker's count and the audit log show the refusal.
	denied := l.m.device.mqtt.Stats().Denied
	exec.CommandContext(ctx, pub, append(tlsArgs, "-t", "cradle/devices/SX-2648-00002/telemetry", "-m", "x", "-q", "1")...).Run()
	if got := l.m.device.mqtt.Stats(); got.Denied != denied+1 || got.Messages != 1 {
		t.Errorf("broker stats after a publish to another device's topic: %+v", got)
	}
	// Malformed telemetry is refused and counted; the good point is stored.
	exec.CommandContext(ctx, pub, append(tlsArgs, "-t", topic+"/telemetry", "-m", "not json", "-q", "1")...).Run()
	resp, err := http.Get(l.m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "cradle_mqtt_telemetry_refused_total 1") {
		t.Errorf("/metrics does not count the refused telemetry")
	}
	latest, err := sqlstore.NewTelemetryService(l.m.db).LatestTelemetry(cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test")), serial)
	if err != nil || latest["health.cpu_pct"].Value != 3 {
		t.Errorf("stored telemetry: %v, %v", latest, err)
	}
	if audit := ok(t, append([]string{"audit", "list", "--json"}, srv...)...); !strings.Contains(audit, "mqtt.publish.refused") {
		t.Errorf("the refused publish is not in the audit log")
	}
	checkSessionClosed(ctx, t, l, sub, serial, append(tlsArgs, "-t", topic+"/commands", "-q", "1"), "revocation", func() {
		ok(t, append([]string{"pki", "revoke", "--device", serial, "--reason", "keyCompromise"}, srv...)...)
	})
}
