package menderartifact_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/compat/menderartifact"
)

// TestResign: unsigned artifacts and ones signed by another key, in every
// compression and by Write and by Debian's mender-artifact, come out
// signed by the new key only, with the same manifest, header and payloads;
// mender-artifact validate agrees (tool_test.go checks the tool's view).
func TestResign(t *testing.T) {
	oldKey, newKey := ecKey(t), ecKey(t)
	files := map[string][]byte{"app.conf": []byte("answer=42\n")}
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
		comp   string
		by     crypto.Signer
	}{
		{"unsigned gzip to ECDSA", nil, "gzip", newKey},
		{"ECDSA xz to ECDSA", oldKey, "xz", newKey},
		{"RSA none to ECDSA", rsaKey(t), "none", newKey},
		{"ECDSA gzip to RSA", oldKey, "gzip", rsaKey(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := build(t, menderartifact.Spec{Name: "rel-1", DeviceTypes: []string{"board"}, PayloadType: "single-file", Compression: tc.comp}, files, tc.signer)
			var out bytes.Buffer
			if err := menderartifact.Resign(&out, bytes.NewReader(in), tc.by); err != nil {
				t.Fatalf("Resign: %v", err)
			}
			a, err := menderartifact.Parse(bytes.NewReader(out.Bytes()), menderartifact.Options{Keys: []crypto.PublicKey{tc.by.Public()}})
			if err != nil {
				t.Fatalf("the re-signed artifact does not verify: %v", err)
			}
			if a.Name != "rel-1" || a.Compression != tc.comp || len(a.Payloads) != 1 || len(a.Payloads[0].Files) != 1 {
				t.Errorf("parsed %+v", a)
			}
			if _, err := menderartifact.Parse(bytes.NewReader(out.Bytes()), menderartifact.Options{Keys: []crypto.PublicKey{oldKey.Public()}}); err == nil {
				t.Error("the re-signed artifact verifies with the old key")
			}
			got, was := entries(t, out.Bytes()), entries(t, in)
			var names []string
			for _, e := range got {
				names = append(names, e.name)
			}
			want := "version manifest manifest.sig header.tar" + map[string]string{"gzip": ".gz", "xz": ".xz", "none": ""}[tc.comp] +
				" data/0000.tar" + map[string]string{"gzip": ".gz", "xz": ".xz", "none": ""}[tc.comp]
			if strings.Join(names, " ") != want {
				t.Fatalf("entries %v, want %s", names, want)
			}
			// Everything but the signature is as it was.
			keep := func(es []entry) (out []entry) {
				for _, e := range es {
					if e.name != "manifest.sig" {
						out = append(out, e)
					}
				}
				return out
			}
			g, w := keep(got), keep(was)
			for i := range w {
				if g[i].name != w[i].name || !bytes.Equal(g[i].data, w[i].data) {
					t.Errorf("entry %s changed", w[i].name)
				}
			}
		})
	}

	key := ecKey(t)
	good := build(t, menderartifact.Spec{Name: "rel-1", DeviceTypes: []string{"board"}, PayloadType: "single-file"}, files, nil)
	es := entries(t, good)
	for _, tc := range []struct {
		name   string
		in     []byte
		signer crypto.Signer
		want   string
	}{
		{"empty", nil, key, "the first entry must be version"},
		{"not tar", []byte(strings.Repeat("x", 1024)), key, "version"},
		{"manifest first", tarOf(t, es[1], es[0]), key, "the first entry must be version"},
		{"version 2", tarOf(t, entry{"version", []byte(`{"format":"mender","version":2}`)}, es[1]), key, "only 3"},
		{"no manifest", tarOf(t, es[0], es[2]), key, "manifest must follow version"},
		{"manifest without version", tarOf(t, es[0], entry{"manifest", []byte(strings.Repeat("0", 64) + "  header.tar.gz\n")}, es[2]), key, "no checksum for version"},
		{"version digest wrong", tarOf(t, entry{"version", []byte(`{"format": "mender","version":3}`)}, es[1], es[2]), key, "checksum mismatch for version"},
		{"nothing after the manifest", tarOf(t, es[0], es[1]), key, "header and payloads are missing"},
		{"manifest twice", tarOf(t, es[0], es[1], es[2], es[1]), key, "manifest appears twice"},
		{"truncated", good[:len(good)-1500], key, "data/0000.tar.gz"},
		{"Ed25519 key", good, edSigner(t), "not supported"},
		{"P-384 key", good, p384(t), "only P-256"},
		{"no key", good, nil, "no signing key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := menderartifact.Resign(&bytes.Buffer{}, bytes.NewReader(tc.in), tc.signer)
			var ce *cradle.Error
			if err == nil || !errors.As(err, &ce) || ce.Code != cradle.EINVALID || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Resign: %v, want EINVALID with %q", err, tc.want)
			}
		})
	}
}

func p384(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P384(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzResign feeds arbitrary bytes to Resign: no panics, only cradle
// errors, and every artifact Parse accepts is re-signed into one that
// verifies with the new key and declares the same.
func FuzzResign(f *testing.F) {
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{9}, 32))
	if err != nil {
		f.Fatal(err)
	}
	for _, signer := range []crypto.Signer{key, nil} {
		art := build(f, menderartifact.Spec{Name: "fuzz", DeviceTypes: []string{"board"}, PayloadType: "single-file", Compression: "none"},
			map[string][]byte{"f": []byte("payload")}, signer)
		f.Add(art)
		f.Add(art[:len(art)/2])
		c := bytes.Clone(art)
		c[600] ^= 0x20
		f.Add(c)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		before, perr := menderartifact.Parse(bytes.NewReader(data), menderartifact.Options{MaxHeaderSize: 64 << 10, MaxPayloadSize: 1 << 20})
		var out bytes.Buffer
		err := menderartifact.Resign(&out, bytes.NewReader(data), key)
		if err != nil {
			var ce *cradle.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Resign returned a non-cradle error: %v", err)
			}
			if perr == nil {
				t.Fatalf("Parse accepts the artifact, Resign refuses it: %v", err)
			}
			return
		}
		if perr != nil {
			return // Resign does not check the header and payloads; Parse on its output does
		}
		after, err := menderartifact.Parse(bytes.NewReader(out.Bytes()), menderartifact.Options{Keys: []crypto.PublicKey{key.Public()}, MaxHeaderSize: 64 << 10, MaxPayloadSize: 1 << 20})
		if err != nil {
			t.Fatalf("the re-signed artifact does not parse: %v", err)
		}
		if after.Name != before.Name || len(after.Payloads) != len(before.Payloads) {
			t.Fatalf("re-signing changed the artifact: %+v, was %+v", after, before)
		}
	})
}
