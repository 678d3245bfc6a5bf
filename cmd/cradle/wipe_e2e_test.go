package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
)

// TestAgentWipeEndToEnd: the real cradle-agent binary on a unit the
// station provisioned enrolls and connects over MQTT, with a config file
// its twin handler writes. An admin decommissions the device: the server
// revokes it and closes its session; the agent, back over HTTPS, gets the
// signed wipe command, posts its tombstone signed with its LDevID key,
// destroys its keys, erases its files, sets the lifecycle fuse word to eol
// and exits with status 3. The server's record is confirmed with that
// tombstone, and the decommissioning certificate lists the revocations and
// the confirmation. Started again, the agent refuses to run. The
// operator works through the CLI (cradle device decommission …).
func TestAgentWipeEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	l := newFactoryLine(t, 2, 2)
	unit := provisionUnit(t, l)
	serial := "SX-2648-00001"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := buildAgent(t, ctx)
	state := t.TempDir()
	appConfig := filepath.Join(t.TempDir(), "app.json")
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device: %s
state_dir: %s
server: %s
mqtt:
  url: mqtts://%s
  retry_base: 200ms
  retry_max: 1s
telemetry:
  interval: 300ms
config:
  handlers:
    - file: %s
`, unit, state, l.m.device.Addr(), l.m.device.mqtt.Addr().String(), appConfig)), 0o600)
	var stderr lockedBuffer
	cmd := exec.CommandContext(ctx, bin, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = testWriter{t}, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	waitUntil(t, 30*time.Second, "the agent enrolled and on MQTT", func() bool {
		d := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", serial, "--json"}, srv...)...))
		return d.Device.State == cradle.StateDeployed && l.m.device.mqtt.Sessions(inDefaultTenant(serial)) > 0
	})
	doc := filepath.Join(t.TempDir(), "desired.json")
	os.WriteFile(doc, []byte(`{"interval": 30}`), 0o600)
	ok(t, append([]string{"device", "config", "set", serial, "--file", doc}, srv...)...)
	waitUntil(t, 30*time.Second, "the config file written", func() bool {
		_, err := os.Stat(appConfig)
		return err == nil
	})

	x := decodeJSON[cradle.Decommission](t, ok(t, append([]string{"device", "decommission", serial, "--reason", "end of service", "--json"}, srv...)...))
	if x.State != cradle.DecommissionWiping {
		t.Fatalf("decommissioning: %+v", x)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("cradle-agent after the wipe: %v, want exit status 3\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the agent did not wipe itself within 60 s\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "tombstone delivered") {
		t.Errorf("the agent's log does not say the tombstone was delivered:\n%s", stderr.String())
	}

	// The server: confirmed by the tombstone, which names what the unit erased.
	rec := decodeJSON[cradle.Decommission](t, ok(t, append([]string{"device", "decommission", "show", serial, "--json"}, srv...)...))
	if rec.State != cradle.DecommissionConfirmed || rec.ConfirmedAt == nil || rec.Tombstone == nil {
		t.Fatalf("decommissioning after the wipe: %+v", rec)
	}
	for _, o := range []cradle.ErasedObject{
		{Store: "file", Kind: "key", Name: agent.DefaultKeyName},
		{Store: "file", Kind: "key", Name: "ldevid-1"},
		{Store: "state", Kind: "secret", Name: agent.StateFile},
		{Store: "state", Kind: "config", Name: appConfig},
	} {
		if !slices.Contains(rec.Tombstone.Erased, o) {
			t.Errorf("the tombstone does not list %+v: %+v", o, rec.Tombstone.Erased)
		}
	}
	certFile := filepath.Join(t.TempDir(), "cert.json")
	ok(t, append([]string{"device", "decommission", "certificate", serial, "-o", certFile}, srv...)...)
	cert := decodeJSON[cradle.DecommissionCertificate](t, string(mustRead(t, certFile)))
	if err := cert.Verify(l.m.db.AuditPublicKey()); err != nil {
		t.Fatalf("certificate signature: %v", err)
	}
	kinds := map[string]bool{}
	for _, r := range cert.Decommission.Revoked {
		kinds[r.Kind] = true
	}
	if !kinds["certificate:idevid"] || !kinds["certificate:ldevid"] || cert.Decommission.ConfirmedAt == nil || cert.Decommission.State != cradle.DecommissionConfirmed {
		t.Errorf("certificate: revoked %+v, confirmed at %v, state %s", cert.Decommission.Revoked, cert.Decommission.ConfirmedAt, cert.Decommission.State)
	}

	// The unit: no key, no file, eol fuses.
	if ents, _ := os.ReadDir(filepath.Join(unit, "keys")); len(ents) != 0 {
		t.Errorf("keys left in the unit: %v", ents)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 1 || ents[0].Name() != agent.DecommissionedFile {
		t.Errorf("state directory after the wipe: %v", ents)
	}
	if _, err := os.Stat(appConfig); !os.IsNotExist(err) {
		t.Errorf("the config file survived the wipe: %v", err)
	}
	dev, err := hw.OpenSimDevice(unit)
	if err != nil {
		t.Fatal(err)
	}
	fuses, err := dev.Fuses.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := hw.ParseLifecycle(fuses[hw.FuseLifecycle]); l != hw.LifecycleEOL {
		t.Errorf("lifecycle fuse word %s, %v; want eol", l, err)
	}

	// Run again: refused.
	var out bytes.Buffer
	again := exec.CommandContext(ctx, bin, "run", "--config", cfg)
	again.Stdout, again.Stderr = &out, &out
	err = again.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out.String(), "cannot run the agent or enroll again") {
		t.Errorf("cradle-agent run on the wiped unit: %v\n%s", err, out.String())
	}
}
