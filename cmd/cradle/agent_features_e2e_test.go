package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
)

// buildAgent builds the cradle-agent binary for a test.
func buildAgent(t *testing.T, ctx context.Context) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cradle-agent")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cradle-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build cradle-agent: %v\n%s", err, out)
	}
	return bin
}

// TestAgentRunAppliesConfigAndObeysCommands: the real cradle-agent binary
// on a provisioned unit enrolls, takes the desired configuration an
// operator sets (checked against the model's schema on the device, applied
// by a file handler and a hook), rejects an invalid one while keeping the
// running one, and carries out signed commands (ping, set-config, reboot)
// sent with the CLI, each reported done: once over MQTT, once with MQTT
// off, over the HTTPS device API alone.
func TestAgentRunAppliesConfigAndObeysCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	l := newFactoryLine(t, 2, 2)
	specs := makeUnits(t, t.TempDir(), 2)
	ok(t, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release, "--operator", "ada",
		"--device", specs[0], "--device", specs[1], "--json")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := buildAgent(t, ctx)
	t.Run("mqtt", func(t *testing.T) {
		agentConfigAndCommands(t, ctx, l, bin, specs[0], "SX-2648-00001", "mqtts://"+l.m.device.mqtt.Addr().String())
	})
	t.Run("https", func(t *testing.T) {
		agentConfigAndCommands(t, ctx, l, bin, specs[1], "SX-2648-00002", "off")
	})
}

func agentConfigAndCommands(t *testing.T, ctx context.Context, l *factoryLine, bin, unit, serial, mqttURL string) {
	dir := t.TempDir()
	schema := filepath.Join(dir, "schema.json")
	os.WriteFile(schema, []byte(`{"type":"object","properties":{"interval":{"type":"integer","minimum":1,"maximum":3600}},"required":["interval"]}`), 0o644)
	appConfig := filepath.Join(dir, "app.json")
	hookOut := filepath.Join(dir, "hook.out")
	hook := filepath.Join(dir, "reload.sh")
	os.WriteFile(hook, []byte("#!/bin/sh\necho \"$CRADLE_CONFIG_VERSION\" >> "+hookOut+"\n"), 0o755)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device: %s
state_dir: %s
server: %s
mqtt:
  url: %s
  retry_base: 100ms
  retry_max: 1s
telemetry:
  interval: 1s
config:
  schema: %s
  handlers:
    - file: %s
      mode: "0644"
    - hook: %s
      timeout: 10s
`, unit, t.TempDir(), l.m.device.Addr(), mqttURL, schema, appConfig, hook)), 0o600)
	cmd := exec.CommandContext(ctx, bin, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	waitUntil(t, 30*time.Second, "the agent is deployed", func() bool {
		d := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", serial, "--json"}, srv...)...))
		return d.Device.State == cradle.StateDeployed && (mqttURL == "off" || l.m.device.mqtt.Sessions(inDefaultTenant(serial)) > 0)
	})
	twinOf := func() cradle.Twin {
		return decodeJSON[cradle.Twin](t, ok(t, append([]string{"device", "config", "show", serial, "--json"}, srv...)...))
	}

	// A valid document: applied by both handlers, reported in sync.
	doc := filepath.Join(dir, "desired.json")
	os.WriteFile(doc, []byte(`{"interval": 30}`), 0o600)
	ok(t, append([]string{"device", "config", "set", serial, "--file", doc}, srv...)...)
	waitUntil(t, 20*time.Second, "the configuration in sync", func() bool { return twinOf().Drift == cradle.DriftInSync })
	if b, _ := os.ReadFile(appConfig); strings.TrimSpace(string(b)) != `{"interval":30}` {
		t.Errorf("the file handler wrote %q", b)
	}
	applied := twinOf().Desired.Version
	if b, _ := os.ReadFile(hookOut); strings.TrimSpace(string(b)) != fmt.Sprint(applied) {
		t.Errorf("the hook saw versions %q, want %d", b, applied)
	}

	// An invalid one (the schema on the device wants an integer): rejected
	// with the JSON pointer, the running configuration kept.
	os.WriteFile(doc, []byte(`{"interval": "fast"}`), 0o600)
	ok(t, append([]string{"device", "config", "set", serial, "--file", doc}, srv...)...)
	waitUntil(t, 20*time.Second, "the configuration rejected", func() bool { return twinOf().Drift == cradle.DriftRejected })
	if tw := twinOf(); !strings.Contains(tw.Reported.Error, "/interval") {
		t.Errorf("the rejection does not name the field: %+v", tw.Reported)
	}
	if b, _ := os.ReadFile(appConfig); strings.TrimSpace(string(b)) != `{"interval":30}` {
		t.Errorf("the rejected document reached the file: %q", b)
	}

	// Signed commands, each reported done (--wait says on stderr what it
	// waits for, and fails unless the command is done).
	send := func(args ...string) {
		t.Helper()
		r := cradleCLI(t, "", append(append([]string{"device", "command", serial}, args...), append([]string{"--wait", "--poll", "100ms"}, srv...)...)...)
		if r.code != 0 {
			t.Fatalf("device command %s: exit %d\n%s%s", args[0], r.code, r.stdout, r.stderr)
		}
	}
	send("ping")
	next := twinOf().Desired.Version + 1
	send("set-config", "--args", fmt.Sprintf(`{"version":%d,"config":{"interval":45}}`, next))
	if b, _ := os.ReadFile(appConfig); strings.TrimSpace(string(b)) != `{"interval":45}` {
		t.Errorf("set-config: the file handler wrote %q", b)
	}
	send("reboot")
	out := ok(t, append([]string{"device", "commands", serial, "--json"}, srv...)...)
	if n := strings.Count(out, `"state": "done"`) + strings.Count(out, `"state":"done"`); n != 3 {
		t.Errorf("want 3 commands done:\n%s", out)
	}
	if mqttURL == "off" && l.m.device.mqtt.Sessions(inDefaultTenant(serial)) != 0 {
		t.Errorf("the unit with MQTT off has an MQTT session")
	}
}

// waitUntil polls cond every 100 ms until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
