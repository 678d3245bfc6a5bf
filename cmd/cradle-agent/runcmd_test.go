package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgentConfig: the example parses; bad configurations are refused by
// name.
func TestAgentConfig(t *testing.T) {
	b, err := os.ReadFile("agent.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := parseAgentConfig(b); err != nil || c.KeyStore.Kind != "file" || c.Server != "https://devices.example.com:8443" {
		t.Fatalf("example: %+v, %v", c, err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"device: d\nstate_dir: s\nserver: https://x\nbogus: 1\n", "field bogus not found"},
		{"state_dir: s\nserver: https://x\n", "device"},
		{"device: d\nserver: https://x\n", "state_dir"},
		{"device: d\nstate_dir: s\nserver: http://x\n", "https://"},
		{"device: d\nstate_dir: s\nserver: https://x\nlog: {level: loud}\n", "log.level"},
		{"device: d\nstate_dir: s\nserver: https://x\nmqtt: {url: \"mqtt://x:1883\"}\n", "mqtt.url"},
		{"device: d\nstate_dir: s\nserver: https://x\nmqtt: {version: \"3\"}\n", "mqtt.version"},
		{"device: d\nstate_dir: s\nserver: https://x\ntelemetry: {interval: 1ms}\n", "telemetry.interval"},
		{"device: d\nstate_dir: s\nserver: https://x\ntelemetry: {interval: soon}\n", "time.Duration"},
		{"device: d\nstate_dir: s\nserver: https://x\nspool: {max_bytes: -1}\n", "spool.max_bytes"},
		{"device: d\nstate_dir: s\nserver: https://x\nmqtt: {retry_base: 1m, retry_max: 1s}\n", "mqtt.retry_base"},
		{"device: d\nstate_dir: s\nserver: https://x\nmemory: {limit: 4194304}\n", "memory.limit 4194304 is below"},
		{"device: d\nstate_dir: s\nserver: https://x\nmemory: {limit: 8MiB}\n", "int64"},
	} {
		if _, err := parseAgentConfig([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// TestAgentConfigChannel: the MQTT address follows the server's host
// unless set; the spool lives in the state directory by default.
func TestAgentConfigChannel(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, addr string
		version          string
	}{
		{"derived", "", "devices.example.com:8883", "5"},
		{"explicit", "mqtt: {url: \"mqtts://broker.example.com:9883\", version: \"3.1.1\"}\n", "broker.example.com:9883", "3.1.1"},
		{"no port", "mqtt: {url: \"mqtts://broker.example.com\"}\n", "broker.example.com:8883", "5"},
		{"off", "mqtt: {url: \"off\"}\n", "", "5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseAgentConfig([]byte("device: d\nstate_dir: /s\nserver: https://devices.example.com:8443\n" + tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if c.mqttAddr != tc.addr || c.mqttVersion.String() != tc.version || c.Spool.Dir != "/s/spool" || c.Telemetry.Interval != time.Minute {
				t.Errorf("mqtt %q %s, spool %q, interval %s", c.mqttAddr, c.mqttVersion, c.Spool.Dir, c.Telemetry.Interval)
			}
		})
	}
}

// TestRunRefusesUnprovisionedUnit: a unit the factory never provisioned
// stops the agent with exit 1 and the reason, before any network traffic.
func TestRunRefusesUnprovisionedUnit(t *testing.T) {
	dir := t.TempDir()
	unit := filepath.Join(dir, "unit")
	var out bytes.Buffer
	if code := run([]string{"factory-init", "--device", unit}, &out, &out); code == 0 {
		t.Fatal("factory-init on a missing unit succeeded")
	}
	if err := os.MkdirAll(filepath.Join(unit, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(unit, "uid"), []byte("UID-1\n"), 0o600)
	os.WriteFile(filepath.Join(unit, "otp"), make([]byte, 46), 0o600)
	os.WriteFile(filepath.Join(unit, "bootenv"), nil, 0o600)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("device: "+unit+"\nstate_dir: "+filepath.Join(dir, "state")+"\nserver: https://127.0.0.1:1\n"), 0o600)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "--config", cfg}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "not provisioned") {
		t.Fatalf("run: exit %d, stderr %q", code, stderr.String())
	}
	if code := run([]string{"run"}, &stdout, &stderr); code != 2 {
		t.Errorf("run without --config: exit %d", code)
	}
}
