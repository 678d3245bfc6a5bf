package artifact

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MinKeySize is the shortest URL-signing key NewURLSigner accepts.
const MinKeySize = 32

// urlDomain separates these MACs from any other use of the key.
const urlDomain = "cradle-artifact-v1"

// maxDevice bounds a serial in a URL; serials are far shorter.
const maxDevice = 256

// URLSigner makes and checks signed download URLs (see the package doc
// for the format). It holds the current key, which signs, and optionally
// the previous one, which still verifies during a key rotation.
type URLSigner struct {
	keys [][]byte
}

// NewURLSigner returns a signer with the current key and, during a
// rotation, the previous one. Keys are random bytes of at least
// MinKeySize.
func NewURLSigner(current []byte, previous []byte) (*URLSigner, error) {
	if len(current) < MinKeySize {
		return nil, fmt.Errorf("artifact: url-signing key of %d bytes is too short; generate %d random bytes", len(current), MinKeySize)
	}
	s := &URLSigner{keys: [][]byte{append([]byte(nil), current...)}}
	if previous != nil {
		if len(previous) < MinKeySize {
			return nil, fmt.Errorf("artifact: previous url-signing key of %d bytes is too short", len(previous))
		}
		s.keys = append(s.keys, append([]byte(nil), previous...))
	}
	return s, nil
}

// Ticket is what a signed URL grants: one device may download one blob
// until Expires.
type Ticket struct {
	Digest  Digest
	Device  string
	Expires time.Time
}

// Sign returns the path and query of the URL granting t, to be appended to
// the server's base URL, e.g. "/artifacts/<hex>?exp=…&dev=…&sig=…".
func (s *URLSigner) Sign(t Ticket) string {
	exp := strconv.FormatInt(t.Expires.Unix(), 10)
	sig := mac(s.keys[0], t.Digest, exp, t.Device)
	q := url.Values{"exp": {exp}, "dev": {t.Device}, "sig": {base64.RawURLEncoding.EncodeToString(sig)}}
	return "/artifacts/" + t.Digest.String() + "?" + q.Encode()
}

// Verify checks the URL path and raw query of a download at now and
// returns the ticket it grants. Errors are *URLError, whose message says
// what was wrong; the handler answers them with 403.
func (s *URLSigner) Verify(path, rawQuery string, now time.Time) (Ticket, error) {
	t, exp, sig, err := ParseURL(path, rawQuery)
	if err != nil {
		return Ticket{}, err
	}
	ok := false
	for _, k := range s.keys {
		if hmac.Equal(sig, mac(k, t.Digest, exp, t.Device)) {
			ok = true
			break
		}
	}
	if !ok {
		return Ticket{}, &URLError{"signature does not match: the url was altered or its key retired; ask the server for a new download url"}
	}
	if !now.Before(t.Expires) {
		return Ticket{}, &URLError{fmt.Sprintf("url expired at %s; ask the server for a new download url", t.Expires.UTC().Format(time.RFC3339))}
	}
	return t, nil
}

// URLError is a download URL that grants nothing.
type URLError struct{ Reason string }

func (e *URLError) Error() string { return "artifact url: " + e.Reason }

// ParseURL parses a download URL's path (whose last segment is the digest)
// and raw query without checking the signature or the expiry. It returns
// the ticket, exp as written (it is what was signed) and the decoded
// signature. The query must hold exactly exp, dev and sig, once each.
func ParseURL(path, rawQuery string) (t Ticket, exp string, sig []byte, err error) {
	seg := path[strings.LastIndexByte(path, '/')+1:]
	if t.Digest, err = ParseDigest(seg); err != nil {
		return Ticket{}, "", nil, &URLError{fmt.Sprintf("path %q does not end in an artifact digest", path)}
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return Ticket{}, "", nil, &URLError{"malformed query: " + err.Error()}
	}
	for k, v := range q {
		switch k {
		case "exp", "dev", "sig":
			if len(v) != 1 {
				return Ticket{}, "", nil, &URLError{fmt.Sprintf("parameter %q given %d times", k, len(v))}
			}
		default:
			return Ticket{}, "", nil, &URLError{fmt.Sprintf("unknown parameter %q", k)}
		}
	}
	for _, k := range []string{"exp", "dev", "sig"} {
		if _, ok := q[k]; !ok {
			return Ticket{}, "", nil, &URLError{fmt.Sprintf("missing parameter %q", k)}
		}
	}
	exp = q.Get("exp")
	n, perr := strconv.ParseInt(exp, 10, 64)
	if perr != nil || strconv.FormatInt(n, 10) != exp || n <= 0 {
		return Ticket{}, "", nil, &URLError{fmt.Sprintf("exp %q is not a positive unix time in decimal", exp)}
	}
	t.Expires = time.Unix(n, 0)
	t.Device = q.Get("dev")
	if t.Device == "" || len(t.Device) > maxDevice || !utf8.ValidString(t.Device) {
		return Ticket{}, "", nil, &URLError{"dev is empty, too long or not utf-8"}
	}
	sig, derr := base64.RawURLEncoding.DecodeString(q.Get("sig"))
	if derr != nil || len(sig) != sha256.Size {
		return Ticket{}, "", nil, &URLError{"sig is not a base64url HMAC-SHA256"}
	}
	return t, exp, sig, nil
}

func mac(key []byte, d Digest, exp, device string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(urlDomain + "\n" + d.String() + "\n" + exp + "\n" + device))
	return m.Sum(nil)
}

// IsURLError reports whether err is a refused download URL.
func IsURLError(err error) bool {
	var e *URLError
	return errors.As(err, &e)
}
