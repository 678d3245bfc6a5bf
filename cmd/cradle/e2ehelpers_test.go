package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle/internal/mqttapi"
	"cradle/internal/pki"
)

// pkiServer is the real server on 127.0.0.1:0 over a data directory with a
// fresh test PKI (org Acme), its device listener included.
type pkiServer struct {
	m       *Main
	dataDir string
	api     []string // --server and --token of the admin token serve printed
	line    []string // --server and --token of a factory token made with it
}

// startPKIServer runs cradle pki init and the server, with the device API
// and MQTT on 127.0.0.1:0; configure, when not nil, adjusts the config
// first. It makes a factory token "line-1" with the admin token.
func startPKIServer(t *testing.T, configure func(*Config)) *pkiServer {
	t.Helper()
	isolateCLI(t)
	setPassphrase(t, pkiTestPassphrase)
	dataDir := t.TempDir()
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1")
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.Device.Listen, cfg.Device.MQTTListen = dataDir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if configure != nil {
		configure(&cfg)
	}
	var stdout strings.Builder
	m := &Main{Config: cfg, Stdout: &stdout}
	if err := m.Run(t.Context()); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	admin := tokenRE.FindStringSubmatch(stdout.String())[1]
	api := []string{"--server", m.Addr(), "--token", admin}
	factory := decodeJSON[tokenCreated](t, ok(t, append([]string{"token", "create", "--name", "line-1", "--role", "factory", "--json"}, api...)...)).Secret
	return &pkiServer{m: m, dataDir: dataDir, api: api, line: []string{"--server", m.Addr(), "--token", factory}}
}

// newIDevID makes a P-256 device key and signs its IDevID for serial with
// the manufacturing CA of dataDir, as the station does. It returns the
// PKI's certificates too.
func newIDevID(t *testing.T, dataDir, serial string) (*pki.Hierarchy, *ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	h, keys, closeKeys, err := openPKI(t.Context(), dataDir, noPrompt(), pki.NameManufacturingCA)
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idevid, err := pki.Issue(t.Context(), h.ManufacturingCA, keys[pki.NameManufacturingCA], devKey.Public(), &x509.Certificate{},
		pki.IDevID(pki.IDevIDConfig{Organization: "Acme"}, serial, nil, time.Now())...)
	if err != nil {
		t.Fatal(err)
	}
	return h, devKey, idevid
}

// certsPEM is the PEM encoding of certs, one after the other.
func certsPEM(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// provisionUnit makes one simulated unit and provisions it on l's station
// (batch B-2648, so its serial is SX-2648-00001); it returns the unit's
// directory.
func provisionUnit(t *testing.T, l *factoryLine) string {
	t.Helper()
	unit := makeUnits(t, t.TempDir(), 1)[0]
	ok(t, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release, "--operator", "ada", "--device", unit, "--json")
	return unit
}

// mosquittoArgs are the mosquitto_pub/mosquitto_sub flags that connect to
// m's broker over MQTT 5 as a device, with its certificate chain and key
// files, trusting the root of the PKI in dataDir.
func mosquittoArgs(m *Main, dataDir, certFile, keyFile string) []string {
	host, port, _ := net.SplitHostPort(m.device.mqtt.Addr().String())
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	return []string{"-h", host, "-p", port, "--cafile", filepath.Join(pkiDirOf(dataDir), "root.crt"), "--cert", certFile, "--key", keyFile, "-V", "mqttv5"}
}

// checkSessionClosed runs mosquitto_sub (sub) with args as serial's live
// MQTT session, waits until l's broker holds it, then runs act (what
// names it) and fails unless the session closes within a second.
func checkSessionClosed(ctx context.Context, t *testing.T, l *factoryLine, sub, serial string, args []string, what string, act func()) {
	t.Helper()
	live := exec.CommandContext(ctx, sub, args...)
	live.Stderr = testWriter{t}
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan time.Time, 1)
	go func() { live.Wait(); exited <- time.Now() }()
	for l.m.device.mqtt.Sessions(inDefaultTenant(serial)) == 0 {
		select {
		case <-exited:
			t.Fatalf("mosquitto_sub exited before the %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
	start := time.Now()
	act()
	select {
	case at := <-exited:
		t.Logf("%s to MQTT disconnection: %v (including the CLI's request)", what, at.Sub(start))
		if at.Sub(start) > time.Second {
			t.Errorf("the live MQTT session closed %v after the %s, more than a second", at.Sub(start), what)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the live MQTT session outlived the %s by 5 s", what)
	}
}

// inDefaultTenant names device serial of the tenant "default" (id 1) that
// the first start creates, where the end-to-end tests' devices are.
func inDefaultTenant(serial string) mqttapi.Device {
	return mqttapi.Device{TenantID: 1, Serial: serial}
}
