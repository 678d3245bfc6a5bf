//go:build cgo

package kms_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"cradle/internal/kms"
	"cradle/internal/testkit"
)

// TestPKCS11Destroy: Destroy removes the private key, the public key and
// a certificate sharing their id from the token, as pkcs11-tool sees it,
// and leaves other keys alone.
func TestPKCS11Destroy(t *testing.T) {
	ctx := context.Background()
	tool := testkit.NeedProgram(t, "pkcs11-tool")
	tok := newSoftToken(t, "cradle-destroy")
	uri := "pkcs11:token=cradle-destroy;object=doomed;id=%AB%CD?module-path=" + softhsmModule + "&pin-source=file:" + tok.pinFile
	s, err := kms.Generate(ctx, uri, kms.ECDSAP256, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "doomed"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	kms.Close(s)
	certPath := writeFile(t, t.TempDir(), "cert.der", der)
	list := []string{"--module", softhsmModule, "--token-label", "cradle-destroy", "--login", "--pin", "1234"}
	testkit.Run(t, tool, append(list, "--write-object", certPath, "--type", "cert", "--id", "abcd", "--label", "doomed")...)
	keep, err := kms.Generate(ctx, tok.uri("keeper"), kms.ECDSAP256, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kms.Close(keep)

	before := testkit.Run(t, tool, append(list, "--list-objects")...)
	if n := strings.Count(before, "label:      doomed"); n != 3 {
		t.Fatalf("want a private key, a public key and a certificate labelled doomed, pkcs11-tool lists %d objects:\n%s", n, before)
	}
	if err := kms.Destroy(ctx, uri, kms.Options{}); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	after := testkit.Run(t, tool, append(list, "--list-objects")...)
	if strings.Contains(after, "doomed") || strings.Contains(after, "ID:         abcd") {
		t.Errorf("objects of the destroyed key are left:\n%s", after)
	}
	if strings.Count(after, "label:      keeper") != 2 {
		t.Errorf("the other key pair was touched:\n%s", after)
	}
	if err := kms.Destroy(ctx, uri, kms.Options{}); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Errorf("second Destroy: %v, want ErrKeyNotFound", err)
	}
	if _, err := kms.Open(ctx, uri, kms.Options{}); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Errorf("Open after Destroy: %v, want ErrKeyNotFound", err)
	}
}
