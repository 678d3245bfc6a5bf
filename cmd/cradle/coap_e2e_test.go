package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// coapClient runs libcoap's coap-client-openssl with the device's LDevID
// (-c chain -j key) and the server's root (-C), and returns what it
// printed: its exit status is 0 whatever the answer, so the test reads
// the response code it prints (-v 3 prints nothing else on a success).
func coapClient(t *testing.T, prog, caFile string, dev *enrolledDevice, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	args = append([]string{"-c", dev.chainFile, "-j", dev.keyFile, "-C", caFile, "-B", "5"}, args...)
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("coap-client %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCoAPEndToEnd drives the CoAP listener with the real coap-client of
// libcoap over DTLS with the device's LDevID: telemetry is stored, the
// desired configuration read, the pending update's firmware downloaded in
// 64-byte blocks byte for byte; after cradle device revoke the device's
// next request is refused (4.01), measured from the revocation's start
// and held to one second.
func TestCoAPEndToEnd(t *testing.T) {
	prog := testkit.NeedProgram(t, "coap-client-openssl")
	s := startPKIServer(t, func(c *Config) { c.Device.CoAPListen = "127.0.0.1:0" })
	m, ctx := s.m, t.Context()
	const serial = "SN-C1"
	dev := enrollDevice(t, s, serial)
	caFile := filepath.Join(s.dataDir, "pki", pki.NameRoot+".crt")
	base := "coaps://" + m.device.coap.Addr().String()

	// Telemetry, stored for the device.
	if out := coapClient(t, prog, caFile, dev, "-m", "post", "-t", "json", "-e", `{"metrics":{"health.cpu_pct":42.5}}`, base+"/t"); strings.Contains(out, "4.") || strings.Contains(out, "5.") {
		t.Fatalf("POST /t: %s", out)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	pts, err := sqlstore.NewTelemetryService(m.db).QueryTelemetry(sys, cradle.TelemetryQuery{Serial: serial, Metric: "health.cpu_pct"})
	if err != nil || len(pts) != 1 || pts[0].Max != 42.5 {
		t.Fatalf("telemetry stored over CoAP: %+v, %v", pts, err)
	}
	// Malformed telemetry: 4.00 with what was wrong.
	if out := coapClient(t, prog, caFile, dev, "-m", "post", "-e", `{"metrics":`, base+"/t"); !strings.Contains(out, "4.00") {
		t.Errorf("malformed telemetry: %s", out)
	}

	// The desired configuration: none yet (4.04), then the operator's.
	if out := coapClient(t, prog, caFile, dev, base+"/c"); !strings.Contains(out, "4.04") {
		t.Errorf("GET /c before any configuration: %s", out)
	}
	r := cradleCLI(t, `{"mtu":1400}`, append([]string{"device", "config", "set", serial}, s.api...)...)
	if r.code != 0 {
		t.Fatalf("device config set: %s", r.stderr)
	}
	if out := coapClient(t, prog, caFile, dev, base+"/c"); strings.TrimSpace(out) != `{"version":1,"config":{"mtu":1400}}` {
		t.Errorf("GET /c: %q", out)
	}

	// A pending update: a release of 3000 random bytes in a rollout to the
	// device; the firmware in 64-byte blocks (47 of them).
	if out := coapClient(t, prog, caFile, dev, base+"/fw/info"); !strings.Contains(out, "4.04") {
		t.Errorf("GET /fw/info with nothing pending: %s", out)
	}
	image := make([]byte, 3000)
	rand.Read(image)
	sum := sha256.Sum256(image)
	if _, err := openArtifactStore(Config{DataDir: s.dataDir}).Put(ctx, bytes.NewReader(image), artifact.Expect{Digest: sum, Size: int64(len(image))}); err != nil {
		t.Fatal(err)
	}
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	releases := sqlstore.NewReleaseService(m.db)
	rel, err := releases.CreateRelease(admin, cradle.ReleaseCreate{Model: "gw-100", Version: "2.0.0", Kind: cradle.ReleaseFile,
		SHA256: hex.EncodeToString(sum[:]), Size: int64(len(image)), FileName: "mcu.bin", SecurityCounter: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rel, err = releases.MarkReleaseSigned(admin, rel.ID, "gw-100/2.0.0/mcu.bin", nil); err != nil {
		t.Fatal(err)
	}
	ro, err := sqlstore.NewRolloutService(m.db).CreateRollout(admin, cradle.RolloutSpec{ReleaseID: rel.ID,
		Target: cradle.RolloutTarget{Serials: []string{serial}}, Phases: []cradle.RolloutPhase{{Percent: 100}},
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	var info string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if info = coapClient(t, prog, caFile, dev, base+"/fw/info"); !strings.Contains(info, "4.04") || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(info, `"rollout_id":"`+ro.ID+`"`) || !strings.Contains(info, `"version":"2.0.0"`) || !strings.Contains(info, `"size":3000`) {
		t.Fatalf("GET /fw/info: %s", info)
	}
	fw := filepath.Join(t.TempDir(), "fw.bin")
	out := coapClient(t, prog, caFile, dev, "-v", "7", "-b", "64", "-o", fw, base+"/fw") // -v 7 logs each block
	got, err := os.ReadFile(fw)
	if err != nil || !bytes.Equal(got, image) {
		t.Fatalf("firmware over CoAP in 64-byte blocks: %d bytes, identical %v (%v)\n%s", len(got), bytes.Equal(got, image), err, out)
	}

	if !strings.Contains(out, "Block2:46/_/64") || strings.Contains(out, "Block2:47/") {
		t.Errorf("coap-client did not fetch the 47 blocks of 64 bytes:\n%s", clipTail(out, 3000))
	}

	// Revocation: the next request is refused within a second.
	start := time.Now()
	ok(t, append([]string{"device", "revoke", serial, "--reason", "keyCompromise"}, s.api...)...)
	revoked := time.Now()
	out = coapClient(t, prog, caFile, dev, "-m", "post", "-e", `{"metrics":{"health.cpu_pct":1}}`, base+"/t")
	cut := time.Now()
	if !strings.Contains(out, "4.01") || !strings.Contains(out, "revoked") {
		t.Fatalf("POST /t after the revocation: %s", out)
	}
	t.Logf("revocation to refusal over CoAP (coap-client): %v from the revoke command's start, %v after it returned (a handshake and a request included); answer: %s",
		cut.Sub(start).Round(time.Microsecond), cut.Sub(revoked).Round(time.Microsecond), strings.TrimSpace(out))
	if d := cut.Sub(start); d > time.Second {
		t.Errorf("CoAP refused the revoked device %v after the revocation started, more than a second", d)
	}
	if pts, _ := sqlstore.NewTelemetryService(m.db).QueryTelemetry(sys, cradle.TelemetryQuery{Serial: serial, Metric: "health.cpu_pct"}); len(pts) != 1 {
		t.Errorf("telemetry after the revocation was stored: %+v", pts)
	}
	// The refusal is in the audit log.
	action := "device.auth.refused"
	entries, err := sqlstore.NewAuditService(m.db).FindAuditEntries(admin, cradle.AuditFilter{Action: &action, Limit: 10})
	if err != nil || len(entries) == 0 || !strings.Contains(string(entries[len(entries)-1].Details), `coaps:/t`) {
		t.Errorf("audit of the refusal: %+v, %v", entries, err)
	}
}

// coapLatency is TestRevocationLatency's coap channel: a device with a
// live DTLS session (go-coap's client, its LDevID) whose telemetry is
// accepted is revoked; its session is closed (seen by the client), and a
// new session's request is refused with 4.01.
func coapLatency(t *testing.T, f *revokeFixture, l *latencies) {
	d := f.enroll(t, f.serial("CO"))
	addr := f.s.m.device.coap.Addr().String()
	dial := func() *udpClient.Conn {
		cc, err := coapdtls.Dial(addr, &piondtls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{d.ldevid}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	post := func(cc *udpClient.Conn) (codes.Code, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		resp, err := cc.Post(ctx, "/t", message.AppJSON, strings.NewReader(`{"metrics":{"health.cpu_pct":3}}`))
		if err != nil {
			t.Fatalf("POST /t: %v", err)
		}
		b, _ := resp.ReadBody()
		return resp.Code(), string(b)
	}
	cc := dial()
	if code, diag := post(cc); code != codes.Changed {
		t.Fatalf("CoAP telemetry before the revocation: %v %s", code, diag)
	}
	if n := f.s.m.device.coap.Sessions(cradle.SerialHex(d.ldevid.Leaf.SerialNumber)); n != 1 {
		t.Fatalf("the CoAP listener holds %d sessions of the device, want 1", n)
	}
	start, done := f.revoke(t, d.serial)
	select {
	case <-cc.Done():
		l.add(start, done, time.Now())
	case <-time.After(5 * time.Second):
		t.Fatal("the DTLS session outlived the revocation by 5 s")
	}
	if code, diag := post(dial()); code != codes.Unauthorized || !strings.Contains(diag, "revoked") {
		t.Errorf("CoAP telemetry in a new session after the revocation: %v %s", code, diag)
	}
}

// TestCoAPRefusals: over CoAP an IDevID is refused (4.03: CoAP takes
// the LDevID), so is a suspended device (4.03), each with the reason and
// audited; a device moved back to deployed is served again.
func TestCoAPRefusals(t *testing.T) {
	f := newRevokeFixture(t)
	d := f.enroll(t, f.serial("CR"))
	addr := f.s.m.device.coap.Addr().String()
	get := func(cert tls.Certificate) (codes.Code, string) {
		t.Helper()
		cc, err := coapdtls.Dial(addr, &piondtls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		resp, err := cc.Get(ctx, "/fw/info")
		if err != nil {
			t.Fatalf("GET /fw/info: %v", err)
		}
		b, _ := resp.ReadBody()
		return resp.Code(), string(b)
	}
	if code, diag := get(d.ldevid); code != codes.NotFound || !strings.Contains(diag, "no pending update") {
		t.Fatalf("LDevID: %v %s", code, diag)
	}
	if code, diag := get(d.idevid); code != codes.Forbidden || !strings.Contains(diag, "CoAP takes the operational certificate") {
		t.Errorf("IDevID: %v %s", code, diag)
	}
	ok(t, append([]string{"device", "transition", d.serial, "suspended", "--reason", "quarantine"}, f.s.api...)...)
	if code, diag := get(d.ldevid); code != codes.Forbidden || !strings.Contains(diag, "suspended") {
		t.Errorf("suspended: %v %s", code, diag)
	}
	ok(t, append([]string{"device", "transition", d.serial, "deployed", "--reason", "cleared"}, f.s.api...)...)
	if code, diag := get(d.ldevid); code != codes.NotFound {
		t.Errorf("deployed again: %v %s", code, diag)
	}
	action := "device.auth.refused"
	admin := cradle.NewContextWithActor(t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	entries, err := sqlstore.NewAuditService(f.s.m.db).FindAuditEntries(admin, cradle.AuditFilter{Action: &action, Limit: 10})
	if err != nil || len(entries) != 2 {
		t.Fatalf("audited refusals: %d, %v", len(entries), err)
	}
	for _, e := range entries {
		if e.Actor != "device:"+d.serial+"(device)" || !strings.Contains(string(e.Details), `"path":"coaps:/fw/info"`) {
			t.Errorf("audit entry: %s %s %s", e.Actor, e.Subject, e.Details)
		}
	}
}
