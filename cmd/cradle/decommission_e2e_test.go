package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/est"
	"cradle/internal/pki"
)

// TestDecommissionEndToEnd: an enrolled device is OFFLINE when an admin
// decommissions it. Its certificates are revoked at once (the device CA's
// CRL lists its LDevID), its IDevID cannot enroll again, and it is eol.
// When it comes back with its revoked LDevID it gets exactly its signed
// wipe command and nothing else, posts its tombstone (signed here with
// its key; the agent side is h-wipe's), and the certificate shows the
// confirmation, signed with the audit key.
func TestDecommissionEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the server with a PKI")
	}
	s := startPKIServer(t, nil)
	m, dataDir, api, line := s.m, s.dataDir, s.api, s.line
	serial := "SN-D001"
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// The factory records the IDevID; the device enrolls over EST.
	ok(t, append([]string{"device", "create", "--serial", serial, "--model", "gw-100"}, line...)...)
	h, idevKey, idevid := newIDevID(t, dataDir, serial)
	idevFile := writeFile(t, t.TempDir(), "idevid.crt", string(certsPEM(idevid)))
	ok(t, append([]string{"pki", "record", "--device", serial, idevFile}, line...)...)
	ok(t, append([]string{"device", "transition", serial, "provisioned"}, line...)...)
	roots := x509.NewCertPool()
	roots.AddCert(h.Root)
	enroll := func(key crypto.Signer, cert *x509.Certificate) (*x509.Certificate, error) {
		c, err := est.NewClient(m.device.Addr(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ldevKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: serial, CommonName: serial}}, ldevKey)
		return c.SimpleEnroll(ctx, csr)
	}
	ldevKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := est.NewClient(m.device.Addr(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{{Certificate: [][]byte{idevid.Raw}, PrivateKey: idevKey}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: serial, CommonName: serial}}, ldevKey)
	ldevid, err := c.SimpleEnroll(ctx, csr)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	device := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
		Certificates: []tls.Certificate{{Certificate: [][]byte{ldevid.Raw}, PrivateKey: ldevKey}}}}}
	defer device.CloseIdleConnections()
	call := func(method, path string, body []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, m.device.Addr()+path, bytes.NewReader(body))
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := device.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Online once: a deployed device reaches its routes.
	if st, body := call("GET", "/device/v1/commands", nil); st != 200 || !strings.Contains(body, `"commands":[]`) {
		t.Fatalf("commands before decommissioning: %d %s", st, body)
	}
	device.CloseIdleConnections() // offline from here on

	// The admin decommissions the offline device with the CLI.
	fails(t, "decommission_approvers", append([]string{"policy", "set", "--decommission-approvers", "3"}, api...)...)
	if out := ok(t, append([]string{"policy", "set", "--decommission-approvers", "1"}, api...)...); !strings.Contains(out, "decommission_approvers:  1") {
		t.Fatalf("policy set:\n%s", out)
	}
	fails(t, "--reason", append([]string{"device", "decommission", serial}, api...)...)
	x := decodeJSON[cradle.Decommission](t, ok(t, append([]string{"device", "decommission", serial, "--reason", "end of service", "--json"}, api...)...))
	if x.State != cradle.DecommissionWiping || len(x.Revoked) != 2 {
		t.Fatalf("decommissioning: %+v", x)
	}
	if out := ok(t, append([]string{"device", "decommission", "show", serial}, api...)...); !strings.Contains(out, "wiping") || !strings.Contains(out, "certificate:ldevid") {
		t.Fatalf("decommission show:\n%s", out)
	}

	// Revoked at once: the device CA's CRL lists the LDevID, for
	// cessationOfOperation; the IDevID is revoked too.
	public := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := public.Get(m.device.Addr() + "/pki/crl/" + pki.DeviceCAName(0) + ".crl")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("CRL: %v", err)
	}
	if err := crl.CheckSignatureFrom(h.DeviceCA()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	listed := false
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(ldevid.SerialNumber) == 0 {
			listed = e.ReasonCode == int(cradle.ReasonCessationOfOperation)
		}
	}
	if !listed {
		t.Fatalf("the CRL (%d entries) does not list the LDevID %s for cessationOfOperation", len(crl.RevokedCertificateEntries), cradle.SerialHex(ldevid.SerialNumber))
	}
	if rec := decodeJSON[cradle.Certificate](t, ok(t, append([]string{"pki", "show", cradle.SerialHex(idevid.SerialNumber), "--json"}, api...)...)); rec.Status != cradle.CertRevoked {
		t.Fatalf("IDevID after decommissioning: %s", rec.Status)
	}
	// The IDevID can never enroll again: it is revoked, and a fresh IDevID
	// of the same serial meets an eol device.
	if _, err := enroll(idevKey, idevid); err == nil || !strings.Contains(err.Error(), "was revoked") {
		t.Fatalf("enroll with the revoked IDevID: %v", err)
	}
	_, freshKey, fresh := newIDevID(t, dataDir, serial)
	freshFile := writeFile(t, t.TempDir(), "fresh.crt", string(certsPEM(fresh)))
	if r := cradleCLI(t, "", append([]string{"pki", "record", "--device", serial, freshFile}, line...)...); r.code == 0 {
		if _, err := enroll(freshKey, fresh); err == nil || !strings.Contains(err.Error(), "eol") {
			t.Fatalf("enroll with a fresh IDevID of an eol device: %v", err)
		}
	}

	// The device comes back with its revoked LDevID: the wipe command,
	// and nothing else.
	st, body := call("GET", "/device/v1/commands", nil)
	if st != 200 {
		t.Fatalf("commands of the device being wiped: %d %s", st, body)
	}
	var doc struct{ Commands []json.RawMessage }
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Commands) != 1 {
		t.Fatalf("commands: %s, %v", body, err)
	}
	v := &command.Verifier{Root: h.Root, Serial: serial, Sequence: &command.MemorySequence{}}
	wipe, err := v.Verify(doc.Commands[0])
	if err != nil || wipe.Kind != command.KindWipe || wipe.ID != x.CommandID {
		t.Fatalf("the wipe envelope: %+v, %v", wipe, err)
	}
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/device/v1/telemetry", `{"metrics":{"x":1}}`},
		{"POST", "/device/v1/commands/result", `{}`},
		{"GET", "/device/v1/update", ""},
	} {
		if st, body := call(r.method, r.path, []byte(r.body)); st != 401 || !strings.Contains(body, "revoked") {
			t.Errorf("%s %s of the device being wiped: %d %s", r.method, r.path, st, body)
		}
	}

	// It stays offline past the wipe's time to live: the wipe expires,
	// and its next poll gets a fresh one (the record names it).
	rawDB, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "cradle.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer rawDB.Close()
	if _, err := rawDB.Exec(`UPDATE device_commands SET expires_at = ? WHERE public_id = ?`, time.Now().Add(-time.Minute).UnixMicro(), wipe.ID); err != nil {
		t.Fatal(err)
	}
	st, body = call("GET", "/device/v1/commands", nil)
	if err := json.Unmarshal([]byte(body), &doc); st != 200 || err != nil || len(doc.Commands) != 1 {
		t.Fatalf("commands after the wipe expired: %d %s, %v", st, body, err)
	}
	renewed, err := v.Verify(doc.Commands[0])
	if err != nil || renewed.Kind != command.KindWipe || renewed.ID == wipe.ID || renewed.Sequence <= wipe.Sequence {
		t.Fatalf("the reissued wipe: %+v, %v (expired %s)", renewed, err, wipe.ID)
	}
	if rec := decodeJSON[cradle.Decommission](t, ok(t, append([]string{"device", "decommission", "show", serial, "--json"}, api...)...)); rec.CommandID != renewed.ID {
		t.Fatalf("the record names %s, want the reissued %s", rec.CommandID, renewed.ID)
	}
	wipe = renewed

	// Its tombstone, signed with its LDevID key.
	signWith := func(key *ecdsa.PrivateKey, cert *x509.Certificate, tb cradle.Tombstone) []byte {
		payload, _ := json.Marshal(tb)
		sum := sha256.Sum256(payload)
		sig, _ := ecdsa.SignASN1(rand.Reader, key, sum[:])
		b, _ := json.Marshal(cradle.SignedTombstone{Payload: payload, Signature: sig, Certificate: cert.Raw})
		return b
	}
	sign := func(key *ecdsa.PrivateKey, tb cradle.Tombstone) []byte { return signWith(key, ldevid, tb) }
	tb := cradle.Tombstone{Serial: serial, CommandID: wipe.ID, Sequence: wipe.Sequence, Lifecycle: "eol", At: time.Now().UTC(),
		Erased: []cradle.ErasedObject{{Store: "file", Kind: "key", Name: "ldevid"}, {Store: "state", Kind: "secret", Name: "state.json"}}}
	if st, body := call("POST", "/device/v1/tombstone", sign(idevKey, tb)); st != 400 || !strings.Contains(body, "signature") {
		t.Fatalf("a tombstone signed with another key: %d %s", st, body)
	}
	// Signed, but with another certificate than the connection's.
	if st, body := call("POST", "/device/v1/tombstone", signWith(idevKey, idevid, tb)); st != 400 || !strings.Contains(body, "TLS client certificate") {
		t.Fatalf("a tombstone with another certificate than the connection's: %d %s", st, body)
	}
	if st, body := call("POST", "/device/v1/tombstone", sign(ldevKey, tb)); st != 200 || !strings.Contains(body, `"confirmed"`) {
		t.Fatalf("tombstone: %d %s", st, body)
	}
	// Confirmed: the exception is closed.
	if st, body := call("GET", "/device/v1/commands", nil); st != 401 {
		t.Fatalf("commands after the confirmation: %d %s", st, body)
	}

	// The certificate shows the confirmation, signed with the audit key.
	dir := t.TempDir()
	ok(t, append([]string{"device", "decommission", "certificate", serial, "-o", dir + "/cert.json"}, api...)...)
	ok(t, append([]string{"device", "decommission", "certificate", serial, "--html", "-o", dir + "/cert.html"}, api...)...)
	raw, _ := os.ReadFile(dir + "/cert.json")
	cert := decodeJSON[cradle.DecommissionCertificate](t, string(raw))
	if page, _ := os.ReadFile(dir + "/cert.html"); !strings.Contains(string(page), "Device confirmed it is erasing") || !strings.Contains(string(page), serial) {
		t.Errorf("the HTML certificate:\n%s", page)
	}
	if err := cert.Verify(m.db.AuditPublicKey()); err != nil {
		t.Fatalf("certificate signature: %v", err)
	}
	if cert.Decommission.State != cradle.DecommissionConfirmed || cert.Decommission.ConfirmedAt == nil || cert.Decommission.Tombstone == nil || len(cert.Decommission.Tombstone.Erased) != 2 {
		t.Fatalf("certificate: %+v", cert.Decommission)
	}
}
