package hw

import (
	"context"
	"fmt"
	"io"
	"os"
)

// SlotReaderAt is implemented by Slots whose images can be read at any
// offset, as memory-mapped flash, a block device or SimDevice's files can,
// so that an image is verified where it lies instead of being read into
// memory (the updater's check of the inactive slot, the bootloader
// simulator's secure boot).
type SlotReaderAt interface {
	// OpenAt returns the image in slot for reads at any offset, and its
	// size in bytes (zero for an erased slot), or an error wrapping
	// ErrNotFound if nothing was ever written there. The caller closes it.
	OpenAt(ctx context.Context, slot Slot) (ReadAtCloser, int64, error)
}

// ReadAtCloser is an open slot image read at offsets.
type ReadAtCloser interface {
	io.ReaderAt
	io.Closer
}

var _ SlotReaderAt = (*SimDevice)(nil)

// OpenAt opens the slot file (see Open) and returns its size.
func (s *SimDevice) OpenAt(ctx context.Context, slot Slot) (ReadAtCloser, int64, error) {
	rc, err := s.Open(ctx, slot)
	if err != nil {
		return nil, 0, err
	}
	f := rc.(*os.File) // Open opens the slot's file
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("hw: slot %s: %w", slot, err)
	}
	return f, st.Size(), nil
}
