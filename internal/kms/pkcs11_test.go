//go:build cgo

package kms_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"cradle/internal/kms"
	"cradle/internal/testkit"
)

// softToken is a SoftHSM2 token initialized for one test.
type softToken struct {
	label   string
	pinFile string
}

// uri returns a pkcs11: URI for the key labelled object in the token.
func (tok softToken) uri(object string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", tok.label, object, softhsmModule, tok.pinFile)
}

// newSoftToken makes a SoftHSM2 token for the test (testkit.NewSoftHSM:
// user PIN 1234). Tests that use it cannot run in parallel (SOFTHSM2_CONF
// is process-wide, and SoftHSM2 reads it when the module is initialized,
// which happens again once every signer of the previous test is closed).
func newSoftToken(t testing.TB, label string) softToken {
	t.Helper()
	h := testkit.NewSoftHSM(t, label)
	return softToken{label: label, pinFile: h.PINFile}
}

// closeSigner closes signer at the end of the test.
func closeSigner(t *testing.T, s crypto.Signer) {
	t.Helper()
	t.Cleanup(func() {
		if err := kms.Close(s); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

// TestPKCS11IssuesCertificates: CA keys generated in SoftHSM2 through
// Generate, and opened again through Open, issue certificates that
// openssl verify accepts.
func TestPKCS11IssuesCertificates(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []kms.Algorithm{kms.ECDSAP256, kms.ECDSAP384, kms.RSA3072} {
		t.Run(string(alg), func(t *testing.T) {
			tok := newSoftToken(t, "cradle-ca")
			uri := tok.uri("root-ca")
			gen, err := kms.Generate(ctx, uri, alg, kms.Options{})
			if err != nil {
				t.Fatalf("Generate(%s): %v", uri, err)
			}
			checkAlgorithm(t, gen, alg)
			if _, ok := gen.(io.Closer); !ok {
				t.Errorf("a PKCS#11 signer is not an io.Closer")
			}
			issueAndVerify(t, gen)
			if err := kms.Close(gen); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := kms.Close(gen); err != nil {
				t.Errorf("second Close: %v", err)
			}

			// The key survives in the token: open it again (the module was
			// finalized with the last Close) and issue with it.
			opened, err := kms.Open(ctx, uri, kms.Options{})
			if err != nil {
				t.Fatalf("Open(%s): %v", uri, err)
			}
			closeSigner(t, opened)
			if publicPEM(t, opened.Public()) != publicPEM(t, gen.Public()) {
				t.Errorf("Open found another key than Generate made")
			}
			issueAndVerify(t, opened)

			if alg == kms.RSA3072 {
				// RSA-PSS too, as x509 asks for it.
				digest := sha256.Sum256([]byte("pss"))
				opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
				sig, err := opened.Sign(rand.Reader, digest[:], opts)
				if err != nil {
					t.Fatalf("PSS sign: %v", err)
				}
				if err := rsa.VerifyPSS(opened.Public().(*rsa.PublicKey), crypto.SHA256, digest[:], sig, opts); err != nil {
					t.Errorf("PSS signature does not verify: %v", err)
				}
			}
		})
	}
}

func TestPKCS11Errors(t *testing.T) {
	ctx := context.Background()
	tok := newSoftToken(t, "cradle-errors")
	key, err := kms.Generate(ctx, tok.uri("signer"), "", kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Closed now: PKCS#11 logs in a whole process, so while a signer of
	// the token is open the token takes any PIN (it answers "already
	// logged in" without checking it).
	if err := kms.Close(key); err != nil {
		t.Fatal(err)
	}
	base := "?module-path=" + softhsmModule
	tests := []struct {
		name   string
		gen    bool
		alg    kms.Algorithm
		uri    string
		opts   kms.Options
		want   string
		wantIs error
	}{
		{"wrong PIN", false, "", "pkcs11:token=cradle-errors;object=signer" + base + "&pin-value=9999", kms.Options{}, `wrong PIN for PKCS#11 token "cradle-errors"`, kms.ErrWrongPassphrase},
		{"no such token", false, "", "pkcs11:token=nope;object=signer" + base + "&pin-value=1234", kms.Options{}, `no initialized PKCS#11 token labelled "nope"`, kms.ErrKeyNotFound},
		{"no such key", false, "", "pkcs11:token=cradle-errors;object=other" + base + "&pin-value=1234", kms.Options{}, "no key pair matching", kms.ErrKeyNotFound},
		{"no PIN", false, "", "pkcs11:token=cradle-errors;object=signer" + base, kms.Options{}, "no PIN for PKCS#11 token", nil},
		{"no module", false, "", "pkcs11:token=cradle-errors;object=signer?module-path=/nonexistent/module.so&pin-value=1234", kms.Options{}, "module-path /nonexistent/module.so", nil},
		{"existing label", true, kms.ECDSAP256, tok.uri("signer"), kms.Options{}, "holds a key matching", kms.ErrKeyExists},
		{"ed25519", true, kms.Ed25519, tok.uri("ed"), kms.Options{}, "ed25519 keys in a PKCS#11 token are not supported", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s crypto.Signer
			var err error
			if tt.gen {
				s, err = kms.Generate(ctx, tt.uri, tt.alg, tt.opts)
			} else {
				s, err = kms.Open(ctx, tt.uri, tt.opts)
			}
			if err == nil {
				kms.Close(s)
				t.Fatalf("%s succeeded, want an error containing %q", tt.uri, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q is not %v", err, tt.wantIs)
			}
		})
	}
}

// TestPKCS11KeyByID: a key generated under an id is found by id alone,
// and the PIN may come from the passphrase source.
func TestPKCS11KeyByID(t *testing.T) {
	ctx := context.Background()
	tok := newSoftToken(t, "cradle-id")
	uri := "pkcs11:token=cradle-id;id=%C0%FF%EE?module-path=" + softhsmModule
	opts := kms.Options{Passphrase: passphrase("1234")}
	gen, err := kms.Generate(ctx, uri, kms.ECDSAP256, opts)
	if err != nil {
		t.Fatal(err)
	}
	closeSigner(t, gen)
	opened, err := kms.Open(ctx, uri, opts)
	if err != nil {
		t.Fatal(err)
	}
	closeSigner(t, opened)
	if publicPEM(t, opened.Public()) != publicPEM(t, gen.Public()) {
		t.Errorf("Open by id found another key")
	}
	if _, err := kms.Generate(ctx, uri, kms.ECDSAP256, opts); !errors.Is(err, kms.ErrKeyExists) {
		t.Errorf("Generate on a taken id: %v, want ErrKeyExists", err)
	}
	_ = tok
}

// BenchmarkPKCS11Sign measures one ECDSA P-256 signature in SoftHSM2
// (SHA-256 in software, CKM_ECDSA in the token).
func BenchmarkPKCS11Sign(b *testing.B) {
	tok := newSoftToken(b, "cradle-bench")
	s, err := kms.Generate(context.Background(), tok.uri("bench"), kms.ECDSAP256, kms.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer kms.Close(s)
	benchmarkSign(b, s)
}
