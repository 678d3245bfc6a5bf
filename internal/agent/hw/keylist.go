package hw

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// KeyLister is a KeyStore that can name every key it holds. The three
// stores (the simulated unit's files, TPMKeyStore, PKCS11KeyStore) are
// KeyListers: a decommissioned unit's wipe lists its keys to destroy each.
type KeyLister interface {
	// ListKeys returns the names of the store's keys, sorted.
	ListKeys(ctx context.Context) ([]string, error)
}

// KeyStoreFiles is a KeyStore that keeps files of its own beside the key
// hardware (TPMKeyStore's name→handle index). A wipe erases them once
// every key is destroyed.
type KeyStoreFiles interface {
	// StoreFiles returns the paths of those files, present or not.
	StoreFiles() []string
}

// OrphanKeys is a KeyStore that can hold keys of its own that no name
// leads to (TPMKeyStore: a key made persistent by a process that died
// before writing the index). A wipe lists them and destroys each.
type OrphanKeys interface {
	// ListOrphans returns the orphaned keys, as names only
	// DestroyOrphan takes (they are no key names).
	ListOrphans(ctx context.Context) ([]string, error)
	// DestroyOrphan destroys one; ErrNotFound when it is gone already.
	DestroyOrphan(ctx context.Context, orphan string) error
}

var (
	_ KeyLister     = (*SimDevice)(nil)
	_ KeyLister     = (*TPMKeyStore)(nil)
	_ KeyLister     = (*PKCS11KeyStore)(nil)
	_ KeyStoreFiles = (*TPMKeyStore)(nil)
)

// ListKeys lists keys/<name>.key (a temporary file of a key being
// created, whose name starts with a dot, is no key).
func (s *SimDevice) ListKeys(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(s.dir, "keys"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hw: list keys: %w", err)
	}
	var names []string
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".key")
		if ok && e.Type().IsRegular() && checkKeyName(name) == nil {
			names = append(names, name)
		}
	}
	return names, nil // ReadDir sorts by file name
}

// ListKeys lists the names in the store's index. A persistent object in
// the store's handle range that the index does not name (another
// program's, such as an endorsement key, or one a crash orphaned) is not
// listed; ListOrphans lists the latter.
func (s *TPMKeyStore) ListKeys(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	idx, err := s.readIndex()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(idx.Keys))
	for name := range idx.Keys {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// StoreFiles returns the index file and its lock file.
func (s *TPMKeyStore) StoreFiles() []string {
	return []string{filepath.Join(s.stateDir, tpmIndexFile), filepath.Join(s.stateDir, "tpm-keys.lock")}
}
