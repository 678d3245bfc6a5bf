package menderartifact_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/compat/menderartifact"
	"cradle/internal/testkit"
)

// These tests hold Parse and Write to Debian's mender-artifact 3.9, the
// library mender-client 3.4 is built with.

func mender(t *testing.T, args ...string) (string, error) {
	t.Helper()
	tool := testkit.NeedProgram(t, "mender-artifact")
	out, err := exec.Command(tool, args...).CombinedOutput()
	return string(out), err
}

// TestParseToolArtifacts: artifacts the tool wrote, signed and not, of
// both kinds and every compression it offers, parse with what the tool
// put in them, and a signed one is refused under another key.
func TestParseToolArtifacts(t *testing.T) {
	ec, rs := ecKey(t), rsaKey(t)
	ecPriv, _ := writeKeys(t, ec)
	rsPriv, _ := writeKeys(t, rs)
	dir := t.TempDir()
	payload := bytes.Repeat([]byte("rootfs block "), 5000)
	if err := os.WriteFile(filepath.Join(dir, "image.ext4"), payload, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app.conf"), []byte("answer=42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		kind        string // module-image or rootfs-image
		compression string
		key         crypto.Signer
		keyPath     string
	}{
		{"module ECDSA gzip", "module-image", "gzip", ec, ecPriv},
		{"module RSA lzma", "module-image", "lzma", rs, rsPriv},
		{"module unsigned none", "module-image", "none", nil, ""},
		{"rootfs unsigned gzip", "rootfs-image", "gzip", nil, ""},
		{"rootfs ECDSA lzma", "rootfs-image", "lzma", ec, ecPriv},
		{"rootfs RSA none", "rootfs-image", "none", rs, rsPriv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "a.mender")
			args := []string{"write", tc.kind, "-n", "release-7", "-t", "board-a", "-t", "board-b",
				"--compression", tc.compression, "-o", out, "--provides", "app.channel:stable"}
			file, ptype, content := "app.conf", "single-file", []byte("answer=42\n")
			if tc.kind == "module-image" {
				args = append(args, "-T", "single-file", "-f", filepath.Join(dir, "app.conf"), "--depends", "app.min:2")
			} else {
				file, ptype, content = "image.ext4", "rootfs-image", payload
				args = append(args, "-f", filepath.Join(dir, "image.ext4"))
			}
			if tc.key != nil {
				args = append(args, "-k", tc.keyPath)
			}
			if msg, err := mender(t, args...); err != nil {
				t.Fatalf("mender-artifact %s: %v\n%s", strings.Join(args, " "), err, msg)
			}
			art, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			var opts menderartifact.Options
			if tc.key != nil {
				opts.Keys = []crypto.PublicKey{ecKey(t).Public(), tc.key.Public()}
			}
			a, err := menderartifact.Parse(bytes.NewReader(art), opts)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if a.Name != "release-7" || !cmp.Equal(a.DeviceTypes, []string{"board-a", "board-b"}) {
				t.Errorf("name %q, device types %q", a.Name, a.DeviceTypes)
			}
			wantComp := map[string]string{"gzip": "gzip", "lzma": "xz", "none": "none"}[tc.compression]
			if a.Compression != wantComp || a.Signed != (tc.key != nil) {
				t.Errorf("compression %q signed %v, want %q %v", a.Compression, a.Signed, wantComp, tc.key != nil)
			}
			if tc.key != nil && !tc.key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(a.SignedBy) {
				t.Errorf("SignedBy is not the signing key")
			}
			if len(a.Payloads) != 1 {
				t.Fatalf("%d payloads", len(a.Payloads))
			}
			p := a.Payloads[0]
			if p.Type != ptype || p.Provides["app.channel"] != "stable" {
				t.Errorf("payload type %q provides %v", p.Type, p.Provides)
			}
			if tc.kind == "module-image" && !cmp.Equal(p.Depends["app.min"], []string{"2"}) {
				t.Errorf("payload depends %v", p.Depends)
			}
			if len(p.Files) != 1 || p.Files[0].Name != file || p.Files[0].Size != int64(len(content)) || p.Files[0].SHA256 != sha256.Sum256(content) {
				t.Errorf("files %+v", p.Files)
			}

			if tc.key != nil {
				_, err := menderartifact.Parse(bytes.NewReader(art), menderartifact.Options{Keys: []crypto.PublicKey{ecKey(t).Public(), rsaKey(t).Public()}})
				wantErr(t, err, "invalid", "does not verify with any of the 2 trusted keys")
			} else {
				_, err := menderartifact.Parse(bytes.NewReader(art), menderartifact.Options{Keys: []crypto.PublicKey{ec.Public()}})
				wantErr(t, err, "invalid", "not signed")
			}
		})
	}
}

// TestWriteToolValidates: what Write makes, with an RSA or ECDSA key and
// each compression, passes `mender-artifact validate -k`, fails it under
// another key, `mender-artifact read` shows what was written, and Parse
// reads it back.
func TestWriteToolValidates(t *testing.T) {
	ec, rs := ecKey(t), rsaKey(t)
	_, otherPub := writeKeys(t, ecKey(t))
	for _, key := range []struct {
		name string
		key  crypto.Signer
	}{{"ECDSA", ec}, {"RSA", rs}} {
		_, pub := writeKeys(t, key.key)
		for _, comp := range []string{"gzip", "xz", "none"} {
			for _, ptype := range []string{"single-file", "rootfs-image"} {
				t.Run(fmt.Sprintf("%s %s %s", key.name, comp, ptype), func(t *testing.T) {
					files := map[string][]byte{"update.bin": bytes.Repeat([]byte{1, 2, 3, 4, 5}, 20000)}
					if ptype == "single-file" {
						files = map[string][]byte{"app.conf": []byte("answer=42\n"), "dest_dir": []byte("/etc/app"), "filename": []byte("app.conf")}
					}
					spec := menderartifact.Spec{
						Name: "cradle-1.2.3", DeviceTypes: []string{"board-a", "board-b"}, PayloadType: ptype,
						Provides:       map[string]string{"rootfs-image." + ptype + ".version": "cradle-1.2.3"},
						ClearsProvides: []string{"rootfs-image." + ptype + ".*"},
						Depends:        map[string][]string{"app.min": {"2"}},
						Compression:    comp,
					}
					art := build(t, spec, files, key.key)
					path := filepath.Join(t.TempDir(), "a.mender")
					if err := os.WriteFile(path, art, 0o600); err != nil {
						t.Fatal(err)
					}
					if out, err := mender(t, "validate", "-k", pub, path); err != nil {
						t.Fatalf("mender-artifact validate: %v\n%s", err, out)
					}
					if out, err := mender(t, "validate", "-k", otherPub, path); err == nil {
						t.Fatalf("mender-artifact validate accepted the artifact under another key:\n%s", out)
					}
					out, err := mender(t, "read", "-k", pub, path)
					if err != nil {
						t.Fatalf("mender-artifact read: %v\n%s", err, out)
					}
					want := []string{"Name: cradle-1.2.3", "signed and verified correctly", "[board-a board-b]",
						"Type:   " + ptype, "app.min: 2", "rootfs-image." + ptype + ".version: cradle-1.2.3"}
					for name, b := range files {
						want = append(want, "name:     "+name, fmt.Sprintf("size:     %d", len(b)), fmt.Sprintf("checksum: %x", sha256.Sum256(b)))
					}
					for _, w := range want {
						if !strings.Contains(out, w) {
							t.Errorf("mender-artifact read does not show %q:\n%s", w, out)
						}
					}
					a, err := menderartifact.Parse(bytes.NewReader(art), menderartifact.Options{Keys: []crypto.PublicKey{key.key.Public()}})
					if err != nil {
						t.Fatalf("Parse: %v", err)
					}
					if a.Name != spec.Name || len(a.Payloads) != 1 || len(a.Payloads[0].Files) != len(files) {
						t.Errorf("Parse read back %+v", a)
					}
				})
			}
		}
	}
}

// TestWriteUnsignedToolReads: an unsigned artifact is read by the tool and
// refused by `validate -k` (it demands a signature).
func TestWriteUnsignedToolReads(t *testing.T) {
	_, pub := writeKeys(t, ecKey(t))
	art := build(t, menderartifact.Spec{Name: "plain", DeviceTypes: []string{"qemu"}, PayloadType: "rootfs-image"},
		map[string][]byte{"rootfs.ext4": bytes.Repeat([]byte{0}, 4096)}, nil)
	path := filepath.Join(t.TempDir(), "a.mender")
	if err := os.WriteFile(path, art, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := mender(t, "validate", path); err != nil {
		t.Fatalf("mender-artifact validate: %v\n%s", err, out)
	}
	if out, err := mender(t, "validate", "-k", pub, path); err == nil {
		t.Fatalf("validate -k accepted an unsigned artifact:\n%s", out)
	}
	out, err := mender(t, "read", path)
	if err != nil || !strings.Contains(out, "Name: plain") || !strings.Contains(out, "rootfs.ext4") {
		t.Fatalf("mender-artifact read: %v\n%s", err, out)
	}
}

func wantErr(t *testing.T, err error, code, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s error containing %q", code, substr)
	}
	if !strings.Contains(err.Error(), substr) || !strings.Contains(err.Error(), ": "+code+": ") {
		t.Fatalf("error %q, want code %s and %q", err, code, substr)
	}
}
