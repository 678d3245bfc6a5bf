package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// revokeKit is a compatKit with a CA, the certificate and revocation
// services, and a revocation notifier that records what it is told.
type revokeKit struct {
	*compatKit
	ca      *testCA
	certs   *sqlstore.CertificateService
	rev     *sqlstore.RevocationService
	mu      sync.Mutex
	told    []*cradle.Certificate
	factory context.Context
}

func newRevokeKit(t *testing.T, e *Env) *revokeKit {
	k := &revokeKit{compatKit: newCompatKit(t, e, "acme"), ca: newTestCA(t), certs: sqlstore.NewCertificateService(e.DB), rev: sqlstore.NewRevocationService(e.DB)}
	k.factory = e.As(k.tenant.ID, cradle.RoleFactory)
	e.DB.SetRevocationNotifier(func(cs []*cradle.Certificate) {
		k.mu.Lock()
		k.told = append(k.told, cs...)
		k.mu.Unlock()
	})
	return k
}

// notified returns and forgets the serials the notifier was told of.
func (k *revokeKit) notified() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, c := range k.told {
		out = append(out, c.Serial)
	}
	k.told = nil
	slices.Sort(out)
	return out
}

// enrolled makes a provisioned device with an IDevID recorded by the
// factory and an LDevID from its first enrollment (so it is deployed);
// it returns the two serials.
func (k *revokeKit) enrolled(serial string, macs ...string) (idevid, ldevid string) {
	k.t.Helper()
	k.newDevice(serial, cradle.StateProvisioned, macs...)
	cert, err := k.ca.issue(k.t, k.e, 20*365*24*time.Hour)(k.t.Context(), &cradle.Device{Serial: serial})
	if err != nil {
		k.t.Fatal(err)
	}
	id := must[*cradle.Certificate](k.t)(k.certs.RecordCertificate(k.factory, serial, cradle.CertIDevID, cert))
	ld := must[*cradle.Certificate](k.t)(k.certs.IssueCertificate(asDevice(k.tenant.ID, serial), k.enrollment(serial)))
	return id.Serial, ld.Serial
}

func (k *revokeKit) enrollment(serial string) cradle.CertificateIssue {
	return cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Deploy: true,
		States: []cradle.State{cradle.StateProvisioned, cradle.StateDeployed}, Issue: k.ca.issue(k.t, k.e, 90*24*time.Hour)}
}

func (k *revokeKit) certStatus(serial string) cradle.CertStatus {
	k.t.Helper()
	return must[*cradle.Certificate](k.t)(k.certs.FindCertificateBySerial(k.admin, serial)).Status
}

func (k *revokeKit) targetToken(serial string) *cradle.IssuedToken {
	k.t.Helper()
	return must[*cradle.IssuedToken](k.t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial}))
}

func testRevokeDevice(t *testing.T, e *Env) {
	k := newRevokeKit(t, e)
	idev, ldev := k.enrolled("SN-1", "02:00:00:00:00:01")
	_, keep := k.enrolled("SN-2")
	target, other := k.targetToken("SN-1"), k.targetToken("SN-2")
	req := menderRequest(t, "02:00:00:00:00:01", "SN-1")
	session := acceptedLogin(t, k.ps, k.sys, k.admin, req, "SN-1")
	k.notified()

	// Refusals first: nothing changes.
	_, err := k.rev.RevokeDevice(e.As(k.tenant.ID, cradle.RoleAuditor), "SN-1", cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.rev.RevokeDevice(k.admin, "SN-404", cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.rev.RevokeDevice(k.admin, "SN-1", cradle.ReasonRemoveFromCRL)
	wantCode(t, err, cradle.EINVALID)
	if k.certStatus(ldev) != cradle.CertValid {
		t.Fatal("a refused revocation revoked")
	}

	e.Clock.Add(time.Minute)
	r, err := k.rev.RevokeDevice(k.e.As(k.tenant.ID, cradle.RoleOperator), "SN-1", cradle.ReasonKeyCompromise)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string][]string{}
	for _, c := range r.Revoked {
		kinds[c.Kind] = append(kinds[c.Kind], c.ID)
		if !c.RevokedAt.Equal(e.Clock.Now()) {
			t.Errorf("credential %s revoked at %v, want %v", c.ID, c.RevokedAt, e.Clock.Now())
		}
	}
	want := map[string][]string{"certificate:idevid": {idev}, "certificate:ldevid": {ldev}, "token:target": {target.Token.ID},
		"token:mender": {session.Token.ID}, "mender-auth-set": nil}
	if r.Serial != "SN-1" || r.Reason != cradle.ReasonKeyCompromise || len(r.Revoked) != 5 || len(kinds["mender-auth-set"]) != 1 {
		t.Fatalf("revocation %+v", r)
	}
	for kind, ids := range want {
		if ids != nil && fmt.Sprint(kinds[kind]) != fmt.Sprint(ids) {
			t.Errorf("%s revoked: %v, want %v", kind, kinds[kind], ids)
		}
	}
	for _, s := range []string{idev, ldev} {
		c := must[*cradle.Certificate](t)(k.certs.FindCertificateBySerial(k.admin, s))
		if c.Status != cradle.CertRevoked || *c.Reason != cradle.ReasonKeyCompromise || !c.RevokedAt.Equal(e.Clock.Now()) {
			t.Errorf("certificate %s after the revocation: %+v", s, c)
		}
	}
	if got, want := k.notified(), slices.Sorted(slices.Values([]string{idev, ldev})); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the notifier was told of %v, want %v", got, want)
	}
	if got := k.lastActions(1); fmt.Sprint(got) != "[device.revoke]" {
		t.Errorf("audit: %v", got)
	}
	// Every channel refuses: tokens, the Mender key, a new key with the
	// same MAC (it waits for an operator instead of being admitted).
	for _, tok := range []string{target.Secret, session.Secret} {
		_, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok)
		wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	}
	_, _, err = k.ps.MenderAuthenticate(k.sys, req, time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "rejected")
	_, _, err = k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:00:01", "new key"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	// The other device keeps everything.
	if k.certStatus(keep) != cradle.CertValid {
		t.Error("the other device's LDevID was revoked")
	}
	if _, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), other.Secret); err != nil {
		t.Errorf("the other device's token: %v", err)
	}
	// Twice: nothing left, nothing listed; still audited.
	again, err := k.rev.RevokeDevice(k.admin, "SN-1", cradle.ReasonKeyCompromise)
	if err != nil || len(again.Revoked) != 0 {
		t.Errorf("second revocation: %+v, %v", again, err)
	}
	if got := k.notified(); len(got) != 0 {
		t.Errorf("a revocation of nothing told the notifier of %v", got)
	}
	for _, v := range verifyAll(t, e) {
		if !v.OK {
			t.Errorf("audit chain of tenant %d broken", v.TenantID)
		}
	}
}

func testRevokeDevicesBulk(t *testing.T, e *Env) {
	k := newRevokeKit(t, e)
	const n = 2*500 + 7 // more than two statements' worth (revokeBatch)
	var ldevs []string
	for i := range n {
		serial := fmt.Sprintf("B-%04d", i)
		_, l := k.enrolled(serial)
		ldevs = append(ldevs, l)
		if _, err := e.Devices.UpdateDevice(k.admin, serial, cradle.DeviceUpdate{SetLabels: map[string]string{"site": "lyon"}}); err != nil {
			t.Fatal(err)
		}
	}
	_, spared := k.enrolled("C-0001")
	tok := k.targetToken("B-0003")
	k.notified()

	_, err := k.rev.RevokeDevices(k.admin, "", cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.EINVALID, "empty")
	_, err = k.rev.RevokeDevices(k.admin, "site=(", cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.EINVALID)
	_, err = k.rev.RevokeDevices(e.As(k.tenant.ID, cradle.RoleAuditor), "site=lyon", cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.EFORBIDDEN)

	before := k.head(k.tenant.ID)
	r, err := k.rev.RevokeDevices(k.admin, "site=lyon", cradle.ReasonCACompromise)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Devices) != n || r.Devices[0] != "B-0000" || r.Certificates != 2*n || r.Tokens != 1 || r.AuthSets != 0 || r.Selector != "site=lyon" {
		t.Errorf("bulk revocation: %d devices, %d certificates, %d tokens, %d sets, selector %q", len(r.Devices), r.Certificates, r.Tokens, r.AuthSets, r.Selector)
	}
	if k.head(k.tenant.ID) != before+1 {
		t.Errorf("the bulk revocation wrote %d audit entries, want 1", k.head(k.tenant.ID)-before)
	}
	if got := k.notified(); len(got) != 2*n {
		t.Errorf("the notifier was told of %d certificates, want %d", len(got), 2*n)
	}
	if c := k.count(`SELECT COUNT(*) FROM certificates WHERE status = 'revoked' AND reason = ?`, int(cradle.ReasonCACompromise)); c != 2*n {
		t.Errorf("%d certificates revoked in the database, want %d", c, 2*n)
	}
	for _, s := range []string{ldevs[0], ldevs[n-1]} {
		if k.certStatus(s) != cradle.CertRevoked {
			t.Errorf("LDevID %s not revoked", s)
		}
	}
	if k.certStatus(spared) != cradle.CertValid {
		t.Error("a device the selector does not match was revoked")
	}
	_, err = k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	// The CRL's source lists them all.
	sys := e.As(0, cradle.RoleSystem)
	c := must[*cradle.Certificate](t)(k.certs.FindCertificateBySerial(k.admin, ldevs[0]))
	entries := must[[]cradle.RevokedEntry](t)(k.certs.RevokedCertificates(sys, c.Issuer, e.Clock.Now()))
	if len(entries) != 2*n {
		t.Errorf("RevokedCertificates lists %d, want %d", len(entries), 2*n)
	}
}

func testRevokeOnRMA(t *testing.T, e *Env) {
	k := newRevokeKit(t, e)
	idev, ldev := k.enrolled("SN-R", "02:00:00:00:00:07")
	_, keep := k.enrolled("SN-K")
	target := k.targetToken("SN-R")
	req := menderRequest(t, "02:00:00:00:00:07", "SN-R")
	acceptedLogin(t, k.ps, k.sys, k.admin, req, "SN-R")
	telemetry := sqlstore.NewTelemetryService(e.DB)
	if err := telemetry.RecordTelemetry(asDevice(k.tenant.ID, "SN-R"), "SN-R", []cradle.TelemetryPoint{{Metric: "health.cpu_pct", Value: 21, Time: e.Clock.Now()}}); err != nil {
		t.Fatal(err)
	}
	k.notified()

	e.Clock.Add(time.Hour)
	if _, err := e.Devices.TransitionDevice(k.e.As(k.tenant.ID, cradle.RoleOperator), "SN-R", cradle.DeviceTransition{To: cradle.StateRMA, Reason: "radio dead"}); err != nil {
		t.Fatal(err)
	}
	if k.certStatus(ldev) != cradle.CertRevoked || k.certStatus(idev) != cradle.CertValid || k.certStatus(keep) != cradle.CertValid {
		t.Errorf("after rma: LDevID %s, IDevID %s, other device %s; want revoked, valid, valid", k.certStatus(ldev), k.certStatus(idev), k.certStatus(keep))
	}
	if got := k.notified(); fmt.Sprint(got) != fmt.Sprint([]string{ldev}) {
		t.Errorf("the notifier was told of %v, want [%s]", got, ldev)
	}
	if got := k.lastActions(2); fmt.Sprint(got) != "[device.transition device.credentials.revoke]" {
		t.Errorf("audit after the move to rma: %v", got)
	}
	_, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), target.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	if n := k.count(`SELECT COUNT(*) FROM mender_auth_sets WHERE status = 'rejected' AND reason LIKE '%rma%'`); n != 1 {
		t.Errorf("%d auth sets rejected for the rma, want 1", n)
	}

	// The factory re-provisions it; it enrolls with its IDevID and gets a
	// new LDevID; the old one stays revoked and its history stays.
	if _, err := e.Devices.TransitionDevice(k.factory, "SN-R", cradle.DeviceTransition{To: cradle.StateProvisioned, Reason: "repaired"}); err != nil {
		t.Fatal(err)
	}
	renewed, err := k.certs.IssueCertificate(asDevice(k.tenant.ID, "SN-R"), k.enrollment("SN-R"))
	if err != nil {
		t.Fatalf("re-enrollment after repair: %v", err)
	}
	if renewed.Serial == ldev || renewed.Status != cradle.CertValid || k.certStatus(ldev) != cradle.CertRevoked {
		t.Errorf("after repair: new %s (%s), old %s", renewed.Serial, renewed.Status, k.certStatus(ldev))
	}
	var path []cradle.State
	for _, h := range must[[]*cradle.StateChange](t)(e.Devices.FindDeviceHistory(k.admin, "SN-R")) {
		path = append(path, h.To)
	}
	if fmt.Sprint(path) != "[provisioned deployed rma provisioned deployed]" {
		t.Errorf("history %v", path)
	}
	if n := k.count(`SELECT COUNT(*) FROM telemetry_points t JOIN devices d ON d.id = t.device_id WHERE d.serial = 'SN-R'`); n != 1 {
		t.Errorf("%d telemetry points kept, want 1", n)
	}
}
