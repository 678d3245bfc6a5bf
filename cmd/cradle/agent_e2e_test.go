package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
)

// TestAgentRunEnrolls: a unit provisioned by the station, then the real
// cradle-agent binary run on it: it enrolls with its IDevID and the server
// sees the device deployed; SIGTERM stops it cleanly.
func TestAgentRunEnrolls(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	l := newFactoryLine(t, 2, 2)
	specs := makeUnits(t, t.TempDir(), 1)
	ok(t, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release, "--operator", "ada", "--device", specs[0], "--json")

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "cradle-agent")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cradle-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build cradle-agent: %v\n%s", err, out)
	}
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("device: %s\nstate_dir: %s\nserver: %s\n", specs[0], state, l.m.device.Addr())), 0o600)
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
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("cradle-agent after SIGTERM: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(state, "state.json"))
	if err != nil || !strings.Contains(string(b), `"enrolled"`) {
		t.Errorf("agent state: %s %v", b, err)
	}
}
