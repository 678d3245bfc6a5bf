package pki_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki"
	"cradle/internal/testkit"
)

// t0 is the fixed start of every test's clock.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// keyStore is a KeyFunc backed by generated keys, created on first use.
type keyStore struct {
	mu   sync.Mutex
	keys map[string]crypto.Signer
}

// keyKinds picks a key type per name, so that the hierarchy exercises
// several signature algorithms.
var keyKinds = map[string]string{
	pki.NameRoot:            "p384",
	pki.NameManufacturingCA: "rsa2048",
	pki.NameDeviceCA:        "p256",
	"device-ca-2":           "ed25519",
}

func (s *keyStore) get(name string) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[name]; ok {
		return k, nil
	}
	k, err := genKey(keyKinds[name])
	if err != nil {
		return nil, err
	}
	s.keys[name] = k
	return k, nil
}

func genKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p224":
		return ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "rsa2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa1024":
		return rsa.GenerateKey(rand.Reader, 1024)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "", "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	return nil, errors.New("unknown key kind " + kind)
}

func mustKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	k, err := genKey(kind)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testPKI is a hierarchy made by Init with its keys.
type testPKI struct {
	h    *pki.Hierarchy
	keys *keyStore
}

func (p *testPKI) key(t testing.TB, name string) crypto.Signer {
	t.Helper()
	k, err := p.keys.get(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	pkiOnce  = map[string]*testPKI{}
	pkiMu    sync.Mutex
	hostname = "cradle.example.test"
)

// newPKI makes a fresh hierarchy of the profile at t0.
func newPKI(t testing.TB, profile string) *testPKI {
	t.Helper()
	ks := &keyStore{keys: map[string]crypto.Signer{}}
	h, err := pki.Init(context.Background(), pki.InitOptions{
		Profile:   profile,
		Org:       "Acme Devices",
		Hostnames: []string{hostname, "127.0.0.1"},
		Keys:      ks.get,
		Now:       func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatalf("Init(%s): %v", profile, err)
	}
	return &testPKI{h: h, keys: ks}
}

// sharedPKI returns one hierarchy per profile for tests that do not change it.
func sharedPKI(t testing.TB, profile string) *testPKI {
	t.Helper()
	pkiMu.Lock()
	defer pkiMu.Unlock()
	if p, ok := pkiOnce[profile]; ok {
		return p
	}
	p := newPKI(t, profile)
	pkiOnce[profile] = p
	return p
}

// issueLDevID issues an LDevID for serial of tenant acme by the current device CA.
func (p *testPKI) issueLDevID(t testing.TB, serial string, now time.Time) *x509.Certificate {
	t.Helper()
	k := mustKey(t, "p256")
	opts := append(pki.LDevID(pki.LDevIDPolicy{}, "acme", serial, now), pki.KeyPolicy(), pki.URLs(hostname, p.h.DeviceCAName()))
	c, err := pki.Issue(context.Background(), p.h.DeviceCA(), p.key(t, p.h.DeviceCAName()), k.Public(), &x509.Certificate{}, opts...)
	if err != nil {
		t.Fatalf("issue LDevID: %v", err)
	}
	return c
}

func (p *testPKI) issueIDevID(t testing.TB, serial string, now time.Time) *x509.Certificate {
	t.Helper()
	k := mustKey(t, "p256")
	opts := append(pki.IDevID(pki.IDevIDConfig{Organization: "Acme Devices"}, serial, nil, now), pki.KeyPolicy(), pki.URLs(hostname, pki.NameManufacturingCA))
	c, err := pki.Issue(context.Background(), p.h.ManufacturingCA, p.key(t, pki.NameManufacturingCA), k.Public(), &x509.Certificate{}, opts...)
	if err != nil {
		t.Fatalf("issue IDevID: %v", err)
	}
	return c
}

// openssl runs openssl with args and returns its combined output and
// whether it exited 0.
func openssl(t testing.TB, args ...string) (string, bool) {
	t.Helper()
	bin := testkit.NeedProgram(t, "openssl")
	out, err := exec.Command(bin, args...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("openssl %s: %v", strings.Join(args, " "), err)
	}
	return string(out), err == nil
}

// writePEM writes certs to a file in the test's temp dir and returns its path.
func writePEM(t testing.TB, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// opensslText returns `openssl x509 -text -noout` of c.
func opensslText(t testing.TB, c *x509.Certificate) string {
	t.Helper()
	out, ok := openssl(t, "x509", "-text", "-noout", "-in", writePEM(t, "c.pem", c))
	if !ok {
		t.Fatalf("openssl x509 -text: %s", out)
	}
	return out
}

// wantRefusal checks that err is a *pki.PolicyError of rule whose text
// contains want, and a cradle EINVALID.
func wantRefusal(t testing.TB, err error, rule, want string) {
	t.Helper()
	var pe *pki.PolicyError
	if !errors.As(err, &pe) {
		t.Fatalf("error = %v, want a *pki.PolicyError of rule %s", err, rule)
	}
	if pe.Rule != rule {
		t.Errorf("rule = %q, want %q (error %v)", pe.Rule, rule, err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	if got := cradle.ErrorCode(err); got != cradle.EINVALID {
		t.Errorf("cradle.ErrorCode = %q, want %q", got, cradle.EINVALID)
	}
}

// opensslSAN returns `openssl asn1parse` of the value of c's
// subjectAltName extension.
func opensslSAN(t testing.TB, c *x509.Certificate) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.der")
	if err := os.WriteFile(path, c.Raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out, ok := openssl(t, "asn1parse", "-inform", "DER", "-in", path)
	if !ok {
		t.Fatalf("openssl asn1parse: %s", out)
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.Contains(l, "X509v3 Subject Alternative Name") && i+1 < len(lines) {
			off, _, _ := strings.Cut(strings.TrimSpace(lines[i+1]), ":")
			out, ok := openssl(t, "asn1parse", "-inform", "DER", "-in", path, "-strparse", off)
			if !ok {
				t.Fatalf("openssl asn1parse -strparse %s: %s", off, out)
			}
			return out
		}
	}
	t.Fatalf("no subjectAltName in openssl asn1parse output:\n%s", out)
	return ""
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
