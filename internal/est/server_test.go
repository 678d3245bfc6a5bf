package est_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/est"
)

func TestClientEnrollAndReenroll(t *testing.T) {
	p := newPKI(t)
	ca := &testCA{pki: p}
	var refusals []est.Refusal
	ts, _ := startServer(t, p, ca, tls.RequireAndVerifyClientCert, func(s *est.Server) {
		s.Refused = func(_ context.Context, r est.Refusal) { refusals = append(refusals, r) }
	})
	ctx := context.Background()

	c, err := est.NewClient(ts.URL, p.clientTLS(&p.idevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := c.CACerts(ctx)
	if err != nil {
		t.Fatalf("CACerts: %v", err)
	}
	if len(cas) != 1 || !cas[0].Equal(p.caCert) {
		t.Fatalf("CACerts = %d certs, want the test CA", len(cas))
	}

	key := newKey(t)
	u, _ := url.Parse("urn:cradle:tenant:acme:device:SN-0001")
	csr := newCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001", Organization: []string{"acme"}}, URIs: []*url.URL{u}})
	cert, err := c.SimpleEnroll(ctx, csr)
	if err != nil {
		t.Fatalf("SimpleEnroll: %v", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("issued certificate does not hold the CSR's key")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: p.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
	calls := ca.calls()
	if len(calls) != 1 || calls[0].op != "enroll" || !calls[0].client.Equal(p.idevid.Leaf) {
		t.Fatalf("CA calls after enroll = %+v, want one enroll with the IDevID as client", calls)
	}

	// Re-enroll with the new certificate and a new key (re-key).
	ldevid := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	rc, err := est.NewClient(ts.URL+"/.well-known/est", p.clientTLS(&ldevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	key2 := newKey(t)
	csr2 := newCSR(t, key2, &x509.CertificateRequest{Subject: cert.Subject, URIs: cert.URIs})
	cert2, err := rc.SimpleReenroll(ctx, csr2)
	if err != nil {
		t.Fatalf("SimpleReenroll: %v", err)
	}
	if !key2.PublicKey.Equal(cert2.PublicKey) || cert2.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Fatal("re-enrolled certificate is not a new certificate for the new key")
	}
	calls = ca.calls()
	if len(calls) != 2 || calls[1].op != "reenroll" || !calls[1].client.Equal(cert) {
		t.Fatalf("CA calls after reenroll = %+v, want reenroll with the LDevID as client", calls)
	}
	if len(refusals) != 0 {
		t.Fatalf("refusals = %+v, want none", refusals)
	}

	// Re-enrollment naming another subject or other SANs is refused (§3.3.2).
	other, _ := url.Parse("urn:cradle:tenant:acme:device:SN-0002")
	for name, tmpl := range map[string]*x509.CertificateRequest{
		"subject": {Subject: pkix.Name{CommonName: "SN-0002", Organization: []string{"acme"}}, URIs: cert.URIs},
		"SAN":     {Subject: cert.Subject, URIs: []*url.URL{other}},
		"no SAN":  {Subject: cert.Subject},
	} {
		_, err := rc.SimpleReenroll(ctx, newCSR(t, key2, tmpl))
		var se *est.StatusError
		if !errors.As(err, &se) || se.StatusCode != http.StatusForbidden || !strings.Contains(se.Message, "§3.3.2") {
			t.Errorf("%s: reenroll err = %v, want 403 citing §3.3.2", name, err)
		}
		if cradle.ErrorCode(err) != cradle.EFORBIDDEN {
			t.Errorf("%s: code = %q, want %q", name, cradle.ErrorCode(err), cradle.EFORBIDDEN)
		}
	}
	if n := len(ca.calls()); n != 2 {
		t.Fatalf("CA was called %d times, want 2 (refused re-enrollments must not reach it)", n)
	}
	if len(refusals) != 3 || refusals[0].Op != "simplereenroll" || refusals[0].Status != 403 || !refusals[0].Client[0].Equal(cert) {
		t.Fatalf("refusals = %+v, want 3 simplereenroll 403 with the LDevID", refusals)
	}
}

func TestCSRAttrs(t *testing.T) {
	p := newPKI(t)
	ca := &testCA{pki: p}
	ts, _ := startServer(t, p, ca, tls.RequireAndVerifyClientCert, nil)
	c, err := est.NewClient(ts.URL, p.clientTLS(&p.idevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.CSRAttrs(context.Background())
	if err != nil || got != nil {
		t.Fatalf("CSRAttrs with none = %v, %v; want nil, nil", got, err)
	}
	curve, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	want := []est.CSRAttr{
		{OID: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}, // ecdsa-with-SHA256
		{OID: asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, Values: []asn1.RawValue{{FullBytes: curve}}},
	}
	if ca.attrs, err = est.MarshalCSRAttrs(want); err != nil {
		t.Fatal(err)
	}
	got, err = c.CSRAttrs(context.Background())
	if err != nil {
		t.Fatalf("CSRAttrs: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("CSRAttrs (-want +got):\n%s", diff)
	}
}

// TestRefusals drives the handler with raw HTTP requests and checks the
// status, the reason and that the CA was not asked to issue.
func TestRefusals(t *testing.T) {
	p := newPKI(t)
	ca := &testCA{pki: p}
	// VerifyClientCertIfGiven: a client without a certificate reaches the
	// handler, which must answer 401.
	ts, _ := startServer(t, p, ca, tls.VerifyClientCertIfGiven, func(s *est.Server) { s.MaxBodyBytes = 4096 })
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS(&p.idevid)}}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS(nil)}}

	key := newKey(t)
	good := newCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}})
	badSig := bytes.Clone(good)
	badSig[len(badSig)-5] ^= 0x01 // inside the signature's integers
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

	tests := []struct {
		name        string
		client      *http.Client
		method, op  string
		ctype, body string
		status      int
		reason      string
		calls       int // CA calls this request adds
	}{
		{"no client certificate", noCert, "POST", "simpleenroll", est.MediaPKCS10, b64(good), 401, "verified TLS client certificate is required", 0},
		{"no client certificate, reenroll", noCert, "POST", "simplereenroll", est.MediaPKCS10, b64(good), 401, "current operational certificate", 0},
		{"truncated CSR", withCert, "POST", "simpleenroll", est.MediaPKCS10, b64(good[:len(good)/2]), 400, "does not hold a PKCS#10", 0},
		{"bad signature", withCert, "POST", "simpleenroll", est.MediaPKCS10, b64(badSig), 400, "no proof of possession", 0},
		{"not base64", withCert, "POST", "simpleenroll", est.MediaPKCS10, "\x30\x82binary!", 400, "not base64", 0},
		{"empty body", withCert, "POST", "simpleenroll", est.MediaPKCS10, "", 400, "not base64", 0},
		{"wrong content type", withCert, "POST", "simpleenroll", "application/json", b64(good), 415, "is not application/pkcs10", 0},
		{"too large", withCert, "POST", "simpleenroll", est.MediaPKCS10, strings.Repeat("A", 5000), 413, "over 4096 bytes", 0},
		{"GET enroll", withCert, "GET", "simpleenroll", "", "", 405, "use POST", 0},
		{"POST cacerts", withCert, "POST", "cacerts", est.MediaPKCS10, b64(good), 405, "use GET or HEAD", 0},
		{"unknown op", withCert, "GET", "nosuch", "", "", 404, "unknown EST operation", 0},
		{"unknown label", withCert, "GET", "lab/cacerts", "", "", 404, `unknown EST label "lab"`, 0},
		{"serverkeygen", withCert, "POST", "serverkeygen", est.MediaPKCS10, b64(good), 501, "not supported", 0},
		{"CA refuses", withCert, "POST", "simpleenroll", est.MediaPKCS10, b64(newCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "refuse-me"}})), 403, "suspended", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(ca.calls())
			req, err := http.NewRequest(tt.method, ts.URL+est.WellKnown+tt.op, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := tt.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.reason) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.status, tt.reason)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type = %q, want text/plain", ct)
			}
			if resp.Header.Get("WWW-Authenticate") != "" {
				t.Errorf("WWW-Authenticate set, but the server offers no HTTP authentication")
			}
			if got := len(ca.calls()) - before; got != tt.calls {
				t.Errorf("CA called %d times, want %d", got, tt.calls)
			}
		})
	}
}

// TestCAErrors checks the code→status table and Retry-After, through the
// Go client.
func TestCAErrors(t *testing.T) {
	p := newPKI(t)
	ca := &testCA{pki: p}
	ts, _ := startServer(t, p, ca, tls.RequireAndVerifyClientCert, func(s *est.Server) { s.RetryAfter = 90 * time.Second })
	c, err := est.NewClient(ts.URL, p.clientTLS(&p.idevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	csr := newCSR(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}})
	tests := []struct {
		name   string
		err    error
		status int
		code   string
		retry  time.Duration
		text   string
	}{
		{"invalid", cradle.Errorf(cradle.EINVALID, "key too weak: use P-256"), 400, cradle.EINVALID, 0, "key too weak: use P-256"},
		{"unauthorized", cradle.Errorf(cradle.EUNAUTHORIZED, "certificate revoked"), 401, cradle.EUNAUTHORIZED, 0, "certificate revoked"},
		{"forbidden", cradle.Errorf(cradle.EFORBIDDEN, "CSR names device SN-9"), 403, cradle.EFORBIDDEN, 0, "CSR names device SN-9"},
		{"conflict", cradle.Errorf(cradle.ECONFLICT, "device is in rma"), 403, cradle.EFORBIDDEN, 0, "device is in rma"},
		{"not found", cradle.Errorf(cradle.ENOTFOUND, "device SN-0001 not on record"), 403, cradle.EFORBIDDEN, 0, "not on record"},
		{"unavailable", cradle.Errorf(cradle.EUNAVAILABLE, "signer starting"), 503, cradle.EUNAVAILABLE, 90 * time.Second, "signer starting"},
		{"unavailable with retry", retryErr{cradle.Errorf(cradle.EUNAVAILABLE, "HSM busy")}, 503, cradle.EUNAVAILABLE, 5 * time.Second, "HSM busy"},
		{"internal", errors.New("database on fire at /var/lib/secret"), 500, cradle.EINTERNAL, 0, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca.mu.Lock()
			ca.err = tt.err
			ca.mu.Unlock()
			_, err := c.SimpleEnroll(context.Background(), csr)
			var se *est.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want *est.StatusError", err)
			}
			if se.StatusCode != tt.status || se.RetryAfter != tt.retry || !strings.Contains(se.Message, tt.text) {
				t.Errorf("got %d %q retry %v, want %d %q retry %v", se.StatusCode, se.Message, se.RetryAfter, tt.status, tt.text, tt.retry)
			}
			if strings.Contains(se.Message, "/var/lib") {
				t.Errorf("internal detail leaked: %q", se.Message)
			}
			if got := cradle.ErrorCode(err); got != tt.code {
				t.Errorf("code = %q, want %q", got, tt.code)
			}
		})
	}
}

type retryErr struct{ error }

func (retryErr) RetryAfter() time.Duration { return 5 * time.Second }
func (e retryErr) Unwrap() error           { return e.error }

func TestLabels(t *testing.T) {
	p := newPKI(t)
	main, other := &testCA{pki: p}, &testCA{pki: newPKI(t)}
	ts, _ := startServer(t, p, main, tls.RequireAndVerifyClientCert, func(s *est.Server) {
		s.Labels = map[string]est.CA{"rotated": other}
	})
	c, err := est.NewClient(ts.URL+"/.well-known/est/rotated", p.clientTLS(&p.idevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := c.CACerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(cas) != 1 || !cas[0].Equal(other.pki.caCert) {
		t.Fatal("labelled cacerts did not come from the label's CA")
	}
	if _, err := c.SimpleEnroll(context.Background(), newCSR(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}})); err != nil {
		t.Fatal(err)
	}
	if len(other.calls()) != 1 || len(main.calls()) != 0 {
		t.Fatal("labelled enrollment went to the wrong CA")
	}
}

// TestBusy holds one enrollment in the CA and checks that a second, over
// MaxInFlight, answers 503 with Retry-After without reaching the CA.
func TestBusy(t *testing.T) {
	p := newPKI(t)
	ca := &blockingCA{testCA: testCA{pki: p}, entered: make(chan struct{}), release: make(chan struct{})}
	ts, _ := startServer(t, p, ca, tls.RequireAndVerifyClientCert, func(s *est.Server) { s.MaxInFlight = 1 })
	c, err := est.NewClient(ts.URL, p.clientTLS(&p.idevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	csr := newCSR(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}})
	done := make(chan error, 1)
	go func() { _, err := c.SimpleEnroll(context.Background(), csr); done <- err }()
	<-ca.entered
	_, err = c.SimpleEnroll(context.Background(), csr)
	var se *est.StatusError
	if !errors.As(err, &se) || se.StatusCode != 503 || se.RetryAfter != 30*time.Second {
		t.Fatalf("second enrollment err = %v, want 503 with Retry-After 30s", err)
	}
	close(ca.release)
	if err := <-done; err != nil {
		t.Fatalf("first enrollment: %v", err)
	}
	if n := len(ca.calls()); n != 1 {
		t.Fatalf("CA called %d times, want 1", n)
	}
}

type blockingCA struct {
	testCA
	entered, release chan struct{}
}

func (b *blockingCA) Enroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	close(b.entered)
	<-b.release
	return b.testCA.Enroll(ctx, client, csr)
}

func TestNewClientErrors(t *testing.T) {
	for _, base := range []string{"", "ftp://x", "https://", "https://x/?q=1", "::"} {
		if _, err := est.NewClient(base, nil, nil); err == nil {
			t.Errorf("NewClient(%q) succeeded, want an error", base)
		}
	}
	if _, err := est.NewClient("https://x", &tls.Config{}, http.DefaultClient); err == nil {
		t.Error("NewClient with both a TLS config and an HTTP client succeeded")
	}
}

// wrongKeyCA issues a certificate for a key other than the CSR's.
type wrongKeyCA struct {
	testCA
	other *ecdsa.PrivateKey
}

func (c *wrongKeyCA) Enroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	return c.pki.sign(&x509.Certificate{Subject: csr.Subject}, &c.other.PublicKey)
}

func TestCAWrongKey(t *testing.T) {
	p := newPKI(t)
	var logged int
	ts, _ := startServer(t, p, &wrongKeyCA{testCA{pki: p}, newKey(t)}, tls.RequireAndVerifyClientCert, func(s *est.Server) {
		s.Refused = func(_ context.Context, r est.Refusal) {
			if r.Status == 500 && strings.Contains(r.Err.Error(), "another key") {
				logged++
			}
		}
	})
	c, err := est.NewClient(ts.URL, p.clientTLS(&p.idevid), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.SimpleEnroll(context.Background(), newCSR(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}))
	var se *est.StatusError
	if !errors.As(err, &se) || se.StatusCode != 500 || logged != 1 {
		t.Fatalf("err = %v, refusals seen %d; want 500 and one refusal", err, logged)
	}
}
