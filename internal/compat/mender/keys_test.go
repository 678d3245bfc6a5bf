package mender_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"sync"
	"testing"
)

// deviceKey is a device's key pair as the Mender client holds it.
type deviceKey struct {
	signer crypto.Signer
	pem    string
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// testKeys are one key of each kind the client may use: RSA (made once
// per test binary), ECDSA P-256 and Ed25519 (fixed).
func testKeys(t testing.TB) map[string]deviceKey {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	ec, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ed := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32))
	out := map[string]deviceKey{}
	for name, s := range map[string]crypto.Signer{"rsa": rsaKey, "ecdsa": ec, "ed25519": ed} {
		der, err := x509.MarshalPKIXPublicKey(s.Public())
		if err != nil {
			t.Fatal(err)
		}
		out[name] = deviceKey{signer: s, pem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
	}
	return out
}

// authBody is an auth request body as the client encodes it (Go's
// json.Encoder, with a trailing newline).
func authBody(t testing.TB, idData map[string]string, k deviceKey, tenantToken string) []byte {
	t.Helper()
	id, err := json.Marshal(idData)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(struct {
		IDData      string `json:"id_data"`
		TenantToken string `json:"tenant_token"`
		PubKey      string `json:"pubkey"`
	}{string(id), tenantToken, k.pem}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// sign is the X-MEN-Signature of body by k, as the client makes it.
func sign(t testing.TB, k deviceKey, body []byte) string {
	t.Helper()
	var sig []byte
	var err error
	if _, ok := k.signer.(ed25519.PrivateKey); ok {
		sig, err = k.signer.Sign(rand.Reader, body, crypto.Hash(0))
	} else {
		sum := sha256.Sum256(body)
		sig, err = k.signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}
