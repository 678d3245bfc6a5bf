package ota_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/ota"
)

// menderArtifact builds the start of a Mender artifact as mender-artifact
// writes it: an uncompressed tar whose first entry is "version", followed
// by "manifest" and "header.tar.gz" (content not looked at).
func menderArtifact(t testing.TB, version string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range []struct{ name, body string }{
		{"version", version},
		{"manifest", "0123 data/0000.tar.gz\n"},
		{"header.tar.gz", "not looked at"},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return b.Bytes()
}

// cpioEntry writes one entry of a new-ASCII cpio archive (magic 070701 or
// 070702), padded to 4 bytes as cpio -H newc/crc does.
func cpioEntry(b *bytes.Buffer, magic, name string, mode uint32, body []byte) {
	fmt.Fprintf(b, "%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		magic, 1, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name)+1, 0)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(body)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

func swuImage(magic, first string) []byte {
	var b bytes.Buffer
	cpioEntry(&b, magic, first, 0o100644, []byte("software = { version = \"1.0\"; };\n"))
	cpioEntry(&b, magic, "rootfs.ext4.gz", 0o100644, []byte("image"))
	cpioEntry(&b, magic, "TRAILER!!!", 0, nil)
	return b.Bytes()
}

func TestSniff(t *testing.T) {
	mcu := []byte{0x3d, 0xb8, 0xf3, 0x96, 0, 0, 0, 0}
	for _, tt := range []struct {
		name string
		data []byte
		want cradle.ReleaseKind
	}{
		{"mcuboot magic", mcu, cradle.ReleaseMCUboot},
		{"mender v3", menderArtifact(t, `{"format":"mender","version":3}`), cradle.ReleaseMender},
		{"mender v2", menderArtifact(t, `{"format":"mender","version":2}`), cradle.ReleaseFile},
		{"mender other format", menderArtifact(t, `{"format":"tar","version":3}`), cradle.ReleaseFile},
		{"mender not JSON", menderArtifact(t, `format=mender`), cradle.ReleaseFile},
		{"swu newc", swuImage("070701", "sw-description"), cradle.ReleaseSWUpdate},
		{"swu crc", swuImage("070702", "sw-description"), cradle.ReleaseSWUpdate},
		{"cpio with another first entry", swuImage("070702", "sw-descriptio"), cradle.ReleaseFile},
		{"cpio odc", append([]byte("070707"), make([]byte, 200)...), cradle.ReleaseFile},
		{"empty", nil, cradle.ReleaseFile},
		{"text", []byte("hello, world"), cradle.ReleaseFile},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ota.Sniff(tt.data); got != tt.want {
				t.Errorf("Sniff = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestCheckKindSaysWhatIsWrong(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
		kind cradle.ReleaseKind
		want string // "" means accepted
	}{
		{"mender ok", menderArtifact(t, `{"format":"mender","version":3}`), cradle.ReleaseMender, ""},
		{"mender v2", menderArtifact(t, `{"format":"mender","version":2}`), cradle.ReleaseMender, "format version 2 is not supported"},
		{"mender given a swu", swuImage("070701", "sw-description"), cradle.ReleaseMender, "not a tar archive"},
		{"swu ok", swuImage("070702", "sw-description"), cradle.ReleaseSWUpdate, ""},
		{"swu wrong first entry", swuImage("070702", "rootfs.ext4.gzip"), cradle.ReleaseSWUpdate, `not "sw-description"`},
		{"swu given a mender", menderArtifact(t, `{"format":"mender","version":3}`), cradle.ReleaseSWUpdate, "not a cpio archive"},
		{"mcuboot given text", []byte("hello"), cradle.ReleaseMCUboot, "no MCUboot magic"},
		{"file ok", []byte("hello"), cradle.ReleaseFile, ""},
		{"file given a swu", swuImage("070701", "sw-description"), cradle.ReleaseFile, "is a swupdate artifact"},
		{"unknown kind", []byte("hello"), "rpm", `unknown release kind "rpm"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := ota.CheckKind(tt.data, tt.kind)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want EINVALID containing %q", err, tt.want)
			}
		})
	}
}

func FuzzCheckMender(f *testing.F) {
	f.Add(menderArtifact(f, `{"format":"mender","version":3}`))
	f.Add(menderArtifact(f, `{"format":"mender","version":2}`))
	f.Add(menderArtifact(f, `{"format":"mender","version":3}garbage`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ota.CheckMender(data)
		if err == nil && ota.Sniff(data) != cradle.ReleaseMender && ota.CheckMCUbootMagic(data) != nil {
			t.Fatalf("CheckMender accepted what Sniff does not call mender")
		}
	})
}

func FuzzCheckSWUpdate(f *testing.F) {
	f.Add(swuImage("070701", "sw-description"))
	f.Add(swuImage("070702", "sw-description"))
	f.Add(swuImage("070702", "other"))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if ota.CheckSWUpdate(data) == nil && !bytes.Contains(data, []byte("sw-description\x00")) {
			t.Fatalf("CheckSWUpdate accepted an archive without sw-description")
		}
	})
}

func FuzzSniff(f *testing.F) {
	f.Add([]byte{0x3d, 0xb8, 0xf3, 0x96})
	f.Add(menderArtifact(f, `{"format":"mender","version":3}`))
	f.Add(swuImage("070701", "sw-description"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k := ota.Sniff(data)
		if err := ota.CheckKind(data, k); err != nil {
			t.Fatalf("Sniff says %s but CheckKind refuses it: %v", k, err)
		}
	})
}
