package swu_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/compat/swu"
	"cradle/internal/testkit"
)

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// handMade builds a .swu the way SWUpdate's documentation does: cpio -H
// format over a file list, sw-description signed by openssl cms.
func handMade(t *testing.T, format string, sign bool, desc string, files map[string]string, order []string) ([]byte, *testPKI) {
	t.Helper()
	cpio := testkit.NeedProgram(t, "cpio")
	openssl := testkit.NeedProgram(t, "openssl")
	dir := t.TempDir()
	pki := newPKI(t, "hand")
	_, cert, key := pki.writeFiles(t, t.TempDir())
	files["sw-description"] = desc
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	list := []string{"sw-description"}
	if sign {
		testkit.Run(t, openssl, "cms", "-sign", "-in", filepath.Join(dir, "sw-description"), "-out", filepath.Join(dir, "sw-description.sig"),
			"-signer", cert, "-inkey", key, "-outform", "DER", "-nosmimecap", "-binary")
		list = append(list, "sw-description.sig")
	}
	list = append(list, order...)
	cmd := exec.Command(cpio, "-o", "-H", format, "--quiet")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(strings.Join(list, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	return out, pki
}

const handDesc = `/* made by hand, as SWUpdate's docs show */
software =
{
	version = "0.1.0";
	description = "Firmware update for XXXXX Project";
	hardware-compatibility: [ "1.0", "1.2", "1.3"];

	images: (
		{
			filename = "rootfs.ext4";
			device = "/dev/mmcblk0p2";
			type = "raw";
			sha256 = "%s";
		}
	);
	files: (
		{
			filename = "README";
			path = "/tmp/README";
			sha256 = "%s"; // checked by Parse
		}
	);
	myboard = {
		stable: {
			scripts: ( { filename = "post.sh"; type = "shellscript"; sha256 = "%s"; } );
		};
	};
}
`

func TestParseHandMade(t *testing.T) {
	rootfs, readme, script := strings.Repeat("R", 5000), "read me\n", "#!/bin/sh\nexit 0\n"
	desc := fmt.Sprintf(handDesc, sha(rootfs), sha(readme), sha(script))
	for _, tc := range []struct {
		format string
		sign   bool
	}{{"crc", true}, {"newc", true}, {"crc", false}, {"newc", false}} {
		t.Run(fmt.Sprintf("%s/signed=%v", tc.format, tc.sign), func(t *testing.T) {
			img, pki := handMade(t, tc.format, tc.sign, desc,
				map[string]string{"rootfs.ext4": rootfs, "README": readme, "post.sh": script}, []string{"rootfs.ext4", "README", "post.sh"})
			opts := swu.Options{}
			if tc.sign {
				opts.Roots = pki.Roots
			}
			var seen []string
			opts.Payload = func(p swu.Payload, r io.Reader) error {
				b, err := io.ReadAll(r)
				seen = append(seen, fmt.Sprintf("%s:%d", p.Name, len(b)))
				return err
			}
			got, err := swu.Parse(bytes.NewReader(img), opts)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got.Format != tc.format {
				t.Errorf("Format = %q, want %q", got.Format, tc.format)
			}
			if tc.sign && (got.Signer == nil || got.Signer.Subject.CommonName != "hand update signer") {
				t.Errorf("Signer = %v", got.Signer)
			}
			d := got.Description
			d.Root = nil
			want := swu.Description{
				Version: "0.1.0", Description: "Firmware update for XXXXX Project",
				HardwareCompatibility: []string{"1.0", "1.2", "1.3"},
				Entries: []swu.Entry{
					{Section: "images", Path: "software.images", Filename: "rootfs.ext4", Type: "raw", Device: "/dev/mmcblk0p2", SHA256: sha(rootfs)},
					{Section: "files", Path: "software.files", Filename: "README", Dest: "/tmp/README", SHA256: sha(readme)},
					{Section: "scripts", Path: "software.myboard.stable.scripts", Filename: "post.sh", Type: "shellscript", SHA256: sha(script)},
				},
			}
			if diff := cmp.Diff(want, d); diff != "" {
				t.Errorf("Description (-want +got):\n%s", diff)
			}
			wantP := []swu.Payload{{"rootfs.ext4", 5000, sha(rootfs)}, {"README", 8, sha(readme)}, {"post.sh", int64(len(script)), sha(script)}}
			if diff := cmp.Diff(wantP, got.Payloads); diff != "" {
				t.Errorf("Payloads (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"rootfs.ext4:5000", "README:8", fmt.Sprintf("post.sh:%d", len(script))}, seen); diff != "" {
				t.Errorf("Payload callback (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	pki := newPKI(t, "rt")
	src := sources("/data", "a.bin", "alpha", "b.bin", "")
	src = append(src, swu.Source{Entry: swu.Entry{Filename: "root.img", Type: "raw", Device: "/dev/mmcblk0p3", Version: "7"}, Data: strings.NewReader("img"), Size: 3})
	img := build(t, swu.Spec{Version: "2.0.0", Description: "quote \" and \\ and\nnewline", HardwareCompatibility: []string{"1.0", "rev\tB"}}, src, pki.Signer)
	got, err := swu.Parse(bytes.NewReader(img), swu.Options{Roots: pki.Roots})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got.Format != "crc" || got.Description.Version != "2.0.0" || got.Description.Description != "quote \" and \\ and\nnewline" {
		t.Errorf("got %+v", got.Description)
	}
	if diff := cmp.Diff([]string{"1.0", "rev\tB"}, got.Description.HardwareCompatibility); diff != "" {
		t.Error(diff)
	}
	if len(got.Payloads) != 3 || got.Payloads[2].SHA256 != sha("img") || got.Description.Entries[0].Device != "/dev/mmcblk0p3" {
		t.Errorf("payloads %+v entries %+v", got.Payloads, got.Description.Entries)
	}
}

func TestWriteRefusesSignerWithoutEmailProtection(t *testing.T) {
	pki := newPKI(t, "cs", x509.ExtKeyUsageCodeSigning)
	err := swu.Write(io.Discard, swu.Spec{Version: "1"}, sources("/x", "a", "b"), pki.Signer)
	if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(err.Error(), "emailProtection") {
		t.Fatalf("Write = %v, want EINVALID about emailProtection", err)
	}
}

// mutate returns a copy of b with old replaced by new once (same length
// keeps the cpio layout valid).
func mutate(t *testing.T, b []byte, old, new string) []byte {
	t.Helper()
	i := bytes.Index(b, []byte(old))
	if i < 0 {
		t.Fatalf("%q not in the image", old)
	}
	out := bytes.Clone(b)
	copy(out[i:], new)
	return out
}

func TestParseRefuses(t *testing.T) {
	pki := newPKI(t, "good")
	other := newPKI(t, "other")
	spec := swu.Spec{Version: "1.0", HardwareCompatibility: []string{"1.0"}}
	good := build(t, spec, sources("/d", "payload.bin", "PAYLOAD-DATA"), pki.Signer)
	otherSigned := build(t, spec, sources("/d", "payload.bin", "PAYLOAD-DATA"), other.Signer)
	if _, err := swu.Parse(bytes.NewReader(good), swu.Options{Roots: pki.Roots}); err != nil {
		t.Fatalf("the good image does not parse: %v", err)
	}
	descOnly := func(desc string) []byte {
		return cpioOf(t, [][2]string{{"sw-description", desc}})
	}
	for _, tc := range []struct {
		name string
		img  []byte
		opts swu.Options
		want string
	}{
		{"empty", nil, swu.Options{}, "empty file"},
		{"not cpio", []byte(strings.Repeat("x", 200)), swu.Options{}, "bad cpio magic"},
		{"tar magic", append([]byte("070707"), good[6:]...), swu.Options{}, "bad cpio magic"},
		{"truncated", good[:len(good)/2], swu.Options{}, "truncated"},
		{"crc mismatch", mutate(t, good, "PAYLOAD-DATA", "PAYLOAD-DATB"), swu.Options{}, "crc check"},
		{"other CA", otherSigned, swu.Options{Roots: pki.Roots}, "not trusted"},
		{"wrong key usage", good, swu.Options{Roots: pki.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}, "not trusted"},
		{"unsigned but roots", descOnlyPayload(t, spec), swu.Options{Roots: pki.Roots}, "not signed"},
		{"tampered description", fixCRC(mutate(t, good, `version = "1.0"`, `version = "1.1"`)), swu.Options{Roots: pki.Roots}, "does not verify"},
		{"description first", swapFirst(t), swu.Options{}, "sw-description must come first"},
		{"no software", descOnly("other = 1;"), swu.Options{}, "no software group"},
		{"syntax", descOnly("software = { version = 1.0.0; }"), swu.Options{}, "line 1"},
		{"missing payload", descOnly(`software = { files = ( { filename = "x"; sha256 = "` + sha("x") + `"; } ); }`), swu.Options{}, "does not hold it"},
		{"no sha256", descOnly(`software = { images = ( { filename = "x"; } ); }`), swu.Options{}, "has no sha256"},
		{"bad sha256", descOnly(`software = { images = ( { filename = "x"; sha256 = "abc"; } ); }`), swu.Options{}, "not 64 hex digits"},
		{"path in filename", descOnly(`software = { images = ( { filename = "../x"; sha256 = "` + sha("x") + `"; } ); }`), swu.Options{}, "plain file name"},
		{"images not a list", descOnly(`software = { images = { filename = "x"; }; }`), swu.Options{}, "want a list"},
		{"include", descOnly(`@include "x"`), swu.Options{}, "@include"},
		{"duplicate", descOnly(`software = { version = "1"; version = "2"; }`), swu.Options{}, "appears twice"},
		{"mixed array", descOnly(`software = { hardware-compatibility = [ "1.0", 2 ]; }`), swu.Options{}, "array mixes"},
		{"unnamed payload", cpioOf(t, [][2]string{{"sw-description", `software = { version = "1"; }`}, {"extra", "x"}}), swu.Options{}, "not named in sw-description"},
		{"digest mismatch", cpioOf(t, [][2]string{{"sw-description", `software = { files = ( { filename = "f"; sha256 = "` + sha("right") + `"; } ); }`}, {"f", "wrong"}}), swu.Options{}, "sw-description says"},
		{"payload twice", cpioOf(t, [][2]string{{"sw-description", `software = { files = ( { filename = "f"; sha256 = "` + sha("a") + `"; } ); }`}, {"f", "a"}, {"f", "a"}}), swu.Options{}, "appears twice"},
		{"garbage after trailer", append(bytes.Clone(good), 'x'), swu.Options{}, "after the cpio trailer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := swu.Parse(bytes.NewReader(tc.img), tc.opts)
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			var ce *cradle.Error
			if !errors.As(err, &ce) || (ce.Code != cradle.EINVALID && ce.Code != cradle.ETOOLARGE) {
				t.Fatalf("Parse = %v, want an EINVALID cradle error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// cpioOf writes members as a crc cpio archive, independently of the
// package's writer.
func cpioOf(t testing.TB, members [][2]string) []byte {
	t.Helper()
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	add := func(name, data string, mode int) {
		var sum uint32
		for i := 0; i < len(data); i++ {
			sum += uint32(data[i])
		}
		fmt.Fprintf(&b, "070702%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x", 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, sum)
		b.WriteString(name + "\x00")
		pad()
		b.WriteString(data)
		pad()
	}
	for _, m := range members {
		add(m[0], m[1], 0o100644)
	}
	add("TRAILER!!!", "", 0)
	return b.Bytes()
}

// fixCRC recomputes the crc check field of every member, so that a test
// can tamper with data and reach the checks behind the crc.
func fixCRC(b []byte) []byte {
	out := bytes.Clone(b)
	off := 0
	for off+110 <= len(out) && string(out[off:off+6]) == "070702" {
		var size, nameLen int
		fmt.Sscanf(string(out[off+54:off+62]), "%x", &size)
		fmt.Sscanf(string(out[off+94:off+102]), "%x", &nameLen)
		data := (off + 110 + nameLen + 3) &^ 3
		var sum uint32
		for _, c := range out[data : data+size] {
			sum += uint32(c)
		}
		copy(out[off+102:off+110], fmt.Sprintf("%08x", sum))
		off = (data + size + 3) &^ 3
	}
	return out
}

// descOnlyPayload is a valid unsigned image with one payload.
func descOnlyPayload(t *testing.T, spec swu.Spec) []byte {
	t.Helper()
	src := sources("/d", "p", "data")
	src[0].Entry.SHA256 = sha("data")
	return cpioOf(t, [][2]string{{"sw-description", string(swu.Describe(spec, src))}, {"p", "data"}})
}

// swapFirst is an archive whose payload comes before sw-description.
func swapFirst(t *testing.T) []byte {
	t.Helper()
	return cpioOf(t, [][2]string{{"p", "data"}, {"sw-description", `software = { version = "1"; }`}})
}
