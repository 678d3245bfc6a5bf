package kms_test

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"cradle/internal/kms"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlock pty: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("pty number: %v", e)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

func echoOn(t *testing.T, f *os.File) bool {
	t.Helper()
	var tio syscall.Termios
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&tio))); e != 0 {
		t.Fatalf("TCGETS: %v", e)
	}
	return tio.Lflag&syscall.ECHO != 0
}

// promptWriter tells when the prompt has been written.
type promptWriter struct {
	buf     bytes.Buffer // not embedded: its WriteString would bypass Write
	written chan struct{}
}

func (w *promptWriter) String() string { return w.buf.String() }

func (w *promptWriter) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	if bytes.Contains(p, []byte("Passphrase")) {
		close(w.written)
	}
	return n, err
}

// TestPassphrasePromptTerminal: on a terminal the passphrase is not
// echoed, and echo is back on afterwards.
func TestPassphrasePromptTerminal(t *testing.T) {
	master, slave := openPTY(t)
	if !echoOn(t, slave) {
		t.Fatal("a new pty has echo off")
	}
	out := &promptWriter{written: make(chan struct{})}
	type result struct {
		pass []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		p, err := kms.PassphrasePrompt(slave, out, "Passphrase: ")()
		done <- result{p, err}
	}()
	<-out.written
	if _, err := master.WriteString("typed secret\n"); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || string(res.pass) != "typed secret" {
		t.Fatalf("prompt = %q, %v", res.pass, res.err)
	}
	if !echoOn(t, slave) {
		t.Errorf("echo is still off after the prompt")
	}
	if out.String() != "Passphrase: \n" {
		t.Errorf("prompt output %q, want the prompt and a newline", out.String())
	}
	// With echo back on, a marker line is echoed; whatever the terminal
	// echoed before it came from the prompt, and must not be the secret.
	if _, err := master.WriteString("marker\n"); err != nil {
		t.Fatal(err)
	}
	var echoed []byte
	buf := make([]byte, 256)
	for !bytes.Contains(echoed, []byte("marker")) {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("read echo: %v", err)
		}
		echoed = append(echoed, buf[:n]...)
	}
	if bytes.Contains(echoed, []byte("secret")) {
		t.Errorf("the terminal echoed the passphrase: %q", echoed)
	}
}
