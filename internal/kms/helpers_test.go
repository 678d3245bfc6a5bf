package kms_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle/internal/testkit"
)

// writeFile writes data to a new file in dir with mode 0600 and returns its path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// publicPEM returns the PKIX PEM of a public key, as openssl pkey -pubout prints it.
func publicPEM(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// issueAndVerify makes a self-signed CA certificate with signer, issues a
// leaf certificate under it, and checks the chain with openssl verify.
func issueAndVerify(t *testing.T, signer crypto.Signer) {
	t.Helper()
	openssl := testkit.NeedProgram(t, "openssl")
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kms test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, signer.Public(), signer)
	if err != nil {
		t.Fatalf("self-sign CA certificate: %v", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "device-0001"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, leafKey.Public(), signer)
	if err != nil {
		t.Fatalf("issue leaf certificate: %v", err)
	}
	dir := t.TempDir()
	caPath := writeFile(t, dir, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	leafPath := writeFile(t, dir, "leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}))
	out := testkit.Run(t, openssl, "verify", "-CAfile", caPath, leafPath)
	if !strings.Contains(out, leafPath+": OK") {
		t.Fatalf("openssl verify did not accept the certificate:\n%s", out)
	}
	// The negative: a leaf whose signature is damaged is refused, so the
	// check above can fail.
	bad := bytes.Clone(leafDER)
	bad[len(bad)-5] ^= 0xff
	badPath := writeFile(t, dir, "bad.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bad}))
	if out, err := exec.Command(openssl, "verify", "-CAfile", caPath, badPath).CombinedOutput(); err == nil {
		t.Fatalf("openssl verify accepted a certificate with a damaged signature:\n%s", out)
	}
}
