package storetest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// compatKit is a tenant with the protocol store, devices and the update
// fixtures of updateKit.
type compatKit struct {
	*updateKit
	ps  *sqlstore.ProtocolService
	sys context.Context // the tenant's system actor, as the Mender handler calls
}

func newCompatKit(t *testing.T, e *Env, tenant string) *compatKit {
	t.Helper()
	k := &compatKit{updateKit: newUpdateKit(t, e, tenant), ps: sqlstore.NewProtocolService(e.DB)}
	k.sys = cradle.NewContextWithActor(context.Background(), cradle.SystemActor(k.tenant.ID, "mender"))
	return k
}

// newDevice creates a device of model gw-1 in state (factory,
// provisioned or deployed) with MACs.
func (k *compatKit) newDevice(serial string, state cradle.State, macs ...string) *cradle.Device {
	k.t.Helper()
	initial := state
	if state == cradle.StateDeployed {
		initial = cradle.StateProvisioned
	}
	d, err := k.e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: serial, Model: "gw-1", MACs: macs, State: initial})
	if err != nil {
		k.t.Fatalf("create %s: %v", serial, err)
	}
	if state != initial {
		if d, err = k.e.Devices.TransitionDevice(k.admin, serial, cradle.DeviceTransition{To: state}); err != nil {
			k.t.Fatalf("deploy %s: %v", serial, err)
		}
	}
	return d
}

func (k *compatKit) find(serial string) *cradle.Device {
	k.t.Helper()
	return must[*cradle.Device](k.t)(k.e.Devices.FindDeviceBySerial(k.admin, serial))
}

// head returns the sequence of the tenant's audit chain head: it grows
// with every audited write.
func (k *compatKit) head(tenantID int64) int64 {
	k.t.Helper()
	var seq int64
	if err := k.e.Raw.QueryRow(k.e.Backend.Rebind(`SELECT seq FROM audit_heads WHERE tenant_id = ?`), tenantID).Scan(&seq); err != nil {
		k.t.Fatal(err)
	}
	return seq
}

func (k *compatKit) count(q string, args ...any) int {
	k.t.Helper()
	var n int
	if err := k.e.Raw.QueryRow(k.e.Backend.Rebind(q), args...).Scan(&n); err != nil {
		k.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// lastActions returns the tenant's last n audit actions.
func (k *compatKit) lastActions(n int) []string {
	k.t.Helper()
	all := k.actions()
	return all[max(0, len(all)-n):]
}

// menderRequest is a verified auth request of a fresh Ed25519 key with
// the identity {"mac": mac, "serial_hint": hint}.
func menderRequest(t *testing.T, mac, hint string) cradle.MenderAuthRequest {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(map[string]string{"mac": mac, "hint": hint})
	canon, m, err := cradle.CanonicalMenderIDData(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	_, pemText, fp, err := cradle.ParseDevicePublicKey(pemOf(t, pub))
	if err != nil {
		t.Fatal(err)
	}
	return cradle.MenderAuthRequest{IDData: canon, PublicKey: pemText, KeyFingerprint: fp, MAC: m}
}

func tokenAuthCtx() context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.SystemActor(0, "device-api"))
}

func testMenderAuth(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned, "02:00:00:00:00:01")
	k.newDevice("SN-2", cradle.StateProvisioned, "02:00:00:00:00:02")
	// Two devices share a MAC (a bad factory record): neither is chosen.
	k.newDevice("SN-3", cradle.StateProvisioned, "02:00:00:00:00:03")
	k.newDevice("SN-4", cradle.StateProvisioned, "02:00:00:00:00:03")
	ttl := time.Hour

	// An unknown identity is stored pending; asking again writes nothing.
	unknown := menderRequest(t, "02:00:00:00:00:99", "x")
	_, _, err := k.ps.MenderAuthenticate(k.sys, unknown, ttl)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending", "cradle device mender accept mas_")
	sets := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{}))
	if len(sets) != 1 || sets[0].Status != cradle.MenderPending || sets[0].IDData != unknown.IDData || sets[0].DeviceSerial != "" {
		t.Fatalf("sets after a first request: %+v", sets)
	}
	pendingID := sets[0].ID
	if got := k.lastActions(1); got[0] != "mender.auth.pending" {
		t.Fatalf("audit: %v", got)
	}
	head := k.head(k.tenant.ID)
	k.e.Clock.Add(time.Minute)
	for range 2 {
		_, _, err = k.ps.MenderAuthenticate(k.sys, unknown, ttl)
		wantCode(t, err, cradle.EUNAUTHORIZED, "pending", pendingID)
	}
	if h := k.head(k.tenant.ID); h != head {
		t.Fatalf("a pending set asking again wrote %d audit entries", h-head)
	}
	if s := must[*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSet(k.admin, pendingID)); !s.UpdatedAt.Equal(sets[0].UpdatedAt) {
		t.Fatalf("a pending set asking again was updated: %v", s.UpdatedAt)
	}
	// An ambiguous MAC is not admitted either.
	ambiguous := menderRequest(t, "02:00:00:00:00:03", "a")
	_, _, err = k.ps.MenderAuthenticate(k.sys, ambiguous, ttl)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")

	// The MAC of a provisioned device admits it at once: protocol mender,
	// deployed by the device itself, a session token.
	r1 := menderRequest(t, "02:00:00:00:00:01", "one")
	tok, d, err := k.ps.MenderAuthenticate(k.sys, r1, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if d.Serial != "SN-1" || d.State != cradle.StateDeployed || d.Protocol != cradle.ProtocolMender {
		t.Fatalf("admitted device: %+v", d)
	}
	if got := k.find("SN-1"); got.State != cradle.StateDeployed || got.Protocol != cradle.ProtocolMender {
		t.Fatalf("stored device: %+v", got)
	}
	hist := must[[]*cradle.StateChange](t)(k.e.Devices.FindDeviceHistory(k.admin, "SN-1"))
	if last := hist[len(hist)-1]; last.To != cradle.StateDeployed || last.Actor != "device:SN-1(device)" {
		t.Fatalf("history: %+v", last)
	}
	if tok.Token.Kind != cradle.TokenMenderSession || tok.Token.DeviceSerial != "SN-1" || tok.Token.ExpiresAt == nil ||
		!tok.Token.ExpiresAt.Equal(e.Clock.Now().Add(ttl)) || !strings.HasPrefix(tok.Secret, tok.Token.ID+".") {
		t.Fatalf("session token: %+v", tok)
	}
	if got := k.lastActions(4); !slices.Equal(got, []string{"mender.auth.accepted", "device.admit", "device.transition", "device.token.create"}) {
		t.Fatalf("audit: %v", got)
	}
	auth := must[*cradle.DeviceTokenAuth](t)(k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok.Secret))
	if auth.TenantID != k.tenant.ID || auth.Device == nil || auth.Device.Serial != "SN-1" || auth.Device.State != cradle.StateDeployed || auth.Token.ID != tok.Token.ID {
		t.Fatalf("token auth: %+v", auth)
	}
	// Logging in again: a new token, no move, no protocol change.
	tok2, _, err := k.ps.MenderAuthenticate(k.sys, r1, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if tok2.Secret == tok.Secret {
		t.Fatal("the same session token twice")
	}
	if got := k.lastActions(1); got[0] != "device.token.create" {
		t.Fatalf("audit of a second login: %v", got)
	}
	// A second key with SN-1's MAC waits for an operator: SN-1 has a key.
	r1b := menderRequest(t, "02:00:00:00:00:01", "one-new-key")
	_, _, err = k.ps.MenderAuthenticate(k.sys, r1b, ttl)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	set1b := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Limit: 1}))[0]
	// Accepting it rejects the first set and revokes its tokens.
	acc := must[*cradle.MenderAuthSet](t)(k.ps.AcceptMenderAuthSet(k.admin, set1b.ID, cradle.MenderAccept{Serial: "SN-1"}))
	if acc.Status != cradle.MenderAccepted || acc.DeviceSerial != "SN-1" || acc.DecidedBy != "test:admin(admin)" {
		t.Fatalf("accepted: %+v", acc)
	}
	old := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Serial: "SN-1", Status: ptr(cradle.MenderRejected)}))
	if len(old) != 1 || !strings.Contains(old[0].Reason, set1b.ID) {
		t.Fatalf("the first set of SN-1: %+v", old)
	}
	for _, s := range []string{tok.Secret, tok2.Secret} {
		_, err = k.ps.AuthenticateDeviceToken(tokenAuthCtx(), s)
		wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	}
	_, _, err = k.ps.MenderAuthenticate(k.sys, r1, ttl)
	wantCode(t, err, cradle.EUNAUTHORIZED, "rejected", "superseded")
	tok3, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r1b, ttl))
	if tok3.Token.DeviceSerial != "SN-1" {
		t.Fatalf("token of the new key: %+v", tok3)
	}

	// An operator rejects the new key with a reason: its token dies, its
	// requests are refused saying so.
	rej := must[*cradle.MenderAuthSet](t)(k.ps.RejectMenderAuthSet(k.admin, set1b.ID, "key leaked"))
	if rej.Status != cradle.MenderRejected || rej.Reason != "key leaked" || rej.DeviceSerial != "SN-1" {
		t.Fatalf("rejected: %+v", rej)
	}
	_, err = k.ps.AuthenticateDeviceToken(tokenAuthCtx(), tok3.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	head = k.head(k.tenant.ID)
	_, _, err = k.ps.MenderAuthenticate(k.sys, r1b, ttl)
	wantCode(t, err, cradle.EUNAUTHORIZED, "rejected", "key leaked")
	if h := k.head(k.tenant.ID); h != head {
		t.Fatal("a rejected set asking again wrote to the audit log")
	}

	// Accepting the pending unknown set for a new device needs a model;
	// nothing is stored without one.
	_, err = k.ps.AcceptMenderAuthSet(k.admin, pendingID, cradle.MenderAccept{Serial: "SN-NEW"})
	wantCode(t, err, cradle.EINVALID, "model")
	_, err = k.e.Devices.FindDeviceBySerial(k.admin, "SN-NEW")
	wantCode(t, err, cradle.ENOTFOUND)
	if s := must[*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSet(k.admin, pendingID)); s.Status != cradle.MenderPending {
		t.Fatalf("set after a failed accept: %+v", s)
	}
	// An auditor may not accept keys.
	_, err = k.ps.AcceptMenderAuthSet(e.As(k.tenant.ID, cradle.RoleAuditor), pendingID, cradle.MenderAccept{Serial: "SN-NEW", Model: "gw-1"})
	wantCode(t, err, cradle.EFORBIDDEN)
	acc = must[*cradle.MenderAuthSet](t)(k.ps.AcceptMenderAuthSet(k.admin, pendingID, cradle.MenderAccept{Serial: "SN-NEW", Model: "gw-1", HardwareRevision: "B"}))
	nd := k.find("SN-NEW")
	if nd.State != cradle.StateProvisioned || nd.Protocol != cradle.ProtocolMender || nd.HardwareRevision != "B" || !slices.Equal(nd.MACs, []string{"02:00:00:00:00:99"}) {
		t.Fatalf("created device: %+v", nd)
	}
	if got := k.lastActions(2); !slices.Equal(got, []string{"device.create", "mender.auth.accepted"}) {
		t.Fatalf("audit: %v", got)
	}
	if _, d, err = k.ps.MenderAuthenticate(k.sys, unknown, ttl); err != nil || d.Serial != "SN-NEW" || d.State != cradle.StateDeployed {
		t.Fatalf("login after accept: %+v %v", d, err)
	}

	// Preauthorization: accepted at the first request.
	r2 := menderRequest(t, "02:00:00:00:00:42", "two")
	pre := must[*cradle.MenderAuthSet](t)(k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-2", IDData: `{ "hint": "two", "mac": "02:00:00:00:00:42" }`, PublicKey: r2.PublicKey}))
	if pre.Status != cradle.MenderPreauthorized || pre.IDData != r2.IDData || pre.DeviceSerial != "SN-2" {
		t.Fatalf("preauthorized: %+v", pre)
	}
	_, err = k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-2", IDData: r2.IDData, PublicKey: r2.PublicKey})
	wantCode(t, err, cradle.ECONFLICT, pre.ID)
	_, err = k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-2", IDData: `{"mac":1}`, PublicKey: r2.PublicKey})
	wantCode(t, err, cradle.EINVALID)
	_, err = k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-2", IDData: r2.IDData, PublicKey: "nope"})
	wantCode(t, err, cradle.EINVALID)
	_, err = k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-404", IDData: r2.IDData, PublicKey: r2.PublicKey})
	wantCode(t, err, cradle.ENOTFOUND)
	if _, d, err = k.ps.MenderAuthenticate(k.sys, r2, ttl); err != nil || d.Serial != "SN-2" || d.State != cradle.StateDeployed {
		t.Fatalf("preauthorized login: %+v %v", d, err)
	}
	if s := must[*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSet(k.admin, pre.ID)); s.Status != cradle.MenderAccepted {
		t.Fatalf("preauthorized set after login: %+v", s)
	}

	// A suspended device may not log in, nor use its tokens; both audited.
	sess, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r2, ttl))
	if _, err := k.e.Devices.TransitionDevice(k.admin, "SN-2", cradle.DeviceTransition{To: cradle.StateSuspended}); err != nil {
		t.Fatal(err)
	}
	_, _, err = k.ps.MenderAuthenticate(k.sys, r2, ttl)
	wantCode(t, err, cradle.EFORBIDDEN, "suspended")
	if got := k.lastActions(1); got[0] != "mender.auth.refused" {
		t.Fatalf("audit: %v", got)
	}
	_, err = k.ps.AuthenticateDeviceToken(tokenAuthCtx(), sess.Secret)
	wantCode(t, err, cradle.EFORBIDDEN, "suspended")
	if got := k.lastActions(1); got[0] != "device.token.refused" {
		t.Fatalf("audit: %v", got)
	}
	// Nothing else was written by the refused login.
	if n := k.count(`SELECT COUNT(*) FROM device_tokens t JOIN devices d ON d.id = t.device_id WHERE d.serial = ? AND d.tenant_id = ?`, "SN-2", k.tenant.ID); n != 2 {
		t.Fatalf("SN-2 has %d tokens, want 2", n)
	}

	// Another tenant sees none of it.
	other := newCompatKit(t, e, "globex")
	_, err = other.ps.FindMenderAuthSet(other.admin, pre.ID)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = other.ps.AcceptMenderAuthSet(other.admin, pendingID, cradle.MenderAccept{Serial: "SN-1", Model: "gw-1"})
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = other.ps.RejectMenderAuthSet(other.admin, pendingID, "")
	wantCode(t, err, cradle.ENOTFOUND)
	if sets := must[[]*cradle.MenderAuthSet](t)(other.ps.FindMenderAuthSets(other.admin, cradle.MenderAuthFilter{})); len(sets) != 0 {
		t.Fatalf("globex sees %d sets", len(sets))
	}
	// The same identity and key in another tenant is another set.
	_, _, err = other.ps.MenderAuthenticate(other.sys, r2, ttl)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")

	// Only the server itself authenticates; malformed requests are refused.
	_, _, err = k.ps.MenderAuthenticate(k.admin, r1, ttl)
	wantCode(t, err, cradle.EFORBIDDEN)
	bad := r1
	bad.IDData = `{"mac": "02:00:00:00:00:01"}`
	_, _, err = k.ps.MenderAuthenticate(k.sys, bad, ttl)
	wantCode(t, err, cradle.EINVALID, "canonical")
	bad = r1
	bad.KeyFingerprint = strings.Repeat("0", 64)
	_, _, err = k.ps.MenderAuthenticate(k.sys, bad, ttl)
	wantCode(t, err, cradle.EINVALID, "fingerprint")
	_, _, err = k.ps.MenderAuthenticate(k.sys, r1b, 0)
	wantCode(t, err, cradle.EINVALID, "lifetime")
	_, err = k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Status: ptr(cradle.MenderAuthStatus("maybe"))})
	wantCode(t, err, cradle.EINVALID)
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func login(t *testing.T) func(*cradle.IssuedToken, *cradle.Device, error) (*cradle.IssuedToken, *cradle.Device) {
	return func(tok *cradle.IssuedToken, d *cradle.Device, err error) (*cradle.IssuedToken, *cradle.Device) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return tok, d
	}
}

func testMenderAcceptRefusals(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-HB", cradle.StateProvisioned)
	k.newDevice("SN-RMA", cradle.StateProvisioned)
	k.newDevice("SN-F", cradle.StateFactory)
	if _, err := k.ps.AdmitDevice(asDevice(k.tenant.ID, "SN-HB"), "SN-HB", cradle.ProtocolHawkbit); err != nil {
		t.Fatal(err)
	}
	if _, err := k.e.Devices.TransitionDevice(k.admin, "SN-RMA", cradle.DeviceTransition{To: cradle.StateRMA}); err != nil {
		t.Fatal(err)
	}
	r := menderRequest(t, "02:00:00:00:01:01", "r")
	_, _, err := k.ps.MenderAuthenticate(k.sys, r, time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	id := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{}))[0].ID
	for _, tc := range []struct{ serial, msg string }{{"SN-HB", "hawkbit"}, {"SN-RMA", "rma"}, {"SN-F", "factory"}} {
		head := k.head(k.tenant.ID)
		_, err := k.ps.AcceptMenderAuthSet(k.admin, id, cradle.MenderAccept{Serial: tc.serial})
		wantCode(t, err, cradle.ECONFLICT, tc.msg)
		if got := k.lastActions(1); got[0] != "mender.auth.accept.refused" || k.head(k.tenant.ID) != head+1 {
			t.Fatalf("%s: audit %v", tc.serial, got)
		}
	}
	if s := must[*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSet(k.admin, id)); s.Status != cradle.MenderPending || s.DeviceSerial != "" {
		t.Fatalf("set after refused accepts: %+v", s)
	}
	_, err = k.ps.AcceptMenderAuthSet(k.admin, "mas_0000000000000000", cradle.MenderAccept{Serial: "SN-HB"})
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.ps.AcceptMenderAuthSet(k.admin, id, cradle.MenderAccept{Serial: "bad serial!"})
	wantCode(t, err, cradle.EINVALID)
	_, err = k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-HB", IDData: r.IDData, PublicKey: r.PublicKey})
	wantCode(t, err, cradle.ECONFLICT, "hawkbit")
	_, err = k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-RMA", IDData: r.IDData, PublicKey: r.PublicKey})
	wantCode(t, err, cradle.ECONFLICT, "rma")

	// A preauthorized device sent to RMA before its first request: the
	// move to rma rejected the set (an operational credential), so the
	// request is refused and leaves everything as it was.
	k.newDevice("SN-P", cradle.StateProvisioned)
	rp := menderRequest(t, "02:00:00:00:01:02", "p")
	pre := must[*cradle.MenderAuthSet](t)(k.ps.PreauthorizeMender(k.admin, cradle.MenderPreauth{Serial: "SN-P", IDData: rp.IDData, PublicKey: rp.PublicKey}))
	if _, err := k.e.Devices.TransitionDevice(k.admin, "SN-P", cradle.DeviceTransition{To: cradle.StateRMA}); err != nil {
		t.Fatal(err)
	}
	_, _, err = k.ps.MenderAuthenticate(k.sys, rp, time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "rma")
	if s := must[*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSet(k.admin, pre.ID)); s.Status != cradle.MenderRejected {
		t.Fatalf("set after a refused login: %+v", s)
	}
	if d := k.find("SN-P"); d.Protocol != cradle.ProtocolCradle || d.State != cradle.StateRMA {
		t.Fatalf("device after a refused login: %+v", d)
	}
	if n := k.count(`SELECT COUNT(*) FROM device_tokens`); n != 0 {
		t.Fatalf("%d tokens after refused logins", n)
	}
	// A rejected set is answered from a read: the login writes nothing.
	if got := k.lastActions(1); got[0] != "device.credentials.revoke" {
		t.Fatalf("audit: %v", got)
	}
}

// testMenderConcurrent sends first requests at the same time: one pair
// from many connections is one pending set, and many keys with the MAC
// of one device admit only one of them.
func testMenderConcurrent(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned, "02:00:00:00:00:01")
	const n = 6
	run := func(req func(i int) cradle.MenderAuthRequest) (ok int, errs []error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, _, err := k.ps.MenderAuthenticate(k.sys, req(i), time.Hour)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					ok++
				} else {
					errs = append(errs, err)
				}
			})
		}
		wg.Wait()
		return ok, errs
	}
	same := menderRequest(t, "02:00:00:00:00:77", "same")
	ok, errs := run(func(int) cradle.MenderAuthRequest { return same })
	if ok != 0 || len(errs) != n {
		t.Fatalf("%d admitted", ok)
	}
	for _, err := range errs {
		wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	}
	if c := k.count(`SELECT COUNT(*) FROM mender_auth_sets`); c != 1 {
		t.Fatalf("%d sets for one pair", c)
	}
	if got := k.actions(); slices.Index(got, "mender.auth.pending") != len(got)-1 {
		t.Fatalf("audit: %v", got)
	}

	keys := make([]cradle.MenderAuthRequest, n)
	for i := range keys {
		keys[i] = menderRequest(t, "02:00:00:00:00:01", fmt.Sprint(i))
	}
	ok, errs = run(func(i int) cradle.MenderAuthRequest { return keys[i] })
	if ok != 1 {
		t.Fatalf("%d keys admitted for one device, want 1 (%v)", ok, errs)
	}
	for _, err := range errs {
		wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	}
	acc := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Serial: "SN-1"}))
	if len(acc) != 1 || acc[0].Status != cradle.MenderAccepted {
		t.Fatalf("sets of SN-1: %+v", acc)
	}
	if d := k.find("SN-1"); d.State != cradle.StateDeployed {
		t.Fatalf("device: %+v", d)
	}
}

func testDeviceTokens(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateDeployed)
	k.newDevice("SN-2", cradle.StateDeployed)
	ctx := tokenAuthCtx()

	target := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-1", Name: "suricatta"}))
	gw := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, Name: "gateway"}))
	exp := e.Clock.Now().Add(time.Hour)
	short := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-2", ExpiresAt: &exp}))
	want := cradle.DeviceToken{ID: target.Token.ID, Kind: cradle.TokenHawkbitTarget, DeviceSerial: "SN-1", Name: "suricatta", CreatedBy: "test:admin(admin)", CreatedAt: Epoch}
	if diff := cmp.Diff(want, target.Token); diff != "" {
		t.Fatalf("target token (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(target.Secret, target.Token.ID+".") || len(target.Secret) != 4+16+1+43 {
		t.Fatalf("token string %q", target.Secret)
	}
	if n := k.count(`SELECT COUNT(*) FROM device_tokens WHERE secret_hash = ?`, digest(target.Secret)); n != 1 {
		t.Fatal("the token's hash is not the SHA-256 of its string")
	}
	if n := k.count(`SELECT COUNT(*) FROM device_tokens WHERE secret_hash LIKE ?`, "%"+target.Secret[len(target.Token.ID)+1:]+"%"); n != 0 {
		t.Fatal("the token's secret is stored")
	}

	a := must[*cradle.DeviceTokenAuth](t)(k.ps.AuthenticateDeviceToken(ctx, target.Secret))
	if diff := cmp.Diff(want, a.Token); diff != "" || a.TenantID != k.tenant.ID || a.Device == nil || a.Device.Serial != "SN-1" || a.Device.Model != "gw-1" {
		t.Fatalf("target auth: %+v %s", a, diff)
	}
	a = must[*cradle.DeviceTokenAuth](t)(k.ps.AuthenticateDeviceToken(ctx, gw.Secret))
	if a.Device != nil || a.TenantID != k.tenant.ID || a.Token.Kind != cradle.TokenGateway {
		t.Fatalf("gateway auth: %+v", a)
	}

	// Malformed and unknown tokens: refused, tenant unknown, nothing written.
	h0, h1 := k.head(0), k.head(k.tenant.ID)
	for _, s := range []string{"", "x", target.Secret + "x", strings.Replace(target.Secret, ".", "_", 1), strings.ToUpper(target.Secret),
		"dtk_0123456789abcdef." + strings.Repeat("A", 43), target.Secret[:len(target.Secret)-1] + "B"} {
		_, err := k.ps.AuthenticateDeviceToken(ctx, s)
		wantCode(t, err, cradle.EUNAUTHORIZED)
	}
	if k.head(0) != h0 || k.head(k.tenant.ID) != h1 {
		t.Fatal("malformed or unknown tokens wrote to the audit log")
	}
	// A known id with a wrong secret: refused, audited in the tenant.
	wrong := target.Token.ID + "." + strings.Repeat("A", 43)
	_, err := k.ps.AuthenticateDeviceToken(ctx, wrong)
	wantCode(t, err, cradle.EUNAUTHORIZED, "secret")
	if got := k.lastActions(1); got[0] != "device.token.refused" {
		t.Fatalf("audit: %v", got)
	}
	// Only the server checks tokens.
	_, err = k.ps.AuthenticateDeviceToken(k.admin, target.Secret)
	wantCode(t, err, cradle.EFORBIDDEN)

	// Expiry.
	e.Clock.Add(time.Hour)
	_, err = k.ps.AuthenticateDeviceToken(ctx, short.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "expired")
	past := e.Clock.Now().Add(-time.Second)
	_, err = k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, ExpiresAt: &past})
	wantCode(t, err, cradle.EINVALID, "future")

	// Listing: a device's tokens, or the gateway tokens, newest first.
	second := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-1"}))
	list := must[[]*cradle.DeviceToken](t)(k.ps.FindDeviceTokens(k.admin, "SN-1"))
	if len(list) != 2 || list[0].ID != second.Token.ID || list[1].ID != target.Token.ID {
		t.Fatalf("SN-1 tokens: %+v", list)
	}
	if list := must[[]*cradle.DeviceToken](t)(k.ps.FindDeviceTokens(k.admin, "")); len(list) != 1 || list[0].ID != gw.Token.ID {
		t.Fatalf("gateway tokens: %+v", list)
	}

	// Revocation: one, twice (a no-op), and all of a device's.
	noErr(t, k.ps.RevokeDeviceToken(k.admin, target.Token.ID))
	head := k.head(k.tenant.ID)
	noErr(t, k.ps.RevokeDeviceToken(k.admin, target.Token.ID))
	if k.head(k.tenant.ID) != head {
		t.Fatal("revoking twice was audited")
	}
	_, err = k.ps.AuthenticateDeviceToken(ctx, target.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	if n := must[int](t)(k.ps.RevokeDeviceTokens(k.admin, "SN-1")); n != 1 {
		t.Fatalf("revoked %d tokens of SN-1, want 1", n)
	}
	if n := must[int](t)(k.ps.RevokeDeviceTokens(k.admin, "SN-2")); n != 0 {
		t.Fatalf("revoked %d tokens of SN-2 (its only token expired), want 0", n)
	}
	_, err = k.ps.AuthenticateDeviceToken(ctx, second.Secret)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")

	// A suspended device's tokens are refused.
	third := must[*cradle.IssuedToken](t)(k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-2"}))
	if _, err := k.e.Devices.TransitionDevice(k.admin, "SN-2", cradle.DeviceTransition{To: cradle.StateSuspended}); err != nil {
		t.Fatal(err)
	}
	_, err = k.ps.AuthenticateDeviceToken(ctx, third.Secret)
	wantCode(t, err, cradle.EFORBIDDEN, "suspended")

	// Refusals: bad requests, another tenant, roles.
	for _, c := range []cradle.DeviceTokenCreate{
		{Kind: cradle.TokenMenderSession, Serial: "SN-1"}, {Kind: cradle.TokenHawkbitTarget}, {Kind: cradle.TokenGateway, Serial: "SN-1"},
		{Kind: "other"}, {Kind: cradle.TokenGateway, Name: strings.Repeat("n", 200)}, {Kind: cradle.TokenGateway, Name: "a\nb"},
	} {
		_, err := k.ps.CreateDeviceToken(k.admin, c)
		wantCode(t, err, cradle.EINVALID)
	}
	_, err = k.ps.CreateDeviceToken(k.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: "SN-404"})
	wantCode(t, err, cradle.ENOTFOUND)
	other := newCompatKit(t, e, "globex")
	wantCode(t, other.ps.RevokeDeviceToken(other.admin, gw.Token.ID), cradle.ENOTFOUND)
	_, err = other.ps.RevokeDeviceTokens(other.admin, "SN-1")
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = other.ps.FindDeviceTokens(other.admin, "SN-1")
	wantCode(t, err, cradle.ENOTFOUND)
	if list := must[[]*cradle.DeviceToken](t)(other.ps.FindDeviceTokens(other.admin, "")); len(list) != 0 {
		t.Fatalf("globex sees gateway tokens: %+v", list)
	}
	auditor := e.As(k.tenant.ID, cradle.RoleAuditor)
	_, err = k.ps.CreateDeviceToken(auditor, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway})
	wantCode(t, err, cradle.EFORBIDDEN)
	wantCode(t, k.ps.RevokeDeviceToken(auditor, gw.Token.ID), cradle.EFORBIDDEN)
	if _, err := k.ps.FindDeviceTokens(auditor, ""); err != nil {
		t.Fatal(err)
	}
	_, err = k.ps.FindDeviceTokens(k.device("SN-1"), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN)
}

// testMenderSessionCleanup checks that a login deletes its set's session
// tokens that expired more than a day ago, and only those.
func testMenderSessionCleanup(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned, "02:00:00:00:00:01")
	r := menderRequest(t, "02:00:00:00:00:01", "c")
	old, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r, time.Hour))
	e.Clock.Add(24*time.Hour + 30*time.Minute) // old expired 23.5 hours ago
	mid, _ := login(t)(k.ps.MenderAuthenticate(k.sys, r, time.Hour))
	e.Clock.Add(time.Hour) // old expired 24.5 hours ago, mid 0 hours ago
	login(t)(k.ps.MenderAuthenticate(k.sys, r, time.Hour))
	var ids []string
	for _, tok := range must[[]*cradle.DeviceToken](t)(k.ps.FindDeviceTokens(k.admin, "SN-1")) {
		ids = append(ids, tok.ID)
	}
	if len(ids) != 2 || slices.Contains(ids, old.Token.ID) || !slices.Contains(ids, mid.Token.ID) {
		t.Fatalf("tokens after cleanup: %v (old %s, mid %s)", ids, old.Token.ID, mid.Token.ID)
	}
}

func testAdmitDevice(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateProvisioned)
	k.newDevice("SN-2", cradle.StateDeployed)
	k.newDevice("SN-F", cradle.StateFactory)
	d := must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-1"), "SN-1", cradle.ProtocolHawkbit))
	if d.State != cradle.StateDeployed || d.Protocol != cradle.ProtocolHawkbit {
		t.Fatalf("admitted: %+v", d)
	}
	if diff := cmp.Diff(d, k.find("SN-1")); diff != "" {
		t.Fatalf("stored device differs (-returned +stored):\n%s", diff)
	}
	hist := must[[]*cradle.StateChange](t)(k.e.Devices.FindDeviceHistory(k.admin, "SN-1"))
	if last := hist[len(hist)-1]; last.From != cradle.StateProvisioned || last.To != cradle.StateDeployed || last.Actor != "device:SN-1(device)" {
		t.Fatalf("history: %+v", last)
	}
	if got := k.lastActions(2); !slices.Equal(got, []string{"device.admit", "device.transition"}) {
		t.Fatalf("audit: %v", got)
	}
	// Again: nothing written.
	head := k.head(k.tenant.ID)
	for range 3 {
		must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-1"), "SN-1", cradle.ProtocolHawkbit))
	}
	if k.head(k.tenant.ID) != head {
		t.Fatal("admitting an admitted device wrote")
	}
	// A deployed native device switching protocol, with a key an
	// operator accepted: only the protocol.
	r := menderRequest(t, "02:00:00:00:02:02", "sn-2")
	_, _, err := k.ps.MenderAuthenticate(k.sys, r, time.Hour)
	wantCode(t, err, cradle.EUNAUTHORIZED, "pending")
	set := must[[]*cradle.MenderAuthSet](t)(k.ps.FindMenderAuthSets(k.admin, cradle.MenderAuthFilter{Limit: 1}))[0]
	must[*cradle.MenderAuthSet](t)(k.ps.AcceptMenderAuthSet(k.admin, set.ID, cradle.MenderAccept{Serial: "SN-2"}))
	d = must[*cradle.Device](t)(k.ps.AdmitDevice(k.device("SN-2"), "SN-2", cradle.ProtocolMender))
	if d.Protocol != cradle.ProtocolMender || d.State != cradle.StateDeployed {
		t.Fatalf("admitted: %+v", d)
	}
	if got := k.lastActions(1); got[0] != "device.admit" {
		t.Fatalf("audit: %v", got)
	}
	// Refusals.
	_, err = k.ps.AdmitDevice(k.device("SN-F"), "SN-F", cradle.ProtocolHawkbit)
	wantCode(t, err, cradle.ECONFLICT, "factory")
	if got := k.lastActions(1); got[0] != "device.admit.refused" {
		t.Fatalf("audit: %v", got)
	}
	_, err = k.ps.AdmitDevice(k.device("SN-2"), "SN-1", cradle.ProtocolHawkbit)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.ps.AdmitDevice(k.device("SN-2"), "SN-2", "zigbee")
	wantCode(t, err, cradle.EINVALID)
	_, err = k.ps.AdmitDevice(k.device("SN-404"), "SN-404", cradle.ProtocolHawkbit)
	wantCode(t, err, cradle.ENOTFOUND)
	if _, err := k.ps.AdmitDevice(e.As(k.tenant.ID, cradle.RoleAuditor), "SN-2", cradle.ProtocolHawkbit); cradle.ErrorCode(err) != cradle.EFORBIDDEN {
		t.Fatalf("auditor admitting: %v", err)
	}

	// The protocol filter of device listings.
	for _, tc := range []struct {
		p    cradle.Protocol
		want []string
	}{{cradle.ProtocolHawkbit, []string{"SN-1"}}, {cradle.ProtocolMender, []string{"SN-2"}}, {cradle.ProtocolCradle, []string{"SN-F"}}} {
		ds, _ := must2(t)(k.e.Devices.FindDevices(k.admin, cradle.DeviceFilter{Protocol: &tc.p}))
		var got []string
		for _, d := range ds {
			got = append(got, d.Serial)
		}
		if !slices.Equal(got, tc.want) {
			t.Fatalf("protocol %s: %v, want %v", tc.p, got, tc.want)
		}
	}
	_, _, err = k.e.Devices.FindDevices(k.admin, cradle.DeviceFilter{Protocol: ptr(cradle.Protocol("zigbee"))})
	wantCode(t, err, cradle.EINVALID, "protocol")
}

func attrs(kv ...string) []cradle.DeviceAttribute {
	var out []cradle.DeviceAttribute
	for i := 0; i < len(kv); i += 2 {
		out = append(out, cradle.DeviceAttribute{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

func testDeviceAttributes(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateDeployed)
	k.newDevice("SN-2", cradle.StateDeployed)
	dev := k.device("SN-1")
	names := func(serial string) map[string]string {
		t.Helper()
		out := map[string]string{}
		for _, a := range must[[]cradle.DeviceAttribute](t)(k.ps.FindDeviceAttributes(k.admin, serial)) {
			out[a.Name] = a.Value
		}
		return out
	}
	noErr(t, k.ps.SetDeviceAttributes(dev, "SN-1", attrs("device_type", "gw", "artifact_name", "r1", "kernel", "6.1"), true))
	if got := k.lastActions(1); got[0] != "device.attributes" {
		t.Fatalf("audit: %v", got)
	}
	// The same again: nothing written.
	head := k.head(k.tenant.ID)
	e.Clock.Add(time.Minute)
	noErr(t, k.ps.SetDeviceAttributes(dev, "SN-1", attrs("kernel", "6.1", "device_type", "gw", "artifact_name", "r1"), true))
	noErr(t, k.ps.SetDeviceAttributes(dev, "SN-1", attrs("kernel", "6.1"), false))
	if k.head(k.tenant.ID) != head {
		t.Fatal("unchanged attributes were written")
	}
	// Merge changes one and adds one; its audit names them.
	noErr(t, k.ps.SetDeviceAttributes(dev, "SN-1", attrs("artifact_name", "r2", "uptime", "5", "kernel", "6.1"), false))
	entries := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{AfterSeq: head}))
	if len(entries) != 1 || string(entries[0].Details) != `{"changed":["artifact_name","uptime"]}` || entries[0].Actor != "device:SN-1(device)" {
		t.Fatalf("audit of a merge: %+v", entries)
	}
	got := must[[]cradle.DeviceAttribute](t)(k.ps.FindDeviceAttributes(dev, "SN-1"))
	want := []cradle.DeviceAttribute{{Name: "artifact_name", Value: "r2", UpdatedAt: Epoch.Add(time.Minute)}, {Name: "device_type", Value: "gw", UpdatedAt: Epoch},
		{Name: "kernel", Value: "6.1", UpdatedAt: Epoch}, {Name: "uptime", Value: "5", UpdatedAt: Epoch.Add(time.Minute)}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("attributes (-want +got):\n%s", diff)
	}
	// Replace drops what is not given.
	noErr(t, k.ps.SetDeviceAttributes(k.admin, "SN-1", attrs("device_type", "gw"), true))
	if diff := cmp.Diff(map[string]string{"device_type": "gw"}, names("SN-1")); diff != "" {
		t.Fatalf("after replace:\n%s", diff)
	}
	// Remove, by hawkBit's configData mode.
	noErr(t, k.ps.SetDeviceAttributes(dev, "SN-1", attrs("a", "1", "b", "2"), false))
	head = k.head(k.tenant.ID)
	noErr(t, k.ps.RemoveDeviceAttributes(dev, "SN-1", []string{"a", "missing"}))
	noErr(t, k.ps.RemoveDeviceAttributes(dev, "SN-1", []string{"a", "missing"}))
	if k.head(k.tenant.ID) != head+1 {
		t.Fatalf("removing wrote %d audit entries, want 1", k.head(k.tenant.ID)-head)
	}
	if diff := cmp.Diff(map[string]string{"device_type": "gw", "b": "2"}, names("SN-1")); diff != "" {
		t.Fatalf("after remove:\n%s", diff)
	}

	// Invalid input stores nothing.
	before := names("SN-1")
	head = k.head(k.tenant.ID)
	many := make([]cradle.DeviceAttribute, cradle.MaxDeviceAttributes+1)
	for i := range many {
		many[i] = cradle.DeviceAttribute{Name: fmt.Sprintf("n%d", i), Value: "v"}
	}
	almost := many[:cradle.MaxDeviceAttributes-1] // with b and device_type: one too many in merge mode
	for name, c := range map[string][]cradle.DeviceAttribute{
		"too many":       many,
		"too many after": almost,
		"empty name":     attrs("", "x"),
		"long name":      attrs(strings.Repeat("n", cradle.MaxAttributeNameLen+1), "x"),
		"control name":   attrs("a\x01", "x"),
		"long value":     attrs("ok", strings.Repeat("v", cradle.MaxAttributeValueLen+1)),
		"bad utf-8":      attrs("ok", "\xff"),
		"twice":          attrs("ok", "1", "ok", "2"),
		"partly bad":     attrs("fine", "1", "", "2"),
	} {
		if err := k.ps.SetDeviceAttributes(dev, "SN-1", c, false); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Fatalf("%s: %v, want EINVALID", name, err)
		}
	}
	if err := k.ps.SetDeviceAttributes(dev, "SN-1", many[:cradle.MaxDeviceAttributes], true); err != nil {
		t.Fatalf("replacing with the maximum: %v", err)
	}
	noErr(t, k.ps.SetDeviceAttributes(dev, "SN-1", attrs("device_type", "gw", "b", "2"), true))
	if diff := cmp.Diff(before, names("SN-1")); diff != "" || k.head(k.tenant.ID) != head+2 {
		t.Fatalf("refused writes changed something:\n%s", diff)
	}
	wantCode(t, k.ps.RemoveDeviceAttributes(dev, "SN-1", []string{""}), cradle.EINVALID)

	// Another device, another tenant, roles.
	wantCode(t, k.ps.SetDeviceAttributes(k.device("SN-2"), "SN-1", attrs("x", "y"), false), cradle.EFORBIDDEN)
	wantCode(t, k.ps.RemoveDeviceAttributes(k.device("SN-2"), "SN-1", []string{"b"}), cradle.EFORBIDDEN)
	_, err := k.ps.FindDeviceAttributes(k.device("SN-2"), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	auditor := e.As(k.tenant.ID, cradle.RoleAuditor)
	wantCode(t, k.ps.SetDeviceAttributes(auditor, "SN-1", attrs("x", "y"), false), cradle.EFORBIDDEN)
	if _, err := k.ps.FindDeviceAttributes(auditor, "SN-1"); err != nil {
		t.Fatal(err)
	}
	other := newCompatKit(t, e, "globex")
	_, err = other.ps.FindDeviceAttributes(other.admin, "SN-1")
	wantCode(t, err, cradle.ENOTFOUND)
	wantCode(t, other.ps.SetDeviceAttributes(other.admin, "SN-1", attrs("x", "y"), false), cradle.ENOTFOUND)
}

func testDDIActions(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	for _, s := range []string{"SN-1", "SN-2", "SN-3"} {
		k.newDevice(s, cradle.StateDeployed)
	}
	rel := k.sign(k.create(fileRelease("gw-1", "2.0", 2)))
	ro := k.rollout("ro_1", rel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceStarted, 2}, rolloutDevice{"SN-2", cradle.DeviceStarted, 1})
	a1 := must[*cradle.DDIAction](t)(k.ps.DDIAction(k.device("SN-1"), "SN-1", ro, 2))
	if a1.ID < 1 || a1.ID > cradle.MaxDDIActionID || a1.Serial != "SN-1" || a1.RolloutID != ro || a1.Attempt != 2 || !a1.CreatedAt.Equal(Epoch) {
		t.Fatalf("action: %+v", a1)
	}
	if got := k.lastActions(1); got[0] != "update.action" {
		t.Fatalf("audit: %v", got)
	}
	head := k.head(k.tenant.ID)
	if again := must[*cradle.DDIAction](t)(k.ps.DDIAction(k.device("SN-1"), "SN-1", ro, 2)); *again != *a1 {
		t.Fatalf("again: %+v, want %+v", again, a1)
	}
	if k.head(k.tenant.ID) != head {
		t.Fatal("reading an action wrote")
	}
	earlier := must[*cradle.DDIAction](t)(k.ps.DDIAction(k.device("SN-1"), "SN-1", ro, 1))
	if earlier.ID == a1.ID {
		t.Fatal("two attempts share an action id")
	}
	if found := must[*cradle.DDIAction](t)(k.ps.FindDDIAction(k.device("SN-1"), "SN-1", a1.ID)); *found != *a1 {
		t.Fatalf("found %+v, want %+v", found, a1)
	}

	// Concurrent first polls get one action.
	const n = 8
	ids := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a, err := k.ps.DDIAction(k.device("SN-2"), "SN-2", ro, 1)
			if err == nil {
				ids[i] = a.ID
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("concurrent action %d: id %d err %v, want id %d", i, ids[i], errs[i], ids[0])
		}
	}
	if c := k.count(`SELECT COUNT(*) FROM ddi_actions WHERE id = ?`, ids[0]); c != 1 {
		t.Fatalf("%d rows", c)
	}

	// Refusals: another device's action, not in the rollout, an attempt
	// not made, another tenant.
	_, err := k.ps.FindDDIAction(k.device("SN-2"), "SN-2", a1.ID)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.ps.FindDDIAction(k.device("SN-2"), "SN-1", a1.ID)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.ps.DDIAction(k.device("SN-2"), "SN-1", ro, 1)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.ps.DDIAction(k.device("SN-3"), "SN-3", ro, 1)
	wantCode(t, err, cradle.ENOTFOUND, "not in rollout")
	_, err = k.ps.DDIAction(k.device("SN-1"), "SN-1", ro, 3)
	wantCode(t, err, cradle.ENOTFOUND, "attempt 3")
	_, err = k.ps.DDIAction(k.device("SN-1"), "SN-1", "ro_404", 1)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.ps.DDIAction(k.device("SN-1"), "SN-1", ro, 0)
	wantCode(t, err, cradle.EINVALID)
	for _, id := range []int64{0, -1, cradle.MaxDDIActionID + 1, 999999} {
		_, err = k.ps.FindDDIAction(k.device("SN-1"), "SN-1", id)
		wantCode(t, err, cradle.ENOTFOUND)
	}
	other := newCompatKit(t, e, "globex")
	other.newDevice("SN-1", cradle.StateDeployed)
	_, err = other.ps.FindDDIAction(other.device("SN-1"), "SN-1", a1.ID)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = other.ps.DDIAction(other.device("SN-1"), "SN-1", ro, 2)
	wantCode(t, err, cradle.ENOTFOUND)

	// Ids past 2^31 - 1 are never handed out.
	if e.Backend.Name == "postgres" {
		e.Exec(`SELECT setval(pg_get_serial_sequence('ddi_actions', 'id'), 2147483647)`)
	} else {
		e.Exec(`INSERT INTO ddi_actions (id, tenant_id, device_id, rollout_id, attempt, created_at)
			SELECT 2147483647, tenant_id, device_id, rollout_id, 99, 0 FROM ddi_actions WHERE id = ?`, a1.ID)
	}
	head = k.head(k.tenant.ID)
	k.rollout("ro_2", rel, cradle.RolloutRunning, rolloutDevice{"SN-3", cradle.DeviceStarted, 1})
	_, err = k.ps.DDIAction(k.device("SN-3"), "SN-3", "ro_2", 1)
	wantCode(t, err, cradle.EINTERNAL)
	if c := k.count(`SELECT COUNT(*) FROM ddi_actions WHERE attempt = 1 AND device_id = (SELECT id FROM devices WHERE tenant_id = ? AND serial = 'SN-3')`, k.tenant.ID); c != 0 || k.head(k.tenant.ID) != head {
		t.Fatal("an action past the limit was stored")
	}
}

func testUpdateLogs(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	for _, s := range []string{"SN-1", "SN-2"} {
		k.newDevice(s, cradle.StateDeployed)
	}
	rel := k.sign(k.create(fileRelease("gw-1", "2.0", 2)))
	ro1 := k.rollout("ro_1", rel, cradle.RolloutCompleted, rolloutDevice{"SN-1", cradle.DeviceFailed, 1})
	ro2 := k.rollout("ro_2", rel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceStarted, 2}, rolloutDevice{"SN-2", cradle.DeviceStarted, 1})
	dev := k.device("SN-1")
	noErr(t, k.ps.StoreUpdateLog(dev, "SN-1", ro1, 1, `{"messages":[{"level":"error","message":"boom"}]}`))
	e.Clock.Add(time.Minute)
	noErr(t, k.ps.StoreUpdateLog(dev, "SN-1", ro2, 1, "first"))
	e.Clock.Add(time.Minute)
	noErr(t, k.ps.StoreUpdateLog(dev, "SN-1", ro2, 1, "first, again")) // the last one wins
	noErr(t, k.ps.StoreUpdateLog(dev, "SN-1", ro2, 2, "second"))
	if got := k.lastActions(1); got[0] != "update.log" {
		t.Fatalf("audit: %v", got)
	}
	logs := must[[]*cradle.UpdateLog](t)(k.ps.FindUpdateLogs(k.admin, "SN-1", ""))
	want := []*cradle.UpdateLog{
		{Serial: "SN-1", RolloutID: ro2, Attempt: 2, Log: "second", At: Epoch.Add(2 * time.Minute)},
		{Serial: "SN-1", RolloutID: ro2, Attempt: 1, Log: "first, again", At: Epoch.Add(2 * time.Minute)},
		{Serial: "SN-1", RolloutID: ro1, Attempt: 1, Log: `{"messages":[{"level":"error","message":"boom"}]}`, At: Epoch},
	}
	if diff := cmp.Diff(want, logs); diff != "" {
		t.Fatalf("logs (-want +got):\n%s", diff)
	}
	if logs := must[[]*cradle.UpdateLog](t)(k.ps.FindUpdateLogs(k.admin, "SN-1", ro1)); len(logs) != 1 || logs[0].RolloutID != ro1 {
		t.Fatalf("logs of %s: %+v", ro1, logs)
	}

	head := k.head(k.tenant.ID)
	wantCode(t, k.ps.StoreUpdateLog(dev, "SN-1", ro2, 1, strings.Repeat("x", cradle.MaxUpdateLogBytes+1)), cradle.ETOOLARGE)
	wantCode(t, k.ps.StoreUpdateLog(dev, "SN-1", ro2, 1, "a\x00b"), cradle.EINVALID)
	wantCode(t, k.ps.StoreUpdateLog(dev, "SN-1", ro2, 3, "future"), cradle.ENOTFOUND)
	wantCode(t, k.ps.StoreUpdateLog(dev, "SN-1", "ro_404", 1, "x"), cradle.ENOTFOUND)
	wantCode(t, k.ps.StoreUpdateLog(dev, "SN-1", "", 1, "x"), cradle.EINVALID)
	wantCode(t, k.ps.StoreUpdateLog(k.device("SN-2"), "SN-2", ro1, 1, "not mine"), cradle.ENOTFOUND)
	if k.head(k.tenant.ID) != head {
		t.Fatal("refused logs were written")
	}
	wantCode(t, k.ps.StoreUpdateLog(k.device("SN-2"), "SN-1", ro2, 1, "x"), cradle.EFORBIDDEN)
	_, err := k.ps.FindUpdateLogs(dev, "SN-1", "")
	wantCode(t, err, cradle.EFORBIDDEN)
	if l := must[[]*cradle.UpdateLog](t)(k.ps.FindUpdateLogs(k.admin, "SN-1", ro2)); l[1].Log != "first, again" {
		t.Fatalf("a refused log replaced a stored one: %+v", l[1])
	}
	other := newCompatKit(t, e, "globex")
	other.newDevice("SN-1", cradle.StateDeployed)
	wantCode(t, other.ps.StoreUpdateLog(other.device("SN-1"), "SN-1", ro2, 1, "x"), cradle.ENOTFOUND)
	if l := must[[]*cradle.UpdateLog](t)(other.ps.FindUpdateLogs(other.admin, "SN-1", "")); len(l) != 0 {
		t.Fatalf("globex sees logs: %+v", l)
	}
}

// testCompatFields checks the new fields of existing records: a release's
// artifact name and the rollout state of a pending update.
func testCompatFields(t *testing.T, e *Env) {
	k := newCompatKit(t, e, "acme")
	k.newDevice("SN-1", cradle.StateDeployed)
	c := fileRelease("gw-1", "2.0", 2)
	c.Kind, c.ArtifactName = cradle.ReleaseMender, "release-2.0"
	rel := k.sign(k.create(c))
	if rel.ArtifactName != "release-2.0" {
		t.Fatalf("artifact name: %q", rel.ArtifactName)
	}
	if got := must[*cradle.Release](t)(k.svc.FindRelease(k.admin, rel.ID)); got.ArtifactName != "release-2.0" {
		t.Fatalf("stored artifact name: %q", got.ArtifactName)
	}
	bad := fileRelease("gw-1", "2.1", 2)
	bad.ArtifactName = strings.Repeat("n", 300)
	_, err := k.svc.CreateRelease(k.admin, bad)
	wantCode(t, err, cradle.EINVALID, "artifact_name")
	ro := k.rollout("ro_1", rel, cradle.RolloutAborted, rolloutDevice{"SN-1", cradle.DeviceInstalling, 1})
	p := must[*cradle.PendingUpdate](t)(k.upd.PendingUpdate(k.device("SN-1"), "SN-1", ""))
	if p.RolloutID != ro || p.RolloutState != cradle.RolloutAborted || p.Release.ArtifactName != "release-2.0" {
		t.Fatalf("pending update: %+v", p)
	}
}
