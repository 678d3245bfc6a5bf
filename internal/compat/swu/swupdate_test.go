package swu_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/compat/swu"
	"cradle/internal/testkit"
)

// runSWUpdate installs image with the real swupdate trusting caFile and
// returns its output. Its exit status is not a verdict (PROTOCOLS.md §8):
// callers judge by the output and by the files it wrote.
func runSWUpdate(t *testing.T, image []byte, caFile string) string {
	t.Helper()
	bin := testkit.NeedProgram(t, "swupdate")
	dir := t.TempDir()
	path := filepath.Join(dir, "update.swu")
	if err := os.WriteFile(path, image, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-v", "-k", caFile, "-H", "cradle-board:1.0", "-i", path)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, _ := cmd.CombinedOutput()
	return string(out)
}

func TestSWUpdateInstallsOurImage(t *testing.T) {
	pki := newPKI(t, "cradle")
	ca, _, _ := pki.writeFiles(t, t.TempDir())
	dest := t.TempDir()
	img := build(t, swu.Spec{Version: "1.2.3", Description: "cradle test", HardwareCompatibility: []string{"1.0"}},
		sources(dest, "app.conf", "hello from cradle\n", "second.bin", strings.Repeat("\x00\x01\xfe", 1000)), pki.Signer)

	out := runSWUpdate(t, img, ca)
	for name, want := range map[string]string{"app.conf": "hello from cradle\n", "second.bin": strings.Repeat("\x00\x01\xfe", 1000)} {
		got, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || string(got) != want {
			t.Fatalf("swupdate did not install %s (%v); output:\n%s", name, err, out)
		}
	}
	if !strings.Contains(out, "SWUPDATE successful") {
		t.Fatalf("swupdate did not report success:\n%s", out)
	}
}

func TestSWUpdateRefusesOtherCA(t *testing.T) {
	trusted := newPKI(t, "trusted")
	other := newPKI(t, "other")
	ca, _, _ := trusted.writeFiles(t, t.TempDir())
	dest := t.TempDir()
	img := build(t, swu.Spec{Version: "1.0", HardwareCompatibility: []string{"1.0"}}, sources(dest, "evil.conf", "x"), other.Signer)

	out := runSWUpdate(t, img, ca)
	if _, err := os.Stat(filepath.Join(dest, "evil.conf")); err == nil {
		t.Fatalf("swupdate installed an image signed by another CA:\n%s", out)
	}
	if strings.Contains(out, "SWUPDATE successful") || !strings.Contains(out, "Authentication of all signatures failed") {
		t.Fatalf("swupdate did not report a failure:\n%s", out)
	}
}
