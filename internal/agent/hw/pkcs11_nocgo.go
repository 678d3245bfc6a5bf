//go:build !cgo

package hw

import (
	"context"
	"crypto"
	"fmt"

	"cradle/internal/kms"
)

// PKCS11KeyStore is a KeyStore in a PKCS#11 token. This build has no
// cgo, hence no PKCS#11: NewPKCS11KeyStore refuses
// (after checking its arguments as the cgo build does).
type PKCS11KeyStore struct{}

var _ KeyStore = (*PKCS11KeyStore)(nil)

// NewPKCS11KeyStore returns an error wrapping kms.ErrNoPKCS11: this build
// cannot load a PKCS#11 module. Rebuild with cgo (CGO_ENABLED=1 and a C
// compiler).
func NewPKCS11KeyStore(module, token, pinSource string) (*PKCS11KeyStore, error) {
	if _, err := checkPKCS11Args(module, token, pinSource); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("hw: pkcs11 key store: %w", kms.ErrNoPKCS11)
}

// CreateKey fails: see NewPKCS11KeyStore.
func (s *PKCS11KeyStore) CreateKey(ctx context.Context, name string, alg Algorithm) (crypto.Signer, error) {
	return nil, fmt.Errorf("hw: pkcs11 key store: %w", kms.ErrNoPKCS11)
}

// Key fails: see NewPKCS11KeyStore.
func (s *PKCS11KeyStore) Key(ctx context.Context, name string) (crypto.Signer, error) {
	return nil, fmt.Errorf("hw: pkcs11 key store: %w", kms.ErrNoPKCS11)
}

// DestroyKey fails: see NewPKCS11KeyStore.
func (s *PKCS11KeyStore) DestroyKey(ctx context.Context, name string) error {
	return fmt.Errorf("hw: pkcs11 key store: %w", kms.ErrNoPKCS11)
}

// Close does nothing.
func (s *PKCS11KeyStore) Close() error { return nil }

// ListKeys fails: see NewPKCS11KeyStore.
func (s *PKCS11KeyStore) ListKeys(ctx context.Context) ([]string, error) {
	return nil, fmt.Errorf("hw: pkcs11 key store: %w", kms.ErrNoPKCS11)
}
