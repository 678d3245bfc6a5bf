package hw_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

// persistentHandles lists the TPM's persistent handles with tpm2_getcap.
func persistentHandles(t *testing.T, s *testkit.SWTPM) string {
	t.Helper()
	tool := testkit.NeedProgram(t, "tpm2_getcap")
	return testkit.Run(t, tool, "--tcti", s.TCTI(), "handles-persistent")
}

// TestTPMKeyStore: keys made in swtpm sign digests and CSRs that verify,
// outlive the store value (a new store on the same state directory finds
// them), show as persistent handles to tpm2-tools, and are evicted by
// DestroyKey.
func TestTPMKeyStore(t *testing.T) {
	ctx := context.Background()
	sw := testkit.StartSWTPM(t)
	testkit.NeedProgram(t, "tpm2_getcap")
	state := filepath.Join(t.TempDir(), "tpm")
	ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)

	s, err := ks.CreateKey(ctx, "idevid", "")
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("CreateKey made a %T key, want ECDSA P-256", s.Public())
	}
	if got := persistentHandles(t, sw); !strings.Contains(got, "0x81010000") {
		t.Fatalf("tpm2_getcap lists no handle 0x81010000 after CreateKey:\n%s", got)
	}
	digest := sha256.Sum256([]byte("hello"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Errorf("the signature does not verify")
	}
	other := sha256.Sum256([]byte("other"))
	if ecdsa.VerifyASN1(pub, other[:], sig) {
		t.Errorf("the signature verifies over another digest")
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "UID-0001"}}, s)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("the CSR's signature does not verify: %v", err)
	}

	// P-384, signing SHA-384 digests.
	s384, err := ks.CreateKey(ctx, "attest", hw.ECDSAP384)
	if err != nil {
		t.Fatalf("CreateKey(P-384): %v", err)
	}
	pub384 := s384.Public().(*ecdsa.PublicKey)
	if pub384.Curve != elliptic.P384() {
		t.Fatalf("CreateKey(P-384) made a key on %s", pub384.Curve.Params().Name)
	}
	d384 := sha512.Sum384([]byte("hello"))
	sig, err = s384.Sign(rand.Reader, d384[:], crypto.SHA384)
	if err != nil {
		t.Fatalf("Sign(P-384): %v", err)
	}
	if !ecdsa.VerifyASN1(pub384, d384[:], sig) {
		t.Errorf("the P-384 signature does not verify")
	}
	if _, err := s384.Sign(rand.Reader, digest[:], crypto.SHA384); err == nil {
		t.Errorf("Sign accepted a 32-byte digest as SHA-384")
	}

	// A new store on the same state directory finds the key.
	ks2 := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)
	again, err := ks2.Key(ctx, "idevid")
	if err != nil {
		t.Fatalf("Key after reopening: %v", err)
	}
	if !pub.Equal(again.Public()) {
		t.Errorf("Key after reopening found another key")
	}
	sig, err = again.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Errorf("the reopened key does not sign: %v", err)
	}

	if _, err := ks2.CreateKey(ctx, "idevid", ""); !errors.Is(err, hw.ErrExists) {
		t.Errorf("second CreateKey: %v, want ErrExists", err)
	}
	if _, err := ks2.Key(ctx, "nope"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("Key(nope): %v, want ErrNotFound", err)
	}
	if _, err := ks2.CreateKey(ctx, "ed", hw.Ed25519); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("CreateKey(ed25519): %v, want ErrInvalid", err)
	}

	if err := ks2.DestroyKey(ctx, "idevid"); err != nil {
		t.Fatalf("DestroyKey: %v", err)
	}
	got := persistentHandles(t, sw)
	if strings.Contains(got, "0x81010000") || !strings.Contains(got, "0x81010001") {
		t.Errorf("after DestroyKey(idevid) tpm2_getcap lists, want 0x81010001 alone:\n%s", got)
	}
	if _, err := ks.Key(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("Key after DestroyKey: %v, want ErrNotFound", err)
	}
	if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil {
		t.Errorf("a signer of the destroyed key still signs")
	}
	if err := ks.DestroyKey(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("second DestroyKey: %v, want ErrNotFound", err)
	}
	// The freed handle is used again, by a new key the old signer must not
	// sign with.
	fresh, err := ks.CreateKey(ctx, "idevid", "")
	if err != nil {
		t.Fatalf("CreateKey after DestroyKey: %v", err)
	}
	if pub.Equal(fresh.Public()) {
		t.Errorf("the re-created key has the destroyed key's public key")
	}
	if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil {
		t.Errorf("a signer of the destroyed key signs with the key now at its handle")
	}
}

// TestTPMKeyStoreLostKey: an index entry whose object was evicted behind
// the store's back (tpm2_evictcontrol) gives ErrNotFound, and DestroyKey
// then clears the entry.
func TestTPMKeyStoreLostKey(t *testing.T) {
	ctx := context.Background()
	sw := testkit.StartSWTPM(t)
	tool := testkit.NeedProgram(t, "tpm2_evictcontrol")
	ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), t.TempDir())
	if _, err := ks.CreateKey(ctx, "k", ""); err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, tool, "--tcti", sw.TCTI(), "-C", "o", "-c", "0x81010000")
	if _, err := ks.Key(ctx, "k"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("Key of an evicted key: %v, want ErrNotFound", err)
	}
	if err := ks.DestroyKey(ctx, "k"); err != nil {
		t.Errorf("DestroyKey of an evicted key: %v", err)
	}
	if _, err := ks.CreateKey(ctx, "k", ""); err != nil {
		t.Errorf("CreateKey after clearing the entry: %v", err)
	}
}

// TestTPMKeyStoreBadIndex: a damaged index file is refused with
// ErrInvalid, not taken as empty.
func TestTPMKeyStoreBadIndex(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tpm-keys.json"), []byte(`{"version":1,"keys":{"k":{"handle":1,"name":"000b"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ks := hw.NewTPMKeyStore(hw.TPMTCP("127.0.0.1:1"), dir)
	if _, err := ks.Key(context.Background(), "k"); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("Key with a damaged index: %v, want ErrInvalid", err)
	}
	if _, err := ks.CreateKey(context.Background(), "other", ""); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("CreateKey with a damaged index: %v, want ErrInvalid", err)
	}
}

// TestTPMKeyStoreConcurrent: two stores on one state directory (as two
// processes would be) creating keys at once give each key its own handle
// and lose no index entry.
func TestTPMKeyStoreConcurrent(t *testing.T) {
	ctx := context.Background()
	sw := testkit.StartSWTPM(t)
	state := t.TempDir()
	stores := []*hw.TPMKeyStore{hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state), hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)}
	const n = 6
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := stores[i%2].CreateKey(ctx, fmt.Sprintf("k%d", i), "")
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
	}
	ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)
	seen := map[string]bool{}
	digest := sha256.Sum256([]byte("x"))
	for i := range n {
		s, err := ks.Key(ctx, fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatalf("Key(k%d): %v", i, err)
		}
		pub := s.Public().(*ecdsa.PublicKey)
		if seen[pub.X.String()] {
			t.Errorf("k%d shares its key with another name", i)
		}
		seen[pub.X.String()] = true
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil || !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Errorf("k%d does not sign: %v", i, err)
		}
	}
	if got := strings.Count(persistentHandles(t, sw), "0x810100"); got != n {
		t.Errorf("tpm2_getcap lists %d persistent keys, want %d", got, n)
	}
}
