package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/rollout"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// rolloutKit is one tenant with releases (inserted as rows: the release
// service is tested on its own) and deployed devices.
type rolloutKit struct {
	t      *testing.T
	e      *Env
	svc    *sqlstore.RolloutService
	store  *sqlstore.RolloutStore
	tenant *cradle.Tenant
	admin  context.Context
	n      int
}

func newRolloutKit(t *testing.T, e *Env, tenant string) *rolloutKit {
	t.Helper()
	tn, admin := e.Tenant(tenant, cradle.RoleAdmin)
	return &rolloutKit{t: t, e: e, svc: sqlstore.NewRolloutService(e.DB), store: sqlstore.NewRolloutStore(e.DB), tenant: tn, admin: admin}
}

// release inserts a release row of the kit's tenant and returns its ID.
func (k *rolloutKit) release(model string, state cradle.ReleaseState, revisions ...string) string {
	k.t.Helper()
	k.n++
	id := fmt.Sprintf("rel_%020x", k.tenant.ID<<32|int64(k.n))
	revs := "[]"
	if len(revisions) > 0 {
		revs = `["` + strings.Join(revisions, `","`) + `"]`
	}
	k.e.Exec(`INSERT INTO releases (tenant_id, public_id, model, version, hardware_revisions, kind, sha256, size, file_name, security_counter, state, created_by, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, 'file', ?, 1, 'fw.bin', 0, ?, 'test', 0, 0)`,
		k.tenant.ID, id, model, fmt.Sprintf("1.0.%d", k.n), revs, strings.Repeat("ab", 32), string(state))
	return id
}

// deploy creates deployed devices of model and revision with labels.
func (k *rolloutKit) deploy(model, rev string, labels map[string]string, serials ...string) {
	k.t.Helper()
	for _, s := range serials {
		if _, err := k.e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: s, Model: model, HardwareRevision: rev, Labels: labels, State: cradle.StateProvisioned}); err != nil {
			k.t.Fatalf("create device %s: %v", s, err)
		}
		if _, err := k.e.Devices.TransitionDevice(k.admin, s, cradle.DeviceTransition{To: cradle.StateDeployed}); err != nil {
			k.t.Fatalf("deploy %s: %v", s, err)
		}
	}
}

func serialRange(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	return out
}

func (k *rolloutKit) spec(release string, target cradle.RolloutTarget, phases ...cradle.RolloutPhase) cradle.RolloutSpec {
	if len(phases) == 0 {
		phases = []cradle.RolloutPhase{{Count: 2}, {Percent: 50}, {Percent: 100}}
	}
	return cradle.RolloutSpec{ReleaseID: release, Target: target, Phases: phases,
		FailureThreshold: cradle.FailureThreshold{Count: 3, Action: cradle.FailurePause}}
}

func (k *rolloutKit) create(spec cradle.RolloutSpec) *cradle.Rollout {
	k.t.Helper()
	r, err := k.svc.CreateRollout(k.admin, spec)
	if err != nil {
		k.t.Fatalf("create rollout: %v", err)
	}
	return r
}

func (k *rolloutKit) devices(id string) []*cradle.RolloutDevice {
	k.t.Helper()
	var out []*cradle.RolloutDevice
	after := ""
	for {
		page, err := k.svc.FindRolloutDevices(k.admin, id, cradle.RolloutDeviceFilter{After: after, Limit: 7})
		if err != nil {
			k.t.Fatalf("rollout devices: %v", err)
		}
		out = append(out, page...)
		if len(page) < 7 {
			return out
		}
		after = page[len(page)-1].Serial
	}
}

// count returns the number of rows of a table.
func (k *rolloutKit) count(table string) int {
	k.t.Helper()
	var n int
	if err := k.e.Raw.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n); err != nil {
		k.t.Fatal(err)
	}
	return n
}

func (k *rolloutKit) audited(action string) []*cradle.AuditEntry {
	k.t.Helper()
	es, err := k.e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Action: &action, Limit: 500})
	if err != nil {
		k.t.Fatal(err)
	}
	return es
}

func testRolloutCreate(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	rel := k.release("gw-1", cradle.ReleaseSigned, "B", "C")
	prod := serialRange("prod", 10)
	k.deploy("gw-1", "B", map[string]string{"env": "prod", "site": "x"}, prod[:5]...)
	k.deploy("gw-1", "C", map[string]string{"env": "prod", cradle.RolloutTZLabel: "Europe/Berlin"}, prod[5:]...)
	k.deploy("gw-1", "B", map[string]string{"env": "dev"}, "dev-00", "dev-01")
	k.deploy("gw-2", "B", map[string]string{"env": "prod"}, "other-model")
	k.deploy("gw-1", "A", map[string]string{"env": "prod"}, "old-rev")
	if _, err := e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: "not-deployed", Model: "gw-1", HardwareRevision: "B", Labels: map[string]string{"env": "prod"}, State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}

	// An explicit list keeps its order: the first two listed are the
	// canaries.
	list := []string{prod[7], prod[2], prod[4]}
	lr := k.create(k.spec(rel, cradle.RolloutTarget{Serials: list}))
	if !strings.HasPrefix(lr.ID, "ro_") || lr.Status.State != cradle.RolloutRunning || lr.Status.Devices != 3 || lr.Status.Skipped != 0 {
		t.Fatalf("list rollout = %+v", lr.Status)
	}
	ld := k.devices(lr.ID)
	var got []string
	for _, d := range ld {
		got = append(got, fmt.Sprintf("%s:%d:%s", d.Serial, d.Phase, d.State))
	}
	// Two canaries start at once (no window, no limit); 50% of three is
	// two, so the second phase is empty and the third device waits for the
	// last one.
	if want := []string{prod[7] + ":0:started", prod[2] + ":0:started", prod[4] + ":2:pending"}; !cmp.Equal(got, want) {
		t.Fatalf("list rollout devices = %v, want %v", got, want)
	}
	if ld[0].Labels[cradle.RolloutTZLabel] != "Europe/Berlin" || len(ld[0].Labels) != 1 || ld[1].Labels != nil {
		t.Fatalf("rollout device labels keep only tz: %v, %v", ld[0].Labels, ld[1].Labels)
	}

	// A selector takes the deployed devices of the model and revisions
	// that match; the list rollout's devices are skipped, naming it.
	sr := k.create(k.spec(rel, cradle.RolloutTarget{Selector: "env=prod"}))
	if sr.Status.Devices != 10 || sr.Status.Skipped != 3 {
		t.Fatalf("selector rollout: %d devices, %d skipped; want 10, 3", sr.Status.Devices, sr.Status.Skipped)
	}
	sd := k.devices(sr.ID)
	seen := map[string]bool{}
	phases := map[int]int{}
	for _, d := range sd {
		seen[d.Serial] = true
		if d.State == cradle.DeviceSkipped {
			if d.ActiveRollout != lr.ID || !strings.Contains(d.Reason, lr.ID) || d.Phase != -1 {
				t.Fatalf("skipped device %+v does not name rollout %s", d, lr.ID)
			}
			continue
		}
		phases[d.Phase]++
	}
	for _, s := range prod {
		if !seen[s] {
			t.Fatalf("device %s missing from the selector's rollout", s)
		}
	}
	// 7 eligible: canary 2, 50% → 4 (2 more), 100% → 3 more.
	if want := map[int]int{0: 2, 1: 2, 2: 3}; !cmp.Equal(phases, want) {
		t.Fatalf("phases = %v, want %v", phases, want)
	}
	if got := []int{sr.Status.Phases[0].Devices, sr.Status.Phases[0].Downloading, sr.Status.Phases[2].Pending}; !cmp.Equal(got, []int{2, 2, 3}) {
		t.Fatalf("phase status = %+v", sr.Status.Phases)
	}

	// Reads.
	if got, err := k.svc.FindRollout(k.admin, sr.ID); err != nil || !cmp.Equal(got.Status, sr.Status) || got.Target.Selector != "env=prod" {
		t.Fatalf("find rollout = %+v, %v", got, err)
	}
	all, err := k.svc.FindRollouts(k.admin, cradle.RolloutFilter{})
	if err != nil || len(all) != 2 || all[0].ID != sr.ID || all[1].ID != lr.ID {
		t.Fatalf("find rollouts (newest first) = %v, %v", all, err)
	}
	running := cradle.RolloutRunning
	if l, err := k.svc.FindRollouts(k.admin, cradle.RolloutFilter{State: &running, ReleaseID: rel, Limit: 1}); err != nil || len(l) != 1 || l[0].ID != sr.ID {
		t.Fatalf("find rollouts (filtered) = %v, %v", l, err)
	}
	if l, err := k.svc.FindRollouts(k.admin, cradle.RolloutFilter{ReleaseID: "rel_none"}); err != nil || len(l) != 0 {
		t.Fatalf("find rollouts of another release = %v, %v", l, err)
	}
	skipped, one := cradle.DeviceSkipped, 1
	if l, err := k.svc.FindRolloutDevices(k.admin, sr.ID, cradle.RolloutDeviceFilter{State: &skipped}); err != nil || len(l) != 3 {
		t.Fatalf("skipped devices = %v, %v", l, err)
	}
	if l, err := k.svc.FindRolloutDevices(k.admin, sr.ID, cradle.RolloutDeviceFilter{Phase: &one}); err != nil || len(l) != 2 {
		t.Fatalf("phase 1 devices = %v, %v", l, err)
	}
	bad := cradle.DeviceUpdateState("lost")
	_, err = k.svc.FindRolloutDevices(k.admin, sr.ID, cradle.RolloutDeviceFilter{State: &bad})
	wantCode(t, err, cradle.EINVALID, "lost")
	_, err = k.svc.FindRolloutDevices(k.admin, sr.ID, cradle.RolloutDeviceFilter{After: "dev-00"})
	wantCode(t, err, cradle.EINVALID, "dev-00")
	_, err = k.svc.FindRollout(k.admin, "ro_missing")
	wantCode(t, err, cradle.ENOTFOUND, "ro_missing")

	// Another tenant sees none of it.
	_, other := e.Tenant("other", cradle.RoleAdmin)
	_, err = k.svc.FindRollout(other, sr.ID)
	wantCode(t, err, cradle.ENOTFOUND)
	if l, err := k.svc.FindRollouts(other, cradle.RolloutFilter{}); err != nil || len(l) != 0 {
		t.Fatalf("other tenant's rollouts = %v, %v", l, err)
	}
	if es := k.audited("rollout.create"); len(es) != 2 || !strings.Contains(string(es[1].Details), `"devices":10`) || !strings.Contains(string(es[1].Details), `"skipped":3`) {
		t.Fatalf("audit of rollout.create = %v", es)
	}
}

func testRolloutRefusals(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	signed := k.release("gw-1", cradle.ReleaseSigned, "B")
	uploaded := k.release("gw-1", cradle.ReleaseUploaded)
	deprecated := k.release("gw-1", cradle.ReleaseDeprecated)
	yanked := k.release("gw-1", cradle.ReleaseYanked)
	k.deploy("gw-1", "B", map[string]string{"env": "prod"}, "a", "b", "c")
	k.deploy("gw-2", "B", map[string]string{"env": "prod"}, "m2")
	k.deploy("gw-1", "A", map[string]string{"env": "prod"}, "revA")
	if _, err := e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: "fresh", Model: "gw-1", HardwareRevision: "B", State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	first := k.create(k.spec(signed, cradle.RolloutTarget{Serials: []string{"a", "b"}}))
	rollouts, devices := k.count("rollouts"), k.count("rollout_devices")

	viewerCtx := e.As(k.tenant.ID, cradle.RoleAuditor)
	sel := func(s string) cradle.RolloutTarget { return cradle.RolloutTarget{Selector: s} }
	list := func(s ...string) cradle.RolloutTarget { return cradle.RolloutTarget{Serials: s} }
	tests := []struct {
		name string
		ctx  context.Context
		spec cradle.RolloutSpec
		code string
		msg  []string
	}{
		{"EmptyTarget", k.admin, k.spec(signed, sel("env=staging")), cradle.EINVALID, []string{"no devices"}},
		{"UnknownRelease", k.admin, k.spec("rel_nope", sel("env=prod")), cradle.ENOTFOUND, []string{"rel_nope"}},
		{"Uploaded", k.admin, k.spec(uploaded, sel("env=prod")), cradle.EINVALID, []string{uploaded, "sign it"}},
		{"Deprecated", k.admin, k.spec(deprecated, sel("env=prod")), cradle.EINVALID, []string{"deprecated"}},
		{"Yanked", k.admin, k.spec(yanked, sel("env=prod")), cradle.EINVALID, []string{"yanked"}},
		{"WrongModel", k.admin, k.spec(signed, list("c", "m2")), cradle.EINVALID, []string{`"m2" (model gw-2)`}},
		{"WrongRevision", k.admin, k.spec(signed, list("revA")), cradle.EINVALID, []string{`"revA" (hardware revision "A")`}},
		{"NotDeployed", k.admin, k.spec(signed, list("fresh", "ghost")), cradle.EINVALID, []string{`"fresh" (provisioned, not deployed)`, `"ghost" (no such device)`}},
		{"Overlap", k.admin, k.spec(signed, list("c", "b")), cradle.ECONFLICT, []string{"b (rollout " + first.ID + ")"}},
		{"BadSpec", k.admin, k.spec(signed, sel("env=prod"), cradle.RolloutPhase{Percent: 50}), cradle.EINVALID, []string{"percent 100"}},
		{"BadWindow", k.admin, func() cradle.RolloutSpec {
			s := k.spec(signed, sel("env=prod"))
			s.Windows = []cradle.MaintenanceWindow{{Cron: "61 * * * *", Duration: cradle.Duration(time.Hour)}}
			return s
		}(), cradle.EINVALID, []string{"windows"}},
		{"Forbidden", viewerCtx, k.spec(signed, sel("env=prod")), cradle.EFORBIDDEN, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := k.svc.CreateRollout(tt.ctx, tt.spec)
			wantCode(t, err, tt.code, tt.msg...)
			if r, d := k.count("rollouts"), k.count("rollout_devices"); r != rollouts || d != devices {
				t.Fatalf("refused create stored rows: rollouts %d→%d, devices %d→%d", rollouts, r, devices, d)
			}
		})
	}
	if es := k.audited("rollout.create.refused"); len(es) < 8 {
		t.Fatalf("refusals audited: %d", len(es))
	}
	// A selector does not refuse held devices: it skips them.
	if r := k.create(k.spec(signed, sel("env=prod"))); r.Status.Devices != 3 || r.Status.Skipped != 2 {
		t.Fatalf("selector over held devices: %+v", r.Status)
	}
}

func testRolloutDecisions(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	rel := k.release("gw-1", cradle.ReleaseSigned)
	serials := serialRange("d", 6)
	k.deploy("gw-1", "", map[string]string{"env": "prod"}, serials...)
	r := k.create(k.spec(rel, cradle.RolloutTarget{Serials: serials},
		cradle.RolloutPhase{Count: 1}, cradle.RolloutPhase{Percent: 50, Approval: true}, cradle.RolloutPhase{Percent: 100}))
	revision := func() int64 {
		_, _, rev, err := k.store.LoadRollout(context.Background(), k.tenant.ID, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	if rev := revision(); rev != 1 {
		t.Fatalf("new rollout revision = %d, want 1", rev)
	}
	steps := []struct {
		name  string
		do    func() (*cradle.Rollout, error)
		code  string
		state cradle.RolloutState
	}{
		{"Resume running", func() (*cradle.Rollout, error) { return k.svc.ResumeRollout(k.admin, r.ID) }, cradle.ECONFLICT, ""},
		{"Pause", func() (*cradle.Rollout, error) { return k.svc.PauseRollout(k.admin, r.ID, "looks odd") }, "", cradle.RolloutPaused},
		{"Pause paused", func() (*cradle.Rollout, error) { return k.svc.PauseRollout(k.admin, r.ID, "") }, cradle.ECONFLICT, ""},
		{"Approve phase 0", func() (*cradle.Rollout, error) { return k.svc.ApproveRollout(k.admin, r.ID, 0) }, cradle.EINVALID, ""},
		{"Approve phase 9", func() (*cradle.Rollout, error) { return k.svc.ApproveRollout(k.admin, r.ID, 9) }, cradle.EINVALID, ""},
		{"Approve phase 1", func() (*cradle.Rollout, error) { return k.svc.ApproveRollout(k.admin, r.ID, 1) }, "", cradle.RolloutPaused},
		{"Resume", func() (*cradle.Rollout, error) { return k.svc.ResumeRollout(k.admin, r.ID) }, "", cradle.RolloutRunning},
		{"Abort", func() (*cradle.Rollout, error) { return k.svc.AbortRollout(k.admin, r.ID, "wrong build") }, "", cradle.RolloutAborted},
		{"Abort again", func() (*cradle.Rollout, error) { return k.svc.AbortRollout(k.admin, r.ID, "") }, cradle.ECONFLICT, ""},
		{"Unknown", func() (*cradle.Rollout, error) { return k.svc.PauseRollout(k.admin, "ro_nope", "") }, cradle.ENOTFOUND, ""},
	}
	want := int64(1)
	for _, st := range steps {
		got, err := st.do()
		if st.code != "" {
			wantCode(t, err, st.code)
		} else {
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			want++
			if got.Status.State != st.state {
				t.Fatalf("%s: state %s, want %s", st.name, got.Status.State, st.state)
			}
			stored, err := k.svc.FindRollout(k.admin, r.ID)
			if err != nil || !cmp.Equal(stored.Status, got.Status) {
				t.Fatalf("%s: stored status differs: %v\n%s", st.name, err, cmp.Diff(got.Status, stored.Status))
			}
		}
		if rev := revision(); rev != want {
			t.Fatalf("%s: revision %d, want %d", st.name, rev, want)
		}
	}
	final, _ := k.svc.FindRollout(k.admin, r.ID)
	if !final.Status.Phases[1].Approved || final.Status.Reason != "wrong build" {
		t.Fatalf("final status = %+v", final.Status)
	}
	for _, a := range []string{"rollout.pause", "rollout.resume", "rollout.approve", "rollout.abort"} {
		if n := len(k.audited(a)); n != 1 {
			t.Fatalf("%s audited %d times, want 1", a, n)
		}
	}
	if n := len(k.audited("rollout.pause.refused")); n != 1 {
		t.Fatalf("refused pause audited %d times", n)
	}
	// An aborted rollout holds no device: the same list can start again.
	k.create(k.spec(rel, cradle.RolloutTarget{Serials: serials}))
}

func testLeases(t *testing.T, e *Env) {
	ls := sqlstore.NewLeaseStore(e.DB)
	ctx := context.Background()
	const ttl = 30 * time.Second
	acquire := func(holder string) (cradle.Lease, bool) {
		t.Helper()
		l, ok, err := ls.AcquireLease(ctx, "rollouts", holder, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return l, ok
	}
	a, ok := acquire("A")
	if !ok || a.Fence != 1 || a.Holder != "A" || !a.Expires.Equal(e.Clock.Now().Add(ttl)) {
		t.Fatalf("first acquire = %+v, %v", a, ok)
	}
	if _, ok := acquire("B"); ok {
		t.Fatal("B took a lease A holds")
	}
	e.Clock.Add(10 * time.Second)
	if a2, ok := acquire("A"); !ok || a2.Fence != 1 || !a2.Expires.Equal(e.Clock.Now().Add(ttl)) {
		t.Fatalf("A re-acquires (renews) = %+v, %v", a2, ok)
	}
	e.Clock.Add(20 * time.Second)
	if r, ok, err := ls.RenewLease(ctx, a, ttl); err != nil || !ok || r.Fence != 1 || !r.Expires.Equal(e.Clock.Now().Add(ttl)) {
		t.Fatalf("renew = %+v, %v, %v", r, ok, err)
	}
	// Expiry: B takes over with a new fence; A has lost it.
	e.Clock.Add(ttl)
	b, ok := acquire("B")
	if !ok || b.Fence != 2 {
		t.Fatalf("B after expiry = %+v, %v", b, ok)
	}
	if _, ok, err := ls.RenewLease(ctx, a, ttl); err != nil || ok {
		t.Fatalf("A renewed a lease B took: %v, %v", ok, err)
	}
	if err := ls.ReleaseLease(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, ok := acquire("C"); ok {
		t.Fatal("A's stale release freed B's lease")
	}
	// Release: C takes it at once.
	if err := ls.ReleaseLease(ctx, b); err != nil {
		t.Fatal(err)
	}
	c, ok := acquire("C")
	if !ok || c.Fence != 3 {
		t.Fatalf("C after B released = %+v, %v", c, ok)
	}
	// An expired lease of the same holder gets a new fence.
	e.Clock.Add(ttl)
	if c2, ok := acquire("C"); !ok || c2.Fence != 4 {
		t.Fatalf("C after its own expiry = %+v, %v", c2, ok)
	}
	_, _, err := ls.AcquireLease(ctx, "", "A", ttl)
	wantCode(t, err, cradle.EINVALID, "name")
	_, _, err = ls.AcquireLease(ctx, "x", "A", 0)
	wantCode(t, err, cradle.EINVALID, "ttl")

	// Racing acquirers of an expired lease: exactly one wins.
	for round := range 5 {
		e.Clock.Add(ttl)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []cradle.Lease
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, ok, err := ls.AcquireLease(ctx, "race", fmt.Sprintf("r%d-h%d", round, i), ttl)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					won = append(won, l)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(won) != 1 || won[0].Fence != int64(round+1) {
			t.Fatalf("round %d: winners %+v, want one with fence %d", round, won, round+1)
		}
	}
}

// step runs one scheduler step on a loaded rollout: events, then a plan.
func step(t *testing.T, k *rolloutKit, id string, evs []rollout.Event) (cradle.RolloutSave, rollout.Plan) {
	t.Helper()
	r, devs, rev, err := k.store.LoadRollout(context.Background(), k.tenant.ID, id)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rollout.Load(r, devs, rollout.Options{Clock: k.e.Clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if err := eng.Event(ev); err != nil {
			t.Fatalf("event %+v: %v", ev, err)
		}
	}
	p := eng.Plan()
	return cradle.RolloutSave{TenantID: k.tenant.ID, ID: id, Revision: rev, Rollout: eng.Rollout(), Changes: eng.Changes()}, p
}

func testRolloutFencing(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	ctx := context.Background()
	rel := k.release("gw-1", cradle.ReleaseSigned)
	serials := serialRange("d", 5)
	k.deploy("gw-1", "", nil, serials...)
	r := k.create(k.spec(rel, cradle.RolloutTarget{Serials: serials}, cradle.RolloutPhase{Count: 1}, cradle.RolloutPhase{Percent: 100}))
	if refs, err := k.store.ActiveRollouts(ctx); err != nil || !cmp.Equal(refs, []cradle.RolloutRef{{TenantID: k.tenant.ID, ID: r.ID, Revision: 1}}) {
		t.Fatalf("active rollouts = %v, %v", refs, err)
	}
	const ttl = time.Minute
	l1, ok, err := k.store.AcquireLease(ctx, "rollout-scheduler", "one", ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	// Step 1: the canary succeeds; the next phase starts.
	sv, _ := step(t, k, r.ID, []rollout.Event{{Kind: rollout.EventSucceeded, Serial: serials[0]}})
	if rev, ok, err := k.store.SaveRollout(ctx, l1, sv); err != nil || !ok || rev != 2 {
		t.Fatalf("save = %d, %v, %v", rev, ok, err)
	}
	got, devs, rev, err := k.store.LoadRollout(ctx, k.tenant.ID, r.ID)
	if err != nil || rev != 2 || !cmp.Equal(got.Status, sv.Rollout.Status) || devs[0].State != cradle.DeviceSucceeded || devs[1].State != cradle.DeviceStarted {
		t.Fatalf("after save: rev %d, %v, devices %+v\n%s", rev, err, devs, cmp.Diff(sv.Rollout.Status, got.Status))
	}

	// The lease expires and another replica takes it: the first one's
	// save, at the current revision, is refused and writes nothing.
	sv, _ = step(t, k, r.ID, []rollout.Event{{Kind: rollout.EventFailed, Serial: serials[1], Reason: "flash"}})
	e.Clock.Add(ttl)
	if _, ok, err := k.store.SaveRollout(ctx, l1, sv); err != nil || ok {
		t.Fatalf("save with an expired lease = %v, %v", ok, err)
	}
	l2, ok, err := k.store.AcquireLease(ctx, "rollout-scheduler", "two", ttl)
	if err != nil || !ok || l2.Fence != 2 {
		t.Fatal(l2, ok, err)
	}
	if _, ok, err := k.store.SaveRollout(ctx, l1, sv); err != nil || ok {
		t.Fatalf("save with an old fence = %v, %v", ok, err)
	}
	stale := l2
	stale.Holder = "one"
	if _, ok, err := k.store.SaveRollout(ctx, stale, sv); err != nil || ok {
		t.Fatalf("save with another holder = %v, %v", ok, err)
	}
	if _, devs, rev, _ := k.store.LoadRollout(ctx, k.tenant.ID, r.ID); rev != 2 || devs[1].State != cradle.DeviceStarted {
		t.Fatalf("a refused save wrote: rev %d, %+v", rev, devs[1])
	}

	// An operator's pause moves the revision: a step planned before it
	// is refused, and one planned after it is saved.
	sv, _ = step(t, k, r.ID, []rollout.Event{{Kind: rollout.EventDownloading, Serial: serials[1]}})
	if _, err := k.svc.PauseRollout(k.admin, r.ID, "hold on"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := k.store.SaveRollout(ctx, l2, sv); err != nil || ok {
		t.Fatalf("save of a stale revision = %v, %v", ok, err)
	}
	sv, _ = step(t, k, r.ID, []rollout.Event{{Kind: rollout.EventDownloading, Serial: serials[1]}})
	if sv.Rollout.Status.State != cradle.RolloutPaused {
		t.Fatalf("reloaded state = %s", sv.Rollout.Status.State)
	}
	if rev, ok, err := k.store.SaveRollout(ctx, l2, sv); err != nil || !ok || rev != 4 {
		t.Fatalf("save after reload = %d, %v, %v", rev, ok, err)
	}
	_, _, err = k.store.SaveRollout(ctx, l2, cradle.RolloutSave{TenantID: k.tenant.ID, ID: "ro_nope", Revision: 4, Rollout: cradle.Rollout{ID: "ro_nope"}})
	wantCode(t, err, cradle.ENOTFOUND)
}

func testRolloutEvents(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	ctx := context.Background()
	rel := k.release("gw-1", cradle.ReleaseSigned)
	serials := serialRange("d", 4)
	k.deploy("gw-1", "", nil, serials...)
	r := k.create(k.spec(rel, cradle.RolloutTarget{Serials: serials}, cradle.RolloutPhase{Count: 2}, cradle.RolloutPhase{Percent: 100}))
	var rid int64
	if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT id FROM rollouts WHERE public_id = ?`), r.ID).Scan(&rid); err != nil {
		t.Fatal(err)
	}
	at := e.Clock.Now().UnixMicro()
	for _, ev := range []struct{ serial, kind string }{{serials[0], "downloading"}, {serials[0], "succeeded"}, {serials[1], "failed"}} {
		e.Exec(`INSERT INTO rollout_events (rollout_id, serial, kind, attempt, reason, at) VALUES (?, ?, ?, 1, 'r', ?)`, rid, ev.serial, ev.kind, at)
	}
	evs, err := k.store.RolloutEvents(ctx, k.tenant.ID, r.ID, 0, 2)
	if err != nil || len(evs) != 2 || evs[0].Kind != "downloading" || evs[1].Kind != "succeeded" || evs[0].Seq >= evs[1].Seq || !evs[0].At.Equal(e.Clock.Now()) {
		t.Fatalf("events = %+v, %v", evs, err)
	}
	rest, err := k.store.RolloutEvents(ctx, k.tenant.ID, r.ID, evs[1].Seq, 10)
	if err != nil || len(rest) != 1 || rest[0].Serial != serials[1] || rest[0].Attempt != 1 {
		t.Fatalf("events after %d = %+v, %v", evs[1].Seq, rest, err)
	}
	all := append(evs, rest...)
	var in []rollout.Event
	for _, ev := range all {
		in = append(in, rollout.Event{Kind: rollout.EventKind(ev.Kind), Serial: ev.Serial, Attempt: ev.Attempt, Reason: ev.Reason})
	}
	l, _, _ := k.store.AcquireLease(ctx, "sched", "me", time.Minute)
	sv, _ := step(t, k, r.ID, in)
	sv.Events = []int64{all[0].Seq, all[1].Seq} // the step consumed two; the third stays
	if _, ok, err := k.store.SaveRollout(ctx, l, sv); err != nil || !ok {
		t.Fatal(ok, err)
	}
	left, err := k.store.RolloutEvents(ctx, k.tenant.ID, r.ID, 0, 10)
	if err != nil || len(left) != 1 || left[0].Seq != rest[0].Seq {
		t.Fatalf("events left = %+v, %v", left, err)
	}
	ds := k.devices(r.ID)
	if ds[0].State != cradle.DeviceSucceeded || ds[1].State != cradle.DeviceFailed || !strings.Contains(ds[1].Reason, "r") {
		t.Fatalf("devices after events = %+v %+v", ds[0], ds[1])
	}
	_, err = k.store.RolloutEvents(ctx, k.tenant.ID+1, r.ID, 0, 10)
	wantCode(t, err, cradle.ENOTFOUND)
}

// testRolloutAbortInFlight: an operator's abort leaves the devices already
// updating in flight, and ActiveRollouts keeps listing the aborted rollout
// while any is, so the scheduler takes their reports and times the silent
// ones out; once none is left it stops listing it.
func testRolloutAbortInFlight(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	ctx := context.Background()
	rel := k.release("gw-1", cradle.ReleaseSigned)
	serials := serialRange("d", 4)
	k.deploy("gw-1", "", nil, serials...)
	spec := k.spec(rel, cradle.RolloutTarget{Serials: serials}, cradle.RolloutPhase{Count: 2}, cradle.RolloutPhase{Percent: 100})
	spec.DeviceTimeout = cradle.Duration(10 * time.Minute)
	spec.Retries = 2
	r := k.create(spec) // d-00 and d-01 start
	active := func() []string {
		t.Helper()
		refs, err := k.store.ActiveRollouts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, ref := range refs {
			ids = append(ids, ref.ID)
		}
		return ids
	}
	if _, err := k.svc.AbortRollout(k.admin, r.ID, "wrong build"); err != nil {
		t.Fatal(err)
	}
	if got := active(); !cmp.Equal(got, []string{r.ID}) {
		t.Fatalf("active rollouts after the abort = %v, want the aborted one: two devices are in flight", got)
	}
	l, ok, err := k.store.AcquireLease(ctx, "rollout-scheduler", "me", time.Hour)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	// d-00 still reports and succeeds; d-01 is silent.
	sv, p := step(t, k, r.ID, []rollout.Event{{Kind: rollout.EventSucceeded, Serial: serials[0]}})
	if _, ok, err := k.store.SaveRollout(ctx, l, sv); err != nil || !ok || len(p.Start) != 0 {
		t.Fatalf("save = %v, %v; started %v", ok, err, p.Start)
	}
	if got := active(); !cmp.Equal(got, []string{r.ID}) {
		t.Fatalf("active rollouts with one device in flight = %v", got)
	}
	e.Clock.Add(10*time.Minute - time.Second)
	if sv, _ := step(t, k, r.ID, nil); len(sv.Changes) != 0 {
		t.Fatalf("a step before the device timeout changed %+v", sv.Changes)
	}
	e.Clock.Add(time.Second)
	sv, p = step(t, k, r.ID, nil)
	if _, ok, err := k.store.SaveRollout(ctx, l, sv); err != nil || !ok || len(p.Start) != 0 {
		t.Fatalf("save of the timeout = %v, %v; started %v", ok, err, p.Start)
	}
	if got := active(); len(got) != 0 {
		t.Fatalf("active rollouts with nothing in flight = %v, want none", got)
	}
	got, err := k.svc.FindRollout(k.admin, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.State != cradle.RolloutAborted || got.Status.Failures != 0 || got.Status.Reason != "wrong build" {
		t.Fatalf("rollout after the timeout: %s (%q), %d failures counted", got.Status.State, got.Status.Reason, got.Status.Failures)
	}
	want := []cradle.DeviceUpdateState{cradle.DeviceSucceeded, cradle.DeviceFailed, cradle.DevicePending, cradle.DevicePending}
	for i, d := range k.devices(r.ID) {
		if d.State != want[i] {
			t.Fatalf("device %s is %s, want %s (%+v)", d.Serial, d.State, want[i], d)
		}
	}
	if d := k.devices(r.ID)[1]; d.Attempt != 1 || !strings.Contains(d.Reason, "no report for 10m0s") {
		t.Fatalf("timed-out device: attempt %d, reason %q", d.Attempt, d.Reason)
	}
}

func testRolloutJoiners(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	ctx := context.Background()
	rel := k.release("gw-1", cradle.ReleaseSigned, "B")
	k.deploy("gw-1", "B", map[string]string{"env": "prod"}, "a", "b")
	spec := k.spec(rel, cradle.RolloutTarget{Selector: "env=prod"}, cradle.RolloutPhase{Percent: 100})
	spec.Dynamic = true
	dyn := k.create(spec)
	joiners := func(id string) []cradle.RolloutCandidate {
		t.Helper()
		js, err := k.store.RolloutJoiners(ctx, k.tenant.ID, id)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	if js := joiners(dyn.ID); len(js) != 0 {
		t.Fatalf("joiners of a fresh rollout = %+v", js)
	}
	k.deploy("gw-1", "B", map[string]string{"env": "prod"}, "y", "z")
	k.deploy("gw-1", "A", map[string]string{"env": "prod"}, "old-rev")
	k.deploy("gw-2", "B", map[string]string{"env": "prod"}, "other-model")
	k.deploy("gw-1", "B", map[string]string{"env": "dev"}, "dev")
	list := k.create(k.spec(rel, cradle.RolloutTarget{Serials: []string{"y"}}, cradle.RolloutPhase{Percent: 100}))
	want := []cradle.RolloutCandidate{
		{Serial: "y", Labels: map[string]string{"env": "prod"}, ActiveRollout: list.ID},
		{Serial: "z", Labels: map[string]string{"env": "prod"}},
	}
	if js := joiners(dyn.ID); !cmp.Equal(js, want) {
		t.Fatalf("joiners:\n%s", cmp.Diff(want, js))
	}
	if js := joiners(list.ID); len(js) != 0 {
		t.Fatalf("joiners of a static rollout = %+v", js)
	}

	l, _, _ := k.store.AcquireLease(ctx, "sched", "me", time.Minute)
	var evs []rollout.Event
	for _, j := range joiners(dyn.ID) {
		evs = append(evs, rollout.Event{Kind: rollout.EventJoined, Serial: j.Serial, Labels: j.Labels, ActiveRollout: j.ActiveRollout})
	}
	sv, plan := step(t, k, dyn.ID, evs)
	if len(plan.Start) != 1 || plan.Start[0].Serial != "z" {
		t.Fatalf("plan after joins = %+v", plan)
	}
	if _, ok, err := k.store.SaveRollout(ctx, l, sv); err != nil || !ok {
		t.Fatal(ok, err)
	}
	_, devs, _, err := k.store.LoadRollout(ctx, k.tenant.ID, dyn.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range devs {
		got = append(got, d.Serial+":"+string(d.State))
	}
	if want := []string{"a:started", "b:started", "y:skipped", "z:started"}; !cmp.Equal(got[2:], want[2:]) || len(got) != 4 {
		t.Fatalf("devices after joins = %v, want %v", got, want)
	}
	if js := joiners(dyn.ID); len(js) != 0 {
		t.Fatalf("joiners after the joins = %+v", js)
	}

	// A step that read the joiners before another rollout took a device
	// is refused; the reload sees the device held.
	k.deploy("gw-1", "B", map[string]string{"env": "prod"}, "x")
	sv, _ = step(t, k, dyn.ID, []rollout.Event{{Kind: rollout.EventJoined, Serial: "x", Labels: map[string]string{"env": "prod"}}})
	other := k.create(k.spec(rel, cradle.RolloutTarget{Serials: []string{"x"}}, cradle.RolloutPhase{Percent: 100}))
	if _, ok, err := k.store.SaveRollout(ctx, l, sv); err != nil || ok {
		t.Fatalf("save of a join the conflict rule forbids = %v, %v", ok, err)
	}
	if js := joiners(dyn.ID); len(js) != 1 || js[0].ActiveRollout != other.ID {
		t.Fatalf("joiners after the conflict = %+v", js)
	}
}

// testRolloutConcurrentCreate races creations over overlapping lists: the
// conflict rule holds, so exactly one wins and the others get ECONFLICT.
func testRolloutConcurrentCreate(t *testing.T, e *Env) {
	k := newRolloutKit(t, e, "acme")
	rel := k.release("gw-1", cradle.ReleaseSigned)
	k.deploy("gw-1", "", nil, "a", "b", "c", "d")
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serials := []string{"a", "b", "c", "d"}[i%2 : i%2+3] // a,b,c or b,c,d: they overlap
			_, errs[i] = k.svc.CreateRollout(k.admin, k.spec(rel, cradle.RolloutTarget{Serials: serials}, cradle.RolloutPhase{Percent: 100}))
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		wantCode(t, err, cradle.ECONFLICT, "already in an active rollout")
	}
	if won != 1 || k.count("rollouts") != 1 || k.count("rollout_devices") != 3 {
		t.Fatalf("%d creations won; %d rollouts, %d device rows stored", won, k.count("rollouts"), k.count("rollout_devices"))
	}
}
