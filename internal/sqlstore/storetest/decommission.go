package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"maps"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// decomKit is a tenant with the decommissioning store, a certificate
// store and a test CA whose device keys it keeps (tombstones are signed
// with them).
type decomKit struct {
	*compatKit
	svc   *sqlstore.DecommissionService
	certs *sqlstore.CertificateService
	ca    *testCA
	// executed records OnExecuted's calls: serial → revoked serials.
	executed map[string][]string
}

func newDecomKit(t *testing.T, e *Env, tenant string) *decomKit {
	t.Helper()
	h, keys := commandPKI()
	sign := func(c command.Command) ([]byte, error) {
		return command.Sign(c, keys[pki.NameCommandSigner], []*x509.Certificate{h.CommandSigner})
	}
	k := &decomKit{compatKit: newCompatKit(t, e, tenant), svc: sqlstore.NewDecommissionService(e.DB, sign),
		certs: sqlstore.NewCertificateService(e.DB), ca: newTestCA(t), executed: map[string][]string{}}
	k.svc.OnExecuted = func(_ context.Context, d *cradle.Device, from cradle.State, revoked []*cradle.Certificate) {
		var s []string
		for _, c := range revoked {
			s = append(s, c.Serial)
		}
		k.executed[d.Serial] = s
	}
	return k
}

// cert issues a certificate for serial from the test CA with key.
func (k *decomKit) cert(serial string, key *ecdsa.PrivateKey) *x509.Certificate {
	k.t.Helper()
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	now := k.e.Clock.Now()
	tmpl := &x509.Certificate{SerialNumber: n.Add(n, big.NewInt(1)), Subject: pkix.Name{CommonName: serial},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(90 * 24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.ca.cert, &key.PublicKey, k.ca.key)
	if err != nil {
		k.t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// enrolled makes a device with every kind of credential: an IDevID from
// the factory, a Mender auth set with a session token, a hawkBit target
// token and an LDevID. It returns the LDevID and its key, and the IDevID
// and its key.
func (k *decomKit) enrolled(serial, mac string) (ldev *x509.Certificate, ldevKey *ecdsa.PrivateKey, idev *x509.Certificate, idevKey *ecdsa.PrivateKey) {
	k.t.Helper()
	k.newDevice(serial, cradle.StateProvisioned, mac)
	idevKey = newKey(k.t)
	idev = k.cert(serial, idevKey)
	if _, err := k.certs.RecordCertificate(k.e.As(k.tenant.ID, cradle.RoleFactory), serial, cradle.CertIDevID, idev); err != nil {
		k.t.Fatalf("record IDevID: %v", err)
	}
	if _, _, err := k.ps.MenderAuthenticate(k.sys, menderRequest(k.t, mac, serial), time.Hour); err != nil {
		k.t.Fatalf("mender auth: %v", err)
	}
	if _, err := k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial, Name: "suricatta"}); err != nil {
		k.t.Fatal(err)
	}
	ldevKey = newKey(k.t)
	ldev = k.cert(serial, ldevKey)
	_, err := k.certs.IssueCertificate(asDevice(k.tenant.ID, serial), cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID,
		States: []cradle.State{cradle.StateProvisioned, cradle.StateDeployed},
		Issue:  func(context.Context, *cradle.Device) (*x509.Certificate, error) { return ldev, nil }})
	if err != nil {
		k.t.Fatalf("issue LDevID: %v", err)
	}
	return ldev, ldevKey, idev, idevKey
}

// tombstone signs a tombstone payload with key and attaches cert.
func tombstone(t *testing.T, tb cradle.Tombstone, key *ecdsa.PrivateKey, cert *x509.Certificate) cradle.SignedTombstone {
	t.Helper()
	payload, err := json.Marshal(tb)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return cradle.SignedTombstone{Payload: payload, Signature: sig, Certificate: cert.Raw}
}

func testDecommissionExecute(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	ldev, ldevKey, idev, idevKey := k.enrolled("SN-1", "02:00:00:00:00:01")
	if d := k.find("SN-1"); d.State != cradle.StateDeployed {
		t.Fatalf("device before decommissioning: %s", d.State)
	}
	// Refusals: no reason, an oversize reason, an operator (the lifecycle
	// lets only an admin move a device to eol), nothing stored.
	_, err := k.svc.RequestDecommission(k.admin, "SN-1", "  ")
	wantCode(t, err, cradle.EINVALID, "reason")
	_, err = k.svc.RequestDecommission(k.admin, "SN-1", strings.Repeat("x", cradle.MaxDecommissionReason+1))
	wantCode(t, err, cradle.EINVALID)
	_, err = k.svc.RequestDecommission(e.As(k.tenant.ID, cradle.RoleOperator), "SN-1", "end of life")
	if err == nil {
		t.Fatal("an operator decommissioned a device")
	}
	_, err = k.svc.RequestDecommission(k.admin, "SN-404", "end of life")
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.svc.FindDecommission(k.admin, "SN-1")
	wantCode(t, err, cradle.ENOTFOUND)

	// One approver (the default policy): executed at once.
	e.Clock.Add(time.Minute)
	x, err := k.svc.RequestDecommission(k.admin, "SN-1", "end of life")
	if err != nil {
		t.Fatal(err)
	}
	now := e.Clock.Now()
	if x.State != cradle.DecommissionWiping || x.ExecutedAt == nil || !x.ExecutedAt.Equal(now) || x.CommandID == "" || x.RequestedBy != "test:admin(admin)" {
		t.Fatalf("record: %+v", x)
	}
	kinds := map[string]int{}
	for _, c := range x.Revoked {
		kinds[c.Kind]++
		if !c.RevokedAt.Equal(now) {
			t.Errorf("credential %+v revoked at %v", c, c.RevokedAt)
		}
	}
	want := map[string]int{"certificate:idevid": 1, "certificate:ldevid": 1, "token:mender": 1, "token:target": 1, "mender-auth-set": 1}
	if !maps.Equal(kinds, want) {
		t.Fatalf("revoked %v, want %v", kinds, want)
	}
	if got := k.executed["SN-1"]; len(got) != 2 || !slices.Contains(got, cradle.SerialHex(ldev.SerialNumber)) || !slices.Contains(got, cradle.SerialHex(idev.SerialNumber)) {
		t.Fatalf("OnExecuted got %v", got)
	}
	// Every certificate revoked for cessationOfOperation, IDevID too.
	for _, c := range []*x509.Certificate{ldev, idev} {
		rec := must[*cradle.Certificate](t)(k.certs.FindCertificateBySerial(k.admin, cradle.SerialHex(c.SerialNumber)))
		if rec.Status != cradle.CertRevoked || rec.Reason == nil || *rec.Reason != cradle.ReasonCessationOfOperation {
			t.Errorf("certificate %s after decommissioning: %+v", rec.Serial, rec)
		}
	}
	// Tokens no longer authenticate; the Mender identity is rejected.
	if n := k.count(`SELECT COUNT(*) FROM device_tokens t JOIN devices d ON d.id = t.device_id WHERE d.serial = ? AND t.revoked_at IS NULL`, "SN-1"); n != 0 {
		t.Fatalf("%d live tokens after decommissioning", n)
	}
	if n := k.count(`SELECT COUNT(*) FROM mender_auth_sets s JOIN devices d ON d.id = s.device_id WHERE d.serial = ? AND s.status <> 'rejected'`, "SN-1"); n != 0 {
		t.Fatalf("%d auth sets not rejected", n)
	}
	// eol, in the history.
	d := k.find("SN-1")
	if d.State != cradle.StateEOL {
		t.Fatalf("device state %s, want eol", d.State)
	}
	hist := must[[]*cradle.StateChange](t)(k.e.Devices.FindDeviceHistory(k.admin, "SN-1"))
	if last := hist[len(hist)-1]; last.To != cradle.StateEOL || !strings.Contains(last.Reason, "end of life") {
		t.Fatalf("history: %+v", last)
	}
	// The wipe command waits for the device, signed.
	cs := must[[]*cradle.DeviceCommand](t)(sqlstore.NewCommandService(e.DB, nil).PendingCommands(asDevice(k.tenant.ID, "SN-1"), "SN-1"))
	if len(cs) != 1 || cs[0].Kind != cradle.CommandWipe || cs[0].ID != x.CommandID || len(cs[0].Envelope) == 0 {
		t.Fatalf("pending commands: %+v", cs)
	}
	wipe := cs[0]
	var env command.Envelope
	if err := json.Unmarshal(wipe.Envelope, &env); err != nil || !strings.Contains(string(env.Payload), `"wipe"`) {
		t.Fatalf("wipe envelope: %s, %v", wipe.Envelope, err)
	}
	// Every step audited, in one transaction.
	actions := k.lastActions(9)
	for _, a := range []string{"certificate.revoke", "device.token.revoke", "mender.auth.rejected", "device.transition", "command.issue", "decommission.execute"} {
		if !slices.Contains(actions, a) {
			t.Errorf("audit %v lacks %s", actions, a)
		}
	}
	// Asking again: refused, audited.
	_, err = k.svc.RequestDecommission(k.admin, "SN-1", "again")
	wantCode(t, err, cradle.ECONFLICT)
	if got := k.lastActions(1); got[0] != "decommission.request.refused" {
		t.Fatalf("audit: %v", got)
	}
	// A bare wipe through the command API stays refused.
	_, err = sqlstore.NewCommandService(e.DB, nil).IssueCommand(k.admin, "SN-1", cradle.CommandRequest{Kind: cradle.CommandWipe})
	wantCode(t, err, cradle.EINVALID, "decommissioning")

	// Tombstones that do not hold: nothing stored.
	good := cradle.Tombstone{Serial: "SN-1", CommandID: wipe.ID, Sequence: wipe.Sequence, Lifecycle: "eol", At: e.Clock.Now(),
		Erased: []cradle.ErasedObject{{Store: "file", Kind: "key", Name: "ldevid.key"}, {Store: "state", Kind: "config", Name: "agent.yaml"}}}
	other := newKey(t)
	dev := asDevice(k.tenant.ID, "SN-1")
	bad := []struct {
		name string
		st   cradle.SignedTombstone
		want string
	}{
		{"wrong key", tombstone(t, good, other, ldev), "signature"},
		{"IDevID", tombstone(t, good, idevKey, idev), "not an LDevID"},
		{"unknown certificate", tombstone(t, good, other, k.cert("SN-1", other)), "not on record"},
		{"wrong serial", tombstone(t, with(good, func(tb *cradle.Tombstone) { tb.Serial = "SN-2" }), ldevKey, ldev), "SN-2"},
		{"wrong command", tombstone(t, with(good, func(tb *cradle.Tombstone) { tb.CommandID = "cmd_00" }), ldevKey, ldev), "command"},
		{"wrong sequence", tombstone(t, with(good, func(tb *cradle.Tombstone) { tb.Sequence++ }), ldevKey, ldev), "sequence"},
		{"not eol", tombstone(t, with(good, func(tb *cradle.Tombstone) { tb.Lifecycle = "deployed" }), ldevKey, ldev), "lifecycle"},
	}
	for _, b := range bad {
		_, err := k.svc.RecordTombstone(dev, "SN-1", b.st)
		wantCode(t, err, cradle.EINVALID, b.want)
	}
	tampered := tombstone(t, good, ldevKey, ldev)
	tampered.Payload = []byte(strings.Replace(string(tampered.Payload), "ldevid.key", "other.key", 1))
	_, err = k.svc.RecordTombstone(dev, "SN-1", tampered)
	wantCode(t, err, cradle.EINVALID, "signature")
	_, err = k.svc.RecordTombstone(asDevice(k.tenant.ID, "SN-9"), "SN-1", tombstone(t, good, ldevKey, ldev))
	wantCode(t, err, cradle.EFORBIDDEN)
	if x := must[*cradle.Decommission](t)(k.svc.FindDecommission(k.admin, "SN-1")); x.State != cradle.DecommissionWiping || x.Tombstone != nil {
		t.Fatalf("a refused tombstone was stored: %+v", x)
	}
	if c := must[*cradle.DeviceCommand](t)(sqlstore.NewCommandService(e.DB, nil).FindDeviceCommand(k.admin, "SN-1", wipe.ID)); c.State != cradle.CommandPending {
		t.Fatalf("wipe after refused tombstones: %s", c.State)
	}

	// The device's own tombstone: confirmed, the wipe done.
	e.Clock.Add(time.Minute)
	x, err = k.svc.RecordTombstone(dev, "SN-1", tombstone(t, good, ldevKey, ldev))
	if err != nil {
		t.Fatal(err)
	}
	if x.State != cradle.DecommissionConfirmed || x.ConfirmedAt == nil || x.Tombstone == nil || len(x.Tombstone.Erased) != 2 {
		t.Fatalf("confirmed record: %+v", x)
	}
	if c := must[*cradle.DeviceCommand](t)(sqlstore.NewCommandService(e.DB, nil).FindDeviceCommand(k.admin, "SN-1", wipe.ID)); c.State != cradle.CommandDone || len(c.Results) != 1 {
		t.Fatalf("wipe after the tombstone: %+v", c)
	}
	_, err = k.svc.RecordTombstone(dev, "SN-1", tombstone(t, good, ldevKey, ldev))
	wantCode(t, err, cradle.ECONFLICT, "already confirmed")

	// The certificate: signed with the audit key, every step in it.
	cert := must[*cradle.DecommissionCertificate](t)(k.svc.DecommissionCertificate(k.admin, "SN-1"))
	pub := e.DB.AuditPublicKey()
	if err := cert.Verify(pub); err != nil {
		t.Fatalf("certificate signature: %v", err)
	}
	raw, _ := json.Marshal(cert)
	var back cradle.DecommissionCertificate
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if err := back.Verify(pub); err != nil {
		t.Fatalf("certificate after a JSON round trip: %v", err)
	}
	back.Decommission.Reason = "something else"
	if back.Verify(pub) == nil {
		t.Fatal("a changed certificate verifies")
	}
	var got []string
	for _, a := range cert.Audit {
		got = append(got, a.Action)
	}
	for _, a := range []string{"decommission.request", "certificate.revoke", "device.token.revoke", "mender.auth.rejected", "device.transition", "command.issue", "decommission.execute", "decommission.confirm"} {
		if !slices.Contains(got, a) {
			t.Errorf("certificate audit %v lacks %s", got, a)
		}
	}
	if cert.Tenant != "acme" || cert.Device.Serial != "SN-1" || cert.Device.State != cradle.StateEOL || cert.Decommission.ConfirmedAt == nil {
		t.Fatalf("certificate: %+v", cert)
	}
	_, err = k.svc.DecommissionCertificate(e.As(k.tenant.ID, cradle.RoleFactory), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	for _, v := range verifyAll(t, e) {
		if !v.OK {
			t.Errorf("tenant %d chain broken: %+v", v.TenantID, v.Broken)
		}
	}
}

func testDecommissionApprovers(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	k.enrolled("SN-2", "02:00:00:00:00:02")
	claims := sqlstore.NewClaimService(e.DB)
	for _, n := range []int{-1, 3} {
		_, err := claims.UpdatePolicy(k.admin, cradle.TenantPolicy{DecommissionApprovers: n})
		wantCode(t, err, cradle.EINVALID, "decommission_approvers")
	}
	must[*cradle.TenantPolicy](t)(claims.UpdatePolicy(k.admin, cradle.TenantPolicy{DecommissionApprovers: 2}))
	if p := must[*cradle.TenantPolicy](t)(claims.FindPolicy(k.admin)); p.DecommissionApprovers != 2 {
		t.Fatalf("policy: %+v", p)
	}

	// Two approvers: awaiting approval, nothing revoked yet.
	x := must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-2", "stolen from the field"))
	if x.State != cradle.DecommissionAwaitingApproval || x.ExecutedAt != nil || len(x.Revoked) != 0 {
		t.Fatalf("record: %+v", x)
	}
	if d := k.find("SN-2"); d.State != cradle.StateDeployed {
		t.Fatalf("device awaiting approval is %s", d.State)
	}
	if n := k.count(`SELECT COUNT(*) FROM certificates WHERE status = 'revoked'`); n != 0 {
		t.Fatalf("%d certificates revoked before the approval", n)
	}
	if _, ok := k.executed["SN-2"]; ok {
		t.Fatal("OnExecuted ran before the approval")
	}
	// The requester may not approve; an operator neither.
	_, err := k.svc.ApproveDecommission(k.admin, "SN-2")
	wantCode(t, err, cradle.EFORBIDDEN, "second admin")
	if got := k.lastActions(1); got[0] != "decommission.approve.refused" {
		t.Fatalf("audit: %v", got)
	}
	if _, err := k.svc.ApproveDecommission(e.As(k.tenant.ID, cradle.RoleOperator), "SN-2"); err == nil {
		t.Fatal("an operator approved a decommissioning")
	}
	_, err = k.svc.ApproveDecommission(k.admin, "SN-404")
	wantCode(t, err, cradle.ENOTFOUND)
	if x := must[*cradle.Decommission](t)(k.svc.FindDecommission(k.admin, "SN-2")); x.State != cradle.DecommissionAwaitingApproval {
		t.Fatalf("after refused approvals: %+v", x)
	}
	// A second admin approves: executed.
	second := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: k.tenant.ID, Role: cradle.RoleAdmin, Kind: "test", ID: "admin-2"})
	x = must[*cradle.Decommission](t)(k.svc.ApproveDecommission(second, "SN-2"))
	if x.State != cradle.DecommissionWiping || x.ApprovedBy != "test:admin-2(admin)" || x.ApprovedAt == nil || len(x.Revoked) != 5 {
		t.Fatalf("approved record: %+v", x)
	}
	if d := k.find("SN-2"); d.State != cradle.StateEOL {
		t.Fatalf("device after approval is %s", d.State)
	}
	if got := k.executed["SN-2"]; len(got) != 2 {
		t.Fatalf("OnExecuted: %v", got)
	}
	_, err = k.svc.ApproveDecommission(second, "SN-2")
	wantCode(t, err, cradle.ECONFLICT)
	// The tombstone cannot come before there is a wipe.
	ldev, ldevKey, _, _ := k.enrolled("SN-3", "02:00:00:00:00:03")
	must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-3", "retired"))
	_, err = k.svc.RecordTombstone(asDevice(k.tenant.ID, "SN-3"), "SN-3",
		tombstone(t, cradle.Tombstone{Serial: "SN-3", CommandID: "cmd_1", Sequence: 1, Lifecycle: "eol", At: Epoch}, ldevKey, ldev))
	wantCode(t, err, cradle.ECONFLICT, "no wipe was sent yet")
}

func with(t cradle.Tombstone, f func(*cradle.Tombstone)) cradle.Tombstone {
	f(&t)
	return t
}
