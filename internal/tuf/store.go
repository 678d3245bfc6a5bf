package tuf

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"cradle/internal/atomicfile"
)

// Store holds the repository's metadata files by name ("root.json",
// "3.root.json", "7.targets.json", "timestamp.json", ...). It is the seam
// behind which the server's database can keep them later.
type Store interface {
	// Get returns the content of the named file, or an error matching
	// fs.ErrNotExist when there is none.
	Get(ctx context.Context, name string) ([]byte, error)
	// Put replaces the named file with data, whole or not at all.
	Put(ctx context.Context, name string, data []byte) error
}

// DirStore is a Store in a directory that can be served as is over HTTP as
// the repository's metadata URL. Files are written atomically.
type DirStore struct {
	Dir string
}

var _ Store = DirStore{}

// Get reads Dir/name.
func (d DirStore) Get(_ context.Context, name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(d.Dir, name))
}

// Put replaces Dir/name (mode 0644: metadata is public), creating Dir if
// needed.
func (d DirStore) Put(_ context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("tuf: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(d.Dir, name), data, 0o644); err != nil {
		return fmt.Errorf("tuf: write %s: %w", name, err)
	}
	return nil
}

// checkName refuses names that are not plain metadata file names.
func checkName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("tuf: bad metadata file name %q", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.') || name[0] == '.' {
			return fmt.Errorf("tuf: bad metadata file name %q", name)
		}
	}
	return nil
}
