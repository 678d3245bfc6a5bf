package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"
	"time"

	"cradle/internal/pki"
)

// TestRetireCAWhileServing: `cradle pki retire-ca` run while the server
// runs takes effect without a restart: within a few checks of
// retired.json the device listener refuses a certificate of the retired
// CA as retired, where it refused it before only as unknown. A second
// rotation and the retirement of the CA the running server still issues
// from (it was started before that rotation) is not applied by it.
func TestRetireCAWhileServing(t *testing.T) {
	old := retiredCheckInterval
	retiredCheckInterval = 50 * time.Millisecond
	t.Cleanup(func() { retiredCheckInterval = old })
	s := startPKIServer(t, func(cfg *Config) {
		exit0(t, "pki", "rotate-device-ca", "--data-dir", cfg.DataDir)
	})
	h, keys, closeKeys, err := openPKI(t.Context(), s.dataDir, noPrompt(), "device-ca")
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ldevid, err := pki.Issue(t.Context(), h.DeviceCAs[0], keys["device-ca"], devKey.Public(), &x509.Certificate{},
		append(pki.LDevID(pki.LDevIDPolicy{}, "default", "SN-1", time.Now()), pki.KeyPolicy())...)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(h.Root)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{ldevid.Raw, h.DeviceCAs[0].Raw}, PrivateKey: devKey}}}}}
	url := s.m.device.Addr() + "/device/v1/telemetry"
	resp, body := fetch(t, client, "POST", url, []byte("{}"))
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "retired") {
		t.Fatalf("before the retirement: %d %s, want 401 not saying retired", resp.StatusCode, body)
	}

	exit0(t, "pki", "retire-ca", "device-ca", "--data-dir", s.dataDir)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, body = fetch(t, client, "POST", url, []byte("{}"))
		if resp.StatusCode == http.StatusUnauthorized && strings.Contains(string(body), "issued by device-ca, which is retired") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after retire-ca the running server still does not refuse the retired CA's certificate: %d %s", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range s.m.device.authority.Hierarchy.CACerts() {
		if c.Equal(h.DeviceCAs[0]) {
			t.Error("EST cacerts still serves the retired CA")
		}
	}

	// The directory is rotated again; the server, not restarted, still
	// issues from device-ca-2. Its retirement is not applied.
	exit0(t, "pki", "rotate-device-ca", "--data-dir", s.dataDir)
	exit0(t, "pki", "retire-ca", "device-ca-2", "--data-dir", s.dataDir)
	time.Sleep(10 * retiredCheckInterval)
	running := s.m.device.authority.Hierarchy
	if running.IsRetired("device-ca-2") || !running.IsRetired("device-ca") {
		t.Fatalf("after retiring the running server's issuing CA: device-ca-2 retired %v, device-ca retired %v", running.IsRetired("device-ca-2"), running.IsRetired("device-ca"))
	}
}

// exit0 runs the program and fails the test unless it exits 0 (what it
// says on stderr is advice).
func exit0(t *testing.T, args ...string) {
	t.Helper()
	if r := cradleCLI(t, "", args...); r.code != 0 {
		t.Fatalf("cradle %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
}
