package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
)

func newUnit(t *testing.T, uid string, stage hw.Lifecycle) *hw.Device {
	t.Helper()
	dev, err := hw.CreateSimDevice(filepath.Join(t.TempDir(), "unit"), uid)
	if err != nil {
		t.Fatal(err)
	}
	if stage != hw.LifecycleFactory {
		w, err := hw.LifecycleWord(stage)
		if err != nil {
			t.Fatal(err)
		}
		if err := dev.Fuses.Program(context.Background(), hw.FuseLifecycle, w); err != nil {
			t.Fatal(err)
		}
	}
	return dev
}

// checkResult checks that res is a CSR for the key named res.Key in dev,
// with the unit's UID as CN, and returns the CSR.
func checkResult(t *testing.T, dev *hw.Device, res *agent.FactoryInitResult, uid string) *x509.CertificateRequest {
	t.Helper()
	if res.HardwareUID != uid {
		t.Errorf("hardware UID %q, want %q", res.HardwareUID, uid)
	}
	block, rest := pem.Decode(res.CSR)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(rest) != 0 {
		t.Fatalf("CSR is not one PEM CERTIFICATE REQUEST:\n%s", res.CSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CSR signature: %v", err)
	}
	if csr.Subject.CommonName != uid {
		t.Errorf("CSR CN %q, want %q", csr.Subject.CommonName, uid)
	}
	key, err := dev.Keys.Key(context.Background(), res.Key)
	if err != nil {
		t.Fatalf("the key %q is not in the store: %v", res.Key, err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	if res.PublicKeySHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("public_key_sha256 %s is not the store key's %x", res.PublicKeySHA256, sum)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
		t.Errorf("the CSR's public key is not the stored key's")
	}
	return csr
}

func TestFactoryInit(t *testing.T) {
	ctx := context.Background()
	dev := newUnit(t, "SOC-00A1B2", hw.LifecycleFactory)
	res, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{})
	if err != nil {
		t.Fatalf("FactoryInit: %v", err)
	}
	if res.Key != "idevid" {
		t.Errorf("key %q, want idevid", res.Key)
	}
	csr := checkResult(t, dev, res, "SOC-00A1B2")
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("default key is %T, want ECDSA P-256", csr.PublicKey)
	}

	// A second run finds the key and refuses.
	if _, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{}); !errors.Is(err, hw.ErrExists) || !strings.Contains(err.Error(), "--replace") {
		t.Errorf("second FactoryInit: %v, want ErrExists mentioning --replace", err)
	}
	// Replace makes a new key.
	res2, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{Replace: true})
	if err != nil {
		t.Fatalf("FactoryInit with Replace: %v", err)
	}
	checkResult(t, dev, res2, "SOC-00A1B2")
	if res2.PublicKeySHA256 == res.PublicKeySHA256 {
		t.Errorf("Replace kept the old key")
	}

	// The JSON form carries the CSR as PEM text and reads back.
	b, err := json.Marshal(res2)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m["csr"], "-----BEGIN CERTIFICATE REQUEST-----\n") || m["hardware_uid"] != "SOC-00A1B2" || m["key"] != "idevid" || m["public_key_sha256"] != res2.PublicKeySHA256 {
		t.Errorf("JSON form: %s", b)
	}
	var back agent.FactoryInitResult
	if err := json.Unmarshal(b, &back); err != nil || string(back.CSR) != string(res2.CSR) || back.HardwareUID != res2.HardwareUID || back.Key != res2.Key || back.PublicKeySHA256 != res2.PublicKeySHA256 {
		t.Errorf("JSON round trip: %+v, %v", back, err)
	}
}

func TestFactoryInitOptions(t *testing.T) {
	ctx := context.Background()
	dev := newUnit(t, "UID-2", hw.LifecycleRMA)
	res, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{KeyName: "dev-key", Algorithm: hw.ECDSAP384})
	if err != nil {
		t.Fatalf("FactoryInit in rma: %v", err)
	}
	if res.Key != "dev-key" {
		t.Errorf("key %q, want dev-key", res.Key)
	}
	csr := checkResult(t, dev, res, "UID-2")
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P384() {
		t.Errorf("key is %T, want ECDSA P-384", csr.PublicKey)
	}
	if _, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{KeyName: "../x"}); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("bad key name: %v, want ErrInvalid", err)
	}
}

func TestFactoryInitRefusesFieldedUnits(t *testing.T) {
	ctx := context.Background()
	for _, stage := range []hw.Lifecycle{hw.LifecycleProvisioned, hw.LifecycleDeployed, hw.LifecycleEOL} {
		dev := newUnit(t, "UID-3", stage)
		_, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{Replace: true})
		if !errors.Is(err, agent.ErrLifecycle) || !strings.Contains(err.Error(), string(stage)) {
			t.Errorf("FactoryInit on a %s unit: %v, want ErrLifecycle naming the stage", stage, err)
		}
		if _, err := dev.Keys.Key(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
			t.Errorf("FactoryInit on a %s unit left a key: %v", stage, err)
		}
	}
}
