package tuf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// keySigner adapts a crypto.Signer (a file key or a PKCS#11 key from
// internal/kms) to the signer go-tuf's Metadata.Sign expects. ECDSA P-256
// signs the SHA-256 of the canonical JSON (scheme ecdsa-sha2-nistp256, an
// ASN.1 DER signature); Ed25519 signs the message itself.
type keySigner struct {
	s crypto.Signer
}

var _ signature.Signer = keySigner{}

func (k keySigner) PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return k.s.Public(), nil
}

func (k keySigner) SignMessage(message io.Reader, _ ...signature.SignOption) ([]byte, error) {
	msg, err := io.ReadAll(message)
	if err != nil {
		return nil, err
	}
	switch k.s.Public().(type) {
	case ed25519.PublicKey:
		return k.s.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		digest := sha256.Sum256(msg)
		return k.s.Sign(rand.Reader, digest[:], crypto.SHA256)
	}
}

// MetadataSigner returns s as the signer go-tuf's Metadata.Sign takes, for
// tools that sign metadata by hand with a key from internal/kms.
func MetadataSigner(s crypto.Signer) signature.Signer { return keySigner{s} }

// tufKey turns a public key into the TUF key record and its key ID. Only
// ECDSA P-256 and Ed25519 keys are accepted: they are the two schemes every
// TUF client (and MCUboot) implements.
func tufKey(pub crypto.PublicKey) (*metadata.Key, string, error) {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if p.Curve != elliptic.P256() {
			return nil, "", fmt.Errorf("tuf: ecdsa key on curve %s: use ecdsa-p256 or ed25519", p.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, "", fmt.Errorf("tuf: %T key: use ecdsa-p256 or ed25519", pub)
	}
	k, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		return nil, "", fmt.Errorf("tuf: key: %w", err)
	}
	id, err := k.ID()
	if err != nil {
		return nil, "", fmt.Errorf("tuf: key id: %w", err)
	}
	return k, id, nil
}

// KeyID returns the TUF key ID (the SHA-256 of the key's canonical JSON
// record) of a public key, as it appears in root.json.
func KeyID(pub crypto.PublicKey) (string, error) {
	_, id, err := tufKey(pub)
	return id, err
}
