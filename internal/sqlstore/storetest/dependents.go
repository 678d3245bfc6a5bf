package storetest

import (
	"encoding/hex"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// testCertificateDependents: CertificateDependents counts an issuer's
// certificates that are neither expired nor revoked, superseded ones
// included, across tenants, with the latest expiry; only the system role
// may ask.
func testCertificateDependents(t *testing.T, e *Env) {
	ca, other := newTestCA(t), newTestCA(t)
	certs := sqlstore.NewCertificateService(e.DB)
	issuer := hex.EncodeToString(ca.cert.SubjectKeyId)
	sys := e.As(0, cradle.RoleSystem)
	count := func(at time.Time) (int, time.Time) {
		t.Helper()
		n, last, err := certs.CertificateDependents(sys, issuer, at)
		if err != nil {
			t.Fatal(err)
		}
		return n, last
	}
	if n, last := count(e.Clock.Now()); n != 0 || !last.IsZero() {
		t.Fatalf("no certificates: %d, %v", n, last)
	}
	var serials []string
	for i, name := range []string{"acme", "globex"} {
		tn, admin := e.Tenant(name, cradle.RoleAdmin)
		if _, err := e.Devices.CreateDevice(admin, cradle.DeviceCreate{Serial: "SN-1", Model: "m", State: cradle.StateProvisioned}); err != nil {
			t.Fatal(err)
		}
		c, err := certs.IssueCertificate(asDevice(tn.ID, "SN-1"), cradle.CertificateIssue{DeviceSerial: "SN-1", Kind: cradle.CertLDevID, Deploy: true,
			States: []cradle.State{cradle.StateProvisioned}, Issue: ca.issue(t, e, time.Duration(30+i*30)*24*time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, c.Serial)
		// Its renewal supersedes it; both count.
		e.Clock.Add(time.Hour)
		if _, err := certs.IssueCertificate(asDevice(tn.ID, "SN-1"), cradle.CertificateIssue{DeviceSerial: "SN-1", Kind: cradle.CertLDevID, Renews: c.Serial,
			States: []cradle.State{cradle.StateDeployed}, Issue: other.issue(t, e, 90*24*time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	now := e.Clock.Now()
	if n, last := count(now); n != 2 || !last.Equal(Epoch.Add(60*24*time.Hour+time.Hour)) {
		t.Fatalf("two certificates of the issuer: %d, last %v", n, last)
	}
	admin := e.As(0, cradle.RoleAdmin)
	if _, _, err := certs.CertificateDependents(admin, issuer, now); cradle.ErrorCode(err) != cradle.EFORBIDDEN {
		t.Errorf("an admin asks: %v", err)
	}
	// One expires, the other is revoked.
	if n, _ := count(Epoch.Add(45 * 24 * time.Hour)); n != 1 {
		t.Errorf("after the first expires: %d", n)
	}
	tn2, _ := e.Tenants.FindTenantByName(sys, "globex")
	if _, err := certs.RevokeCertificate(e.As(tn2.ID, cradle.RoleAdmin), serials[1], cradle.ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if n, last := count(now); n != 1 || !last.Equal(Epoch.Add(30*24*time.Hour)) {
		t.Errorf("after the revocation: %d, last %v", n, last)
	}
}
