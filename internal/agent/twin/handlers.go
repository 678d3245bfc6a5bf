package twin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"cradle/internal/atomicfile"
)

// File writes the configuration, or the value of one of its top-level
// keys, as JSON to Path, replacing the file atomically.
type File struct {
	Path string
	Key  string      // "" writes the whole configuration
	Mode os.FileMode // 0 means 0600; use 0644 for a file other users read
}

// Name implements Handler.
func (f *File) Name() string {
	if f.Key != "" {
		return fmt.Sprintf("file %s (key %s)", f.Path, f.Key)
	}
	return "file " + f.Path
}

// Apply implements Handler. A missing key is an error: the file keeps
// what it had.
func (f *File) Apply(_ context.Context, _ int64, cfg map[string]any, canonical []byte) error {
	data := canonical
	if f.Key != "" {
		v, ok := cfg[f.Key]
		if !ok {
			return fmt.Errorf("the configuration has no key %q", f.Key)
		}
		var err error
		if data, err = json.Marshal(v); err != nil {
			return fmt.Errorf("encode key %q: %w", f.Key, err)
		}
	}
	mode := f.Mode
	if mode == 0 {
		mode = 0o600
	}
	if err := atomicfile.WriteFile(f.Path, append(bytes.Clone(data), '\n'), mode); err != nil {
		return err
	}
	return nil
}

// DefaultHookTimeout bounds a hook that sets no timeout.
const DefaultHookTimeout = 30 * time.Second

// stderrTail is how much of a failed hook's stderr its error keeps.
const stderrTail = 512

// Hook runs an executable with the configuration (canonical JSON) on its
// standard input and CRADLE_CONFIG_VERSION set to the version. It fails
// when the program exits non-zero (the error ends with its stderr's last
// 512 bytes) or runs longer than Timeout (it is killed).
type Hook struct {
	Path    string
	Args    []string
	Timeout time.Duration // 0 means DefaultHookTimeout
}

// Name implements Handler.
func (h *Hook) Name() string { return "hook " + h.Path }

// Apply implements Handler.
func (h *Hook) Apply(ctx context.Context, version int64, _ map[string]any, canonical []byte) error {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Path, h.Args...)
	cmd.Stdin = bytes.NewReader(canonical)
	cmd.Env = append(os.Environ(), "CRADLE_CONFIG_VERSION="+strconv.FormatInt(version, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second // a child that keeps stderr open does not hold us
	err := cmd.Run()
	if err == nil {
		return nil
	}
	tail := strings.TrimSpace(lastBytes(stderr.Bytes(), stderrTail))
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %s and was killed%s", timeout, withTail(tail))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("exited with status %d%s", ee.ExitCode(), withTail(tail))
	}
	return err
}

func withTail(tail string) string {
	if tail == "" {
		return ""
	}
	return ": " + tail
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.ToValidUTF8(string(b), "")
}
