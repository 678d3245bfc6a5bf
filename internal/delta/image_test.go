package delta_test

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// firmware returns a deterministic synthetic firmware image of about size
// bytes: a vector table, "code" made of instruction-like words drawn from a
// small set of opcodes with varying operands (about as compressible as
// real Thumb-2 code), string tables and zero padding, as a linker lays
// them out.
func firmware(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, 0, size+4096)
	for i := range 64 { // vector table
		b = binary.LittleEndian.AppendUint32(b, 0x08000000+uint32(i)*0x40+1)
	}
	opcodes := make([]uint16, 96)
	for i := range opcodes {
		opcodes[i] = uint16(r.Uint32())
	}
	words := []string{"error", "update", "device", "sensor", "timeout", "retry", "flash", "boot", "config", "cradle"}
	for len(b) < size {
		switch r.IntN(10) {
		case 0: // strings
			for range 1 + r.IntN(8) {
				b = append(b, words[r.IntN(len(words))]...)
				b = append(b, ':', ' ', byte('0'+r.IntN(10)), 0)
			}
		case 1: // alignment padding
			for len(b)%64 != 0 {
				b = append(b, 0)
			}
		default: // a function
			for range 16 + r.IntN(128) {
				op := opcodes[r.IntN(len(opcodes))]
				b = binary.LittleEndian.AppendUint16(b, op&0xff00|uint16(r.IntN(16)))
			}
			b = binary.LittleEndian.AppendUint16(b, 0x4770) // bx lr
		}
	}
	return b[:size]
}

// nextRelease returns a plausible next build of old: a few regions
// rewritten (changed functions, a new version string and build id) and a
// block of new code inserted in the middle, shifting everything after it.
func nextRelease(old []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0xbeef))
	n := append([]byte(nil), old...)
	for range 6 {
		at := r.IntN(len(n) - 600)
		for i := range 100 + r.IntN(400) {
			n[at+i] = byte(r.Uint32())
		}
	}
	mid := len(n) / 2
	insert := firmware(seed+1000, 8192)
	n = append(n[:mid], append(insert, n[mid:]...)...)
	copy(n[len(n)-32:], "cradle-fw version 2.0.1 build 77")
	return n
}

// random returns incompressible bytes.
func random(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 0xcafe))
	b := make([]byte, size+8)
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:size]
}

// writeFile writes b into dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
