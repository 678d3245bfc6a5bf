package kms_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/kms"
)

func TestPassphraseFromEnv(t *testing.T) {
	t.Setenv("KMS_TEST_PASS", "from env")
	got, err := kms.PassphraseFromEnv("KMS_TEST_PASS")()
	if err != nil || string(got) != "from env" {
		t.Errorf("PassphraseFromEnv = %q, %v", got, err)
	}
	t.Setenv("KMS_TEST_EMPTY", "")
	if _, err := kms.PassphraseFromEnv("KMS_TEST_EMPTY")(); err == nil || !strings.Contains(err.Error(), "KMS_TEST_EMPTY is empty") {
		t.Errorf("empty variable: %v", err)
	}
	if _, err := kms.PassphraseFromEnv("KMS_TEST_NEVER_SET")(); err == nil || !strings.Contains(err.Error(), "KMS_TEST_NEVER_SET is not set") {
		t.Errorf("unset variable: %v", err)
	}
}

func TestPassphraseFromFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		want    string
		wantErr string
	}{
		{"newline", "pass word\n", "pass word", ""},
		{"crlf", "pass word\r\nsecond line\n", "pass word", ""},
		{"no newline", "pass word", "pass word", ""},
		{"empty", "", "", "is empty"},
		{"empty line", "\nx\n", "", "is empty"},
		{"too long", strings.Repeat("x", 5000), "", "longer than 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, dir, strings.ReplaceAll(tt.name, " ", "_"), []byte(tt.content))
			got, err := kms.PassphraseFromFile(p)()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := kms.PassphraseFromFile(filepath.Join(dir, "missing"))(); err == nil {
		t.Errorf("a missing passphrase file gave no error")
	}
}

// TestPassphrasePromptPipe: from a non-terminal the prompt reads one line
// per call, leaving the rest for the next prompt.
func TestPassphrasePromptPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if _, err := w.WriteString("first one\r\nsecond\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var out strings.Builder
	for _, want := range []string{"first one", "second"} {
		got, err := kms.PassphrasePrompt(r, &out, "Passphrase: ")()
		if err != nil || string(got) != want {
			t.Errorf("prompt = %q, %v; want %q", got, err, want)
		}
	}
	if out.String() != "Passphrase: Passphrase: " {
		t.Errorf("prompt output %q", out.String())
	}
	if _, err := kms.PassphrasePrompt(r, &out, "Passphrase: ")(); err == nil || !strings.Contains(err.Error(), "end of input") {
		t.Errorf("prompt at end of input: %v", err)
	}
}
