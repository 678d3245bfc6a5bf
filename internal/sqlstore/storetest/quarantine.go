package storetest

import (
	"context"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/sqlstore"
)

// Quarantine (issue 9): a suspended device receives only updates flagged
// as remediation.

func testReleaseRemediation(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	c := fileRelease("gw-1", "1.0", 1)
	c.Remediation = true
	rel := k.create(c)
	if !rel.Remediation {
		t.Fatalf("created with remediation, recorded %+v", rel)
	}
	if got := must[*cradle.Release](t)(k.svc.FindRelease(k.admin, rel.ID)); !got.Remediation {
		t.Fatalf("stored release lost the flag: %+v", got)
	}
	plain := k.sign(k.create(fileRelease("gw-1", "1.1", 1)))
	if plain.Remediation {
		t.Fatalf("a release not flagged reads as remediation")
	}
	got := must[*cradle.Release](t)(k.svc.SetReleaseRemediation(k.admin, plain.ID, true))
	if !got.Remediation || got.State != cradle.ReleaseSigned || got.TargetPath != plain.TargetPath {
		t.Fatalf("flagged release = %+v", got)
	}
	// Again: nothing changes, nothing audited.
	must[*cradle.Release](t)(k.svc.SetReleaseRemediation(k.admin, plain.ID, true))
	if got = must[*cradle.Release](t)(k.svc.SetReleaseRemediation(k.admin, plain.ID, false)); got.Remediation {
		t.Fatalf("cleared flag reads %+v", got)
	}
	n := 0
	for _, a := range k.actions() {
		if a == "release.remediation" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d release.remediation audit entries, want 2 (set, clear): %v", n, k.actions())
	}
	// A yanked release stays out; an auditor may not flag; unknown id.
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, rel.ID, cradle.ReleaseYanked, "bad"))
	_, err := k.svc.SetReleaseRemediation(k.admin, rel.ID, false)
	wantCode(t, err, cradle.ECONFLICT, "yanked")
	auditor := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: k.tenant.ID, Role: cradle.RoleAuditor, Kind: "token", ID: "auditor"})
	_, err = k.svc.SetReleaseRemediation(auditor, plain.ID, true)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.SetReleaseRemediation(k.admin, "rel_nope", true)
	wantCode(t, err, cradle.ENOTFOUND)
	if a := k.actions(); !contains(a, "release.remediation.refused") {
		t.Fatalf("refusals not audited: %v", a)
	}
}

func testRolloutQuarantine(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	rels := sqlstore.NewReleaseService(e.DB)
	normal := k.release("gw-1", cradle.ReleaseSigned)
	fix := k.release("gw-1", cradle.ReleaseSigned)
	must[*cradle.Release](t)(rels.SetReleaseRemediation(k.admin, fix, true))
	d := serialRange("d", 4)
	k.deploy("gw-1", "", map[string]string{"env": "prod"}, d...)
	suspend := func(serial string) {
		t.Helper()
		if _, err := e.Devices.TransitionDevice(k.admin, serial, cradle.DeviceTransition{To: cradle.StateSuspended}); err != nil {
			t.Fatal(err)
		}
	}
	suspend(d[1])
	byserial := func(id string) map[string]*cradle.RolloutDevice {
		out := map[string]*cradle.RolloutDevice{}
		for _, x := range k.devices(id) {
			out[x.Serial] = x
		}
		return out
	}

	// A list naming a suspended device: it is skipped, with the reason,
	// and the rest goes on.
	lr := k.create(k.spec(normal, cradle.RolloutTarget{Serials: []string{d[1], d[0]}}))
	ld := byserial(lr.ID)
	if lr.Status.Devices != 2 || lr.Status.Skipped != 1 || ld[d[1]].State != cradle.DeviceSkipped || ld[d[1]].Reason != cradle.RolloutSkipSuspended || ld[d[0]].State != cradle.DeviceStarted {
		t.Fatalf("list rollout %+v: devices %+v %+v", lr.Status, ld[d[0]], ld[d[1]])
	}
	must[*cradle.Rollout](t)(k.svc.AbortRollout(k.admin, lr.ID, "next"))

	// A selector rollout of a normal release skips the suspended device.
	sr := k.create(k.spec(normal, cradle.RolloutTarget{Selector: "env=prod"}, cradle.RolloutPhase{Percent: 100}))
	sd := byserial(sr.ID)
	if sr.Status.Devices != 4 || sr.Status.Skipped != 1 || sd[d[1]].Reason != cradle.RolloutSkipSuspended || sd[d[1]].Phase != -1 {
		t.Fatalf("selector rollout %+v, suspended device %+v", sr.Status, sd[d[1]])
	}
	for _, s := range []string{d[0], d[2], d[3]} {
		if sd[s].State != cradle.DeviceStarted {
			t.Fatalf("deployed device %s in the normal rollout: %+v", s, sd[s])
		}
	}

	// d-02 is suspended while in that rollout: the rollout no longer holds
	// it against a remediation, which takes both suspended devices; d-03,
	// deployed and held, is refused from the explicit list.
	suspend(d[2])
	_, err := k.svc.CreateRollout(k.admin, k.spec(fix, cradle.RolloutTarget{Serials: []string{d[1], d[2], d[3]}}))
	wantCode(t, err, cradle.ECONFLICT, d[3], sr.ID)
	rr := k.create(k.spec(fix, cradle.RolloutTarget{Serials: []string{d[1], d[2]}}))
	rd := byserial(rr.ID)
	if rr.Status.Devices != 2 || rr.Status.Skipped != 0 || rd[d[1]].State != cradle.DeviceStarted || rd[d[2]].State != cradle.DeviceStarted {
		t.Fatalf("remediation rollout %+v: %+v %+v", rr.Status, rd[d[1]], rd[d[2]])
	}

	// What each device is offered: d-02 has attempts in both; d-00 only
	// the normal one. Deployed again, d-02 would be offered the newest.
	upd := sqlstore.NewUpdateService(e.DB)
	for s, want := range map[string]string{d[0]: sr.ID, d[1]: rr.ID, d[2]: rr.ID} {
		p, err := upd.PendingUpdate(asDevice(k.tenant.ID, s), s, "")
		if err != nil || p.RolloutID != want || p.Release.Remediation != (want == rr.ID) {
			t.Fatalf("pending update of %s = %+v, %v; want rollout %s", s, p, err, want)
		}
	}
	// A selector rollout of the remediation release takes suspended and
	// deployed devices alike (here d-00 and d-03 are held, d-01 and d-02
	// are in the remediation rollout: all skipped as busy).
	must[*cradle.Rollout](t)(k.svc.AbortRollout(k.admin, rr.ID, "again"))
	must[*cradle.Rollout](t)(k.svc.AbortRollout(k.admin, sr.ID, "again"))
	ar := k.create(k.spec(fix, cradle.RolloutTarget{Selector: "env=prod"}, cradle.RolloutPhase{Percent: 100}))
	if ar.Status.Devices != 4 || ar.Status.Skipped != 0 {
		t.Fatalf("remediation selector rollout %+v", ar.Status)
	}
	for s, x := range byserial(ar.ID) {
		if x.State != cradle.DeviceStarted {
			t.Fatalf("device %s in the remediation selector rollout: %+v", s, x)
		}
	}
}

func testUpdateQuarantine(t *testing.T, e *Env) {
	k := newUpdateKit(t, e, "acme", "SN-1", "SN-2")
	for _, s := range []string{"SN-1", "SN-2"} {
		for _, to := range []cradle.State{cradle.StateProvisioned, cradle.StateDeployed} {
			if _, err := e.Devices.TransitionDevice(k.admin, s, cradle.DeviceTransition{To: to}); err != nil {
				t.Fatal(err)
			}
		}
	}
	rel := k.sign(k.create(fileRelease("gw-1", "2.0", 2)))
	ro := k.rollout("ro_normal", rel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceStarted, 1}, rolloutDevice{"SN-2", cradle.DeviceDownloading, 1})
	if _, err := k.upd.PendingUpdate(k.device("SN-1"), "SN-1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.TransitionDevice(k.admin, "SN-1", cradle.DeviceTransition{To: cradle.StateSuspended}); err != nil {
		t.Fatal(err)
	}
	// Suspended mid-rollout: no further offer, no reports, and only the
	// image of a remediation release may be reported as running.
	_, err := k.upd.PendingUpdate(k.device("SN-1"), "SN-1", "")
	wantCode(t, err, cradle.ENOTFOUND)
	err = k.upd.ReportUpdate(k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro, Attempt: 1, State: cradle.UpdateSucceeded})
	wantCode(t, err, cradle.EFORBIDDEN, "suspended", "remediation")
	wantCode(t, k.upd.ReportSoftware(k.device("SN-1"), "SN-1", rel.SHA256), cradle.EFORBIDDEN, "suspended")
	// SN-2, deployed, goes on.
	if _, err := k.upd.PendingUpdate(k.device("SN-2"), "SN-2", ""); err != nil {
		t.Fatalf("deployed SN-2: %v", err)
	}
	if err := k.upd.ReportUpdate(k.device("SN-2"), "SN-2", cradle.UpdateReport{RolloutID: ro, Attempt: 1, State: cradle.UpdateInstalling}); err != nil {
		t.Fatal(err)
	}
	// Flagged as remediation, the release is offered to SN-1 again.
	must[*cradle.Release](t)(k.svc.SetReleaseRemediation(k.admin, rel.ID, true))
	p, err := k.upd.PendingUpdate(k.device("SN-1"), "SN-1", "")
	if err != nil || p.RolloutID != ro || !p.Release.Remediation {
		t.Fatalf("remediation pending update = %+v, %v", p, err)
	}
	if err := k.upd.ReportUpdate(k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro, Attempt: 1, State: cradle.UpdateSucceeded}); err != nil {
		t.Fatal(err)
	}
	if err := k.upd.ReportSoftware(k.device("SN-1"), "SN-1", rel.SHA256); err != nil {
		t.Fatal(err)
	}
	wantCode(t, k.upd.ReportSoftware(k.device("SN-1"), "SN-1", digest("anything else")), cradle.EFORBIDDEN)
	a := strings.Join(k.actions(), " ")
	for _, want := range []string{"update.report.refused", "update.software.refused", "release.remediation"} {
		if !strings.Contains(a, want) {
			t.Fatalf("audit lacks %s: %s", want, a)
		}
	}
}
