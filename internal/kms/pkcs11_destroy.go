//go:build cgo

package kms

import (
	"context"
	"fmt"

	"github.com/ThalesGroup/crypto11"
)

// destroyPKCS11 destroys the one key pair matching u, and the
// certificates with its CKA_ID.
func destroyPKCS11(ctx context.Context, u *PKCS11URI, opts Options) error {
	c, err := configure(u, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	keys, err := c.FindKeyPairs(u.ID, []byte(u.Object))
	if err != nil {
		return fmt.Errorf("kms: find key %s: %w", u, err)
	}
	switch len(keys) {
	case 0:
		return errorf(ErrKeyNotFound, "kms: no key pair matching %s in token %q: nothing to destroy", u, u.Token)
	case 1:
	default:
		return fmt.Errorf("kms: %d key pairs in token %q match %s: add id= to choose the one to destroy", len(keys), u.Token, u)
	}
	attr, err := c.GetAttribute(keys[0], crypto11.CkaId)
	if err != nil {
		return fmt.Errorf("kms: read the id of key %s: %w", u, err)
	}
	var id []byte
	if attr != nil {
		id = attr.Value
	}
	if err := keys[0].Delete(); err != nil {
		return fmt.Errorf("kms: destroy key %s: %w", u, err)
	}
	if len(id) == 0 {
		return nil
	}
	// DeleteCertificate removes one match per call.
	for i := 0; i < 64; i++ {
		cert, err := c.FindCertificate(id, nil, nil)
		if err != nil {
			return fmt.Errorf("kms: key %s destroyed, but looking for its certificates failed: %w", u, err)
		}
		if cert == nil {
			return nil
		}
		if err := c.DeleteCertificate(id, nil, nil); err != nil {
			return fmt.Errorf("kms: key %s destroyed, but destroying its certificate failed: %w", u, err)
		}
	}
	return fmt.Errorf("kms: key %s destroyed, but more than 64 certificates share its id: remove them with pkcs11-tool --delete-object", u)
}
