package artifact

import (
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"cradle"
)

// Download is one response body served, reported for accounting.
type Download struct {
	Device string
	Digest Digest
	// Offset is where the response started in the blob, Length how many
	// bytes it was to carry and Sent how many it did (less when the
	// client went away).
	Offset, Length, Sent int64
	// Size is the blob's size.
	Size int64
	// Complete is true when the blob's last byte was delivered: the end
	// of a download, whole or resumed.
	Complete bool
}

// Handler serves blobs of Store at URLs signed by Signer. See the package
// doc for the URL and the HTTP semantics.
type Handler struct {
	Store  Store
	Signer *URLSigner
	// Account, when set, is called after every GET that sent a body
	// (200 or 206), on the request's goroutine.
	Account func(Download)
	// Now is the clock checking expiry; nil means time.Now.
	Now func() time.Time
	// Logger logs failures of the store; nil means slog.Default().
	Logger *slog.Logger
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "artifact downloads take GET or HEAD", http.StatusMethodNotAllowed)
		return
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	t, err := h.Signer.Verify(r.URL.Path, r.URL.RawQuery, now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	h.ServeBlob(w, r, t.Digest, t.Device)
}

// ServeBlob serves blob d to a request whose right to it the caller has
// already checked (a TUF client fetching a target of its own repository,
// say), with the same HTTP semantics as ServeHTTP: Range, If-Range,
// If-None-Match, HEAD, Content-Length. device is reported to Account.
func (h *Handler) ServeBlob(w http.ResponseWriter, r *http.Request, d Digest, device string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "artifact downloads take GET or HEAD", http.StatusMethodNotAllowed)
		return
	}
	t := Ticket{Digest: d, Device: device}
	f, info, err := h.Store.Open(r.Context(), t.Digest)
	if err != nil {
		if cradle.ErrorCode(err) == cradle.ENOTFOUND {
			http.Error(w, "artifact "+t.Digest.String()+" not found", http.StatusNotFound)
			return
		}
		h.logger().Error("artifact: open", "digest", t.Digest, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	defer f.Close()

	etag := `"` + t.Digest.String() + `"`
	hd := w.Header()
	hd.Set("ETag", etag)
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("Cache-Control", "private")
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagListMatch(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd.Set("Content-Type", "application/octet-stream")

	size := info.Size
	start, length, status := int64(0), size, http.StatusOK
	if rh := r.Header.Get("Range"); rh != "" && ifRangeHolds(r.Header.Get("If-Range"), etag) {
		s, n, res := ParseRange(rh, size)
		switch res {
		case RangeOK:
			start, length, status = s, n, http.StatusPartialContent
			hd.Set("Content-Range", "bytes "+strconv.FormatInt(s, 10)+"-"+strconv.FormatInt(s+n-1, 10)+"/"+strconv.FormatInt(size, 10))
		case RangeUnsatisfiable:
			hd.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			hd.Set("Content-Type", "text/plain; charset=utf-8")
			msg := "range " + rh + " is outside the artifact's " + strconv.FormatInt(size, 10) + " bytes\n"
			hd.Set("Content-Length", strconv.Itoa(len(msg)))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			io.WriteString(w, msg)
			return
		}
	}
	hd.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		h.logger().Error("artifact: seek", "digest", t.Digest, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(status)
	// io.Copy reaches the connection's ReadFrom with an
	// *io.LimitedReader of an *os.File: sendfile on plain TCP.
	sent, _ := io.Copy(w, io.LimitReader(f, length))
	if h.Account != nil {
		h.Account(Download{
			Device: t.Device, Digest: t.Digest,
			Offset: start, Length: length, Sent: sent, Size: size,
			Complete: sent == length && start+length == size,
		})
	}
}

func (h *Handler) logger() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

// ifRangeHolds reports whether a Range may be honoured given the request's
// If-Range: absent, or our ETag exactly (a strong comparison). A date never
// holds, since we send no Last-Modified.
func ifRangeHolds(ifRange, etag string) bool {
	return ifRange == "" || strings.TrimSpace(ifRange) == etag
}

// etagListMatch is If-None-Match's weak comparison against a list.
func etagListMatch(list, etag string) bool {
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "*" || strings.TrimPrefix(e, "W/") == etag {
			return true
		}
	}
	return false
}

// RangeResult is what ParseRange makes of a Range header.
type RangeResult int

const (
	// RangeIgnore: serve the whole blob (the header is invalid, has
	// another unit, or asks for several ranges).
	RangeIgnore RangeResult = iota
	// RangeOK: serve the one range returned.
	RangeOK
	// RangeUnsatisfiable: answer 416.
	RangeUnsatisfiable
)

// ParseRange interprets a Range header (RFC 9110 section 14.1.2) for a
// representation of size bytes. With RangeOK it returns the first byte
// and the length, both within size. Only a single range is honoured.
func ParseRange(h string, size int64) (start, length int64, res RangeResult) {
	unit, set, ok := strings.Cut(h, "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return 0, 0, RangeIgnore
	}
	spec := strings.TrimSpace(set)
	if strings.Contains(spec, ",") {
		return 0, 0, RangeIgnore
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, RangeIgnore
	}
	if first == "" {
		n, ok := digits(last)
		if !ok {
			return 0, 0, RangeIgnore
		}
		if n == 0 || size == 0 {
			return 0, 0, RangeUnsatisfiable
		}
		n = min(n, size)
		return size - n, n, RangeOK
	}
	a, ok := digits(first)
	if !ok {
		return 0, 0, RangeIgnore
	}
	b := int64(-1)
	if last != "" {
		if b, ok = digits(last); !ok || b < a {
			return 0, 0, RangeIgnore
		}
	}
	if a >= size {
		return 0, 0, RangeUnsatisfiable
	}
	if b < 0 || b >= size {
		b = size - 1
	}
	return a, b - a + 1, RangeOK
}

// digits parses 1*DIGIT, saturating at the largest int64 (a position that
// far is past any blob, and is treated so).
func digits(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63-1-int64(c-'0'))/10 {
			n = 1<<63 - 1
			continue
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
