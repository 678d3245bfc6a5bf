package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// testCA issues certificates for the certificate tests.
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
		NotBefore: Epoch.Add(-time.Hour), NotAfter: Epoch.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

// issue returns an Issue function that signs a certificate for the device
// valid for d from the test clock's now.
func (ca *testCA) issue(t *testing.T, e *Env, d time.Duration) func(context.Context, *cradle.Device) (*x509.Certificate, error) {
	return func(_ context.Context, dev *cradle.Device) (*x509.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			return nil, err
		}
		serial.Add(serial, big.NewInt(1))
		now := e.Clock.Now()
		tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: dev.Serial},
			NotBefore: now, NotAfter: now.Add(d), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
		if err != nil {
			return nil, err
		}
		return x509.ParseCertificate(der)
	}
}

// asDevice returns a context acting as the device itself.
func asDevice(tenantID int64, serial string) context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: tenantID, Role: cradle.RoleDevice, Kind: "device", ID: serial})
}

func testCertificates(t *testing.T, e *Env) {
	ca := newTestCA(t)
	certs := sqlstore.NewCertificateService(e.DB)
	tn, admin := e.Tenant("acme", cradle.RoleAdmin)
	for _, s := range []string{"SN-1", "SN-2"} {
		if _, err := e.Devices.CreateDevice(admin, cradle.DeviceCreate{Serial: s, Model: "m", State: cradle.StateProvisioned}); err != nil {
			t.Fatal(err)
		}
	}
	enroll := cradle.CertificateIssue{DeviceSerial: "SN-1", Kind: cradle.CertLDevID, Deploy: true,
		States: []cradle.State{cradle.StateProvisioned, cradle.StateDeployed}, Issue: ca.issue(t, e, 90*24*time.Hour)}

	// First enrollment: issued, recorded, the device deployed, all audited.
	first, err := certs.IssueCertificate(asDevice(tn.ID, "SN-1"), enroll)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if first.Status != cradle.CertValid || first.DeviceSerial != "SN-1" || first.Kind != cradle.CertLDevID || first.Issuer == "" || !first.NotAfter.Equal(Epoch.Add(90*24*time.Hour)) {
		t.Errorf("issued certificate record %+v", first)
	}
	if d, _ := e.Devices.FindDeviceBySerial(admin, "SN-1"); d.State != cradle.StateDeployed {
		t.Errorf("device after its first enrollment is %s, want deployed", d.State)
	}
	got, err := certs.FindCertificateBySerial(admin, first.Serial)
	if err != nil || string(got.DER) != string(first.DER) || got.Status != cradle.CertValid {
		t.Errorf("find by serial: %+v, %v", got, err)
	}
	for _, action := range []string{"certificate.issue", "device.transition"} {
		if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = ?`, tn.ID, action); n != 1 {
			t.Errorf("%d %s audit entries, want 1", n, action)
		}
	}

	// Refusals change nothing and are audited.
	before := count(t, e, `SELECT COUNT(*) FROM certificates`)
	other := enroll
	other.DeviceSerial = "SN-2"
	_, err = certs.IssueCertificate(asDevice(tn.ID, "SN-1"), other)
	wantCode(t, err, cradle.EFORBIDDEN)
	broken := enroll
	broken.Issue = func(context.Context, *cradle.Device) (*x509.Certificate, error) { return nil, errors.New("hsm gone") }
	if _, err := certs.IssueCertificate(asDevice(tn.ID, "SN-1"), broken); err == nil {
		t.Error("an issuance whose signing failed succeeded")
	}
	unknown := enroll
	unknown.DeviceSerial = "SN-404"
	_, err = certs.IssueCertificate(e.As(tn.ID, cradle.RoleSystem), unknown)
	wantCode(t, err, cradle.ENOTFOUND)
	if _, err := e.Devices.TransitionDevice(admin, "SN-2", cradle.DeviceTransition{To: cradle.StateRMA}); err != nil {
		t.Fatal(err)
	}
	rma := enroll
	rma.DeviceSerial = "SN-2"
	_, err = certs.IssueCertificate(asDevice(tn.ID, "SN-2"), rma)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = certs.IssueCertificate(admin, enroll)
	wantCode(t, err, cradle.EFORBIDDEN)
	if after := count(t, e, `SELECT COUNT(*) FROM certificates`); after != before {
		t.Errorf("refused issuances stored %d certificates", after-before)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = 'certificate.issue.refused'`, tn.ID); n != 4 {
		t.Errorf("%d certificate.issue.refused entries, want 4 (wrong device, failed signing, rma, admin)", n)
	}

	// Renewal supersedes the old certificate; the device stays deployed.
	e.Clock.Add(61 * 24 * time.Hour)
	renew := enroll
	renew.Renews = first.Serial
	second, err := certs.IssueCertificate(asDevice(tn.ID, "SN-1"), renew)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if old, _ := certs.FindCertificateBySerial(admin, first.Serial); old.Status != cradle.CertSuperseded || old.SupersededBy != second.Serial {
		t.Errorf("renewed certificate %+v, want superseded by %s", old, second.Serial)
	}

	// Listing and filters.
	list, next, err := certs.FindCertificates(admin, cradle.CertificateFilter{Limit: 1})
	if err != nil || len(list) != 1 || list[0].Serial != second.Serial || next == "" {
		t.Fatalf("first page: %v, %q, %v", list, next, err)
	}
	list, next, err = certs.FindCertificates(admin, cradle.CertificateFilter{Limit: 1, Cursor: next})
	if err != nil || len(list) != 1 || list[0].Serial != first.Serial || next != "" {
		t.Errorf("second page: %v, %q, %v", list, next, err)
	}
	soon := e.Clock.Now().Add(30 * 24 * time.Hour)
	if list, _, err := certs.FindCertificates(admin, cradle.CertificateFilter{ExpiringBefore: &soon}); err != nil || len(list) != 1 || list[0].Serial != first.Serial {
		t.Errorf("expiring within 30 days: %v, %v; want the superseded first certificate", list, err)
	}
	sn1 := "SN-1"
	valid := cradle.CertValid
	if list, _, err := certs.FindCertificates(admin, cradle.CertificateFilter{DeviceSerial: &sn1, Status: &valid}); err != nil || len(list) != 1 || list[0].Serial != second.Serial {
		t.Errorf("valid certificates of SN-1: %v, %v", list, err)
	}
	_, _, err = certs.FindCertificates(admin, cradle.CertificateFilter{Cursor: "garbage"})
	wantCode(t, err, cradle.EINVALID)

	// Another tenant sees none of it.
	_, otherAdmin := e.Tenant("globex", cradle.RoleAdmin)
	_, err = certs.FindCertificateBySerial(otherAdmin, second.Serial)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = certs.RevokeCertificate(otherAdmin, second.Serial, cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.ENOTFOUND)

	// Revocation.
	revoked, err := certs.RevokeCertificate(e.As(tn.ID, cradle.RoleOperator), second.Serial, cradle.ReasonKeyCompromise)
	if err != nil || revoked.Status != cradle.CertRevoked || *revoked.Reason != cradle.ReasonKeyCompromise || !revoked.RevokedAt.Equal(e.Clock.Now()) {
		t.Fatalf("revoke: %+v, %v", revoked, err)
	}
	_, err = certs.RevokeCertificate(admin, second.Serial, cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.ECONFLICT)
	_, err = certs.RevokeCertificate(e.As(tn.ID, cradle.RoleAuditor), first.Serial, cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = certs.RevokeCertificate(admin, first.Serial, cradle.ReasonRemoveFromCRL)
	wantCode(t, err, cradle.EINVALID)
	renewRevoked := enroll
	renewRevoked.Renews = second.Serial
	_, err = certs.IssueCertificate(asDevice(tn.ID, "SN-1"), renewRevoked)
	wantCode(t, err, cradle.EFORBIDDEN)

	// Revoking by device takes what is left.
	all, err := certs.RevokeDeviceCertificates(admin, "SN-1", cradle.ReasonCessationOfOperation)
	if err != nil || len(all) != 1 || all[0].Serial != first.Serial {
		t.Errorf("revoke by device: %v, %v; want the first certificate only", all, err)
	}
	_, err = certs.RevokeDeviceCertificates(admin, "SN-404", cradle.ReasonUnspecified)
	wantCode(t, err, cradle.ENOTFOUND)

	// The PKI's cross-tenant views are for the system only.
	sys := e.As(0, cradle.RoleSystem)
	n, _ := cradle.ParseSerialHex(second.Serial)
	if c, err := certs.LookupCertificate(sys, n); err != nil || c.TenantID != tn.ID || c.Status != cradle.CertRevoked {
		t.Errorf("lookup: %+v, %v", c, err)
	}
	_, err = certs.LookupCertificate(admin, n)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = certs.LookupCertificate(sys, big.NewInt(12345))
	wantCode(t, err, cradle.ENOTFOUND)
	entries, err := certs.RevokedCertificates(sys, first.Issuer, e.Clock.Now())
	gotReasons := map[string]cradle.RevocationReason{}
	for _, en := range entries {
		gotReasons[cradle.SerialHex(en.Serial)] = en.Reason
	}
	wantReasons := map[string]cradle.RevocationReason{second.Serial: cradle.ReasonKeyCompromise, first.Serial: cradle.ReasonCessationOfOperation}
	if err != nil || len(entries) != 2 || !maps.Equal(gotReasons, wantReasons) {
		t.Errorf("revoked entries: %+v, %v; want %v", entries, err, wantReasons)
	}
	// An expired certificate leaves the CRL.
	if entries, _ := certs.RevokedCertificates(sys, first.Issuer, Epoch.Add(200*24*time.Hour)); len(entries) != 0 {
		t.Errorf("revoked entries after every certificate expired: %+v", entries)
	}

	// CRL numbers increase strictly, also under concurrency.
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := certs.NextCRLNumber(sys, first.Issuer)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[n.Int64()] {
				t.Errorf("CRL number %d handed out twice", n)
			}
			seen[n.Int64()] = true
		}()
	}
	wg.Wait()
	for i := int64(1); i <= 8; i++ {
		if !seen[i] {
			t.Errorf("CRL numbers %v, want 1 to 8", seen)
			break
		}
	}
	if n, err := certs.NextCRLNumber(sys, "another-issuer"); err != nil || n.Int64() != 1 {
		t.Errorf("first CRL number of another issuer: %v, %v", n, err)
	}

	// Recording an IDevID from the factory; a serial is recorded once.
	idev, err := ca.issue(t, e, 100*365*24*time.Hour)(context.Background(), &cradle.Device{Serial: "SN-2"})
	if err != nil {
		t.Fatal(err)
	}
	factory := e.As(tn.ID, cradle.RoleFactory)
	if c, err := certs.RecordCertificate(factory, "SN-2", cradle.CertIDevID, idev); err != nil || c.Kind != cradle.CertIDevID {
		t.Errorf("record an IDevID: %+v, %v", c, err)
	}
	_, err = certs.RecordCertificate(factory, "SN-2", cradle.CertIDevID, idev)
	wantCode(t, err, cradle.ECONFLICT)

	// The audit chain holds.
	for _, v := range verifyAll(t, e) {
		if !v.OK {
			t.Errorf("tenant %d chain broken: %+v", v.TenantID, v.Broken)
		}
	}
}

func verifyAll(t *testing.T, e *Env) []*cradle.AuditVerification {
	t.Helper()
	all, err := e.Audit.VerifyAll(context.Background())
	if err != nil {
		t.Fatal(fmt.Errorf("verify: %w", err))
	}
	return all
}
