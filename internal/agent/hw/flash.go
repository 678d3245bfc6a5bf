package hw

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Erase erases the slot file: afterwards it exists and holds zero bytes.
// A power cut (CutAfter) during the erase leaves the first half of the
// old content.
func (s *SimDevice) Erase(ctx context.Context, slot Slot) error {
	name, err := slotFile(slot)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.slotMu.Lock()
	defer s.slotMu.Unlock()
	path := filepath.Join(s.dir, name)
	cut := s.tickLocked("erase slot " + string(slot))
	size := int64(0)
	if cut != nil {
		if !cutMidway(cut) {
			return cut
		}
		st, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			return cut // nothing there to erase
		}
		if err != nil {
			return fmt.Errorf("hw: erase slot %s: %w", slot, err)
		}
		size = st.Size() / 2
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("hw: erase slot %s: %w", slot, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.dir) // the file may be new
	}
	if err != nil {
		return fmt.Errorf("hw: erase slot %s: %w", slot, err)
	}
	return cut
}

// WriteAt appends p to the slot file, which must hold exactly off bytes
// (ErrInvalid otherwise), and syncs it. A slot never written nor erased
// holds zero bytes, as blank flash. A power cut (CutAfter) during the write
// writes the first len(p)/2 bytes of p and fails.
func (s *SimDevice) WriteAt(ctx context.Context, slot Slot, off int64, p []byte) error {
	name, err := slotFile(slot)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.slotMu.Lock()
	defer s.slotMu.Unlock()
	path := filepath.Join(s.dir, name)
	size, err := s.size(slot, path)
	if err != nil {
		return err
	}
	if off != size {
		return fmt.Errorf("hw: write slot %s at offset %d: the slot holds %d bytes and flash is written in order (erase to start again): %w", slot, off, size, ErrInvalid)
	}
	cut := s.tickLocked(fmt.Sprintf("write slot %s at offset %d", slot, off))
	if cut != nil {
		if !cutMidway(cut) {
			return cut
		}
		p = p[:len(p)/2]
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("hw: write slot %s: %w", slot, err)
	}
	_, err = f.WriteAt(p, off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && off == 0 {
		err = syncDir(s.dir) // the file may be new
	}
	if err != nil {
		// A failed write may have left part of p: the slot holds what it
		// holds, and Size tells the caller where to resume after an Erase.
		return fmt.Errorf("hw: write slot %s at offset %d: %w", slot, off, err)
	}
	return cut
}

// Size returns the length of the slot file; zero when it does not exist.
func (s *SimDevice) Size(ctx context.Context, slot Slot) (int64, error) {
	name, err := slotFile(slot)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return s.size(slot, filepath.Join(s.dir, name))
}

func (s *SimDevice) size(slot Slot, path string) (int64, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("hw: slot %s: %w", slot, err)
	}
	return st.Size(), nil
}

// cutMidway reports whether the power-cut error cut interrupted this very
// operation (which then leaves its partial effect) rather than finding the
// power already off (which leaves nothing).
func cutMidway(cut error) bool {
	var pc *powerCutError
	return errors.As(cut, &pc) && pc.midway
}
