package ocsp_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki/ocsp"
)

// quietLog discards the responder's logs.
var quietLog = slog.New(slog.DiscardHandler)

// t0 is the tests' fixed time.
var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// testClock is a settable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// memSource is a Source over a map, counting calls.
type memSource struct {
	mu     sync.Mutex
	status map[string]ocsp.Status // issuer subject + "/" + serial hex
	err    error
	calls  int
}

func newMemSource() *memSource { return &memSource{status: map[string]ocsp.Status{}} }

func srcKey(issuer *x509.Certificate, serial *big.Int) string {
	return issuer.Subject.String() + "/" + serial.Text(16)
}

func (s *memSource) Set(issuer *x509.Certificate, serial *big.Int, st ocsp.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status[srcKey(issuer, serial)] = st
}

func (s *memSource) Calls() int { s.mu.Lock(); defer s.mu.Unlock(); return s.calls }

func (s *memSource) Status(_ context.Context, issuer *x509.Certificate, serial *big.Int) (ocsp.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return ocsp.Status{}, s.err
	}
	st, ok := s.status[srcKey(issuer, serial)]
	if !ok {
		return ocsp.Status{State: ocsp.Unknown}, nil
	}
	return st, nil
}

// testCA is a CA with a delegated OCSP responder and leaves.
type testCA struct {
	cert      *x509.Certificate
	key       crypto.Signer
	resp      *x509.Certificate
	respKey   crypto.Signer
	leaves    []*x509.Certificate
	issuerArg ocsp.Issuer
}

var serialSeq = big.NewInt(0x1000)
var serialMu sync.Mutex

func nextSerial() *big.Int {
	serialMu.Lock()
	defer serialMu.Unlock()
	serialSeq = new(big.Int).Add(serialSeq, big.NewInt(0x10001))
	return new(big.Int).Set(serialSeq)
}

func ecKey(t testing.TB, c elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func create(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl // self-signed
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCA makes a CA named name with key caKey, a delegated responder with
// respKey (nil: P-256) and n leaves.
func newCA(t testing.TB, name string, caKey, respKey crypto.Signer, n int) *testCA {
	t.Helper()
	if caKey == nil {
		caKey = ecKey(t, elliptic.P256())
	}
	if respKey == nil {
		respKey = ecKey(t, elliptic.P256())
	}
	// Valid now, for openssl, which checks with the real clock.
	nb, na := time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour)
	ca := &testCA{key: caKey, respKey: respKey}
	ca.cert = create(t, &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name, Organization: []string{"Cradle test"}},
		NotBefore: nb, NotAfter: na, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, caKey.Public(), caKey)
	noCheck, _ := asn1.Marshal(asn1.NullRawValue)
	ca.resp = create(t, &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " OCSP responder"},
		NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		ExtraExtensions: []pkix.Extension{{Id: ocsp.OIDNoCheck, Value: noCheck}},
	}, ca.cert, respKey.Public(), caKey)
	for i := range n {
		k := ecKey(t, elliptic.P256())
		ca.leaves = append(ca.leaves, create(t, &x509.Certificate{
			SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " leaf " + string(rune('1'+i))},
			NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, ca.cert, k.Public(), caKey))
	}
	ca.issuerArg = ocsp.Issuer{Cert: ca.cert, ResponderCert: ca.resp, Signer: respKey}
	return ca
}

func ed25519Key(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// certID returns the DER of a CertID for cert under issuer with hash h.
func certID(t testing.TB, h crypto.Hash, issuer *x509.Certificate, serial *big.Int) asn1.RawValue {
	t.Helper()
	var spki struct {
		Alg asn1.RawValue
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		t.Fatal(err)
	}
	var oid asn1.ObjectIdentifier
	var nh, kh []byte
	switch h {
	case crypto.SHA1:
		oid = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
		a, b := sha1.Sum(issuer.RawSubject), sha1.Sum(spki.Key.Bytes)
		nh, kh = a[:], b[:]
	case crypto.SHA256:
		oid = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
		a, b := sha256.Sum256(issuer.RawSubject), sha256.Sum256(spki.Key.Bytes)
		nh, kh = a[:], b[:]
	default:
		t.Fatalf("certID: hash %v", h)
	}
	der, err := asn1.Marshal(struct {
		Alg    pkix.AlgorithmIdentifier
		NH, KH []byte
		Serial *big.Int
	}{pkix.AlgorithmIdentifier{Algorithm: oid, Parameters: asn1.NullRawValue}, nh, kh, serial})
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{FullBytes: der}
}

// asn1RV is a DER element.
type asn1RV = asn1.RawValue

type reqSpec struct {
	ids     []asn1.RawValue
	nonce   []byte // extnValue, nil: none
	version int
	exts    []pkix.Extension // more request extensions
	signed  bool
}

// buildRequest encodes an OCSPRequest.
func buildRequest(t testing.TB, s reqSpec) []byte {
	t.Helper()
	type single struct{ ID asn1.RawValue }
	type tbs struct {
		Version int `asn1:"optional,explicit,tag:0,default:0"`
		List    []single
		Exts    []pkix.Extension `asn1:"optional,explicit,tag:2"`
	}
	var x tbs
	x.Version = s.version
	for _, id := range s.ids {
		x.List = append(x.List, single{id})
	}
	if s.nonce != nil {
		x.Exts = append(x.Exts, pkix.Extension{Id: ocsp.OIDNonce, Value: s.nonce})
	}
	x.Exts = append(x.Exts, s.exts...)
	var der []byte
	var err error
	if s.signed {
		type sig struct {
			Alg pkix.AlgorithmIdentifier
			Sig asn1.BitString
		}
		der, err = asn1.Marshal(struct {
			TBS tbs
			Sig sig `asn1:"explicit,tag:0"`
		}{x, sig{pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}, asn1.BitString{Bytes: []byte{1, 2, 3}, BitLength: 24}}})
	} else {
		der, err = asn1.Marshal(struct{ TBS tbs }{x})
	}
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// wrapNonce returns the extnValue openssl writes for nonce octets.
func wrapNonce(t testing.TB, b []byte) []byte {
	t.Helper()
	v, err := asn1.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// parsedResponse is the test's own reading of an OCSPResponse.
type parsedResponse struct {
	Status     int
	Singles    []parsedSingle
	Nonce      []byte // responseExtensions nonce extnValue
	ProducedAt time.Time
	TBS        []byte
	SigAlg     asn1.ObjectIdentifier
	Sig        []byte
	Certs      [][]byte
}

var sigAlgs = map[string]x509.SignatureAlgorithm{
	"1.2.840.10045.4.3.2":   x509.ECDSAWithSHA256,
	"1.2.840.10045.4.3.3":   x509.ECDSAWithSHA384,
	"1.2.840.10045.4.3.4":   x509.ECDSAWithSHA512,
	"1.3.101.112":           x509.PureEd25519,
	"1.2.840.113549.1.1.11": x509.SHA256WithRSA,
}

// verify checks the response's signature with the responder's certificate.
func (p parsedResponse) verify(t testing.TB, responder *x509.Certificate) x509.SignatureAlgorithm {
	t.Helper()
	alg, ok := sigAlgs[p.SigAlg.String()]
	if !ok {
		t.Fatalf("unexpected signature algorithm %v", p.SigAlg)
	}
	if err := responder.CheckSignature(alg, p.TBS, p.Sig); err != nil {
		t.Fatalf("response signature: %v", err)
	}
	return alg
}

type parsedSingle struct {
	CertID     []byte
	Status     int // 0 good, 1 revoked, 2 unknown (the CHOICE tag)
	ThisUpdate time.Time
	NextUpdate time.Time
}

func parseResponse(t testing.TB, der []byte) parsedResponse {
	t.Helper()
	var outer struct {
		Status asn1.Enumerated
		Bytes  struct {
			Type asn1.ObjectIdentifier
			Resp []byte
		} `asn1:"optional,explicit,tag:0"`
	}
	if rest, err := asn1.Unmarshal(der, &outer); err != nil || len(rest) != 0 {
		t.Fatalf("response does not parse: %v (%d trailing)", err, len(rest))
	}
	p := parsedResponse{Status: int(outer.Status)}
	if outer.Status != 0 {
		return p
	}
	var basic struct {
		TBS   asn1.RawValue
		Alg   pkix.AlgorithmIdentifier
		Sig   asn1.BitString
		Certs []asn1.RawValue `asn1:"optional,explicit,tag:0"`
	}
	if rest, err := asn1.Unmarshal(outer.Bytes.Resp, &basic); err != nil || len(rest) != 0 {
		t.Fatalf("basic response does not parse: %v", err)
	}
	var tbs struct {
		Version    int `asn1:"optional,explicit,tag:0,default:0"`
		RespID     asn1.RawValue
		ProducedAt time.Time `asn1:"generalized"`
		Responses  []struct {
			CertID     asn1.RawValue
			Status     asn1.RawValue
			ThisUpdate time.Time `asn1:"generalized"`
			NextUpdate time.Time `asn1:"generalized,explicit,tag:0,optional"`
		}
		Exts []pkix.Extension `asn1:"optional,explicit,tag:1"`
	}
	if rest, err := asn1.Unmarshal(basic.TBS.FullBytes, &tbs); err != nil || len(rest) != 0 {
		t.Fatalf("response data does not parse: %v", err)
	}
	p.TBS, p.SigAlg, p.Sig = basic.TBS.FullBytes, basic.Alg.Algorithm, basic.Sig.Bytes
	for _, c := range basic.Certs {
		p.Certs = append(p.Certs, c.FullBytes)
	}
	p.ProducedAt = tbs.ProducedAt
	for _, r := range tbs.Responses {
		p.Singles = append(p.Singles, parsedSingle{r.CertID.FullBytes, r.Status.Tag, r.ThisUpdate, r.NextUpdate})
	}
	for _, e := range tbs.Exts {
		if e.Id.Equal(ocsp.OIDNonce) {
			p.Nonce = e.Value
		}
	}
	return p
}

func writePEM(t testing.TB, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func reason(r cradle.RevocationReason) *cradle.RevocationReason { return &r }
