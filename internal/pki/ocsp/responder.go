package ocsp

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cradle"
)

// Defaults of Options.
const (
	DefaultValidity   = 24 * time.Hour
	DefaultPrefix     = "/pki/ocsp/"
	DefaultMaxEntries = 100_000
)

// Issuer is a CA the responder answers for.
type Issuer struct {
	// Cert is the CA certificate whose certificates are answered for.
	Cert *x509.Certificate
	// ResponderCert signs the answers: a delegated responder certificate
	// issued by Cert with the extended key usage id-kp-OCSPSigning (it is
	// included in every response), or Cert itself.
	ResponderCert *x509.Certificate
	// Signer is ResponderCert's private key.
	Signer crypto.Signer
}

// Options tune a Responder. The zero value is ready to use.
type Options struct {
	// Validity is nextUpdate - thisUpdate of every answer; a cached
	// answer is refreshed when half of it has passed. 0 means
	// DefaultValidity.
	Validity time.Duration
	// Prefix is the path under which GET requests carry the base64
	// request. "" means DefaultPrefix.
	Prefix string
	// MaxEntries bounds the cache; 0 means DefaultMaxEntries.
	MaxEntries int
	// Clock tells the time; nil means the system clock.
	Clock cradle.Clock
	// Logger receives Source and signing failures; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Responder answers OCSP requests for its issuers with statuses from a
// Source, and caches them (see the package documentation). It is an
// http.Handler. Its methods are safe for concurrent use.
type Responder struct {
	src      Source
	issuers  []*issuer
	validity time.Duration
	prefix   string
	maxEnt   int64
	clock    cradle.Clock
	log      *slog.Logger

	cache   sync.Map // cacheKey → *entry
	entries atomic.Int64
}

type issuer struct {
	idx    int
	cert   *x509.Certificate
	hashes map[crypto.Hash][2][]byte // name hash, key hash
	signer signer
}

type cacheKey struct {
	issuer int
	serial string // big.Int bytes with a sign prefix
}

// entry is one certificate's status, fetched once, and the signed
// answers to single-CertID requests without a nonce.
type entry struct {
	ready     chan struct{} // closed when the fields below are set
	err       error
	status    []byte // certStatusDER
	thisUp    time.Time
	nextUp    time.Time
	refreshAt time.Time

	mu     sync.Mutex                   // serialises signing
	signed atomic.Pointer[[]*preSigned] // copy on write
}

// preSigned is the whole OCSPResponse for one CertID encoding.
type preSigned struct {
	certID       string
	der          []byte
	etag         string
	lastModified string
	expires      string
}

// maxPreSigned bounds the CertID encodings (hash algorithms) pre-signed
// per certificate; others are signed per request.
const maxPreSigned = 4

// NewResponder returns a Responder for the issuers, asking src. It checks
// each issuer: a delegated responder certificate must have been issued by
// the CA (its signature verifies with the CA's key) and carry the extended
// key usage id-kp-OCSPSigning; the Signer's public key must be the
// responder certificate's and of a supported kind (ECDSA P-256, P-384,
// P-521, Ed25519, RSA); two issuers must not share name and key.
func NewResponder(src Source, issuers []Issuer, opts Options) (*Responder, error) {
	if src == nil {
		return nil, errors.New("ocsp: no Source")
	}
	if len(issuers) == 0 {
		return nil, errors.New("ocsp: no issuer")
	}
	r := &Responder{
		src:      src,
		validity: opts.Validity,
		prefix:   opts.Prefix,
		maxEnt:   int64(opts.MaxEntries),
		clock:    opts.Clock,
		log:      opts.Logger,
	}
	if r.validity <= 0 {
		r.validity = DefaultValidity
	}
	if r.prefix == "" {
		r.prefix = DefaultPrefix
	}
	if r.maxEnt <= 0 {
		r.maxEnt = DefaultMaxEntries
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	for i, is := range issuers {
		x, err := newIssuer(i, is)
		if err != nil {
			return nil, err
		}
		for _, y := range r.issuers {
			if bytes.Equal(x.hashes[crypto.SHA256][0], y.hashes[crypto.SHA256][0]) && bytes.Equal(x.hashes[crypto.SHA256][1], y.hashes[crypto.SHA256][1]) {
				return nil, fmt.Errorf("ocsp: issuer %d (%s) is given twice", i, is.Cert.Subject)
			}
		}
		r.issuers = append(r.issuers, x)
	}
	return r, nil
}

func newIssuer(i int, is Issuer) (*issuer, error) {
	if is.Cert == nil || is.ResponderCert == nil || is.Signer == nil {
		return nil, fmt.Errorf("ocsp: issuer %d: Cert, ResponderCert and Signer are required", i)
	}
	name := is.Cert.Subject.String()
	delegated := !bytes.Equal(is.Cert.Raw, is.ResponderCert.Raw)
	if delegated {
		if err := is.ResponderCert.CheckSignatureFrom(is.Cert); err != nil {
			return nil, fmt.Errorf("ocsp: issuer %s: responder certificate %s was not issued by it: %w", name, is.ResponderCert.Subject, err)
		}
		ok := false
		for _, u := range is.ResponderCert.ExtKeyUsage {
			ok = ok || u == x509.ExtKeyUsageOCSPSigning
		}
		if !ok {
			return nil, fmt.Errorf("ocsp: issuer %s: responder certificate %s lacks the extended key usage OCSPSigning", name, is.ResponderCert.Subject)
		}
	}
	pub, ok := is.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(is.ResponderCert.PublicKey) {
		return nil, fmt.Errorf("ocsp: issuer %s: the signer's key is not the responder certificate's", name)
	}
	hash, alg, err := signatureAlgorithm(is.Signer.Public())
	if err != nil {
		return nil, fmt.Errorf("ocsp: issuer %s: %w", name, err)
	}
	caKey, err := subjectPublicKey(is.Cert)
	if err != nil {
		return nil, fmt.Errorf("ocsp: issuer %s: %w", name, err)
	}
	respKey, err := subjectPublicKey(is.ResponderCert)
	if err != nil {
		return nil, fmt.Errorf("ocsp: issuer %s: responder: %w", name, err)
	}
	x := &issuer{idx: i, cert: is.Cert, hashes: map[crypto.Hash][2][]byte{}}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		x.hashes[h] = [2][]byte{digest(h, is.Cert.RawSubject), digest(h, caKey)}
	}
	keyID := sha1.Sum(respKey)
	x.signer = signer{
		key:         is.Signer,
		hash:        hash,
		sigAlg:      alg,
		responderID: tlv(nil, ctxCons(2), tlv(nil, tagOctetString, keyID[:])),
	}
	if delegated {
		x.signer.certs = tlv(nil, ctxCons(0), tlv(nil, tagSequence, is.ResponderCert.Raw))
	}
	return x, nil
}

func digest(h crypto.Hash, b []byte) []byte {
	switch h {
	case crypto.SHA1:
		s := sha1.Sum(b)
		return s[:]
	case crypto.SHA256:
		s := sha256.Sum256(b)
		return s[:]
	case crypto.SHA384:
		s := sha512.Sum384(b)
		return s[:]
	}
	s := sha512.Sum512(b)
	return s[:]
}

// subjectPublicKey returns the contents of the subjectPublicKey BIT STRING
// of a certificate, which CertID's issuerKeyHash and ResponderID's byKey
// hash.
func subjectPublicKey(c *x509.Certificate) ([]byte, error) {
	var spki struct {
		Algorithm asn1.RawValue
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("parse subjectPublicKeyInfo: %w", err)
	}
	return spki.Key.Bytes, nil
}

func (r *Responder) now() time.Time { return cradle.Now(r.clock).UTC().Truncate(time.Second) }

// find returns the issuer a CertID names, or nil.
func (r *Responder) find(id *CertID) *issuer {
	if id.HashAlgorithm == 0 {
		return nil
	}
	for _, is := range r.issuers {
		h := is.hashes[id.HashAlgorithm]
		if bytes.Equal(h[0], id.IssuerNameHash) && bytes.Equal(h[1], id.IssuerKeyHash) {
			return is
		}
	}
	return nil
}

func keyOf(is *issuer, serial *big.Int) cacheKey {
	b := serial.Bytes()
	s := make([]byte, 1+len(b))
	if serial.Sign() < 0 {
		s[0] = '-'
	} else {
		s[0] = '+'
	}
	copy(s[1:], b)
	return cacheKey{is.idx, string(s)}
}

// Invalidate drops the cached answer for the certificate with serial
// issued by issuer, so that the next request asks the Source. Revocation
// must call it once the store has the revocation. An issuer the responder
// does not serve is ignored.
func (r *Responder) Invalidate(issuerCert *x509.Certificate, serial *big.Int) {
	for _, is := range r.issuers {
		if bytes.Equal(is.cert.Raw, issuerCert.Raw) {
			if _, ok := r.cache.LoadAndDelete(keyOf(is, serial)); ok {
				r.entries.Add(-1)
			}
		}
	}
}

// InvalidateAll drops every cached answer.
func (r *Responder) InvalidateAll() {
	r.cache.Range(func(k, _ any) bool {
		if _, ok := r.cache.LoadAndDelete(k); ok {
			r.entries.Add(-1)
		}
		return true
	})
}

// lookup returns the fresh cache entry of a certificate, asking the
// Source when there is none or it is due for refresh.
func (r *Responder) lookup(ctx context.Context, is *issuer, serial *big.Int, now time.Time) (*entry, error) {
	k := keyOf(is, serial)
	for range 8 {
		v, ok := r.cache.Load(k)
		if ok {
			e := v.(*entry)
			<-e.ready
			if e.err == nil && now.Before(e.refreshAt) && !now.Before(e.thisUp) {
				return e, nil
			}
			// Stale or failed: replace it unless someone else has.
			n := &entry{ready: make(chan struct{})}
			if r.cache.CompareAndSwap(k, e, n) {
				r.fill(ctx, is, serial, k, n, now)
				return n, n.err
			}
			continue
		}
		n := &entry{ready: make(chan struct{})}
		if _, loaded := r.cache.LoadOrStore(k, n); loaded {
			continue
		}
		if r.entries.Add(1) > r.maxEnt {
			r.evictOne(k)
		}
		r.fill(ctx, is, serial, k, n, now)
		return n, n.err
	}
	// Heavy churn on one key: answer without caching.
	n := &entry{ready: make(chan struct{})}
	r.fill(ctx, is, serial, cacheKey{}, n, now)
	return n, n.err
}

func (r *Responder) evictOne(keep cacheKey) {
	r.cache.Range(func(k, _ any) bool {
		if k.(cacheKey) == keep {
			return true
		}
		if _, ok := r.cache.LoadAndDelete(k); ok {
			r.entries.Add(-1)
		}
		return false
	})
}

// fill asks the Source and completes e. A failed entry is removed so that
// the next request asks again.
func (r *Responder) fill(ctx context.Context, is *issuer, serial *big.Int, k cacheKey, e *entry, now time.Time) {
	defer close(e.ready)
	st, err := r.src.Status(context.WithoutCancel(ctx), is.cert, serial)
	if err == nil {
		err = checkStatus(st)
	}
	if err != nil {
		e.err = err
		if k != (cacheKey{}) && r.cache.CompareAndDelete(k, e) {
			r.entries.Add(-1)
		}
		return
	}
	e.thisUp = now
	e.nextUp = now.Add(r.validity)
	e.refreshAt = now.Add(r.validity / 2)
	e.status = certStatusDER(st, e.thisUp, e.nextUp)
}

func checkStatus(st Status) error {
	switch st.State {
	case Good, Unknown:
		return nil
	case Revoked:
		if st.RevokedAt.IsZero() {
			return errors.New("ocsp: source: revoked status without a revocation time")
		}
		if st.Reason != nil && (*st.Reason < 0 || *st.Reason > 10 || *st.Reason == 7) {
			return fmt.Errorf("ocsp: source: revocation reason %d is not a CRLReason", int(*st.Reason))
		}
		return nil
	}
	return fmt.Errorf("ocsp: source: unknown state %d", int(st.State))
}

// answer is a response and what the HTTP layer needs to know of it.
type answer struct {
	der []byte
	pre *preSigned // set when der is a pre-signed answer
	exp time.Time  // its nextUpdate, for max-age
}

// Respond answers a DER OCSPRequest with the DER of an OCSPResponse:
// successful, or an error status as the package documentation says. It
// never fails; failures are logged.
func (r *Responder) Respond(ctx context.Context, der []byte) []byte {
	return r.respond(ctx, der).der
}

func (r *Responder) respond(ctx context.Context, der []byte) answer {
	req, err := ParseRequest(der)
	if err != nil {
		r.log.DebugContext(ctx, "ocsp: malformed request", "err", err)
		return answer{der: errorResponses[MalformedRequest]}
	}
	return r.answerRequest(ctx, req)
}

func (r *Responder) answerRequest(ctx context.Context, req *Request) answer {
	now := r.now()
	var chosen *issuer
	for i := range req.Certs {
		if chosen = r.find(&req.Certs[i]); chosen != nil {
			break
		}
	}
	if chosen == nil {
		return answer{der: errorResponses[Unauthorized]}
	}

	if len(req.Certs) == 1 && req.Nonce == nil {
		a, err := r.preSigned(ctx, chosen, &req.Certs[0], now)
		if err != nil {
			return r.failure(ctx, err)
		}
		return a
	}

	singles := make([][]byte, len(req.Certs))
	var unknown []byte
	for i := range req.Certs {
		id := &req.Certs[i]
		if r.find(id) != chosen {
			if unknown == nil {
				unknown = certStatusDER(Status{State: Unknown}, now, now.Add(r.validity))
			}
			singles[i] = singleResponse(id.Raw, unknown)
			continue
		}
		e, err := r.lookup(ctx, chosen, id.SerialNumber, now)
		if err != nil {
			return r.failure(ctx, err)
		}
		singles[i] = singleResponse(id.Raw, e.status)
	}
	resp, err := chosen.signer.sign(now, singles, req.Nonce)
	if err != nil {
		return r.failure(ctx, err)
	}
	return answer{der: resp}
}

// preSigned returns the cached signed answer for a single CertID, signing
// it on first use.
func (r *Responder) preSigned(ctx context.Context, is *issuer, id *CertID, now time.Time) (answer, error) {
	e, err := r.lookup(ctx, is, id.SerialNumber, now)
	if err != nil {
		return answer{}, err
	}
	if p := e.find(id.Raw); p != nil {
		return answer{der: p.der, pre: p, exp: e.nextUp}, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if p := e.find(id.Raw); p != nil {
		return answer{der: p.der, pre: p, exp: e.nextUp}, nil
	}
	der, err := is.signer.sign(now, [][]byte{singleResponse(id.Raw, e.status)}, nil)
	if err != nil {
		return answer{}, err
	}
	sum := sha256.Sum256(der)
	p := &preSigned{
		certID:       string(id.Raw),
		der:          der,
		etag:         `"` + hex.EncodeToString(sum[:16]) + `"`,
		lastModified: e.thisUp.Format(http.TimeFormat),
		expires:      e.nextUp.Format(http.TimeFormat),
	}
	var list []*preSigned
	if old := e.signed.Load(); old != nil {
		list = *old
	}
	if len(list) < maxPreSigned {
		list = append(list[:len(list):len(list)], p)
		e.signed.Store(&list)
	}
	return answer{der: der, pre: p, exp: e.nextUp}, nil
}

func (e *entry) find(certID []byte) *preSigned {
	l := e.signed.Load()
	if l == nil {
		return nil
	}
	for _, p := range *l {
		if p.certID == string(certID) {
			return p
		}
	}
	return nil
}

func (r *Responder) failure(ctx context.Context, err error) answer {
	if cradle.ErrorCode(err) == cradle.EUNAVAILABLE {
		r.log.WarnContext(ctx, "ocsp: source unavailable; answering tryLater", "err", err)
		return answer{der: errorResponses[TryLater]}
	}
	r.log.ErrorContext(ctx, "ocsp: answering internalError", "err", err)
	return answer{der: errorResponses[InternalError]}
}

// ServeHTTP answers OCSP over HTTP: POST with the DER request as the body
// (any path), GET with the base64 request after Options.Prefix. See the
// package documentation.
func (r *Responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var a answer
	switch req.Method {
	case http.MethodPost:
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, MaxRequestBytes))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				a = answer{der: errorResponses[MalformedRequest]}
				break
			}
			return // the client went away
		}
		a = r.respond(req.Context(), body)
	case http.MethodGet, http.MethodHead:
		der, err := decodeGET(req.URL, r.prefix)
		if err != nil {
			r.log.DebugContext(req.Context(), "ocsp: malformed GET request", "err", err)
			a = answer{der: errorResponses[MalformedRequest]}
			break
		}
		a = r.respond(req.Context(), der)
		if a.pre != nil {
			h := w.Header()
			h.Set("Last-Modified", a.pre.lastModified)
			h.Set("Expires", a.pre.expires)
			h.Set("ETag", a.pre.etag)
			maxAge := int(a.exp.Sub(r.now()) / time.Second)
			h.Set("Cache-Control", "max-age="+strconv.Itoa(max(maxAge, 0))+", public, no-transform, must-revalidate")
		}
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "ocsp: use GET or POST (RFC 6960 Appendix A)", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("Content-Type", MediaResponse)
	h.Set("Content-Length", strconv.Itoa(len(a.der)))
	if req.Method == http.MethodHead {
		return
	}
	w.Write(a.der)
}

// decodeGET returns the DER request in a GET URL.
func decodeGET(u *url.URL, prefix string) ([]byte, error) {
	p := u.EscapedPath()
	i := strings.Index(p, prefix)
	if i < 0 {
		if strings.TrimSuffix(prefix, "/") == p || strings.HasSuffix(p, strings.TrimSuffix(prefix, "/")) {
			return nil, malformed("GET without a request; put the base64 request after %s", prefix)
		}
		return nil, malformed("GET path %q is not under %s", truncate(p, 80), prefix)
	}
	s, err := url.PathUnescape(p[i+len(prefix):])
	if err != nil {
		return nil, malformed("GET path is not URL-encoded: %v", err)
	}
	if len(s) > base64.StdEncoding.EncodedLen(MaxRequestBytes) {
		return nil, malformed("GET request over %d octets", MaxRequestBytes)
	}
	// Accept both base64 alphabets, with or without padding; a '+' that a
	// form decoder turned into a space is a '+'.
	s = strings.TrimRight(s, "=")
	s = strings.NewReplacer("-", "+", "_", "/", " ", "+").Replace(s)
	der, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		return nil, malformed("GET request is not base64: %v", err)
	}
	return der, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
