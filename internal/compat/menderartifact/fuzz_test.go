package menderartifact_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"testing"

	"cradle"
	"cradle/internal/compat/menderartifact"
)

// FuzzParse feeds Parse arbitrary bytes. Seeds: artifacts written with a
// fixed ECDSA key and unsigned, in every compression, truncated and with
// flipped bytes. Parse must not panic, must fail only with a
// *cradle.Error, and what it accepts must be consistent: a name, device
// types, and files whose digests the manifest vouched for.
func FuzzParse(f *testing.F) {
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{7}, 32))
	if err != nil {
		f.Fatal(err)
	}
	for _, signer := range []crypto.Signer{key, nil} {
		for _, comp := range []string{"gzip", "xz", "none"} {
			art := build(f, menderartifact.Spec{
				Name: "fuzz", DeviceTypes: []string{"board"}, PayloadType: "single-file", Compression: comp,
				Provides: map[string]string{"a": "b"}, Depends: map[string][]string{"c": {"d"}},
				MetaData: map[string]any{"k": "v"},
			}, map[string][]byte{"f": []byte("payload"), "g": nil}, signer)
			f.Add(art)
			f.Add(art[:len(art)/2])
			for _, off := range []int{0, 200, 520, 700, 1100, 1600, len(art) - 1500} {
				if off >= 0 && off < len(art) {
					c := bytes.Clone(art)
					c[off] ^= 0x41
					f.Add(c)
				}
			}
		}
	}
	f.Add([]byte{})
	opts := []menderartifact.Options{
		{MaxHeaderSize: 64 << 10, MaxPayloadSize: 1 << 20},
		{Keys: []crypto.PublicKey{key.Public()}, MaxHeaderSize: 64 << 10, MaxPayloadSize: 1 << 20},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, o := range opts {
			a, err := menderartifact.Parse(bytes.NewReader(data), o)
			if err != nil {
				var ce *cradle.Error
				if !errors.As(err, &ce) {
					t.Fatalf("error %v is not a *cradle.Error", err)
				}
				if a != nil {
					t.Fatalf("artifact and error together")
				}
				continue
			}
			if a.Name == "" || len(a.DeviceTypes) == 0 || len(a.Payloads) == 0 {
				t.Fatalf("accepted an artifact without name, device types or payloads: %+v", a)
			}
			if o.Keys != nil && (!a.Signed || a.SignedBy == nil) {
				t.Fatalf("accepted an unsigned artifact with keys set")
			}
			for _, p := range a.Payloads {
				for _, file := range p.Files {
					if file.Size < 0 || file.Name == "" {
						t.Fatalf("bad file %+v", file)
					}
					if file.Size == 0 && file.SHA256 != sha256.Sum256(nil) {
						t.Fatalf("empty file with digest %x", file.SHA256)
					}
				}
			}
		}
	})
}
