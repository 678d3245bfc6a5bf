//go:build !linux

package kms

import "os"

// disableEcho cannot tell a terminal on this system: the line is read as
// typed, with echo. Use PassphraseFromEnv or PassphraseFromFile here.
func disableEcho(f *os.File) (restore func() error, isTerminal bool, err error) {
	return nil, false, nil
}
