// Package atomicfile replaces a file whole or not at all: the new content
// goes to a temporary file in the same directory, which is synced, given
// its mode and renamed over the old one; the directory is then synced so
// that the rename survives a power cut. A reader sees the old content or
// the new, never a mix, and a failure leaves no temporary file behind (a
// crash may: it is named .NAME.tmp-*, next to NAME).
package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, with the given mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return Write(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write replaces path with what write writes, with the given mode. If
// write fails, path is left as it was.
func Write(path string, mode os.FileMode, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	err = f.Chmod(mode)
	if err == nil {
		err = write(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	return err
}

// SyncDir makes a rename or a new name in dir durable. File systems that
// cannot sync a directory are not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}
