package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"cradle"
	"cradle/internal/agent/mqtt"
	"cradle/internal/est"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// revokeFixture is the real server with its PKI, the manufacturing CA's
// key (to make IDevIDs as the station does) and API clients.
type revokeFixture struct {
	t       *testing.T
	s       *pkiServer
	h       *pki.Hierarchy
	mfgKey  crypto.Signer
	roots   *x509.CertPool
	admin   *httpapi.Client
	factory *httpapi.Client
	next    atomic.Int64
}

func newRevokeFixture(t *testing.T) *revokeFixture {
	t.Helper()
	s := startPKIServer(t, func(c *Config) { c.Device.CoAPListen = "127.0.0.1:0" })
	h, keys, closeKeys, err := openPKI(t.Context(), s.dataDir, noPrompt(), pki.NameManufacturingCA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeKeys() })
	roots := x509.NewCertPool()
	roots.AddCert(h.Root)
	return &revokeFixture{t: t, s: s, h: h, mfgKey: keys[pki.NameManufacturingCA], roots: roots,
		admin: httpapi.NewClient(s.m.Addr(), s.api[3], nil), factory: httpapi.NewClient(s.m.Addr(), s.line[3], nil)}
}

// revDevice is a device enrolled over EST: its IDevID and its LDevID,
// each with its key.
type revDevice struct {
	serial         string
	idevid, ldevid tls.Certificate
}

// serial returns a new device serial.
func (f *revokeFixture) serial(prefix string) string {
	return fmt.Sprintf("%s-%04d", prefix, f.next.Add(1))
}

// enroll creates a provisioned device with macs, records the IDevID the
// factory made for it, and enrolls it over EST with that IDevID (the
// device is deployed then).
func (f *revokeFixture) enroll(t *testing.T, serial string, macs ...string) *revDevice {
	t.Helper()
	ctx := t.Context()
	if _, err := f.factory.CreateDevice(ctx, cradle.DeviceCreate{Serial: serial, Model: "gw-100", MACs: macs, State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idevid, err := pki.Issue(ctx, f.h.ManufacturingCA, f.mfgKey, devKey.Public(), &x509.Certificate{},
		pki.IDevID(pki.IDevIDConfig{Organization: "Acme"}, serial, nil, time.Now())...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.factory.RecordCertificate(ctx, serial, cradle.CertIDevID, idevid); err != nil {
		t.Fatal(err)
	}
	d := &revDevice{serial: serial, idevid: tls.Certificate{Certificate: [][]byte{idevid.Raw, f.h.ManufacturingCA.Raw}, PrivateKey: devKey, Leaf: idevid}}
	d.ldevid = f.enrollWith(t, d.idevid, serial, false)
	return d
}

// enrollWith runs simpleenroll (or simplereenroll) with client as the
// client certificate and returns the new LDevID with its key.
func (f *revokeFixture) enrollWith(t *testing.T, client tls.Certificate, serial string, re bool) tls.Certificate {
	t.Helper()
	c, err := f.est(client)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: serial, CommonName: serial}}, key)
	var cert *x509.Certificate
	if re {
		cert, err = c.SimpleReenroll(t.Context(), csr)
	} else {
		cert, err = c.SimpleEnroll(t.Context(), csr)
	}
	if err != nil {
		t.Fatalf("enrolling %s: %v", serial, err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, f.h.DeviceCA().Raw}, PrivateKey: key, Leaf: cert}
}

func (f *revokeFixture) est(client tls.Certificate) (*est.Client, error) {
	return est.NewClient(f.s.m.device.Addr(), &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{client}}, nil)
}

// https returns a client of the device listener with cert (none when
// cert has no leaf), keeping its connection alive between requests.
func (f *revokeFixture) https(cert tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: f.roots}
	if cert.Leaf != nil {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
}

// status sends a request on the device listener and returns its status.
func (f *revokeFixture) status(t *testing.T, hc *http.Client, method, path, authz string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, f.s.m.device.Addr()+path, nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// revoke revokes the device through the operator API and returns when
// the call started and when it returned.
func (f *revokeFixture) revoke(t *testing.T, serial string) (start, returned time.Time) {
	t.Helper()
	start = time.Now()
	r, err := f.admin.RevokeDevice(t.Context(), serial, cradle.ReasonKeyCompromise)
	returned = time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Revoked) == 0 {
		t.Fatalf("revoking %s revoked nothing", serial)
	}
	return start, returned
}

// latencies collects the delays of one channel over the runs.
type latencies struct {
	channel             string
	fromStart, fromDone []time.Duration
}

// add records one run: when the revocation started, when its call
// returned, and when the channel was seen cut off.
func (l *latencies) add(start, returned, cut time.Time) {
	l.fromStart = append(l.fromStart, cut.Sub(start))
	l.fromDone = append(l.fromDone, max(0, cut.Sub(returned)))
}

func medianMax(ds []time.Duration) (time.Duration, time.Duration) {
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2], s[len(s)-1]
}

// check logs the median and maximum and fails over a second.
func (l *latencies) check(t *testing.T) {
	t.Helper()
	ms, xs := medianMax(l.fromStart)
	md, xd := medianMax(l.fromDone)
	t.Logf("%s: N=%d; from the revoke call's start: median %v, max %v; from its return: median %v, max %v",
		l.channel, len(l.fromStart), ms.Round(time.Microsecond), xs.Round(time.Microsecond), md.Round(time.Microsecond), xd.Round(time.Microsecond))
	if xs > time.Second {
		t.Errorf("%s: cut off %v after the revocation started, more than a second", l.channel, xs)
	}
}

// revokeRuns is how many devices each channel's test revokes: 20, or
// CRADLE_REVOKE_RUNS, or 3 with -short.
func revokeRuns(t *testing.T) int {
	if v, err := strconv.Atoi(os.Getenv("CRADLE_REVOKE_RUNS")); err == nil && v > 0 {
		return v
	}
	if testing.Short() {
		return 3
	}
	return 20
}

// TestRevocationLatency revokes real devices enrolled over EST through
// the operator API, one channel per subtest, each over revokeRuns
// devices, and holds each channel to one second: the live MQTT session
// closes, the native HTTPS API, EST re-enrollment, the Mender token, the
// hawkBit target token and the hawkBit client certificate are refused,
// OCSP answers revoked (after a cached good answer) and the CRL lists the
// certificate, and the CoAP listener closes the device's DTLS session
// (coapLatency, coap_e2e_test.go).
func TestRevocationLatency(t *testing.T) {
	f := newRevokeFixture(t)
	n := revokeRuns(t)
	run := func(name string, fn func(t *testing.T, l *latencies)) {
		t.Run(name, func(t *testing.T) {
			l := &latencies{channel: name}
			for range n {
				fn(t, l)
			}
			l.check(t)
		})
	}

	run("mqtt", func(t *testing.T, l *latencies) {
		d := f.enroll(t, f.serial("MQ"))
		conn, err := mqtt.Dial(t.Context(), mqtt.Options{Addr: f.s.m.device.mqtt.Addr().String(), ClientID: d.serial,
			TLS: &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{d.ldevid}}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.Subscribe(t.Context(), "cradle/devices/"+d.serial+"/commands"); err != nil {
			t.Fatal(err)
		}
		if f.s.m.device.mqtt.Sessions(inDefaultTenant(d.serial)) != 1 {
			t.Fatal("the broker holds no session of the device")
		}
		start, done := f.revoke(t, d.serial)
		select {
		case <-conn.Done():
			l.add(start, done, time.Now())
		case <-time.After(5 * time.Second):
			t.Fatal("the MQTT session outlived the revocation by 5 s")
		}
		// Reconnecting is refused.
		if c, err := mqtt.Dial(t.Context(), mqtt.Options{Addr: f.s.m.device.mqtt.Addr().String(), ClientID: d.serial,
			TLS: &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{d.ldevid}}}); err == nil {
			c.Close()
			t.Error("a revoked LDevID connected to MQTT again")
		}
	})

	run("coap", func(t *testing.T, l *latencies) { coapLatency(t, f, l) })

	run("https", func(t *testing.T, l *latencies) {
		d := f.enroll(t, f.serial("HT"))
		hc := f.https(d.ldevid) // one kept-alive connection, before and after
		if st := f.status(t, hc, "GET", "/device/v1/commands", ""); st != http.StatusOK {
			t.Fatalf("native API before the revocation: %d", st)
		}
		start, done := f.revoke(t, d.serial)
		if st := f.status(t, hc, "GET", "/device/v1/commands", ""); st != http.StatusUnauthorized && st != http.StatusForbidden {
			t.Fatalf("native API after the revocation: %d", st)
		}
		l.add(start, done, time.Now())
	})

	run("est", func(t *testing.T, l *latencies) {
		d := f.enroll(t, f.serial("ES"))
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: d.serial}}, key)
		c, err := f.est(d.ldevid)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.CACerts(t.Context()); err != nil { // the connection is up before
			t.Fatal(err)
		}
		start, done := f.revoke(t, d.serial)
		if _, err := c.SimpleReenroll(t.Context(), csr); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("simplereenroll after the revocation: %v", err)
		}
		l.add(start, done, time.Now())
		// Nor can it enroll again with its IDevID.
		ic, _ := f.est(d.idevid)
		if _, err := ic.SimpleEnroll(t.Context(), csr); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("simpleenroll with the revoked IDevID: %v", err)
		}
	})

	run("mender", func(t *testing.T, l *latencies) {
		serial := f.serial("ME")
		i := f.next.Load()
		mac := fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8&0xff, i&0xff)
		if _, err := f.factory.CreateDevice(t.Context(), cradle.DeviceCreate{Serial: serial, Model: "gw-100", MACs: []string{mac}, State: cradle.StateProvisioned}); err != nil {
			t.Fatal(err)
		}
		md := newMenderDevice(t, `{"mac":"`+mac+`"}`)
		ctx := cradle.NewContextWithActor(t.Context(), cradle.SystemActor(1, "mender"))
		tok, _, err := sqlstore.NewProtocolService(f.s.m.db).MenderAuthenticate(ctx,
			cradle.MenderAuthRequest{IDData: md.idData, PublicKey: md.pem, KeyFingerprint: md.fingerprint, MAC: md.mac}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		hc := f.https(tls.Certificate{})
		path := "/api/devices/v1/deployments/device/deployments/next?device_type=gw-100&artifact_name=a-1"
		if st := f.status(t, hc, "GET", path, "Bearer "+tok.Secret); st == http.StatusUnauthorized || st >= 500 {
			t.Fatalf("Mender API before the revocation: %d", st)
		}
		start, done := f.revoke(t, serial)
		if st := f.status(t, hc, "GET", path, "Bearer "+tok.Secret); st != http.StatusUnauthorized {
			t.Fatalf("Mender API after the revocation: %d", st)
		}
		l.add(start, done, time.Now())
	})

	run("hawkbit-token", func(t *testing.T, l *latencies) {
		serial := f.serial("HB")
		if _, err := f.factory.CreateDevice(t.Context(), cradle.DeviceCreate{Serial: serial, Model: "gw-100", State: cradle.StateProvisioned}); err != nil {
			t.Fatal(err)
		}
		tok, err := f.admin.CreateDeviceToken(t.Context(), cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial})
		if err != nil {
			t.Fatal(err)
		}
		hc := f.https(tls.Certificate{})
		path := "/default/controller/v1/" + serial
		if st := f.status(t, hc, "GET", path, "TargetToken "+tok.Secret); st != http.StatusOK {
			t.Fatalf("hawkBit poll before the revocation: %d", st)
		}
		start, done := f.revoke(t, serial)
		if st := f.status(t, hc, "GET", path, "TargetToken "+tok.Secret); st != http.StatusUnauthorized {
			t.Fatalf("hawkBit poll after the revocation: %d", st)
		}
		l.add(start, done, time.Now())
	})

	// A hawkBit device that authenticates with its LDevID, cut off by
	// revoking that one certificate (cradle pki revoke --serial).
	run("hawkbit-cert", func(t *testing.T, l *latencies) {
		d := f.enroll(t, f.serial("HC"))
		hc := f.https(d.ldevid)
		path := "/default/controller/v1/" + d.serial
		if st := f.status(t, hc, "GET", path, ""); st != http.StatusOK {
			t.Fatalf("hawkBit poll with the LDevID before the revocation: %d", st)
		}
		start := time.Now()
		if _, err := f.admin.RevokeCertificate(t.Context(), cradle.SerialHex(d.ldevid.Leaf.SerialNumber), cradle.ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
		done := time.Now()
		if st := f.status(t, hc, "GET", path, ""); st != http.StatusUnauthorized && st != http.StatusForbidden {
			t.Fatalf("hawkBit poll with the revoked LDevID: %d", st)
		}
		l.add(start, done, time.Now())
	})

	run("ocsp-crl", func(t *testing.T, l *latencies) {
		d := f.enroll(t, f.serial("OC"))
		leaf, ca := d.ldevid.Leaf, f.h.DeviceCA()
		hc := f.https(tls.Certificate{})
		if st := f.ocsp(t, hc, leaf, ca); st.Status != ocsp.Good { // cached now
			t.Fatalf("OCSP before the revocation: %d", st.Status)
		}
		start, done := f.revoke(t, d.serial)
		st := f.ocsp(t, hc, leaf, ca)
		if st.Status != ocsp.Revoked || st.RevocationReason != ocsp.KeyCompromise {
			t.Fatalf("OCSP after the revocation: status %d, reason %d", st.Status, st.RevocationReason)
		}
		crl := f.crl(t, hc)
		if !slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(leaf.SerialNumber) == 0 }) {
			t.Fatalf("the CRL (number %v, %d entries) does not list %s", crl.Number, len(crl.RevokedCertificateEntries), cradle.SerialHex(leaf.SerialNumber))
		}
		l.add(start, done, time.Now())
	})
}

// ocsp asks the listener's responder about leaf.
func (f *revokeFixture) ocsp(t *testing.T, hc *http.Client, leaf, issuer *x509.Certificate) *ocsp.Response {
	t.Helper()
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Post(f.s.m.device.Addr()+"/pki/ocsp", "application/ocsp-request", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	r, err := ocsp.ParseResponseForCert(body, leaf, issuer)
	if err != nil {
		t.Fatalf("OCSP response: %v", err)
	}
	return r
}

// crl fetches the device CA's CRL and checks its signature.
func (f *revokeFixture) crl(t *testing.T, hc *http.Client) *x509.RevocationList {
	t.Helper()
	resp, err := hc.Get(f.s.m.device.Addr() + "/pki/crl/" + pki.DeviceCAName(len(f.h.DeviceCAs)-1) + ".crl")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(resp.Body)
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("CRL: %v", err)
	}
	if err := crl.CheckSignatureFrom(f.h.DeviceCA()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	return crl
}

// TestReturnForRepairEndToEnd sends an enrolled device (with telemetry, a
// live MQTT session, a hawkBit target token and a cached OCSP answer) for
// repair: the move to rma revokes its operational credentials at once,
// its IDevID stays good; the factory re-provisions it, it enrolls again
// with its IDevID and gets a new LDevID, the old one stays revoked, and
// its history (transitions, audit, telemetry) is all there.
func TestReturnForRepairEndToEnd(t *testing.T) {
	f := newRevokeFixture(t)
	ctx := t.Context()
	serial := "RMA-0001"
	d := f.enroll(t, serial)
	old := d.ldevid
	hc := f.https(old)
	if st := f.post(t, hc, "/device/v1/telemetry", `{"metrics":{"health.cpu_pct":42}}`); st != http.StatusNoContent {
		t.Fatalf("telemetry before the repair: %d", st)
	}
	tok, err := f.admin.CreateDeviceToken(ctx, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial})
	if err != nil {
		t.Fatal(err)
	}
	public := f.https(tls.Certificate{})
	if st := f.ocsp(t, public, old.Leaf, f.h.DeviceCA()); st.Status != ocsp.Good {
		t.Fatalf("OCSP before the repair: %d", st.Status)
	}
	conn, err := mqtt.Dial(ctx, mqtt.Options{Addr: f.s.m.device.mqtt.Addr().String(), ClientID: serial,
		TLS: &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{old}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// The operator sends it for repair.
	start := time.Now()
	ok(t, append([]string{"device", "transition", serial, "rma", "--reason", "radio dead"}, f.s.api...)...)
	select {
	case <-conn.Done():
		t.Logf("move to rma to MQTT disconnection: %v (including the CLI's request)", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("the MQTT session outlived the move to rma by a second")
	}
	if st := f.ocsp(t, public, old.Leaf, f.h.DeviceCA()); st.Status != ocsp.Revoked || st.RevocationReason != ocsp.CessationOfOperation {
		t.Errorf("OCSP of the LDevID after the move to rma: status %d, reason %d", st.Status, st.RevocationReason)
	}
	if st := f.ocsp(t, public, d.idevid.Leaf, f.h.ManufacturingCA); st.Status != ocsp.Good {
		t.Errorf("OCSP of the IDevID after the move to rma: %d, want good", st.Status)
	}
	if st := f.status(t, public, "GET", "/default/controller/v1/"+serial, "TargetToken "+tok.Secret); st != http.StatusUnauthorized {
		t.Errorf("hawkBit token after the move to rma: %d", st)
	}
	if st := f.post(t, hc, "/device/v1/telemetry", `{"metrics":{"health.cpu_pct":1}}`); st != http.StatusUnauthorized && st != http.StatusForbidden {
		t.Errorf("telemetry with the old LDevID after the move to rma: %d", st)
	}
	// Not even re-enrollment with the IDevID while in rma.
	if c, _ := f.est(d.idevid); c != nil {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: serial}}, key)
		if _, err := c.SimpleEnroll(ctx, csr); err == nil {
			t.Error("a device in rma enrolled")
		}
	}

	// The factory re-provisions it; it enrolls again with its IDevID.
	ok(t, append([]string{"device", "transition", serial, "provisioned", "--reason", "repaired: radio replaced"}, f.s.line...)...)
	renewed := f.enrollWith(t, d.idevid, serial, false)
	if renewed.Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) == 0 {
		t.Fatal("the repaired device got its old LDevID back")
	}
	if st := f.ocsp(t, public, old.Leaf, f.h.DeviceCA()); st.Status != ocsp.Revoked {
		t.Errorf("the old LDevID after the re-enrollment: %d, want revoked", st.Status)
	}
	if st := f.post(t, f.https(renewed), "/device/v1/telemetry", `{"metrics":{"health.cpu_pct":7}}`); st != http.StatusNoContent {
		t.Errorf("telemetry with the new LDevID: %d", st)
	}
	if st := f.post(t, f.https(old), "/device/v1/telemetry", `{"metrics":{"health.cpu_pct":1}}`); st != http.StatusUnauthorized && st != http.StatusForbidden {
		t.Errorf("telemetry with the old LDevID after the repair: %d", st)
	}
	c2, err := mqtt.Dial(ctx, mqtt.Options{Addr: f.s.m.device.mqtt.Addr().String(), ClientID: serial,
		TLS: &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{renewed}}})
	if err != nil {
		t.Fatalf("MQTT with the new LDevID: %v", err)
	}
	c2.Close()

	// History: transitions, certificates, audit, telemetry.
	hist, err := f.admin.FindDeviceHistory(ctx, serial)
	if err != nil {
		t.Fatal(err)
	}
	var path []string
	for _, h := range hist {
		path = append(path, string(h.To))
	}
	if got := strings.Join(path, " "); got != "provisioned deployed rma provisioned deployed" {
		t.Errorf("history: %s", got)
	}
	device := serial
	certs, _, err := f.admin.FindCertificates(ctx, cradle.CertificateFilter{DeviceSerial: &device})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]cradle.CertStatus{}
	for _, c := range certs {
		status[c.Serial] = c.Status
	}
	if len(certs) != 3 || status[cradle.SerialHex(d.idevid.Leaf.SerialNumber)] != cradle.CertValid ||
		status[cradle.SerialHex(old.Leaf.SerialNumber)] != cradle.CertRevoked || status[cradle.SerialHex(renewed.Leaf.SerialNumber)] != cradle.CertValid {
		t.Errorf("certificates after the repair: %v", status)
	}
	subject := "device:" + serial
	entries, err := f.admin.FindAuditEntries(ctx, cradle.AuditFilter{Subject: &subject, Limit: cradle.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range entries {
		actions = append(actions, e.Action)
	}
	for _, want := range []string{"device.create", "device.transition", "device.credentials.revoke"} {
		if !slices.Contains(actions, want) {
			t.Errorf("audit of %s lacks %s: %v", serial, want, actions)
		}
	}
	pts, err := sqlstore.NewTelemetryService(f.s.m.db).QueryTelemetry(cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test")),
		cradle.TelemetryQuery{Serial: serial, Metric: "health.cpu_pct"})
	if err != nil || len(pts) != 2 {
		t.Errorf("telemetry kept across the repair: %v, %v", pts, err)
	}
}

// post sends a JSON body on the device listener and returns the status.
func (f *revokeFixture) post(t *testing.T, hc *http.Client, path, body string) int {
	t.Helper()
	resp, err := hc.Post(f.s.m.device.Addr()+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestRevokeDevicesBulk revokes a fleet at once with cradle device revoke
// --selector on SQLite: the devices are imported and each given an
// LDevID of the device CA, then one call revokes them all, regenerating
// and signing the CRL before it returns; openssl parses and verifies the
// CRL and finds every serial in it. 500 devices by default;
// CRADLE_REVOKE_BULK=10000 for the figure of the issue.
func TestRevokeDevicesBulk(t *testing.T) {
	openssl := testkit.NeedProgram(t, "openssl")
	n := 500
	if v, err := strconv.Atoi(os.Getenv("CRADLE_REVOKE_BULK")); err == nil && v > 0 {
		n = v
	}
	f := newRevokeFixture(t)
	ctx := t.Context()
	var csv strings.Builder
	csv.WriteString("serial,model,labels,state\n")
	for i := range n {
		fmt.Fprintf(&csv, "BULK-%05d,gw-100,fleet=bulk,provisioned\n", i)
	}
	csv.WriteString("KEEP-00001,gw-100,fleet=other,provisioned\n")
	if _, err := f.admin.ImportDevices(ctx, cradle.ImportCSV, strings.NewReader(csv.String())); err != nil {
		t.Fatal(err)
	}
	caName := pki.DeviceCAName(len(f.h.DeviceCAs) - 1)
	_, keys, closeKeys, err := openPKI(ctx, f.s.dataDir, noPrompt(), caName)
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certs := sqlstore.NewCertificateService(f.s.m.db)
	setup := time.Now()
	for i := range n + 1 {
		serial := fmt.Sprintf("BULK-%05d", i)
		if i == n {
			serial = "KEEP-00001"
		}
		// Enrolled as the device itself, as EST does.
		_, err := certs.IssueCertificate(cradle.NewContextWithActor(ctx, deviceActor(1, serial)), cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Deploy: true,
			States: []cradle.State{cradle.StateProvisioned},
			Issue: func(ctx context.Context, d *cradle.Device) (*x509.Certificate, error) {
				return pki.Issue(ctx, f.h.DeviceCA(), keys[caName], devKey.Public(), &x509.Certificate{},
					append(pki.LDevID(pki.LDevIDPolicy{}, "default", d.Serial, time.Now()), pki.URLs("127.0.0.1", caName))...)
			}})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("setup: %d devices imported and enrolled in %v", n+1, time.Since(setup).Round(time.Millisecond))

	start := time.Now()
	out := ok(t, append([]string{"device", "revoke", "--selector", "fleet=bulk", "--reason", "keyCompromise", "--json"}, f.s.api...)...)
	took := time.Since(start)
	r := decodeJSON[cradle.BulkRevocation](t, out)
	if len(r.Devices) != n || r.Certificates != n || slices.Contains(r.Devices, "KEEP-00001") {
		t.Fatalf("bulk revocation: %d devices, %d certificates", len(r.Devices), r.Certificates)
	}

	// The CRL the call regenerated: served at once, parsed and verified by
	// openssl, listing every serial.
	crlStart := time.Now()
	crl := f.crl(t, f.https(tls.Certificate{}))
	if len(crl.RevokedCertificateEntries) < n {
		t.Fatalf("the CRL lists %d certificates, want at least %d", len(crl.RevokedCertificateEntries), n)
	}
	t.Logf("revoked %d devices (%d certificates) in %v with the CLI, CRL regeneration included; CRL of %d entries, %d bytes, fetched and parsed in %v",
		len(r.Devices), r.Certificates, took.Round(time.Millisecond), len(crl.RevokedCertificateEntries), len(crl.Raw), time.Since(crlStart).Round(time.Millisecond))
	dir := t.TempDir()
	crlFile := writeFile(t, dir, "device-ca.crl", string(crl.Raw))
	chain := writeFile(t, dir, "chain.pem", string(certsPEM(f.h.DeviceCA(), f.h.Root)))
	o, err := exec.Command(openssl, "crl", "-inform", "DER", "-in", crlFile, "-CAfile", chain, "-noout", "-text").CombinedOutput()
	if err != nil || !strings.Contains(string(o), "verify OK") {
		t.Fatalf("openssl crl: %v\n%s", err, clipTail(string(o), 2000))
	}
	if got := strings.Count(string(o), "Serial Number:"); got != len(crl.RevokedCertificateEntries) {
		t.Errorf("openssl lists %d serials, Go %d", got, len(crl.RevokedCertificateEntries))
	}
	// The device outside the selector keeps its certificate.
	keep := "KEEP-00001"
	kept, _, err := f.admin.FindCertificates(ctx, cradle.CertificateFilter{DeviceSerial: &keep})
	if err != nil || len(kept) != 1 || kept[0].Status != cradle.CertValid {
		t.Errorf("the device outside the selector: %+v, %v", kept, err)
	}
}

// TestDeviceRevokeCLI runs cradle device revoke on one device: it lists
// what it revoked, a second run revokes nothing, the audit chain holds,
// and the command's misuses are refused.
func TestDeviceRevokeCLI(t *testing.T) {
	f := newRevokeFixture(t)
	d := f.enroll(t, "CLI-0001")
	out := ok(t, append([]string{"device", "revoke", "CLI-0001", "--reason", "keyCompromise"}, f.s.api...)...)
	for _, want := range []string{"revoked device CLI-0001 (keyCompromise): 2 credentials", "certificate:idevid", "certificate:ldevid",
		cradle.SerialHex(d.ldevid.Leaf.SerialNumber), cradle.SerialHex(d.idevid.Leaf.SerialNumber)} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if out := ok(t, append([]string{"device", "revoke", "CLI-0001", "--reason", "keyCompromise"}, f.s.api...)...); !strings.Contains(out, "0 credentials") {
		t.Errorf("second revocation:\n%s", out)
	}
	if out := ok(t, append([]string{"audit", "verify"}, f.s.api...)...); strings.Contains(out, "broken") {
		t.Errorf("audit verify:\n%s", out)
	}
	fails(t, "give either a device serial or --selector", append([]string{"device", "revoke", "--reason", "keyCompromise"}, f.s.api...)...)
	fails(t, "give either a device serial or --selector", append([]string{"device", "revoke", "CLI-0001", "--selector", "a=b", "--reason", "keyCompromise"}, f.s.api...)...)
	fails(t, "unknown revocation reason", append([]string{"device", "revoke", "CLI-0001", "--reason", "bored"}, f.s.api...)...)
	fails(t, "not found", append([]string{"device", "revoke", "CLI-404", "--reason", "keyCompromise"}, f.s.api...)...)
}
