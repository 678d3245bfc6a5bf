package delta_test

import (
	"bytes"
	"errors"
	"testing"

	"cradle/internal/delta"
)

// FuzzApply runs the applier on arbitrary patches against a fixed base: it
// must never panic, never write past the limit, and succeed only by
// producing the expected target.
func FuzzApply(f *testing.F) {
	base := firmware(60, 8192)
	target := nextRelease(base, 61)
	p, err := delta.Generate(base, target)
	if err != nil {
		f.Fatal(err)
	}
	other, err := delta.Generate(target, base)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(p.Data)
	f.Add(other.Data)
	f.Add(p.Data[:len(p.Data)/2])
	f.Add(append(bytes.Clone(p.Data), p.Data...))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Add([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4})
	f.Add([]byte{})
	const limit = 64 << 10
	exp := delta.Expect{BaseSHA256: delta.Sum(base), TargetSHA256: delta.Sum(target), Limit: limit}
	f.Fuzz(func(t *testing.T, patch []byte) {
		var out bytes.Buffer
		n, err := delta.Apply(&out, base, bytes.NewReader(patch), exp)
		if out.Len() > limit || n != int64(out.Len()) {
			t.Fatalf("wrote %d bytes (reported %d), limit %d", out.Len(), n, limit)
		}
		if err == nil && !bytes.Equal(out.Bytes(), target) {
			t.Fatal("Apply succeeded without producing the target")
		}
		if errors.Is(err, delta.ErrBaseMismatch) {
			t.Fatalf("base refused: %v", err)
		}
	})
}
