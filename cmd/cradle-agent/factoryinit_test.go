package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

// factoryInitOutput is the JSON object factory-init prints.
type factoryInitOutput struct {
	HardwareUID     string `json:"hardware_uid"`
	Key             string `json:"key"`
	CSR             string `json:"csr"`
	PublicKeySHA256 string `json:"public_key_sha256"`
}

// runAgent runs the agent and returns its exit code, stdout and stderr.
func runAgent(args ...string) (int, string, string) {
	var stdout, stderr strings.Builder
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// checkOutput parses stdout as one JSON object whose CSR verifies, names
// uid and matches the fingerprint.
func checkOutput(t *testing.T, stdout, uid string) factoryInitOutput {
	t.Helper()
	if strings.Count(stdout, "\n") != 1 || !strings.HasSuffix(stdout, "}\n") {
		t.Errorf("stdout is not one line of JSON: %q", stdout)
	}
	var out factoryInitOutput
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	if out.HardwareUID != uid {
		t.Errorf("hardware_uid %q, want %q", out.HardwareUID, uid)
	}
	block, _ := pem.Decode([]byte(out.CSR))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("csr is not a PEM CERTIFICATE REQUEST: %q", out.CSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("the CSR's signature does not verify: %v", err)
	}
	if csr.Subject.CommonName != uid {
		t.Errorf("CSR CN %q, want %q", csr.Subject.CommonName, uid)
	}
	sum := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	if out.PublicKeySHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("public_key_sha256 %s is not the CSR key's %x", out.PublicKeySHA256, sum)
	}
	return out
}

func newSimUnit(t *testing.T, uid string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "unit")
	if _, err := hw.CreateSimDevice(dir, uid); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFactoryInitCommand(t *testing.T) {
	dir := newSimUnit(t, "SOC-1234")
	code, stdout, stderr := runAgent("factory-init", "--device", dir)
	if code != 0 {
		t.Fatalf("factory-init: exit %d, stderr %q", code, stderr)
	}
	first := checkOutput(t, stdout, "SOC-1234")
	if first.Key != "idevid" {
		t.Errorf("key %q, want idevid", first.Key)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "idevid.key")); err != nil {
		t.Errorf("the key is not in the unit's key files: %v", err)
	}

	code, stdout, stderr = runAgent("factory-init", "--device", dir)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "--replace") {
		t.Errorf("second factory-init: exit %d, stdout %q, stderr %q; want 1 and a hint at --replace", code, stdout, stderr)
	}
	code, stdout, stderr = runAgent("factory-init", "--device", dir, "--replace")
	if code != 0 {
		t.Fatalf("factory-init --replace: exit %d, stderr %q", code, stderr)
	}
	if again := checkOutput(t, stdout, "SOC-1234"); again.PublicKeySHA256 == first.PublicKeySHA256 {
		t.Errorf("--replace kept the old key")
	}

	code, stdout, stderr = runAgent("factory-init", "--device", dir, "--key", "other")
	if code != 0 || checkOutput(t, stdout, "SOC-1234").Key != "other" {
		t.Errorf("factory-init --key other: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestFactoryInitCommandRefusesProvisionedUnit(t *testing.T) {
	dir := newSimUnit(t, "SOC-5678")
	dev, err := hw.OpenSimDevice(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	if err := dev.Fuses.Program(context.Background(), hw.FuseLifecycle, w); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runAgent("factory-init", "--device", dir, "--replace")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "provisioned") {
		t.Errorf("factory-init on a provisioned unit: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "idevid.key")); !os.IsNotExist(err) {
		t.Errorf("a key was made on a provisioned unit: %v", err)
	}
}

func TestFactoryInitCommandUsage(t *testing.T) {
	dir := newSimUnit(t, "SOC-9")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no device", []string{"factory-init"}, 2, "needs --device"},
		{"argument", []string{"factory-init", "--device", dir, "extra"}, 2, "takes no arguments"},
		{"unknown flag", []string{"factory-init", "--nope"}, 2, "flag provided but not defined"},
		{"unknown key store", []string{"factory-init", "--device", dir, "--key-store", "nvram"}, 2, `unknown key store "nvram"`},
		{"tpm flag for file store", []string{"factory-init", "--device", dir, "--tpm", "127.0.0.1:1"}, 2, "TPM settings"},
		{"missing device", []string{"factory-init", "--device", filepath.Join(dir, "nope")}, 1, "open the unit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runAgent(tc.args...)
			if code != tc.code || stdout != "" || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d and %q", code, stdout, stderr, tc.code, tc.stderr)
			}
		})
	}
	code, stdout, stderr := runAgent("factory-init", "--help")
	if code != 0 || !strings.Contains(stdout, "--pkcs11-pin-source") || stderr != "" {
		t.Errorf("factory-init --help: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "idevid.key")); !os.IsNotExist(err) {
		t.Errorf("a usage error made a key: %v", err)
	}
}

// TestFactoryInitCommandTPM: with --key-store tpm the key is made in
// swtpm, persistent (tpm2_getcap lists it), indexed in DIR/tpm, and not in
// the unit's key files.
func TestFactoryInitCommandTPM(t *testing.T) {
	sw := testkit.StartSWTPM(t)
	getcap := testkit.NeedProgram(t, "tpm2_getcap")
	dir := newSimUnit(t, "SOC-TPM")
	code, stdout, stderr := runAgent("factory-init", "--device", dir, "--key-store", "tpm", "--tpm", sw.Addr)
	if code != 0 {
		t.Fatalf("factory-init --key-store tpm: exit %d, stderr %q", code, stderr)
	}
	checkOutput(t, stdout, "SOC-TPM")
	if got := testkit.Run(t, getcap, "--tcti", sw.TCTI(), "handles-persistent"); !strings.Contains(got, "0x81010000") {
		t.Errorf("tpm2_getcap lists no persistent key:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "tpm", "tpm-keys.json")); err != nil {
		t.Errorf("no TPM key index in DIR/tpm: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "idevid.key")); !os.IsNotExist(err) {
		t.Errorf("the key landed in the unit's key files: %v", err)
	}
	code, _, stderr = runAgent("factory-init", "--device", dir, "--key-store", "tpm", "--tpm", sw.Addr)
	if code != 1 || !strings.Contains(stderr, "--replace") {
		t.Errorf("second factory-init on the TPM: exit %d, stderr %q", code, stderr)
	}
	code, stdout, stderr = runAgent("factory-init", "--device", dir, "--key-store", "tpm", "--tpm", sw.Addr, "--replace")
	if code != 0 {
		t.Fatalf("factory-init --replace on the TPM: exit %d, stderr %q", code, stderr)
	}
	checkOutput(t, stdout, "SOC-TPM")
}

// TestFactoryInitCommandPKCS11: with --key-store pkcs11 the key is made
// in a SoftHSM2 token.
func TestFactoryInitCommandPKCS11(t *testing.T) {
	h := testkit.NewSoftHSM(t, "se")
	dir := newSimUnit(t, "SOC-SE")
	code, stdout, stderr := runAgent("factory-init", "--device", dir, "--key-store", "pkcs11",
		"--pkcs11-module", h.Module, "--pkcs11-token", "se", "--pkcs11-pin-source", "file:"+h.PINFile)
	if code != 0 && strings.Contains(stderr, "no PKCS#11 support") {
		testkit.Missing(t, "this build has no cgo, hence no PKCS#11")
	}
	if code != 0 {
		t.Fatalf("factory-init --key-store pkcs11: exit %d, stderr %q", code, stderr)
	}
	checkOutput(t, stdout, "SOC-SE")
	if objs := h.Objects(t, "se"); strings.Count(objs, "label:      idevid\n") != 2 {
		t.Errorf("the token does not hold the idevid key pair:\n%s", objs)
	}
}
