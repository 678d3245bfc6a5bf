package delta_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/delta"
	"cradle/internal/testkit"
)

// pair is a base image and the next release's image.
type pair struct {
	name         string
	base, target []byte
}

// realisticPairs are releases a delta is made for: firmware with a few
// changed regions and an inserted block, at sizes either side of a power
// of two (where the frame window is tightest), and an unchanged rebuild.
func realisticPairs() []pair {
	small := firmware(1, 300_000)
	pow2 := firmware(2, 1<<20)
	under := firmware(3, 1<<20-5000)
	return []pair{
		{"firmware-300k", small, nextRelease(small, 1)},
		{"firmware-1MiB", pow2, nextRelease(pow2, 2)},
		{"firmware-grows-past-1MiB", under, nextRelease(under, 3)},
		{"firmware-shrinks", pow2, pow2[:len(pow2)-70_000]},
		{"identical", small, small},
	}
}

// TestZstdRebuildsOurPatch: `zstd -d --patch-from=BASE PATCH -o NEW` (the
// reference implementation) rebuilds the target byte for byte from the
// patch Make generates.
func TestZstdRebuildsOurPatch(t *testing.T) {
	zstd := testkit.NeedProgram(t, "zstd")
	for _, tc := range realisticPairs() {
		t.Run(tc.name, func(t *testing.T) {
			p, d, err := delta.Make(tc.base, tc.target)
			if err != nil {
				t.Fatal(err)
			}
			if p == nil {
				t.Fatalf("no delta for a realistic pair: %v", d)
			}
			t.Logf("%v", d)
			dir := t.TempDir()
			basePath := writeFile(t, dir, "base.bin", tc.base)
			patchPath := writeFile(t, dir, "patch.zst", p.Data)
			out := filepath.Join(dir, "new.bin")
			testkit.Run(t, zstd, "-q", "-d", "--patch-from="+basePath, patchPath, "-o", out)
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.target) {
				t.Fatalf("zstd rebuilt %d bytes (sha256 %s), want %d bytes (sha256 %s)",
					len(got), delta.Sum(got), len(tc.target), delta.Sum(tc.target))
			}
		})
	}
}

// TestApplyZstdPatch: a patch made by `zstd -19 --patch-from` is applied
// by Apply and ApplyFile, with and without a content size and checksum.
func TestApplyZstdPatch(t *testing.T) {
	zstd := testkit.NeedProgram(t, "zstd")
	flags := map[string][]string{
		"default":         {"-19"},
		"no-checksum":     {"-19", "--no-check"},
		"no-content-size": {"-19", "--no-content-size"},
		"fast":            {"-3"},
		"ultra-long":      {"--ultra", "-22", "--long"},
	}
	pairs := realisticPairs()[:3]
	for name, fl := range flags {
		for _, tc := range pairs {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				basePath := writeFile(t, dir, "base.bin", tc.base)
				targetPath := writeFile(t, dir, "target.bin", tc.target)
				patchPath := filepath.Join(dir, "patch.zst")
				args := append([]string{"-q", "-f"}, fl...)
				testkit.Run(t, zstd, append(args, "--patch-from="+basePath, targetPath, "-o", patchPath)...)
				patch, err := os.ReadFile(patchPath)
				if err != nil {
					t.Fatal(err)
				}
				exp := expect(tc.base, tc.target)
				var out bytes.Buffer
				n, err := delta.Apply(&out, tc.base, bytes.NewReader(patch), exp)
				if err != nil {
					t.Fatal(err)
				}
				if n != int64(len(tc.target)) || !bytes.Equal(out.Bytes(), tc.target) {
					t.Fatalf("Apply rebuilt %d bytes, want the %d-byte target", n, len(tc.target))
				}
				outPath := filepath.Join(dir, "out.bin")
				if err := delta.ApplyFile(outPath, basePath, patchPath, 0o600, exp); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(outPath)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tc.target) {
					t.Fatal("ApplyFile did not rebuild the target")
				}
			})
		}
	}
}

func expect(base, target []byte) delta.Expect {
	return delta.Expect{
		BaseSHA256:   delta.Sum(base),
		TargetSHA256: delta.Sum(target),
		Limit:        int64(len(target)),
		TargetSize:   int64(len(target)),
	}
}

// TestApplyWrongBase: a device whose installed image is not the patch's
// base gets a clear error before anything is decoded, or, when the
// metadata names the wrong base, after decoding on the checksum or the
// target digest; no output file is left.
func TestApplyWrongBase(t *testing.T) {
	zstd := testkit.NeedProgram(t, "zstd")
	base := firmware(10, 200_000)
	other := nextRelease(base, 11) // what the device really runs
	target := nextRelease(base, 12)
	p, _, err := delta.Make(base, target)
	if err != nil || p == nil {
		t.Fatalf("Make: %v %v", p, err)
	}
	dir := t.TempDir()
	noCheck := filepath.Join(dir, "nocheck.zst")
	testkit.Run(t, zstd, "-q", "-19", "--no-check", "--patch-from="+writeFile(t, dir, "b", base),
		writeFile(t, dir, "t", target), "-o", noCheck)
	noCheckPatch, err := os.ReadFile(noCheck)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		installed []byte
		patch     []byte
		exp       delta.Expect
		want      error
		wantText  string
	}{
		{"installed image is another release", other, p.Data, expect(base, target), delta.ErrBaseMismatch, delta.Sum(other).String()},
		{"metadata names the installed image, checksum catches it", other, p.Data, expect(other, target), nil, "corrupt patch"},
		{"metadata names the installed image, no checksum, digest catches it", other, noCheckPatch, expect(other, target), delta.ErrTargetMismatch, "rebuilt image has digest"},
		{"wrong target digest", base, p.Data, expect(base, other), delta.ErrTargetMismatch, delta.Sum(other).String()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := delta.Apply(&out, tc.installed, bytes.NewReader(tc.patch), tc.exp)
			if err == nil {
				t.Fatal("Apply succeeded with the wrong base")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not say %q", err, tc.wantText)
			}
			if tc.want == delta.ErrBaseMismatch && out.Len() != 0 {
				t.Errorf("wrote %d bytes before refusing the base", out.Len())
			}
			d := t.TempDir()
			outPath := filepath.Join(d, "new.bin")
			err = delta.ApplyFile(outPath, writeFile(t, d, "base", tc.installed), writeFile(t, d, "patch", tc.patch), 0o600, tc.exp)
			if err == nil {
				t.Fatal("ApplyFile succeeded with the wrong base")
			}
			assertOnly(t, d, "base", "patch")
		})
	}
}

// TestApplyCorruptPatch: a damaged patch fails with an error, leaves no
// output file and keeps a file already at the output path as it was.
func TestApplyCorruptPatch(t *testing.T) {
	base := firmware(20, 400_000)
	target := nextRelease(base, 21)
	p, _, err := delta.Make(base, target)
	if err != nil || p == nil {
		t.Fatalf("Make: %v %v", p, err)
	}
	good := p.Data
	flip := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x55
		return b
	}
	tests := map[string][]byte{
		"empty":              {},
		"not zstd":           []byte("this is not a zstd frame at all"),
		"truncated header":   good[:5],
		"truncated middle":   good[:len(good)/2],
		"missing checksum":   good[:len(good)-4],
		"flipped in header":  flip(4),
		"flipped in block":   flip(len(good) / 3),
		"flipped checksum":   flip(len(good) - 2),
		"dictionary id":      dictID(good),
		"trailing garbage":   append(bytes.Clone(good), "garbage"...),
		"second frame short": append(bytes.Clone(good), good[:len(good)/2]...),
	}
	for name, patch := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			basePath := writeFile(t, dir, "base", base)
			patchPath := writeFile(t, dir, "patch", patch)
			out := filepath.Join(dir, "new.bin")
			err := delta.ApplyFile(out, basePath, patchPath, 0o600, expect(base, target))
			if err == nil {
				t.Fatal("ApplyFile accepted a corrupt patch")
			}
			t.Logf("%v", err)
			assertOnly(t, dir, "base", "patch")
			// An existing file at the output path is kept.
			writeFile(t, dir, "new.bin", []byte("old"))
			if err := delta.ApplyFile(out, basePath, patchPath, 0o600, expect(base, target)); err == nil {
				t.Fatal("ApplyFile accepted a corrupt patch")
			}
			if b, _ := os.ReadFile(out); string(b) != "old" {
				t.Fatalf("output file changed to %d bytes", len(b))
			}
			assertOnly(t, dir, "base", "new.bin", "patch")
		})
	}
}

// dictID rewrites the first frame's header to name dictionary 7, as a
// `zstd -D dict` frame would, in place of the 0 of --patch-from.
func dictID(good []byte) []byte {
	fhd := good[4]
	if fhd&3 != 0 {
		panic("patch already has a dictionary id")
	}
	b := append([]byte(nil), good[:4]...)
	b = append(b, fhd|1)
	hdr := 1
	if fhd&(1<<5) == 0 { // window descriptor
		b = append(b, good[5])
		hdr++
	}
	b = append(b, 7)
	return append(b, good[4+hdr:]...)
}

// TestApplyLimit: output past the limit is refused, from the frame header
// when it declares its size and while decoding when it does not.
func TestApplyLimit(t *testing.T) {
	zstd := testkit.NeedProgram(t, "zstd")
	base := firmware(30, 100_000)
	target := nextRelease(base, 31)
	p, _, err := delta.Make(base, target)
	if err != nil || p == nil {
		t.Fatalf("Make: %v %v", p, err)
	}
	dir := t.TempDir()
	noSize := filepath.Join(dir, "nosize.zst")
	testkit.Run(t, zstd, "-q", "-19", "--no-content-size", "--patch-from="+writeFile(t, dir, "b", base),
		writeFile(t, dir, "t", target), "-o", noSize)
	noSizePatch, err := os.ReadFile(noSize)
	if err != nil {
		t.Fatal(err)
	}
	limit := int64(len(target) - 1)
	for name, patch := range map[string][]byte{"declared size": p.Data, "no declared size": noSizePatch} {
		t.Run(name, func(t *testing.T) {
			exp := expect(base, target)
			exp.Limit = limit
			w := &countWriter{}
			_, err := delta.Apply(w, base, bytes.NewReader(patch), exp)
			if !errors.Is(err, delta.ErrTooLong) {
				t.Fatalf("error %v, want ErrTooLong", err)
			}
			if w.n > limit {
				t.Fatalf("wrote %d bytes past a limit of %d", w.n, limit)
			}
		})
	}
	t.Run("short of the target size", func(t *testing.T) {
		exp := expect(base, target)
		exp.TargetSize++
		exp.Limit++
		_, err := delta.Apply(&countWriter{}, base, bytes.NewReader(p.Data), exp)
		if !errors.Is(err, delta.ErrTargetMismatch) {
			t.Fatalf("error %v, want ErrTargetMismatch", err)
		}
	})
	t.Run("no limit", func(t *testing.T) {
		exp := expect(base, target)
		exp.Limit = 0
		if _, err := delta.Apply(&countWriter{}, base, bytes.NewReader(p.Data), exp); err == nil {
			t.Fatal("Apply ran without a limit")
		}
	})
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// assertOnly fails unless dir holds exactly the named files.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("directory holds %v, want %v", got, names)
	}
}

// TestMakePolicy: the 70% rule. Unrelated incompressible images get "full
// image only" with the sizes; realistic releases get a delta far below it.
func TestMakePolicy(t *testing.T) {
	fw := firmware(40, 500_000)
	tests := []struct {
		name      string
		base      []byte
		target    []byte
		wantDelta bool
		maxRatio  float64 // for a delta: the largest acceptable patch/image
	}{
		{"unrelated random images", random(1, 500_000), random(2, 500_000), false, 0},
		{"random base, compressible target", random(3, 500_000), bytes.Repeat([]byte("cradle firmware 2.0 padding\x00\x00\x00\x00"), 15_625), true, 0.70},
		{"random target, firmware base", fw, random(4, 500_000), false, 0},
		{"changed regions and an inserted block", fw, nextRelease(fw, 42), true, 0.05},
		{"random image, one region changed", random(5, 500_000), func() []byte {
			b := random(5, 500_000)
			copy(b[1000:], random(6, 5000))
			return b
		}(), true, 0.05},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, d, err := delta.Make(tc.base, tc.target)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v", d)
			if d.UseDelta != tc.wantDelta || (p != nil) != tc.wantDelta {
				t.Fatalf("decision %v (patch %v), want delta %v", d, p != nil, tc.wantDelta)
			}
			if d.ImageSize != int64(len(tc.target)) || d.PatchSize <= 0 {
				t.Fatalf("decision sizes %+v, image is %d bytes", d, len(tc.target))
			}
			if !tc.wantDelta {
				if !strings.HasPrefix(d.String(), "full image only") {
					t.Errorf("decision says %q", d)
				}
				return
			}
			if r := float64(p.PatchSize) / float64(len(tc.target)); r > tc.maxRatio {
				t.Errorf("patch is %.1f%% of the image, want at most %.1f%%", 100*r, 100*tc.maxRatio)
			}
			if p.PatchSize != int64(len(p.Data)) || p.PatchSHA256 != delta.Sum(p.Data) ||
				p.BaseSHA256 != delta.Sum(tc.base) || p.TargetSHA256 != delta.Sum(tc.target) ||
				p.BaseSize != int64(len(tc.base)) || p.TargetSize != int64(len(tc.target)) {
				t.Errorf("patch metadata %+v does not describe its images", p.Delta)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		patch, image int64
		want         bool
	}{
		{70, 100, true},
		{71, 100, false},
		{0, 100, true},
		{700_000, 1_000_000, true},
		{700_001, 1_000_000, false},
		{1, 0, false},
		{-1, 100, false},
	}
	for _, tc := range tests {
		if got := delta.Decide(tc.patch, tc.image); got.UseDelta != tc.want {
			t.Errorf("Decide(%d, %d) = %v, want %v", tc.patch, tc.image, got, tc.want)
		}
	}
}

// TestSelect: only a device reporting the exact base digest gets a delta.
func TestSelect(t *testing.T) {
	a, b, c, target := delta.Sum([]byte("a")), delta.Sum([]byte("b")), delta.Sum([]byte("c")), delta.Sum([]byte("t"))
	deltas := []delta.Delta{
		{BaseSHA256: a, TargetSHA256: target, PatchSize: 1},
		{BaseSHA256: b, TargetSHA256: target, PatchSize: 2},
		{BaseSHA256: c, TargetSHA256: delta.Sum([]byte("other release")), PatchSize: 3},
	}
	tests := []struct {
		name     string
		reported delta.Digest
		want     int64 // patch size of the chosen delta, 0 for the full image
	}{
		{"first base", a, 1},
		{"second base", b, 2},
		{"base of another release's delta", c, 0},
		{"unknown base", delta.Sum([]byte("x")), 0},
		{"no digest reported", delta.Digest{}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := delta.Select(tc.reported, target, deltas)
			if ok != (tc.want != 0) || d.PatchSize != tc.want {
				t.Fatalf("Select = %+v, %v; want patch size %d", d, ok, tc.want)
			}
		})
	}
}

func TestDigestText(t *testing.T) {
	d := delta.Sum([]byte("image"))
	j, err := json.Marshal(delta.Delta{BaseSHA256: d})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(j), `"base_sha256":"`+d.String()+`"`) {
		t.Fatalf("json %s", j)
	}
	var back delta.Delta
	if err := json.Unmarshal(j, &back); err != nil || back.BaseSHA256 != d {
		t.Fatalf("round trip: %v %v", back.BaseSHA256, err)
	}
	for _, bad := range []string{"", "00", strings.Repeat("g", 64), strings.Repeat("0", 65)} {
		if _, err := delta.ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q) succeeded", bad)
		}
	}
}

// TestGenerateTooLarge: images past MaxImagesSize are refused with a
// clear error. The check is on sizes, before any work, and the slices
// share one zeroed allocation the test never touches.
func TestGenerateTooLarge(t *testing.T) {
	big := make([]byte, delta.MaxImagesSize/2+1)
	_, err := delta.Generate(big, big)
	if err == nil || !strings.Contains(err.Error(), "serve the full image") {
		t.Fatalf("error %v", err)
	}
}

// TestGenerateEdges: Generate's patches for empty and tiny images, which
// the size policy never offers, still rebuild the target in zstd and in
// Apply.
func TestGenerateEdges(t *testing.T) {
	zstd := testkit.NeedProgram(t, "zstd")
	fw := firmware(50, 5000)
	tests := []struct {
		name         string
		base, target []byte
	}{
		{"empty base", nil, fw},
		{"empty target", fw, nil},
		{"tiny images", fw[:10], fw[:100]},
		{"one byte", []byte{1}, []byte{2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := delta.Generate(tc.base, tc.target)
			if err != nil {
				t.Fatal(err)
			}
			exp := expect(tc.base, tc.target)
			exp.Limit++
			var out bytes.Buffer
			if _, err := delta.Apply(&out, tc.base, bytes.NewReader(p.Data), exp); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), tc.target) {
				t.Fatalf("Apply rebuilt %d bytes, want %d", out.Len(), len(tc.target))
			}
			dir := t.TempDir()
			basePath := writeFile(t, dir, "base", tc.base)
			outPath := filepath.Join(dir, "new")
			testkit.Run(t, zstd, "-q", "-d", "--patch-from="+basePath, writeFile(t, dir, "patch", p.Data), "-o", outPath)
			got, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.target) {
				t.Fatalf("zstd rebuilt %d bytes, want %d", len(got), len(tc.target))
			}
		})
	}
}
