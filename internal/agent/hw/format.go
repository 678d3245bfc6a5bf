package hw

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// OTPImageSize is the size in bytes of a simulated OTP image: every field
// of FuseFields in order, each FuseField.Len bytes, no header.
var OTPImageSize = func() int {
	n := 0
	for _, f := range FuseFields {
		n += f.Len()
	}
	return n
}()

// ParseOTP decodes a simulated OTP image. It refuses an image of the wrong
// size or with bits set beyond a field's width (ErrInvalid).
func ParseOTP(img []byte) (FuseValues, error) {
	if len(img) != OTPImageSize {
		return nil, fmt.Errorf("hw: OTP image is %d bytes, want %d: %w", len(img), OTPImageSize, ErrInvalid)
	}
	v := FuseValues{}
	off := 0
	for _, f := range FuseFields {
		b := bytes.Clone(img[off : off+f.Len()])
		if err := CheckFuseValue(f.Name, b); err != nil {
			return nil, fmt.Errorf("hw: OTP image: %w", err)
		}
		v[f.Name] = b
		off += f.Len()
	}
	return v, nil
}

// FormatOTP encodes v as an OTP image; a missing field is all zeros. It
// refuses a value that does not fit its field, or an unknown field.
func FormatOTP(v FuseValues) ([]byte, error) {
	img := make([]byte, 0, OTPImageSize)
	for name := range v {
		if _, ok := fuseField(name); !ok {
			return nil, fmt.Errorf("fuse %s: unknown field: %w", name, ErrInvalid)
		}
	}
	for _, f := range FuseFields {
		b, ok := v[f.Name]
		if !ok {
			b = make([]byte, f.Len())
		}
		if err := CheckFuseValue(f.Name, b); err != nil {
			return nil, err
		}
		img = append(img, b...)
	}
	return img, nil
}

// Boot environment limits.
const (
	maxBootEnvKey   = 64
	maxBootEnvValue = 4096
)

// checkBootEnvKey validates a boot environment key.
func checkBootEnvKey(k string) error {
	if k == "" || len(k) > maxBootEnvKey {
		return fmt.Errorf("bootenv: key %q must be 1 to %d characters: %w", k, maxBootEnvKey, ErrInvalid)
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("bootenv: key %q: only letters, digits and _.- are allowed: %w", k, ErrInvalid)
		}
	}
	return nil
}

// checkBootEnvValue validates a non-empty boot environment value.
func checkBootEnvValue(k, v string) error {
	if len(v) > maxBootEnvValue {
		return fmt.Errorf("bootenv: value of %q is %d bytes, at most %d: %w", k, len(v), maxBootEnvValue, ErrInvalid)
	}
	if strings.ContainsAny(v, "\n\r\x00") {
		return fmt.Errorf("bootenv: value of %q holds a newline or NUL: %w", k, ErrInvalid)
	}
	return nil
}

// ParseBootEnv decodes a boot environment file: one "key=value" line per
// variable, each ended by a newline, keys as BootEnv.Set accepts them and
// unique, values non-empty (the value runs to the end of the line and may
// hold '='). An empty file is an empty environment.
func ParseBootEnv(data []byte) (map[string]string, error) {
	env := map[string]string{}
	if len(data) == 0 {
		return env, nil
	}
	if data[len(data)-1] != '\n' {
		return nil, fmt.Errorf("bootenv: the last line has no newline: %w", ErrInvalid)
	}
	for i, line := range strings.Split(string(data[:len(data)-1]), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("bootenv: line %d has no '=': %w", i+1, ErrInvalid)
		}
		if err := checkBootEnvKey(k); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if v == "" {
			return nil, fmt.Errorf("bootenv: line %d: %q has an empty value: %w", i+1, k, ErrInvalid)
		}
		if err := checkBootEnvValue(k, v); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if _, dup := env[k]; dup {
			return nil, fmt.Errorf("bootenv: line %d: %q set twice: %w", i+1, k, ErrInvalid)
		}
		env[k] = v
	}
	return env, nil
}

// FormatBootEnv encodes env as ParseBootEnv reads it, keys sorted. It
// refuses a bad key or value, and an empty value.
func FormatBootEnv(env map[string]string) ([]byte, error) {
	keys := make([]string, 0, len(env))
	for k, v := range env {
		if err := checkBootEnvKey(k); err != nil {
			return nil, err
		}
		if v == "" {
			return nil, fmt.Errorf("bootenv: %q has an empty value: %w", k, ErrInvalid)
		}
		if err := checkBootEnvValue(k, v); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(env[k])
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}
