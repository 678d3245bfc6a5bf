//go:build cgo

package kms_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle/internal/kms"
	"cradle/internal/testkit"
)

// TestPKCS11DestroyObjects: with two key pairs under one label (which
// Destroy refuses) and a private key whose public half is gone (which
// crypto11 does not see), ListPKCS11KeyLabels lists both labels and
// DestroyPKCS11Objects destroys every object under each, with the
// certificate sharing a destroyed key's id, while another key stays;
// with nothing left it destroys none. A signer opened before (crypto11
// holds the module initialized) keeps working.
func TestPKCS11DestroyObjects(t *testing.T) {
	ctx := context.Background()
	tool := testkit.NeedProgram(t, "pkcs11-tool")
	tok := newSoftToken(t, "cradle-sweep")
	keep, err := kms.Generate(ctx, tok.uri("keeper"), kms.ECDSAP256, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	closeSigner(t, keep)
	login := []string{"--module", softhsmModule, "--token-label", "cradle-sweep", "--login", "--pin", "1234"}
	for _, id := range []string{"01", "02"} {
		testkit.Run(t, tool, append(login, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "twice", "--id", id)...)
	}
	testkit.Run(t, tool, append(login, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "half", "--id", "03")...)
	testkit.Run(t, tool, append(login, "--delete-object", "--type", "pubkey", "--label", "half")...)
	ck, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "twice"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ck.Public(), ck)
	if err != nil {
		t.Fatal(err)
	}
	certPath := writeFile(t, t.TempDir(), "cert.der", der)
	testkit.Run(t, tool, append(login, "--write-object", certPath, "--type", "cert", "--id", "02", "--label", "twice-cert")...)

	u := kms.PKCS11URI{Token: "cradle-sweep", ModulePath: softhsmModule, PINSource: tok.pinFile}
	labels, err := kms.ListPKCS11KeyLabels(ctx, u, kms.Options{})
	if err != nil || !slices.Equal(labels, []string{"half", "keeper", "twice"}) {
		t.Fatalf("ListPKCS11KeyLabels: %q, %v", labels, err)
	}
	if err := kms.Destroy(ctx, tok.uri("twice"), kms.Options{}); err == nil || !strings.Contains(err.Error(), "2 key pairs") {
		t.Fatalf("Destroy of two pairs: %v, want a refusal", err)
	}
	for label, want := range map[string]int{"twice": 5, "half": 1} { // 2×2 keys and a certificate; a private key
		n, err := kms.DestroyPKCS11Objects(ctx, tok.uri(label), kms.Options{})
		if err != nil || n != want {
			t.Errorf("DestroyPKCS11Objects(%s): %d, %v; want %d", label, n, err, want)
		}
	}
	out := testkit.Run(t, tool, append(login, "--list-objects")...)
	if strings.Contains(out, "twice") || strings.Contains(out, "half") || strings.Count(out, "label:      keeper") != 2 {
		t.Errorf("objects after the sweep:\n%s", out)
	}
	if n, err := kms.DestroyPKCS11Objects(ctx, tok.uri("twice"), kms.Options{}); n != 0 || err != nil {
		t.Errorf("second sweep: %d, %v", n, err)
	}
	if _, err := keep.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); err != nil {
		t.Errorf("the signer opened before the sweeps: %v", err)
	}
	if _, err := kms.DestroyPKCS11Objects(ctx, "pkcs11:token=cradle-sweep?module-path="+softhsmModule+"&pin-source=file:"+tok.pinFile, kms.Options{}); err == nil {
		t.Error("a sweep without a label was not refused")
	}
}
