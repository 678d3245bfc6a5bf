package artifact

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"cradle"
	"cradle/internal/atomicfile"
)

// DefaultMaxSize is a Dir's size limit when its MaxSize is zero.
const DefaultMaxSize = 4 << 30

// Dir is a [Store] in a local directory (see the package doc for the
// layout). Its zero value is not usable; make one with NewDir.
type Dir struct {
	// Root is the directory, normally <data_dir>/artifacts. It is created
	// by the first Put.
	Root string
	// MaxSize is the largest blob Put accepts; zero means DefaultMaxSize.
	MaxSize int64
	// Now gives the time recorded as a blob's Info.Time; nil means
	// time.Now.
	Now func() time.Time

	// mu orders Put's commit against Delete's check-then-remove.
	mu sync.Mutex
}

var (
	_ Store       = (*Dir)(nil)
	_ TempSweeper = (*Dir)(nil)
)

// NewDir returns a Dir rooted at root. It does no I/O.
func NewDir(root string) *Dir { return &Dir{Root: root} }

func (s *Dir) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Dir) limit(want int64) int64 {
	max := s.MaxSize
	if max <= 0 {
		max = DefaultMaxSize
	}
	if want > 0 && want < max {
		return want
	}
	return max
}

func (s *Dir) path(d Digest) string {
	h := d.String()
	return filepath.Join(s.Root, "sha256", h[:2], h)
}

// Put implements [Store].
func (s *Dir) Put(ctx context.Context, r io.Reader, want Expect) (info Info, err error) {
	limit := s.limit(want.MaxSize)
	if want.Size > limit {
		return Info{}, cradle.Errorf(cradle.ETOOLARGE, "artifact of %d bytes is over the limit of %d bytes", want.Size, limit)
	}
	tmpDir := filepath.Join(s.Root, "tmp")
	if err := os.MkdirAll(tmpDir, 0o750); err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	f, err := os.CreateTemp(tmpDir, "put-*")
	if err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()

	h := sha256.New()
	// Read one byte past what may be stored, to tell "too long" from
	// "exactly right" without trusting the reader's EOF.
	max := limit
	if want.Size >= 0 {
		max = want.Size
	}
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxReader{ctx, r}, max+1))
	if err != nil {
		return Info{}, fmt.Errorf("artifact: read upload: %w", err)
	}
	switch {
	case n > limit:
		return Info{}, cradle.Errorf(cradle.ETOOLARGE, "artifact is over the limit of %d bytes", limit)
	case want.Size >= 0 && n != want.Size:
		if n > want.Size {
			return Info{}, cradle.Errorf(cradle.EINVALID, "artifact length mismatch: expected %d bytes, got more; nothing was stored", want.Size)
		}
		return Info{}, cradle.Errorf(cradle.EINVALID, "artifact length mismatch: expected %d bytes, got %d; nothing was stored", want.Size, n)
	}
	var got Digest
	h.Sum(got[:0])
	if !want.Digest.IsZero() && got != want.Digest {
		return Info{}, cradle.Errorf(cradle.EINVALID, "artifact digest mismatch: expected sha256 %s, got %s; nothing was stored", want.Digest, got)
	}
	if err := f.Chmod(0o640); err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	if err := f.Sync(); err != nil {
		return Info{}, fmt.Errorf("artifact: sync upload: %w", err)
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return Info{}, fmt.Errorf("artifact: %w", cerr)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	return s.commit(tmp, got, n)
}

// commit moves the verified temporary file tmp into place as blob d, or
// drops it when d is already stored, and stamps the blob with now.
func (s *Dir) commit(tmp string, d Digest, size int64) (Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.path(d)
	now := s.now()
	// An existing file of the right size is this content (its name is
	// its digest); one of another size was damaged and is replaced.
	if st, err := os.Stat(p); err == nil && st.Size() == size {
		if err := os.Remove(tmp); err != nil {
			return Info{}, fmt.Errorf("artifact: %w", err)
		}
		if err := os.Chtimes(p, now, now); err != nil {
			return Info{}, fmt.Errorf("artifact: %w", err)
		}
		return Info{Digest: d, Size: size, Time: now}, nil
	}
	shard := filepath.Dir(p)
	if err := os.MkdirAll(shard, 0o750); err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	if err := os.Chtimes(tmp, now, now); err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	if err := atomicfile.SyncDir(shard); err != nil {
		return Info{}, fmt.Errorf("artifact: %w", err)
	}
	return Info{Digest: d, Size: size, Time: now}, nil
}

// Open implements [Store]. The reader is an *os.File, so that a server
// copying it to a plain TCP connection can use sendfile.
func (s *Dir) Open(ctx context.Context, d Digest) (Reader, Info, error) {
	f, err := os.Open(s.path(d))
	if err != nil {
		return nil, Info{}, s.notFound(d, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("artifact: %w", err)
	}
	return f, Info{Digest: d, Size: st.Size(), Time: st.ModTime()}, nil
}

// Stat implements [Store].
func (s *Dir) Stat(ctx context.Context, d Digest) (Info, error) {
	st, err := os.Stat(s.path(d))
	if err != nil {
		return Info{}, s.notFound(d, err)
	}
	return Info{Digest: d, Size: st.Size(), Time: st.ModTime()}, nil
}

// Delete implements [Store].
func (s *Dir) Delete(ctx context.Context, d Digest, before time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.path(d)
	st, err := os.Stat(p)
	if err != nil {
		return s.notFound(d, err)
	}
	if !before.IsZero() && !st.ModTime().Before(before) {
		return cradle.Errorf(cradle.ECONFLICT, "artifact %s was stored at %s, not before %s; kept", d, st.ModTime().UTC().Format(time.RFC3339), before.UTC().Format(time.RFC3339))
	}
	if err := os.Remove(p); err != nil {
		return s.notFound(d, err)
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

// List implements [Store]. Files that are not named like a blob in the
// right shard are not blobs and are skipped.
func (s *Dir) List(ctx context.Context, fn func(Info) error) error {
	base := filepath.Join(s.Root, "sha256")
	shards, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	for _, sh := range shards {
		if !sh.IsDir() || len(sh.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(base, sh.Name()))
		if err != nil {
			return fmt.Errorf("artifact: %w", err)
		}
		for _, e := range ents {
			d, err := ParseDigest(e.Name())
			if err != nil || e.Name()[:2] != sh.Name() || !e.Type().IsRegular() {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			st, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted meanwhile
			} else if err != nil {
				return fmt.Errorf("artifact: %w", err)
			}
			if err := fn(Info{Digest: d, Size: st.Size(), Time: st.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// SweepTemps implements [TempSweeper]: it removes uploads in flight that
// were last written before before (an upload still writing keeps a recent
// mtime; one whose file is swept fails and stores nothing).
func (s *Dir) SweepTemps(ctx context.Context, before time.Time) (int, error) {
	dir := filepath.Join(s.Root, "tmp")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("artifact: %w", err)
	}
	n := 0
	for _, e := range ents {
		st, err := e.Info()
		if err != nil || !st.ModTime().Before(before) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err == nil {
			n++
		} else if !errors.Is(err, fs.ErrNotExist) {
			return n, fmt.Errorf("artifact: %w", err)
		}
	}
	return n, nil
}

func (s *Dir) notFound(d Digest, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return cradle.Errorf(cradle.ENOTFOUND, "artifact %s not found", d)
	}
	return fmt.Errorf("artifact: %w", err)
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
