package est_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"net/http"
	"testing"

	"cradle/internal/est"
)

// Run both in one invocation to compare them (goal: enrollments per second
// at least half of bare mTLS handshakes per second):
//
//	go test -run XXX -bench 'EnrollNewConnection|BareMTLSHandshake' ./internal/est/
//
// Each iteration opens a NEW TLS 1.3 connection with a P-256 client
// certificate (no session resumption, keep-alives off), so the handshake
// cost is in both; the enrollment adds CSR decoding, its signature check
// and the test CA signing a P-256 certificate.

// newConnClient returns an HTTP client that dials a new mTLS connection for
// every request.
func newConnClient(p *testPKI) *http.Client {
	cfg := p.clientTLS(&p.idevid)
	cfg.ClientSessionCache = nil
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func BenchmarkEnrollNewConnection(b *testing.B) {
	p := newPKI(b)
	ts, _ := startServer(b, p, &benchCA{testCA{pki: p}}, tls.RequireAndVerifyClientCert, nil)
	c, err := est.NewClient(ts.URL, nil, newConnClient(p))
	if err != nil {
		b.Fatal(err)
	}
	csr := newCSR(b, newKey(b), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}})
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.SimpleEnroll(ctx, csr); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enroll/s")
}

func BenchmarkBareMTLSHandshake(b *testing.B) {
	p := newPKI(b)
	ts, _ := startServer(b, p, &testCA{pki: p}, tls.RequireAndVerifyClientCert, nil)
	hc := newConnClient(p)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := hc.Get(ts.URL + "/ping")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshake/s")
}

// BenchmarkDecodeCSR is the handler's own per-request work on the body.
func BenchmarkDecodeCSR(b *testing.B) {
	der := newCSR(b, newKey(b), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}})
	body := []byte(base64.StdEncoding.EncodeToString(der))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := est.DecodeCSR(bytes.Clone(body)); err != nil {
			b.Fatal(err)
		}
	}
}

// benchCA is testCA without the call log, which would grow without bound.
type benchCA struct{ testCA }

func (c *benchCA) Enroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	return c.pki.sign(&x509.Certificate{Subject: csr.Subject, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, csr.PublicKey)
}
