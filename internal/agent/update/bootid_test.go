package update_test

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"cradle/internal/agent/update"
)

// TestFileBootID reads a boot id from a fake proc file, sees it change
// with a "reboot", and gives "" (unknown) for a missing or oversized one.
func TestFileBootID(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(p, []byte("0b5c7a2e-5a57-4f6c-9d1e-2f3c4b5a6d7e\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := update.FileBootID(p)
	if got := id(); got != "0b5c7a2e-5a57-4f6c-9d1e-2f3c4b5a6d7e" {
		t.Fatalf("boot id %q", got)
	}
	if err := os.WriteFile(p, []byte("6f1d2c3b-0000-4000-8000-000000000001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := id(); got != "6f1d2c3b-0000-4000-8000-000000000001" {
		t.Fatalf("boot id after a reboot %q", got)
	}
	if got := update.FileBootID(filepath.Join(dir, "missing"))(); got != "" {
		t.Fatalf("missing file: %q, want unknown", got)
	}
	if err := os.WriteFile(p, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := id(); got != "" {
		t.Fatalf("oversized file: %q, want unknown", got)
	}
	if runtime.GOOS == "linux" {
		if got := update.FileBootID("")(); len(got) != 36 {
			t.Fatalf("this machine's boot id %q (from %s) is not a UUID", got, update.BootIDFile)
		}
	}
}
