package command_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/command"
)

func TestSequenceFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sequence")
	s, err := command.OpenSequenceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Last() != 0 {
		t.Fatalf("new store at %d", s.Last())
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("opening created the file: %v", err)
	}
	for _, n := range []uint64{1, 2, 40, 1<<64 - 1} {
		if err := s.Advance(n); err != nil {
			t.Fatalf("Advance(%d): %v", n, err)
		}
		r, err := command.OpenSequenceFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if r.Last() != n {
			t.Fatalf("after Advance(%d) a reopened store reads %d", n, r.Last())
		}
	}
	if err := s.Advance(1<<64 - 1); err == nil {
		t.Error("Advance to the same sequence succeeded")
	}
	if err := s.Advance(5); err == nil || s.Last() != 1<<64-1 {
		t.Errorf("Advance backwards: %v, last %d", err, s.Last())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries; temporary files left behind?", len(entries))
	}
}

func TestSequenceFileCorrupt(t *testing.T) {
	for name, content := range map[string]string{
		"empty":     "",
		"garbage":   "seven\n",
		"negative":  "-1\n",
		"plus":      "+3\n",
		"overflow":  "18446744073709551616\n",
		"two lines": "3\n4\n",
	} {
		path := filepath.Join(t.TempDir(), "sequence")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := command.OpenSequenceFile(path); err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Errorf("%s: OpenSequenceFile = %v; want a corrupt-file error", name, err)
		}
	}
}

func TestSequenceFileWriteFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "sequence")
	s, err := command.OpenSequenceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Advance(3); err == nil || s.Last() != 0 {
		t.Errorf("Advance into a missing directory: %v, last %d", err, s.Last())
	}
}

func TestMemorySequence(t *testing.T) {
	var m command.MemorySequence
	if err := m.Advance(2); err != nil || m.Last() != 2 {
		t.Fatalf("Advance(2): %v, last %d", err, m.Last())
	}
	if err := m.Advance(2); err == nil || m.Last() != 2 {
		t.Errorf("Advance(2) twice: %v, last %d", err, m.Last())
	}
}
