package httpapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
)

// testCA signs device certificates for the certificate routes' tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test device CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(100 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) issue(now time.Time, d time.Duration) func(context.Context, *cradle.Device) (*x509.Certificate, error) {
	return func(_ context.Context, dev *cradle.Device) (*x509.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{SerialNumber: serial.Add(serial, big.NewInt(1)), Subject: pkix.Name{CommonName: dev.Serial},
			NotBefore: now, NotAfter: now.Add(d), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
		if err != nil {
			return nil, err
		}
		return x509.ParseCertificate(der)
	}
}

// TestCertificates drives the certificate routes through the client.
func TestCertificates(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	c := e.client(cradle.RoleOperator)
	first := e.issueCert("SN-1")
	second := e.issueCert("SN-2")

	got, err := c.FindCertificateBySerial(ctx, first)
	if err != nil || got.DeviceSerial != "SN-1" || got.Status != cradle.CertValid || got.Kind != cradle.CertLDevID {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if parsed, err := x509.ParseCertificate(got.DER); err != nil || parsed.Subject.CommonName != "SN-1" {
		t.Errorf("the PEM of the certificate: %v, %v", parsed, err)
	}
	// Serials in the colon form tools print are understood.
	var colons []string
	hexs := strings.Repeat("0", len(first)%2) + first
	for i := 0; i < len(hexs); i += 2 {
		colons = append(colons, strings.ToUpper(hexs[i:i+2]))
	}
	if got, err := c.FindCertificateBySerial(ctx, strings.Join(colons, ":")); err != nil || got.Serial != first {
		t.Errorf("get by %s: %+v, %v", strings.Join(colons, ":"), got, err)
	}

	soon := e.clock.Now().Add(100 * 24 * time.Hour)
	list, next, err := c.FindCertificates(ctx, cradle.CertificateFilter{ExpiringBefore: &soon})
	if err != nil || len(list) != 2 || next != "" {
		t.Errorf("expiring within 100 days: %v, %q, %v", list, next, err)
	}
	dev := "SN-2"
	if list, _, err := c.FindCertificates(ctx, cradle.CertificateFilter{DeviceSerial: &dev}); err != nil || len(list) != 1 || list[0].Serial != second {
		t.Errorf("certificates of SN-2: %v, %v", list, err)
	}

	r, err := c.RevokeCertificate(ctx, first, cradle.ReasonKeyCompromise)
	if err != nil || r.Status != cradle.CertRevoked || r.Reason == nil || *r.Reason != cradle.ReasonKeyCompromise {
		t.Fatalf("revoke: %+v, %v", r, err)
	}
	if _, err := c.RevokeCertificate(ctx, first, cradle.ReasonKeyCompromise); cradle.ErrorCode(err) != cradle.ECONFLICT || !strings.Contains(cradle.ErrorMessage(err), "already revoked") {
		t.Errorf("revoking twice: %v", err)
	}
	revoked := cradle.CertRevoked
	if list, _, err := c.FindCertificates(ctx, cradle.CertificateFilter{Status: &revoked}); err != nil || len(list) != 1 || list[0].Serial != first {
		t.Errorf("revoked certificates: %v, %v", list, err)
	}
	all, err := c.RevokeDeviceCertificates(ctx, "SN-2", cradle.ReasonCessationOfOperation)
	if err != nil || len(all) != 1 || all[0].Serial != second {
		t.Errorf("revoke SN-2's certificates: %v, %v", all, err)
	}

	for _, tc := range []struct{ name, path, body, want string }{
		{"unknown reason", "/api/v1/certificates/" + second + "/revoke", `{"reason":"boredom"}`, `unknown revocation reason "boredom"`},
		{"no reason", "/api/v1/certificates/" + second + "/revoke", `{}`, "say why"},
		{"bad serial", "/api/v1/certificates/xyz/revoke", `{"reason":"superseded"}`, `invalid certificate serial "xyz"`},
	} {
		resp := e.doJSON("POST", tc.path, e.tokens[cradle.RoleAdmin], tc.body)
		if got := resp.errorBody(t); resp.status != 400 || !strings.Contains(got.Message, tc.want) {
			t.Errorf("%s: %d %+v; want 400 mentioning %q", tc.name, resp.status, got, tc.want)
		}
	}
	for _, q := range []string{"status=lost", "expiring_before=tomorrow", "cursor=zz"} {
		if resp := e.do("GET", "/api/v1/certificates?"+q, e.tokens[cradle.RoleAdmin], "", nil); resp.status != 400 {
			t.Errorf("?%s: %d %s", q, resp.status, resp.body)
		}
	}
	// Recording an IDevID: the factory may, once per serial; bad input is refused.
	e.createDevice("SN-F", cradle.StateFactory)
	idev, err := e.ca.issue(e.clock.Now(), time.Hour)(ctx, &cradle.Device{Serial: "SN-F"})
	if err != nil {
		t.Fatal(err)
	}
	factory := e.client(cradle.RoleFactory)
	if c, err := factory.RecordCertificate(ctx, "SN-F", cradle.CertIDevID, idev); err != nil || c.Kind != cradle.CertIDevID || c.DeviceSerial != "SN-F" {
		t.Errorf("record an IDevID: %+v, %v", c, err)
	}
	if _, err := factory.RecordCertificate(ctx, "SN-F", cradle.CertIDevID, idev); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("recording it again: %v", err)
	}
	if _, err := factory.RecordCertificate(ctx, "SN-404", cradle.CertIDevID, idev); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("recording for an unknown device: %v", err)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"kind":"ldevid","pem":"x"}`, "only idevid certificates"},
		{`{"kind":"idevid","pem":"not pem"}`, "exactly one PEM block"},
		{`{"kind":"idevid","pem":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}`, "does not parse"},
	} {
		resp := e.doJSON("POST", "/api/v1/devices/SN-F/certificates", e.tokens[cradle.RoleFactory], tc.body)
		if got := resp.errorBody(t); resp.status != 400 || !strings.Contains(got.Message, tc.want) {
			t.Errorf("record %s: %d %+v; want 400 mentioning %q", tc.body, resp.status, got, tc.want)
		}
	}

	// Another tenant's certificates do not exist for it.
	other := httpapi.NewClient(e.url, e.other, nil)
	if _, err := other.FindCertificateBySerial(ctx, second); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("another tenant's certificate: %v", err)
	}
}
