package est

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"cradle"
)

// maxResponseBytes bounds the responses the client reads.
const maxResponseBytes = 1 << 20

// Client is an EST client. Its methods are safe for concurrent use.
type Client struct {
	base string // scheme://host[:port][/prefix]/.well-known/est/[label/]
	hc   *http.Client
}

// NewClient returns a client for the EST server at baseURL: the server's
// root ("https://host:8443") or a path under which /.well-known/est/ lives,
// optionally ending in "/.well-known/est/<label>" to use a §3.2.2 label.
// Give either tlsConfig (with the trust anchors of the server in RootCAs
// and the client certificate: the IDevID to enroll, the current LDevID to
// re-enroll; GetClientCertificate lets one client follow a renewal) or hc,
// a ready http.Client whose transport carries the TLS settings; both set
// is an error. NewClient does no I/O.
func NewClient(baseURL string, tlsConfig *tls.Config, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("est: base URL: %w", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("est: base URL %q is not an https URL", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("est: base URL %q has a query or fragment", baseURL)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if !strings.Contains(p+"/", WellKnown) {
		p += strings.TrimSuffix(WellKnown, "/")
	}
	u.Path = p + "/"
	u.RawPath = ""
	switch {
	case hc != nil && tlsConfig != nil:
		return nil, errors.New("est: give a TLS config or an HTTP client, not both")
	case hc == nil:
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsConfig
		hc = &http.Client{Transport: tr, Timeout: 60 * time.Second}
	}
	return &Client{base: u.String(), hc: hc}, nil
}

// StatusError is a refusal from the server: its status, its text, and
// the Retry-After it announced (202, 503), if any. It unwraps to a
// *cradle.Error whose code matches the status (400 EINVALID, 401
// EUNAUTHORIZED, 403 EFORBIDDEN, 404 ENOTFOUND, 413 ETOOLARGE, 501
// ENOTIMPLEMENTED, 202 and 503 EUNAVAILABLE, others EINTERNAL).
type StatusError struct {
	StatusCode int
	Message    string
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("est: server answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Unwrap returns the error as a *cradle.Error.
func (e *StatusError) Unwrap() error {
	code := cradle.EINTERNAL
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusUnsupportedMediaType, http.StatusMethodNotAllowed:
		code = cradle.EINVALID
	case http.StatusUnauthorized:
		code = cradle.EUNAUTHORIZED
	case http.StatusForbidden:
		code = cradle.EFORBIDDEN
	case http.StatusNotFound:
		code = cradle.ENOTFOUND
	case http.StatusRequestEntityTooLarge:
		code = cradle.ETOOLARGE
	case http.StatusNotImplemented:
		code = cradle.ENOTIMPLEMENTED
	case http.StatusAccepted, http.StatusServiceUnavailable:
		code = cradle.EUNAVAILABLE
	}
	return &cradle.Error{Code: code, Message: e.Message}
}

// CACerts fetches the CA certificates (GET cacerts).
func (c *Client) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	st, der, err := c.do(ctx, http.MethodGet, "cacerts", nil, MediaPKCS7)
	if err != nil {
		return nil, err
	}
	if st != http.StatusOK {
		return nil, fmt.Errorf("est: cacerts answered %d without a body", st)
	}
	return ParseCertsOnly(der)
}

// CSRAttrs fetches the attributes the CA wants in a CSR (GET csrattrs);
// nil, nil when the server has none (204, or 404 from a server that does
// not offer the operation, as RFC 7030 §4.5.2 allows).
func (c *Client) CSRAttrs(ctx context.Context) ([]CSRAttr, error) {
	st, der, err := c.do(ctx, http.MethodGet, "csrattrs", nil, MediaCSRAttrs)
	var se *StatusError
	if errors.As(err, &se) && se.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if st == http.StatusNoContent || len(der) == 0 {
		return nil, nil
	}
	return ParseCSRAttrs(der)
}

// SimpleEnroll sends csrDER (a DER PKCS#10 request) for a first
// certificate and returns the issued certificate: the one in the response
// whose public key is the CSR's.
func (c *Client) SimpleEnroll(ctx context.Context, csrDER []byte) (*x509.Certificate, error) {
	return c.enroll(ctx, "simpleenroll", csrDER)
}

// SimpleReenroll is SimpleEnroll for renewal (simplereenroll): the client
// must authenticate with its current certificate, and the CSR must carry
// that certificate's subject and subject alternative names.
func (c *Client) SimpleReenroll(ctx context.Context, csrDER []byte) (*x509.Certificate, error) {
	return c.enroll(ctx, "simplereenroll", csrDER)
}

func (c *Client) enroll(ctx context.Context, op string, csrDER []byte) (*x509.Certificate, error) {
	// Parse without checking the signature: the server judges the CSR,
	// and a bad one must reach it to be refused in words.
	csr, csrErr := x509.ParseCertificateRequest(csrDER)
	st, der, err := c.do(ctx, http.MethodPost, op, encodeBase64(csrDER), MediaPKCS7)
	if err != nil {
		return nil, err
	}
	if st != http.StatusOK {
		return nil, fmt.Errorf("est: %s answered %d without a certificate", op, st)
	}
	certs, err := ParseCertsOnly(der)
	if err != nil {
		return nil, err
	}
	if csrErr != nil {
		return certs[0], nil
	}
	for _, cert := range certs {
		if pk, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && pk.Equal(csr.PublicKey) {
			return cert, nil
		}
	}
	return nil, fmt.Errorf("est: %s: no certificate in the response holds the CSR's public key", op)
}

// do sends a request and returns the status and the decoded DER body of a
// 2xx answer, or a *StatusError.
func (c *Client) do(ctx context.Context, method, op string, body []byte, want string) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+op, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("est: %s: %w", op, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", MediaPKCS10)
		req.Header.Set("Content-Transfer-Encoding", "base64")
	}
	req.Header.Set("Accept", want)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("est: %s: %w", op, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return 0, nil, fmt.Errorf("est: %s: reading response: %w", op, err)
	}
	if len(raw) > maxResponseBytes {
		return 0, nil, fmt.Errorf("est: %s: response over %d bytes", op, maxResponseBytes)
	}
	if resp.StatusCode == http.StatusAccepted || resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(raw)), "est:"))
		if len(msg) > 512 {
			msg = msg[:512] + "…"
		}
		return 0, nil, &StatusError{StatusCode: resp.StatusCode, Message: msg, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	}
	if resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil, nil
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != want {
		return 0, nil, fmt.Errorf("est: %s: response content type %q is not %s", op, resp.Header.Get("Content-Type"), want)
	}
	// RFC 8951: base64 whatever Content-Transfer-Encoding says. Tolerate
	// servers that send DER anyway.
	der, err := decodeBase64(raw)
	if err != nil {
		if len(raw) > 0 && raw[0] == 0x30 {
			return resp.StatusCode, raw, nil
		}
		return 0, nil, fmt.Errorf("est: %s: response is not base64: %w", op, err)
	}
	return resp.StatusCode, der, nil
}

// retryAfter reads a Retry-After in seconds or as an HTTP date; 0 when
// absent or unreadable.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
