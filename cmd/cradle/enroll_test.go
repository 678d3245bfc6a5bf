package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/est"
	"cradle/internal/testkit"
)

// TestEnrollmentEndToEnd runs the whole PKI through the real server: pki
// init, serve (with the device listener), the factory records an IDevID,
// curl and openssl enroll the device over EST, the Go client re-enrolls,
// openssl ocsp says good, cradle pki revoke, openssl ocsp says revoked and
// openssl verify -crl_check refuses the certificate.
func TestEnrollmentEndToEnd(t *testing.T) {
	openssl := testkit.NeedProgram(t, "openssl")
	curl := testkit.NeedProgram(t, "curl")
	s := startPKIServer(t, nil)
	m, dataDir, api, line := s.m, s.dataDir, s.api, s.line
	if m.device == nil {
		t.Fatal("the device listener did not start on a data directory with a PKI")
	}

	// The factory: the device, its IDevID (signed with the manufacturing CA
	// key, as the station will), recorded, and the unit provisioned.
	ok(t, append([]string{"device", "create", "--serial", "SN-0001", "--model", "gw-100"}, line...)...)
	h, devKey, idevid := newIDevID(t, dataDir, "SN-0001")
	dir := t.TempDir()
	file := func(name string, data []byte) string { return writeFile(t, dir, name, string(data)) }
	idevFile := file("idevid.crt", certsPEM(idevid))
	keyDER, _ := x509.MarshalPKCS8PrivateKey(devKey)
	idevKey := file("idevid.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	root := file("root.crt", certsPEM(h.Root))
	deviceCA := file("device-ca.crt", certsPEM(h.DeviceCA()))
	ok(t, append([]string{"pki", "record", "--device", "SN-0001", idevFile}, line...)...)
	ok(t, append([]string{"device", "transition", "SN-0001", "provisioned"}, line...)...)

	// Enrollment by an independent client: openssl makes the key and CSR,
	// curl speaks EST with the IDevID as its client certificate.
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	csr := filepath.Join(dir, "ldevid.csr")
	run(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(dir, "ldevid.key"),
		"-subj", "/serialNumber=SN-0001/CN=SN-0001", "-outform", "DER", "-out", csr)
	der, _ := os.ReadFile(csr)
	csrB64 := file("ldevid.b64", []byte(base64.StdEncoding.EncodeToString(der)))
	resp := run(curl, "-sS", "--fail-with-body", "--cacert", root, "--cert", idevFile, "--key", idevKey,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+csrB64, m.device.Addr()+"/.well-known/est/simpleenroll")
	p7, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(resp), ""))
	if err != nil {
		t.Fatalf("simpleenroll answered %q: %v", resp, err)
	}
	issued, err := est.ParseCertsOnly(p7)
	if err != nil || len(issued) != 1 {
		t.Fatalf("simpleenroll's certs-only: %v, %v", issued, err)
	}
	ldevid := issued[0]
	ldevFile := file("ldevid.crt", certsPEM(ldevid))
	if out := run(openssl, "verify", "-CAfile", root, "-untrusted", deviceCA, "-purpose", "sslclient", ldevFile); !strings.Contains(out, ": OK") {
		t.Errorf("openssl verify of the LDevID:\n%s", out)
	}
	d := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", "SN-0001", "--json"}, api...)...))
	if d.Device.State != cradle.StateDeployed {
		t.Errorf("after enrollment the device is %s, want deployed", d.Device.State)
	}

	// Re-enrollment by the Go client, with the LDevID and a new key.
	ldevKeyPEM, _ := os.ReadFile(filepath.Join(dir, "ldevid.key"))
	pair, err := tls.X509KeyPair(certsPEM(ldevid), ldevKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(h.Root)
	client, err := est.NewClient(m.device.Addr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var san []pkix.Extension
	for _, e := range ldevid.Extensions {
		if e.Id.String() == "2.5.29.17" {
			san = append(san, e)
		}
	}
	reCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{RawSubject: ldevid.RawSubject, ExtraExtensions: san}, newKey)
	renewed, err := client.SimpleReenroll(t.Context(), reCSR)
	if err != nil {
		t.Fatalf("re-enroll: %v", err)
	}
	renewedFile := file("renewed.crt", certsPEM(renewed))
	if old := decodeJSON[cradle.Certificate](t, ok(t, append([]string{"pki", "show", cradle.SerialHex(ldevid.SerialNumber), "--json"}, api...)...)); old.Status != cradle.CertSuperseded {
		t.Errorf("the renewed LDevID is %s, want superseded", old.Status)
	}

	// OCSP: good; revoke through the CLI; revoked. The CRL follows.
	ocspURL := m.device.Addr() + "/pki/ocsp"
	ocsp := func(cert string) string {
		return run(openssl, "ocsp", "-issuer", deviceCA, "-cert", cert, "-url", ocspURL, "-CAfile", root)
	}
	if out := ocsp(renewedFile); !strings.Contains(out, "Response verify OK") || !strings.Contains(out, renewedFile+": good") || strings.Contains(out, "WARNING") {
		t.Errorf("openssl ocsp before the revocation:\n%s", out)
	}
	ok(t, append([]string{"pki", "revoke", "--serial", cradle.SerialHex(renewed.SerialNumber), "--reason", "keyCompromise"}, api...)...)
	if out := ocsp(renewedFile); !strings.Contains(out, renewedFile+": revoked") || !strings.Contains(out, "keyCompromise") {
		t.Errorf("openssl ocsp after cradle pki revoke:\n%s", out)
	}
	crlDER := []byte(run(curl, "-sS", "--fail", "--cacert", root, m.device.Addr()+"/pki/crl/device-ca.crl"))
	crl := file("device-ca.crl", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crlDER}))
	if out, err := exec.Command(openssl, "verify", "-crl_check", "-CAfile", root, "-untrusted", deviceCA, "-CRLfile", crl, renewedFile).CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate revoked") {
		t.Errorf("openssl verify -crl_check of the revoked certificate:\n%s", out)
	}
	// The revoked certificate no longer opens the listener.
	revokedClient, err := est.NewClient(m.device.Addr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{renewed.Raw}, PrivateKey: newKey}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := revokedClient.SimpleReenroll(t.Context(), reCSR); err == nil || !strings.Contains(err.Error(), "was revoked") {
		t.Errorf("re-enrolling with a revoked certificate: %v", err)
	}
}
