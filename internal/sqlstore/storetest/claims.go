package storetest

import (
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// claimUnit provisions one unit through a signed trace record carrying
// the hash of a fresh claim code, and returns its serial and code.
func claimUnit(t *testing.T, k *factoryKit, station string, u cradle.UnitAllocation) string {
	t.Helper()
	code, err := cradle.NewClaimCode()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := k.record(u, station, cradle.UnitProvisioned)
	r.ClaimCodeHash = cradle.ClaimCodeHash(u.Serial, code)
	k.upload(k.sign(r))
	return code
}

func wantClaimErr(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	if cradle.ErrorCode(err) != code || !strings.Contains(cradle.ErrorMessage(err), msg) {
		t.Fatalf("%s: %v, want %s containing %q", what, err, code, msg)
	}
}

func testClaims(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("b1", 10, cradle.ProfileTest)
	k.station("line-1", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	units := k.allocate("b1", "line-1", 4)
	claims := sqlstore.NewClaimService(e.DB)
	certs := sqlstore.NewCertificateService(e.DB)
	operator := k.as(cradle.RoleOperator)

	// The policy starts off; only an admin changes it, audited.
	if p, err := claims.FindPolicy(operator); err != nil || p.QuarantineUnclaimed {
		t.Fatalf("FindPolicy = %+v, %v; want the zero policy", p, err)
	}
	_, err := claims.UpdatePolicy(operator, cradle.TenantPolicy{QuarantineUnclaimed: true})
	wantClaimErr(t, "operator updates the policy", err, cradle.EFORBIDDEN, "may not change the tenant policy")
	if _, err := claims.UpdatePolicy(k.admin, cradle.TenantPolicy{QuarantineUnclaimed: true}); err != nil {
		t.Fatalf("UpdatePolicy: %v", err)
	}
	if p, err := claims.FindPolicy(k.as(cradle.RoleAuditor)); err != nil || !p.QuarantineUnclaimed {
		t.Fatalf("FindPolicy after the update = %+v, %v", p, err)
	}
	// Another tenant's policy is its own.
	_, other := e.Tenant("globex", cradle.RoleAdmin)
	if p, err := claims.FindPolicy(other); err != nil || p.QuarantineUnclaimed {
		t.Fatalf("another tenant's policy = %+v, %v", p, err)
	}

	code0 := claimUnit(t, k, "line-1", units[0])
	code1 := claimUnit(t, k, "line-1", units[1])
	s0, s1 := units[0].Serial, units[1].Serial

	// Enrollment of an unclaimed device under the policy: quarantined.
	enroll := func(serial string) {
		t.Helper()
		_, err := certs.IssueCertificate(asDevice(k.tenant.ID, serial), cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Deploy: true,
			States: []cradle.State{cradle.StateProvisioned, cradle.StateDeployed}, Issue: k.ca.issue(t, e, 90*24*time.Hour)})
		if err != nil {
			t.Fatalf("enroll %s: %v", serial, err)
		}
	}
	enroll(s0)
	if d := k.device(s0); d.State != cradle.StateDeployed || d.Labels[cradle.LabelQuarantine] != "true" {
		t.Fatalf("unclaimed device after enrollment: %s %v, want deployed and quarantined", d.State, d.Labels)
	}

	// Refusals: bad input, a wrong code (counted, audited), no code on
	// record, the auditor role.
	_, err = claims.ClaimDevice(operator, s0, cradle.DeviceClaim{Code: "nonsense", Site: "plant-7"})
	wantClaimErr(t, "malformed code", err, cradle.EINVALID, "has 8 symbols")
	_, err = claims.ClaimDevice(operator, s0, cradle.DeviceClaim{Code: code0})
	wantClaimErr(t, "no site nor owner", err, cradle.EINVALID, "give a site, an owner or both")
	_, err = claims.ClaimDevice(operator, s0, cradle.DeviceClaim{Code: code1, Site: "plant-7"})
	wantClaimErr(t, "another unit's code", err, cradle.EFORBIDDEN, "does not match device")
	_, err = claims.ClaimDevice(k.as(cradle.RoleAuditor), s0, cradle.DeviceClaim{Code: code0, Site: "plant-7"})
	wantClaimErr(t, "auditor", err, cradle.EFORBIDDEN, "may not claim devices")
	_, err = claims.ClaimDevice(operator, "NOPE-1", cradle.DeviceClaim{Code: code0, Site: "plant-7"})
	wantClaimErr(t, "unknown device", err, cradle.ENOTFOUND, "not found")
	if _, err := e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: "IMPORTED-1", Model: "gw-1", State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	_, err = claims.ClaimDevice(operator, "IMPORTED-1", cradle.DeviceClaim{Code: code0, Site: "plant-7"})
	wantClaimErr(t, "device without a code", err, cradle.ECONFLICT, "has no claim code on record")
	_, err = claims.ClaimDevice(other, s0, cradle.DeviceClaim{Code: code0, Site: "plant-7"})
	wantClaimErr(t, "another tenant", err, cradle.ENOTFOUND, "not found")

	// The right code: bound, labelled, released from quarantine, audited.
	d, err := claims.ClaimDevice(operator, s0, cradle.DeviceClaim{Code: strings.ToLower(code0), Site: "plant-7", Owner: "ops"})
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	for _, got := range []*cradle.Device{d, k.device(s0)} {
		if got.Labels[cradle.LabelSite] != "plant-7" || got.Labels[cradle.LabelOwner] != "ops" || got.Labels[cradle.LabelQuarantine] != "" {
			t.Fatalf("claimed device labels %v", got.Labels)
		}
	}
	// The same claim again is answered; another is a conflict.
	if _, err := claims.ClaimDevice(operator, s0, cradle.DeviceClaim{Code: code0, Site: "plant-7", Owner: "ops"}); err != nil {
		t.Fatalf("the same claim again: %v", err)
	}
	_, err = claims.ClaimDevice(operator, s0, cradle.DeviceClaim{Code: code0, Site: "plant-8", Owner: "ops"})
	wantClaimErr(t, "claim for another site", err, cradle.ECONFLICT, "already claimed")

	// A device claimed before it enrolls is not quarantined.
	if _, err := claims.ClaimDevice(k.admin, s1, cradle.DeviceClaim{Code: code1, Owner: "ops"}); err != nil {
		t.Fatalf("claim before enrollment: %v", err)
	}
	enroll(s1)
	if d := k.device(s1); d.Labels[cradle.LabelQuarantine] != "" || d.Labels[cradle.LabelOwner] != "ops" {
		t.Fatalf("device claimed before enrollment: labels %v", d.Labels)
	}

	// Five wrong codes lock claiming; the right code is refused until the
	// lock expires, then accepted.
	code2 := claimUnit(t, k, "line-1", units[2])
	s2 := units[2].Serial
	wrong, _ := cradle.NewClaimCode()
	for i := 1; i <= cradle.MaxClaimFailures; i++ {
		_, err := claims.ClaimDevice(operator, s2, cradle.DeviceClaim{Code: wrong, Site: "plant-7"})
		wantClaimErr(t, "wrong code", err, cradle.EFORBIDDEN, "does not match")
		if i == cradle.MaxClaimFailures && !strings.Contains(cradle.ErrorMessage(err), "locked until") {
			t.Fatalf("the %d-th wrong code does not say claiming is locked: %v", i, err)
		}
	}
	_, err = claims.ClaimDevice(operator, s2, cradle.DeviceClaim{Code: code2, Site: "plant-7"})
	wantClaimErr(t, "right code while locked", err, cradle.EFORBIDDEN, "is locked until")
	e.Clock.Add(cradle.ClaimLockout + time.Second)
	if _, err := claims.ClaimDevice(operator, s2, cradle.DeviceClaim{Code: code2, Site: "plant-7"}); err != nil {
		t.Fatalf("claim after the lockout: %v", err)
	}

	// A unit in rma cannot be claimed.
	code3 := claimUnit(t, k, "line-1", units[3])
	if _, err := e.Devices.TransitionDevice(operator, units[3].Serial, cradle.DeviceTransition{To: cradle.StateRMA}); err != nil {
		t.Fatal(err)
	}
	_, err = claims.ClaimDevice(operator, units[3].Serial, cradle.DeviceClaim{Code: code3, Site: "plant-7"})
	wantClaimErr(t, "device in rma", err, cradle.ECONFLICT, "is rma")

	// The audit log holds the claims, the refusals (the wrong codes among
	// them), the quarantine and the policy change, and verifies.
	entries, err := e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Limit: cradle.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, en := range entries {
		count[en.Action]++
	}
	if count["device.claim"] != 3 || count["device.quarantine"] != 1 || count["policy.update"] != 1 || count["policy.update.refused"] != 1 {
		t.Errorf("audit actions: %v", count)
	}
	// malformed, no site, another code, auditor, imported, five wrong,
	// locked, conflict, rma (the unknown device and the other tenant's
	// refusals are audited too, the latter in its own tenant).
	if count["device.claim.refused"] < 13 {
		t.Errorf("refused claims audited: %d, want at least 13 (%v)", count["device.claim.refused"], count)
	}
	for _, v := range verifyAll(t, e) {
		if !v.OK {
			t.Errorf("audit chain of tenant %d: %+v", v.TenantID, v)
		}
	}
}
