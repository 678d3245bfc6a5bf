package menderartifact_test

import (
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"cradle"
	"cradle/internal/compat/menderartifact"
)

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func find(es []entry, name string) int {
	for i, e := range es {
		if e.name == name {
			return i
		}
	}
	return -1
}

// rehash replaces entry name's content and its manifest line, and drops
// manifest.sig: an artifact whose checksums agree but whose content is
// whatever the test wants.
func rehash(t testing.TB, es []entry, name string, data []byte) []entry {
	t.Helper()
	i := find(es, name)
	old := sha256.Sum256(es[i].data)
	es = append([]entry(nil), es...)
	es[i] = entry{name, data}
	m := find(es, "manifest")
	es[m] = entry{"manifest", bytes.Replace(es[m].data, fmt.Appendf(nil, "%x", old), fmt.Appendf(nil, "%x", sha256.Sum256(data)), 1)}
	if s := find(es, "manifest.sig"); s >= 0 {
		es = append(es[:s], es[s+1:]...)
	}
	return es
}

func without(es []entry, name string) []entry {
	var out []entry
	for _, e := range es {
		if e.name != name {
			out = append(out, e)
		}
	}
	return out
}

func replaced(es []entry, name string, e entry) []entry {
	out := append([]entry(nil), es...)
	out[find(es, name)] = e
	return out
}

// TestRefusals: malformed, tampered and wrongly signed artifacts are
// refused with an error naming what is wrong.
func TestRefusals(t *testing.T) {
	key, other := ecKey(t), rsaKey(t)
	payload := []byte("answer=42\n")
	spec := menderartifact.Spec{Name: "r1", DeviceTypes: []string{"board"}, PayloadType: "single-file"}
	signed := entries(t, build(t, spec, map[string][]byte{"app.conf": payload}, key))
	unsigned := without(signed, "manifest.sig")
	trusted := menderartifact.Options{Keys: []crypto.PublicKey{key.Public()}}

	sig := signed[find(signed, "manifest.sig")].data
	raw, _ := base64.StdEncoding.DecodeString(string(sig))
	raw[10] ^= 1
	badSig := []byte(base64.StdEncoding.EncodeToString(raw))

	tamperedData := gzipped(t, tarOf(t, entry{"app.conf", []byte("answer=43\n")}))
	extraData := gzipped(t, tarOf(t, entry{"app.conf", payload}, entry{"extra", []byte("x")}))
	manifestIdx := find(signed, "manifest")
	tamperedManifest := bytes.Replace(signed[manifestIdx].data, []byte("0"), []byte("1"), 1)

	// A header over the bound only once decompressed: 64 KiB of zeros in header-info.
	bomb := gzipped(t, tarOf(t, entry{"header-info", make([]byte, 64<<10)}))

	// A header over the bound as it is: 8 KiB that do not compress.
	noise := make([]byte, 8<<10)
	if _, err := rand.Read(noise); err != nil {
		t.Fatal(err)
	}
	bigHeader := gzipped(t, tarOf(t, entry{"header-info", noise}))

	version2 := []byte(`{"format":"mender","version":2}`)
	full := retar(t, signed)

	for _, tc := range []struct {
		name string
		art  []byte
		opts menderartifact.Options
		code string
		msg  string
	}{
		{"tampered payload", retar(t, replaced(signed, "data/0000.tar.gz", entry{"data/0000.tar.gz", tamperedData})), trusted, "invalid", "checksum mismatch for data/0000/app.conf"},
		{"tampered payload, unsigned", retar(t, replaced(unsigned, "data/0000.tar.gz", entry{"data/0000.tar.gz", tamperedData})), menderartifact.Options{}, "invalid", "checksum mismatch for data/0000/app.conf"},
		{"file not in manifest", retar(t, replaced(unsigned, "data/0000.tar.gz", entry{"data/0000.tar.gz", extraData})), menderartifact.Options{}, "invalid", "no checksum for data/0000/extra"},
		{"tampered manifest, signed", retar(t, replaced(signed, "manifest", entry{"manifest", tamperedManifest})), trusted, "invalid", "does not verify"},
		{"tampered manifest, unsigned", retar(t, replaced(unsigned, "manifest", entry{"manifest", tamperedManifest})), menderartifact.Options{}, "invalid", "checksum mismatch for"},
		{"bad signature", retar(t, replaced(signed, "manifest.sig", entry{"manifest.sig", badSig})), trusted, "invalid", "does not verify with any of the 1 trusted keys"},
		{"signature not base64", retar(t, replaced(signed, "manifest.sig", entry{"manifest.sig", []byte("%%%")})), trusted, "invalid", "manifest.sig is not base64"},
		{"wrong key", full, menderartifact.Options{Keys: []crypto.PublicKey{other.Public()}}, "invalid", "does not verify"},
		{"unsigned but keys given", retar(t, unsigned), trusted, "invalid", "not signed (no manifest.sig)"},
		{"missing version", retar(t, without(signed, "version")), trusted, "invalid", `the first entry must be version, not "manifest"`},
		{"version 2", retar(t, rehash(t, unsigned, "version", version2)), menderartifact.Options{}, "invalid", "format version 2 is not supported"},
		{"version not json", retar(t, rehash(t, unsigned, "version", []byte("mender 3"))), menderartifact.Options{}, "invalid", "version:"},
		{"manifest before version", retar(t, append([]entry{signed[1], signed[0]}, signed[2:]...)), trusted, "invalid", "the first entry must be version"},
		{"data before header", retar(t, []entry{signed[0], signed[1], signed[2], signed[4], signed[3]}), trusted, "invalid", `header.tar.gz (or .xz, or uncompressed header.tar) must follow the manifest and the optional manifest.sig, found "data/0000.tar.gz"`},
		{"signature after header", retar(t, []entry{signed[0], signed[1], signed[3], signed[2], signed[4]}), trusted, "invalid", "not signed"},
		{"missing data", retar(t, unsigned[:3]), menderartifact.Options{}, "invalid", "data/0000.tar.gz (or .xz, or uncompressed .tar) must come next, found the end of the archive"},
		{"entry after data", retar(t, append(append([]entry(nil), unsigned...), entry{"data/0001.tar.gz", tamperedData})), menderartifact.Options{}, "invalid", `unexpected entry "data/0001.tar.gz" after the last payload`},
		{"zstd header", retar(t, replaced(unsigned, "header.tar.gz", entry{"header.tar.zst", unsigned[2].data})), menderartifact.Options{}, "invalid", "zstd compression is not supported"},
		{"zstd data", retar(t, replaced(unsigned, "data/0000.tar.gz", entry{"data/0000.tar.zst", tamperedData})), menderartifact.Options{}, "invalid", "data/0000.tar.zst: zstd compression is not supported"},
		{"augmented", retar(t, []entry{signed[0], signed[1], signed[2], {"manifest-augment", signed[1].data}, signed[3], signed[4]}), trusted, "invalid", "augmented artifacts (manifest-augment) are not supported"},
		{"oversize header", retar(t, rehash(t, unsigned, "header.tar.gz", bigHeader)), menderartifact.Options{MaxHeaderSize: 4096}, "too_large", "header.tar.gz is 8"},
		{"oversize manifest", full, menderartifact.Options{Keys: trusted.Keys, MaxHeaderSize: 100}, "too_large", "manifest is"},
		{"header bomb", retar(t, rehash(t, unsigned, "header.tar.gz", bomb)), menderartifact.Options{MaxHeaderSize: 32 << 10}, "too_large", "decompresses to more than 32768 bytes"},
		{"oversize payload", full, menderartifact.Options{Keys: trusted.Keys, MaxPayloadSize: 5}, "too_large", "payloads decompress to more than 5 bytes"},
		{"manifest lists a missing file", retar(t, replaced(unsigned, "manifest", entry{"manifest", append(bytes.Clone(unsigned[1].data), fmt.Appendf(nil, "%x  data/0000/gone\n", sha256.Sum256(nil))...)})), menderartifact.Options{}, "invalid", "the manifest lists data/0000/gone, which the artifact does not contain"},
		{"bad manifest line", retar(t, replaced(unsigned, "manifest", entry{"manifest", []byte("abc version\n")})), menderartifact.Options{}, "invalid", "manifest line 1"},
		{"truncated", full[:len(full)/2], trusted, "invalid", ""},
		{"empty", nil, menderartifact.Options{}, "invalid", "the first entry must be version, not the end of the archive"},
		{"not a tar", bytes.Repeat([]byte("x"), 2048), menderartifact.Options{}, "invalid", "reading the entry where version belongs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := menderartifact.Parse(bytes.NewReader(tc.art), tc.opts)
			if a != nil {
				t.Errorf("Parse returned an artifact with its error")
			}
			wantErr(t, err, tc.code, tc.msg)
		})
	}

	// The unchanged artifact passes, so each refusal above is the change's.
	if _, err := menderartifact.Parse(bytes.NewReader(full), trusted); err != nil {
		t.Fatalf("the original artifact: %v", err)
	}
}

// TestParseReaderError: a failing input is the input's error, not a
// malformed artifact.
func TestParseReaderError(t *testing.T) {
	art := build(t, menderartifact.Spec{Name: "r", DeviceTypes: []string{"b"}, PayloadType: "single-file"}, map[string][]byte{"f": []byte("x")}, nil)
	boom := errors.New("disk on fire")
	r := io.MultiReader(bytes.NewReader(art[:1500]), iotest.ErrReader(boom))
	_, err := menderartifact.Parse(r, menderartifact.Options{})
	if !errors.Is(err, boom) || cradle.ErrorCode(err) != cradle.EINTERNAL {
		t.Fatalf("error %v (code %s), want the reader's error", err, cradle.ErrorCode(err))
	}
}

// TestWriteRefusals: a bad spec or source is refused before anything is
// written.
func TestWriteRefusals(t *testing.T) {
	ok := menderartifact.Spec{Name: "n", DeviceTypes: []string{"d"}, PayloadType: "single-file"}
	src := func(name string, size int64, content string) []menderartifact.Source {
		return []menderartifact.Source{{Name: name, Size: size, R: strings.NewReader(content)}}
	}
	for _, tc := range []struct {
		name  string
		spec  func(s *menderartifact.Spec)
		files []menderartifact.Source
		msg   string
	}{
		{"no name", func(s *menderartifact.Spec) { s.Name = "" }, nil, "Name (artifact_name) is required"},
		{"no device type", func(s *menderartifact.Spec) { s.DeviceTypes = nil }, nil, "at least one device type"},
		{"no payload type", func(s *menderartifact.Spec) { s.PayloadType = "" }, nil, "PayloadType is required"},
		{"zstd", func(s *menderartifact.Spec) { s.Compression = "zstd" }, nil, `compression "zstd" is not one of`},
		{"directory in name", func(*menderartifact.Spec) {}, src("a/b", 1, "x"), `"a/b" must be a plain file name`},
		{"twice", func(*menderartifact.Spec) {}, append(src("a", 1, "x"), src("a", 1, "x")...), `"a" is given twice`},
		{"short reader", func(*menderartifact.Spec) {}, src("a", 5, "xy"), "ended after 2 of 5 bytes"},
		{"long reader", func(*menderartifact.Spec) {}, src("a", 1, "xy"), "has more than 1 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := ok
			spec.TempDir = t.TempDir()
			tc.spec(&spec)
			var buf bytes.Buffer
			err := menderartifact.Write(&buf, spec, tc.files, nil)
			wantErr(t, err, "invalid", tc.msg)
			if buf.Len() != 0 {
				t.Errorf("Write wrote %d bytes before refusing", buf.Len())
			}
		})
	}
	var buf bytes.Buffer
	ok.TempDir = t.TempDir()
	err := menderartifact.Write(&buf, ok, nil, edSigner(t))
	wantErr(t, err, "invalid", "signing key: type ed25519.PublicKey is not supported (RSA or ECDSA P-256)")
	if buf.Len() != 0 {
		t.Errorf("Write wrote %d bytes before refusing the key", buf.Len())
	}
}
