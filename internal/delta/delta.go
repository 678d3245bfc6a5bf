// Package delta makes and applies binary delta updates: a patch that turns
// a device's installed image (the base) into a release's image (the
// target), in the format of `zstd --patch-from`.
//
// # Format
//
// A patch is one or more ordinary Zstandard frames (RFC 8878) compressed
// with the base as a raw-content dictionary: the base is treated as if it
// preceded the target, so a match may copy from anywhere in it. The frames
// carry no dictionary ID (it is 0, absent from the header), the target's
// size and a content checksum (XXH64). That is exactly what
// `zstd --patch-from=BASE` writes and reads, so
//
//	zstd -d --patch-from=BASE PATCH -o TARGET
//
// rebuilds the target byte for byte from our patch, and Apply rebuilds it
// from a patch made by `zstd -19 --patch-from=BASE TARGET`. Make writes one
// single-segment frame, as zstd does: its declared window is the target's
// size, which the zstd program accepts without --memory whenever the
// target is at most 128 MiB or no larger than the base. The encoder itself may match as
// far back as the base's first byte (its search window is the next power
// of two above both images together); the format lets a match reach into
// the dictionary whatever the declared window, and zstd decodes such
// frames. Images together larger than 512 MiB (the encoder's largest
// window) are refused: serve the full image.
//
// # Binding and policy
//
// The patch itself names neither image. The metadata that describes it (a
// Delta: base and target SHA-256 and sizes, the patch's own SHA-256 and
// size) travels in signed release metadata; Apply checks the base's digest
// before decoding and the result's digest and size after, and ApplyFile
// only puts the result in place when both hold. A device that reports the
// exact base digest gets the delta (Select); any other gets the full image.
// A delta is offered only when its patch is at most 70% of the full image
// (Decide); otherwise the release is served as a full image only.
//
// # Failure modes and limits
//
// The applier is meant for untrusted patches. It streams the output, but
// the format makes it keep the base and one frame window: Make's frames
// declare a window of the target's size, so applying one holds the base
// plus about the target (measured: 1.1 times the target in allocations,
// besides the caller's base). It refuses a frame that declares, or
// produces, more than the caller's Limit bytes, a window larger than a
// power of two above base and limit together, or a dictionary ID other
// than 0. A corrupted patch fails on the frame's structure or checksum or,
// at the latest, on the target digest; ApplyFile then leaves no output
// file, and a file already at its path is left as it was.
package delta

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/zstd"
)

// MaxRatioPercent is the largest patch, as a percentage of the full
// target image, for which a delta is worth offering.
const MaxRatioPercent = 70

// MaxImagesSize is the largest base and target size together that Make
// accepts: the encoder's window must cover both, and it stops at 512 MiB.
const MaxImagesSize = zstd.MaxWindowSize

// Digest is the SHA-256 of an image or a patch. Its text form is 64
// lower-case hex digits.
type Digest [sha256.Size]byte

// Sum returns the digest of b.
func Sum(b []byte) Digest { return sha256.Sum256(b) }

// ParseDigest parses 64 hex digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return d, fmt.Errorf("delta: digest %q is not 64 hex digits", s)
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("delta: digest %q is not 64 hex digits", s)
	}
	return d, nil
}

// String returns the digest as lower-case hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is unset.
func (d Digest) IsZero() bool { return d == Digest{} }

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// Delta describes one patch: which base it applies to, what it produces
// and the patch itself. It is what release metadata records for a delta.
type Delta struct {
	BaseSHA256   Digest `json:"base_sha256"`
	BaseSize     int64  `json:"base_size"`
	TargetSHA256 Digest `json:"target_sha256"`
	TargetSize   int64  `json:"target_size"`
	PatchSHA256  Digest `json:"patch_sha256"`
	PatchSize    int64  `json:"patch_size"`
}

// Patch is a generated patch and its description.
type Patch struct {
	Delta
	// Data is the patch: Zstandard frames for `zstd -d --patch-from`.
	Data []byte
}

// Decision is the outcome of the size policy for one patch.
type Decision struct {
	// UseDelta is true when the patch is at most MaxRatioPercent of the
	// full image; false means "full image only".
	UseDelta  bool
	PatchSize int64
	ImageSize int64
}

// Decide applies the size policy: a delta is offered when patchSize is at
// most MaxRatioPercent of imageSize.
func Decide(patchSize, imageSize int64) Decision {
	return Decision{
		UseDelta:  patchSize >= 0 && imageSize > 0 && patchSize*100 <= imageSize*MaxRatioPercent,
		PatchSize: patchSize,
		ImageSize: imageSize,
	}
}

// String says what was decided and why, with the sizes.
func (d Decision) String() string {
	pct := 0.0
	if d.ImageSize > 0 {
		pct = 100 * float64(d.PatchSize) / float64(d.ImageSize)
	}
	if d.UseDelta {
		return fmt.Sprintf("delta: patch of %d bytes is %.1f%% of the %d-byte image", d.PatchSize, pct, d.ImageSize)
	}
	return fmt.Sprintf("full image only: patch of %d bytes would be %.1f%% of the %d-byte image (a delta must be at most %d%%)",
		d.PatchSize, pct, d.ImageSize, MaxRatioPercent)
}

// Make generates the patch from base to target and applies the size
// policy: it returns the patch when Decide allows a delta, and a nil patch
// with the Decision saying "full image only" otherwise. Before returning a
// patch it applies it, so a patch that would not rebuild the target is
// never offered.
func Make(base, target []byte) (*Patch, Decision, error) {
	p, err := Generate(base, target)
	if err != nil {
		return nil, Decision{}, err
	}
	d := Decide(p.PatchSize, p.TargetSize)
	if !d.UseDelta {
		return nil, d, nil
	}
	var out bytes.Buffer
	out.Grow(len(target))
	if _, err := Apply(&out, base, bytes.NewReader(p.Data), Expect{
		BaseSHA256: p.BaseSHA256, TargetSHA256: p.TargetSHA256, Limit: p.TargetSize,
	}); err != nil {
		return nil, Decision{}, fmt.Errorf("delta: generated patch does not apply: %w", err)
	}
	return p, d, nil
}

// Generate compresses target with base as a raw-content dictionary at the
// encoder's best level, whatever the patch's size. Most callers want Make.
func Generate(base, target []byte) (*Patch, error) {
	if len(base)+len(target) > MaxImagesSize {
		return nil, fmt.Errorf("delta: images of %d and %d bytes: deltas are made for images of at most %d bytes together; serve the full image",
			len(base), len(target), MaxImagesSize)
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithWindowSize(window(len(base), len(target))),
		zstd.WithEncoderDictRaw(0, base),
		zstd.WithEncoderCRC(true),
		zstd.WithEncoderConcurrency(1),
		zstd.WithSingleSegment(true),
		zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("delta: encoder: %w", err)
	}
	defer enc.Close()
	data := enc.EncodeAll(target, nil)
	return &Patch{
		Delta: Delta{
			BaseSHA256:   Sum(base),
			BaseSize:     int64(len(base)),
			TargetSHA256: Sum(target),
			TargetSize:   int64(len(target)),
			PatchSHA256:  Sum(data),
			PatchSize:    int64(len(data)),
		},
		Data: data,
	}, nil
}

// window returns the encoder's search window for images of these sizes:
// the smallest power of two that holds both, so that the end of the target
// can still copy from the start of the base.
func window(base, target int) int {
	return max(1<<bits.Len(uint(max(base+target, 1)-1)), zstd.MinWindowSize)
}

// Select returns the delta that a device reporting the installed image's
// digest reported should get for the release image target, among the
// deltas made for that release. ok is false, meaning "send the full
// image", when none has exactly that base, or when reported is unset.
func Select(reported, target Digest, deltas []Delta) (d Delta, ok bool) {
	if reported.IsZero() {
		return Delta{}, false
	}
	for _, d := range deltas {
		if d.BaseSHA256 == reported && d.TargetSHA256 == target {
			return d, true
		}
	}
	return Delta{}, false
}

// ErrBaseMismatch is wrapped by Apply's error when the base's digest or
// size is not the one the patch was made for.
var ErrBaseMismatch = errors.New("delta: base image does not match the patch")

// ErrTargetMismatch is wrapped by Apply's error when the rebuilt image's
// digest or size is not the expected target's.
var ErrTargetMismatch = errors.New("delta: rebuilt image does not match the release")

// ErrTooLong is wrapped by Apply's error when the patch declares or
// produces more than the limit.
var ErrTooLong = errors.New("delta: patch output exceeds the limit")
