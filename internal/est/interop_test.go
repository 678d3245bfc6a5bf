package est_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/est"
	"cradle/internal/testkit"
)

// run runs a program and returns its stdout, failing the test with its
// stderr on a non-zero exit.
func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func readPEMCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

// TestCertsOnlyOpenSSL checks both directions against openssl: what
// EncodeCertsOnly writes, openssl pkcs7 reads; what openssl crl2pkcs7
// writes, ParseCertsOnly reads.
func TestCertsOnlyOpenSSL(t *testing.T) {
	openssl := testkit.NeedProgram(t, "openssl")
	dir := t.TempDir()
	p := newPKI(t)
	certs := []*x509.Certificate{p.idevid.Leaf, p.caCert}
	der, err := est.EncodeCertsOnly(certs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ours.p7"), der, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", "ours.p7", "-print_certs", "-out", "ours.pem")
	got := readPEMCerts(t, filepath.Join(dir, "ours.pem"))
	if len(got) != 2 || !got[0].Equal(certs[0]) || !got[1].Equal(certs[1]) {
		t.Fatalf("openssl read %d certificates, want ours in order", len(got))
	}

	writePEM(t, dir, "a.pem", "CERTIFICATE", certs[0].Raw)
	writePEM(t, dir, "b.pem", "CERTIFICATE", certs[1].Raw)
	run(t, dir, openssl, "crl2pkcs7", "-nocrl", "-certfile", "a.pem", "-certfile", "b.pem", "-outform", "DER", "-out", "theirs.p7")
	theirs, err := os.ReadFile(filepath.Join(dir, "theirs.p7"))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := est.ParseCertsOnly(theirs)
	if err != nil {
		t.Fatalf("ParseCertsOnly(openssl crl2pkcs7): %v", err)
	}
	if len(parsed) != 2 || !parsed[0].Equal(certs[0]) || !parsed[1].Equal(certs[1]) {
		t.Fatalf("parsed %d certificates from openssl, want both in order", len(parsed))
	}
}

// TestCurlOpenSSLEnrollment is enrollment and re-enrollment driven by an
// independent client: openssl makes keys, CSRs and decodes responses,
// curl speaks HTTPS with the client certificate.
func TestCurlOpenSSLEnrollment(t *testing.T) {
	openssl := testkit.NeedProgram(t, "openssl")
	curl := testkit.NeedProgram(t, "curl")
	dir := t.TempDir()
	p := newPKI(t)
	ca := &testCA{pki: p}
	// cacerts is public (RFC 7030 §4.1.1), so the listener verifies a
	// certificate when one is given and the handler requires it where due.
	ts, _ := startServer(t, p, ca, tls.VerifyClientCertIfGiven, nil)
	base := ts.URL + est.WellKnown

	writePEM(t, dir, "ca.pem", "CERTIFICATE", p.caCert.Raw)
	writePEM(t, dir, "idevid.pem", "CERTIFICATE", p.idevid.Leaf.Raw)
	ikey, err := x509.MarshalPKCS8PrivateKey(p.idevid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, dir, "idevid.key", "PRIVATE KEY", ikey)

	// curl writes the body to -o and prints the status on stdout.
	curlEST := func(t *testing.T, cert, key, op, out string, post string) string {
		t.Helper()
		args := []string{"-sS", "--cacert", "ca.pem", "-o", out, "-w", "%{http_code} %{content_type}"}
		if cert != "" {
			args = append(args, "--cert", cert, "--key", key)
		}
		if post != "" {
			args = append(args, "-H", "Content-Type: application/pkcs10", "--data-binary", "@"+post)
		}
		return run(t, dir, curl, append(args, base+op)...)
	}

	// cacerts
	if got := curlEST(t, "", "", "cacerts", "cacerts.b64", ""); got != "200 application/pkcs7-mime" {
		t.Fatalf("cacerts: curl says %q", got)
	}
	run(t, dir, openssl, "base64", "-d", "-in", "cacerts.b64", "-out", "cacerts.der")
	run(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", "cacerts.der", "-print_certs", "-out", "cacerts.pem")
	if got := readPEMCerts(t, filepath.Join(dir, "cacerts.pem")); len(got) != 1 || !got[0].Equal(p.caCert) {
		t.Fatal("cacerts via curl+openssl is not the test CA")
	}

	// simpleenroll with the IDevID; openssl base64 breaks lines at 64.
	run(t, dir, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "dev.key", "-subj", "/CN=SN-0001/O=acme", "-addext", "subjectAltName=URI:urn:cradle:acme:SN-0001",
		"-outform", "DER", "-out", "csr.der")
	run(t, dir, openssl, "base64", "-in", "csr.der", "-out", "csr.b64")
	if got := curlEST(t, "idevid.pem", "idevid.key", "simpleenroll", "cert.b64", "csr.b64"); got != "200 application/pkcs7-mime; smime-type=certs-only" {
		t.Fatalf("simpleenroll: curl says %q", got)
	}
	run(t, dir, openssl, "base64", "-d", "-in", "cert.b64", "-out", "cert.p7")
	run(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", "cert.p7", "-print_certs", "-out", "ldevid.pem")
	issued := readPEMCerts(t, filepath.Join(dir, "ldevid.pem"))
	if len(issued) != 1 {
		t.Fatalf("simpleenroll gave %d certificates, want 1", len(issued))
	}
	// The certificate holds the key openssl made.
	mod := run(t, dir, openssl, "pkey", "-in", "dev.key", "-pubout")
	if certPub := run(t, dir, openssl, "x509", "-in", "ldevid.pem", "-noout", "-pubkey"); certPub != mod {
		t.Fatal("issued certificate does not hold dev.key's public key")
	}
	run(t, dir, openssl, "verify", "-CAfile", "ca.pem", "-purpose", "sslclient", "ldevid.pem")

	// simplereenroll with the LDevID and a new key, same names (openssl
	// encodes the subject as UTF8String, Go's CA as PrintableString: the
	// names still compare equal).
	run(t, dir, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "dev2.key", "-subj", "/CN=SN-0001/O=acme", "-addext", "subjectAltName=URI:urn:cradle:acme:SN-0001",
		"-outform", "DER", "-out", "csr2.der")
	run(t, dir, openssl, "base64", "-in", "csr2.der", "-out", "csr2.b64")
	if got := curlEST(t, "ldevid.pem", "dev.key", "simplereenroll", "cert2.b64", "csr2.b64"); got != "200 application/pkcs7-mime; smime-type=certs-only" {
		t.Fatalf("simplereenroll: curl says %q", got)
	}
	run(t, dir, openssl, "base64", "-d", "-in", "cert2.b64", "-out", "cert2.p7")
	run(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", "cert2.p7", "-print_certs", "-out", "ldevid2.pem")
	renewed := readPEMCerts(t, filepath.Join(dir, "ldevid2.pem"))
	if len(renewed) != 1 || renewed[0].Equal(issued[0]) {
		t.Fatal("simplereenroll did not give a new certificate")
	}
	calls := ca.calls()
	if len(calls) != 2 || calls[1].op != "reenroll" || !calls[1].client.Equal(issued[0]) {
		t.Fatalf("CA calls = %+v, want enroll then reenroll with the LDevID", calls)
	}

	// Refusals through curl: re-enrollment for another subject (403) and
	// enrollment without a client certificate are refused, with text.
	run(t, dir, openssl, "req", "-new", "-key", "dev2.key", "-subj", "/CN=SN-0002/O=acme",
		"-addext", "subjectAltName=URI:urn:cradle:acme:SN-0001", "-outform", "DER", "-out", "csr3.der")
	run(t, dir, openssl, "base64", "-in", "csr3.der", "-out", "csr3.b64")
	if got := curlEST(t, "ldevid2.pem", "dev2.key", "simplereenroll", "refused.txt", "csr3.b64"); got != "403 text/plain; charset=utf-8" {
		t.Fatalf("reenroll for another subject: curl says %q", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "refused.txt")); !strings.Contains(string(b), "differs from the current certificate") {
		t.Fatalf("refusal text = %q", b)
	}
	if got := curlEST(t, "", "", "simpleenroll", "refused.txt", "csr3.b64"); got != "401 text/plain; charset=utf-8" {
		t.Fatalf("enroll without a client certificate: curl says %q", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "refused.txt")); !strings.Contains(string(b), "verified TLS client certificate is required") {
		t.Fatalf("refusal text = %q", b)
	}
	if n := len(ca.calls()); n != 2 {
		t.Fatalf("CA called %d times, want 2", n)
	}
}
