//go:build unix

package hw

import (
	"fmt"
	"os"
	"syscall"
)

// lockFile takes an exclusive flock on path (created if missing) and
// returns the function that releases it. The lock serializes
// read-modify-write operations of processes sharing a device directory.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("hw: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("hw: lock %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
