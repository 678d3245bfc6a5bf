package mcuboot_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/mcuboot"
)

// addSeeds adds the seed images of the fuzz targets and returns the keys
// that signed them.
func addSeeds(f *testing.F) []crypto.PublicKey {
	ed := edKey()
	// A fixed ECDSA key, so the seeds are the same on every run.
	ec, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{7}, 32))
	if err != nil {
		f.Fatal(err)
	}
	trusted := []crypto.PublicKey{ed.Public(), ec.Public()}
	for _, key := range []crypto.Signer{ed, ec, nil} {
		for _, opts := range []mcuboot.Options{
			{Version: mcuboot.Version{Major: 1, Minor: 2, Revision: 3, Build: 4}, SecurityCounter: u32(5), HeaderSize: 32},
			{HeaderSize: 64, PadHeader: true},
			{HeaderSize: 32, PadHeader: true, SecurityCounter: u32(1), SlotSize: 2048, Align: 1},
		} {
			opts.Key = key
			in := []byte("firmware body")
			if !opts.PadHeader {
				in = append(make([]byte, opts.HeaderSize), in...)
			}
			img, err := mcuboot.Sign(in, opts)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(img)
			f.Add(img[:len(img)/2])
			f.Add(img[:len(img)-1])
			for _, off := range []int{0, 10, len(img) - 60, len(img) - 2} {
				c := bytes.Clone(img)
				c[off] ^= 0x80
				f.Add(c)
			}
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0x3d, 0xb8, 0xf3, 0x96})
	return trusted
}

// FuzzParse feeds the image parser arbitrary bytes. Seeds: valid images
// signed with each algorithm (plain, with a padded header, padded to a
// slot), truncated ones and ones with corrupted TLVs. Parse and Verify must
// not panic, must fail with one of the package's errors, and what they
// accept must be consistent: its hash is the SHA-256 of what precedes the
// TLV area, and a verified image's key is one of the trusted keys.
func FuzzParse(f *testing.F) {
	trusted := addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := mcuboot.Parse(b)
		if err != nil {
			if !isPackageError(err) {
				t.Fatalf("Parse error of no known kind: %v", err)
			}
		} else {
			if img.Size > len(b) || int(img.Header.HeaderSize)+len(img.Body) > img.Size {
				t.Fatalf("sizes out of range: %+v of %d bytes", img.Header, len(b))
			}
			end := int(img.Header.HeaderSize) + int(img.Header.ImageSize) + int(img.Header.ProtectedTLVSize)
			if img.Hash != sha256.Sum256(b[:end]) {
				t.Fatal("accepted hash is not the hash of header, body and protected area")
			}
		}
		v, err := mcuboot.Verify(b, trusted)
		if err != nil {
			if !isPackageError(err) {
				t.Fatalf("Verify error of no known kind: %v", err)
			}
			return
		}
		found := false
		for _, k := range trusted {
			if k.(interface{ Equal(crypto.PublicKey) bool }).Equal(v.Key) {
				found = true
			}
		}
		if !found {
			t.Fatal("verified by a key that is not trusted")
		}
	})
}

func isPackageError(err error) bool { return mcuboot.IsImageError(err) }

// FuzzVerifyReader checks the streaming forms against the in-memory ones
// on the same bytes (the seeds of FuzzParse): ParseReader and
// VerifyReader, reading a file, accept exactly what Parse and Verify
// accept, with the same image apart from the body, and refuse the rest
// with the same error.
func FuzzVerifyReader(f *testing.F) {
	trusted := addSeeds(f)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := os.CreateTemp(dir, "img")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(file.Name())
		defer file.Close()
		if _, err := file.Write(b); err != nil {
			t.Fatal(err)
		}
		for _, verify := range []bool{false, true} {
			var want, got *mcuboot.Image
			var werr, gerr error
			if verify {
				want, werr = mcuboot.Verify(b, trusted)
				got, gerr = mcuboot.VerifyReader(file, int64(len(b)), trusted)
			} else {
				want, werr = mcuboot.Parse(b)
				got, gerr = mcuboot.ParseReader(file, int64(len(b)))
			}
			if fmtErr(werr) != fmtErr(gerr) {
				t.Fatalf("verify=%v: in memory: %v; streaming: %v", verify, werr, gerr)
			}
			if werr != nil {
				continue
			}
			if got.Body != nil {
				t.Fatal("the streaming form returned a body")
			}
			w := *want
			w.Body = nil
			if diff := cmp.Diff(&w, got); diff != "" {
				t.Fatalf("verify=%v: images differ (-memory +streaming):\n%s", verify, diff)
			}
		}
	})
}
