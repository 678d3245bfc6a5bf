package main

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// Two tenants each have a device SN-TWIN, enrolled with their own LDevID
// and connected over MQTT 5 with TLS and the same client identifier: each
// receives only its own desired configuration, command and update notice;
// telemetry is stored in the right tenant; revoking one disconnects only
// that one.
func TestMQTTTenantsWithTheSameSerialEndToEnd(t *testing.T) {
	sub := testkit.NeedProgram(t, "mosquitto_sub")
	pub := testkit.NeedProgram(t, "mosquitto_pub")
	s := startPKIServer(t, nil)
	m := s.m
	ctx := t.Context()
	const serial = "SN-TWIN"

	// The second tenant, its admin and factory tokens.
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test"))
	other, err := sqlstore.NewTenantService(m.db).CreateTenant(sys, "other")
	if err != nil {
		t.Fatal(err)
	}
	token := func(role string) []string {
		tok := decodeJSON[tokenCreated](t, ok(t, "token", "create", "--data-dir", s.dataDir, "--tenant", "other", "--role", role, "--name", "other-"+role, "--json"))
		return []string{"--server", m.Addr(), "--token", tok.Secret}
	}
	api2, line2 := token("admin"), token("factory")

	devs := []*enrolledDevice{enrollDevice(t, s, serial), enrollDeviceWith(t, s, line2, serial)}
	ids := []mqttapi.Device{inDefaultTenant(serial), {TenantID: other.ID, Serial: serial}}
	apis := [][]string{s.api, api2}
	if ids[0] == ids[1] {
		t.Fatalf("both tenants are %d", other.ID)
	}

	// Both connected, subscribed to their whole subtree.
	outs := make([]*syncBuf, 2)
	for i, d := range devs {
		outs[i] = &syncBuf{}
		cmd := exec.CommandContext(ctx, sub, append(mosquittoArgs(m, s.dataDir, d.chainFile, d.keyFile),
			"-i", "same-id", "-q", "1", "-v", "-t", "cradle/devices/"+serial+"/#")...)
		cmd.Stdout, cmd.Stderr = outs[i], testWriter{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("received by tenant 1's device:\n%s\nreceived by tenant %d's device:\n%s", outs[0].String(), other.ID, outs[1].String())
		}
	})
	waitUntil(t, 10*time.Second, "both devices' MQTT sessions", func() bool {
		return m.device.mqtt.Sessions(ids[0]) == 1 && m.device.mqtt.Sessions(ids[1]) == 1
	})
	time.Sleep(500 * time.Millisecond) // the SUBSCRIBE follows the CONNECT

	// A desired configuration and a command each, through the operator
	// API of each tenant.
	for i, api := range apis {
		doc := writeFile(t, t.TempDir(), "desired.json", `{"tenant":"`+[]string{"first", "second"}[i]+`"}`)
		ok(t, append([]string{"device", "config", "set", serial, "--file", doc}, api...)...)
	}
	ping := decodeJSON[cradle.DeviceCommand](t, ok(t, append([]string{"device", "command", serial, "ping", "--json"}, s.api...)...))
	reboot := decodeJSON[cradle.DeviceCommand](t, ok(t, append([]string{"device", "command", serial, "reboot", "--json"}, api2...)...))
	// An update notice for the first tenant's device only: a rollout of
	// a release of the first tenant.
	def := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	releases := sqlstore.NewReleaseService(m.db)
	rel, err := releases.CreateRelease(def, cradle.ReleaseCreate{Model: "gw-100", Version: "1.1.0", Kind: cradle.ReleaseFile,
		SHA256: strings.Repeat("ab", 32), Size: 1000, FileName: "app.bin", SecurityCounter: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rel, err = releases.MarkReleaseSigned(def, rel.ID, "gw-100/1.1.0/app.bin", nil); err != nil {
		t.Fatal(err)
	}
	ro, err := sqlstore.NewRolloutService(m.db).CreateRollout(def, cradle.RolloutSpec{ReleaseID: rel.ID,
		Target: cradle.RolloutTarget{Serials: []string{serial}}, Phases: []cradle.RolloutPhase{{Percent: 100}},
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	m.device.notifyUpdates(ctx, 1, []string{serial})
	m.device.notifyUpdates(ctx, other.ID, []string{serial}) // nothing pending there

	// Telemetry from each, over the same topic name.
	for i, d := range devs {
		out, err := exec.CommandContext(ctx, pub, append(mosquittoArgs(m, s.dataDir, d.chainFile, d.keyFile),
			"-q", "1", "-t", "cradle/devices/"+serial+"/telemetry", "-m", `{"metrics":{"health.cpu_pct":`+[]string{"11", "22"}[i]+`}}`)...).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
	}

	topic := func(suffix string) string { return mqttapi.DeviceTopic(serial, suffix) + " " }
	// Command envelopes carry the command in a base64 payload; received
	// returns the output with those payloads decoded too.
	received := func(i int) string {
		got := outs[i].String()
		for _, line := range strings.Split(got, "\n") {
			if env, ok := strings.CutPrefix(line, topic(mqttapi.TopicCommands)); ok {
				var e struct{ Payload []byte }
				if json.Unmarshal([]byte(env), &e) == nil {
					got += "\n" + string(e.Payload)
				}
			}
		}
		return got
	}
	wants := [][]string{
		{topic(mqttapi.TopicTwinDesired) + `{"version":1,"config":{"tenant":"first"}}`, topic(mqttapi.TopicCommands), `"id":"` + ping.ID + `"`, topic(mqttapi.TopicUpdate) + `{"rollout_id":"` + ro.ID + `"`},
		{topic(mqttapi.TopicTwinDesired) + `{"version":1,"config":{"tenant":"second"}}`, topic(mqttapi.TopicCommands), `"id":"` + reboot.ID + `"`},
	}
	nots := [][]string{{`"second"`, reboot.ID, `"health.cpu_pct":22`}, {`"first"`, ping.ID, ro.ID, topic(mqttapi.TopicUpdate), `"health.cpu_pct":11`}}
	for i := range devs {
		waitUntil(t, 10*time.Second, "tenant "+ids[i].String()+"'s messages", func() bool {
			got := received(i)
			return !slices.ContainsFunc(wants[i], func(w string) bool { return !strings.Contains(got, w) })
		})
	}
	// Each device's own telemetry came back to it (it is subscribed to
	// its subtree); the other's must not have.
	for i := range devs {
		waitUntil(t, 10*time.Second, "tenant "+ids[i].String()+"'s own telemetry", func() bool {
			return strings.Contains(outs[i].String(), `"health.cpu_pct":`+[]string{"11", "22"}[i]+`}`)
		})
		for _, n := range nots[i] {
			if strings.Contains(received(i), n) {
				t.Errorf("tenant %v's device received %q:\n%s", ids[i], n, outs[i].String())
			}
		}
	}

	// Telemetry is attributed to each device's own tenant.
	tel := sqlstore.NewTelemetryService(m.db)
	for i, tenant := range []int64{1, other.ID} {
		actor := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: tenant, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
		var got map[string]cradle.TelemetryPoint
		waitUntil(t, 10*time.Second, "telemetry stored", func() bool {
			got, err = tel.LatestTelemetry(actor, serial)
			if err != nil {
				t.Fatal(err)
			}
			return len(got) > 0
		})
		if want := []float64{11, 22}[i]; len(got) != 1 || got["health.cpu_pct"].Value != want {
			t.Errorf("tenant %d's telemetry of %s = %v, want health.cpu_pct %v", tenant, serial, got, want)
		}
	}

	// Revoking the second tenant's device closes its session only.
	ok(t, append([]string{"pki", "revoke", "--device", serial, "--reason", "keyCompromise"}, api2...)...)
	waitUntil(t, 5*time.Second, "the second tenant's session to close", func() bool { return m.device.mqtt.Sessions(ids[1]) == 0 })
	if n := m.device.mqtt.Sessions(ids[0]); n != 1 {
		t.Errorf("the first tenant's device has %d sessions after the second's was disconnected", n)
	}
}

// syncBuf is a strings.Builder safe for a process to write while a test
// reads.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
