package kms

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// maxPassphraseLen bounds a passphrase read from a file or a prompt.
const maxPassphraseLen = 4096

// PassphraseFromEnv returns a passphrase source that reads the environment
// variable name when called. An unset or empty variable is an error that
// names it.
func PassphraseFromEnv(name string) func() ([]byte, error) {
	return func() ([]byte, error) {
		v, ok := os.LookupEnv(name)
		if !ok {
			return nil, fmt.Errorf("kms: environment variable %s is not set (it should hold the key passphrase)", name)
		}
		if v == "" {
			return nil, fmt.Errorf("kms: environment variable %s is empty (it should hold the key passphrase)", name)
		}
		return []byte(v), nil
	}
}

// PassphraseFromFile returns a passphrase source that reads the file at
// path when called: its first line, without the line ending. A missing,
// empty or over-long (4 KiB) file is an error that names it.
func PassphraseFromFile(path string) func() ([]byte, error) {
	return func() ([]byte, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("kms: passphrase file: %w", err)
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, maxPassphraseLen+2))
		if err != nil {
			return nil, fmt.Errorf("kms: read passphrase file %s: %w", path, err)
		}
		line, _, _ := bytes.Cut(data, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		clear(data[len(line):])
		if len(line) > maxPassphraseLen {
			return nil, fmt.Errorf("kms: passphrase file %s: the passphrase is longer than %d bytes", path, maxPassphraseLen)
		}
		if len(line) == 0 {
			return nil, fmt.Errorf("kms: passphrase file %s is empty", path)
		}
		return line, nil
	}
}

// PassphrasePrompt returns a passphrase source that writes prompt to out
// and reads one line from in. When in is a terminal (Linux), echo is
// turned off while the line is typed and restored afterwards, and a
// newline is written to out; when in is not a terminal (a pipe, a file),
// the line is read as it comes. The line ending is removed; an empty line
// or end of input is an error. Reads stop at the end of the line, so
// several prompts can share one input.
func PassphrasePrompt(in *os.File, out io.Writer, prompt string) func() ([]byte, error) {
	return func() ([]byte, error) {
		// Echo goes off before the prompt shows, so nothing typed after
		// it is echoed.
		restore, isTerminal, err := disableEcho(in)
		if err != nil {
			return nil, fmt.Errorf("kms: passphrase prompt: turn off echo: %w", err)
		}
		line, err := []byte(nil), error(nil)
		if _, err = io.WriteString(out, prompt); err == nil {
			line, err = readLine(in)
		}
		if isTerminal {
			rerr := restore()
			io.WriteString(out, "\n")
			if err == nil && rerr != nil {
				err = fmt.Errorf("restore echo: %w", rerr)
			}
		}
		if err != nil {
			clear(line)
			return nil, fmt.Errorf("kms: passphrase prompt: %w", err)
		}
		if len(line) == 0 {
			return nil, errors.New("kms: passphrase prompt: empty passphrase")
		}
		return line, nil
	}
}

// readLine reads up to a newline one byte at a time, so nothing after the
// line is consumed.
func readLine(r io.Reader) ([]byte, error) {
	var line []byte
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return bytes.TrimSuffix(line, []byte("\r")), nil
			}
			if len(line) >= maxPassphraseLen {
				return line, fmt.Errorf("passphrase longer than %d bytes", maxPassphraseLen)
			}
			line = append(line, b[0])
			continue
		}
		if err == io.EOF {
			if len(line) == 0 {
				return nil, errors.New("no passphrase given (end of input)")
			}
			return line, nil
		}
		if err != nil {
			return line, err
		}
	}
}
