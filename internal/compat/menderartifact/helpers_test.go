package menderartifact_test

import (
	"archive/tar"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"cradle/internal/compat/menderartifact"
)

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writeKeys writes key as the PEM mender-artifact reads (SEC1 for ECDSA,
// PKCS#1 for RSA) and its public key as PKIX PEM, returning both paths.
func writeKeys(t *testing.T, key crypto.Signer) (priv, pub string) {
	t.Helper()
	dir := t.TempDir()
	var blk *pem.Block
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		blk = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	case *rsa.PrivateKey:
		blk = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(dir, "key.pem"), filepath.Join(dir, "pub.pem")
	if err := os.WriteFile(priv, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// build writes an artifact with Write.
func build(t testing.TB, spec menderartifact.Spec, files map[string][]byte, signer crypto.Signer) []byte {
	t.Helper()
	var srcs []menderartifact.Source
	for _, name := range slices.Sorted(maps.Keys(files)) {
		srcs = append(srcs, menderartifact.Source{Name: name, Size: int64(len(files[name])), R: bytes.NewReader(files[name])})
	}
	if spec.TempDir == "" {
		spec.TempDir = t.TempDir()
	}
	var buf bytes.Buffer
	if err := menderartifact.Write(&buf, spec, srcs, signer); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes()
}

// entry is one entry of an artifact's outer tar.
type entry struct {
	name string
	data []byte
}

func entries(t testing.TB, art []byte) []entry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(art))
	var es []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return es
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, entry{h.Name, b})
	}
}

func retar(t testing.TB, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Size: int64(len(e.data)), Mode: 0o600, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarOf makes an uncompressed tar of the named files, in order.
func tarOf(t testing.TB, es ...entry) []byte {
	t.Helper()
	return retar(t, es)
}

func edSigner(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
