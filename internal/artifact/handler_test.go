package artifact_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle/internal/artifact"
)

type fixture struct {
	store  *artifact.Dir
	clock  *clock
	signer *artifact.URLSigner
	srv    *httptest.Server
	data   []byte
	digest artifact.Digest

	mu        sync.Mutex
	downloads []artifact.Download
}

var (
	keyA = bytes.Repeat([]byte{'a'}, 32)
	keyB = bytes.Repeat([]byte{'b'}, 32)
)

func newFixture(t *testing.T, size int) *fixture {
	t.Helper()
	f := &fixture{}
	f.store, f.clock = newDir(t)
	f.data = randBytes(t, size)
	in, err := f.store.Put(context.Background(), bytes.NewReader(f.data), expect(f.data))
	if err != nil {
		t.Fatal(err)
	}
	f.digest = in.Digest
	f.signer, _ = artifact.NewURLSigner(keyA, nil)
	h := &artifact.Handler{
		Store:  f.store,
		Signer: f.signer,
		Now:    f.clock.Now,
		Account: func(d artifact.Download) {
			f.mu.Lock()
			f.downloads = append(f.downloads, d)
			f.mu.Unlock()
		},
	}
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

// url signs a URL for device dev valid for an hour.
func (f *fixture) url(dev string) string {
	return f.srv.URL + f.signer.Sign(artifact.Ticket{Digest: f.digest, Device: dev, Expires: f.clock.Now().Add(time.Hour)})
}

// lastDownload returns the last download accounted. The handler accounts
// after the body was written, so the client may see it first: wait.
func (f *fixture) lastDownload(t *testing.T) artifact.Download {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		f.mu.Lock()
		n := len(f.downloads)
		f.mu.Unlock()
		if n > 0 {
			break
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.downloads) == 0 {
		t.Fatal("no download accounted")
	}
	return f.downloads[len(f.downloads)-1]
}

func do(t *testing.T, method, u string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestHandlerWhole(t *testing.T) {
	f := newFixture(t, 100_000)
	resp, body := do(t, "GET", f.url("dev-1"))
	if resp.StatusCode != 200 || !bytes.Equal(body, f.data) {
		t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	for k, v := range map[string]string{
		"Content-Length": "100000",
		"ETag":           `"` + f.digest.String() + `"`,
		"Accept-Ranges":  "bytes",
		"Content-Type":   "application/octet-stream",
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	want := artifact.Download{Device: "dev-1", Digest: f.digest, Length: 100000, Sent: 100000, Size: 100000, Complete: true}
	if got := f.lastDownload(t); got != want {
		t.Fatalf("accounted %+v, want %+v", got, want)
	}
}

// TestHandlerResume downloads half of a blob, drops the connection, and
// resumes with Range and If-Range; the two parts make the blob.
func TestHandlerResume(t *testing.T) {
	const size = 4 << 20
	f := newFixture(t, size)
	u := f.url("dev-1")

	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	etag := resp.Header.Get("ETag")
	first := make([]byte, size/2)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the connection drops mid-download

	resp, rest := do(t, "GET", u, "Range", fmt.Sprintf("bytes=%d-", len(first)), "If-Range", etag)
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", size/2, size-1, size); got != want {
		t.Fatalf("Content-Range %q, want %q", got, want)
	}
	if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(size/2) {
		t.Fatalf("Content-Length %q", got)
	}
	if !bytes.Equal(append(first, rest...), f.data) {
		t.Fatal("resumed download differs from the blob")
	}
	want := artifact.Download{Device: "dev-1", Digest: f.digest, Offset: size / 2, Length: size / 2, Sent: size / 2, Size: size, Complete: true}
	if got := f.lastDownload(t); got != want {
		t.Fatalf("accounted %+v, want %+v", got, want)
	}
}

func TestHandlerRanges(t *testing.T) {
	const size = 1000
	f := newFixture(t, size)
	etag := `"` + f.digest.String() + `"`
	tests := []struct {
		name    string
		hdr     []string
		status  int
		start   int
		end     int // exclusive
		crange  string
		account bool
	}{
		{"first ten", []string{"Range", "bytes=0-9"}, 206, 0, 10, "bytes 0-9/1000", true},
		{"suffix", []string{"Range", "bytes=-10"}, 206, 990, 1000, "bytes 990-999/1000", true},
		{"open end", []string{"Range", "bytes=500-"}, 206, 500, 1000, "bytes 500-999/1000", true},
		{"clamped end", []string{"Range", "bytes=900-5000"}, 206, 900, 1000, "bytes 900-999/1000", true},
		{"suffix longer than blob", []string{"Range", "bytes=-5000"}, 206, 0, 1000, "bytes 0-999/1000", true},
		{"unit case and spaces", []string{"Range", "Bytes= 3-4 "}, 206, 3, 5, "bytes 3-4/1000", true},
		{"start past end", []string{"Range", "bytes=1000-"}, 416, 0, 0, "bytes */1000", false},
		{"huge start", []string{"Range", "bytes=99999999999999999999999-"}, 416, 0, 0, "bytes */1000", false},
		{"zero suffix", []string{"Range", "bytes=-0"}, 416, 0, 0, "bytes */1000", false},
		{"several ranges", []string{"Range", "bytes=0-1,5-6"}, 200, 0, 1000, "", true},
		{"invalid", []string{"Range", "bytes=5-1"}, 200, 0, 1000, "", true},
		{"other unit", []string{"Range", "items=0-1"}, 200, 0, 1000, "", true},
		{"if-range matches", []string{"Range", "bytes=0-9", "If-Range", etag}, 206, 0, 10, "bytes 0-9/1000", true},
		{"if-range other etag", []string{"Range", "bytes=0-9", "If-Range", `"beef"`}, 200, 0, 1000, "", true},
		{"if-range date", []string{"Range", "bytes=0-9", "If-Range", "Sun, 01 Mar 2026 12:00:00 GMT"}, 200, 0, 1000, "", true},
		{"if-none-match", []string{"If-None-Match", `"x", W/` + etag}, 304, 0, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.mu.Lock()
			f.downloads = nil
			f.mu.Unlock()
			resp, body := do(t, "GET", f.url("dev-2"), tt.hdr...)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tt.status, body)
			}
			if got := resp.Header.Get("Content-Range"); got != tt.crange {
				t.Errorf("Content-Range %q, want %q", got, tt.crange)
			}
			if tt.status == 416 || tt.status == 304 {
				if tt.status == 416 && resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
					t.Errorf("416 Content-Length %q for %d bytes", resp.Header.Get("Content-Length"), len(body))
				}
			} else {
				if !bytes.Equal(body, f.data[tt.start:tt.end]) {
					t.Errorf("body is not bytes %d-%d", tt.start, tt.end)
				}
				if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(tt.end-tt.start) {
					t.Errorf("Content-Length %q", got)
				}
			}
			if tt.account {
				d := f.lastDownload(t)
				if d.Offset != int64(tt.start) || d.Sent != int64(tt.end-tt.start) || d.Complete != (tt.end == size) {
					t.Errorf("accounted %+v", d)
				}
			} else {
				// Without a body the handler has returned, and
				// would have accounted, before the client reads.
				f.mu.Lock()
				n := len(f.downloads)
				f.mu.Unlock()
				if n != 0 {
					t.Errorf("%d downloads accounted", n)
				}
			}
		})
	}
}

func TestHandlerHead(t *testing.T) {
	f := newFixture(t, 1000)
	resp, body := do(t, "HEAD", f.url("dev-1"))
	if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != 1000 {
		t.Fatalf("HEAD: status %d, body %d, length %d", resp.StatusCode, len(body), resp.ContentLength)
	}
	resp, _ = do(t, "HEAD", f.url("dev-1"), "Range", "bytes=10-19")
	if resp.StatusCode != 206 || resp.ContentLength != 10 || resp.Header.Get("Content-Range") != "bytes 10-19/1000" {
		t.Fatalf("HEAD range: status %d, length %d, %q", resp.StatusCode, resp.ContentLength, resp.Header.Get("Content-Range"))
	}
	if len(f.downloads) != 0 {
		t.Fatalf("HEAD accounted: %+v", f.downloads)
	}
	resp, _ = do(t, "POST", f.url("dev-1"))
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %d %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestHandlerSignedURL(t *testing.T) {
	f := newFixture(t, 100)
	now := f.clock.Now()
	ticket := artifact.Ticket{Digest: f.digest, Device: "dev-1", Expires: now.Add(time.Hour)}
	good := f.signer.Sign(ticket)
	other := sha256.Sum256([]byte("other"))
	oldSigner, _ := artifact.NewURLSigner(keyB, nil)
	unknown := bytes.Repeat([]byte{'c'}, 32)
	unknownSigner, _ := artifact.NewURLSigner(unknown, nil)

	// edit rewrites one query parameter of the good URL.
	edit := func(k, v string) string {
		p, q, _ := strings.Cut(good, "?")
		vals, _ := url.ParseQuery(q)
		if v == "" {
			vals.Del(k)
		} else {
			vals.Set(k, v)
		}
		return p + "?" + vals.Encode()
	}
	tests := []struct {
		name   string
		path   string
		status int
		says   string
	}{
		{"valid", good, 200, ""},
		{"expired", f.signer.Sign(artifact.Ticket{Digest: f.digest, Device: "dev-1", Expires: now}), 403, "url expired at 2026-03-01T12:00:00Z"},
		{"other device", edit("dev", "dev-2"), 403, "signature does not match"},
		{"later expiry", edit("exp", strconv.FormatInt(now.Add(48*time.Hour).Unix(), 10)), 403, "signature does not match"},
		{"other digest", strings.Replace(good, f.digest.String(), artifact.Digest(other).String(), 1), 403, "signature does not match"},
		{"tampered sig", edit("sig", strings.Repeat("A", 43)), 403, "signature does not match"},
		{"unknown key", unknownSigner.Sign(ticket), 403, "signature does not match"},
		{"missing sig", edit("sig", ""), 403, `missing parameter "sig"`},
		{"extra parameter", good + "&x=1", 403, `unknown parameter "x"`},
		{"repeated parameter", good + "&dev=dev-1", 403, `parameter "dev" given 2 times`},
		{"exp with leading zero", edit("exp", "0"+strconv.FormatInt(now.Add(time.Hour).Unix(), 10)), 403, "not a positive unix time"},
		{"not a digest", "/artifacts/nope?" + strings.SplitN(good, "?", 2)[1], 403, "does not end in an artifact digest"},
		{"old key before rotation", oldSigner.Sign(ticket), 403, "signature does not match"},
		{"blob missing", f.signer.Sign(artifact.Ticket{Digest: other, Device: "dev-1", Expires: now.Add(time.Hour)}), 404, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "GET", f.srv.URL+tt.path)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if !strings.Contains(string(body), tt.says) {
				t.Fatalf("body %q does not say %q", body, tt.says)
			}
		})
	}

	// Key rotation: the server signs with key A now and still accepts
	// URLs signed with B, its previous key; once B is retired they fail.
	rotated, _ := artifact.NewURLSigner(keyA, keyB)
	if _, err := rotated.Verify(strings.Split(oldSigner.Sign(ticket), "?")[0], strings.Split(oldSigner.Sign(ticket), "?")[1], now); err != nil {
		t.Fatalf("previous key refused during rotation: %v", err)
	}
	if _, err := rotated.Verify(strings.Split(good, "?")[0], strings.Split(good, "?")[1], now); err != nil {
		t.Fatalf("current key refused: %v", err)
	}
	h := &artifact.Handler{Store: f.store, Signer: rotated, Now: f.clock.Now}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if resp, body := do(t, "GET", srv.URL+oldSigner.Sign(ticket)); resp.StatusCode != 200 || !bytes.Equal(body, f.data) {
		t.Fatalf("previous key over HTTP: %d", resp.StatusCode)
	}
	if got := rotated.Sign(ticket); got != good {
		t.Fatalf("rotated signer signs with the previous key: %s", got)
	}
}

func TestNewURLSigner(t *testing.T) {
	if _, err := artifact.NewURLSigner(make([]byte, 31), nil); err == nil {
		t.Fatal("short key accepted")
	}
	if _, err := artifact.NewURLSigner(keyA, make([]byte, 8)); err == nil {
		t.Fatal("short previous key accepted")
	}
}

func FuzzParseURL(f *testing.F) {
	s, _ := artifact.NewURLSigner(keyA, keyB)
	d := sha256.Sum256([]byte("x"))
	good := s.Sign(artifact.Ticket{Digest: d, Device: "dev-1", Expires: time.Unix(1800000000, 0)})
	p, q, _ := strings.Cut(good, "?")
	f.Add(p, q)
	f.Add(p, q+"&exp=1")
	f.Add("/artifacts/", "")
	f.Add(p, "exp=-1&dev=&sig=")
	f.Add(p, "exp=1800000000&dev=%ff&sig=AAAA")
	f.Add(p, "%zz")
	f.Fuzz(func(t *testing.T, path, query string) {
		tk, exp, sig, err := artifact.ParseURL(path, query)
		if err != nil {
			if !artifact.IsURLError(err) {
				t.Fatalf("error of another type: %v", err)
			}
			return
		}
		if strconv.FormatInt(tk.Expires.Unix(), 10) != exp || len(sig) != sha256.Size || tk.Device == "" {
			t.Fatalf("accepted %+v %q %x", tk, exp, sig)
		}
		// What parses re-signs to a URL that parses to the same ticket.
		p2, q2, _ := strings.Cut(s.Sign(tk), "?")
		tk2, _, _, err := artifact.ParseURL(p2, q2)
		if err != nil || tk2 != tk {
			t.Fatalf("re-signed %+v: %+v, %v", tk, tk2, err)
		}
		if _, err := s.Verify(p2, q2, tk.Expires.Add(-time.Second)); err != nil {
			t.Fatalf("re-signed url refused: %v", err)
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=-5", "bytes=5-", "bytes=0-1,2-3", "bytes=9999999999999999999-", "bytes=-0", "x", "bytes=1-0", "BYTES = 1-2"} {
		f.Add(s, int64(100))
	}
	f.Add("bytes=0-", int64(0))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		if size < 0 {
			return
		}
		start, n, res := artifact.ParseRange(h, size)
		switch res {
		case artifact.RangeOK:
			if start < 0 || n < 1 || start > size-n {
				t.Fatalf("ParseRange(%q, %d) = %d, %d", h, size, start, n)
			}
		case artifact.RangeIgnore, artifact.RangeUnsatisfiable:
			if start != 0 || n != 0 {
				t.Fatalf("ParseRange(%q, %d) = %d, %d with %v", h, size, start, n, res)
			}
		default:
			t.Fatalf("result %v", res)
		}
	})
}

// TestHandlerServeBlob: a caller that checked the right to a blob itself
// (the device listener's TUF target route) serves it without a signed
// URL, with the same Range handling and accounting.
func TestHandlerServeBlob(t *testing.T) {
	f := newFixture(t, 1000)
	accounted := make(chan artifact.Download, 1)
	h := &artifact.Handler{Store: f.store, Signer: f.signer, Account: func(d artifact.Download) { accounted <- d }}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := artifact.ParseDigest(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		h.ServeBlob(w, r, d, "7/SN-1")
	}))
	defer srv.Close()
	resp, body := do(t, "GET", srv.URL+"/"+f.digest.String(), "Range", "bytes=600-")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, f.data[600:]) {
		t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	if cr := resp.Header.Get("Content-Range"); cr != "bytes 600-999/1000" {
		t.Fatalf("Content-Range %q", cr)
	}
	want := artifact.Download{Device: "7/SN-1", Digest: f.digest, Offset: 600, Length: 400, Sent: 400, Size: 1000, Complete: true}
	// The handler accounts after the body was written: wait for it.
	if got := <-accounted; got != want {
		t.Fatalf("accounted %+v, want %+v", got, want)
	}
	missing := sha256.Sum256([]byte("not stored"))
	if resp, _ := do(t, "GET", srv.URL+"/"+artifact.Digest(missing).String()); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a blob not stored: status %d, want 404", resp.StatusCode)
	}
	if resp, _ := do(t, "POST", srv.URL+"/"+f.digest.String()); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: status %d, want 405", resp.StatusCode)
	}
}
