package swu_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/compat/swu"
)

// TestResign: an image signed by one CA, one never signed and one made by
// cpio (newc and crc) come out signed by another, verifying only with the
// new CA, with sw-description and the payloads unchanged and the input's
// cpio format kept; refusals leave nothing that verifies.
func TestResign(t *testing.T) {
	old := newPKI(t, "old")
	next := newPKI(t, "next")
	spec := swu.Spec{Version: "2.0", HardwareCompatibility: []string{"1.0"}}
	signed := build(t, spec, sources("/d", "a", "alpha", "b", strings.Repeat("β", 999)), old.Signer)
	src := sources("/d", "p", "data")
	src[0].Entry.SHA256 = sha("data")
	unsigned := cpioOf(t, [][2]string{{"sw-description", string(swu.Describe(spec, src))}, {"p", "data"}})
	newc, _ := handMade(t, "newc", false, string(swu.Describe(spec, src)), map[string]string{"p": "data"}, []string{"p"})
	crc, _ := handMade(t, "crc", true, string(swu.Describe(spec, src)), map[string]string{"p": "data"}, []string{"p"})

	for _, tc := range []struct {
		name   string
		in     []byte
		format string
	}{{"signed by another CA", signed, "crc"}, {"unsigned", unsigned, "crc"}, {"cpio newc", newc, "newc"}, {"cpio crc, openssl cms", crc, "crc"}} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := swu.Parse(bytes.NewReader(tc.in), swu.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := swu.Resign(&out, bytes.NewReader(tc.in), next.Signer); err != nil {
				t.Fatalf("Resign: %v", err)
			}
			img, err := swu.Parse(bytes.NewReader(out.Bytes()), swu.Options{Roots: next.Roots})
			if err != nil {
				t.Fatalf("the re-signed image does not verify with the new CA: %v", err)
			}
			if img.Format != tc.format || !img.Signer.Equal(next.Signer.Cert) || !bytes.Equal(img.DescriptionRaw, before.DescriptionRaw) {
				t.Errorf("format %s (want %s), signer %s, description changed %v", img.Format, tc.format, img.Signer.Subject, !bytes.Equal(img.DescriptionRaw, before.DescriptionRaw))
			}
			if len(img.Payloads) != len(before.Payloads) {
				t.Fatalf("payloads %v, were %v", img.Payloads, before.Payloads)
			}
			for i := range img.Payloads {
				if img.Payloads[i] != before.Payloads[i] {
					t.Errorf("payload %d: %+v, was %+v", i, img.Payloads[i], before.Payloads[i])
				}
			}
			if _, err := swu.Parse(bytes.NewReader(out.Bytes()), swu.Options{Roots: old.Roots}); err == nil {
				t.Error("the re-signed image still verifies with the old CA")
			}
			if out.Len()%512 != 0 {
				t.Errorf("output of %d bytes is not padded to 512", out.Len())
			}
		})
	}

	noEmail := newPKI(t, "codesign only", x509.ExtKeyUsageCodeSigning)
	damaged := bytes.Clone(signed)
	damaged[len(damaged)-600] ^= 1 // inside the last payload: its crc fails
	for _, tc := range []struct {
		name   string
		in     []byte
		signer swu.Signer
		want   string
	}{
		{"empty", nil, next.Signer, "empty"},
		{"not cpio", []byte(strings.Repeat("x", 200)), next.Signer, "bad cpio magic"},
		{"payload first", cpioOf(t, [][2]string{{"p", "data"}}), next.Signer, "sw-description must come first"},
		{"bad description", cpioOf(t, [][2]string{{"sw-description", "software = { version = 1"}}), next.Signer, "sw-description"},
		{"crc mismatch", damaged, next.Signer, "crc check"},
		{"truncated", signed[:len(signed)/2], next.Signer, "truncated"},
		{"description twice", cpioOf(t, [][2]string{{"sw-description", string(swu.Describe(spec, src))}, {"p", "data"}, {"sw-description", "x"}}), next.Signer, "appears again"},
		{"signer without emailProtection", signed, noEmail.Signer, "emailProtection"},
		{"no certificate", signed, swu.Signer{Key: next.Signer.Key}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := swu.Resign(&bytes.Buffer{}, bytes.NewReader(tc.in), tc.signer)
			var ce *cradle.Error
			if err == nil || !errors.As(err, &ce) || ce.Code != cradle.EINVALID || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Resign: %v, want EINVALID with %q", err, tc.want)
			}
		})
	}
}

// FuzzResign feeds arbitrary archives to Resign: no panics, only cradle
// errors for bad input, and whatever Parse accepts Resign re-signs into an
// image that verifies with the new CA and holds the same payloads.
func FuzzResign(f *testing.F) {
	pki := newPKI(f, "fuzz")
	spec := swu.Spec{Version: "1.0", HardwareCompatibility: []string{"1.0"}}
	img := build(f, spec, sources("/d", "a", "alpha", "b", ""), pki.Signer)
	f.Add(img)
	f.Add(img[:len(img)/3])
	src := sources("/d", "p", "data")
	src[0].Entry.SHA256 = sha("data")
	f.Add(cpioOf(f, [][2]string{{"sw-description", string(swu.Describe(spec, src))}, {"p", "data"}}))
	f.Add(cpioOf(f, [][2]string{{"sw-description", string(swu.Describe(spec, src))}, {"sw-description.sig", "junk"}, {"p", "data"}}))
	f.Add([]byte("070702"))
	f.Fuzz(func(t *testing.T, b []byte) {
		before, perr := swu.Parse(bytes.NewReader(b), swu.Options{})
		var out bytes.Buffer
		err := swu.Resign(&out, bytes.NewReader(b), pki.Signer)
		if err != nil {
			var ce *cradle.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Resign returned a non-cradle error: %v", err)
			}
			if perr == nil {
				t.Fatalf("Parse accepts the image, Resign refuses it: %v", err)
			}
			return
		}
		if perr != nil {
			return // Resign does not check payload digests; Parse on its output does
		}
		after, err := swu.Parse(bytes.NewReader(out.Bytes()), swu.Options{Roots: pki.Roots})
		if err != nil {
			t.Fatalf("the re-signed image does not parse: %v", err)
		}
		if len(after.Payloads) != len(before.Payloads) || !bytes.Equal(after.DescriptionRaw, before.DescriptionRaw) {
			t.Fatalf("re-signing changed the image: %+v, was %+v", after.Payloads, before.Payloads)
		}
	})
}
