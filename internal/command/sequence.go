package command

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"cradle/internal/atomicfile"
)

// SequenceStore persists the highest command sequence a device has
// accepted, its guard against replays. It must survive restarts and
// power loss: once Advance returns nil, Last returns at least n, also
// after a reboot.
type SequenceStore interface {
	// Last returns the last accepted sequence, 0 when none.
	Last() uint64
	// Advance records n as the last accepted sequence. It refuses an n
	// not above Last. On error Last is unchanged.
	Advance(n uint64) error
}

// SequenceFile is a SequenceStore in one file holding the decimal
// sequence and a newline. Advance replaces the file atomically (a
// temporary file in the same directory, synced, renamed over it, then
// the directory synced), so a power cut leaves the old or the new value,
// never a torn one.
type SequenceFile struct {
	path string
	mu   sync.Mutex
	last uint64
}

var _ SequenceStore = (*SequenceFile)(nil)

// OpenSequenceFile reads the store at path; a missing file means no
// command accepted yet (0), and the file is created at the first
// Advance. A file that does not hold a sequence is an error, never read
// as 0: that would let old commands replay.
func OpenSequenceFile(path string) (*SequenceFile, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &SequenceFile{path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("command: open sequence file: %w", err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || s == "" || s[0] == '+' {
		return nil, fmt.Errorf("command: sequence file %s is corrupt (%q); restore it or write the last sequence the server issued to this device", path, truncate(string(data), 40))
	}
	return &SequenceFile{path: path, last: n}, nil
}

// Last implements SequenceStore.
func (f *SequenceFile) Last() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// Advance implements SequenceStore.
func (f *SequenceFile) Advance(n uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkAbove(n, f.last); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(f.path, []byte(strconv.FormatUint(n, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("command: write sequence file: %w", err)
	}
	f.last = n
	return nil
}

// checkAbove refuses a sequence n that does not advance past last.
func checkAbove(n, last uint64) error {
	if n <= last {
		return fmt.Errorf("command: sequence %d is not above the last accepted %d", n, last)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// MemorySequence is a SequenceStore in memory, for simulated devices
// whose replay guard need not outlive the process. Its zero value holds
// 0.
type MemorySequence struct {
	mu   sync.Mutex
	last uint64
}

var _ SequenceStore = (*MemorySequence)(nil)

// Last implements SequenceStore.
func (m *MemorySequence) Last() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

// Advance implements SequenceStore.
func (m *MemorySequence) Advance(n uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := checkAbove(n, m.last); err != nil {
		return err
	}
	m.last = n
	return nil
}
