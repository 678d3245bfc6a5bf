package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/sqlstore"
)

// TestAgentUpdateEndToEnd: a whole A/B update of a simulated unit through
// the real server, on the success and the rollback path.
//
// The server has a PKI and a TUF repository (cradle release repo init);
// the station puts the repository's root into every unit's factory data,
// next to device.json; the unit is provisioned with v1 (an MCUboot image
// signed by the image key) in slot a, the image key's hash in its fuses
// and secure boot on. The real cradle-agent runs on it with the updater.
// v2 is uploaded, signed into the repository and rolled out: the agent
// learns of it from the MQTT notice (it polls only hourly), downloads it
// through the signed URL into slot b, reboots through the bootloader
// simulator, passes its health checks and commits: the rollout completes,
// the server's software record of the unit is v2, the anti_rollback fuse
// reads 2. Then v3, which the unit's health hook fails: the agent rolls
// back to v2, the rollout records the failure with the reason, and the
// server's software record still says v2.
func TestAgentUpdateEndToEnd(t *testing.T) {
	u := newUpdateUnit(t, 192<<10)
	l, ctx, dev, serial, v1Hex := u.l, u.ctx, u.dev, u.serial, u.v1Hex

	// Two more images signed with the image key.
	v2, v2Hex := u.image(t, "2.0.0", 2)
	v3, v3Hex := u.image(t, "3.0.0", 3)

	files, _, err := dev.FactoryData.Read(ctx)
	if err != nil || string(files["update-root.json"]) != string(u.root) || !strings.Contains(string(files["device.json"]), `"model":"sensor-x"`) {
		t.Fatalf("factory data: update-root.json %d bytes, device.json %s (%v)", len(files["update-root.json"]), files["device.json"], err)
	}
	fuses, err := dev.Fuses.Read(ctx)
	if err != nil || fmt.Sprintf("%x", fuses[hw.FuseSecureBoot]) != "01" {
		t.Fatalf("secure_boot fuse %x (%v)", fuses[hw.FuseSecureBoot], err)
	}
	antiRollback := func() int {
		t.Helper()
		f, err := dev.Fuses.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n, err := hw.ThermometerCount(f[hw.FuseAntiRollback])
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if s, d := u.running(t); s != hw.SlotA || d != v1Hex {
		t.Fatalf("the new unit runs slot %s %s, want a %s", s, d, v1Hex)
	}

	// The agent, with a health hook that fails on 3.0.0.
	hook := writeFile(t, u.dir, "health.sh", "#!/bin/sh\nif [ \"$CRADLE_UPDATE_VERSION\" = 3.0.0 ]; then echo \"app crashed on $CRADLE_UPDATE_VERSION\" >&2; exit 1; fi\n")
	os.Chmod(hook, 0o755)
	a := u.startAgent(t, "poll_interval: 1h, health_hook: ["+hook+"], health_timeout: 2s")
	logs, state, waitFor := a.logs, a.state, func(what string, cond func() bool) { t.Helper(); a.waitFor(t, what, cond) }
	broker := l.m.device.mqtt
	waitFor("the agent to enroll and connect over MQTT", func() bool { return broker.Sessions(inDefaultTenant(serial)) == 1 })

	// The server side: the image key, the releases, a rollout.
	u.cli(t, "release", "key", "add", "--model", "sensor-x", u.pubFile, "--name", "build")
	rel2 := u.upload(t, v2, "2.0.0")
	if rel2.SHA256 != v2Hex || rel2.SecurityCounter != 2 || rel2.State != cradle.ReleaseSigned {
		t.Fatalf("release v2 %+v", rel2)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test"))
	def, err := sqlstore.NewTenantService(l.m.db).FindTenantByName(sys, cradle.DefaultTenantName)
	if err != nil {
		t.Fatal(err)
	}
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: def.ID, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	updates := sqlstore.NewUpdateService(l.m.db)
	start := time.Now()

	// Success: v2.
	ro2 := u.rollOut(t, rel2)
	waitFor("the notice of rollout "+ro2, func() bool {
		return strings.Contains(logs.String(), `"msg":"update notice","payload":"{\"rollout_id\":\"`+ro2)
	})
	waitFor("rollout "+ro2+" to complete", func() bool { return u.rolloutState(t, ro2) == cradle.RolloutCompleted })
	t.Logf("v2: rollout created to rollout completed in %v", time.Since(start).Round(time.Millisecond))
	if d := u.rolloutDevice(t, ro2); d.State != cradle.DeviceSucceeded {
		t.Fatalf("rollout %s device %+v, want succeeded", ro2, d)
	}
	waitFor("the software report of v2", func() bool {
		sw, err := updates.FindSoftware(admin, serial)
		return err == nil && sw.SHA256 == v2Hex && sw.ReleaseID == rel2.ID
	})
	if s, d := u.running(t); s != hw.SlotB || d != v2Hex {
		t.Fatalf("after v2 the unit runs slot %s %s, want b %s", s, d, v2Hex)
	}
	if env, _ := dev.BootEnv.Get(ctx); env[hw.EnvUpgradeAvailable] == "1" {
		t.Fatalf("v2 not committed: boot environment %v", env)
	}
	if n := antiRollback(); n != 2 {
		t.Fatalf("anti_rollback fuse counts %d after v2, want 2", n)
	}
	for _, want := range []string{`"msg":"update offered"`, `"msg":"update installed; rebooting"`, `"msg":"update committed"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the agent did not log %s", want)
		}
	}

	// Rollback: v3 fails its health hook.
	rel3 := u.upload(t, v3, "3.0.0")
	start = time.Now()
	ro3 := u.rollOut(t, rel3)
	var failed cradle.RolloutDevice
	waitFor("the failure of rollout "+ro3, func() bool {
		failed = u.rolloutDevice(t, ro3)
		return failed.State == cradle.DeviceFailed
	})
	t.Logf("v3: rollout created to failure recorded in %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(failed.Reason, "health check failed") || !strings.Contains(failed.Reason, "app crashed on 3.0.0") {
		t.Errorf("rollout %s records the failure with reason %q, want the health hook's", ro3, failed.Reason)
	}
	if st := u.rolloutState(t, ro3); st == cradle.RolloutCompleted || st == cradle.RolloutRunning {
		t.Errorf("rollout %s is %s after its only device failed with a failure count of 1", ro3, st)
	}
	waitFor("the unit back on v2 and idle", func() bool {
		b, _ := os.ReadFile(filepath.Join(state, "update", "update.json"))
		var st struct{ Phase string }
		json.Unmarshal(b, &st)
		return st.Phase == "idle" && strings.Contains(logs.String(), `"outcome":"failed"`)
	})
	sw, err := updates.FindSoftware(admin, serial)
	if err != nil || sw.SHA256 != v2Hex || sw.ReleaseID != rel2.ID {
		t.Fatalf("the server's software record after the rollback: %+v, %v; want v2 %s", sw, err, v2Hex)
	}
	if s, d := u.running(t); s != hw.SlotB || d != v2Hex {
		t.Fatalf("after the rollback the unit runs slot %s %s, want b %s", s, d, v2Hex)
	}
	if d, err := dev.Slots.Digest(ctx, hw.SlotA); err != nil || hex.EncodeToString(d[:]) != v3Hex {
		t.Errorf("slot a holds %x (%v), want the refused v3 %s", d, err, v3Hex)
	}
	if env, _ := dev.BootEnv.Get(ctx); env[hw.EnvUpgradeAvailable] == "1" {
		t.Fatalf("still on trial after the rollback: boot environment %v", env)
	}
	if n := antiRollback(); n != 2 {
		t.Fatalf("anti_rollback fuse counts %d after the failed v3, want 2", n)
	}

	a.stop(t)
}
