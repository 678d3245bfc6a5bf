package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/agent"
)

// TestRunRefusesDecommissioned: on a unit a wipe marked decommissioned,
// run exits with exitDecommissioned and says why, and erases what a power
// cut after the marker left in the state directory.
func TestRunRefusesDecommissioned(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	os.WriteFile(filepath.Join(state, agent.DecommissionedFile), []byte(`{"serial":"SN-1","command_id":"cmd_9","at":"2026-05-01T12:00:00Z"}`+"\n"), 0o600)
	os.WriteFile(filepath.Join(state, agent.StateFile), []byte(`{"version":1}`), 0o600)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("device: "+filepath.Join(dir, "unit")+"\nstate_dir: "+state+"\nserver: https://127.0.0.1:1\n"), 0o600)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "--config", cfg}, &stdout, &stderr); code != exitDecommissioned {
		t.Fatalf("exit %d, want %d; stderr: %s", code, exitDecommissioned, stderr.String())
	}
	if msg := stderr.String(); !strings.Contains(msg, "wiped on 2026-05-01T12:00:00Z") || !strings.Contains(msg, `"cmd_9"`) || !strings.Contains(msg, "decommissioned") {
		t.Errorf("message: %s", msg)
	}
	if _, err := os.Stat(filepath.Join(state, agent.StateFile)); !os.IsNotExist(err) {
		t.Errorf("the state file survived: %v", err)
	}
}
