package hw

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"cradle/internal/atomicfile"
)

// tpmIndexFile is the name→handle index of a TPMKeyStore, in its state
// directory:
//
//	{"version":1,"keys":{"idevid":{"handle":2164326400,"name":"000b…"}}}
//
// name is the hex of the object's TPM Name (the hash of its public area)
// at creation.
const tpmIndexFile = "tpm-keys.json"

// maxTPMIndexSize bounds the index file: 256 entries fit in 64 KiB.
const maxTPMIndexSize = 1 << 20

type tpmIndex struct {
	Version int                      `json:"version"`
	Keys    map[string]tpmIndexEntry `json:"keys"`
}

type tpmIndexEntry struct {
	Handle uint32 `json:"handle"`
	Name   string `json:"name"`
}

// parseTPMIndex decodes and checks an index file: version 1, valid key
// names, handles in the store's range and each used once, Names in hex.
func parseTPMIndex(data []byte) (*tpmIndex, error) {
	if len(data) > maxTPMIndexSize {
		return nil, fmt.Errorf("is %d bytes, more than %d", len(data), maxTPMIndexSize)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var idx tpmIndex
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("is not a key index: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("has data after the index")
	}
	if idx.Version != 1 {
		return nil, fmt.Errorf("has version %d; this agent reads version 1", idx.Version)
	}
	if idx.Keys == nil {
		idx.Keys = map[string]tpmIndexEntry{}
	}
	seen := map[uint32]string{}
	for name, e := range idx.Keys {
		if err := checkKeyName(name); err != nil {
			return nil, err
		}
		if e.Handle < TPMHandleFirst || e.Handle > TPMHandleLast {
			return nil, fmt.Errorf("key %s: handle %#x is outside %#x..%#x", name, e.Handle, TPMHandleFirst, TPMHandleLast)
		}
		if other, ok := seen[e.Handle]; ok {
			return nil, fmt.Errorf("keys %s and %s share handle %#x", min(name, other), max(name, other), e.Handle)
		}
		seen[e.Handle] = name
		if b, err := hex.DecodeString(e.Name); err != nil || len(b) < 4 || len(b) > 2+64 {
			return nil, fmt.Errorf("key %s: TPM Name %q is not the hex of a Name", name, e.Name)
		}
	}
	return &idx, nil
}

// readIndex reads the index; a missing file is an empty index.
func (s *TPMKeyStore) readIndex() (*tpmIndex, error) {
	path := filepath.Join(s.stateDir, tpmIndexFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return &tpmIndex{Version: 1, Keys: map[string]tpmIndexEntry{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hw: TPM key index: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTPMIndexSize+1))
	if err != nil {
		return nil, fmt.Errorf("hw: TPM key index %s: %w", path, err)
	}
	idx, err := parseTPMIndex(data)
	if err != nil {
		return nil, fmt.Errorf("hw: TPM key index %s %v: restore it from a backup, or remove it and recreate the keys: %w", path, err, ErrInvalid)
	}
	return idx, nil
}

// writeIndex replaces the index atomically: temporary file, fsync,
// rename, fsync of the directory.
func (s *TPMKeyStore) writeIndex(idx *tpmIndex) (err error) {
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("hw: TPM key index: %w", err)
	}
	data = append(data, '\n')
	if err := os.MkdirAll(s.stateDir, 0o700); err != nil {
		return fmt.Errorf("hw: TPM key index: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(s.stateDir, tpmIndexFile), data, 0o600); err != nil {
		return fmt.Errorf("hw: write TPM key index: %w", err)
	}
	return nil
}
