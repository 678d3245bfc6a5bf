package main

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/kms"
	"cradle/internal/testkit"
)

// TestReleaseImageCommands signs images with keys that openssl made
// (P-256 and Ed25519, one encrypted) and checks them with verify-image,
// then every refusal of both commands.
func TestReleaseImageCommands(t *testing.T) {
	isolateCLI(t)
	openssl := testkit.NeedProgram(t, "openssl")
	dir := t.TempDir()
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	sh("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("ec.pem"))
	sh("pkey", "-in", p("ec.pem"), "-pubout", "-out", p("ec.pub"))
	sh("genpkey", "-algorithm", "ED25519", "-aes-256-cbc", "-pass", "pass:s3cret", "-out", p("ed.pem"))
	sh("pkey", "-in", p("ed.pem"), "-passin", "pass:s3cret", "-pubout", "-out", p("ed.pub"))
	sh("pkey", "-in", p("ed.pub"), "-pubin", "-outform", "DER", "-out", p("ed.der"))
	for _, f := range []string{"ec.pem", "ed.pem"} {
		if err := os.Chmod(p(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(p("pass"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := append(make([]byte, 0x200), bytes.Repeat([]byte("app "), 1000)...)
	if err := os.WriteFile(p("app.bin"), in, 0o644); err != nil {
		t.Fatal(err)
	}

	// Ed25519, key file encrypted, security counter from the version.
	info := decodeJSON[imageInfo](t, ok(t, "release", "sign-image", "--key", p("ed.pem"), "--passphrase-file", p("pass"),
		"--version", "1.2.3+4", "--security-counter", "auto", p("app.bin"), p("app.ed.img"), "--json"))
	if info.Version != "1.2.3+4" || info.SecurityCounter == nil || *info.SecurityCounter != 0x01020003 || info.SignatureAlgorithm != "ed25519" {
		t.Fatalf("sign-image: %+v", info)
	}
	// The key hash is the SHA-256 of the DER public key openssl exports.
	der, err := os.ReadFile(p("ed.der"))
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(der); info.KeyHash != hex.EncodeToString(sum[:]) {
		t.Fatalf("key hash %s is not the SHA-256 of the DER public key", info.KeyHash)
	}
	got := decodeJSON[imageInfo](t, ok(t, "release", "verify-image", "--key", p("ec.pub"), "--key", p("ed.pub"), p("app.ed.img"), "--json"))
	if got.Hash != info.Hash || got.KeyHash != info.KeyHash || got.Version != info.Version || got.SecurityCounter == nil ||
		*got.SecurityCounter != *info.SecurityCounter || got.Size != info.Size || got.SignatureAlgorithm != "ed25519" {
		t.Fatalf("verify-image %+v, sign-image %+v", got, info)
	}

	// ECDSA P-256, padded header and slot, human output.
	if err := os.WriteFile(p("raw.bin"), []byte("raw firmware"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, "release", "sign-image", "--key", "file:"+p("ec.pem"), "--version", "2.0.0", "--security-counter", "9", "--header-size", "0x20",
		"--pad-header", "--slot-size", "0x2000", "--align", "8", p("raw.bin"), p("raw.img"))
	if st, err := os.Stat(p("raw.img")); err != nil || st.Size() != 0x2000 {
		t.Fatalf("padded image: %v, %v", st, err)
	}
	out := ok(t, "release", "verify-image", "--key", p("ec.pub"), p("raw.img"))
	for _, want := range []string{"2.0.0+0", "Security counter  9", "ecdsa-p256"} {
		if !strings.Contains(out, want) {
			t.Errorf("verify-image output lacks %q:\n%s", want, out)
		}
	}

	// Refusals.
	corrupt, _ := os.ReadFile(p("app.ed.img"))
	corrupt[0x300] ^= 1
	if err := os.WriteFile(p("corrupt.img"), corrupt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("notzero.bin"), []byte("no header room"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := kms.Generate(t.Context(), p("p384.pem"), kms.ECDSAP384, kms.Options{}); err != nil {
		t.Fatal(err)
	}
	sign := func(key, version, sc, in, out string, extra ...string) []string {
		return append([]string{"release", "sign-image", "--key", key, "--version", version, "--security-counter", sc, in, out}, extra...)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"release", "verify-image", "--key", p("ec.pub"), p("app.ed.img")}, "unknown key"},
		{"corrupted", []string{"release", "verify-image", "--key", p("ed.pub"), p("corrupt.img")}, "hash mismatch"},
		{"not an image", []string{"release", "verify-image", "--key", p("ed.pub"), p("app.bin")}, "bad magic"},
		{"no key", []string{"release", "verify-image", p("app.ed.img")}, "--key is required"},
		{"key file without keys", []string{"release", "verify-image", "--key", p("pass"), p("app.ed.img")}, "holds no PEM public key"},
		{"missing flags", []string{"release", "sign-image", p("app.bin"), p("x.img")}, "--key, --version and --security-counter are required"},
		{"bad version", sign(p("ec.pem"), "1.2.3.4", "1", p("app.bin"), p("x.img")), "version \"1.2.3.4\""},
		{"bad security counter", sign(p("ec.pem"), "1.0.0", "-1", p("app.bin"), p("x.img")), "--security-counter \"-1\""},
		{"input without header room", sign(p("ec.pem"), "1.0.0", "1", p("notzero.bin"), p("x.img")), "use --pad-header"},
		{"P-384 key", sign(p("p384.pem"), "1.0.0", "1", p("app.bin"), p("x.img")), "P-384"},
		{"wrong passphrase", sign(p("ed.pem"), "1.0.0", "1", p("app.bin"), p("x.img"), "--passphrase-file", p("ec.pub")), "wrong passphrase"},
		{"missing key", sign(p("none.pem"), "1.0.0", "1", p("app.bin"), p("x.img")), "signing key"},
		{"slot too small", sign(p("ec.pem"), "1.0.0", "1", p("app.bin"), p("x.img"), "--slot-size", "0x1000"), "exceeds the slot size"},
		{"bad alignment", sign(p("ec.pem"), "1.0.0", "1", p("app.bin"), p("x.img"), "--align", "3"), "alignment 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fails(t, tc.want, tc.args...)
			if _, err := os.Stat(p("x.img")); !os.IsNotExist(err) {
				t.Fatalf("a refused sign-image left its output: %v", err)
			}
		})
	}
}

// TestReleaseSignImagePKCS11 signs with a P-256 key in a SoftHSM2 token:
// the token's ECDSA signature (CKM_ECDSA over the image hash) ends up DER
// in the image, and verify-image accepts it with the exported public key.
func TestReleaseSignImagePKCS11(t *testing.T) {
	requirePKCS11Build(t)
	isolateCLI(t)
	tok := newSoftToken(t, "cradle-fw")
	uri := "pkcs11:token=" + tok.label + ";object=firmware?module-path=" + tok.module + "&pin-source=file:" + tok.pinFile
	signer, err := kms.Generate(t.Context(), uri, kms.ECDSAP256, kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pub := publicKeyPEMFile(t, signer.Public())
	kms.Close(signer)
	dir := t.TempDir()
	in := filepath.Join(dir, "app.bin")
	if err := os.WriteFile(in, append(make([]byte, 0x200), "firmware"...), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "app.img")
	signed := decodeJSON[imageInfo](t, ok(t, "release", "sign-image", "--key", uri, "--version", "3.1.0", "--security-counter", "0x10", in, img, "--json"))
	got := decodeJSON[imageInfo](t, ok(t, "release", "verify-image", "--key", pub, img, "--json"))
	if got.Hash != signed.Hash || got.KeyHash != signed.KeyHash || *got.SecurityCounter != 16 || got.SignatureAlgorithm != "ecdsa-p256" {
		t.Fatalf("verify-image %+v, sign-image %+v", got, signed)
	}
}

func publicKeyPEMFile(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
