package command

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"cradle/internal/pki"
)

// Envelope bounds.
const (
	// MaxEnvelopeSize is the largest envelope Sign produces and Verify
	// reads.
	MaxEnvelopeSize = 128 << 10
	// MaxChainLen is the most certificates an envelope may carry.
	MaxChainLen = 4
)

// Envelope is the signed wire form of a command. encoding/json writes
// and reads its byte strings as standard base64.
type Envelope struct {
	// Payload is the command JSON, the exact bytes signed.
	Payload []byte `json:"payload"`
	// Signature is over Payload with the leaf's key (see the package doc).
	Signature []byte `json:"signature"`
	// Chain holds DER certificates, the command signer first, then any
	// intermediates; the root is not needed.
	Chain [][]byte `json:"chain"`
}

// Sign validates cmd, encodes it and signs it with signer, the command
// signer's key; chain is the command signer certificate first, then any
// intermediates. It refuses a chain whose leaf is not a command signer
// (devices would refuse it) or does not hold signer's public key, and an
// envelope over MaxEnvelopeSize. It returns the envelope JSON.
//
// Errors: a *cradle.Error with code EINVALID for an invalid command;
// plain errors for a wrong key or chain and signer failures.
func Sign(cmd Command, signer crypto.Signer, chain []*x509.Certificate) ([]byte, error) {
	if err := cmd.Validate(); err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, errors.New("command: sign: no signer")
	}
	if len(chain) == 0 || len(chain) > MaxChainLen {
		return nil, fmt.Errorf("command: sign: chain of %d certificates; give the command signer certificate and up to %d intermediates", len(chain), MaxChainLen-1)
	}
	leaf := chain[0]
	if err := checkSignerProfile(leaf); err != nil {
		return nil, fmt.Errorf("command: sign: %v", err)
	}
	if !samePublicKey(leaf.PublicKey, signer.Public()) {
		return nil, errors.New("command: sign: the signer's key is not the key of the command signer certificate; load the key named " + pki.NameCommandSigner)
	}
	if len(cmd.Args) == 0 {
		cmd.Args = nil
	}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("command: sign: encode: %w", err)
	}
	alg, hash, err := signatureAlgorithm(leaf.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("command: sign: %w", err)
	}
	digest := payload
	if hash != 0 {
		h := hash.New()
		h.Write(payload)
		digest = h.Sum(nil)
	}
	sig, err := signer.Sign(rand.Reader, digest, hash)
	if err != nil {
		return nil, fmt.Errorf("command: sign: %w", err)
	}
	// A signer that misbehaves (wrong hash, broken HSM) is caught here
	// rather than by every device.
	if err := leaf.CheckSignature(alg, payload, sig); err != nil {
		return nil, fmt.Errorf("command: sign: the signer produced a signature that does not verify: %w", err)
	}
	env := Envelope{Payload: payload, Signature: sig}
	for _, c := range chain {
		env.Chain = append(env.Chain, c.Raw)
	}
	out, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("command: sign: encode envelope: %w", err)
	}
	if len(out) > MaxEnvelopeSize {
		return nil, fmt.Errorf("command: sign: envelope of %d bytes is over the %d-byte limit devices accept; make the args smaller", len(out), MaxEnvelopeSize)
	}
	return out, nil
}

// signatureAlgorithm is the scheme for a command signer key.
func signatureAlgorithm(pub any) (x509.SignatureAlgorithm, crypto.Hash, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return x509.ECDSAWithSHA256, crypto.SHA256, nil
		case elliptic.P384():
			return x509.ECDSAWithSHA384, crypto.SHA384, nil
		case elliptic.P521():
			return x509.ECDSAWithSHA512, crypto.SHA512, nil
		}
		return 0, 0, fmt.Errorf("ECDSA curve %s is not supported for commands; use P-256, P-384 or P-521", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return x509.PureEd25519, 0, nil
	}
	return 0, 0, fmt.Errorf("%T keys are not supported for commands; use ECDSA P-256", pub)
}

func samePublicKey(a, b crypto.PublicKey) bool {
	if k, ok := a.(interface{ Equal(crypto.PublicKey) bool }); ok {
		return k.Equal(b)
	}
	return reflect.DeepEqual(a, b)
}

// checkSignerProfile checks what pki.CommandSigner puts on the leaf: not
// a CA, keyUsage digitalSignature, and pki.OIDCommandSigning as its only
// extended key usage.
func checkSignerProfile(leaf *x509.Certificate) error {
	name := fmt.Sprintf("certificate %q", leaf.Subject.CommonName)
	if leaf.IsCA {
		return fmt.Errorf("%s is a CA, not a command signer", name)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return fmt.Errorf("%s lacks the digitalSignature key usage of a command signer", name)
	}
	if len(leaf.ExtKeyUsage) != 0 || len(leaf.UnknownExtKeyUsage) != 1 || !leaf.UnknownExtKeyUsage[0].Equal(pki.OIDCommandSigning) {
		return fmt.Errorf("%s does not have the command signing extended key usage %s as its only one; sign with the %s certificate", name, pki.OIDCommandSigning, pki.NameCommandSigner)
	}
	return nil
}
