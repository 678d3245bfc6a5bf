package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

// TestCommandsEndToEnd: a unit provisioned by the station enrolls; the
// operator sends it signed commands with the CLI; the unit receives them
// over MQTT (pending ones when it subscribes, new ones as they are issued)
// and over HTTPS, verifies them against its factory root with the agent's
// executor, and reports; the results show in the CLI. The same envelope
// sent again is refused as a replay, and that refusal is stored too.
func TestCommandsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the server with a PKI and MQTT clients")
	}
	sub := testkit.NeedProgram(t, "mosquitto_sub")
	pub := testkit.NeedProgram(t, "mosquitto_pub")
	l := newFactoryLine(t, 2, 2)
	unit := provisionUnit(t, l)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	serial := "SX-2648-00001"

	// The unit enrolls with the agent's identity code.
	dev, err := hw.OpenSimDevice(unit)
	if err != nil {
		t.Fatal(err)
	}
	keys, closer, err := hw.OpenKeyStore(hw.KeyStoreSpec{}, dev)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	dev.Keys = keys
	state := t.TempDir()
	id, err := agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: state, ServerURL: l.m.device.Addr()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.Step(ctx, time.Now()); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	root, unitSerial, err := id.CommandTrust(ctx)
	if err != nil || unitSerial != serial {
		t.Fatalf("command trust: %q, %v", unitSerial, err)
	}
	seq, err := agent.OpenCommandSequence(state)
	if err != nil {
		t.Fatal(err)
	}

	// MQTT and HTTPS clients with the LDevID.
	tc, err := id.Certificate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ldevid.pem"), filepath.Join(unit, "keys", id.State().Current.KeyName+".key")
	os.WriteFile(certFile, []byte(id.State().Current.Chain), 0o600)
	tlsArgs := append(mosquittoArgs(l.m, l.dataDir, certFile, keyFile), "-q", "1")
	topic := "cradle/devices/" + serial
	roots := x509.NewCertPool()
	roots.AddCert(root)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{tc}}}}
	devURL := l.m.device.Addr()
	ex, err := agent.NewExecutor(agent.ExecutorOptions{Root: root, Serial: serial, Sequence: seq,
		Actions: agent.CommandActions{
			Reboot:      agent.SimulatedReboot(dev.BootEnv),
			CollectLogs: func(context.Context) ([]byte, error) { return []byte("boot ok\nlink up\n"), nil },
			UploadLogs: func(ctx context.Context, id string, logs []byte) error {
				return agent.PostCommandLogs(ctx, hc, devURL, id, logs)
			},
		}})
	if err != nil {
		t.Fatal(err)
	}

	// receive subscribes to the unit's commands topic and returns the
	// first n envelopes the server sends; started is closed once the
	// session is up.
	receive := func(n int, started chan<- struct{}) [][]byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, sub, append(tlsArgs, "-t", topic+"/commands", "-C", strconv.Itoa(n), "-W", "30")...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, testWriter{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if started != nil {
			for l.m.device.mqtt.Sessions(inDefaultTenant(serial)) == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond) // the SUBSCRIBE follows the CONNECT
			close(started)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("mosquitto_sub: %v", err)
		}
		var envs [][]byte
		for line := range strings.Lines(out.String()) {
			envs = append(envs, []byte(strings.TrimSuffix(line, "\n")))
		}
		return envs
	}
	report := func(result []byte) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, pub, append(tlsArgs, "-t", topic+"/commands/result", "-m", string(result))...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub the result: %v\n%s", err, out)
		}
	}
	show := func(id string) *cradle.DeviceCommand {
		t.Helper()
		var c cradle.DeviceCommand
		list := decodeJSON[commandList](t, ok(t, append([]string{"device", "commands", serial, "--json"}, srv...)...))
		for _, x := range list.Commands {
			if x.ID == id {
				c = *x
			}
		}
		if c.ID == "" {
			t.Fatalf("command %s is not listed", id)
		}
		return &c
	}
	waitState := func(id string, want cradle.CommandState, results int) *cradle.DeviceCommand {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c := show(id)
			if c.State == want && len(c.Results) == results {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("command %s: %s with %d results, want %s with %d", id, c.State, len(c.Results), want, results)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// 1. Issued while the unit is offline: pending, sent when it subscribes.
	ping := decodeJSON[cradle.DeviceCommand](t, ok(t, append([]string{"device", "command", serial, "ping", "--json"}, srv...)...))
	if ping.State != cradle.CommandPending || ping.Sequence != 1 {
		t.Fatalf("issued ping: %+v", ping)
	}
	envs := receive(1, nil)
	res := ex.Handle(ctx, envs[0])
	if !strings.Contains(string(res), `"status":"done"`) {
		t.Fatalf("ping result: %s", res)
	}
	report(res)
	done := waitState(ping.ID, cradle.CommandDone, 1)
	if done.DeliveredAt == nil || done.FinishedAt == nil {
		t.Fatalf("done ping: %+v", done)
	}

	// 2. Issued while the unit is subscribed: pushed at once.
	started := make(chan struct{})
	got := make(chan [][]byte, 1)
	go func() { got <- receive(1, started) }()
	<-started
	reboot := decodeJSON[cradle.DeviceCommand](t, ok(t, append([]string{"device", "command", serial, "reboot", "--json"}, srv...)...))
	var pushed [][]byte
	select {
	case pushed = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the reboot was not pushed to the subscribed unit")
	}
	report(ex.Handle(ctx, pushed[0]))
	waitState(reboot.ID, cradle.CommandDone, 1)
	if vars, _ := dev.BootEnv.Get(ctx); vars[agent.BootCountKey] != "1" {
		t.Errorf("bootcount %q after the reboot command, want 1", vars[agent.BootCountKey])
	}

	// 3. Over HTTPS, with the CLI waiting for the result.
	waited := make(chan cliResult, 1)
	go func() {
		waited <- cradleCLI(t, "", append([]string{"device", "command", serial, "ping", "--wait", "--poll", "50ms", "--json"}, srv...)...)
	}()
	var pending struct {
		Commands []json.RawMessage `json:"commands"`
	}
	for len(pending.Commands) == 0 {
		resp, err := hc.Get(devURL + "/device/v1/commands")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /device/v1/commands: %s", resp.Status)
		}
		json.NewDecoder(resp.Body).Decode(&pending)
		resp.Body.Close()
		time.Sleep(20 * time.Millisecond)
	}
	postResult := func(result []byte) int {
		t.Helper()
		resp, err := hc.Post(devURL+"/device/v1/commands/result", "application/json", bytes.NewReader(result))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := postResult(ex.Handle(ctx, pending.Commands[0])); st != http.StatusNoContent {
		t.Fatalf("POST the result: %d", st)
	}
	r := <-waited
	if r.code != 0 || !strings.Contains(r.stdout, `"state": "done"`) || !strings.Contains(r.stderr, "waiting for "+serial) {
		t.Fatalf("device command --wait: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// 4. The first envelope again: refused as a replay, the action not
	// run again, and the refusal stored with the command.
	replay := ex.Handle(ctx, envs[0])
	if !strings.Contains(string(replay), `"status":"refused"`) || !strings.Contains(string(replay), "replayed") || seq.Last() != 3 {
		t.Fatalf("replayed ping: %s (sequence %d)", replay, seq.Last())
	}
	report(replay)
	again := waitState(ping.ID, cradle.CommandDone, 2)
	if again.Results[1].Status != cradle.CommandRefused || !strings.Contains(again.Results[1].Error, "replayed") {
		t.Fatalf("stored replay refusal: %+v", again.Results[1])
	}
	table := ok(t, append([]string{"device", "commands", serial}, srv...)...)
	if !strings.Contains(table, "replayed") || strings.Count(table, "done") != 3 {
		t.Errorf("device commands table:\n%s", table)
	}

	// Upload-logs over HTTPS: the logs are stored with the command.
	up := decodeJSON[cradle.DeviceCommand](t, ok(t, append([]string{"device", "command", serial, "upload-logs", "--json"}, srv...)...))
	resp, err := hc.Get(devURL + "/device/v1/commands")
	if err != nil {
		t.Fatal(err)
	}
	pending.Commands = nil
	json.NewDecoder(resp.Body).Decode(&pending)
	resp.Body.Close()
	if len(pending.Commands) != 1 {
		t.Fatalf("pending over HTTPS: %d commands, want the upload-logs", len(pending.Commands))
	}
	if st := postResult(ex.Handle(ctx, pending.Commands[0])); st != http.StatusNoContent {
		t.Fatalf("POST the upload-logs result: %d", st)
	}
	if logs := ok(t, append([]string{"device", "commands", serial, "--logs", up.ID}, srv...)...); logs != "boot ok\nlink up\n" {
		t.Fatalf("uploaded logs: %q", logs)
	}
	waitState(up.ID, cradle.CommandDone, 1)

	// Bad input from the unit: malformed results are refused and counted,
	// the MQTT connection kept; over HTTPS they get a clear 400.
	report([]byte("not a result"))
	if st := postResult([]byte(`{"command_id":"cmd_x","sequence":1,"status":"done","at":"2026-01-01T00:00:00Z"}`)); st != http.StatusNotFound {
		t.Errorf("result for an unknown command: %d, want 404", st)
	}
	if st := postResult([]byte(`{"status":"maybe"}`)); st != http.StatusBadRequest {
		t.Errorf("malformed result: %d, want 400", st)
	}
	resp, err = http.Get(l.m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "cradle_command_results_refused_total 3") {
		t.Errorf("/metrics does not count the three refused results")
	}
}
