package delta

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/bits"
	"os"

	"cradle/internal/atomicfile"

	"github.com/klauspost/compress/zstd"
)

// Expect is what the applier knows about a patch before it runs it, from
// the signed release metadata.
type Expect struct {
	// BaseSHA256 is the digest of the image the patch was made from. Apply
	// refuses any other base.
	BaseSHA256 Digest
	// TargetSHA256 is the digest of the image the patch must produce.
	TargetSHA256 Digest
	// Limit is the most bytes the patch may produce, typically the target's
	// size or the size of the slot it is written to. It must be positive.
	Limit int64
	// TargetSize, when positive, is the exact size the result must have.
	TargetSize int64
}

// Apply decodes patch against base, streaming the rebuilt image to dst,
// and returns the number of bytes written. It fails, wrapping
// ErrBaseMismatch, before reading the patch when base's digest is not
// e.BaseSHA256; wrapping ErrTooLong as soon as the output would pass
// e.Limit; and wrapping ErrTargetMismatch when the output's digest or size
// is not the expected one. On any error, what was written to dst is not
// the target and must be discarded (ApplyFile does that).
//
// Memory is bounded by base, which the caller holds, plus one frame window
// (for Make's patches the target's size; never more than the power of two
// above len(base)+Limit) and the decoder's block buffers.
func Apply(dst io.Writer, base []byte, patch io.Reader, e Expect) (int64, error) {
	if e.Limit <= 0 {
		return 0, errors.New("delta: apply needs a positive output limit")
	}
	if e.TargetSHA256.IsZero() {
		return 0, errors.New("delta: apply needs the target's digest")
	}
	if got := Sum(base); got != e.BaseSHA256 {
		return 0, fmt.Errorf("%w: the installed image has digest %s, the patch is for %s; download the full image",
			ErrBaseMismatch, got, e.BaseSHA256)
	}
	maxWindow := maxWindow(len(base), e.Limit)
	br := bufio.NewReader(patch)
	if err := checkFirstFrame(br, e.Limit, maxWindow); err != nil {
		return 0, err
	}
	dec, err := zstd.NewReader(br,
		zstd.WithDecoderDictRaw(0, base),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(maxWindow),
		zstd.WithDecoderMaxMemory(maxWindow))
	if err != nil {
		return 0, fmt.Errorf("delta: decoder: %w", err)
	}
	defer dec.Close()
	w := &limitWriter{w: dst, left: e.Limit, h: sha256.New()}
	n, err := dec.WriteTo(w)
	if w.over {
		return n, fmt.Errorf("%w: the patch produces more than %d bytes", ErrTooLong, e.Limit)
	}
	if err != nil {
		return n, fmt.Errorf("delta: corrupt patch after %d bytes of output: %w", n, err)
	}
	if e.TargetSize > 0 && n != e.TargetSize {
		return n, fmt.Errorf("%w: rebuilt %d bytes, the release image has %d", ErrTargetMismatch, n, e.TargetSize)
	}
	var got Digest
	w.h.Sum(got[:0])
	if got != e.TargetSHA256 {
		return n, fmt.Errorf("%w: rebuilt image has digest %s, the release image %s", ErrTargetMismatch, got, e.TargetSHA256)
	}
	return n, nil
}

// ApplyFile rebuilds the target at path from the base image at basePath and
// the patch at patchPath, with mode perm. The target appears at path whole
// and verified, or not at all: on any error a file already at path is left
// as it was and no partial output remains.
func ApplyFile(path, basePath, patchPath string, perm os.FileMode, e Expect) error {
	base, err := os.ReadFile(basePath)
	if err != nil {
		return fmt.Errorf("delta: read base image: %w", err)
	}
	pf, err := os.Open(patchPath)
	if err != nil {
		return fmt.Errorf("delta: open patch: %w", err)
	}
	defer pf.Close()
	return atomicfile.Write(path, perm, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<16)
		if _, err := Apply(bw, base, pf, e); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// maxWindow is the largest frame window Apply accepts: a power of two
// above base plus limit, which covers what Make and `zstd --patch-from`
// choose for any target the limit allows.
func maxWindow(base int, limit int64) uint64 {
	total := uint64(base) + uint64(limit)
	w := uint64(1) << bits.Len64(total)
	return max(w, 1<<20)
}

// checkFirstFrame refuses, before any decoding, a first frame that asks for
// a dictionary other than the base, declares more content than limit or a
// larger window than maxWindow. Later frames are held to the same limits
// by the decoder and the output's limit.
func checkFirstFrame(br *bufio.Reader, limit int64, maxWindow uint64) error {
	b, _ := br.Peek(zstd.HeaderMaxSize)
	var h zstd.Header
	if err := h.Decode(b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("delta: corrupt patch: truncated frame header")
		}
		return fmt.Errorf("delta: corrupt patch: %w", err)
	}
	switch {
	case h.Skippable:
		return nil
	case h.DictionaryID != 0:
		return fmt.Errorf("delta: the patch asks for dictionary %d, not a --patch-from base", h.DictionaryID)
	case h.HasFCS && h.FrameContentSize > uint64(limit):
		return fmt.Errorf("%w: the patch declares %d bytes, the limit is %d", ErrTooLong, h.FrameContentSize, limit)
	case h.WindowSize > maxWindow:
		return fmt.Errorf("delta: the patch's window of %d bytes is larger than the images need (%d)", h.WindowSize, maxWindow)
	}
	return nil
}

// limitWriter passes at most left bytes to w, hashing them, and records
// an attempt to write more.
type limitWriter struct {
	w    io.Writer
	left int64
	h    hash.Hash
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, ErrTooLong
	}
	l.left -= int64(len(p))
	l.h.Write(p)
	return l.w.Write(p)
}
