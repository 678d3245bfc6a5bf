package cradle

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// Tombstone bounds: a signed tombstone is small, whatever a device erases.
const (
	MaxTombstonePayload = 64 << 10
	MaxTombstoneObjects = 256
)

// TombstoneStores and TombstoneKinds are the values ErasedObject allows.
var (
	TombstoneStores = []string{"file", "tpm", "pkcs11", "state"}
	TombstoneKinds  = []string{"key", "secret", "config"}
)

// VerifyTombstone checks a signed tombstone on its own: the certificate
// parses, the signature over the payload verifies with its key, and the
// payload is a well-formed Tombstone (known fields only, lifecycle "eol").
// It does not say whether the certificate belongs to the device: the
// store checks that against its records. Errors are EINVALID and say what
// was wrong.
func VerifyTombstone(st SignedTombstone) (*Tombstone, *x509.Certificate, error) {
	switch {
	case len(st.Payload) == 0:
		return nil, nil, Errorf(EINVALID, "invalid tombstone: empty payload")
	case len(st.Payload) > MaxTombstonePayload:
		return nil, nil, Errorf(EINVALID, "invalid tombstone: payload of %d bytes is over %d", len(st.Payload), MaxTombstonePayload)
	case len(st.Signature) == 0:
		return nil, nil, Errorf(EINVALID, "invalid tombstone: no signature")
	case len(st.Certificate) == 0:
		return nil, nil, Errorf(EINVALID, "invalid tombstone: no certificate")
	}
	cert, err := x509.ParseCertificate(st.Certificate)
	if err != nil {
		return nil, nil, Errorf(EINVALID, "invalid tombstone: certificate: %v", err)
	}
	if err := verifySignature(cert.PublicKey, st.Payload, st.Signature); err != nil {
		return nil, nil, Errorf(EINVALID, "invalid tombstone: the signature does not verify with the key of certificate %s: %v", SerialHex(cert.SerialNumber), err)
	}
	var t Tombstone
	dec := json.NewDecoder(bytes.NewReader(st.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: %v", err)
	}
	if dec.More() {
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: data after the JSON object")
	}
	switch {
	case t.Serial == "" || ValidateSerial(t.Serial) != nil:
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: bad serial %q", truncate(t.Serial, 64))
	case t.CommandID == "" || len(t.CommandID) > 64:
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: command_id is required (the wipe command's id)")
	case t.Sequence == 0:
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: sequence is required (the wipe command's sequence)")
	case t.Lifecycle != "eol":
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: lifecycle is %q, want eol", truncate(t.Lifecycle, 32))
	case t.At.IsZero():
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: at is required")
	case len(t.Erased) > MaxTombstoneObjects:
		return nil, nil, Errorf(EINVALID, "invalid tombstone payload: %d erased objects, at most %d", len(t.Erased), MaxTombstoneObjects)
	}
	for i, o := range t.Erased {
		if !slices.Contains(TombstoneStores, o.Store) || !slices.Contains(TombstoneKinds, o.Kind) || o.Name == "" || len(o.Name) > 256 || !utf8.ValidString(o.Name) {
			return nil, nil, Errorf(EINVALID, "invalid tombstone payload: erased[%d] must have a store (file, tpm, pkcs11, state), a kind (key, secret, config) and a name", i)
		}
	}
	if t.Erased == nil {
		t.Erased = []ErasedObject{}
	}
	return &t, cert, nil
}

// verifySignature checks sig over msg with pub: ECDSA (ASN.1) and RSA
// PKCS#1 v1.5 over SHA-256, Ed25519 over msg itself.
func verifySignature(pub any, msg, sig []byte) error {
	sum := sha256.Sum256(msg)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, sum[:], sig) {
			return errors.New("bad ECDSA signature")
		}
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig); err != nil {
			return errors.New("bad RSA signature")
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(k, msg, sig) {
			return errors.New("bad Ed25519 signature")
		}
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	return nil
}

// AuditKeyID names an audit public key: "ed25519:" and the first 16 hex
// digits of the SHA-256 of the key.
func AuditKeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "ed25519:" + hex.EncodeToString(sum[:8])
}

// SignedBytes returns what the audit key signs: the certificate's JSON
// with KeyID and Signature empty.
func (c DecommissionCertificate) SignedBytes() ([]byte, error) {
	c.KeyID, c.Signature = "", ""
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("decommission certificate: %w", err)
	}
	return b, nil
}

// Sign signs the certificate with the audit key.
func (c *DecommissionCertificate) Sign(key ed25519.PrivateKey) error {
	b, err := c.SignedBytes()
	if err != nil {
		return err
	}
	c.KeyID = AuditKeyID(key.Public().(ed25519.PublicKey))
	c.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, b))
	return nil
}

// Verify checks the certificate's signature with the audit public key.
func (c DecommissionCertificate) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return errors.New("decommission certificate: not an Ed25519 public key")
	}
	if c.KeyID != AuditKeyID(pub) {
		return fmt.Errorf("decommission certificate: signed by key %s, not %s", c.KeyID, AuditKeyID(pub))
	}
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil {
		return fmt.Errorf("decommission certificate: signature: %w", err)
	}
	b, err := c.SignedBytes()
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, b, sig) {
		return errors.New("decommission certificate: the signature does not verify: the document was changed after signing")
	}
	return nil
}
