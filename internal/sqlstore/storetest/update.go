package storetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// updateKit is a tenant with devices, releases and the device update
// store.
type updateKit struct {
	*releaseKit
	upd *sqlstore.UpdateService
}

func newUpdateKit(t *testing.T, e *Env, tenant string, serials ...string) *updateKit {
	t.Helper()
	k := &updateKit{releaseKit: newReleaseKit(t, e, tenant), upd: sqlstore.NewUpdateService(e.DB)}
	for _, s := range serials {
		create(t, e, k.admin, s, "gw-1", nil)
	}
	return k
}

func (k *updateKit) device(serial string) context.Context { return asDevice(k.tenant.ID, serial) }

// rolloutDevice is one device's row in a fixture rollout.
type rolloutDevice struct {
	serial  string
	state   cradle.DeviceUpdateState
	attempt int
}

// rollout inserts a rollout of rel in state with devices, directly in the
// database: these tests are about the device side, and the RolloutService
// that creates rollouts is built alongside this one, so the rows are a
// fixture written to the 0008 schema. It returns the rollout's public id.
func (k *updateKit) rollout(id string, rel *cradle.Release, state cradle.RolloutState, devices ...rolloutDevice) string {
	k.t.Helper()
	e := k.e
	var relID, rolloutID int64
	if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT id FROM releases WHERE public_id = ?`), rel.ID).Scan(&relID); err != nil {
		k.t.Fatal(err)
	}
	now := e.Clock.Now().UnixMicro()
	flying := 0
	for _, d := range devices {
		if d.state.InFlight() {
			flying++
		}
	}
	e.Exec(`INSERT INTO rollouts (tenant_id, public_id, release_id, spec, status, state, in_flight, revision, created_by, created_at, updated_at)
		VALUES (?, ?, ?, '{}', '{}', ?, ?, 1, 'test', ?, ?)`, k.tenant.ID, id, relID, string(state), flying, now, now)
	if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT id FROM rollouts WHERE public_id = ?`), id).Scan(&rolloutID); err != nil {
		k.t.Fatal(err)
	}
	for i, d := range devices {
		var devID int64
		if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT id FROM devices WHERE tenant_id = ? AND serial = ?`), k.tenant.ID, d.serial).Scan(&devID); err != nil {
			k.t.Fatalf("device %s: %v", d.serial, err)
		}
		e.Exec(`INSERT INTO rollout_devices (rollout_id, position, device_id, serial, state, phase, attempt) VALUES (?, ?, ?, ?, ?, 0, ?)`,
			rolloutID, i, devID, d.serial, string(d.state), d.attempt)
	}
	return id
}

func testUpdatePending(t *testing.T, e *Env) {
	k := newUpdateKit(t, e, "acme", "SN-1", "SN-2", "SN-3", "SN-4", "SN-5")
	other := newUpdateKit(t, e, "globex", "SN-1")
	base := k.sign(k.create(fileRelease("gw-1", "1.0", 1)))
	older := k.sign(k.create(fileRelease("gw-1", "0.9", 1)))
	rel := k.create(fileRelease("gw-1", "2.0", 2))
	rel = k.sign(rel, deltaFrom(base, rel), deltaFrom(older, rel))
	old := k.sign(k.create(fileRelease("gw-1", "1.5", 2)))

	// SN-4 finished an earlier rollout; SN-5 has a started attempt in a
	// completed one, which is over.
	k.rollout("ro_done", old, cradle.RolloutCompleted, rolloutDevice{"SN-4", cradle.DeviceSucceeded, 1}, rolloutDevice{"SN-5", cradle.DeviceStarted, 1})
	ro := k.rollout("ro_live", rel, cradle.RolloutRunning,
		rolloutDevice{"SN-1", cradle.DeviceStarted, 1}, rolloutDevice{"SN-2", cradle.DeviceInstalling, 2},
		rolloutDevice{"SN-3", cradle.DevicePending, 0}, rolloutDevice{"SN-4", cradle.DeviceSucceeded, 1})
	// The other tenant's SN-1 is in a rollout of its own release.
	orel := other.sign(other.create(fileRelease("gw-1", "9.0", 1)))
	other.rollout("ro_globex", orel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceDownloading, 3})

	p := must[*cradle.PendingUpdate](t)(k.upd.PendingUpdate(k.device("SN-1"), "SN-1", base.SHA256))
	wantDelta := deltaFrom(base, rel)
	want := &cradle.PendingUpdate{RolloutID: ro, Attempt: 1, State: cradle.DeviceStarted, RolloutState: cradle.RolloutRunning, Release: *rel, Delta: &wantDelta}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Fatalf("pending update (-want +got):\n%s", diff)
	}
	// Another running image, or none said: the full release, no delta.
	p = must[*cradle.PendingUpdate](t)(k.upd.PendingUpdate(k.device("SN-2"), "SN-2", digest("something else")))
	if p.Delta != nil || p.Attempt != 2 || p.State != cradle.DeviceInstalling || p.Release.ID != rel.ID || len(p.Release.Deltas) != 2 {
		t.Fatalf("pending update of SN-2: %+v", p)
	}
	p = must[*cradle.PendingUpdate](t)(k.upd.PendingUpdate(k.device("SN-2"), "SN-2", ""))
	if p.Delta != nil {
		t.Fatalf("a delta for an unknown running image: %+v", p.Delta)
	}
	// The server itself (the device listener) asks on a device's behalf.
	p = must[*cradle.PendingUpdate](t)(k.upd.PendingUpdate(cradle.NewContextWithActor(context.Background(), cradle.SystemActor(k.tenant.ID, "mqtt")), "SN-2", older.SHA256))
	if p.Delta == nil || p.Delta.FromRelease != older.ID {
		t.Fatalf("delta from the older base: %+v", p.Delta)
	}
	if p = must[*cradle.PendingUpdate](t)(other.upd.PendingUpdate(other.device("SN-1"), "SN-1", "")); p.RolloutID != "ro_globex" || p.Release.ID != orel.ID {
		t.Fatalf("globex SN-1: %+v", p)
	}
	for _, s := range []string{"SN-3", "SN-4", "SN-5"} {
		_, err := k.upd.PendingUpdate(k.device(s), s, "")
		wantCode(t, err, cradle.ENOTFOUND, s, "no update in progress")
	}

	// Paused and aborted rollouts let attempts in flight go on.
	for _, st := range []cradle.RolloutState{cradle.RolloutPaused, cradle.RolloutAborted, cradle.RolloutCompleted, cradle.RolloutDraft} {
		e.Exec(`UPDATE rollouts SET state = ? WHERE public_id = ?`, string(st), ro)
		_, err := k.upd.PendingUpdate(k.device("SN-1"), "SN-1", "")
		if live := st == cradle.RolloutPaused || st == cradle.RolloutAborted; live {
			if err != nil {
				t.Fatalf("rollout %s: %v", st, err)
			}
		} else {
			wantCode(t, err, cradle.ENOTFOUND)
		}
	}

	// A yanked release is not handed out, even to attempts in flight.
	e.Exec(`UPDATE rollouts SET state = 'aborted' WHERE public_id = ?`, ro)
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, rel.ID, cradle.ReleaseYanked, "bricks B2"))
	_, err := k.upd.PendingUpdate(k.device("SN-1"), "SN-1", "")
	wantCode(t, err, cradle.ENOTFOUND)

	// A device only for itself; operators do not fetch updates.
	_, err = k.upd.PendingUpdate(k.device("SN-2"), "SN-1", "")
	wantCode(t, err, cradle.EFORBIDDEN, `device "SN-2" may not`)
	_, err = k.upd.PendingUpdate(k.admin, "SN-1", "")
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.upd.PendingUpdate(k.device("SN-1"), "SN-1", "ABC")
	wantCode(t, err, cradle.EINVALID, "invalid running sha256")
	_, err = k.upd.PendingUpdate(k.device("SN-9"), "SN-9", "")
	wantCode(t, err, cradle.ENOTFOUND, "SN-9")
	if got := k.actions(); !contains(got, "update.pending.refused") {
		t.Fatalf("refusals not audited: %v", got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// events lists the queued rollout_events rows.
func events(t *testing.T, e *Env) []string {
	t.Helper()
	rows, err := e.Raw.Query(`SELECT r.public_id, ev.serial, ev.kind, ev.attempt, ev.reason, ev.at FROM rollout_events ev JOIN rollouts r ON r.id = ev.rollout_id ORDER BY ev.seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var ro, serial, kind, reason string
		var attempt, at int64
		if err := rows.Scan(&ro, &serial, &kind, &attempt, &reason, &at); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s %s #%d %q +%s", ro, serial, kind, attempt, reason, time.UnixMicro(at).Sub(Epoch)))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func testUpdateReports(t *testing.T, e *Env) {
	k := newUpdateKit(t, e, "acme", "SN-1", "SN-2", "SN-3")
	other := newUpdateKit(t, e, "globex", "SN-1")
	rel := k.sign(k.create(fileRelease("gw-1", "2.0", 2)))
	ro := k.rollout("ro_1", rel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceStarted, 1}, rolloutDevice{"SN-2", cradle.DeviceSucceeded, 1})
	orel := other.sign(other.create(fileRelease("gw-1", "2.0", 2)))
	other.rollout("ro_2", orel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceStarted, 1})

	report := func(ctx context.Context, serial string, r cradle.UpdateReport) error {
		return k.upd.ReportUpdate(ctx, serial, r)
	}
	for _, r := range []cradle.UpdateReport{
		{RolloutID: ro, Attempt: 1, State: cradle.UpdateDownloading},
		{RolloutID: ro, Attempt: 1, State: cradle.UpdateInstalling},
		{RolloutID: ro, Attempt: 1, State: cradle.UpdateFailed, Reason: "image check failed: hash mismatch"},
	} {
		if err := report(k.device("SN-1"), "SN-1", r); err != nil {
			t.Fatalf("report %s: %v", r.State, err)
		}
		e.Clock.Add(time.Second)
	}
	// A device that already finished may still report (late or
	// repeated): the report is audited as stale and not queued, since the
	// engine would refuse it and a completed rollout is never stepped.
	if err := report(k.device("SN-2"), "SN-2", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateSucceeded}); err != nil {
		t.Fatal(err)
	}
	if err := report(cradle.NewContextWithActor(context.Background(), cradle.SystemActor(k.tenant.ID, "deviceapi")), "SN-1",
		cradle.UpdateReport{RolloutID: ro, Attempt: 1, State: cradle.UpdateTimedOut}); err != nil {
		t.Fatal(err)
	}

	long := strings.Repeat("r", cradle.MaxUpdateReason+1)
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		serial string
		r      cradle.UpdateReport
		code   string
		msg    string
	}{
		{"unknown state", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro, State: "started"}, cradle.EINVALID, `invalid update state "started"`},
		{"empty state", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro}, cradle.EINVALID, "invalid update state"},
		{"no rollout", k.device("SN-1"), "SN-1", cradle.UpdateReport{State: cradle.UpdateFailed}, cradle.EINVALID, "rollout_id is required"},
		{"negative attempt", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro, Attempt: -1, State: cradle.UpdateFailed}, cradle.EINVALID, "invalid attempt -1"},
		{"reason too long", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateFailed, Reason: long}, cradle.EINVALID, "invalid reason"},
		{"reason not UTF-8", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateFailed, Reason: "\xff"}, cradle.EINVALID, "invalid reason"},
		{"unknown rollout", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: "ro_nope", State: cradle.UpdateFailed}, cradle.ENOTFOUND, `device "SN-1" is not in rollout "ro_nope"`},
		{"device not in rollout", k.device("SN-3"), "SN-3", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateFailed}, cradle.ENOTFOUND, "is not in rollout"},
		{"another tenant's rollout", k.device("SN-1"), "SN-1", cradle.UpdateReport{RolloutID: "ro_2", State: cradle.UpdateFailed}, cradle.ENOTFOUND, "is not in rollout"},
		{"unknown device", k.device("SN-9"), "SN-9", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateFailed}, cradle.ENOTFOUND, "SN-9"},
		{"another device", k.device("SN-2"), "SN-1", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateFailed}, cradle.EFORBIDDEN, `device "SN-2" may not`},
		{"an operator", k.admin, "SN-1", cradle.UpdateReport{RolloutID: ro, State: cradle.UpdateFailed}, cradle.EFORBIDDEN, "role admin may not"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, report(tc.ctx, tc.serial, tc.r), tc.code, tc.msg)
		})
	}

	want := []string{
		`ro_1 SN-1 downloading #1 "" +0s`,
		`ro_1 SN-1 installing #1 "" +1s`,
		`ro_1 SN-1 failed #1 "image check failed: hash mismatch" +2s`,
		`ro_1 SN-1 timeout #1 "" +3s`,
	}
	if diff := cmp.Diff(want, events(t, e)); diff != "" {
		t.Fatalf("queued events (-want +got):\n%s", diff)
	}
	n := 0
	entries := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Limit: cradle.MaxPageSize}))
	for _, en := range entries {
		if en.Action == "update.report" {
			n++
			if en.Subject != "device:SN-1" && en.Subject != "device:SN-2" {
				t.Fatalf("audit subject %q", en.Subject)
			}
		}
	}
	if n != 4 {
		t.Fatalf("%d reports audited, want 4", n)
	}
	if got := k.actions(); !contains(got, "update.report.stale") {
		t.Fatalf("the stale report is not audited: %v", got)
	}
	if got := k.actions(); !contains(got, "update.report.refused") {
		t.Fatalf("refusals not audited: %v", got)
	}
}

func testUpdateSoftware(t *testing.T, e *Env) {
	k := newUpdateKit(t, e, "acme", "SN-1", "SN-2")
	other := newUpdateKit(t, e, "globex", "SN-1")
	rel := k.create(fileRelease("gw-1", "2.0", 2))
	// The same bytes as a release of another model: the device's model wins.
	same := fileRelease("gw-x", "7.0", 2)
	same.SHA256 = rel.SHA256
	k.create(same)

	_, err := k.upd.FindSoftware(k.admin, "SN-1")
	wantCode(t, err, cradle.ENOTFOUND, `device "SN-1" has not reported`)
	if err := k.upd.ReportSoftware(k.device("SN-1"), "SN-1", rel.SHA256); err != nil {
		t.Fatal(err)
	}
	got := must[*cradle.DeviceSoftware](t)(k.upd.FindSoftware(k.admin, "SN-1"))
	if diff := cmp.Diff(&cradle.DeviceSoftware{SHA256: rel.SHA256, Version: "2.0", ReleaseID: rel.ID, ReportedAt: Epoch}, got); diff != "" {
		t.Fatalf("software (-want +got):\n%s", diff)
	}
	// Again an hour later: the time moves, no new audit entry.
	e.Clock.Add(time.Hour)
	before := len(k.actions())
	if err := k.upd.ReportSoftware(k.device("SN-1"), "SN-1", rel.SHA256); err != nil {
		t.Fatal(err)
	}
	if got := must[*cradle.DeviceSoftware](t)(k.upd.FindSoftware(k.admin, "SN-1")); !got.ReportedAt.Equal(Epoch.Add(time.Hour)) {
		t.Fatalf("reported at %v", got.ReportedAt)
	}
	if len(k.actions()) != before {
		t.Fatal("the same image reported again was audited")
	}
	// An image no release has.
	unknown := digest("built at home")
	if err := k.upd.ReportSoftware(k.device("SN-1"), "SN-1", unknown); err != nil {
		t.Fatal(err)
	}
	if got := must[*cradle.DeviceSoftware](t)(k.upd.FindSoftware(e.As(k.tenant.ID, cradle.RoleAuditor), "SN-1")); got.SHA256 != unknown || got.Version != "" || got.ReleaseID != "" {
		t.Fatalf("unknown image: %+v", got)
	}
	// Another tenant's device of the same serial reporting the release's
	// bytes learns nothing of acme's release.
	if err := other.upd.ReportSoftware(other.device("SN-1"), "SN-1", rel.SHA256); err != nil {
		t.Fatal(err)
	}
	if got := must[*cradle.DeviceSoftware](t)(other.upd.FindSoftware(other.admin, "SN-1")); got.ReleaseID != "" {
		t.Fatalf("globex sees acme's release: %+v", got)
	}

	wantCode(t, k.upd.ReportSoftware(k.device("SN-1"), "SN-1", "nope"), cradle.EINVALID, `invalid sha256 "nope"`)
	wantCode(t, k.upd.ReportSoftware(k.device("SN-2"), "SN-1", rel.SHA256), cradle.EFORBIDDEN)
	wantCode(t, k.upd.ReportSoftware(k.admin, "SN-1", rel.SHA256), cradle.EFORBIDDEN)
	wantCode(t, k.upd.ReportSoftware(k.device("SN-9"), "SN-9", rel.SHA256), cradle.ENOTFOUND)
	_, err = k.upd.FindSoftware(k.device("SN-1"), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	if got := must[*cradle.DeviceSoftware](t)(k.upd.FindSoftware(k.admin, "SN-1")); got.SHA256 != unknown {
		t.Fatalf("a refused report changed the record: %+v", got)
	}
	n := 0
	for _, a := range k.actions() {
		if a == "update.software" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d image changes audited, want 2", n)
	}
}

func testUpdateDownloads(t *testing.T, e *Env) {
	k := newUpdateKit(t, e, "acme", "SN-1", "SN-2")
	other := newUpdateKit(t, e, "globex", "SN-1")
	system := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(0, "downloads"))
	a, b := digest("a"), digest("b")
	at := func(d time.Duration) time.Time { return Epoch.Add(d) }
	recs := []cradle.DownloadRecord{
		{TenantID: k.tenant.ID, Serial: "SN-1", SHA256: a, Bytes: 1000, At: at(2 * time.Second)},
		{TenantID: k.tenant.ID, Serial: "SN-1", SHA256: a, Bytes: 500, Complete: true, At: at(time.Second)},
		{TenantID: k.tenant.ID, Serial: "SN-1", SHA256: b, Bytes: 0, At: at(3 * time.Second)},
		{TenantID: other.tenant.ID, Serial: "SN-1", SHA256: a, Bytes: 7, Complete: true, At: at(time.Second)},
		{TenantID: k.tenant.ID, Serial: "SN-gone", SHA256: a, Bytes: 9, At: at(time.Second)}, // skipped
		{TenantID: 999, Serial: "SN-1", SHA256: a, Bytes: 9, At: at(time.Second)},            // skipped
	}
	if err := k.upd.RecordDownloads(system, recs); err != nil {
		t.Fatal(err)
	}
	// A second batch adds to the totals; a record without a time counts now.
	e.Clock.Add(time.Minute)
	if err := k.upd.RecordDownloads(system, []cradle.DownloadRecord{
		{TenantID: k.tenant.ID, Serial: "SN-1", SHA256: a, Bytes: 2500, Complete: true},
		{TenantID: k.tenant.ID, Serial: "SN-1", SHA256: a, Bytes: 1, At: at(-time.Hour)},
	}); err != nil {
		t.Fatal(err)
	}
	got := must[[]*cradle.DeviceDownload](t)(k.upd.FindDownloads(k.admin, "SN-1"))
	want := []*cradle.DeviceDownload{
		{SHA256: a, Bytes: 4001, Requests: 4, Completes: 2, FirstAt: at(-time.Hour), LastAt: at(time.Minute)},
		{SHA256: b, Bytes: 0, Requests: 1, Completes: 0, FirstAt: at(3 * time.Second), LastAt: at(3 * time.Second)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("SN-1 downloads (-want +got):\n%s", diff)
	}
	if got := must[[]*cradle.DeviceDownload](t)(other.upd.FindDownloads(other.admin, "SN-1")); len(got) != 1 || got[0].Bytes != 7 || got[0].Completes != 1 {
		t.Fatalf("globex SN-1 downloads: %+v", got)
	}
	if got := must[[]*cradle.DeviceDownload](t)(k.upd.FindDownloads(e.As(k.tenant.ID, cradle.RoleAuditor), "SN-2")); len(got) != 0 {
		t.Fatalf("SN-2 downloads: %+v", got)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM artifact_downloads`); n != 3 {
		t.Fatalf("%d accounting rows, want 3", n)
	}

	// A malformed record refuses the batch: nothing is added.
	err := k.upd.RecordDownloads(system, []cradle.DownloadRecord{
		{TenantID: k.tenant.ID, Serial: "SN-2", SHA256: a, Bytes: 1},
		{TenantID: k.tenant.ID, Serial: "SN-2", SHA256: "x", Bytes: 1},
	})
	wantCode(t, err, cradle.EINVALID, "records[1].sha256")
	err = k.upd.RecordDownloads(system, []cradle.DownloadRecord{{TenantID: k.tenant.ID, Serial: "SN-2", SHA256: a, Bytes: -1}})
	wantCode(t, err, cradle.EINVALID, "records[0].bytes -1")
	if got := must[[]*cradle.DeviceDownload](t)(k.upd.FindDownloads(k.admin, "SN-2")); len(got) != 0 {
		t.Fatalf("a refused batch was recorded: %+v", got)
	}
	// Only the server records downloads; devices do not read them.
	wantCode(t, k.upd.RecordDownloads(k.admin, recs), cradle.EFORBIDDEN)
	wantCode(t, k.upd.RecordDownloads(k.device("SN-1"), recs), cradle.EFORBIDDEN, "only the server")
	_, err = k.upd.FindDownloads(k.device("SN-1"), "SN-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.upd.FindDownloads(k.admin, "SN-9")
	wantCode(t, err, cradle.ENOTFOUND)
	if err := k.upd.RecordDownloads(system, nil); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
}

// testUpdateAbortedReports: an aborted rollout is active for the scheduler
// while it has devices in flight (their reports must reach its engine, and
// a silent one must time out) or queued reports; a completed one never is.
func testUpdateAbortedReports(t *testing.T, e *Env) {
	k := newUpdateKit(t, e, "acme", "SN-1", "SN-2", "SN-3", "SN-4")
	rel := k.sign(k.create(fileRelease("gw-1", "2.0", 2)))
	running := k.rollout("ro_1", rel, cradle.RolloutRunning, rolloutDevice{"SN-1", cradle.DeviceStarted, 1})
	flying := k.rollout("ro_2", rel, cradle.RolloutAborted, rolloutDevice{"SN-2", cradle.DeviceStarted, 1})
	completed := k.rollout("ro_3", rel, cradle.RolloutCompleted, rolloutDevice{"SN-3", cradle.DeviceSucceeded, 1})
	landed := k.rollout("ro_4", rel, cradle.RolloutAborted, rolloutDevice{"SN-4", cradle.DeviceFailed, 1})
	store := sqlstore.NewRolloutStore(e.DB)
	active := func() []string {
		t.Helper()
		refs, err := store.ActiveRollouts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range refs {
			ids = append(ids, r.ID)
		}
		return ids
	}
	if got := active(); !cmp.Equal(got, []string{running, flying}) {
		t.Fatalf("active rollouts %v, want the running one and the aborted one with a device in flight", got)
	}
	// Reports of ended updates are audited, not queued: they make no
	// rollout active.
	for serial, ro := range map[string]string{"SN-3": completed, "SN-4": landed} {
		if err := k.upd.ReportUpdate(k.device(serial), serial, cradle.UpdateReport{RolloutID: ro, Attempt: 1, State: cradle.UpdateSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	if got := active(); !cmp.Equal(got, []string{running, flying}) {
		t.Fatalf("active rollouts after stale reports %v", got)
	}
	// A report queued while the scheduler timed its device out (the step
	// read the queue before it committed) keeps the aborted rollout
	// active until a step consumes it.
	var rid int64
	if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT id FROM rollouts WHERE public_id = ?`), landed).Scan(&rid); err != nil {
		t.Fatal(err)
	}
	e.Exec(`INSERT INTO rollout_events (rollout_id, serial, kind, attempt, reason, at) VALUES (?, 'SN-4', 'succeeded', 1, '', 0)`, rid)
	if got := active(); !cmp.Equal(got, []string{running, flying, landed}) {
		t.Fatalf("active rollouts with a queued report %v, want the aborted one with it too", got)
	}
}
