package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"cradle"
	"cradle/internal/est"
	"cradle/internal/pki"
)

// BenchmarkEnrollment enrolls a device over a new mTLS connection per
// iteration through the whole stack: the device listener's checks (chain,
// certificate on record, device state), EST, the LDevID profile, the
// store's issuance transaction with its audit entries. Compare it with
// BenchmarkBareMTLSHandshake in the same run.
func BenchmarkEnrollment(b *testing.B) {
	s := newSystem(b, pki.ProfileTest, false)
	u := s.newUnit("SN-1", cradle.StateProvisioned)
	csr, _ := csrFor(b, "SN-1")
	pool := x509.NewCertPool()
	pool.AddCert(s.h.Root)
	cfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{u.idevid.Raw}, PrivateKey: u.key}}}
	c, err := est.NewClient(s.url, nil, &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.SimpleEnroll(b.Context(), csr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBareMTLSHandshake is the baseline: a new mTLS handshake with
// the same certificates and a trivial request per iteration.
func BenchmarkBareMTLSHandshake(b *testing.B) {
	s := newSystem(b, pki.ProfileTest, false)
	u := s.newUnit("SN-1", cradle.StateProvisioned)
	pool := x509.NewCertPool()
	pool.AddCert(s.h.Root)
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(s.h.Root)
	clientCAs.AddCert(s.h.ManufacturingCA)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{s.h.Server.Raw, s.h.Root.Raw}, PrivateKey: s.keys[pki.NameServer]}},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}
	srv.StartTLS()
	defer srv.Close()
	cfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{u.idevid.Raw}, PrivateKey: u.key}}}
	b.ResetTimer()
	for b.Loop() {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
		resp, err := hc.Get(srv.URL)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
