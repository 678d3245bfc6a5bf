package sqlstore

import (
	"testing"

	"cradle"
)

// FuzzBatchCursor feeds client cursors to the batch page decoder: it
// either refuses them with EINVALID or returns a row number whose cursor
// decodes to the same number.
func FuzzBatchCursor(f *testing.F) {
	for _, s := range []string{encodeBatchCursor(1), encodeBatchCursor(1 << 62), "", "b1", "YjA", "Yi0x", "garbage", "YjE=", "Yjk5OTk5OTk5OTk5OTk5OTk5OTk5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		pk, err := decodeBatchCursor(c)
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("cursor %q: %v, want EINVALID", c, err)
			}
			return
		}
		if pk <= 0 {
			t.Fatalf("cursor %q decoded to row %d", c, pk)
		}
		if again, err := decodeBatchCursor(encodeBatchCursor(pk)); err != nil || again != pk {
			t.Fatalf("row %d: re-encoded cursor decodes to %d, %v", pk, again, err)
		}
	})
}
