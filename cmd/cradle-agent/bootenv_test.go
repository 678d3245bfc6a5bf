package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

const baseConfig = "device: d\nstate_dir: s\nserver: https://x\n"

// TestAgentConfigBootEnv: the boot environment and reboot back ends of the
// update section: defaults, a U-Boot environment whose fw_env.config is
// checked when the configuration is read, and refusals by field.
func TestAgentConfigBootEnv(t *testing.T) {
	dir := t.TempDir()
	env, err := hw.CreateUBootEnvFiles(filepath.Join(dir, "env"), 8<<10, true, map[string]string{hw.EnvBootSlot: "a"})
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.config")
	if err := os.WriteFile(garbage, []byte("/dev/mtd0 zero 0x1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	c, err := parseAgentConfig([]byte(baseConfig))
	if err != nil || c.Update.BootEnv != "sim" || c.Update.Reboot != "sim" {
		t.Fatalf("defaults: %+v, %v", c.Update, err)
	}
	c, err = parseAgentConfig([]byte(baseConfig + "commands: {reboot: [systemctl, reboot]}\nupdate: {boot_env: uboot, fw_env_config: " + env.Config + ", reboot: command}\n"))
	if err != nil || c.Update.BootEnv != "uboot" || c.Update.FWEnvConfig != env.Config || c.Update.Reboot != "command" {
		t.Fatalf("uboot: %+v, %v", c.Update, err)
	}

	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown back end", "update: {boot_env: grub}\n", `update.boot_env "grub"`},
		{"uboot without a config", "update: {boot_env: uboot}\n", "update.fw_env_config (the fw_env.config file) is required"},
		{"config without uboot", "update: {fw_env_config: " + env.Config + "}\n", "update.fw_env_config is only used with update.boot_env uboot"},
		{"missing config", "update: {boot_env: uboot, fw_env_config: " + filepath.Join(dir, "none") + "}\n", "update.fw_env_config: open"},
		{"bad config", "update: {boot_env: uboot, fw_env_config: " + garbage + "}\n", "update.fw_env_config " + garbage},
		{"unknown reboot", "update: {reboot: kexec}\n", `update.reboot "kexec"`},
		{"reboot command without one", "update: {reboot: command}\n", "update.reboot command needs commands.reboot"},
		{"boot id with a simulated reboot", "update: {boot_id_file: /tmp/x}\n", "update.boot_id_file is only used with update.reboot command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseAgentConfig([]byte(baseConfig + tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}

// TestOpenBootEnvUBoot: with boot_env uboot the unit's boot environment is
// the U-Boot one: a change made through it is what fw_printenv prints, and
// the simulated file is left alone; the simulated reboot (the bootloader
// simulator) reads and writes it too.
func TestOpenBootEnvUBoot(t *testing.T) {
	testkit.NeedProgram(t, "fw_printenv")
	testkit.NeedProgram(t, "fw_setenv")
	dir := t.TempDir()
	env, err := hw.CreateUBootEnvFiles(filepath.Join(dir, "env"), 8<<10, true, map[string]string{hw.EnvBootSlot: "a"})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := hw.CreateSimDevice(filepath.Join(dir, "dev"), "uid-1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseAgentConfig([]byte("device: " + filepath.Join(dir, "dev") + "\nstate_dir: " + filepath.Join(dir, "state") +
		"\nserver: https://x\nupdate: {boot_env: uboot, fw_env_config: " + env.Config + "}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	openBootEnv(cfg, dev)
	ctx := context.Background()
	if err := dev.BootEnv.Set(ctx, map[string]string{hw.EnvUpgradeAvailable: "1"}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("fw_printenv", "-c", env.Config, hw.EnvUpgradeAvailable).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "upgrade_available=1" {
		t.Fatalf("fw_printenv: %q %v", out, err)
	}
	if simEnv, err := dev.Sim.Get(ctx); err != nil || simEnv[hw.EnvUpgradeAvailable] != "" {
		t.Fatalf("the simulated boot environment: %v %v", simEnv, err)
	}
	// Both slots are empty: the bootloader simulator reads boot_slot a
	// through fw_printenv and reports the unit bricked.
	reboot, bootID := updateReboot(cfg, dev, nil)
	if bootID != nil {
		t.Fatal("a simulated reboot has a boot id")
	}
	if err := reboot(ctx); err == nil || !strings.Contains(err.Error(), "simulated boot") {
		t.Fatalf("simulated boot of empty slots: %v", err)
	}
}

// TestUpdateRebootCommand: with reboot command the updater's reboot runs
// commands.reboot and waits to be taken down; a failing command is an
// error at once; the boot id comes from update.boot_id_file.
func TestUpdateRebootCommand(t *testing.T) {
	dir := t.TempDir()
	idFile := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(idFile, []byte("3d5f1c3e-8a1b-4c2d-9e0f-112233445566\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(dir, "rebooted")
	cfg, err := parseAgentConfig([]byte(baseConfig + "commands: {reboot: [touch, " + mark + "]}\nupdate: {reboot: command, boot_id_file: " + idFile + "}\n"))
	if err != nil {
		t.Fatal(err)
	}
	reboot, bootID := updateReboot(cfg, nil, nil)
	if got := bootID(); got != "3d5f1c3e-8a1b-4c2d-9e0f-112233445566" {
		t.Fatalf("boot id %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := reboot(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reboot returned %v before the agent was stopped", err)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Fatalf("the reboot command did not run: %v", err)
	}
	cfg.Commands.Reboot = []string{"false"}
	reboot, _ = updateReboot(cfg, nil, nil)
	if err := reboot(context.Background()); err == nil || !strings.Contains(err.Error(), "reboot command [false]") {
		t.Fatalf("failing reboot command: %v", err)
	}
}
