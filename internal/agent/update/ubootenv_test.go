package update_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
	"cradle/internal/testkit"
)

// ubootUnit is a unit running v1 whose boot environment is a file-backed
// U-Boot environment (two redundant copies) read and written by
// fw_printenv and fw_setenv; the bootloader simulator and the updater
// both go through it.
func (w *world) ubootUnit(v1 release) (*unit, *hw.UBootEnv) {
	t := w.t
	t.Helper()
	testkit.NeedProgram(t, "fw_printenv")
	testkit.NeedProgram(t, "fw_setenv")
	u := w.newUnit(v1)
	env, err := hw.CreateUBootEnvFiles(filepath.Join(t.TempDir(), "env"), 16<<10, true,
		map[string]string{hw.EnvBootSlot: "a", hw.EnvBootLimit: "3", "bootcmd": "run bootcmd_ab"})
	if err != nil {
		t.Fatal(err)
	}
	u.dev.BootEnv = env
	return u, env
}

// printenv runs fw_printenv itself on the environment.
func printenv(t *testing.T, env *hw.UBootEnv) map[string]string {
	t.Helper()
	out, err := exec.Command("fw_printenv", "-c", env.Config).CombinedOutput()
	if err != nil {
		t.Fatalf("fw_printenv: %v: %s", err, out)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	return vars
}

// simEnvUntouched checks that the simulated device's own boot environment
// file still says slot a: the A/B variables went through fw_setenv only.
func simEnvUntouched(t *testing.T, u *unit) {
	t.Helper()
	dev, err := hw.OpenSimDevice(u.devDir)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dev.BootEnv.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if env[hw.EnvBootSlot] != "a" || env[hw.EnvUpgradeAvailable] != "" {
		t.Fatalf("the simulated boot environment file changed: %v", env)
	}
}

// TestUpdateUBootEnvSuccess: a whole update over a U-Boot environment:
// installing sets boot_slot=b upgrade_available=1 bootcount=0 with
// fw_setenv, the simulated bootloader boots slot b from it, the commit
// clears upgrade_available; fw_printenv shows the result.
func TestUpdateUBootEnvSuccess(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u, env := w.ubootUnit(v1)
	var trialEnv map[string]string
	u.opts = func(o *update.Options) {
		o.Observe = func(s update.State) {
			if s.Phase == update.PhaseTrial {
				trialEnv = printenv(t, env)
			}
		}
	}
	w.offerOf(v2, 1)
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if trialEnv[hw.EnvBootSlot] != "b" || trialEnv[hw.EnvUpgradeAvailable] != "1" {
		t.Fatalf("during the trial fw_printenv shows %v", trialEnv)
	}
	got := printenv(t, env)
	if got[hw.EnvBootSlot] != "b" || got[hw.EnvUpgradeAvailable] != "0" || got[hw.EnvBootCount] != "0" ||
		got[hw.EnvBootLimit] != "3" || got["bootcmd"] != "run bootcmd_ab" {
		t.Fatalf("after the commit fw_printenv shows %v", got)
	}
	if slot, d := u.running(); slot != hw.SlotB || d != v2.digest() || u.antiRollback() != 2 {
		t.Fatalf("running %s %s, anti_rollback %d", slot, d, u.antiRollback())
	}
	simEnvUntouched(t, u)
	if err := u.boot(context.Background()); err != nil || u.lastBoot.Slot != hw.SlotB {
		t.Fatalf("next boot %v %+v", err, u.lastBoot)
	}
}

// TestUpdateUBootEnvRollback: the new image fails its health checks; the
// rollback points the U-Boot environment back at slot a.
func TestUpdateUBootEnvRollback(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u, env := w.ubootUnit(v1)
	u.opts = func(o *update.Options) {
		o.HealthTimeout = 3 * time.Second
		o.Liveness = func(context.Context) error { return errors.New("app crashed on start") }
	}
	w.offerOf(v2, 1)
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateFailed, "health check failed: agent liveness: app crashed on start")
	got := printenv(t, env)
	if got[hw.EnvBootSlot] != "a" || got[hw.EnvUpgradeAvailable] != "0" {
		t.Fatalf("after the rollback fw_printenv shows %v", got)
	}
	if slot, d := u.running(); slot != hw.SlotA || d != v1.digest() || u.antiRollback() != 0 {
		t.Fatalf("running %s %s, anti_rollback %d after a rollback", slot, d, u.antiRollback())
	}
	if got := w.lastSoftware(); got != v1.digest() {
		t.Fatalf("software reported %s, want v1", got)
	}
	simEnvUntouched(t, u)
}

// TestUpdateWaitsForRealBoot: with the boot id read from a (fake) proc
// file, an agent that comes back while the boot id is the one saved at
// installing (restarted, not rebooted) asks for the reboot again rather
// than take the old slot for the new one.
func TestUpdateWaitsForRealBoot(t *testing.T) {
	w := newWorld(t)
	v1, v2 := w.releases(64 << 10)
	w.publish(v1, nil)
	w.publish(v2, nil)
	u := w.newUnit(v1)
	bootID := filepath.Join(t.TempDir(), "boot_id")
	setID := func(id string) {
		if err := os.WriteFile(bootID, []byte(id+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setID("11111111-1111-4111-8111-111111111111")
	reboots := 0
	u.opts = func(o *update.Options) {
		o.BootID = update.FileBootID(bootID)
		o.Reboot = func(ctx context.Context) error {
			if reboots++; reboots == 1 {
				return nil // the agent was restarted before the reboot happened
			}
			setID("22222222-2222-4222-8222-222222222222")
			return u.boot(ctx)
		}
	}
	w.offerOf(v2, 1)
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	if reboots != 2 {
		t.Fatalf("%d reboots asked, want 2 (the first did not happen)", reboots)
	}
	if slot, d := u.running(); slot != hw.SlotB || d != v2.digest() {
		t.Fatalf("running %s %s", slot, d)
	}
}
