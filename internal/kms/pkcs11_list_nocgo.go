//go:build !cgo

package kms

import "context"

// ListPKCS11KeyLabels fails without cgo: no PKCS#11 in this build.
func ListPKCS11KeyLabels(ctx context.Context, u PKCS11URI, opts Options) ([]string, error) {
	return nil, ErrNoPKCS11
}

// DestroyPKCS11Objects fails without cgo: no PKCS#11 in this build.
func DestroyPKCS11Objects(ctx context.Context, uri string, opts Options) (int, error) {
	return 0, ErrNoPKCS11
}
