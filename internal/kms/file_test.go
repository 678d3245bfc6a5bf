package kms_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"cradle/internal/kms"
	"cradle/internal/testkit"
)

func passphrase(s string) func() ([]byte, error) {
	return func() ([]byte, error) { return []byte(s), nil }
}

// checkAlgorithm fails the test unless signer's key is of algorithm alg.
func checkAlgorithm(t *testing.T, signer crypto.Signer, alg kms.Algorithm) {
	t.Helper()
	switch pub := signer.Public().(type) {
	case *ecdsa.PublicKey:
		if (alg == kms.ECDSAP256 && pub.Curve == elliptic.P256()) || (alg == kms.ECDSAP384 && pub.Curve == elliptic.P384()) {
			return
		}
	case ed25519.PublicKey:
		if alg == kms.Ed25519 {
			return
		}
	case *rsa.PublicKey:
		if alg == kms.RSA3072 && pub.N.BitLen() == 3072 {
			return
		}
	}
	t.Fatalf("key is a %T, want %s", signer.Public(), alg)
}

func TestParseAlgorithm(t *testing.T) {
	tests := []struct {
		in   string
		want kms.Algorithm
	}{
		{"", kms.ECDSAP256},
		{"ecdsa-p256", kms.ECDSAP256},
		{"ECDSA-P384", kms.ECDSAP384},
		{"ed25519", kms.Ed25519},
		{"rsa-3072", kms.RSA3072},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := kms.ParseAlgorithm(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	if _, err := kms.ParseAlgorithm("rsa-1024"); err == nil || !strings.Contains(err.Error(), "ecdsa-p256, ecdsa-p384, ed25519, rsa-3072") {
		t.Errorf("ParseAlgorithm(rsa-1024) error = %v, want one listing the algorithms", err)
	}
}

func TestFileRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, alg := range kms.Algorithms {
		for _, encrypted := range []bool{false, true} {
			name := string(alg)
			var opts kms.Options
			if encrypted {
				name += "/encrypted"
				opts.Passphrase = passphrase("correct horse battery staple")
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "ca.key")
				uri := path
				if encrypted {
					uri = "file:" + path
				}
				signer, err := kms.Generate(ctx, uri, alg, opts)
				if err != nil {
					t.Fatalf("Generate: %v", err)
				}
				checkAlgorithm(t, signer, alg)
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
				}
				data, _ := os.ReadFile(path)
				wantType := "-----BEGIN PRIVATE KEY-----"
				if encrypted {
					wantType = "-----BEGIN ENCRYPTED PRIVATE KEY-----"
				}
				if !bytes.HasPrefix(data, []byte(wantType)) {
					t.Errorf("key file begins %q, want %q", data[:min(len(data), 40)], wantType)
				}
				opened, err := kms.Open(ctx, uri, opts)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if publicPEM(t, opened.Public()) != publicPEM(t, signer.Public()) {
					t.Errorf("Open gave another key than Generate")
				}
				if err := kms.Close(opened); err != nil {
					t.Errorf("Close: %v", err)
				}
				issueAndVerify(t, opened)
			})
		}
	}
}

func TestFileOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	enc := filepath.Join(dir, "enc.key")
	if _, err := kms.Generate(ctx, enc, kms.ECDSAP256, kms.Options{Passphrase: passphrase("right")}); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose.key")
	if _, err := kms.Generate(ctx, loose, kms.ECDSAP256, kms.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o640); err != nil {
		t.Fatal(err)
	}
	notKey := writeFile(t, dir, "cert.pem", []byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	weak := writeFile(t, dir, "weak.key", rsa1024PEM(t))

	tests := []struct {
		name   string
		uri    string
		opts   kms.Options
		want   string
		wantIs error
	}{
		{"wrong passphrase", enc, kms.Options{Passphrase: passphrase("wrong")}, "kms: wrong passphrase for key " + enc, kms.ErrWrongPassphrase},
		{"no passphrase", enc, kms.Options{}, "is encrypted: give its passphrase", nil},
		{"empty passphrase", enc, kms.Options{Passphrase: passphrase("")}, "passphrase given is empty", nil},
		{"passphrase source fails", enc, kms.Options{Passphrase: kms.PassphraseFromEnv("KMS_TEST_UNSET_VARIABLE")}, "environment variable KMS_TEST_UNSET_VARIABLE is not set", nil},
		{"group readable", loose, kms.Options{}, "is accessible by group or others (mode 0640): run chmod 600 " + loose, nil},
		{"missing", filepath.Join(dir, "nope.key"), kms.Options{}, "does not exist", kms.ErrKeyNotFound},
		{"not a key", notKey, kms.Options{}, "holds no PEM private key", nil},
		{"weak key", weak, kms.Options{}, "RSA-1024, too weak", nil},
		{"file URL", "file://" + enc, kms.Options{}, "not a file:// URL", nil},
		{"empty", "", kms.Options{}, "empty key URI", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := kms.Open(ctx, tt.uri, tt.opts)
			if err == nil {
				t.Fatalf("Open(%q) = %T, want an error containing %q", tt.uri, s, tt.want)
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

// TestFileGenerateNeverReplaces: a key file is never overwritten, not
// even by racing writers: exactly one Generate wins, the others get
// ErrKeyExists, the file holds the winner's key, and no temporary file is
// left behind.
func TestFileGenerateNeverReplaces(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.key")

	const n = 8
	var wg sync.WaitGroup
	signers := make([]crypto.Signer, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			signers[i], errs[i] = kms.Generate(ctx, path, kms.ECDSAP256, kms.Options{})
		}()
	}
	wg.Wait()
	var winner crypto.Signer
	for i, err := range errs {
		switch {
		case err == nil && winner == nil:
			winner = signers[i]
		case err == nil:
			t.Errorf("two Generate calls succeeded on one path")
		case !errors.Is(err, kms.ErrKeyExists):
			t.Errorf("Generate error %v, want ErrKeyExists", err)
		}
	}
	if winner == nil {
		t.Fatal("no Generate call succeeded")
	}
	before, _ := os.ReadFile(path)
	opened, err := kms.Open(ctx, path, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if publicPEM(t, opened.Public()) != publicPEM(t, winner.Public()) {
		t.Errorf("the key file does not hold the winning key")
	}
	// Once more, sequentially: refused, file unchanged.
	if _, err := kms.Generate(ctx, path, kms.RSA3072, kms.Options{}); !errors.Is(err, kms.ErrKeyExists) {
		t.Errorf("Generate over an existing key: %v, want ErrKeyExists", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("an existing key file was changed")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only ca.key", names)
	}
	// A directory that does not exist: an error, and nothing created.
	missing := filepath.Join(dir, "no", "such", "dir", "k.key")
	if _, err := kms.Generate(ctx, missing, kms.ECDSAP256, kms.Options{}); err == nil {
		t.Errorf("Generate in a missing directory succeeded")
	}
}

// TestOpenSSLReadsOurKeys: every key Generate writes encrypted is read by
// openssl pkey with the passphrase, and openssl finds the same public key.
func TestOpenSSLReadsOurKeys(t *testing.T) {
	openssl := testkit.NeedProgram(t, "openssl")
	ctx := context.Background()
	for _, alg := range kms.Algorithms {
		t.Run(string(alg), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.pem")
			signer, err := kms.Generate(ctx, path, alg, kms.Options{Passphrase: passphrase("s3cret pass")})
			if err != nil {
				t.Fatal(err)
			}
			out := testkit.Run(t, openssl, "pkey", "-in", path, "-passin", "pass:s3cret pass", "-pubout")
			if out != publicPEM(t, signer.Public()) {
				t.Errorf("openssl pkey -pubout:\n%s\nwant:\n%s", out, publicPEM(t, signer.Public()))
			}
			// And the negative: openssl refuses a wrong passphrase.
			if out, err := exec.Command(openssl, "pkey", "-in", path, "-passin", "pass:wrong", "-noout").CombinedOutput(); err == nil {
				t.Errorf("openssl accepted a wrong passphrase:\n%s", out)
			}
			text := testkit.Run(t, openssl, "asn1parse", "-in", path)
			for _, want := range []string{"PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"} {
				if !strings.Contains(text, want) {
					t.Errorf("openssl asn1parse does not show %s:\n%s", want, text)
				}
			}
		})
	}
}

// TestOurKeysFromOpenSSL: keys that openssl makes, encrypted with
// AES-256-CBC under PBKDF2 (its default) or scrypt, load, with the public
// key openssl reports, and a wrong passphrase is named as such.
func TestOurKeysFromOpenSSL(t *testing.T) {
	openssl := testkit.NeedProgram(t, "openssl")
	ctx := context.Background()
	tests := []struct {
		name   string
		alg    kms.Algorithm
		genArg []string
		scrypt bool
	}{
		{"ec p-256", kms.ECDSAP256, []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"}, false},
		{"ec p-384 scrypt", kms.ECDSAP384, []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"}, true},
		{"ed25519", kms.Ed25519, []string{"-algorithm", "ED25519"}, false},
		{"rsa 3072", kms.RSA3072, []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "k.pem")
			if tt.scrypt {
				plain := filepath.Join(dir, "plain.pem")
				testkit.Run(t, openssl, append(append([]string{"genpkey"}, tt.genArg...), "-out", plain)...)
				testkit.Run(t, openssl, "pkcs8", "-topk8", "-scrypt", "-v2", "aes-256-cbc", "-in", plain, "-passout", "pass:from openssl", "-out", path)
			} else {
				testkit.Run(t, openssl, append(append([]string{"genpkey"}, tt.genArg...), "-aes-256-cbc", "-pass", "pass:from openssl", "-out", path)...)
			}
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
			wantPub := testkit.Run(t, openssl, "pkey", "-in", path, "-passin", "pass:from openssl", "-pubout")
			signer, err := kms.Open(ctx, path, kms.Options{Passphrase: passphrase("from openssl")})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			checkAlgorithm(t, signer, tt.alg)
			if got := publicPEM(t, signer.Public()); got != wantPub {
				t.Errorf("public key %s, openssl says %s", got, wantPub)
			}
			_, err = kms.Open(ctx, path, kms.Options{Passphrase: passphrase("not it")})
			if !errors.Is(err, kms.ErrWrongPassphrase) || err.Error() != "kms: wrong passphrase for key "+path {
				t.Errorf("Open with a wrong passphrase: %v", err)
			}
		})
	}
}

// rsa1024PEM returns a 1024-bit RSA key, for the refusal of weak keys.
func rsa1024PEM(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// BenchmarkFileSign measures one signature with a file key, per
// algorithm: the baseline for BenchmarkPKCS11Sign.
func BenchmarkFileSign(b *testing.B) {
	for _, alg := range kms.Algorithms {
		b.Run(string(alg), func(b *testing.B) {
			s, err := kms.Generate(context.Background(), filepath.Join(b.TempDir(), "k"), alg, kms.Options{})
			if err != nil {
				b.Fatal(err)
			}
			benchmarkSign(b, s)
		})
	}
}

// BenchmarkFileOpenEncrypted measures opening an encrypted key file:
// the cost of the key derivation (600,000 PBKDF2-SHA256 iterations).
func BenchmarkFileOpenEncrypted(b *testing.B) {
	path := filepath.Join(b.TempDir(), "k")
	opts := kms.Options{Passphrase: passphrase("bench")}
	if _, err := kms.Generate(context.Background(), path, kms.ECDSAP256, opts); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := kms.Open(context.Background(), path, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func benchmarkSign(b *testing.B, s crypto.Signer) {
	digest := sha256.Sum256([]byte("benchmark"))
	msg, opts := digest[:], crypto.SignerOpts(crypto.SHA256)
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		msg, opts = []byte("benchmark"), crypto.Hash(0)
	}
	for b.Loop() {
		if _, err := s.Sign(rand.Reader, msg, opts); err != nil {
			b.Fatal(err)
		}
	}
}
