package est_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/est"
)

// testPKI is one self-signed CA that issues the server's TLS certificate,
// a device's IDevID and the LDevIDs the EST server hands out.
type testPKI struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	serial atomic.Int64

	server tls.Certificate // for 127.0.0.1
	idevid tls.Certificate // the device's factory identity
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{caKey: newKey(t)}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "est test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.caCert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)
	p.serial.Store(1)

	sk := newKey(t)
	p.server = p.tlsCert(t, p.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, &sk.PublicKey), sk)
	ik := newKey(t)
	u, _ := url.Parse("urn:dev:serial:SN-0001")
	p.idevid = p.tlsCert(t, p.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "SN-0001", SerialNumber: "SN-0001"},
		URIs:        []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, &ik.PublicKey), ik)
	return p
}

func (p *testPKI) tlsCert(t testing.TB, c *x509.Certificate, k *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

// issue signs tmpl for pub; it fills serial, validity and key usage.
func (p *testPKI) issue(t testing.TB, tmpl *x509.Certificate, pub any) *x509.Certificate {
	t.Helper()
	c, err := p.sign(tmpl, pub)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *testPKI) sign(tmpl *x509.Certificate, pub any) (*x509.Certificate, error) {
	tmpl.SerialNumber = big.NewInt(p.serial.Add(1))
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, pub, p.caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// testCA implements est.CA over testPKI. It issues a client certificate
// with the CSR's subject and SAN, and refuses CSRs whose common name is
// "refuse-me".
type testCA struct {
	pki *testPKI

	mu     sync.Mutex
	issued []call
	attrs  []byte
	err    error // returned by Enroll and Reenroll when set
}

type call struct {
	op     string
	client *x509.Certificate
	csr    *x509.CertificateRequest
}

var _ est.CA = (*testCA)(nil)

func (c *testCA) CACerts(context.Context) ([]*x509.Certificate, error) {
	return []*x509.Certificate{c.pki.caCert}, nil
}

func (c *testCA) CSRAttrs(context.Context) ([]byte, error) { return c.attrs, nil }

func (c *testCA) Enroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	return c.do("enroll", client, csr)
}

func (c *testCA) Reenroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	return c.do("reenroll", client, csr)
}

func (c *testCA) do(op string, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	c.mu.Lock()
	c.issued = append(c.issued, call{op, client[0], csr})
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if csr.Subject.CommonName == "refuse-me" {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "device %q may not enroll: it is suspended", csr.Subject.CommonName)
	}
	return c.pki.sign(&x509.Certificate{
		Subject:        csr.Subject,
		DNSNames:       csr.DNSNames,
		URIs:           csr.URIs,
		IPAddresses:    csr.IPAddresses,
		EmailAddresses: csr.EmailAddresses,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, csr.PublicKey)
}

func (c *testCA) calls() []call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]call(nil), c.issued...)
}

// startServer serves an est.Server (and /ping, a trivial handler) over TLS
// on 127.0.0.1:0. auth is the server's client-certificate policy.
func startServer(t testing.TB, p *testPKI, ca est.CA, auth tls.ClientAuthType, opt func(*est.Server)) (*httptest.Server, *est.Server) {
	t.Helper()
	s := &est.Server{CA: ca}
	if opt != nil {
		opt(s)
	}
	mux := http.NewServeMux()
	mux.Handle(est.WellKnown, s)
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("pong")) })
	ts := httptest.NewUnstartedServer(mux)
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	ts.TLS = &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   auth,
		ClientCAs:    p.pool,
		MinVersion:   tls.VersionTLS12,
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts, s
}

func (p *testPKI) clientTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

func newCSR(t testing.TB, key *ecdsa.PrivateKey, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
