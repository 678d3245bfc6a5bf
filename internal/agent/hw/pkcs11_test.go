//go:build cgo

package hw_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

func newPKCS11Store(t *testing.T) (*hw.PKCS11KeyStore, *testkit.SoftHSM) {
	t.Helper()
	h := testkit.NewSoftHSM(t, "se")
	ks, err := hw.NewPKCS11KeyStore(h.Module, "se", "file:"+h.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ks.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ks, h
}

// TestPKCS11KeyStore: keys made in a SoftHSM2 token sign digests that
// verify, are found again by name, are not made twice, and are gone from
// the token (as pkcs11-tool lists it) once destroyed.
func TestPKCS11KeyStore(t *testing.T) {
	ctx := context.Background()
	ks, h := newPKCS11Store(t)
	for _, tc := range []struct {
		alg   hw.Algorithm
		curve elliptic.Curve
	}{{"", elliptic.P256()}, {hw.ECDSAP384, elliptic.P384()}} {
		name := "idevid-" + string(tc.alg)
		if tc.alg == "" {
			name = "idevid"
		}
		s, err := ks.CreateKey(ctx, name, tc.alg)
		if err != nil {
			t.Fatalf("CreateKey(%s, %q): %v", name, tc.alg, err)
		}
		pub, ok := s.Public().(*ecdsa.PublicKey)
		if !ok || pub.Curve != tc.curve {
			t.Fatalf("CreateKey(%q) made a %T key", tc.alg, s.Public())
		}
		digest := sha256.Sum256([]byte("hello"))
		sig, err := s.Sign(rand.Reader, digest[:], nil)
		if err != nil {
			t.Fatalf("Sign: %v", err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Errorf("signature by %s does not verify", name)
		}
		again, err := ks.Key(ctx, name)
		if err != nil {
			t.Fatalf("Key(%s): %v", name, err)
		}
		if !pub.Equal(again.Public()) {
			t.Errorf("Key(%s) found another key", name)
		}
		if _, err := ks.CreateKey(ctx, name, tc.alg); !errors.Is(err, hw.ErrExists) {
			t.Errorf("second CreateKey(%s): %v, want ErrExists", name, err)
		}
	}
	if !strings.Contains(h.Objects(t, "se"), "label:      idevid\n") {
		t.Fatalf("pkcs11-tool lists no idevid object:\n%s", h.Objects(t, "se"))
	}

	held, err := ks.Key(ctx, "idevid")
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.DestroyKey(ctx, "idevid"); err != nil {
		t.Fatalf("DestroyKey: %v", err)
	}
	digest := sha256.Sum256([]byte("after"))
	if _, err := held.Sign(rand.Reader, digest[:], nil); err == nil {
		t.Errorf("a signer of the destroyed key still signs")
	}
	objs := h.Objects(t, "se")
	if strings.Contains(objs, "label:      idevid\n") {
		t.Errorf("pkcs11-tool still lists idevid objects after DestroyKey:\n%s", objs)
	}
	if !strings.Contains(objs, "label:      idevid-ecdsa-p384\n") {
		t.Errorf("DestroyKey removed another key:\n%s", objs)
	}
	if _, err := ks.Key(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("Key after DestroyKey: %v, want ErrNotFound", err)
	}
	if err := ks.DestroyKey(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("second DestroyKey: %v, want ErrNotFound", err)
	}
	// The name is free again.
	if _, err := ks.CreateKey(ctx, "idevid", hw.ECDSAP256); err != nil {
		t.Errorf("CreateKey after DestroyKey: %v", err)
	}
}

func TestPKCS11KeyStoreRefusals(t *testing.T) {
	ctx := context.Background()
	ks, _ := newPKCS11Store(t)
	if _, err := ks.CreateKey(ctx, "k", hw.Ed25519); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("CreateKey(ed25519): %v, want ErrInvalid", err)
	}
	if _, err := ks.CreateKey(ctx, "k", "rsa-512"); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("CreateKey(rsa-512): %v, want ErrInvalid", err)
	}
	if _, err := ks.CreateKey(ctx, "../k", ""); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("CreateKey(../k): %v, want ErrInvalid", err)
	}
	for _, tc := range []struct{ module, token, pin string }{
		{"", "se", "file:/pin"},
		{testkit.SoftHSMModule, "", "file:/pin"},
		{testkit.SoftHSMModule, "se", "/pin"},
		{testkit.SoftHSMModule, "se", "file:"},
	} {
		if _, err := hw.NewPKCS11KeyStore(tc.module, tc.token, tc.pin); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("NewPKCS11KeyStore(%q, %q, %q): %v, want ErrInvalid", tc.module, tc.token, tc.pin, err)
		}
	}
}

// TestPKCS11ListAndDestroyLabelled: ListKeys names the token's key pairs;
// DestroyKey also destroys a certificate labelled with the key's name (as
// pkcs11-tool writes one), and a certificate alone under that name.
func TestPKCS11ListAndDestroyLabelled(t *testing.T) {
	ctx := context.Background()
	ks, h := newPKCS11Store(t)
	for _, n := range []string{"ldevid-1", "idevid"} {
		if _, err := ks.CreateKey(ctx, n, ""); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := ks.ListKeys(ctx); err != nil || strings.Join(got, ",") != "idevid,ldevid-1" {
		t.Fatalf("ListKeys: %v, %v", got, err)
	}
	tool := testkit.NeedProgram(t, "pkcs11-tool")
	der := filepath.Join(t.TempDir(), "cert.der")
	os.WriteFile(der, selfSignedDER(t), 0o600)
	for _, label := range []string{"idevid", "orphan-cert"} {
		testkit.Run(t, tool, "--module", h.Module, "--token-label", "se", "--login", "--pin", h.PIN,
			"--write-object", der, "--type", "cert", "--label", label, "--id", "77")
	}
	if err := ks.DestroyKey(ctx, "idevid"); err != nil {
		t.Fatal(err)
	}
	if err := ks.DestroyKey(ctx, "orphan-cert"); err != nil {
		t.Fatalf("DestroyKey of a name only a certificate has: %v", err)
	}
	out := h.Objects(t, "se")
	if strings.Contains(out, "idevid") || strings.Contains(out, "orphan-cert") || !strings.Contains(out, "ldevid-1") {
		t.Errorf("objects after destroying idevid and orphan-cert:\n%s", out)
	}
	if err := ks.DestroyKey(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("second DestroyKey: %v, want ErrNotFound", err)
	}
}

func selfSignedDER(t *testing.T) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "c"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
