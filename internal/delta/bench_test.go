package delta_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"cradle/internal/delta"
	"cradle/internal/testkit"
)

// BenchmarkDelta compares our patches with `zstd -19 --patch-from` and
// bsdiff on the same pairs of images: patch size (metrics ours-B,
// zstd19-B, bsdiff-B next to image-B, all from the same run) and the time
// to make and apply a patch with each tool. The tools' times include
// starting their process and reading their files from a temporary
// directory; ours is in memory.
//
// Pairs: "gobinary", two builds of a small Go HTTP service from sources
// that differ by a version string, one changed handler and one added
// function (statically linked, about 8 MB; code moves, so addresses change
// throughout); "firmware", the synthetic 2 MB firmware image of the tests
// and its next release (a few rewritten regions, an 8 KiB inserted block).
func BenchmarkDelta(b *testing.B) {
	zstd := testkit.NeedProgram(b, "zstd")
	bsdiff := testkit.NeedProgram(b, "bsdiff")
	bspatch := testkit.NeedProgram(b, "bspatch")
	fw := firmware(70, 2<<20)
	pairs := []struct {
		name         string
		base, target func(b *testing.B) []byte
	}{
		{"gobinary", func(b *testing.B) []byte { return goBinaries(b)[0] }, func(b *testing.B) []byte { return goBinaries(b)[1] }},
		{"firmware", func(*testing.B) []byte { return fw }, func(*testing.B) []byte { return nextRelease(fw, 71) }},
	}
	for _, pc := range pairs {
		b.Run(pc.name, func(b *testing.B) {
			base, target := pc.base(b), pc.target(b)
			dir := b.TempDir()
			basePath := writeFile(b, dir, "base", base)
			targetPath := writeFile(b, dir, "target", target)
			ours, err := delta.Generate(base, target)
			if err != nil {
				b.Fatal(err)
			}
			// The figures are only worth comparing if zstd rebuilds the
			// target from our patch.
			oursPath := writeFile(b, dir, "ours.patch", ours.Data)
			rebuilt := filepath.Join(dir, "ours.out")
			run(b, zstd, "-q", "-f", "-d", "--patch-from="+basePath, oursPath, "-o", rebuilt)
			if got, err := os.ReadFile(rebuilt); err != nil || !bytes.Equal(got, target) {
				b.Fatalf("zstd does not rebuild the target from our patch (%v)", err)
			}
			zstdPatch := filepath.Join(dir, "zstd.patch")
			run(b, zstd, "-q", "-f", "-19", "--patch-from="+basePath, targetPath, "-o", zstdPatch)
			bsPatch := filepath.Join(dir, "bs.patch")
			run(b, bsdiff, basePath, targetPath, bsPatch)
			sizes := map[string]float64{
				"image-B":  float64(len(target)),
				"ours-B":   float64(ours.PatchSize),
				"zstd19-B": float64(fileSize(b, zstdPatch)),
				"bsdiff-B": float64(fileSize(b, bsPatch)),
			}
			report := func(b *testing.B) {
				for unit, v := range sizes {
					b.ReportMetric(v, unit)
				}
			}
			b.Run("ours-make", func(b *testing.B) {
				for b.Loop() {
					if _, err := delta.Generate(base, target); err != nil {
						b.Fatal(err)
					}
				}
				report(b)
			})
			b.Run("ours-apply", func(b *testing.B) {
				exp := expect(base, target)
				var out bytes.Buffer
				out.Grow(len(target))
				b.SetBytes(int64(len(target)))
				b.ReportAllocs()
				for b.Loop() {
					out.Reset()
					if _, err := delta.Apply(&out, base, bytes.NewReader(ours.Data), exp); err != nil {
						b.Fatal(err)
					}
				}
				report(b)
			})
			b.Run("zstd19-make", func(b *testing.B) {
				for b.Loop() {
					run(b, zstd, "-q", "-f", "-19", "--patch-from="+basePath, targetPath, "-o", zstdPatch)
				}
				report(b)
			})
			b.Run("zstd-apply", func(b *testing.B) {
				out := filepath.Join(dir, "zstd.out")
				b.SetBytes(int64(len(target)))
				for b.Loop() {
					run(b, zstd, "-q", "-f", "-d", "--patch-from="+basePath, zstdPatch, "-o", out)
				}
				report(b)
			})
			b.Run("bsdiff-make", func(b *testing.B) {
				for b.Loop() {
					run(b, bsdiff, basePath, targetPath, bsPatch)
				}
				report(b)
			})
			b.Run("bspatch-apply", func(b *testing.B) {
				out := filepath.Join(dir, "bs.out")
				b.SetBytes(int64(len(target)))
				for b.Loop() {
					run(b, bspatch, basePath, out, bsPatch)
				}
				report(b)
			})
		})
	}
}

func run(b *testing.B, name string, args ...string) {
	b.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func fileSize(b *testing.B, path string) int64 {
	b.Helper()
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

var (
	goBinariesOnce sync.Once
	goBinariesData [2][]byte
	goBinariesErr  string
)

// goBinaries builds the two releases of the benchmark's Go service once
// per process.
func goBinaries(b *testing.B) [2][]byte {
	b.Helper()
	gobin := testkit.NeedProgram(b, "go")
	goBinariesOnce.Do(func() {
		dir, err := os.MkdirTemp("", "delta-bench-")
		if err != nil {
			goBinariesErr = err.Error()
			return
		}
		defer os.RemoveAll(dir)
		for i, src := range []string{serviceV1, serviceV2} {
			mod := filepath.Join(dir, "v"+string(rune('1'+i)))
			if err := os.MkdirAll(mod, 0o755); err != nil {
				goBinariesErr = err.Error()
				return
			}
			os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/sensorsvc\n\ngo 1.26\n"), 0o644)
			os.WriteFile(filepath.Join(mod, "main.go"), []byte(src), 0o644)
			cmd := exec.Command(gobin, "build", "-trimpath", "-o", "svc", ".")
			cmd.Dir = mod
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
			if out, err := cmd.CombinedOutput(); err != nil {
				goBinariesErr = "go build: " + err.Error() + "\n" + string(out)
				return
			}
			if goBinariesData[i], err = os.ReadFile(filepath.Join(mod, "svc")); err != nil {
				goBinariesErr = err.Error()
				return
			}
		}
	})
	if goBinariesErr != "" {
		b.Fatal(goBinariesErr)
	}
	return goBinariesData
}

const serviceV1 = `package main

import (
	"encoding/json"
	"log"
	"net/http"
	"sync"
	"time"
)

const version = "1.4.2"

type reading struct {
	Sensor string    ` + "`json:\"sensor\"`" + `
	Value  float64   ` + "`json:\"value\"`" + `
	At     time.Time ` + "`json:\"at\"`" + `
}

var (
	mu       sync.Mutex
	readings []reading
)

func record(w http.ResponseWriter, r *http.Request) {
	var rd reading
	if err := json.NewDecoder(r.Body).Decode(&rd); err != nil {
		http.Error(w, "bad reading: "+err.Error(), http.StatusBadRequest)
		return
	}
	rd.At = time.Now()
	mu.Lock()
	readings = append(readings, rd)
	mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func list(w http.ResponseWriter, r *http.Request) {
	mu.Lock()
	defer mu.Unlock()
	json.NewEncoder(w).Encode(readings)
}

func main() {
	http.HandleFunc("/readings", list)
	http.HandleFunc("/record", record)
	http.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(version)) })
	log.Fatal(http.ListenAndServe(":8080", nil))
}
`

// serviceV2 is serviceV1 with a new version, a validation in record and a
// new handler.
var serviceV2 = strings.NewReplacer(
	`const version = "1.4.2"`, `const version = "1.5.0"`,
	`	rd.At = time.Now()
`, `	if rd.Sensor == "" {
		http.Error(w, "bad reading: no sensor name", http.StatusBadRequest)
		return
	}
	rd.At = time.Now()
`,
	`func main() {
`, `func latest(w http.ResponseWriter, r *http.Request) {
	mu.Lock()
	defer mu.Unlock()
	if len(readings) == 0 {
		http.NotFound(w, r)
		return
	}
	json.NewEncoder(w).Encode(readings[len(readings)-1])
}

func main() {
	http.HandleFunc("/latest", latest)
`).Replace(serviceV1)
