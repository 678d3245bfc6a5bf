package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle/internal/compat/swu"
	"cradle/internal/kms"
	"cradle/internal/mcuboot"
	"cradle/internal/pki"
	"cradle/internal/testkit"
)

// These tests hold the release signer to the programs devices run:
// Debian's mender-artifact 3.9 (the library of mender-client 3.4) and
// swupdate 2022.12.

// testPKIDir makes a test PKI with plaintext keys in a new data directory.
func testPKIDir(t *testing.T, org string) string {
	t.Helper()
	dataDir := t.TempDir()
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", org, "--insecure-plaintext-keys", "--hostname", "127.0.0.1")
	return dataDir
}

// writeShow writes the output of pki release-signer show with extra
// flags to a file in dir and returns its path.
func writeShow(t *testing.T, dataDir, dir, name string, flags ...string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	out := ok(t, append([]string{"pki", "release-signer", "show", "--data-dir", dataDir}, flags...)...)
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// menderTool runs mender-artifact and returns its output and error.
func menderTool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	tool := testkit.NeedProgram(t, "mender-artifact")
	out, err := exec.Command(tool, args...).CombinedOutput()
	return string(out), err
}

// menderArtifact writes a single-file module artifact with mender-artifact,
// signed with keyFile unless it is "".
func menderArtifactFile(t *testing.T, dir, name, keyFile string) string {
	t.Helper()
	payload := filepath.Join(dir, "app.conf")
	if err := os.WriteFile(payload, []byte("answer=42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	args := []string{"write", "module-image", "-T", "single-file", "-n", "release-7", "-t", "cradle-board", "-f", payload, "-o", out}
	if keyFile != "" {
		args = append(args, "-k", keyFile)
	}
	if msg, err := menderTool(t, args...); err != nil {
		t.Fatalf("mender-artifact %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	return out
}

// ecKeyFiles makes an ECDSA P-256 key with openssl: the SEC1 private key
// (what mender-artifact -k signs with) and the public key.
func ecKeyFiles(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	openssl := testkit.NeedProgram(t, "openssl")
	priv, pub = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	testkit.Run(t, openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", priv)
	testkit.Run(t, openssl, "ec", "-in", priv, "-pubout", "-out", pub)
	return priv, pub
}

// swupdateCheck runs the real swupdate in check mode (-c: verify the
// image, install nothing) trusting caFile, and returns its output. Its
// exit status is no verdict (PROTOCOLS.md §8): callers judge the output.
func swupdateCheck(t *testing.T, image, caFile string) string {
	t.Helper()
	bin := testkit.NeedProgram(t, "swupdate")
	tmp := filepath.Join(t.TempDir(), "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-v", "-k", caFile, "-H", "cradle-board:1.0", "-c", "-i", image)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, _ := cmd.CombinedOutput()
	return string(out)
}

func swupdateAccepted(out string) bool {
	return strings.Contains(out, "SWUPDATE successful") && !strings.Contains(out, "FAILURE")
}

// swuSources is one file payload, installed (never, in check mode) under dir.
func swuSources(dir string) []swu.Source {
	body := "hello from cradle\n"
	return []swu.Source{{Entry: swu.Entry{Section: "files", Filename: "app.conf", Type: "rawfile", Dest: filepath.Join(dir, "app.conf")},
		Data: strings.NewReader(body), Size: int64(len(body))}}
}

// otherCA is a CA outside the PKI under test and a signer it issued with
// the given extended key usages.
func otherCA(t *testing.T, issuer *x509.Certificate, issuerKey *ecdsa.PrivateKey, eku ...x509.ExtKeyUsage) (ca *x509.Certificate, s swu.Signer, caKey *ecdsa.PrivateKey) {
	t.Helper()
	now := time.Now()
	if issuer == nil {
		caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: bigOne(), Subject: pkix.Name{CommonName: "Other CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		ca, _ = x509.ParseCertificate(der)
		issuer, issuerKey = ca, caKey
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: bigOne(), Subject: pkix.Name{CommonName: "Other Signer"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku}
	der, err := x509.CreateCertificate(rand.Reader, leaf, issuer, key.Public(), issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return ca, swu.Signer{Cert: cert, Key: key}, caKey
}

func bigOne() *big.Int {
	n, err := pki.NewSerial()
	if err != nil {
		panic(err)
	}
	return n
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// writeSignerFiles writes a signer's certificate and PKCS#8 key as PEM.
func writeSignerFiles(t *testing.T, dir string, s swu.Signer) (cert, key string) {
	t.Helper()
	kder, err := x509.MarshalPKCS8PrivateKey(s.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestReleaseSignerCommands: pki init makes the release signer; show
// prints its certificate, public key and CA file; a PKI made before it
// existed gets one from release-signer init (with the root key) and not a
// second.
func TestReleaseSignerCommands(t *testing.T) {
	isolateCLI(t)
	dataDir := testPKIDir(t, "Acme")
	dir := pkiDirOf(dataDir)
	h, err := pki.LoadHierarchy(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := h.ReleaseSigner
	if c == nil || c.Subject.CommonName != "Acme Release Signer" || !pki.IsTestCertificate(c) || c.CheckSignatureFrom(h.Root) != nil {
		t.Fatalf("release signer after pki init: %+v", c)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageCodeSigning}) || c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("release signer usages %v %v", c.ExtKeyUsage, c.KeyUsage)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("release signer key %T, want ECDSA P-256", c.PublicKey)
	}

	certPEM := ok(t, "pki", "release-signer", "show", "--data-dir", dataDir)
	if blk, _ := pem.Decode([]byte(certPEM)); blk == nil || !bytes.Equal(blk.Bytes, c.Raw) {
		t.Errorf("show printed\n%s", certPEM)
	}
	pubPEM := ok(t, "pki", "release-signer", "show", "--data-dir", dataDir, "--pubkey")
	blk, _ := pem.Decode([]byte(pubPEM))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("show --pubkey printed\n%s", pubPEM)
	}
	if pub, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil || !publicKeyEqual(pub, c.PublicKey) {
		t.Errorf("show --pubkey: %v", err)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(dir, "root.crt"))
	if got := ok(t, "pki", "release-signer", "show", "--data-dir", dataDir, "--ca"); got != string(rootPEM) {
		t.Errorf("show --ca printed\n%s\nwant root.crt\n%s", got, rootPEM)
	}
	fails(t, "exclude each other", "pki", "release-signer", "show", "--data-dir", dataDir, "--ca", "--pubkey")
	fails(t, "has a release signer already", "pki", "release-signer", "init", "--data-dir", dataDir, "--insecure-plaintext-keys")

	// A PKI from before: no certificate, no key, no keys.yaml entry.
	os.Remove(filepath.Join(dir, "release-signer.crt"))
	os.Remove(filepath.Join(dir, "keys", "release-signer.key"))
	uris, err := readKeyMap(dir)
	if err != nil {
		t.Fatal(err)
	}
	delete(uris, pki.NameReleaseSigner)
	if err := writeKeyMap(dir, uris); err != nil {
		t.Fatal(err)
	}
	fails(t, "has no release signer: add one with cradle pki release-signer init", "pki", "release-signer", "show", "--data-dir", dataDir)
	in := filepath.Join(t.TempDir(), "in.mender")
	os.WriteFile(in, []byte("x"), 0o644)
	fails(t, "has no release signer", "release", "sign-artifact", in, "-o", in+".out", "--data-dir", dataDir)

	r := cradleCLI(t, "", "pki", "release-signer", "init", "--data-dir", dataDir, "--insecure-plaintext-keys")
	if r.code != 0 || r.stdout != filepath.Join(dir, "release-signer.crt")+"\n" || !strings.Contains(r.stderr, "show --pubkey") {
		t.Fatalf("release-signer init: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	h2, err := pki.LoadHierarchy(dir)
	if err != nil || h2.ReleaseSigner == nil || h2.ReleaseSigner.Equal(c) || h2.ReleaseSigner.CheckSignatureFrom(h.Root) != nil {
		t.Fatalf("after release-signer init: %v", err)
	}
	if uris, _ := readKeyMap(dir); uris[pki.NameReleaseSigner] != "keys/release-signer.key" {
		t.Errorf("keys.yaml: release-signer at %q", uris[pki.NameReleaseSigner])
	}
	s, err := openReleaseSigner(t.Context(), dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !publicKeyEqual(s.Key.Public(), h2.ReleaseSigner.PublicKey) || len(s.Chain) != 2 || !s.Chain[1].Equal(h.Root) {
		t.Errorf("openReleaseSigner: chain of %d", len(s.Chain))
	}
}

// TestSignArtifactMender: an artifact mender-artifact wrote, unsigned or
// signed by another key, signed by the release signer passes
// mender-artifact validate with the signer's public key (show --pubkey)
// and fails with another; read shows the signature verified. --key signs
// with another key, and signing in place works.
func TestSignArtifactMender(t *testing.T) {
	isolateCLI(t)
	dataDir := testPKIDir(t, "Acme")
	dir := t.TempDir()
	pub := writeShow(t, dataDir, dir, "release.pub", "--pubkey")
	otherKey, otherPub := ecKeyFiles(t, dir, "other")

	for _, tc := range []struct{ name, key string }{{"unsigned", ""}, {"signed by another key", otherKey}} {
		t.Run(tc.name, func(t *testing.T) {
			in := menderArtifactFile(t, t.TempDir(), "in.mender", tc.key)
			out := filepath.Join(t.TempDir(), "signed.mender")
			res := decodeJSON[signedRelease](t, ok(t, "release", "sign-artifact", in, "-o", out, "--data-dir", dataDir, "--json"))
			if res.Kind != "mender" || res.Name != "release-7" || res.Signer != "CN=Acme Release Signer,O=Acme" || res.File != out {
				t.Errorf("sign-artifact: %+v", res)
			}
			if msg, err := menderTool(t, "validate", "-k", pub, out); err != nil {
				t.Fatalf("mender-artifact validate with the release signer's key: %v\n%s", err, msg)
			}
			if msg, err := menderTool(t, "validate", "-k", otherPub, out); err == nil {
				t.Fatalf("mender-artifact validate accepted the artifact under another key:\n%s", msg)
			}
			msg, err := menderTool(t, "read", "-k", pub, out)
			if err != nil || !strings.Contains(msg, "Signature: signed and verified correctly") || !strings.Contains(msg, "Name: release-7") {
				t.Errorf("mender-artifact read: %v\n%s", err, msg)
			}
		})
	}

	// Another key (--key, no certificate needed for Mender), in place.
	path := menderArtifactFile(t, t.TempDir(), "a.mender", "")
	ok(t, "release", "sign-artifact", path, "-o", path, "--key", otherKey)
	if msg, err := menderTool(t, "validate", "-k", otherPub, path); err != nil {
		t.Fatalf("validate after signing in place with --key: %v\n%s", err, msg)
	}
	if msg, err := menderTool(t, "validate", "-k", pub, path); err == nil {
		t.Fatalf("the release signer's key validates an artifact signed with another:\n%s", msg)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 2 {
		t.Errorf("left behind: %v", entries)
	}
}

// TestSignArtifactSWUpdate: a .swu signed by another CA, and one that
// cpio made unsigned, signed by the release signer pass swupdate -c with
// the CA file of show --ca, and one signed by another CA does not. A
// signer certificate under the same root but without emailProtection is
// refused by swupdate (and by sign-artifact before it), while the release
// signer's own key and certificate through the same openssl path pass:
// the extended key usage is what decides.
func TestSignArtifactSWUpdate(t *testing.T) {
	isolateCLI(t)
	openssl := testkit.NeedProgram(t, "openssl")
	cpio := testkit.NeedProgram(t, "cpio")
	testkit.NeedProgram(t, "swupdate")
	dataDir := testPKIDir(t, "Acme")
	dir := t.TempDir()
	ca := writeShow(t, dataDir, dir, "ca.pem", "--ca")
	dest := t.TempDir()

	otherRoot, other, _ := otherCA(t, nil, nil, x509.ExtKeyUsageEmailProtection)
	otherCAFile := filepath.Join(dir, "other-ca.pem")
	os.WriteFile(otherCAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherRoot.Raw}), 0o644)
	var foreign bytes.Buffer
	if err := swu.Write(&foreign, swu.Spec{Version: "1.2.3", HardwareCompatibility: []string{"1.0"}}, swuSources(dest), other); err != nil {
		t.Fatal(err)
	}
	foreignPath := filepath.Join(dir, "foreign.swu")
	os.WriteFile(foreignPath, foreign.Bytes(), 0o644)
	if out := swupdateCheck(t, foreignPath, ca); swupdateAccepted(out) {
		t.Fatalf("swupdate accepted an image signed by another CA:\n%s", out)
	}
	if out := swupdateCheck(t, foreignPath, otherCAFile); !swupdateAccepted(out) {
		t.Fatalf("swupdate refused the other CA's image with its own CA (the check itself is broken):\n%s", out)
	}

	// An unsigned .swu as SWUpdate's documentation makes one.
	work := t.TempDir()
	body := "hello from cradle\n"
	s := swuSources(dest)
	var unsignedBuf bytes.Buffer
	// swu.Describe with the payload's digest, then cpio -H crc over the files.
	s[0].Entry.SHA256 = sha256Hex(body)
	os.WriteFile(filepath.Join(work, "sw-description"), swu.Describe(swu.Spec{Version: "2.0", HardwareCompatibility: []string{"1.0"}}, s), 0o644)
	os.WriteFile(filepath.Join(work, "app.conf"), []byte(body), 0o644)
	cpioArchive := func(names ...string) []byte {
		cmd := exec.Command(cpio, "-o", "-H", "crc", "--quiet")
		cmd.Dir = work
		cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio: %v", err)
		}
		return out
	}
	unsignedBuf.Write(cpioArchive("sw-description", "app.conf"))
	unsigned := filepath.Join(dir, "unsigned.swu")
	os.WriteFile(unsigned, unsignedBuf.Bytes(), 0o644)
	if out := swupdateCheck(t, unsigned, ca); swupdateAccepted(out) {
		t.Fatalf("swupdate accepted an unsigned image:\n%s", out)
	}

	for _, tc := range []struct{ name, in, version string }{{"signed by another CA", foreignPath, "1.2.3"}, {"unsigned, from cpio", unsigned, "2.0"}} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "signed.swu")
			res := decodeJSON[signedRelease](t, ok(t, "release", "sign-artifact", tc.in, "-o", out, "--data-dir", dataDir, "--json"))
			if res.Kind != "swupdate" || res.Name != tc.version || res.Signer != "CN=Acme Release Signer,O=Acme" {
				t.Errorf("sign-artifact: %+v", res)
			}
			if msg := swupdateCheck(t, out, ca); !swupdateAccepted(msg) {
				t.Fatalf("swupdate -c refused the image signed by the release signer:\n%s", msg)
			}
			if msg := swupdateCheck(t, out, otherCAFile); swupdateAccepted(msg) || !strings.Contains(msg, "Authentication of all signatures failed") {
				t.Fatalf("swupdate -c accepted the image under another CA:\n%s", msg)
			}
		})
	}
	if entries, _ := os.ReadDir(dest); len(entries) != 0 {
		t.Errorf("check mode installed %v", entries)
	}

	// The extended key usage decides: a code-signing-only certificate
	// under the same root, through openssl cms, is refused by swupdate;
	// the release signer through the very same path is accepted.
	rootKey, err := kms.Open(t.Context(), filepath.Join(pkiDirOf(dataDir), "keys", "root.key"), kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := pki.LoadHierarchy(pkiDirOf(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	noEmailKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	noEmail, err := pki.Issue(t.Context(), h.Root, rootKey, noEmailKey.Public(), &x509.Certificate{}, pki.ModifyCertificateFunc("code-signing-only", func(c, _ *x509.Certificate) error {
		c.Subject = pkix.Name{CommonName: "Acme Code Signer"}
		c.NotBefore, c.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		c.KeyUsage, c.ExtKeyUsage = x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	noEmailCert, noEmailKeyFile := writeSignerFiles(t, t.TempDir(), swu.Signer{Cert: noEmail, Key: noEmailKey})
	fails(t, "lacks extended key usage emailProtection", "release", "sign-artifact", unsigned, "-o", filepath.Join(dir, "x.swu"), "--key", noEmailKeyFile, "--cert", noEmailCert)
	if _, err := os.Stat(filepath.Join(dir, "x.swu")); err == nil {
		t.Error("a refused signing left its output")
	}
	opensslSigned := func(cert, key string) string {
		testkit.Run(t, openssl, "cms", "-sign", "-in", filepath.Join(work, "sw-description"), "-out", filepath.Join(work, "sw-description.sig"),
			"-signer", cert, "-inkey", key, "-outform", "DER", "-nosmimecap", "-binary")
		path := filepath.Join(t.TempDir(), "hand.swu")
		os.WriteFile(path, cpioArchive("sw-description", "sw-description.sig", "app.conf"), 0o644)
		return path
	}
	if out := swupdateCheck(t, opensslSigned(noEmailCert, noEmailKeyFile), ca); swupdateAccepted(out) {
		t.Fatalf("swupdate accepted a signer without emailProtection:\n%s", out)
	}
	relCert := filepath.Join(pkiDirOf(dataDir), "release-signer.crt")
	relKey := filepath.Join(pkiDirOf(dataDir), "keys", "release-signer.key")
	if out := swupdateCheck(t, opensslSigned(relCert, relKey), ca); !swupdateAccepted(out) {
		t.Fatalf("swupdate refused the release signer through openssl cms:\n%s", out)
	}
	// The online issuing CAs cannot sign images: their certificates have
	// no digitalSignature, which OpenSSL's S/MIME check would otherwise
	// accept from a CA certificate without EKU.
	for _, name := range []string{"device-ca", "manufacturing-ca"} {
		cert := filepath.Join(pkiDirOf(dataDir), name+".crt")
		key := filepath.Join(pkiDirOf(dataDir), "keys", name+".key")
		if out := swupdateCheck(t, opensslSigned(cert, key), ca); swupdateAccepted(out) {
			t.Fatalf("swupdate accepted an image signed by the %s's key:\n%s", name, out)
		}
	}
}

// TestSignArtifactRefusals: what is neither format, a damaged artifact,
// wrong flags and mismatched keys are refused with a clear error, and OUT
// is never touched.
func TestSignArtifactRefusals(t *testing.T) {
	isolateCLI(t)
	dataDir := testPKIDir(t, "Acme")
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	os.WriteFile(p("notes.txt"), []byte(strings.Repeat("just text\n", 100)), 0o644)
	mcu := make([]byte, 64)
	binary.LittleEndian.PutUint32(mcu, mcuboot.ImageMagic)
	os.WriteFile(p("app.img"), mcu, 0o644)
	good := menderArtifactFile(t, dir, "good.mender", "")
	art, _ := os.ReadFile(good)
	damaged := bytes.Clone(art)
	damaged[bytes.Index(art, []byte("data/0000.tar.gz"))+512+40] ^= 0xff // inside data/0000.tar.gz
	os.WriteFile(p("damaged.mender"), damaged, 0o644)
	var swuBuf bytes.Buffer
	_, other, _ := otherCA(t, nil, nil, x509.ExtKeyUsageEmailProtection)
	if err := swu.Write(&swuBuf, swu.Spec{Version: "1"}, swuSources(dir), other); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p("a.swu"), swuBuf.Bytes(), 0o644)
	otherKey, _ := ecKeyFiles(t, dir, "other")
	otherCert, _ := writeSignerFiles(t, t.TempDir(), other)

	const previous = "the previous OUT\n"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"text", []string{p("notes.txt"), "--data-dir", dataDir}, "is neither a Mender artifact (not a tar archive"},
		{"MCUboot", []string{p("app.img"), "--data-dir", dataDir}, "is an MCUboot image: sign it with cradle release sign-image"},
		{"damaged", []string{p("damaged.mender"), "--data-dir", dataDir}, "the signed artifact does not verify"},
		{"missing", []string{p("nothing.mender"), "--data-dir", dataDir}, "no such file"},
		{"both", []string{good, "--data-dir", dataDir, "--key", otherKey}, "either --data-dir"},
		{"neither", []string{good}, "either --data-dir"},
		{"cert without key", []string{good, "--data-dir", dataDir, "--cert", otherCert}, "--cert goes with --key"},
		{"swu without cert", []string{p("a.swu"), "--key", otherKey}, "give --cert with --key"},
		{"cert of another key", []string{p("a.swu"), "--key", otherKey, "--cert", otherCert}, "is not for the key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			os.WriteFile(out, []byte(previous), 0o644)
			fails(t, tc.want, append([]string{"release", "sign-artifact", "-o", out}, tc.args...)...)
			if b, _ := os.ReadFile(out); string(b) != previous {
				t.Errorf("OUT changed to %.40q", b)
			}
			if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
				t.Errorf("left behind: %v", entries)
			}
		})
	}
	fails(t, "-o OUT is required", "release", "sign-artifact", good, "--data-dir", dataDir)
}

// TestSignArtifactPKCS11: with every key in a SoftHSM2 token (pki init
// --pkcs11-*, P-384 keys), the release signer is there too (P-256: what
// Mender verifies) and signs both formats
// (the token signs the digest; sign-artifact turns DER into r‖s for
// Mender) so that mender-artifact and swupdate accept them.
func TestSignArtifactPKCS11(t *testing.T) {
	requirePKCS11Build(t)
	isolateCLI(t)
	testkit.NeedProgram(t, "swupdate")
	tok := newSoftToken(t, "cradle-rel")
	setPassphrase(t, "")
	dataDir := t.TempDir()
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1",
		"--key-algorithm", "ecdsa-p384", "--pkcs11-module", tok.module, "--pkcs11-token", tok.label, "--pkcs11-pin-source", "file:"+tok.pinFile)
	dir := t.TempDir()
	pub := writeShow(t, dataDir, dir, "release.pub", "--pubkey")
	ca := writeShow(t, dataDir, dir, "ca.pem", "--ca")

	art := menderArtifactFile(t, dir, "a.mender", "")
	ok(t, "release", "sign-artifact", art, "-o", art, "--data-dir", dataDir)
	if msg, err := menderTool(t, "validate", "-k", pub, art); err != nil {
		t.Fatalf("mender-artifact validate: %v\n%s", err, msg)
	}

	var b bytes.Buffer
	_, other, _ := otherCA(t, nil, nil, x509.ExtKeyUsageEmailProtection)
	if err := swu.Write(&b, swu.Spec{Version: "3", HardwareCompatibility: []string{"1.0"}}, swuSources(t.TempDir()), other); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "a.swu")
	os.WriteFile(img, b.Bytes(), 0o644)
	ok(t, "release", "sign-artifact", img, "-o", img, "--data-dir", dataDir)
	if out := swupdateCheck(t, img, ca); !swupdateAccepted(out) {
		t.Fatalf("swupdate -c refused the image signed in the token:\n%s", out)
	}
}
