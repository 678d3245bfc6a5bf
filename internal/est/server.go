package est

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"cradle"
)

// Server is the EST http.Handler. Mount it at WellKnown ("/.well-known/est/")
// without stripping the prefix. The zero value is not usable: CA must be
// set; every other field has a documented default. Fields must not change
// once the server handles requests.
type Server struct {
	// CA answers requests without a label.
	CA CA
	// Labels maps §3.2.2 labels (/.well-known/est/<label>/<op>) to their
	// CA. A label not in the map answers 404. Nil: labels are refused.
	Labels map[string]CA
	// MaxBodyBytes bounds a request body; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxInFlight bounds concurrent enrollments; more answer 503 with
	// Retry-After. 0 means no bound.
	MaxInFlight int
	// RetryAfter is the Retry-After of a 503 when the cause does not say;
	// 0 means 30 seconds.
	RetryAfter time.Duration
	// Refused, when set, is called once for every refused request (after
	// the response is written), for the audit log.
	Refused func(ctx context.Context, r Refusal)
	// Logger receives internal errors; nil discards them.
	Logger *slog.Logger
	// Now is the time stamped on refusals; nil means time.Now.
	Now func() time.Time

	inflight atomic.Int64
}

var _ http.Handler = (*Server)(nil)

// estError is a refusal decided by the handler itself, with its status.
type estError struct {
	status     int
	msg        string
	retryAfter time.Duration
	cause      error
}

func (e *estError) Error() string { return "est: " + e.msg }
func (e *estError) Unwrap() error { return e.cause }

func refuse(status int, format string, args ...any) *estError {
	return &estError{status: status, msg: fmt.Sprintf(format, args...)}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, WellKnown)
	if !ok {
		s.fail(w, r, "", "", refuse(http.StatusNotFound, "no EST resource at %s; EST lives under %s", r.URL.Path, WellKnown))
		return
	}
	var label, op string
	switch parts := strings.Split(rest, "/"); len(parts) {
	case 1:
		op = parts[0]
	case 2:
		label, op = parts[0], parts[1]
	default:
		s.fail(w, r, "", rest, refuse(http.StatusNotFound, "no EST resource at %s; use %s[<label>/]<operation>", r.URL.Path, WellKnown))
		return
	}
	ca := s.CA
	if label != "" || strings.Count(rest, "/") == 1 {
		ca = s.Labels[label]
		if ca == nil {
			s.fail(w, r, label, op, refuse(http.StatusNotFound, "unknown EST label %q", label))
			return
		}
	}
	if ca == nil {
		s.fail(w, r, label, op, errors.New("est: server has no CA"))
		return
	}
	var err error
	switch op {
	case "cacerts":
		err = s.cacerts(w, r, ca)
	case "csrattrs":
		err = s.csrattrs(w, r, ca)
	case "simpleenroll":
		err = s.enroll(w, r, ca.Enroll, false)
	case "simplereenroll":
		err = s.enroll(w, r, ca.Reenroll, true)
	case "fullcmc", "serverkeygen":
		err = refuse(http.StatusNotImplemented, "EST operation %s is not supported by this server; use simpleenroll with your own key", op)
	default:
		err = refuse(http.StatusNotFound, "unknown EST operation %q; this server offers cacerts, simpleenroll, simplereenroll and csrattrs", op)
	}
	if err != nil {
		s.fail(w, r, label, op, err)
	}
}

func allow(r *http.Request, methods ...string) error {
	if slices.Contains(methods, r.Method) {
		return nil
	}
	e := refuse(http.StatusMethodNotAllowed, "method %s not allowed here; use %s", r.Method, strings.Join(methods, " or "))
	return e
}

func (s *Server) cacerts(w http.ResponseWriter, r *http.Request, ca CA) error {
	if err := allow(r, http.MethodGet, http.MethodHead); err != nil {
		return err
	}
	certs, err := ca.CACerts(r.Context())
	if err != nil {
		return err
	}
	der, err := EncodeCertsOnly(certs)
	if err != nil {
		return fmt.Errorf("est: cacerts: %w", err)
	}
	writeBase64(w, MediaPKCS7, der)
	return nil
}

func (s *Server) csrattrs(w http.ResponseWriter, r *http.Request, ca CA) error {
	if err := allow(r, http.MethodGet, http.MethodHead); err != nil {
		return err
	}
	der, err := ca.CSRAttrs(r.Context())
	if err != nil {
		return err
	}
	if len(der) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if _, err := ParseCSRAttrs(der); err != nil {
		return fmt.Errorf("est: CA returned bad csrattrs: %w", err)
	}
	writeBase64(w, MediaCSRAttrs, der)
	return nil
}

type issueFunc func(context.Context, []*x509.Certificate, *x509.CertificateRequest) (*x509.Certificate, error)

func (s *Server) enroll(w http.ResponseWriter, r *http.Request, issue issueFunc, re bool) error {
	if err := allow(r, http.MethodPost); err != nil {
		return err
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		what := "your factory identity (IDevID)"
		if re {
			what = "your current operational certificate (LDevID)"
		}
		return refuse(http.StatusUnauthorized, "a verified TLS client certificate is required; connect with %s", what)
	}
	chain := r.TLS.VerifiedChains[0]
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != MediaPKCS10 {
		return refuse(http.StatusUnsupportedMediaType, "content type %q is not %s; send the base64 DER CSR as %s", r.Header.Get("Content-Type"), MediaPKCS10, MediaPKCS10)
	}
	limit := s.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxBodyBytes
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return refuse(http.StatusBadRequest, "reading the request body: %v", err)
	}
	if int64(len(body)) > limit {
		return refuse(http.StatusRequestEntityTooLarge, "request body is over %d bytes; a CSR is far smaller", limit)
	}
	csr, err := DecodeCSR(body)
	if err != nil {
		return err
	}
	if re {
		if err := sameNames(chain[0], csr); err != nil {
			return err
		}
	}
	if max := s.MaxInFlight; max > 0 {
		if s.inflight.Add(1) > int64(max) {
			s.inflight.Add(-1)
			return refuse(http.StatusServiceUnavailable, "server busy; retry later")
		}
		defer s.inflight.Add(-1)
	}
	cert, err := issue(r.Context(), chain, csr)
	if err != nil {
		return err
	}
	if cert == nil || len(cert.Raw) == 0 {
		return errors.New("est: CA returned no certificate")
	}
	if pk, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pk.Equal(csr.PublicKey) {
		return errors.New("est: CA returned a certificate for another key than the CSR's")
	}
	der, err := EncodeCertsOnly([]*x509.Certificate{cert})
	if err != nil {
		return err
	}
	writeBase64(w, MediaCertsOnly, der)
	return nil
}

func writeBase64(w http.ResponseWriter, mediaType string, der []byte) {
	body := encodeBase64(der)
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Content-Transfer-Encoding", "base64")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// status maps an error to its HTTP status, the text to send and the
// Retry-After to announce (0 for none).
func (s *Server) status(err error) (int, string, time.Duration) {
	retry := s.RetryAfter
	if retry <= 0 {
		retry = 30 * time.Second
	}
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) && ra.RetryAfter() > 0 {
		retry = ra.RetryAfter()
	}
	var ee *estError
	if errors.As(err, &ee) {
		if ee.status == http.StatusServiceUnavailable {
			return ee.status, ee.msg, retry
		}
		return ee.status, ee.msg, 0
	}
	var st int
	switch cradle.ErrorCode(err) {
	case cradle.EINVALID:
		st = http.StatusBadRequest
	case cradle.EUNAUTHORIZED:
		st = http.StatusUnauthorized
	case cradle.EFORBIDDEN, cradle.ECONFLICT, cradle.ENOTFOUND:
		st = http.StatusForbidden
	case cradle.ETOOLARGE:
		st = http.StatusRequestEntityTooLarge
	case cradle.ENOTIMPLEMENTED:
		st = http.StatusNotImplemented
	case cradle.EUNAVAILABLE:
		return http.StatusServiceUnavailable, cradle.ErrorMessage(err), retry
	default:
		return http.StatusInternalServerError, "internal error; try again later or ask the operator to look at the server log", 0
	}
	return st, cradle.ErrorMessage(err), 0
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, label, op string, err error) {
	st, msg, retry := s.status(err)
	if st == http.StatusInternalServerError && s.Logger != nil {
		s.Logger.ErrorContext(r.Context(), "est: request failed", "op", op, "label", label, "err", err)
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	if retry > 0 {
		h.Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
	}
	if st == http.StatusMethodNotAllowed {
		if op == "simpleenroll" || op == "simplereenroll" {
			h.Set("Allow", "POST")
		} else {
			h.Set("Allow", "GET, HEAD")
		}
	}
	w.WriteHeader(st)
	io.WriteString(w, "est: "+msg+"\n")
	if s.Refused != nil {
		var chain []*x509.Certificate
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			chain = r.TLS.VerifiedChains[0]
		}
		now := time.Now
		if s.Now != nil {
			now = s.Now
		}
		s.Refused(r.Context(), Refusal{Op: op, Label: label, Status: st, Reason: msg, Client: chain, Err: err, Time: now()})
	}
}

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// sameNames enforces RFC 7030 §3.3.2: a re-enrollment CSR carries the
// subject and subjectAltName of the current certificate. Names compare by
// meaning, not encoding: the same multiset of subject attributes with equal
// values (a PrintableString equals a UTF8String of the same text, RDN
// order is ignored), and the same set of general names in any order.
func sameNames(cur *x509.Certificate, csr *x509.CertificateRequest) error {
	if !sameSubject(cur.RawSubject, csr.RawSubject) {
		return refuse(http.StatusForbidden, "re-enrollment CSR subject %q differs from the current certificate's %q; RFC 7030 §3.3.2 requires the same subject (a new key is fine)", csr.Subject.String(), cur.Subject.String())
	}
	curSAN, err := sanSet(cur.Extensions)
	if err != nil {
		return fmt.Errorf("est: current certificate SAN: %w", err)
	}
	csrSAN, err := sanSet(csr.Extensions)
	if err != nil {
		return refuse(http.StatusBadRequest, "CSR subjectAltName extension does not parse: %v", err)
	}
	if !slices.Equal(curSAN, csrSAN) {
		return refuse(http.StatusForbidden, "re-enrollment CSR subjectAltName differs from the current certificate's; RFC 7030 §3.3.2 requires the same names (copy the extension from the current certificate)")
	}
	return nil
}

func sameSubject(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	x, ok := nameAttrs(a)
	if !ok {
		return false
	}
	y, ok := nameAttrs(b)
	return ok && slices.Equal(x, y)
}

// nameAttrs returns a distinguished name's attributes as sorted
// "OID=value" strings, values by meaning (a PrintableString and a
// UTF8String of the same text are equal, order of RDNs does not matter:
// CAs that rebuild a subject from its fields reorder them).
func nameAttrs(der []byte) ([]string, bool) {
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(der, &rdns); err != nil || len(rest) != 0 {
		return nil, false
	}
	var out []string
	for _, rdn := range rdns {
		for _, atv := range rdn {
			out = append(out, fmt.Sprintf("%s=%T:%v", atv.Type, atv.Value, atv.Value))
		}
	}
	slices.Sort(out)
	return out, true
}

// sanSet returns the DER of each GeneralName of the SAN extension,
// sorted; nil when there is no SAN.
func sanSet(exts []pkix.Extension) ([]string, error) {
	var names []string
	for _, e := range exts {
		if !e.Id.Equal(oidSAN) {
			continue
		}
		if names != nil {
			return nil, errors.New("two subjectAltName extensions")
		}
		var seq asn1.RawValue
		if rest, err := asn1.Unmarshal(e.Value, &seq); err != nil || len(rest) != 0 || seq.Tag != asn1.TagSequence {
			return nil, errors.New("not a SEQUENCE of general names")
		}
		names = []string{}
		for b := seq.Bytes; len(b) > 0; {
			var n asn1.RawValue
			var err error
			if b, err = asn1.Unmarshal(b, &n); err != nil {
				return nil, err
			}
			names = append(names, string(n.FullBytes))
		}
	}
	slices.Sort(names)
	return names, nil
}
