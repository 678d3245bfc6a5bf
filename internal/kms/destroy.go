package kms

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Destroy destroys the key named by uri. A file key's file is removed; a
// PKCS#11 key's private and public objects are destroyed in the token,
// with any certificate object sharing their CKA_ID. It returns an error
// wrapping ErrKeyNotFound when there is no such key, and refuses a
// pkcs11: URI that matches more than one key pair (add id= to choose).
// Signers opened earlier on a destroyed PKCS#11 key fail from then on;
// close them with Close. A build without cgo refuses pkcs11: URIs with
// ErrNoPKCS11.
func Destroy(ctx context.Context, uri string, opts Options) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if isPKCS11(uri) {
		u, err := ParsePKCS11URI(uri)
		if err != nil {
			return err
		}
		return destroyPKCS11(ctx, u, opts)
	}
	path, err := filePath(uri)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return errorf(ErrKeyNotFound, "kms: key file %s does not exist", path)
	} else if err != nil {
		return fmt.Errorf("kms: destroy key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("kms: key file %s is not a regular file: not removing it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("kms: destroy key file: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() // make the removal durable where the system allows
		d.Close()
	}
	return nil
}
