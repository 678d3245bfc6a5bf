//go:build cgo

package kms

import (
	"context"
	"fmt"
	"slices"

	"github.com/ThalesGroup/crypto11"
)

// ListPKCS11Labels returns the labels of the key pairs in the token that
// u names (its object and id are ignored), sorted, without duplicates.
// A key pair without a label is not listed. A decommissioned device's
// wipe lists them to destroy its keys.
func ListPKCS11Labels(ctx context.Context, u PKCS11URI, opts Options) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if u.Token == "" || u.ModulePath == "" {
		return nil, fmt.Errorf("kms: list keys: give the token and its module-path")
	}
	c, err := configure(&u, opts)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	keys, err := c.FindAllKeyPairs()
	if err != nil {
		return nil, fmt.Errorf("kms: list the keys of token %q: %w", u.Token, err)
	}
	var labels []string
	for _, k := range keys {
		a, err := c.GetAttribute(k, crypto11.CkaLabel)
		if err != nil {
			return nil, fmt.Errorf("kms: read a key's label in token %q: %w", u.Token, err)
		}
		if a != nil && len(a.Value) > 0 {
			labels = append(labels, string(a.Value))
		}
	}
	slices.Sort(labels)
	return slices.Compact(labels), nil
}

// DestroyPKCS11Certificates destroys every certificate in the token
// labelled with uri's object and returns how many it destroyed.
func DestroyPKCS11Certificates(ctx context.Context, uri string, opts Options) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	u, err := ParsePKCS11URI(uri)
	if err != nil {
		return 0, err
	}
	if u.Object == "" {
		return 0, fmt.Errorf("kms: destroy certificates: %s names no label", u)
	}
	c, err := configure(u, opts)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	label := []byte(u.Object)
	// DeleteCertificate removes one match per call.
	for n := 0; n < 64; n++ {
		cert, err := c.FindCertificate(nil, label, nil)
		if err != nil {
			return n, fmt.Errorf("kms: find the certificates labelled %q in token %q: %w", u.Object, u.Token, err)
		}
		if cert == nil {
			return n, nil
		}
		if err := c.DeleteCertificate(nil, label, nil); err != nil {
			return n, fmt.Errorf("kms: destroy a certificate labelled %q in token %q: %w", u.Object, u.Token, err)
		}
	}
	return 64, fmt.Errorf("kms: more than 64 certificates labelled %q in token %q: remove them with pkcs11-tool --delete-object", u.Object, u.Token)
}
