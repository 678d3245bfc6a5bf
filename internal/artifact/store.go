// Package artifact stores update artifacts (images, deltas, foreign
// artifacts) by content and serves them to devices.
//
// # Store
//
// A blob is named by the SHA-256 of its bytes (a [Digest]); the same bytes
// are stored once. [Store] is the interface a back end implements: Put
// streams a blob in and keeps it only when its digest and length are the
// ones the caller expected and it is within the size limit; Open reads it
// with seek and ReadAt (what a Range request needs); Stat, Delete and List
// serve garbage collection. [Dir] keeps blobs in a local directory, the
// server's <data_dir>/artifacts:
//
//	<root>/sha256/<first two hex digits>/<64 hex digits>   one file per blob, mode 0640
//	<root>/tmp/put-*                                        uploads in flight
//
// Put writes to a temporary file under tmp/ while hashing and counting,
// syncs it and renames it into place only when digest, length and size
// limit all hold; on any failure (mismatch, limit, a reader error, a
// cancelled context) the temporary file is removed and nothing is stored.
// The shard directory is synced after the rename, so a stored blob survives
// a power cut. Two Puts of the same bytes, concurrent or not, leave one
// file; the second only refreshes the blob's time (or replaces a stored
// copy whose size shows it was damaged). A blob's time (its
// file's mtime, set from the injected clock) is when it was last Put.
//
// [GC] deletes the blobs that are not in the caller's referenced set,
// sparing those Put within a grace period: an upload in flight is not yet
// referenced by a release. The grace check is repeated at deletion, under
// the same lock as Put's commit, so a blob re-Put while GC runs is kept.
// Temporary files older than the grace period (left by a crash) are
// removed too. The lock is per process: several servers sharing one
// directory must run GC from one of them.
//
// # Distribution
//
// [Handler] serves a blob over HTTP(S) at a signed, expiring URL, so a
// device whose download client cannot send credentials can still fetch it:
//
//	/artifacts/<sha256 hex>?exp=<unix seconds>&dev=<serial>&sig=<base64url, no padding>
//
// sig is HMAC-SHA256 over "cradle-artifact-v1\n<hex>\n<exp>\n<dev>" with the
// URL-signing key. The handler reads only the last path segment, so it can
// be mounted under any prefix. A URL is refused with 403 when a parameter is
// missing, repeated or unknown, exp is not canonical decimal, the signature
// is not of the current or the previous key (key rotation: sign with a new
// key, keep the old one as previous until its URLs have expired), or exp is
// past. The signature binds one device, so a leaked URL names who leaked it.
//
// Downloads support single byte ranges (RFC 9110): 206 with Content-Range,
// 416 with "Content-Range: bytes */<size>" for an unsatisfiable range,
// If-Range against the ETag, which is the quoted hex digest, If-None-Match,
// HEAD, and a Content-Length on every response. A Range with several ranges
// or an invalid one is ignored (the whole blob, 200), as RFC 9110 allows.
// Each GET that sends a body is reported to an injected callback with the
// device, the digest, the bytes sent and whether the last byte of the blob
// was delivered, for per-device download accounting.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"time"

	"cradle"
)

// Digest is the SHA-256 of a blob's content, its name in a [Store].
type Digest [sha256.Size]byte

// ParseDigest parses 64 lower-case hexadecimal digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return d, cradle.Errorf(cradle.EINVALID, "artifact digest %q: want 64 lower-case hex digits of a SHA-256", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return d, cradle.Errorf(cradle.EINVALID, "artifact digest %q: want 64 lower-case hex digits of a SHA-256", s)
		}
	}
	hex.Decode(d[:], []byte(s))
	return d, nil
}

// String returns the digest as 64 lower-case hex digits.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is the zero digest (no digest given).
func (d Digest) IsZero() bool { return d == Digest{} }

// MarshalText encodes d as hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText decodes hex written by MarshalText.
func (d *Digest) UnmarshalText(b []byte) error {
	v, err := ParseDigest(string(b))
	if err == nil {
		*d = v
	}
	return err
}

// Info describes a stored blob.
type Info struct {
	Digest Digest
	Size   int64
	// Time is when the blob was last Put; GC spares blobs younger than
	// its grace period.
	Time time.Time
}

// Expect is what Put checks an upload against.
type Expect struct {
	// Digest is the SHA-256 the content must have; the zero Digest
	// accepts any content (for blobs the server makes itself, such as
	// deltas), named by what it hashes to.
	Digest Digest
	// Size is the length the content must have; a negative Size accepts
	// any length up to the limit.
	Size int64
	// MaxSize caps the length; zero means the store's own limit, and a
	// MaxSize above the store's limit is lowered to it.
	MaxSize int64
}

// Reader reads a stored blob. It must be closed.
type Reader interface {
	io.ReadSeeker
	io.ReaderAt
	io.Closer
}

// Store is a content-addressed blob store. Implementations are safe for
// concurrent use.
type Store interface {
	// Put reads r to its end (or until it is over the limit) and stores
	// the content when it matches want. It returns EINVALID when the
	// digest or the length differ from want, ETOOLARGE when the content
	// (or want.Size) is over the limit, and the context's error when ctx
	// ends first; in every such case nothing is stored. Putting content
	// that is already stored succeeds, keeps one copy and refreshes its
	// Info.Time.
	Put(ctx context.Context, r io.Reader, want Expect) (Info, error)
	// Open returns a reader of blob d and its Info, or ENOTFOUND.
	Open(ctx context.Context, d Digest) (Reader, Info, error)
	// Stat returns the Info of blob d, or ENOTFOUND.
	Stat(ctx context.Context, d Digest) (Info, error)
	// Delete removes blob d; ENOTFOUND if it is not stored. When before
	// is not zero, a blob Put at or after before is kept and Delete
	// returns ECONFLICT: GC uses it so that a blob re-Put while it runs
	// survives. Readers that already opened the blob may finish.
	Delete(ctx context.Context, d Digest, before time.Time) error
	// List calls fn for every stored blob, in no particular order,
	// stopping at fn's first error, which it returns.
	List(ctx context.Context, fn func(Info) error) error
}

// TempSweeper is implemented by stores that keep uploads in flight in
// temporary objects that a crash can leave behind.
type TempSweeper interface {
	// SweepTemps removes temporary objects last written before before and
	// returns how many it removed.
	SweepTemps(ctx context.Context, before time.Time) (int, error)
}

// GCStats says what GC did.
type GCStats struct {
	Kept       int   // referenced blobs
	Young      int   // unreferenced blobs spared for the grace period
	Deleted    int   // blobs deleted
	FreedBytes int64 // their total size
	Temps      int   // stale temporary files removed
}

// GC deletes from s every blob for which referenced returns false, unless
// it was Put less than grace before now. It also sweeps temporary objects
// older than grace when s is a [TempSweeper]. It stops at the first error
// other than a blob vanishing or being re-Put meanwhile.
//
// The rule that makes this safe while uploads and releases are created:
// a caller records a reference to a blob only after a Put of it returned
// (Put refreshes an existing blob's time), and within grace of that Put.
// grace must therefore exceed the longest upload plus the time to record
// its reference.
func GC(ctx context.Context, s Store, referenced func(Digest) bool, grace time.Duration, now time.Time) (GCStats, error) {
	var st GCStats
	cutoff := now.Add(-grace)
	var victims []Info
	err := s.List(ctx, func(in Info) error {
		switch {
		case referenced(in.Digest):
			st.Kept++
		case !in.Time.Before(cutoff):
			st.Young++
		default:
			victims = append(victims, in)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	for _, in := range victims {
		err := s.Delete(ctx, in.Digest, cutoff)
		switch cradle.ErrorCode(err) {
		case "":
			st.Deleted++
			st.FreedBytes += in.Size
		case cradle.ECONFLICT:
			st.Young++
		case cradle.ENOTFOUND:
		default:
			return st, err
		}
	}
	if ts, ok := s.(TempSweeper); ok {
		n, err := ts.SweepTemps(ctx, cutoff)
		st.Temps = n
		if err != nil {
			return st, err
		}
	}
	return st, nil
}
