//go:build cgo

package kms

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// pkcs11Signer is a key in a token. It signs in the token and holds the
// crypto11 context (session pool, login, module reference) until Close.
type pkcs11Signer struct {
	key  crypto11.Signer
	ctx  *crypto11.Context
	once sync.Once
	err  error
}

var _ io.Closer = (*pkcs11Signer)(nil)

// Public returns the key's public half, read from the token when opened.
func (s *pkcs11Signer) Public() crypto.PublicKey { return s.key.Public() }

// Sign signs digest in the token. For ECDSA the digest was hashed in
// software and the token applies CKM_ECDSA to it; rand is not used (the
// token draws its own randomness).
func (s *pkcs11Signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.key.Sign(rand, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("kms: pkcs11 sign: %w", err)
	}
	return sig, nil
}

// Close releases the sessions and the module reference; the module is
// finalized with its last user. Further signing fails. Close is idempotent.
func (s *pkcs11Signer) Close() error {
	s.once.Do(func() { s.err = s.ctx.Close() })
	return s.err
}

func openPKCS11(ctx context.Context, u *PKCS11URI, opts Options) (crypto.Signer, error) {
	c, err := configure(u, opts)
	if err != nil {
		return nil, err
	}
	keys, err := c.FindKeyPairs(u.ID, []byte(u.Object))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("kms: find key %s: %w", u, err)
	}
	switch len(keys) {
	case 0:
		c.Close()
		return nil, errorf(ErrKeyNotFound, "kms: no key pair matching %s in token %q (create it with cradle pki init, or check object=/id=)", u, u.Token)
	case 1:
	default:
		c.Close()
		return nil, fmt.Errorf("kms: %d key pairs in token %q match %s: add id= to choose one", len(keys), u.Token, u)
	}
	return &pkcs11Signer{key: keys[0], ctx: c}, nil
}

func generatePKCS11(ctx context.Context, u *PKCS11URI, alg Algorithm, opts Options) (crypto.Signer, error) {
	if alg == Ed25519 {
		return nil, fmt.Errorf("kms: ed25519 keys in a PKCS#11 token are not supported (crypto11 has no EdDSA): use ecdsa-p256, ecdsa-p384 or rsa-3072, or an ed25519 file key")
	}
	c, err := configure(u, opts)
	if err != nil {
		return nil, err
	}
	// Refuse if the label or the id is taken, by any private key.
	for _, q := range []struct{ id, label []byte }{{u.ID, nil}, {nil, []byte(u.Object)}} {
		if len(q.id) == 0 && len(q.label) == 0 {
			continue
		}
		found, err := c.FindPrivateKeys(q.id, q.label)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("kms: look for key %s: %w", u, err)
		}
		if len(found) > 0 {
			c.Close()
			return nil, errorf(ErrKeyExists, "kms: token %q holds a key matching %s already: Generate never replaces a key", u.Token, u)
		}
	}
	id := u.ID
	if len(id) == 0 {
		// crypto11 pairs the halves by CKA_ID, so every key needs one.
		id = make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			c.Close()
			return nil, fmt.Errorf("kms: key id: %w", err)
		}
	}
	var key crypto11.Signer
	switch {
	case alg == RSA3072 && u.Object != "":
		key, err = c.GenerateRSAKeyPairWithLabel(id, []byte(u.Object), 3072)
	case alg == RSA3072:
		key, err = c.GenerateRSAKeyPair(id, 3072)
	default:
		curve := elliptic.P256()
		if alg == ECDSAP384 {
			curve = elliptic.P384()
		}
		if u.Object != "" {
			key, err = c.GenerateECDSAKeyPairWithLabel(id, []byte(u.Object), curve)
		} else {
			key, err = c.GenerateECDSAKeyPair(id, curve)
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("kms: generate %s key in token %q: %w", alg, u.Token, err)
	}
	return &pkcs11Signer{key: key, ctx: c}, nil
}

// configure loads the module, finds the token by label and logs in.
func configure(u *PKCS11URI, opts Options) (*crypto11.Context, error) {
	if _, err := os.Stat(u.ModulePath); err != nil {
		return nil, fmt.Errorf("kms: PKCS#11 module-path %s: %w (is the HSM's library installed?)", u.ModulePath, err)
	}
	pin, err := tokenPIN(u, opts)
	if err != nil {
		return nil, err
	}
	c, err := crypto11.Configure(&crypto11.Config{
		Path:       u.ModulePath,
		TokenLabel: u.Token,
		Pin:        pin,
	})
	if err != nil {
		var perr pkcs11.Error
		switch {
		case errors.As(err, &perr) && (perr == pkcs11.CKR_PIN_INCORRECT || perr == pkcs11.CKR_PIN_INVALID || perr == pkcs11.CKR_PIN_LEN_RANGE):
			return nil, errorf(ErrWrongPassphrase, "kms: wrong PIN for PKCS#11 token %q", u.Token)
		case errors.As(err, &perr) && perr == pkcs11.CKR_PIN_LOCKED:
			return nil, fmt.Errorf("kms: the PIN of PKCS#11 token %q is locked: unlock it with the SO PIN", u.Token)
		case strings.Contains(err.Error(), "could not find PKCS#11 token"):
			return nil, errorf(ErrKeyNotFound, "kms: no initialized PKCS#11 token labelled %q in module %s (list them with pkcs11-tool --module %s -L)", u.Token, u.ModulePath, u.ModulePath)
		}
		return nil, fmt.Errorf("kms: PKCS#11 token %q in module %s: %w", u.Token, u.ModulePath, err)
	}
	return c, nil
}

// tokenPIN returns the PIN: pin-value, else pin-source, else the
// passphrase source of opts.
func tokenPIN(u *PKCS11URI, opts Options) (string, error) {
	switch {
	case u.PINValue != "":
		return u.PINValue, nil
	case u.PINSource != "":
		pin, err := PassphraseFromFile(u.PINSource)()
		if err != nil {
			return "", fmt.Errorf("kms: PIN of token %q: %w", u.Token, err)
		}
		return string(pin), nil
	case opts.Passphrase != nil:
		pin, err := opts.Passphrase()
		if err != nil {
			return "", fmt.Errorf("kms: PIN of token %q: %w", u.Token, err)
		}
		return string(pin), nil
	}
	return "", fmt.Errorf("kms: no PIN for PKCS#11 token %q: add pin-source=file:PATH to the URI or give a passphrase source", u.Token)
}
