package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/ota"
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
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	l := newFactoryLine(t, 1, 1)
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	cli := func(args ...string) string { t.Helper(); return ok(t, append(args, srv...)...) }
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := buildAgent(t, ctx)

	// The update repository; its root goes into the station directory,
	// as `factory station enroll --update-root` puts it there.
	ok(t, "release", "repo", "init", "--data-dir", l.dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	root, err := os.ReadFile(filepath.Join(ota.RepositoryDir(l.dataDir, cradle.DefaultTenantName), "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.stationDir, "update-root.json"), root, 0o644); err != nil {
		t.Fatal(err)
	}

	// The image key and three images signed with it.
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := writeFile(t, dir, "image-key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	pubFile := writeFile(t, dir, "image-key.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})))
	image := func(version string, counter int) (string, string) {
		t.Helper()
		body := make([]byte, 192<<10)
		rand.Read(body)
		in := writeFile(t, dir, version+".bin", string(body))
		out := filepath.Join(dir, "sensor-x-"+version+".img")
		ok(t, "release", "sign-image", "--key", keyFile, "--version", version, "--security-counter", fmt.Sprint(counter), "--pad-header", in, out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		return out, hex.EncodeToString(sum[:])
	}
	v1, v1Hex := image("1.4.2", 1)
	v2, v2Hex := image("2.0.0", 2)
	v3, v3Hex := image("3.0.0", 3)

	// The factory release is v1; the unit is provisioned with it.
	relDir := t.TempDir()
	for name, src := range map[string]string{"firmware.img": v1, "image-key.pem": pubFile} {
		b, _ := os.ReadFile(src)
		writeFile(t, relDir, name, string(b))
	}
	writeFile(t, relDir, "bootloader.bin", "simulated bootloader\n")
	writeFile(t, relDir, "release.yaml", "model: sensor-x\nversion: 1.4.2\nprofile: test\nhardware_revisions: [C]\nimage: firmware.img\nbootloader: bootloader.bin\nimage_key: image-key.pem\n")
	unit := makeUnits(t, t.TempDir(), 1)[0]
	ok(t, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", relDir, "--operator", "ada", "--device", unit, "--json")
	const serial = "SX-2648-00001"
	dev, err := hw.OpenSimDevice(unit)
	if err != nil {
		t.Fatal(err)
	}
	files, _, err := dev.FactoryData.Read(ctx)
	if err != nil || string(files["update-root.json"]) != string(root) || !strings.Contains(string(files["device.json"]), `"model":"sensor-x"`) {
		t.Fatalf("factory data: update-root.json %d bytes, device.json %s (%v)", len(files["update-root.json"]), files["device.json"], err)
	}
	fuses, err := dev.Fuses.Read(ctx)
	if err != nil || fmt.Sprintf("%x", fuses[hw.FuseSecureBoot]) != "01" {
		t.Fatalf("secure_boot fuse %x (%v)", fuses[hw.FuseSecureBoot], err)
	}
	running := func() (hw.Slot, string) {
		t.Helper()
		env, err := dev.BootEnv.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s := hw.Slot(env[hw.EnvBootSlot])
		if s == "" {
			s = hw.SlotA
		}
		d, err := dev.Slots.Digest(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		return s, hex.EncodeToString(d[:])
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
	if s, d := running(); s != hw.SlotA || d != v1Hex {
		t.Fatalf("the new unit runs slot %s %s, want a %s", s, d, v1Hex)
	}

	// The agent, with a health hook that fails on 3.0.0.
	hook := writeFile(t, dir, "health.sh", "#!/bin/sh\nif [ \"$CRADLE_UPDATE_VERSION\" = 3.0.0 ]; then echo \"app crashed on $CRADLE_UPDATE_VERSION\" >&2; exit 1; fi\n")
	os.Chmod(hook, 0o755)
	state := t.TempDir()
	cfg := writeFile(t, t.TempDir(), "agent.yaml", fmt.Sprintf(`device: %s
state_dir: %s
server: %s
mqtt: {url: "mqtts://%s", retry_base: 200ms, retry_max: 1s}
update: {image_keys: [%s], poll_interval: 1h, health_hook: [%s], health_timeout: 2s}
log: {level: debug, format: json}
`, unit, state, l.m.device.Addr(), l.m.device.mqtt.Addr(), pubFile, hook))
	var logs lockedBuffer
	cmd := exec.CommandContext(ctx, bin, "run", "--config", cfg)
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 45 s for %s\nagent log:\n%s", what, lastLines(logs.String(), 40))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	broker := l.m.device.mqtt
	waitFor("the agent to enroll and connect over MQTT", func() bool { return broker.Sessions(inDefaultTenant(serial)) == 1 })

	// The server side: the image key, the releases, a rollout.
	cli("release", "key", "add", "--model", "sensor-x", pubFile, "--name", "build")
	upload := func(file, version string) *cradle.Release {
		t.Helper()
		return decodeJSON[*cradle.Release](t, cli("release", "upload", file, "--model", "sensor-x", "--version", version, "--sign", "--json"))
	}
	rel2 := upload(v2, "2.0.0")
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
	rolloutDevice := func(id string) cradle.RolloutDevice {
		t.Helper()
		devs := decodeJSON[struct{ Devices []cradle.RolloutDevice }](t, cli("rollout", "devices", id, "--json")).Devices
		if len(devs) != 1 || devs[0].Serial != serial {
			t.Fatalf("rollout %s devices %+v", id, devs)
		}
		return devs[0]
	}
	rolloutState := func(id string) cradle.RolloutState {
		t.Helper()
		return decodeJSON[cradle.Rollout](t, cli("rollout", "show", id, "--json")).Status.State
	}
	rollOut := func(rel *cradle.Release) string {
		t.Helper()
		ro := decodeJSON[cradle.Rollout](t, cli("rollout", "create", "--release", rel.ID, "--serials", serial, "--phases", "100%", "--failure-count", "1", "--json"))
		return ro.ID
	}
	start := time.Now()

	// Success: v2.
	ro2 := rollOut(rel2)
	waitFor("the notice of rollout "+ro2, func() bool {
		return strings.Contains(logs.String(), `"msg":"update notice","payload":"{\"rollout_id\":\"`+ro2)
	})
	waitFor("rollout "+ro2+" to complete", func() bool { return rolloutState(ro2) == cradle.RolloutCompleted })
	t.Logf("v2: rollout created to rollout completed in %v", time.Since(start).Round(time.Millisecond))
	if d := rolloutDevice(ro2); d.State != cradle.DeviceSucceeded {
		t.Fatalf("rollout %s device %+v, want succeeded", ro2, d)
	}
	waitFor("the software report of v2", func() bool {
		sw, err := updates.FindSoftware(admin, serial)
		return err == nil && sw.SHA256 == v2Hex && sw.ReleaseID == rel2.ID
	})
	if s, d := running(); s != hw.SlotB || d != v2Hex {
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
	rel3 := upload(v3, "3.0.0")
	start = time.Now()
	ro3 := rollOut(rel3)
	var failed cradle.RolloutDevice
	waitFor("the failure of rollout "+ro3, func() bool {
		failed = rolloutDevice(ro3)
		return failed.State == cradle.DeviceFailed
	})
	t.Logf("v3: rollout created to failure recorded in %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(failed.Reason, "health check failed") || !strings.Contains(failed.Reason, "app crashed on 3.0.0") {
		t.Errorf("rollout %s records the failure with reason %q, want the health hook's", ro3, failed.Reason)
	}
	if st := rolloutState(ro3); st == cradle.RolloutCompleted || st == cradle.RolloutRunning {
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
	if s, d := running(); s != hw.SlotB || d != v2Hex {
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

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("cradle-agent after SIGTERM: %v\n%s", err, lastLines(logs.String(), 20))
	}
}
