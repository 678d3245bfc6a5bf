//go:build !cgo

package kms

import (
	"context"
	"crypto"
)

func openPKCS11(ctx context.Context, u *PKCS11URI, opts Options) (crypto.Signer, error) {
	return nil, ErrNoPKCS11
}

func generatePKCS11(ctx context.Context, u *PKCS11URI, alg Algorithm, opts Options) (crypto.Signer, error) {
	return nil, ErrNoPKCS11
}

func destroyPKCS11(ctx context.Context, u *PKCS11URI, opts Options) error {
	return ErrNoPKCS11
}
