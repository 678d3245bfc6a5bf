package mcuboot_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/mcuboot"
)

// recorder is an io.ReaderAt over b that remembers the largest single
// read and the bytes read in all, so tests can tell a streaming reader
// from one that takes the image whole.
type recorder struct {
	b       []byte
	mu      sync.Mutex
	largest int
	total   int64
}

func (r *recorder) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.largest = max(r.largest, len(p))
	r.total += int64(len(p))
	r.mu.Unlock()
	return bytes.NewReader(r.b).ReadAt(p, off)
}

// tempFile writes b to a file and opens it, as a slot is opened.
func tempFile(t *testing.T, b []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "slot")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// sameImage fails unless the streaming result equals Verify's apart from
// the body, which the streaming form leaves nil.
func sameImage(t *testing.T, fromBytes, streamed *mcuboot.Image) {
	t.Helper()
	if streamed.Body != nil {
		t.Errorf("VerifyReader returned a body of %d bytes; it must not hold the body", len(streamed.Body))
	}
	want := *fromBytes
	want.Body = nil
	if diff := cmp.Diff(&want, streamed); diff != "" {
		t.Errorf("VerifyReader's image differs from Verify's (-Verify +VerifyReader):\n%s", diff)
	}
}

// TestVerifyReaderRefusals: every refusal of Verify is VerifyReader's too,
// with the same message, whether the image is read from a file or from
// memory, and ParseReader agrees with Parse.
func TestVerifyReaderRefusals(t *testing.T) {
	cases, trusted, _ := refusals(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, want := mcuboot.Verify(tc.img, trusted)
			if !errors.Is(want, tc.want) {
				t.Fatalf("Verify: err = %v, want %v", want, tc.want)
			}
			for name, r := range map[string]io.ReaderAt{"file": tempFile(t, tc.img), "memory": &recorder{b: tc.img}} {
				_, got := mcuboot.VerifyReader(r, int64(len(tc.img)), trusted)
				if fmtErr(got) != want.Error() || !errors.Is(got, tc.want) {
					t.Errorf("VerifyReader from %s: err = %v, want %v", name, got, want)
				}
			}
			_, wantParse := mcuboot.Parse(tc.img)
			_, gotParse := mcuboot.ParseReader(bytes.NewReader(tc.img), int64(len(tc.img)))
			if fmtErr(gotParse) != fmtErr(wantParse) {
				t.Errorf("ParseReader: err = %v, Parse: %v", gotParse, wantParse)
			}
		})
	}
}

// TestVerifyReaderImgtool: the images imgtool signed verify when read
// from a file, with what Verify reads from them.
func TestVerifyReaderImgtool(t *testing.T) {
	pub := func(name string) crypto.PublicKey {
		t.Helper()
		blk, _ := pem.Decode(readFile(t, filepath.Join("testdata", "imgtool", name)))
		if blk == nil {
			t.Fatalf("%s holds no PEM block", name)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ec, ed := pub("imgtool-ecdsa-p256.pub.pem"), pub("imgtool-ed25519.pub.pem")
	for _, c := range []struct {
		file       string
		key, other crypto.PublicKey
	}{
		{"imgtool-ecdsa-p256.img", ec, ed},
		{"imgtool-ecdsa-p256-pad-align4.img", ec, ed},
		{"imgtool-ed25519.img", ed, ec},
		{"imgtool-ed25519-pad-align8.img", ed, ec},
	} {
		t.Run(c.file, func(t *testing.T) {
			b := readFile(t, filepath.Join("testdata", "imgtool", c.file))
			want, err := mcuboot.Verify(b, []crypto.PublicKey{c.key})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			got, err := mcuboot.VerifyReader(tempFile(t, b), int64(len(b)), []crypto.PublicKey{c.key})
			if err != nil {
				t.Fatalf("VerifyReader: %v", err)
			}
			sameImage(t, want, got)
			if got.Header.Version.String() != "2.1.0+9" || got.SecurityCounter != 5 {
				t.Errorf("version %s, counter %d; want 2.1.0+9, 5", got.Header.Version, got.SecurityCounter)
			}
			_, err = mcuboot.VerifyReader(tempFile(t, b), int64(len(b)), []crypto.PublicKey{c.other})
			if !errors.Is(err, mcuboot.ErrUnknownKey) {
				t.Errorf("under the other key: err = %v, want ErrUnknownKey", err)
			}
		})
	}
}

// bigImage signs a body of n bytes with the fixed Ed25519 key, padded to
// a slot n+64 KiB long so the padding is checked too.
func bigImage(t testing.TB, n int) []byte {
	t.Helper()
	body := make([]byte, n)
	for i := range body {
		body[i] = byte(i * 7)
	}
	cnt := uint32(3)
	img, err := mcuboot.Sign(body, mcuboot.Options{Key: edKey(), HeaderSize: 512, PadHeader: true, SecurityCounter: &cnt, SlotSize: n + 64<<10, Align: 8})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestVerifyReaderBounded: a 16 MiB image is verified through reads of at
// most 256 KiB each, every byte read once, and VerifyReader allocates a
// small fraction of the image.
func TestVerifyReaderBounded(t *testing.T) {
	img := bigImage(t, 16<<20)
	trusted := []crypto.PublicKey{edKey().Public()}
	r := &recorder{b: img}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := mcuboot.VerifyReader(r, int64(len(img)), trusted)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if got.SecurityCounter != 3 || got.Size >= len(img) {
		t.Fatalf("parsed %+v", got)
	}
	if r.largest > 256<<10 {
		t.Errorf("the largest read is %d bytes; want at most 256 KiB", r.largest)
	}
	// Every byte once, plus the few re-read small fields (header, magic,
	// the first padding byte).
	if r.total < int64(len(img)) || r.total > int64(len(img))+64 {
		t.Errorf("read %d bytes of a %d-byte image; want each byte about once", r.total, len(img))
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("VerifyReader allocated %d bytes for a %d-byte image; want under 1 MiB", alloc, len(img))
	}
	want, err := mcuboot.Verify(img, trusted)
	if err != nil {
		t.Fatal(err)
	}
	sameImage(t, want, got)
}

// failingReader fails every read after the first n bytes.
type failingReader struct {
	b []byte
	n int64
}

var errDisk = errors.New("disk on fire")

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.n {
		return 0, errDisk
	}
	return copy(p, f.b[off:]), nil
}

// TestVerifyReaderIOErrors: a failing read and an image shorter than the
// size given are I/O errors, returned as such, never a format verdict.
func TestVerifyReaderIOErrors(t *testing.T) {
	img := bigImage(t, 1<<20)
	trusted := []crypto.PublicKey{edKey().Public()}
	for _, n := range []int64{0, 100, 600 << 10, int64(len(img)) - 1} {
		_, err := mcuboot.VerifyReader(failingReader{img, n}, int64(len(img)), trusted)
		if !errors.Is(err, errDisk) || isPackageError(err) {
			t.Errorf("failing after %d bytes: err = %v, want the read error only", n, err)
		}
	}
	_, err := mcuboot.VerifyReader(bytes.NewReader(img[:len(img)-10]), int64(len(img)), trusted)
	if !errors.Is(err, io.ErrUnexpectedEOF) || isPackageError(err) {
		t.Errorf("image shorter than its size: err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkVerifyReader verifies a 64 MiB image from a file, the way the
// agent verifies a slot.
func BenchmarkVerifyReader(b *testing.B) {
	img := bigImage(b, 64<<20)
	p := filepath.Join(b.TempDir(), "slot")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	trusted := []crypto.PublicKey{edKey().Public()}
	b.SetBytes(int64(len(img)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := mcuboot.VerifyReader(f, int64(len(img)), trusted); err != nil {
			b.Fatal(err)
		}
	}
}
