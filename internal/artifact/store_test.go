package artifact_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/artifact"
)

// clock is an injected clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newDir(t *testing.T) (*artifact.Dir, *clock) {
	t.Helper()
	c := newClock()
	s := artifact.NewDir(filepath.Join(t.TempDir(), "artifacts"))
	s.Now = c.Now
	return s, c
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func expect(b []byte) artifact.Expect {
	return artifact.Expect{Digest: sha256.Sum256(b), Size: int64(len(b))}
}

// files lists every file under root, relative to it.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestPutOpen(t *testing.T) {
	ctx := context.Background()
	s, c := newDir(t)
	data := randBytes(t, 300_000)
	info, err := s.Put(ctx, bytes.NewReader(data), expect(data))
	if err != nil {
		t.Fatal(err)
	}
	want := artifact.Info{Digest: sha256.Sum256(data), Size: int64(len(data)), Time: c.Now()}
	if !info.Time.Equal(want.Time) || info.Digest != want.Digest || info.Size != want.Size {
		t.Fatalf("Put = %+v, want %+v", info, want)
	}
	h := want.Digest.String()
	if got := files(t, s.Root); len(got) != 1 || got[0] != filepath.Join("sha256", h[:2], h) {
		t.Fatalf("files %v", got)
	}
	r, oi, err := s.Open(ctx, want.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if oi.Size != want.Size || !oi.Time.Equal(want.Time) {
		t.Fatalf("Open info %+v", oi)
	}
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	buf := make([]byte, 100)
	if _, err := r.ReadAt(buf, 1000); err != nil || !bytes.Equal(buf, data[1000:1100]) {
		t.Fatalf("ReadAt: %v", err)
	}
	if st, err := s.Stat(ctx, want.Digest); err != nil || st.Size != want.Size {
		t.Fatalf("Stat = %+v, %v", st, err)
	}

	// Without an expected digest or length the content names itself.
	other := randBytes(t, 10)
	info, err = s.Put(ctx, bytes.NewReader(other), artifact.Expect{Size: -1})
	if err != nil || info.Digest != sha256.Sum256(other) || info.Size != 10 {
		t.Fatalf("Put unknown = %+v, %v", info, err)
	}
	var listed []artifact.Digest
	if err := s.List(ctx, func(in artifact.Info) error { listed = append(listed, in.Digest); return nil }); err != nil || len(listed) != 2 {
		t.Fatalf("List = %v, %v", listed, err)
	}
	if err := s.Delete(ctx, want.Digest, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, want.Digest); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Fatalf("Stat after Delete: %v", err)
	}
	if _, _, err := s.Open(ctx, want.Digest); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Fatalf("Open after Delete: %v", err)
	}
	if err := s.Delete(ctx, want.Digest, time.Time{}); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Fatalf("second Delete: %v", err)
	}
}

// failingReader yields some bytes, then an error.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// TestPutRefused: every refused upload says why and leaves no file at all,
// neither a blob nor a temporary file.
func TestPutRefused(t *testing.T) {
	data := randBytes(t, 5000)
	flipped := bytes.Clone(data)
	flipped[2500] ^= 1
	boom := errors.New("connection reset")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		r        io.Reader
		want     artifact.Expect
		max      int64
		code     string
		err      error
		contains string
	}{
		{"digest mismatch", nil, bytes.NewReader(flipped), expect(data), 0, cradle.EINVALID, nil, "digest mismatch"},
		{"short", nil, bytes.NewReader(data[:4999]), expect(data), 0, cradle.EINVALID, nil, "expected 5000 bytes, got 4999"},
		{"long", nil, io.MultiReader(bytes.NewReader(data), strings.NewReader("x")), expect(data), 0, cradle.EINVALID, nil, "got more"},
		{"declared over limit", nil, bytes.NewReader(data), expect(data), 4999, cradle.ETOOLARGE, nil, "over the limit of 4999"},
		{"streamed over limit", nil, bytes.NewReader(data), artifact.Expect{Size: -1}, 4999, cradle.ETOOLARGE, nil, "over the limit"},
		{"per-put limit", nil, bytes.NewReader(data), artifact.Expect{Size: -1, MaxSize: 100}, 0, cradle.ETOOLARGE, nil, "limit of 100"},
		{"reader error", nil, &failingReader{bytes.NewReader(data), boom}, expect(data), 0, "", boom, "connection reset"},
		{"cancelled", cancelled, bytes.NewReader(data), expect(data), 0, "", context.Canceled, "canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newDir(t)
			s.MaxSize = tt.max
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			_, err := s.Put(ctx, tt.r, tt.want)
			if err == nil {
				t.Fatal("Put succeeded")
			}
			if tt.code != "" && cradle.ErrorCode(err) != tt.code {
				t.Errorf("code %q, want %q (%v)", cradle.ErrorCode(err), tt.code, err)
			}
			if tt.err != nil && !errors.Is(err, tt.err) {
				t.Errorf("err %v, want %v", err, tt.err)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("err %q does not say %q", err, tt.contains)
			}
			if got := files(t, s.Root); len(got) != 0 {
				t.Errorf("left behind: %v", got)
			}
		})
	}
}

// TestDedup: the same content twice is one file, and the second Put
// refreshes the blob's time.
func TestDedup(t *testing.T) {
	ctx := context.Background()
	s, c := newDir(t)
	data := randBytes(t, 1000)
	if _, err := s.Put(ctx, bytes.NewReader(data), expect(data)); err != nil {
		t.Fatal(err)
	}
	c.Add(time.Hour)
	info, err := s.Put(ctx, bytes.NewReader(data), artifact.Expect{Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got := files(t, s.Root); len(got) != 1 {
		t.Fatalf("files %v", got)
	}
	if st, _ := s.Stat(ctx, info.Digest); !st.Time.Equal(c.Now()) {
		t.Fatalf("time %v, want the second Put's %v", st.Time, c.Now())
	}

	// A damaged (truncated) copy is replaced by the next Put.
	h := info.Digest.String()
	p := filepath.Join(s.Root, "sha256", h[:2], h)
	if err := os.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, bytes.NewReader(data), expect(data)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
		t.Fatalf("damaged copy kept: %d bytes", len(got))
	}
}

// TestConcurrentPuts: many Puts of the same and of different content at
// once; each succeeds, one file per content, every file intact.
func TestConcurrentPuts(t *testing.T) {
	ctx := context.Background()
	s, _ := newDir(t)
	blobs := [][]byte{randBytes(t, 200_000), randBytes(t, 150_000), randBytes(t, 1)}
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := 0; i < 30; i++ {
		b := blobs[i%len(blobs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Put(ctx, iotestHalfReader(b), expect(b))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := files(t, s.Root)
	if len(got) != len(blobs) {
		t.Fatalf("files %v", got)
	}
	for _, b := range blobs {
		r, _, err := s.Open(ctx, sha256.Sum256(b))
		if err != nil {
			t.Fatal(err)
		}
		c, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(c, b) {
			t.Fatal("content differs")
		}
	}
}

// iotestHalfReader reads in small pieces, so concurrent Puts interleave.
func iotestHalfReader(b []byte) io.Reader {
	return &smallReader{b}
}

type smallReader struct{ b []byte }

func (r *smallReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 4096)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// TestGC: unreferenced blobs older than the grace period go; referenced
// ones and young ones stay; a blob re-Put after GC listed it stays; stale
// temporary files go.
func TestGC(t *testing.T) {
	ctx := context.Background()
	s, c := newDir(t)
	put := func(b []byte) artifact.Digest {
		t.Helper()
		in, err := s.Put(ctx, bytes.NewReader(b), expect(b))
		if err != nil {
			t.Fatal(err)
		}
		return in.Digest
	}
	old := [][]byte{randBytes(t, 100), randBytes(t, 200), randBytes(t, 300)}
	kept, gone, revived := put(old[0]), put(old[1]), put(old[2])
	c.Add(2 * time.Hour)
	young := put(randBytes(t, 50))

	// A stale temporary file, as a crash leaves one.
	stale := filepath.Join(s.Root, "tmp", "put-crashed")
	os.WriteFile(stale, []byte("partial"), 0o600)
	staleTime := c.Now().Add(-3 * time.Hour)
	os.Chtimes(stale, staleTime, staleTime)

	referenced := func(d artifact.Digest) bool {
		if d == revived {
			// An upload of the same content lands while GC runs.
			if _, err := s.Put(ctx, bytes.NewReader(old[2]), expect(old[2])); err != nil {
				t.Error(err)
			}
		}
		return d == kept
	}
	st, err := artifact.GC(ctx, s, referenced, time.Hour, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := artifact.GCStats{Kept: 1, Young: 2, Deleted: 1, FreedBytes: 200, Temps: 1}
	if st != want {
		t.Fatalf("GC = %+v, want %+v", st, want)
	}
	for _, tc := range []struct {
		d    artifact.Digest
		want string
	}{{kept, ""}, {young, ""}, {revived, ""}, {gone, cradle.ENOTFOUND}} {
		if _, err := s.Stat(ctx, tc.d); cradle.ErrorCode(err) != tc.want {
			t.Errorf("Stat %s: %v, want %q", tc.d, err, tc.want)
		}
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temp: %v", err)
	}

	// Once the grace period has passed, the young blob goes too.
	c.Add(2 * time.Hour)
	st, err = artifact.GC(ctx, s, func(d artifact.Digest) bool { return d == kept }, time.Hour, c.Now())
	if err != nil || st.Deleted != 2 || st.Kept != 1 {
		t.Fatalf("second GC = %+v, %v", st, err)
	}
}

// TestDeleteBefore: a conditional Delete spares a blob Put at or after the
// cutoff, with ECONFLICT.
func TestDeleteBefore(t *testing.T) {
	ctx := context.Background()
	s, c := newDir(t)
	b := randBytes(t, 10)
	in, _ := s.Put(ctx, bytes.NewReader(b), expect(b))
	if err := s.Delete(ctx, in.Digest, c.Now()); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("Delete = %v, want conflict", err)
	}
	if err := s.Delete(ctx, in.Digest, c.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestParseDigest(t *testing.T) {
	good := strings.Repeat("0a", 32)
	if d, err := artifact.ParseDigest(good); err != nil || d.String() != good {
		t.Fatalf("ParseDigest(%q) = %v, %v", good, d, err)
	}
	for _, bad := range []string{"", good[:62], strings.ToUpper(good), good + "00", strings.Repeat("zz", 32)} {
		if _, err := artifact.ParseDigest(bad); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("ParseDigest(%q) = %v", bad, err)
		}
	}
}
