package swu_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle/internal/compat/swu"
)

// testPKI is a CA and a signer certificate it issued.
type testPKI struct {
	CA     *x509.Certificate
	CAKey  *ecdsa.PrivateKey
	Signer swu.Signer
	Roots  *x509.CertPool
}

func newPKI(t testing.TB, name string, eku ...x509.ExtKeyUsage) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if eku == nil {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " update signer"},
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku,
	}
	der, err = x509.CreateCertificate(rand.Reader, leaf, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &testPKI{CA: ca, CAKey: caKey, Signer: swu.Signer{Cert: cert, Key: key}, Roots: roots}
}

// writeFiles writes the CA, signer certificate and key as PEM into dir.
func (p *testPKI) writeFiles(t testing.TB, dir string) (ca, cert, key string) {
	t.Helper()
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "signer.pem"), filepath.Join(dir, "signer.key")
	kder, err := x509.MarshalPKCS8PrivateKey(p.Signer.Key)
	if err != nil {
		t.Fatal(err)
	}
	for path, blk := range map[string]*pem.Block{
		ca: {Type: "CERTIFICATE", Bytes: p.CA.Raw}, cert: {Type: "CERTIFICATE", Bytes: p.Signer.Cert.Raw},
		key: {Type: "PRIVATE KEY", Bytes: kder},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, cert, key
}

// sources turns name→content pairs into files entries installed under dir.
func sources(dir string, kv ...string) []swu.Source {
	var out []swu.Source
	for i := 0; i < len(kv); i += 2 {
		out = append(out, swu.Source{
			Entry: swu.Entry{Section: "files", Filename: kv[i], Type: "rawfile", Dest: filepath.Join(dir, kv[i])},
			Data:  strings.NewReader(kv[i+1]), Size: int64(len(kv[i+1])),
		})
	}
	return out
}

func build(t testing.TB, spec swu.Spec, src []swu.Source, s swu.Signer) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := swu.Write(&b, spec, src, s); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return b.Bytes()
}
