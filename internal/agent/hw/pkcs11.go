//go:build cgo

package hw

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"sync"

	"cradle/internal/kms"
)

// PKCS11KeyStore is a KeyStore in a PKCS#11 token: a secure element with a
// PKCS#11 module (an ATECC608 through cryptoauthlib, an SE050, a smart
// card), or SoftHSM2 standing in for one. Key name N is the key pair
// whose objects are labelled N; the keys are made, opened and destroyed
// through kms (Generate, Open, Destroy) and sign inside the token.
// ECDSA P-256 and P-384 are supported; Ed25519 is refused with ErrInvalid
// (kms's PKCS#11 back end has no EdDSA).
//
// Every signer it hands out holds a session to the token until Close, or
// until DestroyKey of its key. It is safe for concurrent use.
type PKCS11KeyStore struct {
	module, token, pinFile string

	mu      sync.Mutex
	signers map[string][]crypto.Signer
}

var _ KeyStore = (*PKCS11KeyStore)(nil)

// NewPKCS11KeyStore returns the key store in the token labelled token of
// the PKCS#11 module (a shared library path). pinSource names where the
// user PIN is: "file:PATH", a file holding it (a trailing newline is
// ignored). The token is not contacted until the first key operation.
func NewPKCS11KeyStore(module, token, pinSource string) (*PKCS11KeyStore, error) {
	pinFile, err := checkPKCS11Args(module, token, pinSource)
	if err != nil {
		return nil, err
	}
	return &PKCS11KeyStore{module: module, token: token, pinFile: pinFile, signers: map[string][]crypto.Signer{}}, nil
}

func (s *PKCS11KeyStore) uri(name string) string {
	u := kms.PKCS11URI{Token: s.token, Object: name, ModulePath: s.module, PINSource: s.pinFile}
	return u.String()
}

// CreateKey generates the key pair in the token, labelled name.
func (s *PKCS11KeyStore) CreateKey(ctx context.Context, name string, alg Algorithm) (crypto.Signer, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	var kalg kms.Algorithm
	switch alg {
	case ECDSAP256, "":
		kalg = kms.ECDSAP256
	case ECDSAP384:
		kalg = kms.ECDSAP384
	case Ed25519:
		return nil, fmt.Errorf("hw: create key %s: ed25519 keys are not supported in a PKCS#11 token: use %s or %s: %w", name, ECDSAP256, ECDSAP384, ErrInvalid)
	default:
		return nil, fmt.Errorf("hw: unknown key algorithm %q: %w", alg, ErrInvalid)
	}
	signer, err := kms.Generate(ctx, s.uri(name), kalg, kms.Options{})
	if err != nil {
		return nil, kmsError("create key", name, err)
	}
	s.keep(name, signer)
	return signer, nil
}

// Key opens the key pair labelled name.
func (s *PKCS11KeyStore) Key(ctx context.Context, name string) (crypto.Signer, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	signer, err := kms.Open(ctx, s.uri(name), kms.Options{})
	if err != nil {
		return nil, kmsError("key", name, err)
	}
	s.keep(name, signer)
	return signer, nil
}

// DestroyKey closes the signers handed out for name, then destroys every
// object in the token labelled name: each key pair under that label (a
// token may hold two, made by a retry or another tool), a private or
// public key left alone by a crash, certificates; and the certificates
// sharing the id of a destroyed key. It wraps ErrNotFound only when the
// token held none of them.
func (s *PKCS11KeyStore) DestroyKey(ctx context.Context, name string) error {
	if err := checkKeyName(name); err != nil {
		return err
	}
	s.mu.Lock()
	held := s.signers[name]
	delete(s.signers, name)
	s.mu.Unlock()
	var errs []error
	for _, sg := range held {
		errs = append(errs, kms.Close(sg))
	}
	n, err := kms.DestroyPKCS11Objects(ctx, s.uri(name), kms.Options{})
	if err != nil {
		return kmsError("destroy key", name, err)
	}
	if n == 0 {
		return &storeError{op: "destroy key", name: name, kind: ErrNotFound,
			err: fmt.Errorf("no object labelled %s in token %q", name, s.token)}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hw: key %s destroyed, but closing its signers failed: %w", name, err)
	}
	return nil
}

// Close closes every signer the store handed out; they fail from then on.
// The store stays usable.
func (s *PKCS11KeyStore) Close() error {
	s.mu.Lock()
	held := s.signers
	s.signers = map[string][]crypto.Signer{}
	s.mu.Unlock()
	var errs []error
	for name, list := range held {
		for _, sg := range list {
			if err := kms.Close(sg); err != nil {
				errs = append(errs, fmt.Errorf("hw: close signer of key %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (s *PKCS11KeyStore) keep(name string, signer crypto.Signer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signers[name] = append(s.signers[name], signer)
}

// kmsError maps a kms error onto the KeyStore errors: ErrKeyExists to
// ErrExists, ErrKeyNotFound to ErrNotFound, keeping kms's message.
func kmsError(op, name string, err error) error {
	switch {
	case errors.Is(err, kms.ErrKeyExists):
		return &storeError{op: op, name: name, err: err, kind: ErrExists}
	case errors.Is(err, kms.ErrKeyNotFound):
		return &storeError{op: op, name: name, err: err, kind: ErrNotFound}
	}
	return fmt.Errorf("hw: %s %s: %w", op, name, err)
}

// ListKeys returns the labels of the keys in the token: key pairs, and
// a private or public key left alone (by a crash while a key was made).
func (s *PKCS11KeyStore) ListKeys(ctx context.Context) ([]string, error) {
	names, err := kms.ListPKCS11KeyLabels(ctx, kms.PKCS11URI{Token: s.token, ModulePath: s.module, PINSource: s.pinFile}, kms.Options{})
	if err != nil {
		return nil, fmt.Errorf("hw: list the keys of token %q: %w", s.token, err)
	}
	return names, nil
}
