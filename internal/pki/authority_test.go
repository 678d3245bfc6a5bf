package pki_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/est"
	"cradle/internal/pki"
	"cradle/internal/pki/ocsp"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"
)

// system is a whole PKI: hierarchy, store, authority, and the device
// listener with EST, OCSP, CRLs and CA certificates mounted, on a real TLS
// port.
type system struct {
	t          testing.TB
	h          *pki.Hierarchy
	keys       map[string]crypto.Signer
	auth       *pki.Authority
	certs      cradle.CertificateService // wrapped: revocations reach CRL and OCSP
	devices    *sqlstore.DeviceService
	clock      *storetest.Clock
	url        string
	dir        string
	production bool
}

func newSystem(t testing.TB, profile string, production bool) *system {
	t.Helper()
	ctx := t.Context()
	s := &system{t: t, keys: map[string]crypto.Signer{}, clock: storetest.NewClock(time.Now().UTC().Truncate(time.Second)), dir: t.TempDir(), production: production}
	keyFunc := func(name string) (crypto.Signer, error) {
		if k, ok := s.keys[name]; ok {
			return k, nil
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		s.keys[name] = k
		return k, err
	}
	var err error
	s.h, err = pki.Init(ctx, pki.InitOptions{Profile: profile, Org: "Acme", Hostnames: []string{"127.0.0.1"}, Keys: keyFunc, Now: s.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	_, auditKey, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, filepath.Join(s.dir, "cradle.db"), sqlstore.Options{AuditKey: auditKey, Clock: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := sqlstore.NewTokenService(db).Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	s.devices = sqlstore.NewDeviceService(db)
	store := sqlstore.NewCertificateService(db)
	var responder *ocsp.Responder
	s.auth = &pki.Authority{
		Hierarchy: s.h, Signers: s.keys, Certificates: store, CAStore: store,
		TenantName: func(context.Context, int64) (string, error) { return "default", nil },
		URLHost:    "127.0.0.1", Clock: s.clock,
		OnRevoke: func(issuer *x509.Certificate, serial *big.Int) { responder.Invalidate(issuer, serial) },
	}
	s.certs = s.auth.WrapCertificates(store)
	responder, err = ocsp.NewResponder(s.auth, s.auth.OCSPIssuers(), ocsp.Options{Clock: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(s.h.Root)
	for _, c := range s.h.IssuingCAs() {
		inter.AddCert(c)
	}
	listener := &deviceapi.Server{
		Certificate: tls.Certificate{Certificate: [][]byte{s.h.Server.Raw}, PrivateKey: s.keys[pki.NameServer]},
		Roots:       roots, Intermediates: inter,
		CheckChain: func(c []*x509.Certificate) error { return pki.CheckProfile(c, production) },
		Certs:      store, Devices: s.devices, Clock: s.clock,
	}
	estServer := &est.Server{CA: s.auth, Now: s.clock.Now}
	listener.Handle("GET /.well-known/est/cacerts", estServer, true)
	listener.Handle("/.well-known/est/", estServer, false)
	listener.Handle("/pki/ocsp", responder, true)
	listener.Handle("/pki/ocsp/", responder, true)
	listener.Handle("/pki/", s.auth.PublicHandler(), true)
	srv := httptest.NewUnstartedServer(listener.Handler())
	srv.TLS = listener.TLSConfig()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// unit is a device with its IDevID, as the factory would leave it.
type unit struct {
	serial string
	idevid *x509.Certificate
	key    crypto.Signer
}

// newUnit registers a device, issues its IDevID with the manufacturing CA
// and records it, as the factory station will.
func (s *system) newUnit(serial string, state cradle.State) *unit {
	s.t.Helper()
	ctx := s.t.Context()
	factory := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleFactory, Kind: "test", ID: "line-1"})
	if _, err := s.devices.CreateDevice(factory, cradle.DeviceCreate{Serial: serial, Model: "gw-100", State: cradle.StateFactory}); err != nil {
		s.t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := pki.Issue(ctx, s.h.ManufacturingCA, s.keys[pki.NameManufacturingCA], key.Public(), &x509.Certificate{},
		append(pki.IDevID(pki.IDevIDConfig{Organization: "Acme"}, serial, nil, s.clock.Now()), pki.KeyPolicy())...)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.certs.RecordCertificate(factory, serial, cradle.CertIDevID, cert); err != nil {
		s.t.Fatal(err)
	}
	if state != cradle.StateFactory {
		if _, err := s.devices.TransitionDevice(factory, serial, cradle.DeviceTransition{To: cradle.StateProvisioned}); err != nil {
			s.t.Fatal(err)
		}
	}
	return &unit{serial: serial, idevid: cert, key: key}
}

// client returns an EST client presenting cert and key.
func (s *system) client(cert *x509.Certificate, key crypto.Signer) *est.Client {
	s.t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(s.h.Root)
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}
	}
	c, err := est.NewClient(s.url, cfg, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

func csrFor(t testing.TB, serial string) ([]byte, crypto.Signer) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: serial, CommonName: serial}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// csrLike makes a re-enrollment CSR: the current certificate's subject
// and names (RFC 7030 §3.3.2), a new key.
func csrLike(t *testing.T, c *x509.Certificate) ([]byte, crypto.Signer) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{RawSubject: c.RawSubject}
	for _, e := range c.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) { // subjectAltName, copied as it is
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func wantStatus(t *testing.T, what string, err error, status int, text string) {
	t.Helper()
	var se *est.StatusError
	if !errors.As(err, &se) || se.StatusCode != status || !strings.Contains(se.Message, text) {
		t.Errorf("%s: %v; want status %d mentioning %q", what, err, status, text)
	}
}

func TestEnrollment(t *testing.T) {
	s := newSystem(t, pki.ProfileTest, false)
	ctx := t.Context()
	u := s.newUnit("SN-1", cradle.StateProvisioned)

	cas, err := s.client(nil, nil).CACerts(ctx)
	if err != nil || len(cas) != 3 {
		t.Fatalf("cacerts: %d certificates, %v; want the device CA, the manufacturing CA and the root", len(cas), err)
	}

	// Enrollment with the IDevID: an LDevID, the device deployed.
	csr, key := csrFor(t, "SN-1")
	ldev, err := s.client(u.idevid, u.key).SimpleEnroll(ctx, csr)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if tenant, serial, err := pki.DeviceFromCertificate(ldev); err != nil || tenant != "default" || serial != "SN-1" {
		t.Errorf("the LDevID names %q/%q (%v)", tenant, serial, err)
	}
	if got := ldev.NotAfter.Sub(ldev.NotBefore); got < 89*24*time.Hour || got > 91*24*time.Hour {
		t.Errorf("LDevID lifetime %v, want 90 days", got)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	if d, _ := s.devices.FindDeviceBySerial(sys, "SN-1"); d.State != cradle.StateDeployed {
		t.Errorf("after enrollment the device is %s, want deployed", d.State)
	}

	// Refusals, each with a reason.
	other := s.newUnit("SN-2", cradle.StateProvisioned)
	csr2, _ := csrFor(t, "SN-1")
	_, err = s.client(other.idevid, other.key).SimpleEnroll(ctx, csr2)
	wantStatus(t, "a CSR for another device", err, 403, `the CSR names device "SN-1", but the client certificate is device "SN-2"'s`)
	_, err = s.client(ldev, key).SimpleEnroll(ctx, csr)
	wantStatus(t, "simpleenroll with an LDevID", err, 403, "needs the device's IDevID")
	factoryUnit := s.newUnit("SN-3", cradle.StateFactory)
	csr3, _ := csrFor(t, "SN-3")
	_, err = s.client(factoryUnit.idevid, factoryUnit.key).SimpleEnroll(ctx, csr3)
	wantStatus(t, "a device still in the factory", err, 403, `device "SN-3" is factory`)
	weakKey, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weak, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: "SN-2"}}, weakKey)
	_, err = s.client(other.idevid, other.key).SimpleEnroll(ctx, weak)
	wantStatus(t, "a P-224 key", err, 400, "P-224")
	stranger, strangerKey := strangerCert(t, "SN-9")
	_, err = s.client(stranger, strangerKey).SimpleEnroll(ctx, csr)
	wantStatus(t, "an unknown client certificate", err, 401, "not issued by this server's manufacturing or device CA")

	// Renewal with the LDevID: a new certificate; the old one superseded.
	// (When to renew, at 2/3 of the lifetime, is the agent's side: RenewAt.
	// openssl below checks times against the real clock, so this one
	// stays put until the expiry at the end.)
	csrR, keyR := csrLike(t, ldev)
	renewed, err := s.client(ldev, key).SimpleReenroll(ctx, csrR)
	if err != nil {
		t.Fatalf("re-enroll: %v", err)
	}
	old, err := s.certs.FindCertificateBySerial(sys, cradle.SerialHex(ldev.SerialNumber))
	if err != nil || old.Status != cradle.CertSuperseded || old.SupersededBy != cradle.SerialHex(renewed.SerialNumber) {
		t.Errorf("the renewed certificate: %+v, %v", old, err)
	}
	csrI, _ := csrLike(t, u.idevid)
	_, err = s.client(u.idevid, u.key).SimpleReenroll(ctx, csrI)
	wantStatus(t, "simplereenroll with the IDevID", err, 403, "needs the device's current LDevID")

	// OCSP and CRL: good, then revoked once an operator revokes.
	root, ca := writePEM(t, "root.crt", s.h.Root), writePEM(t, "device-ca.crt", s.h.DeviceCA())
	leaf, oldLeaf := writePEM(t, "leaf.crt", renewed), writePEM(t, "old.crt", ldev)
	out, _ := openssl(t, "ocsp", "-issuer", ca, "-cert", leaf, "-cert", oldLeaf, "-url", s.url+"/pki/ocsp", "-CAfile", root)
	if !strings.Contains(out, "Response verify OK") || strings.Count(out, ": good") != 2 || strings.Contains(out, "WARNING") {
		t.Errorf("openssl ocsp before the revocation:\n%s", out)
	}
	operator := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleOperator, Kind: "test", ID: "op"})
	if _, err := s.certs.RevokeCertificate(operator, cradle.SerialHex(renewed.SerialNumber), cradle.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	out, _ = openssl(t, "ocsp", "-issuer", ca, "-cert", leaf, "-url", s.url+"/pki/ocsp", "-CAfile", root)
	if !strings.Contains(out, leaf+": revoked") || !strings.Contains(out, "keyCompromise") || strings.Contains(out, "WARNING") {
		t.Errorf("openssl ocsp after the revocation:\n%s", out)
	}
	crlPath := filepath.Join(t.TempDir(), "device-ca.crl")
	if err := os.WriteFile(crlPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: s.fetch(t, "/pki/crl/device-ca.crl")}), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, ok := openssl(t, "verify", "-crl_check", "-CAfile", root, "-untrusted", ca, "-CRLfile", crlPath, leaf); ok || !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check of the revoked certificate:\n%s", out)
	}
	if out, ok := openssl(t, "verify", "-crl_check", "-CAfile", root, "-untrusted", ca, "-CRLfile", crlPath, oldLeaf); !ok {
		t.Errorf("openssl verify -crl_check of a good certificate:\n%s", out)
	}
	// The revoked certificate no longer opens the listener.
	_, err = s.client(renewed, keyR).SimpleReenroll(ctx, csrR)
	wantStatus(t, "re-enrolling with a revoked certificate", err, 401, "was revoked")

	// Expiry: past the superseded certificate's notAfter it is refused.
	s.clock.Add(91 * 24 * time.Hour)
	_, err = s.client(ldev, key).SimpleReenroll(ctx, csrR)
	wantStatus(t, "an expired LDevID", err, 401, "expired at")
}

// TestProductionRefusesTestDevices: a device whose IDevID chains to a test
// root is refused by a production server.
func TestProductionRefusesTestDevices(t *testing.T) {
	s := newSystem(t, pki.ProfileTest, true)
	u := s.newUnit("SN-1", cradle.StateProvisioned)
	csr, _ := csrFor(t, "SN-1")
	_, err := s.client(u.idevid, u.key).SimpleEnroll(t.Context(), csr)
	wantStatus(t, "a test device on a production server", err, 401, "chains to a test root; this server runs the production profile")
}

func (s *system) fetch(t *testing.T, path string) []byte {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(s.h.Root)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(s.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	return b
}

// strangerCert is a client certificate from a CA the server does not know.
func strangerCert(t *testing.T, serial string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stranger"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{SerialNumber: serial},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, &key.PublicKey, caKey)
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// TestRotation: after a new device CA is introduced, re-enrollment with a
// certificate of the old one issues from the new one, cacerts serves both,
// and the old certificate stays valid until it expires.
func TestRotation(t *testing.T) {
	s := newSystem(t, pki.ProfileTest, false)
	ctx := t.Context()
	u := s.newUnit("SN-1", cradle.StateProvisioned)
	csr, key := csrFor(t, "SN-1")
	old, err := s.client(u.idevid, u.key).SimpleEnroll(ctx, csr)
	if err != nil {
		t.Fatal(err)
	}
	keyFunc := func(name string) (crypto.Signer, error) {
		if k, ok := s.keys[name]; ok {
			return k, nil
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		s.keys[name] = k
		return k, err
	}
	name, err := s.h.RotateDeviceCA(ctx, s.keys[pki.NameRoot], keyFunc, "127.0.0.1", s.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	cas, err := s.client(nil, nil).CACerts(ctx)
	if err != nil || len(cas) != 4 {
		t.Errorf("cacerts after the rotation: %d certificates, %v; want both device CAs, the manufacturing CA and the root", len(cas), err)
	}
	csrR, _ := csrLike(t, old)
	renewed, err := s.client(old, key).SimpleReenroll(ctx, csrR)
	if err != nil {
		t.Fatalf("re-enroll with the old CA's certificate: %v", err)
	}
	if err := renewed.CheckSignatureFrom(s.h.DeviceCA()); err != nil || s.h.DeviceCAName() != name {
		t.Errorf("the renewed certificate is not from the new device CA %s: %v", name, err)
	}
	if !strings.Contains(renewed.CRLDistributionPoints[0], name+".crl") {
		t.Errorf("the renewed certificate's CRL is %v, want the new CA's", renewed.CRLDistributionPoints)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(s.h.Root)
	for _, c := range s.h.DeviceCAs {
		inter.AddCert(c)
	}
	for _, c := range []*x509.Certificate{old, renewed} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: s.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("certificate from %s does not verify after the rotation: %v", c.Issuer, err)
		}
	}
	// Both CAs publish a CRL.
	for _, n := range []string{pki.DeviceCAName(0), name} {
		if _, err := s.auth.CRL(ctx, n); err != nil {
			t.Errorf("CRL of %s: %v", n, err)
		}
	}
}
