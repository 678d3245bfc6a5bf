package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/twin"
	"cradle/internal/est"
	"cradle/internal/testkit"
)

// TestTwinEndToEnd: the real server with its PKI; a device enrolled over
// EST gets an LDevID. An operator registers a schema, a config group and a
// device document with the CLI; the device receives the effective document
// over MQTT (mosquitto_sub, pushed on subscription and again on a change)
// and over HTTPS, applies it with the agent's Applier, reports over MQTT,
// and the operator sees in-sync; a report of another config over HTTPS
// shows drifted; bad input is refused and the device keeps its config.
func TestTwinEndToEnd(t *testing.T) {
	sub := testkit.NeedProgram(t, "mosquitto_sub")
	pub := testkit.NeedProgram(t, "mosquitto_pub")
	s := startPKIServer(t, nil)
	m, dataDir, api, line := s.m, s.dataDir, s.api, s.line
	const serial = "SN-T1"
	ok(t, append([]string{"device", "create", "--serial", serial, "--model", "gw-100", "--label", "env=prod"}, line...)...)
	ok(t, append([]string{"device", "create", "--serial", "SN-T2", "--model", "gw-100", "--label", "env=prod"}, line...)...)

	// The device's IDevID, recorded; then EST enrollment gives it its LDevID.
	h, devKey, idevid := newIDevID(t, dataDir, serial)
	dir := t.TempDir()
	file := func(name string, data []byte) string { return writeFile(t, dir, name, string(data)) }
	ok(t, append([]string{"pki", "record", "--device", serial, file("idevid.crt", certsPEM(idevid))}, line...)...)
	ok(t, append([]string{"device", "transition", serial, "provisioned"}, line...)...)
	pool := x509.NewCertPool()
	pool.AddCert(h.Root)
	estClient, err := est.NewClient(m.device.Addr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{idevid.Raw}, PrivateKey: devKey}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	opKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial, SerialNumber: serial}}, opKey)
	ldevid, err := estClient.SimpleEnroll(t.Context(), csr)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(opKey)
	chainFile := file("ldevid.crt", append(certsPEM(ldevid), certsPEM(h.DeviceCA())...))
	keyFile := file("ldevid.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	device := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{ldevid.Raw, h.DeviceCA().Raw}, PrivateKey: opKey}}}}}

	// Before any configuration the device's poll answers 204.
	resp, err := device.Get(m.device.Addr() + "/device/v1/twin")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("GET /device/v1/twin before any config: %d, want 204", resp.StatusCode)
	}

	// The operator: a schema, a group for env=prod, the device's own document.
	cli := func(stdin string, args ...string) string {
		t.Helper()
		r := cradleCLI(t, stdin, append(args, api...)...)
		if r.code != 0 {
			t.Fatalf("cradle %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	schema := file("schema.json", []byte(`{"type":"object","properties":{"mtu":{"type":"integer","maximum":1500},"log":{"type":"object"}}}`))
	cli("", "config-schema", "set", "gw-100", schema)
	cli(`{"mtu":1500,"log":{"level":"info","format":"json"}}`, "config-group", "set", "prod", "--selector", "env=prod", "--priority", "10")
	tw := decodeJSON[cradle.Twin](t, cli(`{"log":{"level":"debug"}}`, "device", "config", "set", serial, "--json"))
	wantDoc := `{"version":2,"config":{"log":{"format":"json","level":"debug"},"mtu":1500}}`
	if got, _ := json.Marshal(tw.Desired); string(got) != wantDoc || tw.Drift != cradle.DriftPending {
		t.Fatalf("desired after set = %s (drift %s), want %s pending", got, tw.Drift, wantDoc)
	}
	// Bad input: refused with the path, and nothing changes.
	r := cradleCLI(t, `{"mtu":9000}`, append([]string{"device", "config", "set", serial}, api...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "at /mtu") {
		t.Errorf("a document the schema refuses: exit %d, %s", r.code, r.stderr)
	}
	r = cradleCLI(t, `{"mtu":1500,"mtu":1400}`, append([]string{"device", "config", "set", serial}, api...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "duplicate key at /mtu") {
		t.Errorf("a document with a duplicate key: exit %d, %s", r.code, r.stderr)
	}

	// HTTPS: the same document.
	resp, err = device.Get(m.device.Addr() + "/device/v1/twin")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != wantDoc {
		t.Fatalf("GET /device/v1/twin = %d %s, want %s", resp.StatusCode, body, wantDoc)
	}

	// MQTT: subscribing brings the current document; an operator change
	// is pushed.
	tlsArgs := append(mosquittoArgs(m, dataDir, chainFile, keyFile), "-q", "1")
	topic := "cradle/devices/" + serial + "/twin/"
	subCmd := exec.CommandContext(t.Context(), sub, append(tlsArgs, "-t", topic+"desired", "-C", "2", "-W", "30")...)
	subOut, _ := subCmd.StdoutPipe()
	subCmd.Stderr = testWriter{t}
	if err := subCmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(subOut)
	lines.Buffer(nil, 1<<20)
	next := func() string {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("mosquitto_sub ended without a desired document: %v", lines.Err())
		}
		return lines.Text()
	}
	if got := next(); got != wantDoc {
		t.Fatalf("on subscription the device got %s, want %s", got, wantDoc)
	}
	cli(`{"mtu":1400,"log":{"level":"info","format":"json"}}`, "config-group", "set", "prod", "--selector", "env=prod", "--priority", "10")
	pushed := next()
	if want := `{"version":3,"config":{"log":{"format":"json","level":"debug"},"mtu":1400}}`; pushed != want {
		t.Fatalf("after the group change the device got %s, want %s", pushed, want)
	}
	if err := subCmd.Wait(); err != nil {
		t.Errorf("mosquitto_sub: %v", err)
	}

	// The device applies it with the agent's Applier and reports over MQTT.
	out := filepath.Join(dir, "etc", "app.json")
	os.MkdirAll(filepath.Dir(out), 0o755)
	applier, err := twin.New(twin.Options{StateDir: filepath.Join(dir, "agent"), SchemaFile: schema, Handlers: []twin.Handler{&twin.File{Path: out}}})
	if err != nil {
		t.Fatal(err)
	}
	reported := applier.Apply(t.Context(), []byte(pushed))
	if b, _ := os.ReadFile(out); string(b) != "{\"log\":{\"format\":\"json\",\"level\":\"debug\"},\"mtu\":1400}\n" {
		t.Errorf("the file handler wrote %q", b)
	}
	mqttPub := func(suffix string, payload []byte) {
		t.Helper()
		if out, err := exec.CommandContext(t.Context(), pub, append(tlsArgs, "-t", topic+suffix, "-m", string(payload))...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
	}
	mqttPub("reported", reported)
	waitDrift := func(want cradle.DriftState) *cradle.Twin {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			tw := decodeJSON[cradle.Twin](t, cli("", "device", "config", "show", serial, "--json"))
			if tw.Drift == want {
				return &tw
			}
			if time.Now().After(deadline) {
				t.Fatalf("drift is %s after 10 s, want %s (reported %+v)", tw.Drift, want, tw.Reported)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	tw2 := waitDrift(cradle.DriftInSync)
	if tw2.Reported == nil || tw2.Reported.Version != 3 || tw2.Reported.Status != cradle.ReportApplied {
		t.Errorf("reported = %+v", tw2.Reported)
	}

	// Malformed reports over MQTT are refused and counted; the connection
	// and the stored state stay.
	mqttPub("reported", []byte(`{"version":3,"status":"applied"`))
	metricsResp, err := http.Get(m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(metricsResp.Body)
	metricsResp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Contains(metrics, []byte("cradle_twin_reports_refused_total 1")) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		metricsResp, _ = http.Get(m.Addr() + "/metrics")
		metrics, _ = io.ReadAll(metricsResp.Body)
		metricsResp.Body.Close()
	}
	if !bytes.Contains(metrics, []byte("cradle_twin_reports_refused_total 1")) {
		t.Errorf("/metrics does not count the malformed report")
	}
	waitDrift(cradle.DriftInSync)

	// Over HTTPS the device reports a config other than the desired one:
	// drifted, and the drift listing says so.
	drifted := `{"version":3,"status":"applied","config":{"mtu":1280},"at":"` + time.Now().UTC().Format(time.RFC3339) + `"}`
	req, _ := http.NewRequest(http.MethodPut, m.device.Addr()+"/device/v1/twin/reported", strings.NewReader(drifted))
	resp, err = device.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT /device/v1/twin/reported = %d", resp.StatusCode)
	}
	waitDrift(cradle.DriftDrifted)
	list := decodeJSON[struct {
		Twins []cradle.TwinStatus `json:"twins"`
	}](t, cli("", "device", "config", "list", "--drift", "drifted", "--json"))
	if len(list.Twins) != 1 || list.Twins[0].Serial != serial {
		t.Errorf("drift listing = %+v", list.Twins)
	}
	pending := decodeJSON[struct {
		Twins []cradle.TwinStatus `json:"twins"`
	}](t, cli("", "device", "config", "list", "--drift", "pending", "--json"))
	if len(pending.Twins) != 1 || pending.Twins[0].Serial != "SN-T2" {
		t.Errorf("pending listing = %+v; SN-T2 got the group but never reported", pending.Twins)
	}
	// A bad report over HTTPS is a 400 with the reason.
	req, _ = http.NewRequest(http.MethodPut, m.device.Addr()+"/device/v1/twin/reported", strings.NewReader(`{"version":3,"status":"rejected","config":{},"at":"2026-01-01T00:00:00Z"}`))
	resp, err = device.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "needs an error") {
		t.Errorf("a bad report over HTTPS: %d %s", resp.StatusCode, body)
	}
	waitDrift(cradle.DriftDrifted)

	// The rest of the CLI: groups and schemas read back, a group deleted.
	groups := decodeJSON[struct {
		Groups []cradle.ConfigGroup `json:"groups"`
	}](t, cli("", "config-group", "list", "--json"))
	if len(groups.Groups) != 1 || groups.Groups[0].Name != "prod" || groups.Groups[0].Priority != 10 {
		t.Errorf("config-group list = %+v", groups.Groups)
	}
	g := decodeJSON[cradle.ConfigGroup](t, cli("", "config-group", "show", "prod", "--json"))
	var compact bytes.Buffer
	json.Compact(&compact, g.Config)
	if g.Selector != "env=prod" || compact.String() != `{"log":{"format":"json","level":"info"},"mtu":1400}` {
		t.Errorf("config-group show = %+v", g)
	}
	if got := cli("", "config-schema", "show", "gw-100"); !strings.Contains(got, `"maximum": 1500`) {
		t.Errorf("config-schema show = %s", got)
	}
	cli("", "config-group", "delete", "prod")
	if tw := decodeJSON[cradle.Twin](t, cli("", "device", "config", "show", "SN-T2", "--json")); tw.Desired == nil || tw.Desired.Version != 3 || strings.TrimSpace(string(tw.Desired.Config)) != `{}` {
		t.Errorf("SN-T2 after its only group was deleted: %+v", tw.Desired)
	}
	if got := cli("", "device", "config", "show", serial); !strings.Contains(got, "Drift:      pending") || !strings.Contains(got, "version 4") {
		t.Errorf("device config show after the group was deleted:\n%s", got)
	}
}
