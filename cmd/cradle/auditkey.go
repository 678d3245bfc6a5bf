package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The audit key signs the heads of the audit chains (see package cradle).
// It lives in the data directory as a PKCS#8 PEM file that only its owner
// may read. Losing it does not lose data, but a new key cannot vouch for
// the checkpoints the old one signed, so a corrupt or missing key is never
// replaced silently once a store exists.

const (
	auditKeyFile = "audit-key.pem"
	witnessFile  = "audit-witness.json" // the newest signed heads, outside the store
)

// checkKeyNotLost refuses to go on when the audit key at keyPath is missing
// but the SQLite store at dsn already exists: the key was lost (or the data
// directory only half restored), and a new key would leave every chain the
// old one signed unverifiable. Call it before loadOrCreateAuditKey. Other
// stores are not looked at here: the store itself refuses a key that signed
// none of its log.
func checkKeyNotLost(dataDir, keyPath, dsn string) error {
	if _, err := os.Stat(keyPath); !errors.Is(err, fs.ErrNotExist) {
		return nil // there is a key, or loadAuditKey reports why it cannot be read
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return nil
	}
	db := strings.TrimPrefix(dsn, "sqlite:")
	// In WAL mode a young database may live in its -wal file alone.
	var found string
	for _, p := range []string{db, db + "-wal"} {
		_, err := os.Stat(p)
		if err == nil {
			found = p
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("serve: cannot tell whether the store %s exists: %w", db, err)
		}
	}
	if found == "" {
		return nil
	}
	what := dataDir + " holds a database but"
	if filepath.Clean(filepath.Dir(db)) != filepath.Clean(dataDir) {
		what = fmt.Sprintf("the store %s exists, but the data directory %s", db, dataDir)
	}
	return fmt.Errorf("serve: %s has no audit key (%s): restore the key from your backup; without it the audit log cannot be verified. "+
		"To start a new audit key deliberately, move the database (%s, with its -wal and -shm files) and %s away too",
		what, keyPath, db, filepath.Join(dataDir, witnessFile))
}

// loadOrCreateAuditKey reads the audit key at path, or creates one (0600)
// when there is no file. created reports whether it did.
func loadOrCreateAuditKey(path string) (key ed25519.PrivateKey, created bool, err error) {
	key, err = loadAuditKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	_, key, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("audit key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, fmt.Errorf("audit key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("audit key: %w", err)
	}
	werr := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("audit key: write %s: %w", path, werr)
	}
	return key, true, nil
}

// loadAuditKey reads the audit key at path. It refuses a file that group or
// others may access, and a file that does not hold one PKCS#8 Ed25519 key.
// A missing file is an error that wraps fs.ErrNotExist.
func loadAuditKey(path string) (ed25519.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("audit key: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("audit key: %s has permissions %04o, but only its owner may read it; run: chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	key, err := parseAuditKey(data)
	if err != nil {
		return nil, fmt.Errorf("audit key: %s is corrupt: %v; restore it from a backup (a new key cannot vouch for the audit log signed so far)", path, err)
	}
	return key, nil
}

// parseAuditKey decodes a PEM "PRIVATE KEY" block holding a PKCS#8 Ed25519
// key, with nothing but white space around it.
func parseAuditKey(data []byte) (ed25519.PrivateKey, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("PEM block is %q, want \"PRIVATE KEY\"", block.Type)
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("PEM block has headers (encrypted keys are not supported)")
	}
	for _, b := range rest {
		if b != ' ' && b != '\t' && b != '\r' && b != '\n' {
			return nil, errors.New("unexpected data after the PEM block")
		}
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#8 key: %v", err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the key is a %T, want an Ed25519 key", k)
	}
	return key, nil
}
