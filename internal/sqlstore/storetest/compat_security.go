package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// The cases of the security review of the Mender and hawkBit store:
// takeover by MAC, the tenant token, the pending flood, refusal audits,
// revocation, token growth.

// lastEntry returns the tenant's newest audit entry with its details
// decoded.
func (k *compatKit) lastEntry() (*cradle.AuditEntry, map[string]any) {
	k.t.Helper()
	entries := must[[]*cradle.AuditEntry](k.t)(k.e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Limit: cradle.MaxPageSize}))
	last := entries[len(entries)-1]
	var d map[string]any
	if err := json.Unmarshal(last.Details, &d); err != nil {
		k.t.Fatalf("details of %s: %v", last.Action, err)
	}
	return last, d
}

// testMenderAutoAdmitProvisionedOnly: a MAC admits only a provisioned
// device without another key, and only when automatic admission is on; a
// deployed device is never taken over by its MAC.
func testMenderAutoAdmitProvisionedOnly(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-D", cradle.StateDeployed, "02:00:00:00:03:01")
	k.newDevice("SN-P", cradle.StateProvisioned, "02:00:00:00:03:02")
	k.newDevice("SN-Q", cradle.StateProvisioned, "02:00:00:00:03:03")
	k.newDevice("SN-R", cradle.StateProvisioned, "02:00:00:00:03:04")

	// Any key with the MAC of a deployed native device: pending, and the
	// device stays as it was.
	attacker := menderRequest(t, "02:00:00:00:03:01", "attacker")
	_, _, err := k.ps.MenderAuthenticate(k.sys, attacker, time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	sets := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Limit: 1}))
	if sets[0].Status != cradle.MenderPending || sets[0].DeviceSerial != "" {
		t.Fatalf("set of a deployed device's MAC: %+v", sets[0])
	}
	if d := k.find("SN-D"); d.Protocol != cradle.ProtocolCradle || d.State != cradle.StateDeployed {
		t.Fatalf("deployed device after a request with its MAC: %+v", d)
	}
	if n := k.count(`SELECT COUNT(*) FROM device_tokens`); n != 0 {
		t.Fatalf("%d tokens issued", n)
	}

	// A provisioned one is admitted.
	if _, d := login(t)(k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:03:02", "p"), time.Hour)); d.Serial != "SN-P" {
		t.Fatalf("admitted %+v", d)
	}

	// A provisioned device with a preauthorized key: another key with its
	// MAC waits for an operator.
	pre := menderRequest(t, "02:00:00:00:03:03", "preauthorized")
	must[*cradle.MenderAuthSet](t)(k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-Q", IDData: pre.IDData, PublicKey: pre.PublicKey}))
	_, _, err = k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:03:03", "other"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	if d := k.find("SN-Q"); d.State != cradle.StateProvisioned {
		t.Fatalf("preauthorized device after another key: %+v", d)
	}

	// Automatic admission off: a provisioned device's MAC is pending too.
	off := sqlstore.NewProtocolService(e.DB).SetMenderAutoAdmit(false)
	_, _, err = off.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:03:04", "r"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	if d := k.find("SN-R"); d.State != cradle.StateProvisioned || d.Protocol != cradle.ProtocolCradle {
		t.Fatalf("device admitted with automatic admission off: %+v", d)
	}
}

// testMenderTenantTokens: tenant tokens are the tenant's, listed with the
// gateway tokens, and a kind of their own.
func testMenderTenantTokens(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateDeployed)
	tt := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenMenderTenant, Name: "mender fleet"}))
	if tt.Token.Kind != cradle.TokenMenderTenant || tt.Token.DeviceSerial != "" {
		t.Fatalf("tenant token: %+v", tt.Token)
	}
	a := must[*cradle.DeviceTokenAuth](t)(k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tt.Secret))
	if a.Token.Kind != cradle.TokenMenderTenant || a.Device != nil || a.TenantID != k.tenant.ID {
		t.Fatalf("tenant token auth: %+v", a)
	}
	if l := must[[]*cradle.DeviceToken](t)(k.ps.FindDeviceTokens(k.admin, "")); len(l) != 1 || l[0].ID != tt.Token.ID {
		t.Fatalf("tenant-wide tokens: %+v", l)
	}
	_, err := k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenMenderTenant, Serial: "SN-1"})
	wantCode(t, err, cradle.EINVALID, "tenant's")
}

// testProtocolSwitch: never between mender and hawkbit; from cradle only
// while provisioned or when an operator chose it; refusals audited once a
// minute.
func testProtocolSwitch(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	for _, s := range []string{"SN-M", "SN-H", "SN-P"} {
		k.newDevice(s, cradle.StateProvisioned)
	}
	k.newDevice("SN-D", cradle.StateDeployed)
	must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-M"), "SN-M", cradle.ProtocolMender))
	must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-H"), "SN-H", cradle.ProtocolHawkbit))
	for _, tc := range []struct {
		serial string
		p      cradle.Protocol
		msg    string
	}{
		{"SN-M", cradle.ProtocolHawkbit, "talks mender"},
		{"SN-H", cradle.ProtocolMender, "talks hawkbit"},
		{"SN-D", cradle.ProtocolHawkbit, "target token"},
		{"SN-D", cradle.ProtocolMender, "accepts its Mender key"},
	} {
		_, err := k.ps.AdmitDevice(k.device(tc.serial), tc.serial, tc.p)
		wantCode(t, err, cradle.ECONFLICT, tc.msg)
		if got := k.lastActions(1); got[0] != "device.admit.refused" {
			t.Fatalf("%s → %s: audit %v", tc.serial, tc.p, got)
		}
		if d := k.find(tc.serial); d.Protocol == tc.p {
			t.Fatalf("%s switched to %s", tc.serial, tc.p)
		}
	}
	// The same refusal again within a minute: not audited; a minute
	// later: audited, counting the one left out.
	head := k.head(k.tenant.ID)
	_, err := k.ps.AdmitDevice(k.device("SN-M"), "SN-M", cradle.ProtocolHawkbit)
	wantCode(t, err, cradle.ECONFLICT)
	if k.head(k.tenant.ID) != head {
		t.Fatal("a repeated refusal within a minute was audited")
	}
	e.Clock.Add(time.Minute)
	_, err = k.ps.AdmitDevice(k.device("SN-M"), "SN-M", cradle.ProtocolHawkbit)
	wantCode(t, err, cradle.ECONFLICT)
	if ent, d := k.lastEntry(); ent.Action != "device.admit.refused" || d["not_audited"] != "1" {
		t.Fatalf("audit a minute later: %s %v", ent.Action, d)
	}

	// The device's own credential (its client certificate) lets a
	// deployed native device switch; so does an operator's target token;
	// a provisioned one switches freely.
	k.newDevice("SN-C", cradle.StateDeployed)
	if d := must[*cradle.Device](t)(k.ps.AdmitDevice(cradle.NewContextWithOwnCredential(k.device("SN-C")), "SN-C", cradle.ProtocolHawkbit)); d.Protocol != cradle.ProtocolHawkbit {
		t.Fatalf("with its own credential: %+v", d)
	}
	_, err = k.ps.AdmitDevice(cradle.NewContextWithOwnCredential(k.device("SN-C")), "SN-C", cradle.ProtocolMender)
	wantCode(t, err, cradle.ECONFLICT, "talks hawkbit")
	must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-D"}))
	if d := must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-D"), "SN-D", cradle.ProtocolHawkbit)); d.Protocol != cradle.ProtocolHawkbit {
		t.Fatalf("with a target token: %+v", d)
	}
	if d := must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-P"), "SN-P", cradle.ProtocolMender)); d.Protocol != cradle.ProtocolMender {
		t.Fatalf("provisioned: %+v", d)
	}
}

// floodPending stores n pending auth sets of the tenant, updated at, in
// one statement.
func (k *compatKit) floodPending(n int, at time.Time) {
	k.t.Helper()
	q := fmt.Sprintf(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)
		INSERT INTO mender_auth_sets (public_id, tenant_id, id_data, id_data_sha256, pubkey, key_fingerprint, status, created_at, updated_at)
		SELECT 'mas_flood' || i, %d, '{"flood":"x"}', 'flood' || i, '', 'fp', 'pending', %d, %d FROM n`, n, k.tenant.ID, at.UnixMicro(), at.UnixMicro())
	if _, err := k.e.Raw.Exec(q); err != nil {
		k.t.Fatal(err)
	}
}

// testMenderPendingCap: past cradle.MaxPendingMenderAuthSets pending sets
// a new pair is refused and nothing is stored; sets pending for longer
// than cradle.PendingMenderAuthSetAge go when a new one is stored.
func testMenderPendingCap(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-P", cradle.StateProvisioned, "02:00:00:00:04:01")
	pending := func() int {
		return k.count(`SELECT COUNT(*) FROM mender_auth_sets WHERE tenant_id = ? AND status = 'pending'`, k.tenant.ID)
	}
	k.floodPending(cradle.MaxPendingMenderAuthSets-1, e.Clock.Now())
	e.Clock.Add(time.Hour)
	_, _, err := k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:04:99", "last"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	if n := pending(); n != cradle.MaxPendingMenderAuthSets {
		t.Fatalf("%d pending", n)
	}
	head := k.head(k.tenant.ID)
	_, _, err = k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:04:98", "one too many"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending Mender auth sets", "accept or reject")
	if n := pending(); n != cradle.MaxPendingMenderAuthSets || k.head(k.tenant.ID) != head {
		t.Fatalf("a refused pair: %d pending, %d audit rows", n, k.head(k.tenant.ID)-head)
	}
	// Another tenant is not held up.
	other := newCompatKit(t, e, "globex")
	_, _, err = other.ps.MenderAuthenticate(other.sys, menderRequest(t, "02:00:00:00:04:98", "o"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "is pending")
	// A provisioned device's MAC is still admitted: it adds no pending set.
	if _, d := login(t)(k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:04:01", "p"), time.Hour)); d.Serial != "SN-P" {
		t.Fatalf("admitted %+v", d)
	}

	// 30 days on, the flood (pending since the start) goes, the set of an
	// hour later stays.
	e.Clock.Add(cradle.PendingMenderAuthSetAge - time.Minute)
	_, _, err = k.ps.MenderAuthenticate(k.sys, menderRequest(t, "02:00:00:00:04:98", "one too many"), time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "is pending")
	if n := pending(); n != 2 {
		t.Fatalf("%d pending after the purge, want 2", n)
	}
	if got := k.lastActions(2); !slices.Equal(got, []string{"mender.auth.expired", "mender.auth.pending"}) {
		t.Fatalf("audit: %v", got)
	}
}

// testRefusalAuditLimit: a token refused again and again leaves one audit
// row a minute, and so does a refused Mender login.
func testRefusalAuditLimit(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned, "02:00:00:00:05:01")
	tok := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-1"}))
	noErr(t, k.ps.RevokeDeviceToken(k.admin, tok.Token.ID))
	head := k.head(k.tenant.ID)
	for range 5 {
		_, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok.Secret)
		wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	}
	if h := k.head(k.tenant.ID); h != head+1 {
		t.Fatalf("5 refusals of one token wrote %d audit rows, want 1", h-head)
	}
	e.Clock.Add(time.Minute + time.Second)
	_, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	if ent, d := k.lastEntry(); ent.Action != "device.token.refused" || d["not_audited"] != "4" || k.head(k.tenant.ID) != head+2 {
		t.Fatalf("audit a minute later: %s %v", ent.Action, d)
	}

	// A suspended Mender device logging in again and again.
	r := menderRequest(t, "02:00:00:00:05:01", "m")
	login(t)(k.ps.MenderAuthenticate(k.sys, r, time.Hour))
	if _, err := k.e.Devices.TransitionDevice(k.admin, "SN-1", cradle.DeviceTransition{To: cradle.StateSuspended}); err != nil {
		t.Fatal(err)
	}
	head = k.head(k.tenant.ID)
	for range 3 {
		_, _, err = k.ps.MenderAuthenticate(k.sys, r, time.Hour)
		wantCode(t, err, cradle.EFORBIDDEN, "suspended")
	}
	if h := k.head(k.tenant.ID); h != head+1 || k.lastActions(1)[0] != "mender.auth.refused" {
		t.Fatalf("3 refused logins wrote %d audit rows, want 1", h-head)
	}
}

// testRevokeTokensRejectsSets: revoking a Mender device's tokens rejects
// its keys too, so its client cannot log in again.
func testRevokeTokensRejectsSets(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned, "02:00:00:00:06:01")
	k.newDevice("SN-2", cradle.StateProvisioned)
	r := menderRequest(t, "02:00:00:00:06:01", "m")
	sess, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r, time.Hour))
	pre := menderRequest(t, "02:00:00:00:06:02", "spare key")
	must[*cradle.MenderAuthSet](t)(k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-1", IDData: pre.IDData, PublicKey: pre.PublicKey}))
	other := menderRequest(t, "02:00:00:00:06:03", "sn-2")
	must[*cradle.MenderAuthSet](t)(k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-2", IDData: other.IDData, PublicKey: other.PublicKey}))

	if n := must[int](t)(k.ps.RevokeDeviceTokens(k.admin, "SN-1")); n != 1 {
		t.Fatalf("revoked %d", n)
	}
	if got := k.lastActions(3); !slices.Equal(got, []string{"device.token.revoke", "mender.auth.rejected", "mender.auth.rejected"}) {
		t.Fatalf("audit: %v", got)
	}
	_, err := k.ps.AuthenticateDeviceToken(tokenAuthCtx(), sess.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	for _, req := range []cradle.MenderAuthRequest{r, pre} {
		_, _, err = k.ps.MenderAuthenticate(k.sys, req, time.Hour)
		wantCode(t, err, cradle.EUNAUTHORIZED, "rejected", "tokens revoked")
	}
	sets := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Serial: "SN-1"}))
	if len(sets) != 2 {
		t.Fatalf("sets of SN-1: %+v", sets)
	}
	for _, s := range sets {
		if s.Status != cradle.MenderRejected || s.Reason != "tokens revoked" || s.DecidedBy != "test:admin(admin)" {
			t.Fatalf("set after revocation: %+v", s)
		}
	}
	// Another device's key is untouched; revoking again changes nothing.
	if _, d := login(t)(k.ps.MenderAuthenticate(k.sys, other, time.Hour)); d.Serial != "SN-2" {
		t.Fatalf("SN-2: %+v", d)
	}
	head := k.head(k.tenant.ID)
	if n := must[int](t)(k.ps.RevokeDeviceTokens(k.admin, "SN-1")); n != 0 || k.head(k.tenant.ID) != head {
		t.Fatalf("revoking again: %d, %d audit rows", n, k.head(k.tenant.ID)-head)
	}
}

// testDeviceTokenCleanup: a login deletes its set's tokens revoked more
// than a day ago; a listing stops at cradle.MaxPageSize.
func testDeviceTokenCleanup(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned, "02:00:00:00:07:01")
	r := menderRequest(t, "02:00:00:00:07:01", "c")
	const ttl = 72 * time.Hour // longer than the test: expiry deletes nothing
	old, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r, ttl))
	noErr(t, k.ps.RevokeDeviceToken(k.admin, old.Token.ID))
	e.Clock.Add(24*time.Hour + time.Minute)
	recent, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r, ttl))
	noErr(t, k.ps.RevokeDeviceToken(k.admin, recent.Token.ID))
	e.Clock.Add(time.Hour)
	cur, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r, ttl))
	var ids []string
	for _, tok := range must[[]*cradle.DeviceToken](t)(k.ps.FindDeviceTokens(k.admin, "SN-1")) {
		ids = append(ids, tok.ID)
	}
	if !slices.Equal(ids, []string{cur.Token.ID, recent.Token.ID}) {
		t.Fatalf("tokens: %v; want %s %s (%s revoked a day ago is deleted)", ids, cur.Token.ID, recent.Token.ID, old.Token.ID)
	}

	// Many tokens: the newest MaxPageSize are listed.
	d := k.find("SN-1")
	q := fmt.Sprintf(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)
		INSERT INTO device_tokens (public_id, tenant_id, device_id, kind, secret_hash, created_by, created_at)
		SELECT 'dtk_many' || i, %d, %d, 'target', 'x', 'test', %d FROM n`, cradle.MaxPageSize, k.tenant.ID, d.ID, e.Clock.Now().UnixMicro())
	if _, err := k.e.Raw.Exec(q); err != nil {
		t.Fatal(err)
	}
	if l := must[[]*cradle.DeviceToken](t)(k.ps.FindDeviceTokens(k.admin, "SN-1")); len(l) != cradle.MaxPageSize || l[0].ID != fmt.Sprint("dtk_many", cradle.MaxPageSize) {
		t.Fatalf("listed %d tokens, the first %s", len(l), l[0].ID)
	}
}

// acceptedLogin logs a deployed device's Mender client in the way it is
// admitted: its first request is pending (its MAC does not admit a
// deployed device), an operator accepts the set for serial, and it logs in.
func acceptedLogin(t *testing.T, ps *sqlstore.ProtocolService, sys, admin context.Context, req cradle.MenderAuthRequest, serial string) *cradle.IssuedToken {
	t.Helper()
	_, _, err := ps.MenderAuthenticate(sys, req, time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	set := must[[]*cradle.MenderAuthSet](t)(ps.FindMenderAuthSets(admin, cradle.MenderAuthFilter{Status: ptr(cradle.MenderPending), Limit: 1}))[0]
	must[*cradle.MenderAuthSet](t)(ps.AcceptMenderAuthSet(admin, set.ID, cradle.MenderAccept{Serial: serial}))
	tok, _ := login(t)(ps.MenderAuthenticate(sys, req, time.Hour))
	return tok
}
