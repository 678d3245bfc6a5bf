package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/spool"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
)

// tcpProxy forwards connections to a target while it is up; while down
// it closes every connection at once, like a link that drops.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  map[net.Conn]bool
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, up: true, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.setUp(false) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

// track registers c while the proxy is up.
func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.up {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *tcpProxy) serve(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(up) {
		c.Close()
		if up != nil {
			up.Close()
		}
		return
	}
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

func (p *tcpProxy) setUp(up bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.up = up
	if !up {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// lockedBuffer collects a process's output for reading while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAgentRuntimeChannels: the real cradle-agent enrolls, sends telemetry
// over MQTT; with the broker unreachable it sends over HTTPS; with the
// server unreachable it spools; when the server is back the spool drains
// over MQTT again and the reconnection is counted. Every collection the
// agent logged is stored or still in its spool: none is lost. Then the
// agent runs again with MQTT 3.1.1.
func TestAgentRuntimeChannels(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	l := newFactoryLine(t, 1, 1)
	unit := provisionUnit(t, l)
	serial := "SX-2648-00001"

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "cradle-agent")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cradle-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build cradle-agent: %v\n%s", err, out)
	}
	httpsProxy := newTCPProxy(t, strings.TrimPrefix(l.m.device.Addr(), "https://"))
	mqttProxy := newTCPProxy(t, l.m.device.mqtt.Addr().String())
	state := t.TempDir()
	spoolDir := filepath.Join(state, "spool")
	writeConfig := func(version string) string {
		cfg := filepath.Join(t.TempDir(), "agent.yaml")
		os.WriteFile(cfg, fmt.Appendf(nil, `device: %s
state_dir: %s
server: https://%s
mqtt: {url: "mqtts://%s", version: "%s", retry_base: 200ms, retry_max: 1s}
telemetry: {interval: 250ms}
log: {level: debug, format: json}
`, unit, state, httpsProxy.addr(), mqttProxy.addr(), version), 0o600)
		return cfg
	}
	var logs lockedBuffer
	start := func(version string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, "run", "--config", writeConfig(version))
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("cradle-agent after SIGTERM: %v\n%s", err, logs.String())
		}
	}
	store := sqlstore.NewTelemetryService(l.m.db)
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	stored := func() map[time.Time]bool {
		samples, err := store.QueryTelemetry(sys, cradle.TelemetryQuery{Serial: serial, Metric: "link.reconnects"})
		if err != nil && cradle.ErrorCode(err) != cradle.ENOTFOUND {
			t.Fatal(err)
		}
		m := map[time.Time]bool{}
		for _, s := range samples {
			m[s.Time.Truncate(time.Millisecond).UTC()] = true
		}
		return m
	}
	spooled := func() int {
		b, _ := os.ReadFile(filepath.Join(spoolDir, spool.FileName))
		return len(spool.Scan(b).Live)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 45 s for %s\nagent log:\n%s", what, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	broker := l.m.device.mqtt

	cmd := start("5")
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	// Both up: enrolled, connected over MQTT, telemetry stored.
	waitFor("telemetry over MQTT", func() bool {
		return broker.Sessions(inDefaultTenant(serial)) == 1 && broker.Stats().Messages >= 3 && len(stored()) >= 3
	})

	// The broker unreachable: telemetry goes over HTTPS.
	mqttProxy.setUp(false)
	waitFor("the MQTT session to end", func() bool { return broker.Sessions(inDefaultTenant(serial)) == 0 })
	viaMQTT, before := broker.Stats().Messages, len(stored())
	waitFor("telemetry over HTTPS", func() bool { return len(stored()) >= before+4 })
	if got := broker.Stats().Messages; got != viaMQTT {
		t.Errorf("%d MQTT messages while the broker was unreachable", got-viaMQTT)
	}

	// The server unreachable: telemetry waits in the spool.
	httpsProxy.setUp(false)
	time.Sleep(300 * time.Millisecond) // what was in flight lands
	offline := len(stored())
	waitFor("telemetry spooled", func() bool { return spooled() >= 4 })
	if got := len(stored()); got != offline {
		t.Errorf("%d points stored while the server was unreachable", got-offline)
	}

	// Both back: MQTT again, the spool drains, the reconnection counted.
	httpsProxy.setUp(true)
	mqttProxy.setUp(true)
	waitFor("MQTT again and the spool drained", func() bool { return broker.Sessions(inDefaultTenant(serial)) == 1 && spooled() == 0 })
	waitFor("the reconnection reported", func() bool {
		latest, err := store.LatestTelemetry(sys, serial)
		return err == nil && latest["link.reconnects"].Value >= 1
	})
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err == nil {
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "VmRSS:") || strings.HasPrefix(l, "VmHWM:") {
				t.Logf("cradle-agent (not stripped, debug logging) %s", strings.Join(strings.Fields(l), " "))
			}
		}
	}
	stop(cmd)

	// No point lost: every collection the agent logged is stored or still
	// spooled (collected after the last send, before SIGTERM).
	collected := map[time.Time]bool{}
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var line struct {
			Msg string `json:"msg"`
			At  string `json:"at"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "telemetry collected" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, line.At)
		if err != nil {
			t.Fatalf("log line %s: %v", sc.Text(), err)
		}
		collected[at.Truncate(time.Millisecond).UTC()] = true
	}
	have := stored()
	left, err := spool.Open(spoolDir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := left.Peek(1 << 20)
	left.Close()
	for _, r := range recs {
		var p struct{ Time time.Time }
		json.Unmarshal(r.Data, &p)
		have[p.Time.Truncate(time.Millisecond).UTC()] = true
	}
	lost := 0
	for at := range collected {
		if !have[at] {
			lost++
			t.Errorf("the collection at %s was lost", at.Format(time.RFC3339Nano))
		}
	}
	t.Logf("%d collections: %d stored, %d left in the spool, %d lost; %d MQTT messages", len(collected), len(stored()), len(recs), lost, broker.Stats().Messages)
	if len(collected) < 11 {
		t.Errorf("only %d collections logged; the log format changed?", len(collected))
	}

	if testing.Verbose() {
		t.Logf("agent log:\n%s", logs.String())
	}

	// MQTT 3.1.1, with a malformed payload waiting in the spool before a
	// good one: the bad one is dropped, the good one delivered.
	sp, err := spool.Open(spoolDir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	earlier := time.Now().Add(-time.Hour).Truncate(time.Millisecond).UTC()
	sp.Append([]byte(`{"metrics":{"battery.pct":101}}`))
	sp.Append(fmt.Appendf(nil, `{"time":%q,"metrics":{"link.reconnects":0}}`, earlier.Format(time.RFC3339Nano)))
	sp.Close()
	before, messages := len(stored()), broker.Stats().Messages
	cmd = start("3.1.1")
	waitFor("telemetry over MQTT 3.1.1", func() bool {
		return broker.Sessions(inDefaultTenant(serial)) == 1 && broker.Stats().Messages >= messages+2 && len(stored()) >= before+3
	})
	stop(cmd)
	if !strings.Contains(logs.String(), `"version":"3.1.1"`) {
		t.Errorf("the agent did not log an MQTT 3.1.1 connection")
	}
	if !stored()[earlier] {
		t.Errorf("the good payload spooled behind a malformed one was not stored")
	}
	if !strings.Contains(logs.String(), "spooled telemetry is malformed; dropped") {
		t.Errorf("the malformed payload was not reported dropped")
	}

	// The HTTPS route refuses what the server would refuse over MQTT,
	// with the reason.
	checkTelemetryRoute(t, l, unit, state)

	// The runtime in process, with twin and command functions plugged in.
	checkRuntimeDispatch(ctx, t, l, unit, state, serial)
}

// agentCerts returns the unit's LDevID (from the agent's state) and
// IDevID (from its factory data) as TLS certificates.
func agentCerts(t *testing.T, unit, state string) (ldevid, idevid tls.Certificate) {
	t.Helper()
	var st struct {
		Current struct {
			KeyName string `json:"key_name"`
			Chain   string `json:"chain"`
		} `json:"current"`
	}
	if err := json.Unmarshal(mustRead(t, filepath.Join(state, "state.json")), &st); err != nil {
		t.Fatal(err)
	}
	ldevid, err := tls.X509KeyPair([]byte(st.Current.Chain), mustRead(t, filepath.Join(unit, "keys", st.Current.KeyName+".key")))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := hw.OpenSimDevice(unit)
	if err != nil {
		t.Fatal(err)
	}
	files, _, err := dev.FactoryData.Read(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	idevid, err = tls.X509KeyPair(files[agent.FactoryFileIDevID], mustRead(t, filepath.Join(unit, "keys", agent.DefaultKeyName+".key")))
	if err != nil {
		t.Fatal(err)
	}
	return ldevid, idevid
}

// checkRuntimeDispatch: desired documents and commands the server sends
// reach the plugged-in functions, and their replies reach the server; a
// new certificate closes the connection and connects with it (an IDevID,
// which the broker refuses: the runtime falls back to HTTPS; the LDevID
// again: MQTT, one reconnection counted).
func checkRuntimeDispatch(ctx context.Context, t *testing.T, l *factoryLine, unit, state, serial string) {
	ldevid, idevid := agentCerts(t, unit, state)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(mustRead(t, filepath.Join(pkiDirOf(l.dataDir), "root.crt"))) {
		t.Fatal("no root certificate")
	}
	got := make(chan string, 10)
	rt, err := agent.NewRuntime(agent.RuntimeOptions{
		Serial: serial, ServerURL: l.m.device.Addr(), MQTTAddr: l.m.device.mqtt.Addr().String(), Roots: roots,
		Twin: func(ctx context.Context, desired []byte) []byte {
			got <- "desired " + string(desired)
			return []byte(`{"version":1,"status":"applied","config":{}}`)
		},
		TwinReported: func() []byte { return []byte(`{"version":0,"status":"applied","config":{}}`) },
		Command: func(ctx context.Context, env []byte) []byte {
			got <- "command " + string(env)
			return []byte(`{"ok":true}`)
		},
		Backoff: agent.Backoff{Base: 100 * time.Millisecond, Max: 300 * time.Millisecond},
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	broker := l.m.device.mqtt
	messages := broker.Stats().Messages
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waited 20 s for %s", what)
			}
		}
	}
	rt.SetCertificate(ldevid)
	// Connected, subscribed, the reported document sent.
	wait("the runtime on MQTT", func() bool { return rt.Channel() == agent.ChannelMQTT && broker.Stats().Messages == messages+1 })
	for _, tc := range []struct{ topic, payload, want string }{
		{mqttapi.TopicTwinDesired, `{"version":1,"config":{"led":"on"}}`, `desired {"version":1,"config":{"led":"on"}}`},
		{mqttapi.TopicCommands, `{"envelope":1}`, `command {"envelope":1}`},
	} {
		// The subscription may be granted just after the reported document.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if err := broker.Publish(inDefaultTenant(serial), tc.topic, []byte(tc.payload), 1); err != nil {
				t.Fatal(err)
			}
			select {
			case s := <-got:
				if s != tc.want {
					t.Errorf("handled %q, want %q", s, tc.want)
				}
			case <-time.After(200 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				t.Fatalf("%s not handled", tc.topic)
			}
			break
		}
	}
	wait("the replies", func() bool { return broker.Stats().Messages == messages+3 })

	rt.SetCertificate(idevid)
	wait("the IDevID refused on MQTT, HTTPS meanwhile", func() bool {
		return broker.Sessions(inDefaultTenant(serial)) == 0 && rt.Channel() == agent.ChannelHTTPS
	})
	rt.SetCertificate(ldevid)
	wait("MQTT with the LDevID again", func() bool { return rt.Channel() == agent.ChannelMQTT && broker.Sessions(inDefaultTenant(serial)) == 1 })
	if n := rt.Reconnects(); n != 1 {
		t.Errorf("%d reconnections counted, want 1", n)
	}
}

// checkTelemetryRoute posts to /device/v1/telemetry with the agent's
// LDevID: 204 for a good payload, 400 and 413 with the reason otherwise.
func checkTelemetryRoute(t *testing.T, l *factoryLine, unit, state string) {
	t.Helper()
	cert, _ := agentCerts(t, unit, state)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}}
	for _, tc := range []struct {
		name, body string
		status     int
		reason     string
	}{
		{"good", `{"metrics":{"health.cpu_pct":7}}`, http.StatusNoContent, ""},
		{"malformed", `{"metrics":{"health.cpu_pct":"x"}}`, http.StatusBadRequest, "not a number"},
		{"out of range", `{"metrics":{"battery.pct":101}}`, http.StatusBadRequest, "out of its range"},
		{"too large", `{"metrics":{"a.b":1}, "x": "` + strings.Repeat("x", 300<<10) + `"}`, http.StatusRequestEntityTooLarge, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.Post(l.m.device.Addr()+"/device/v1/telemetry", "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
				t.Errorf("%d %s, want %d with %q", resp.StatusCode, body, tc.status, tc.reason)
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
