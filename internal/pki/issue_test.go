package pki_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/dsa" //nolint:staticcheck // a DSA key to refuse
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/pki"
)

func TestIDevIDProfile(t *testing.T) {
	p := sharedPKI(t, pki.ProfileTest)
	c := p.issueIDevID(t, "SN-0001", t0)

	if c.Subject.SerialNumber != "SN-0001" || c.Subject.CommonName != "SN-0001" || !cmp.Equal(c.Subject.Organization, []string{"Acme Devices"}) {
		t.Errorf("subject = %v", c.Subject)
	}
	if !c.NotAfter.Equal(time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)) {
		t.Errorf("notAfter = %v", c.NotAfter)
	}
	if !c.NotBefore.Equal(t0) {
		t.Errorf("notBefore = %v, want %v", c.NotBefore, t0)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature || !cmp.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || c.IsCA {
		t.Errorf("keyUsage %v, extKeyUsage %v, CA %v", c.KeyUsage, c.ExtKeyUsage, c.IsCA)
	}
	hwType, serial, ok, err := pki.ParseHardwareModuleName(c)
	if err != nil || !ok || !hwType.Equal(pki.OIDDefaultHardwareType) || string(serial) != "SN-0001" {
		t.Errorf("ParseHardwareModuleName = %v, %q, %v, %v", hwType, serial, ok, err)
	}
	// The raw notAfter is a GeneralizedTime 99991231235959Z.
	if !bytes.Contains(c.RawTBSCertificate, []byte("\x18\x0f99991231235959Z")) {
		t.Error("notAfter is not encoded as GeneralizedTime 99991231235959Z")
	}

	text := opensslText(t, c)
	for _, want := range []string{
		"serialNumber = SN-0001",
		"Not After : Dec 31 23:59:59 9999 GMT",
		// OpenSSL 3.0 names the otherName by its OID only.
		"othername: 1.3.6.1.5.5.7.8.4::",
		"OCSP - URI:https://cradle.example.test/pki/ocsp",
		"CA Issuers - URI:https://cradle.example.test/pki/ca/manufacturing-ca.crt",
		"URI:https://cradle.example.test/pki/crl/manufacturing-ca.crl",
		"Policy: 1.3.6.1.4.1.99999.1.1",
		"TLS Web Client Authentication",
		"Digital Signature",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	// openssl's own DER parser reads the SAN: otherName [0] with the
	// hardwareModuleName OID, [0] EXPLICIT, SEQUENCE { OID, OCTET STRING }.
	san := opensslSAN(t, c)
	for _, want := range []string{
		"cont [ 0 ]", "OBJECT            :1.3.6.1.5.5.7.8.4",
		"OBJECT            :" + pki.OIDDefaultHardwareType.String(),
		"OCTET STRING      :SN-0001",
	} {
		if !strings.Contains(san, want) {
			t.Errorf("openssl asn1parse of the SAN lacks %q:\n%s", want, san)
		}
	}
	if out, ok := openssl(t, "verify", "-CAfile", writePEM(t, "root.pem", p.h.Root), "-untrusted", writePEM(t, "int.pem", p.h.ManufacturingCA), "-purpose", "sslclient", writePEM(t, "leaf.pem", c)); !ok {
		t.Errorf("openssl verify refused the IDevID: %s", out)
	}
}

func TestIDevIDKeepsOtherNamesAndHardwareSerial(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	k := mustKey(t, "p256")
	hw := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55, 7}
	tmpl := &x509.Certificate{DNSNames: []string{"dev.example"}, URIs: []*url.URL{{Scheme: "urn", Opaque: "x:y"}}}
	c, err := pki.Issue(context.Background(), p.h.ManufacturingCA, p.key(t, pki.NameManufacturingCA), k.Public(), tmpl,
		pki.IDevID(pki.IDevIDConfig{CommonName: "Widget", HardwareType: hw}, "SN-2", []byte{0, 1, 0xff}, t0)...)
	if err != nil {
		t.Fatal(err)
	}
	gotType, gotSerial, ok, err := pki.ParseHardwareModuleName(c)
	if err != nil || !ok || !gotType.Equal(hw) || !bytes.Equal(gotSerial, []byte{0, 1, 0xff}) {
		t.Errorf("ParseHardwareModuleName = %v, %x, %v, %v", gotType, gotSerial, ok, err)
	}
	if c.Subject.CommonName != "Widget" || c.Subject.SerialNumber != "SN-2" || len(c.Subject.Organization) != 0 {
		t.Errorf("subject = %v", c.Subject)
	}
	if !cmp.Equal(c.DNSNames, []string{"dev.example"}) || len(c.URIs) != 1 || c.URIs[0].String() != "urn:x:y" {
		t.Errorf("SANs lost: DNS %v URIs %v", c.DNSNames, c.URIs)
	}
	if len(tmpl.ExtraExtensions) != 0 || tmpl.NotAfter != (time.Time{}) {
		t.Error("Issue changed the caller's template")
	}
	if _, _, ok, err := pki.ParseHardwareModuleName(p.issueLDevID(t, "SN-2", t0)); ok || err != nil {
		t.Errorf("LDevID: ParseHardwareModuleName ok %v err %v, want false, nil", ok, err)
	}
}

func TestLDevIDProfile(t *testing.T) {
	p := sharedPKI(t, pki.ProfileTest)
	c := p.issueLDevID(t, "SN-0001", t0)

	if c.Subject.SerialNumber != "SN-0001" || c.Subject.CommonName != "SN-0001" || !cmp.Equal(c.Subject.Organization, []string{"acme"}) {
		t.Errorf("subject = %v", c.Subject)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "urn:cradle:device:acme:SN-0001" {
		t.Errorf("URIs = %v", c.URIs)
	}
	tenant, serial, err := pki.DeviceFromCertificate(c)
	if err != nil || tenant != "acme" || serial != "SN-0001" {
		t.Errorf("DeviceFromCertificate = %q, %q, %v", tenant, serial, err)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got != 90*24*time.Hour {
		t.Errorf("lifetime = %v, want 90 days", got)
	}
	if got, want := pki.RenewAt(c), t0.Add(60*24*time.Hour); !got.Equal(want) {
		t.Errorf("RenewAt = %v, want %v", got, want)
	}
	if c.SerialNumber.Sign() <= 0 || len(c.SerialNumber.Bytes()) > 16 || c.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %x: want a positive random 128-bit number", c.SerialNumber)
	}
	if !bytes.Equal(c.AuthorityKeyId, p.h.DeviceCA().SubjectKeyId) || len(c.SubjectKeyId) != 20 {
		t.Errorf("AKI %x (CA SKI %x), SKI %x", c.AuthorityKeyId, p.h.DeviceCA().SubjectKeyId, c.SubjectKeyId)
	}
	text := opensslText(t, c)
	for _, want := range []string{
		"serialNumber = SN-0001", "O = acme",
		"URI:urn:cradle:device:acme:SN-0001",
		"OCSP - URI:https://cradle.example.test/pki/ocsp",
		"CA Issuers - URI:https://cradle.example.test/pki/ca/device-ca.crt",
		"URI:https://cradle.example.test/pki/crl/device-ca.crl",
		"Policy: 1.3.6.1.4.1.99999.1.1",
		"Not After : May 30 12:00:00 2026 GMT",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	if out, ok := openssl(t, "verify", "-CAfile", writePEM(t, "root.pem", p.h.Root), "-untrusted", writePEM(t, "int.pem", p.h.DeviceCA()), "-purpose", "sslclient", "-attime", "1772400000", writePEM(t, "leaf.pem", c)); !ok {
		t.Errorf("openssl verify refused the LDevID: %s", out)
	}
}

func TestLDevIDLifetime(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	ca, caKey := p.h.DeviceCA(), p.key(t, pki.NameDeviceCA)
	tests := []struct {
		name     string
		policy   pki.LDevIDPolicy
		now      time.Time
		want     time.Duration // 0: refused
		wantText string
	}{
		{"default", pki.LDevIDPolicy{}, t0, 90 * 24 * time.Hour, ""},
		{"one hour", pki.LDevIDPolicy{Lifetime: time.Hour}, t0, time.Hour, ""},
		{"under an hour", pki.LDevIDPolicy{Lifetime: 30 * time.Minute}, t0, 0, "invalid LDevID lifetime 30m0s"},
		{"min under an hour", pki.LDevIDPolicy{Lifetime: time.Hour, MinLifetime: time.Minute}, t0, 0, "min lifetime 1m0s: must be at least 1h0m0s"},
		{"over max", pki.LDevIDPolicy{Lifetime: 400 * 24 * time.Hour}, t0, 0, "must be between"},
		{"clamped to the CA", pki.LDevIDPolicy{}, ca.NotAfter.Add(-30 * 24 * time.Hour), 30 * 24 * time.Hour, ""},
		{"CA expires too soon", pki.LDevIDPolicy{}, ca.NotAfter.Add(-30 * time.Minute), 0, "rotate the device CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKey(t, "p256")
			c, err := pki.Issue(context.Background(), ca, caKey, k.Public(), &x509.Certificate{}, pki.LDevID(tt.policy, "acme", "SN-1", tt.now)...)
			if tt.want == 0 {
				wantRefusal(t, err, pki.RuleLDevIDLifetime, tt.wantText)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.NotAfter.Sub(c.NotBefore); got != tt.want {
				t.Errorf("lifetime = %v, want %v", got, tt.want)
			}
			if c.NotAfter.After(ca.NotAfter) {
				t.Errorf("notAfter %v after the CA's %v", c.NotAfter, ca.NotAfter)
			}
		})
	}
}

func TestLDevIDRefusesBadNames(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	k := mustKey(t, "p256")
	for _, tc := range []struct{ tenant, serial, want string }{
		{"Acme", "SN-1", "invalid tenant name"},
		{"acme", "SN:1", "invalid serial"},
		{"acme", "", "serial is required"},
	} {
		_, err := pki.Issue(context.Background(), p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{}, pki.LDevID(pki.LDevIDPolicy{}, tc.tenant, tc.serial, t0)...)
		wantRefusal(t, err, pki.RuleLDevID, tc.want)
	}
	_, err := pki.Issue(context.Background(), p.h.ManufacturingCA, p.key(t, pki.NameManufacturingCA), k.Public(), &x509.Certificate{}, pki.IDevID(pki.IDevIDConfig{}, "bad serial", nil, t0)...)
	wantRefusal(t, err, pki.RuleIDevID, "invalid serial")
}

func TestRenewAt(t *testing.T) {
	c := &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(3 * time.Hour)}
	if got := pki.RenewAt(c); !got.Equal(t0.Add(2 * time.Hour)) {
		t.Errorf("RenewAt = %v", got)
	}
	// Renewal under an injected clock: a device checks RenewAt against now.
	p := sharedPKI(t, pki.ProfileProduction)
	c = p.issueLDevID(t, "SN-R", t0)
	for _, tc := range []struct {
		now   time.Time
		renew bool
	}{
		{t0.Add(59 * 24 * time.Hour), false},
		{t0.Add(60 * 24 * time.Hour), true},
		{t0.Add(89 * 24 * time.Hour), true},
	} {
		if got := !tc.now.Before(pki.RenewAt(c)); got != tc.renew {
			t.Errorf("at %v: renew = %v, want %v", tc.now, got, tc.renew)
		}
	}
	if _, err := pki.VerifyDeviceChain(c, pool(p.h.DeviceCA()), pool(p.h.Root), true, t0.Add(91*24*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("VerifyDeviceChain after expiry: %v, want expired", err)
	}
}

type otherKey struct{}

func TestKeyPolicy(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	dsaKey := &dsa.PublicKey{Parameters: dsa.Parameters{P: big.NewInt(23), Q: big.NewInt(11), G: big.NewInt(4)}, Y: big.NewInt(8)}
	tests := []struct {
		name string
		pub  crypto.PublicKey
		want string // "" accepted
	}{
		{"P-256", mustKey(t, "p256").Public(), ""},
		{"P-384", mustKey(t, "p384").Public(), ""},
		{"Ed25519", mustKey(t, "ed25519").Public(), ""},
		{"RSA-2048", mustKey(t, "rsa2048").Public(), ""},
		{"RSA-1024", mustKey(t, "rsa1024").Public(), "RSA key of 1024 bits is below the 2048-bit minimum"},
		{"P-224", mustKey(t, "p224").Public(), "ECDSA curve P-224 is not allowed"},
		{"DSA", dsaKey, "DSA keys are not allowed"},
		{"unknown", otherKey{}, "key type pki_test.otherKey is not allowed"},
		{"short Ed25519", ed25519.PublicKey{1, 2, 3}, "Ed25519 key of 3 bytes is malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := append(pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-K", t0), pki.KeyPolicy())
			c, err := pki.Issue(context.Background(), p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), tt.pub, &x509.Certificate{}, opts...)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.pub) {
					t.Error("certificate is for another key")
				}
				return
			}
			wantRefusal(t, err, pki.RuleKeyPolicy, tt.want)
		})
	}
}

func TestSignatureAlgorithm(t *testing.T) {
	tests := []struct {
		kind string
		want x509.SignatureAlgorithm
	}{
		{"p256", x509.ECDSAWithSHA256},
		{"p384", x509.ECDSAWithSHA384},
		{"ed25519", x509.PureEd25519},
		{"rsa2048", x509.SHA256WithRSA},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			k := mustKey(t, tt.kind)
			got, err := pki.SignatureAlgorithm(k.Public())
			if err != nil || got != tt.want {
				t.Errorf("SignatureAlgorithm = %v, %v; want %v", got, err, tt.want)
			}
			// A root signed with that key uses it.
			root, err := pki.Issue(context.Background(), nil, k, k.Public(), &x509.Certificate{
				Subject: pkix.Name{CommonName: "r"}, NotBefore: t0, NotAfter: t0.Add(time.Hour),
				IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			})
			if err != nil {
				t.Fatal(err)
			}
			if root.SignatureAlgorithm != tt.want {
				t.Errorf("certificate signed with %v, want %v", root.SignatureAlgorithm, tt.want)
			}
		})
	}
	if _, err := pki.SignatureAlgorithm(mustKey(t, "p224").Public()); err == nil {
		t.Error("P-224: no error")
	}
}

func TestIssueRefusals(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	k := mustKey(t, "p256")
	leaf := p.issueLDevID(t, "SN-X", t0)
	tests := []struct {
		name   string
		issuer *x509.Certificate
		signer crypto.Signer
		pub    crypto.PublicKey
		tmpl   *x509.Certificate
		opts   []pki.Option
		rule   string
		want   string
	}{
		{"issuer not a CA", leaf, k, k.Public(), &x509.Certificate{}, pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-1", t0), "issuer", "is not a CA"},
		{"signer not the issuer's key", p.h.DeviceCA(), k, k.Public(), &x509.Certificate{}, pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-1", t0), "issuer", "signer's key is not the key of issuer"},
		{"self-signed for another key", nil, k, mustKey(t, "p256").Public(), &x509.Certificate{}, nil, "issuer", "signer's own key"},
		{"no validity", p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{Subject: pkix.Name{CommonName: "x"}}, nil, "template", "is not before notAfter"},
		{"names nothing", p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(time.Hour)}, nil, "template", "names nothing"},
		{"SAN fields beside a SAN extension", p.h.ManufacturingCA, p.key(t, pki.NameManufacturingCA), k.Public(), &x509.Certificate{}, append(pki.IDevID(pki.IDevIDConfig{}, "SN-1", nil, t0),
			pki.ModifyCertificateFunc("add-dns", func(tmpl, _ *x509.Certificate) error { tmpl.DNSNames = []string{"x.example"}; return nil })), "template", "would drop"},
		{"bad distribution URL", p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{}, append(pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-1", t0), pki.Distribution{OCSP: "/pki/ocsp"}), pki.RuleDistribution, "not an absolute http or https URL"},
		{"custom validator", p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{}, append(pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-1", t0),
			pki.ValidateCertificateFunc("no-acme", func(tmpl, _ *x509.Certificate) error {
				if tmpl.Subject.Organization[0] == "acme" {
					return errString("tenant acme is closed")
				}
				return nil
			})), "no-acme", "tenant acme is closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pki.Issue(context.Background(), tt.issuer, tt.signer, tt.pub, tt.tmpl, tt.opts...)
			wantRefusal(t, err, tt.rule, tt.want)
		})
	}
	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := pki.Issue(ctx, p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{}, pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-1", t0)...)
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Errorf("err = %v, want context canceled", err)
		}
	})
}

type errString string

func (e errString) Error() string { return string(e) }

func TestOptionOrder(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	k := mustKey(t, "p256")
	var trace []string
	opts := []pki.Option{
		pki.ValidateCertificateFunc("v", func(tmpl, _ *x509.Certificate) error {
			trace = append(trace, "validate:"+tmpl.Subject.CommonName+":serial="+boolStr(tmpl.SerialNumber != nil))
			return nil
		}),
		pki.ModifyCertificateFunc("m1", func(tmpl, _ *x509.Certificate) error {
			trace = append(trace, "modify1")
			tmpl.Subject.CommonName = "one"
			return nil
		}),
		pki.ValidateKeyFunc("k", func(crypto.PublicKey) error { trace = append(trace, "key"); return nil }),
		pki.ModifyCertificateFunc("m2", func(tmpl, _ *x509.Certificate) error {
			trace = append(trace, "modify2")
			tmpl.Subject.CommonName += "+two"
			tmpl.NotBefore, tmpl.NotAfter = t0, t0.Add(time.Hour)
			return nil
		}),
	}
	if _, err := pki.Issue(context.Background(), p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), &x509.Certificate{}, opts...); err != nil {
		t.Fatal(err)
	}
	want := []string{"key", "modify1", "modify2", "validate:one+two:serial=true"}
	if diff := cmp.Diff(want, trace); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func TestSerialsDiffer(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n, err := pki.NewSerial()
		if err != nil {
			t.Fatal(err)
		}
		if n.Sign() <= 0 || len(n.Bytes()) > 16 {
			t.Fatalf("serial %x out of range", n)
		}
		if seen[n.String()] {
			t.Fatalf("serial %x repeated", n)
		}
		seen[n.String()] = true
	}
}

func TestDeviceURI(t *testing.T) {
	u, err := pki.DeviceURI("acme", "SN_1.a-b")
	if err != nil || u.String() != "urn:cradle:device:acme:SN_1.a-b" {
		t.Fatalf("DeviceURI = %v, %v", u, err)
	}
	tests := []struct {
		in, tenant, serial string
		bad                bool
	}{
		{"urn:cradle:device:acme:SN_1.a-b", "acme", "SN_1.a-b", false},
		{"urn:cradle:device:t-2:9", "t-2", "9", false},
		{"URN:cradle:device:acme:SN1", "", "", true},
		{"urn:cradle:device:acme", "", "", true},
		{"urn:cradle:device:acme:SN1:x", "", "", true},
		{"urn:cradle:device::SN1", "", "", true},
		{"urn:cradle:device:acme:", "", "", true},
		{"urn:cradle:device:acme:SN%201", "", "", true},
		{"urn:cradle:device:ACME:SN1", "", "", true},
		{"https://example.com/", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			tenant, serial, err := pki.ParseDeviceURI(tt.in)
			if tt.bad {
				if err == nil {
					t.Errorf("ParseDeviceURI(%q) = %q, %q; want an error", tt.in, tenant, serial)
				}
				return
			}
			if err != nil || tenant != tt.tenant || serial != tt.serial {
				t.Errorf("ParseDeviceURI(%q) = %q, %q, %v", tt.in, tenant, serial, err)
			}
		})
	}
	if _, err := pki.DeviceURI("acme", "a:b"); err == nil {
		t.Error("DeviceURI accepted a serial with ':'")
	}
	if _, _, err := pki.DeviceFromCertificate(&x509.Certificate{}); err == nil {
		t.Error("DeviceFromCertificate accepted a certificate without a device URI")
	}
	two := &x509.Certificate{URIs: []*url.URL{mustParseURL(t, "urn:cradle:device:a:1"), mustParseURL(t, "urn:cradle:device:a:2")}}
	if _, _, err := pki.DeviceFromCertificate(two); err == nil || !strings.Contains(err.Error(), "names 2 devices") {
		t.Errorf("two device URIs: %v", err)
	}
}

func mustParseURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

var _ = ecdsa.GenerateKey

func TestLDevIDReplacesDeviceURI(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	k := mustKey(t, "p256")
	tmpl := &x509.Certificate{URIs: []*url.URL{mustParseURL(t, "urn:cradle:device:other:SN-9"), mustParseURL(t, "https://example.com/x")}}
	c, err := pki.Issue(context.Background(), p.h.DeviceCA(), p.key(t, pki.NameDeviceCA), k.Public(), tmpl, pki.LDevID(pki.LDevIDPolicy{}, "acme", "SN-9", t0)...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range c.URIs {
		got = append(got, u.String())
	}
	if diff := cmp.Diff([]string{"https://example.com/x", "urn:cradle:device:acme:SN-9"}, got); diff != "" {
		t.Errorf("URIs (-want +got):\n%s", diff)
	}
}

func TestURLs(t *testing.T) {
	got := pki.URLs("ca.example:8443", "device-ca-2")
	want := pki.Distribution{
		OCSP:               "https://ca.example:8443/pki/ocsp",
		IssuingCertificate: "https://ca.example:8443/pki/ca/device-ca-2.crt",
		CRL:                "https://ca.example:8443/pki/crl/device-ca-2.crl",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("URLs (-want +got):\n%s", diff)
	}
}
