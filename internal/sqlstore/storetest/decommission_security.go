package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// The fixes of the security review of issue 9, on the store: eol only
// through decommissioning, a second approver that is another person, the
// wipe spoken for only by the LDevIDs valid at the execution, a revoked
// device taken out of service, an expired wipe reissued, keyCompromise
// recorded after a decommissioning.

// renew issues a new LDevID of serial (deployed) replacing renews, with
// a fresh key.
func (k *decomKit) renew(serial, renews string) (*x509.Certificate, *ecdsa.PrivateKey) {
	k.t.Helper()
	key := newKey(k.t)
	cert := k.cert(serial, key)
	_, err := k.certs.IssueCertificate(asDevice(k.tenant.ID, serial), cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Renews: renews,
		States: []cradle.State{cradle.StateDeployed},
		Issue:  func(context.Context, *cradle.Device) (*x509.Certificate, error) { return cert, nil }})
	if err != nil {
		k.t.Fatalf("renew LDevID: %v", err)
	}
	return cert, key
}

// wipeOf returns the wipe command the record x names, pending.
func (k *decomKit) wipeOf(serial string, x *cradle.Decommission) *cradle.DeviceCommand {
	k.t.Helper()
	cs := must[[]*cradle.DeviceCommand](k.t)(sqlstore.NewCommandService(k.e.DB, nil).PendingCommands(asDevice(k.tenant.ID, serial), serial))
	for _, c := range cs {
		if c.ID == x.CommandID {
			return c
		}
	}
	k.t.Fatalf("wipe command %s of %s is not pending: %+v", x.CommandID, serial, cs)
	return nil
}

func (k *decomKit) tombstoneFor(serial string, wipe *cradle.DeviceCommand, key *ecdsa.PrivateKey, cert *x509.Certificate) cradle.SignedTombstone {
	return tombstone(k.t, cradle.Tombstone{Serial: serial, CommandID: wipe.ID, Sequence: wipe.Sequence, Lifecycle: "eol", At: k.e.Clock.Now(),
		Erased: []cradle.ErasedObject{{Store: "file", Kind: "key", Name: "ldevid.key"}}}, key, cert)
}

// testDecommissionEOLOnly: no plain move reaches eol; decommissioning
// does, from every state that may reach eol, a unit that never shipped
// included, and revokes its certificates.
func testDecommissionEOLOnly(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	k.enrolled("SN-D", "02:00:00:00:00:0d")
	k.newDevice("SN-F", cradle.StateFactory)
	k.newDevice("SN-P", cradle.StateProvisioned)
	idev := k.cert("SN-P", newKey(t))
	must[*cradle.Certificate](t)(k.certs.RecordCertificate(e.As(k.tenant.ID, cradle.RoleFactory), "SN-P", cradle.CertIDevID, idev))
	for _, serial := range []string{"SN-D", "SN-F", "SN-P"} {
		before := k.find(serial).State
		_, err := e.Devices.TransitionDevice(k.admin, serial, cradle.DeviceTransition{To: cradle.StateEOL, Reason: "scrapped"})
		wantCode(t, err, cradle.ECONFLICT, "cradle device decommission "+serial)
		if d := k.find(serial); d.State != before {
			t.Fatalf("%s moved to %s by a refused transition", serial, d.State)
		}
		x, err := k.svc.RequestDecommission(k.admin, serial, "scrapped")
		if err != nil {
			t.Fatalf("decommission %s (%s): %v", serial, before, err)
		}
		if x.State != cradle.DecommissionWiping || k.find(serial).State != cradle.StateEOL {
			t.Fatalf("%s after decommissioning: %+v, %s", serial, x, k.find(serial).State)
		}
	}
	// A device moved to eol by a plain transition before that was
	// refused: nothing revoked, no record. Decommissioning still
	// revokes its credentials and sends its wipe.
	legacy, _, _, _ := k.enrolled("SN-L", "02:00:00:00:00:0e")
	k.e.Exec(`UPDATE devices SET state = 'eol' WHERE serial = ?`, "SN-L")
	_, err := k.svc.RequestDecommission(e.As(k.tenant.ID, cradle.RoleOperator), "SN-L", "cleanup")
	wantCode(t, err, cradle.ECONFLICT, "only an admin")
	x := must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-L", "cleanup"))
	if x.State != cradle.DecommissionWiping || len(x.Revoked) != 5 || k.find("SN-L").State != cradle.StateEOL {
		t.Fatalf("legacy eol device: %+v", x)
	}
	if err := k.svc.WipeCredential(e.As(k.tenant.ID, cradle.RoleSystem), "SN-L", cradle.SerialHex(legacy.SerialNumber)); err != nil {
		t.Fatalf("legacy eol device's LDevID: %v", err)
	}
	rec := must[*cradle.Certificate](t)(k.certs.FindCertificateBySerial(k.admin, cradle.SerialHex(idev.SerialNumber)))
	if rec.Status != cradle.CertRevoked || *rec.Reason != cradle.ReasonCessationOfOperation {
		t.Fatalf("IDevID of a provisioned unit decommissioned: %+v", rec)
	}
	if n := k.count(`SELECT COUNT(*) FROM certificates c JOIN devices d ON d.id = c.device_id WHERE d.state = 'eol' AND c.status <> 'revoked'`); n != 0 {
		t.Fatalf("%d certificates of eol devices left valid", n)
	}
}

// testDecommissionSecondApprover: the second admin's token may not
// descend from the requester's (nor the reverse), nor be made after the
// request; a policy lowered later does not let a request through.
func testDecommissionSecondApprover(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	claims := sqlstore.NewClaimService(e.DB)
	must[*cradle.TenantPolicy](t)(claims.UpdatePolicy(k.admin, cradle.TenantPolicy{DecommissionApprovers: 2}))
	as := func(tok *cradle.Token) context.Context {
		return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: k.tenant.ID, Role: tok.Role, Kind: "token", ID: tok.ID})
	}
	token := func(ctx context.Context, name string) *cradle.Token {
		t.Helper()
		tok, _, err := e.Tokens.CreateToken(ctx, cradle.TokenCreate{Name: name, Role: cradle.RoleAdmin})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	alice := token(k.admin, "alice")
	bob := token(k.admin, "bob")
	aliceChild := token(as(alice), "alice's second token")
	aliceGrandchild := token(as(aliceChild), "alice's third token")

	k.enrolled("SN-A", "02:00:00:00:00:0a")
	e.Clock.Add(time.Minute)
	x := must[*cradle.Decommission](t)(k.svc.RequestDecommission(as(alice), "SN-A", "stolen"))
	if x.State != cradle.DecommissionAwaitingApproval {
		t.Fatalf("record: %+v", x)
	}
	// Lowering the policy now does not let the request through.
	must[*cradle.TenantPolicy](t)(claims.UpdatePolicy(k.admin, cradle.TenantPolicy{DecommissionApprovers: 1}))
	e.Clock.Add(time.Minute)
	late := token(k.admin, "made after the request")
	for _, c := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"the requester", as(alice), "second admin"},
		{"a token the requester made", as(aliceChild), "created by the requester's token"},
		{"a token made by one the requester made", as(aliceGrandchild), "created by the requester's token"},
		{"a token made after the request", as(late), "after the decommissioning was asked for"},
	} {
		_, err := k.svc.ApproveDecommission(c.ctx, "SN-A")
		wantCode(t, err, cradle.EFORBIDDEN, c.want)
		if got := k.lastActions(1); got[0] != "decommission.approve.refused" {
			t.Fatalf("%s: audit %v", c.name, got)
		}
	}
	if x := must[*cradle.Decommission](t)(k.svc.FindDecommission(k.admin, "SN-A")); x.State != cradle.DecommissionAwaitingApproval || k.find("SN-A").State != cradle.StateDeployed {
		t.Fatalf("after refused approvals: %+v", x)
	}
	x = must[*cradle.Decommission](t)(k.svc.ApproveDecommission(as(bob), "SN-A"))
	if x.State != cradle.DecommissionWiping || x.ApprovedBy != "token:"+bob.ID+"(admin)" {
		t.Fatalf("approved by another admin: %+v", x)
	}

	// The reverse: the requester's token was made by the approver's.
	must[*cradle.TenantPolicy](t)(claims.UpdatePolicy(k.admin, cradle.TenantPolicy{DecommissionApprovers: 2}))
	k.enrolled("SN-B", "02:00:00:00:00:0b")
	e.Clock.Add(time.Minute)
	must[*cradle.Decommission](t)(k.svc.RequestDecommission(as(aliceGrandchild), "SN-B", "stolen"))
	_, err := k.svc.ApproveDecommission(as(alice), "SN-B")
	wantCode(t, err, cradle.EFORBIDDEN, "the requester's token "+aliceGrandchild.ID+" was created by token "+alice.ID)
	must[*cradle.Decommission](t)(k.svc.ApproveDecommission(as(bob), "SN-B"))
}

// testDecommissionWipeCertificates: only an LDevID valid at the
// execution speaks for the wipe; one revoked before (an rma) or
// superseded does not.
func testDecommissionWipeCertificates(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	first, firstKey, _, _ := k.enrolled("SN-1", "02:00:00:00:00:01")
	second, secondKey := k.renew("SN-1", cradle.SerialHex(first.SerialNumber)) // first: superseded
	third, thirdKey := k.renew("SN-1", cradle.SerialHex(second.SerialNumber))  // second: superseded, then revoked
	must[*cradle.Certificate](t)(k.certs.RevokeCertificate(k.admin, cradle.SerialHex(second.SerialNumber), cradle.ReasonCessationOfOperation))
	e.Clock.Add(time.Minute)
	x := must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-1", "end of life"))
	var wipe []string
	for _, c := range x.Revoked {
		if c.Wipe {
			wipe = append(wipe, c.ID)
		}
	}
	if want := []string{cradle.SerialHex(third.SerialNumber)}; !slices.Equal(wipe, want) {
		t.Fatalf("wipe certificates %v, want %v (record %+v)", wipe, want, x.Revoked)
	}
	cmd := k.wipeOf("SN-1", x)
	dev := asDevice(k.tenant.ID, "SN-1")
	sys := e.As(k.tenant.ID, cradle.RoleSystem)
	for _, old := range []struct {
		name string
		cert *x509.Certificate
		key  *ecdsa.PrivateKey
	}{{"superseded", first, firstKey}, {"revoked before", second, secondKey}} {
		_, err := k.svc.RecordTombstone(dev, "SN-1", k.tombstoneFor("SN-1", cmd, old.key, old.cert))
		wantCode(t, err, cradle.EINVALID, "valid when its decommissioning was executed")
		err = k.svc.WipeCredential(sys, "SN-1", cradle.SerialHex(old.cert.SerialNumber))
		wantCode(t, err, cradle.EINVALID, "valid when its decommissioning was executed")
	}
	if err := k.svc.WipeCredential(sys, "SN-1", cradle.SerialHex(third.SerialNumber)); err != nil {
		t.Fatalf("the LDevID valid at the execution: %v", err)
	}
	x = must[*cradle.Decommission](t)(k.svc.RecordTombstone(dev, "SN-1", k.tombstoneFor("SN-1", cmd, thirdKey, third)))
	if x.State != cradle.DecommissionConfirmed {
		t.Fatalf("record: %+v", x)
	}
	wantCode(t, k.svc.WipeCredential(sys, "SN-1", cradle.SerialHex(third.SerialNumber)), cradle.ECONFLICT, "already confirmed")
}

// testDecommissionWipeReissue: a wipe command that expired unanswered is
// issued again when the device polls; the tombstone must then be for the
// new one.
func testDecommissionWipeReissue(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	ldev, key, _, _ := k.enrolled("SN-1", "02:00:00:00:00:01")
	x := must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-1", "end of life"))
	old := k.wipeOf("SN-1", x)
	dev := asDevice(k.tenant.ID, "SN-1")
	// Not expired: nothing changes.
	if y := must[*cradle.Decommission](t)(k.svc.ReissueWipe(dev, "SN-1")); y.CommandID != old.ID {
		t.Fatalf("an unexpired wipe was reissued: %+v", y)
	}
	_, err := k.svc.ReissueWipe(asDevice(k.tenant.ID, "SN-2"), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	// The device stays offline past the command's time to live.
	e.Clock.Add(cradle.MaxCommandTTL + time.Hour)
	if cs := must[[]*cradle.DeviceCommand](t)(sqlstore.NewCommandService(e.DB, nil).PendingCommands(dev, "SN-1")); len(cs) != 0 {
		t.Fatalf("pending after the expiry: %+v", cs)
	}
	y := must[*cradle.Decommission](t)(k.svc.ReissueWipe(dev, "SN-1"))
	if y.CommandID == old.ID || y.State != cradle.DecommissionWiping {
		t.Fatalf("after the expiry: %+v", y)
	}
	if got := k.lastActions(2); !slices.Equal(got, []string{"command.issue", "decommission.wipe.reissue"}) {
		t.Fatalf("audit: %v", got)
	}
	if z := must[*cradle.Decommission](t)(k.svc.FindDecommission(k.admin, "SN-1")); z.CommandID != y.CommandID {
		t.Fatalf("the record names %s, want %s", z.CommandID, y.CommandID)
	}
	fresh := k.wipeOf("SN-1", y)
	if fresh.Sequence <= old.Sequence || fresh.Kind != cradle.CommandWipe {
		t.Fatalf("fresh wipe: %+v", fresh)
	}
	_, err = k.svc.RecordTombstone(dev, "SN-1", k.tombstoneFor("SN-1", old, key, ldev))
	wantCode(t, err, cradle.EINVALID, "command")
	if z := must[*cradle.Decommission](t)(k.svc.RecordTombstone(dev, "SN-1", k.tombstoneFor("SN-1", fresh, key, ldev))); z.State != cradle.DecommissionConfirmed {
		t.Fatalf("record: %+v", z)
	}
	// Confirmed: not reissued again.
	_, err = k.svc.ReissueWipe(dev, "SN-1")
	wantCode(t, err, cradle.ECONFLICT)
}

// testDecommissionKeyCompromise: a certificate revoked by a
// decommissioning may be revoked again for keyCompromise (and only for
// it); the wipe can then no longer be confirmed.
func testDecommissionKeyCompromise(t *testing.T, e *Env) {
	k := newDecomKit(t, e, "acme")
	var told []string
	calls := 0
	e.DB.SetRevocationNotifier(func(cs []*cradle.Certificate) {
		calls++
		for _, c := range cs {
			told = append(told, c.Serial)
		}
	})
	// A hawkBit device with a target token and no certificate: the
	// notifier (which flushes the device token cache) still runs.
	k.newDevice("SN-T", cradle.StateProvisioned)
	must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-T"}))
	must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-T", "end of life"))
	if calls != 1 {
		t.Fatalf("decommissioning a device with tokens only told the revocation notifier %d times, want 1", calls)
	}
	ldev, key, _, _ := k.enrolled("SN-1", "02:00:00:00:00:01")
	serial := cradle.SerialHex(ldev.SerialNumber)
	x := must[*cradle.Decommission](t)(k.svc.RequestDecommission(k.admin, "SN-1", "end of life"))
	if !slices.Contains(told, serial) {
		t.Fatalf("the execution did not reach the revocation notifier: %v", told)
	}
	told = nil
	cmd := k.wipeOf("SN-1", x)
	_, err := k.certs.RevokeCertificate(k.admin, serial, cradle.ReasonSuperseded)
	wantCode(t, err, cradle.ECONFLICT, "already revoked")
	e.Clock.Add(time.Minute)
	c := must[*cradle.Certificate](t)(k.certs.RevokeCertificate(k.admin, serial, cradle.ReasonKeyCompromise))
	if *c.Reason != cradle.ReasonKeyCompromise || !c.RevokedAt.Equal(*x.ExecutedAt) {
		t.Fatalf("re-revoked: %+v (executed at %v)", c, x.ExecutedAt)
	}
	if !slices.Equal(told, []string{serial}) {
		t.Fatalf("the notifier (CRL, OCSP) was told of %v", told)
	}
	if got := k.lastActions(1); got[0] != "certificate.revoke" {
		t.Fatalf("audit: %v", got)
	}
	entries := must[[]cradle.RevokedEntry](t)(k.certs.RevokedCertificates(e.As(0, cradle.RoleSystem), c.Issuer, e.Clock.Now()))
	if i := slices.IndexFunc(entries, func(r cradle.RevokedEntry) bool { return cradle.SerialHex(r.Serial) == serial }); i < 0 || entries[i].Reason != cradle.ReasonKeyCompromise {
		t.Fatalf("CRL entries: %+v", entries)
	}
	_, err = k.certs.RevokeCertificate(k.admin, serial, cradle.ReasonKeyCompromise)
	wantCode(t, err, cradle.ECONFLICT, "already revoked")

	y := must[*cradle.Decommission](t)(k.svc.FindDecommission(k.admin, "SN-1"))
	if !slices.Equal(y.Compromised, []string{serial}) {
		t.Fatalf("the record does not say so: %+v", y)
	}
	dev := asDevice(k.tenant.ID, "SN-1")
	_, err = k.svc.RecordTombstone(dev, "SN-1", k.tombstoneFor("SN-1", cmd, key, ldev))
	wantCode(t, err, cradle.EINVALID, "keyCompromise")
	wantCode(t, k.svc.WipeCredential(e.As(k.tenant.ID, cradle.RoleSystem), "SN-1", serial), cradle.EINVALID, "keyCompromise")
	cert := must[*cradle.DecommissionCertificate](t)(k.svc.DecommissionCertificate(k.admin, "SN-1"))
	if !slices.Equal(cert.Decommission.Compromised, []string{serial}) || cert.Decommission.ConfirmedAt != nil {
		t.Fatalf("certificate: %+v", cert.Decommission)
	}
}

// testRevokeOutOfService: a revoked device leaves service in the same
// transaction, in its history: deployed → suspended, provisioned → rma.
func testRevokeOutOfService(t *testing.T, e *Env) {
	k := newRevokeKit(t, e)
	k.enrolled("SN-1")
	k.newDevice("SN-2", cradle.StateProvisioned)
	k.newDevice("SN-3", cradle.StateFactory)
	tok := k.targetToken("SN-1")
	op := e.As(k.tenant.ID, cradle.RoleOperator)
	e.Clock.Add(time.Minute)
	for _, c := range []struct {
		serial string
		want   cradle.State
	}{{"SN-1", cradle.StateSuspended}, {"SN-2", cradle.StateRMA}, {"SN-3", cradle.StateFactory}} {
		r := must[*cradle.DeviceRevocation](t)(k.rev.RevokeDevice(op, c.serial, cradle.ReasonKeyCompromise))
		if d := k.find(c.serial); d.State != c.want || r.State != c.want {
			t.Fatalf("%s after its revocation: %s (answer %s), want %s", c.serial, d.State, r.State, c.want)
		}
	}
	hist := must[[]*cradle.StateChange](t)(e.Devices.FindDeviceHistory(k.admin, "SN-1"))
	last := hist[len(hist)-1]
	if last.From != cradle.StateDeployed || last.To != cradle.StateSuspended || last.Reason != "credentials revoked: keyCompromise" ||
		last.Actor != "test:operator(operator)" || last.Seq != int64(len(hist)) || !last.At.Equal(e.Clock.Now()) {
		t.Fatalf("history: %+v", last)
	}
	// The hawkBit gateway path checks the device's state: now refused.
	_, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")

	// In bulk too, counted.
	for i, s := range []string{"B-1", "B-2"} {
		k.enrolled(s)
		if i == 1 {
			k.newDevice("B-3", cradle.StateProvisioned)
		}
	}
	for _, s := range []string{"B-1", "B-2", "B-3"} {
		must[*cradle.Device](t)(e.Devices.UpdateDevice(k.admin, s, cradle.DeviceUpdate{SetLabels: map[string]string{"batch": "b"}}))
	}
	b := must[*cradle.BulkRevocation](t)(k.rev.RevokeDevices(k.admin, "batch=b", cradle.ReasonCACompromise))
	if b.Suspended != 2 || b.RMA != 1 {
		t.Fatalf("bulk: %+v", b)
	}
	for s, want := range map[string]cradle.State{"B-1": cradle.StateSuspended, "B-2": cradle.StateSuspended, "B-3": cradle.StateRMA} {
		if d := k.find(s); d.State != want {
			t.Errorf("%s after the bulk revocation: %s, want %s", s, d.State, want)
		}
		h := must[[]*cradle.StateChange](t)(e.Devices.FindDeviceHistory(k.admin, s))
		if l := h[len(h)-1]; l.To != want || l.Reason != "credentials revoked: cACompromise" || l.Seq != int64(len(h)) {
			t.Errorf("%s history: %+v", s, l)
		}
	}
	for _, v := range verifyAll(t, e) {
		if !v.OK {
			t.Errorf("audit chain of tenant %d broken", v.TenantID)
		}
	}
}

// CommandSigner signs commands with the suite's test command signer, for
// the tests of other packages that decommission devices.
func CommandSigner() sqlstore.CommandSigner {
	h, keys := commandPKI()
	return func(c command.Command) ([]byte, error) {
		return command.Sign(c, keys[pki.NameCommandSigner], []*x509.Certificate{h.CommandSigner})
	}
}

// testDeviceMayDownload: a signed download URL is honoured for a deployed
// device, for a suspended one only for a remediation release's image or
// delta, and for no other state (nor another tenant's device).
func testDeviceMayDownload(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	base := k.sign(k.create(fileRelease("gw-1", "1.0", 1)))
	plain := k.sign(k.create(fileRelease("gw-1", "1.1", 1)))
	c := fileRelease("gw-1", "1.2", 1)
	c.Remediation = true
	fix := k.create(c)
	delta := deltaFrom(base, fix)
	k.sign(fix, delta)
	states := map[string]cradle.State{"D": cradle.StateDeployed, "S": cradle.StateSuspended, "R": cradle.StateRMA, "P": cradle.StateProvisioned}
	for serial, st := range states {
		must[*cradle.Device](t)(e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: serial, Model: "gw-1", State: cradle.StateProvisioned}))
		if st != cradle.StateProvisioned {
			must[*cradle.Device](t)(e.Devices.TransitionDevice(k.admin, serial, cradle.DeviceTransition{To: cradle.StateDeployed}))
		}
		if st == cradle.StateSuspended || st == cradle.StateRMA {
			must[*cradle.Device](t)(e.Devices.TransitionDevice(k.admin, serial, cradle.DeviceTransition{To: st}))
		}
	}
	sys := e.As(k.tenant.ID, cradle.RoleSystem)
	other, _ := e.Tenant("other", cradle.RoleAdmin)
	for _, c := range []struct {
		ctx    context.Context
		serial string
		sha    string
		want   bool
		says   string
	}{
		{sys, "D", plain.SHA256, true, ""},
		{sys, "D", delta.SHA256, true, ""},
		{sys, "S", fix.SHA256, true, ""},
		{sys, "S", delta.SHA256, true, ""},
		{sys, "S", plain.SHA256, false, "suspended"},
		{sys, "S", base.SHA256, false, "suspended"},
		{sys, "R", fix.SHA256, false, "is rma"},
		{sys, "P", plain.SHA256, false, "is provisioned"},
		{sys, "X", plain.SHA256, false, "not on record"},
		{e.As(other.ID, cradle.RoleSystem), "D", plain.SHA256, false, "not on record"},
	} {
		ok, why, err := e.Devices.DeviceMayDownload(c.ctx, c.serial, c.sha)
		if err != nil || ok != c.want || !strings.Contains(why, c.says) {
			t.Errorf("%s, %.8s: %v %q %v; want %v %q", c.serial, c.sha, ok, why, err, c.want, c.says)
		}
	}
}
