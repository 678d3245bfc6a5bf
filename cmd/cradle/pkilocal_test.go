package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle/internal/kms"
	"cradle/internal/pki"
	"cradle/internal/testkit"

	"github.com/google/go-cmp/cmp"
)

const pkiTestPassphrase = "correct horse battery staple"

// opensslVerify checks cert (a file of dir) against dir/root.crt, with the
// intermediate dir/<untrusted>.crt if not "".
func opensslVerify(t *testing.T, dir, cert, untrusted string) {
	t.Helper()
	openssl := testkit.NeedProgram(t, "openssl")
	args := []string{"verify", "-CAfile", filepath.Join(dir, "root.crt")}
	if untrusted != "" {
		args = append(args, "-untrusted", filepath.Join(dir, untrusted+".crt"))
	}
	path := filepath.Join(dir, cert)
	out := testkit.Run(t, openssl, append(args, path)...)
	if !strings.Contains(out, path+": OK") {
		t.Fatalf("openssl verify did not accept %s:\n%s", cert, out)
	}
}

// setPassphrase sets $CRADLE_PKI_PASSPHRASE for the test; "" unsets it.
func setPassphrase(t *testing.T, p string) {
	t.Helper()
	t.Setenv(pkiPassphraseEnv, p)
	if p == "" {
		os.Unsetenv(pkiPassphraseEnv)
	}
}

// noPrompt is a passphrase source that is not a terminal: only the
// environment (or nothing) gives the passphrase.
func noPrompt() func() ([]byte, error) {
	return pkiPassphrase("", strings.NewReader(""), io.Discard)
}

func samePublicKey(t *testing.T, name string, s crypto.Signer, c *x509.Certificate) {
	t.Helper()
	pub, ok := s.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(c.PublicKey) {
		t.Errorf("key %s does not match its certificate", name)
	}
}

// issueLDevID issues an LDevID for a fresh device key with the device CA
// key from keys, writes it to dir/<file> and checks it with openssl verify
// against the root and the device CA; a copy with a damaged signature must
// be refused.
func issueLDevID(t *testing.T, dir string, h *pki.Hierarchy, keys map[string]crypto.Signer, file string) {
	t.Helper()
	device, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caName := h.DeviceCAName()
	c, err := pki.Issue(t.Context(), h.DeviceCA(), keys[caName], device.Public(), &x509.Certificate{},
		append(pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-0001", time.Now()), pki.KeyPolicy(), pki.URLs("devices.test:8443", caName))...)
	if err != nil {
		t.Fatalf("issue an LDevID with %s: %v", caName, err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	opensslVerify(t, dir, file, caName)
	bad := bytes.Clone(c.Raw)
	bad[len(bad)-3] ^= 0xff
	badPath := filepath.Join(dir, "bad-"+file)
	if err := os.WriteFile(badPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bad}), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, "root.crt"), "-untrusted", filepath.Join(dir, caName+".crt"), badPath).CombinedOutput()
	if err == nil {
		t.Fatalf("openssl verify accepted an LDevID with a damaged signature:\n%s", out)
	}
}

// fileMode returns the permission bits of path.
func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

var initKeyNames = []string{"command-signer", "device-ca", "manufacturing-ca", "ocsp-device-ca", "ocsp-manufacturing-ca", "release-signer", "root", "server"}

// TestPKIInitFileKeys: init with encrypted file keys makes the documented
// layout, keys that openssl reads with the passphrase, certificates that
// openssl verify accepts, and a PKI that openPKI loads; the wrong
// passphrase is refused naming the key.
func TestPKIInitFileKeys(t *testing.T) {
	isolateCLI(t)
	openssl := testkit.NeedProgram(t, "openssl")
	setPassphrase(t, pkiTestPassphrase)
	dataDir := t.TempDir()
	out := ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme",
		"--hostname", "devices.test", "--hostname", "127.0.0.1", "--url-host", "devices.test:8443")
	dir := filepath.Join(dataDir, "pki")

	// Layout and modes.
	if m := fileMode(t, filepath.Join(dir, "keys")); m != 0o700 {
		t.Errorf("keys directory mode %o, want 700", m)
	}
	if m := fileMode(t, filepath.Join(dir, "keys.yaml")); m != 0o600 {
		t.Errorf("keys.yaml mode %o, want 600", m)
	}
	uris, err := readKeyMap(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, n := range initKeyNames {
		want[n] = "keys/" + n + ".key"
	}
	if diff := cmp.Diff(want, uris); diff != "" {
		t.Errorf("keys.yaml (-want +got):\n%s", diff)
	}
	for _, n := range initKeyNames {
		key := filepath.Join(dir, "keys", n+".key")
		if m := fileMode(t, key); m != 0o600 {
			t.Errorf("%s mode %o, want 600", key, m)
		}
		b, err := os.ReadFile(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
			t.Errorf("%s is not an encrypted PKCS#8 key:\n%.60s", key, b)
		}
		if _, err := os.Stat(filepath.Join(dir, n+".crt")); err != nil {
			t.Errorf("certificate of %s: %v", n, err)
		}
	}
	// openssl reads a key with the passphrase, and it is the server
	// certificate's key.
	pub := testkit.Run(t, openssl, "pkey", "-in", filepath.Join(dir, "keys", "server.key"), "-passin", "env:"+pkiPassphraseEnv, "-pubout")
	certPub := testkit.Run(t, openssl, "x509", "-in", filepath.Join(dir, "server.crt"), "-noout", "-pubkey")
	if pub != certPub {
		t.Errorf("openssl: server.key's public key\n%s\ndiffers from server.crt's\n%s", pub, certPub)
	}

	// The chain.
	for _, c := range []string{"root.crt", "manufacturing-ca.crt", "device-ca.crt", "server.crt", "command-signer.crt"} {
		opensslVerify(t, dir, c, "")
	}
	opensslVerify(t, dir, "ocsp-device-ca.crt", "device-ca")
	opensslVerify(t, dir, "ocsp-manufacturing-ca.crt", "manufacturing-ca")

	// The summary names the root and its fingerprint.
	h, keys, closeKeys, err := openPKI(t.Context(), dataDir, noPrompt(), "server", "device-ca", "ocsp-device-ca", "device-ca")
	if err != nil {
		t.Fatalf("openPKI: %v", err)
	}
	defer closeKeys()
	for _, s := range []string{"Created a test PKI", h.Root.Subject.String(), fingerprint(h.Root), filepath.Join(dir, "keys", "root.key"), "offline"} {
		if !strings.Contains(out, s) {
			t.Errorf("init's summary lacks %q:\n%s", s, out)
		}
	}
	if h.Profile() != pki.ProfileTest || !slices.Contains(h.Server.DNSNames, "devices.test") || len(h.Server.IPAddresses) != 1 {
		t.Errorf("hierarchy: profile %s, server names %v %v", h.Profile(), h.Server.DNSNames, h.Server.IPAddresses)
	}
	if got := h.DeviceCA().IssuingCertificateURL; !slices.Equal(got, []string{"https://devices.test:8443/pki/ca/root.crt"}) {
		t.Errorf("device CA caIssuers %v", got)
	}
	if len(keys) != 3 {
		t.Errorf("openPKI opened %d keys, want 3", len(keys))
	}
	samePublicKey(t, "server", keys["server"], h.Server)
	samePublicKey(t, "device-ca", keys["device-ca"], h.DeviceCA())
	samePublicKey(t, "ocsp-device-ca", keys["ocsp-device-ca"], h.OCSPSigners["device-ca"])
	issueLDevID(t, dir, h, keys, "ldevid.crt")

	t.Run("wrong passphrase", func(t *testing.T) {
		setPassphrase(t, "not the passphrase")
		_, _, _, err := openPKI(t.Context(), dataDir, noPrompt(), "device-ca")
		if !errors.Is(err, kms.ErrWrongPassphrase) || !strings.Contains(err.Error(), "device-ca") {
			t.Errorf("openPKI with the wrong passphrase: %v; want ErrWrongPassphrase naming device-ca", err)
		}
	})
	t.Run("no passphrase", func(t *testing.T) {
		setPassphrase(t, "")
		_, _, _, err := openPKI(t.Context(), dataDir, noPrompt(), "server")
		if err == nil || !strings.Contains(err.Error(), pkiPassphraseEnv) || !strings.Contains(err.Error(), "server") {
			t.Errorf("openPKI without a passphrase: %v; want an error naming the key and %s", err, pkiPassphraseEnv)
		}
	})
	t.Run("passphrase file", func(t *testing.T) {
		setPassphrase(t, "")
		f := filepath.Join(t.TempDir(), "pass")
		if err := os.WriteFile(f, []byte(pkiTestPassphrase+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, keys, closeKeys, err := openPKI(t.Context(), dataDir, pkiPassphrase(f, strings.NewReader(""), io.Discard), "server")
		if err != nil {
			t.Fatalf("openPKI with --passphrase-file: %v", err)
		}
		closeKeys()
		if keys["server"] == nil {
			t.Error("no server key")
		}
	})
	t.Run("key not listed", func(t *testing.T) {
		_, _, _, err := openPKI(t.Context(), dataDir, noPrompt(), "device-ca-7")
		if err == nil || !strings.Contains(err.Error(), "device-ca-7 is not listed") {
			t.Errorf("openPKI of an unknown key: %v", err)
		}
	})
	t.Run("no PKI", func(t *testing.T) {
		_, _, _, err := openPKI(t.Context(), t.TempDir(), noPrompt(), "server")
		if err == nil || !strings.Contains(err.Error(), "cradle pki init") {
			t.Errorf("openPKI without a PKI: %v", err)
		}
	})
	t.Run("init again is refused", func(t *testing.T) {
		root, _ := os.ReadFile(filepath.Join(dir, "root.crt"))
		fails(t, "holds a PKI already", "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Other")
		again, _ := os.ReadFile(filepath.Join(dir, "root.crt"))
		if !bytes.Equal(root, again) {
			t.Error("a refused init changed root.crt")
		}
	})
}

// TestPKIInitRefusals: what init refuses, and that a refusal leaves no
// PKI behind.
func TestPKIInitRefusals(t *testing.T) {
	isolateCLI(t)
	tests := []struct {
		name, passphrase, want string
		args                   []string
	}{
		{"production with plaintext keys", pkiTestPassphrase, "always encrypted", []string{"--profile", "production", "--org", "Acme", "--insecure-plaintext-keys"}},
		{"no passphrase", "", "--insecure-plaintext-keys", []string{"--profile", "test", "--org", "Acme"}},
		{"no passphrase, production", "", pkiPassphraseEnv, []string{"--profile", "production", "--org", "Acme"}},
		{"no profile", pkiTestPassphrase, "--profile must be test or production", []string{"--org", "Acme"}},
		{"no organization", pkiTestPassphrase, "--org is required", []string{"--profile", "test"}},
		{"unknown algorithm", pkiTestPassphrase, "unknown key algorithm", []string{"--profile", "test", "--org", "Acme", "--key-algorithm", "dsa"}},
		{"half the PKCS#11 flags", pkiTestPassphrase, "give all three", []string{"--profile", "test", "--org", "Acme", "--pkcs11-module", "/nonexistent.so"}},
		{"bad hostname", pkiTestPassphrase, "hostname", []string{"--profile", "test", "--org", "Acme", "--hostname", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setPassphrase(t, tt.passphrase)
			dataDir := t.TempDir()
			fails(t, tt.want, append([]string{"pki", "init", "--data-dir", dataDir}, tt.args...)...)
			if p, ok := hierarchyPresent(filepath.Join(dataDir, "pki")); ok {
				t.Errorf("a refused init left %s", p)
			}
		})
	}
}

// TestPKIInitPlaintextAndRootElsewhere: a test PKI with plaintext keys
// (for development) and the root key outside the data directory.
func TestPKIInitPlaintextAndRootElsewhere(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, "")
	dataDir := t.TempDir()
	rootKey := filepath.Join(t.TempDir(), "offline", "root.key")
	if err := os.MkdirAll(filepath.Dir(rootKey), 0o700); err != nil {
		t.Fatal(err)
	}
	out := ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Dev",
		"--insecure-plaintext-keys", "--root-key-uri", rootKey, "--key-algorithm", "ecdsa-p384")
	if !strings.Contains(out, rootKey) {
		t.Errorf("the summary does not say where the root key is:\n%s", out)
	}
	dir := filepath.Join(dataDir, "pki")
	if _, err := os.Stat(filepath.Join(dir, "keys", "root.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root key in the data directory: %v", err)
	}
	b, err := os.ReadFile(rootKey)
	if err != nil || !bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Fatalf("root key at %s: %v %.40s", rootKey, err, b)
	}
	h, keys, closeKeys, err := openPKI(t.Context(), dataDir, nil, "root", "device-ca")
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	samePublicKey(t, "root", keys["root"], h.Root)
	if alg, _ := algorithmOf(h.DeviceCA().PublicKey); alg != kms.ECDSAP384 {
		t.Errorf("device CA key %s, want ecdsa-p384", alg)
	}
	// Default host names: the machine's, localhost and 127.0.0.1.
	if !slices.Contains(h.Server.DNSNames, "localhost") || len(h.Server.IPAddresses) != 1 || !h.Server.IPAddresses[0].Equal([]byte{127, 0, 0, 1}) {
		t.Errorf("server certificate names %v %v", h.Server.DNSNames, h.Server.IPAddresses)
	}

	// Rotation with the root outside: new key files are plaintext only
	// when asked for.
	fails(t, "--insecure-plaintext-keys", "pki", "rotate-device-ca", "--data-dir", dataDir)
	r := cradleCLI(t, "", "pki", "rotate-device-ca", "--data-dir", dataDir, "--insecure-plaintext-keys")
	if r.code != 0 || r.stdout != "device-ca-2\n" {
		t.Fatalf("rotate-device-ca: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	opensslVerify(t, dir, "device-ca-2.crt", "")
	if b, err := os.ReadFile(filepath.Join(dir, "keys", "device-ca-2.key")); err != nil || !bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("device-ca-2.key: %v", err)
	}
	if _, _, closeKeys, err := openPKI(t.Context(), dataDir, nil, "device-ca-2", "ocsp-device-ca-2"); err != nil {
		t.Errorf("openPKI after rotation: %v", err)
	} else {
		closeKeys()
	}
}

// TestPKIRotateDeviceCA: rotation adds device-ca-2 with its OCSP signer,
// signed by the root; both device CAs load; a wrong passphrase changes
// nothing.
func TestPKIRotateDeviceCA(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, pkiTestPassphrase)
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "pki")
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme", "--hostname", "devices.test")

	setPassphrase(t, "wrong")
	fails(t, "wrong passphrase for key", "pki", "rotate-device-ca", "--data-dir", dataDir)
	if _, err := os.Stat(filepath.Join(dir, "device-ca-2.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed rotation left device-ca-2.crt: %v", err)
	}
	fails(t, "no PKI", "pki", "rotate-device-ca", "--data-dir", t.TempDir())

	setPassphrase(t, pkiTestPassphrase)
	r := cradleCLI(t, "", "pki", "rotate-device-ca", "--data-dir", dataDir)
	if r.code != 0 || r.stdout != "device-ca-2\n" || !strings.Contains(r.stderr, "Restart cradle serve") {
		t.Fatalf("rotate-device-ca: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	key := filepath.Join(dir, "keys", "device-ca-2.key")
	if b, err := os.ReadFile(key); err != nil || !bytes.HasPrefix(b, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
		t.Errorf("new key %s: %v", key, err)
	}
	if m := fileMode(t, filepath.Join(dir, "keys.yaml")); m != 0o600 {
		t.Errorf("keys.yaml mode %o after rotation", m)
	}
	opensslVerify(t, dir, "device-ca-2.crt", "")
	opensslVerify(t, dir, "ocsp-device-ca-2.crt", "device-ca-2")

	names := []string{"device-ca", "device-ca-2", "ocsp-device-ca", "ocsp-device-ca-2", "server"}
	h, keys, closeKeys, err := openPKI(t.Context(), dataDir, noPrompt(), names...)
	if err != nil {
		t.Fatalf("openPKI after rotation: %v", err)
	}
	defer closeKeys()
	if len(h.DeviceCAs) != 2 || h.DeviceCAName() != "device-ca-2" {
		t.Fatalf("device CAs after rotation: %d, current %s", len(h.DeviceCAs), h.DeviceCAName())
	}
	samePublicKey(t, "device-ca", keys["device-ca"], h.DeviceCAs[0])
	samePublicKey(t, "device-ca-2", keys["device-ca-2"], h.DeviceCAs[1])
	if got := h.DeviceCA().IssuingCertificateURL; !slices.Equal(got, []string{"https://devices.test:8443/pki/ca/root.crt"}) {
		t.Errorf("new device CA caIssuers %v, want the old one's host", got)
	}
	issueLDevID(t, dir, h, keys, "ldevid-2.crt")

	r = cradleCLI(t, "", "pki", "rotate-device-ca", "--data-dir", dataDir)
	if r.code != 0 || r.stdout != "device-ca-3\n" {
		t.Fatalf("second rotation: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

// softToken is a SoftHSM2 token made for one test.
type softToken struct {
	module, label, pinFile string
}

// newSoftToken makes a SoftHSM2 token for the test (testkit.NewSoftHSM:
// user PIN 1234, SOFTHSM2_CONF set for the test, so no parallel tests).
func newSoftToken(t *testing.T, label string) softToken {
	t.Helper()
	h := testkit.NewSoftHSM(t, label)
	return softToken{module: h.Module, label: label, pinFile: h.PINFile}
}

// tokenLabels lists the labels of the private keys in the token.
func (tok softToken) privateKeyLabels(t *testing.T) []string {
	t.Helper()
	tool := testkit.NeedProgram(t, "pkcs11-tool")
	out := testkit.Run(t, tool, "--module", tok.module, "--token-label", tok.label, "--login", "--pin", "1234", "--list-objects", "--type", "privkey")
	var labels []string
	for _, line := range strings.Split(out, "\n") {
		if l, ok := strings.CutPrefix(strings.TrimSpace(line), "label:"); ok {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	slices.Sort(labels)
	return labels
}

// TestPKIInitPKCS11: with --pkcs11-* every key is generated in a SoftHSM2
// token, nothing secret is written to the data directory, and a device
// certificate issued with the device CA key from the token passes openssl
// verify. Rotation puts the new keys in the same token.
func TestPKIInitPKCS11(t *testing.T) {
	requirePKCS11Build(t)
	isolateCLI(t)
	testkit.NeedProgram(t, "openssl")
	tok := newSoftToken(t, "cradle-ca")
	setPassphrase(t, "")
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "pki")
	out := ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "production", "--org", "Acme",
		"--hostname", "devices.test", "--pkcs11-module", tok.module, "--pkcs11-token", tok.label, "--pkcs11-pin-source", "file:"+tok.pinFile)
	if !strings.Contains(out, "Created a production PKI") || !strings.Contains(out, "The root key is in a token") {
		t.Errorf("summary:\n%s", out)
	}
	if diff := cmp.Diff(initKeyNames, tok.privateKeyLabels(t)); diff != "" {
		t.Errorf("keys in the token (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a keys directory was made with every key in the token: %v", err)
	}
	uris, err := readKeyMap(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, uri := range uris {
		u, err := kms.ParsePKCS11URI(uri)
		if err != nil || u.Token != tok.label || u.Object != name || u.PINSource != tok.pinFile || u.ModulePath != tok.module {
			t.Errorf("keys.yaml: %s: %s (%v)", name, uri, err)
		}
	}
	for _, c := range []string{"device-ca.crt", "server.crt", "manufacturing-ca.crt", "command-signer.crt"} {
		opensslVerify(t, dir, c, "")
	}

	h, keys, closeKeys, err := openPKI(t.Context(), dataDir, nil, "device-ca", "ocsp-device-ca", "server")
	if err != nil {
		t.Fatalf("openPKI: %v", err)
	}
	if h.Profile() != pki.ProfileProduction {
		t.Errorf("profile %s", h.Profile())
	}
	samePublicKey(t, "device-ca", keys["device-ca"], h.DeviceCA())
	samePublicKey(t, "server", keys["server"], h.Server)
	issueLDevID(t, dir, h, keys, "ldevid.crt")
	if err := closeKeys(); err != nil {
		t.Fatalf("closing the token's keys: %v", err)
	}

	r := cradleCLI(t, "", "pki", "rotate-device-ca", "--data-dir", dataDir)
	if r.code != 0 || r.stdout != "device-ca-2\n" {
		t.Fatalf("rotate-device-ca: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	wantLabels := slices.Sorted(slices.Values(append(slices.Clone(initKeyNames), "device-ca-2", "ocsp-device-ca-2")))
	if diff := cmp.Diff(wantLabels, tok.privateKeyLabels(t)); diff != "" {
		t.Errorf("keys in the token after rotation (-want +got):\n%s", diff)
	}
	h, keys, closeKeys, err = openPKI(t.Context(), dataDir, nil, "device-ca", "device-ca-2", "ocsp-device-ca-2")
	if err != nil {
		t.Fatalf("openPKI after rotation: %v", err)
	}
	defer closeKeys()
	samePublicKey(t, "device-ca-2", keys["device-ca-2"], h.DeviceCA())
	issueLDevID(t, dir, h, keys, "ldevid-2.crt")

	// A second init into another data directory with the same token is
	// refused: the labels are taken, and nothing is left in the data
	// directory.
	other := t.TempDir()
	fails(t, "in the token already", "pki", "init", "--data-dir", other, "--profile", "production", "--org", "Acme",
		"--pkcs11-module", tok.module, "--pkcs11-token", tok.label, "--pkcs11-pin-source", tok.pinFile)
	if p, ok := hierarchyPresent(filepath.Join(other, "pki")); ok {
		t.Errorf("a failed init left %s", p)
	}
}

// FuzzParseKeyMap: keys.yaml never panics the parser, and what it accepts
// has names and URIs.
func FuzzParseKeyMap(f *testing.F) {
	f.Add([]byte("keys:\n  root: keys/root.key\n  device-ca: \"pkcs11:token=a;object=b?module-path=/m.so\"\n"))
	f.Add([]byte("keys: {}\n"))
	f.Add([]byte("keys:\n  root: \"\"\n"))
	f.Add([]byte("other: 1\n"))
	f.Add([]byte("keys: [1, 2]\n"))
	f.Add([]byte(""))
	f.Add([]byte("keys:\n  a/b: x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseKeyMap(data)
		if err != nil {
			return
		}
		for name, uri := range m {
			if name == "" || strings.TrimSpace(uri) == "" {
				t.Fatalf("accepted key %q with URI %q", name, uri)
			}
		}
	})
}

// requirePKCS11Build skips a test of PKCS#11 keys in a build without cgo
// (a machine without a C compiler), and fails it in CI, which builds with
// cgo.
func requirePKCS11Build(t *testing.T) {
	t.Helper()
	_, err := kms.Open(t.Context(), "pkcs11:token=probe;object=probe?module-path=/nonexistent", kms.Options{})
	if errors.Is(err, kms.ErrNoPKCS11) {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must build with cgo: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}
