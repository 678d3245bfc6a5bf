package kms

import (
	"os"
	"syscall"
	"unsafe"
)

// disableEcho turns off echo on f if it is a terminal, and returns a
// function that restores the previous settings. For a non-terminal it
// returns isTerminal false and does nothing.
func disableEcho(f *os.File) (restore func() error, isTerminal bool, err error) {
	fd := f.Fd()
	var old syscall.Termios
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TCGETS, uintptr(unsafe.Pointer(&old))); e != 0 {
		return nil, false, nil // not a terminal
	}
	t := old
	t.Lflag &^= syscall.ECHO
	t.Lflag |= syscall.ICANON
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TCSETS, uintptr(unsafe.Pointer(&t))); e != 0 {
		return nil, true, e
	}
	return func() error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TCSETS, uintptr(unsafe.Pointer(&old))); e != 0 {
			return e
		}
		return nil
	}, true, nil
}
