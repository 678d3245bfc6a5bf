package ota_test

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/ota"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"

	"github.com/google/go-cmp/cmp"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"
)

// backend opens a fresh database for one test.
type backend struct {
	name string
	// open returns a DSN of a fresh database and a direct connection to
	// it for fixtures.
	open   func(t *testing.T) (string, *sql.DB)
	rebind func(string) string
}

// backends is SQLite always and PostgreSQL when CRADLE_TEST_POSTGRES names
// a server (each test in a schema of its own).
func backends(t *testing.T) []backend {
	bs := []backend{{
		name: "sqlite",
		open: func(t *testing.T) (string, *sql.DB) {
			path := filepath.Join(t.TempDir(), "cradle.db")
			raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return path, raw
		},
		rebind: func(q string) string { return q },
	}}
	base := os.Getenv("CRADLE_TEST_POSTGRES")
	if base == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CRADLE_TEST_POSTGRES is not set, and CI must run the scheduler on PostgreSQL")
		}
		t.Log("CRADLE_TEST_POSTGRES is not set: the scheduler runs on SQLite only")
		return bs
	}
	return append(bs, backend{
		name: "postgres",
		open: func(t *testing.T) (string, *sql.DB) {
			dsn := storetest.PostgresSchema(t, base, "cradle_ota_")
			raw, err := sql.Open("pgx", dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return dsn, raw
		},
		rebind: storetest.RebindDollar,
	})
}

// forEachBackend runs f as a subtest on every backend.
func forEachBackend(t *testing.T, f func(t *testing.T, e *schedEnv)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { f(t, newSchedEnv(t, b)) })
	}
}

// schedEnv is one test's store: a tenant with deployed devices of model "m1"
// and a signed release of it.
type schedEnv struct {
	t        *testing.T
	b        backend
	dsn      string
	raw      *sql.DB
	key      ed25519.PrivateKey
	clock    *storetest.Clock
	db       *sqlstore.DB
	store    cradle.RolloutStore
	rollouts cradle.RolloutService
	tenantID int64
	ctx      context.Context // the tenant's admin
	release  string
}

func newSchedEnv(t *testing.T, b backend) *schedEnv {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &schedEnv{t: t, b: b, key: key, clock: storetest.NewClock(storetest.Epoch)}
	e.dsn, e.raw = b.open(t)
	e.db = e.open()
	e.store = sqlstore.NewRolloutStore(e.db)
	e.rollouts = sqlstore.NewRolloutService(e.db)
	tn, err := sqlstore.NewTenantService(e.db).CreateTenant(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	e.tenantID = tn.ID
	e.ctx = cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: tn.ID, Role: cradle.RoleAdmin, Kind: "test", ID: "admin"})
	e.release = "rel-test-1"
	now := storetest.Epoch.UnixMicro()
	e.exec(`INSERT INTO releases (tenant_id, public_id, model, version, hardware_revisions, kind, sha256, size, file_name,
		security_counter, state, created_by, created_at, signed_at, updated_at)
		VALUES (?, ?, 'm1', '1.0.0', '[]', 'file', ?, 4096, 'app.bin', 1, 'signed', 'test', ?, ?, ?)`,
		e.tenantID, e.release, strings.Repeat("ab", 32), now, now, now)
	return e
}

// open opens another handle on the test's database (a second replica).
func (e *schedEnv) open() *sqlstore.DB {
	e.t.Helper()
	db, err := sqlstore.Open(context.Background(), e.dsn, sqlstore.Options{AuditKey: e.key, Clock: e.clock})
	if err != nil {
		e.t.Fatalf("open %s: %v", e.b.name, err)
	}
	e.t.Cleanup(func() { db.Close() })
	return db
}

func (e *schedEnv) exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.raw.Exec(e.b.rebind(q), args...); err != nil {
		e.t.Fatalf("exec %q: %v", q, err)
	}
}

func (e *schedEnv) count(q string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.raw.QueryRow(e.b.rebind(q), args...).Scan(&n); err != nil {
		e.t.Fatalf("query %q: %v", q, err)
	}
	return n
}

// devices creates n deployed devices of model m1 with labels, named
// prefix-0000 on.
func (e *schedEnv) devices(prefix string, n int, labels map[string]string) []string {
	e.t.Helper()
	svc := sqlstore.NewDeviceService(e.db)
	serials := make([]string, n)
	for i := range n {
		serials[i] = fmt.Sprintf("%s-%04d", prefix, i)
		if _, err := svc.CreateDevice(e.ctx, cradle.DeviceCreate{Serial: serials[i], Model: "m1", Labels: labels, State: cradle.StateProvisioned}); err != nil {
			e.t.Fatal(err)
		}
		if _, err := svc.TransitionDevice(e.ctx, serials[i], cradle.DeviceTransition{To: cradle.StateDeployed}); err != nil {
			e.t.Fatal(err)
		}
	}
	return serials
}

func (e *schedEnv) create(spec cradle.RolloutSpec) *cradle.Rollout {
	e.t.Helper()
	spec.ReleaseID = e.release
	r, err := e.rollouts.CreateRollout(e.ctx, spec)
	if err != nil {
		e.t.Fatalf("create rollout: %v", err)
	}
	return r
}

func (e *schedEnv) find(id string) *cradle.Rollout {
	e.t.Helper()
	r, err := e.rollouts.FindRollout(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// report queues a device's report as the update service does.
func (e *schedEnv) report(rolloutID, serial, kind string, attempt int) {
	e.t.Helper()
	e.exec(`INSERT INTO rollout_events (rollout_id, serial, kind, attempt, reason, at)
		VALUES ((SELECT id FROM rollouts WHERE public_id = ?), ?, ?, ?, ?, ?)`,
		rolloutID, serial, kind, attempt, "", e.clock.Now().UnixMicro())
}

// states returns the state of every device of a rollout as stored.
func (e *schedEnv) states(id string) map[string]cradle.DeviceUpdateState {
	e.t.Helper()
	out := map[string]cradle.DeviceUpdateState{}
	for serial, d := range e.records(id) {
		out[serial] = d.State
	}
	return out
}

// records returns every device record of a rollout as stored.
func (e *schedEnv) records(id string) map[string]cradle.RolloutDevice {
	e.t.Helper()
	out := map[string]cradle.RolloutDevice{}
	after := ""
	for {
		ds, err := e.rollouts.FindRolloutDevices(e.ctx, id, cradle.RolloutDeviceFilter{After: after, Limit: cradle.MaxPageSize})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, d := range ds {
			out[d.Serial] = *d
		}
		if len(ds) < cradle.MaxPageSize {
			return out
		}
		after = ds[len(ds)-1].Serial
	}
}

// notes records what Notify was told.
type notes struct {
	mu    sync.Mutex
	calls [][]string
}

func (n *notes) notify(t *testing.T, tenantID int64) func(context.Context, int64, []string) {
	return func(_ context.Context, tid int64, serials []string) {
		if tid != tenantID {
			t.Errorf("notified tenant %d, want %d", tid, tenantID)
		}
		n.mu.Lock()
		n.calls = append(n.calls, slices.Clone(serials))
		n.mu.Unlock()
	}
}

// take returns the serials notified since the last take, sorted.
func (n *notes) take() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, c := range n.calls {
		out = append(out, c...)
	}
	n.calls = nil
	slices.Sort(out)
	return out
}

func (e *schedEnv) scheduler(holder string, store cradle.RolloutStore, n *notes) *ota.Scheduler {
	s := &ota.Scheduler{Store: store, Holder: holder, Clock: e.clock, LeaseTTL: 15 * time.Second, JoinInterval: time.Minute}
	if n != nil {
		s.Notify = n.notify(e.t, e.tenantID)
	}
	return s
}

func step(t *testing.T, s *ota.Scheduler) ota.StepStats {
	t.Helper()
	st, err := s.Step(context.Background())
	if err != nil {
		t.Fatalf("step: %v", err)
	}
	return st
}

// inState returns the sorted serials in state s.
func inState(m map[string]cradle.DeviceUpdateState, s cradle.DeviceUpdateState) []string {
	var out []string
	for k, v := range m {
		if v == s {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// TestSchedulerCompletes drives a rollout over 200 devices to completion
// by device reports: each step starts exactly the devices it notifies, a
// few failed attempts are retried, and the rollout is loaded once.
func TestSchedulerCompletes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		e.devices("dev", 200, map[string]string{"site": "a"})
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Selector: "site=a"},
			Phases:           []cradle.RolloutPhase{{Count: 10}, {Percent: 50}, {Percent: 100}},
			RateLimit:        60,
			FailureThreshold: cradle.FailureThreshold{Count: 5, Action: cradle.FailurePause},
			Retries:          1,
		})
		var n notes
		s := e.scheduler("replica-a", e.store, &n)
		notified := map[string]int{}
		loads, failedOnce := 0, map[string]bool{}
		for i := 0; i < 100; i++ {
			before := e.records(r.ID)
			st := step(t, s)
			loads += st.Loaded
			got := n.take()
			after := e.records(r.ID)
			// Notify gets exactly the devices this step started and, at
			// the load, those stored as started (CreateRollout's wave).
			var started []string
			for serial, d := range after {
				if d.State == cradle.DeviceStarted && (d.Attempt != before[serial].Attempt || st.Loaded > 0) {
					started = append(started, serial)
				}
			}
			slices.Sort(started)
			if diff := cmp.Diff(started, got, cmpEmpty); diff != "" {
				t.Fatalf("step %d: notified (-started +notified):\n%s", i, diff)
			}
			if st.Notified != len(got) {
				t.Errorf("step %d: StepStats.Notified = %d, notified %d", i, st.Notified, len(got))
			}
			if e.find(r.ID).Status.State == cradle.RolloutCompleted {
				break
			}
			// Every started device reports; every 7th fails its first
			// attempt once.
			for k, serial := range got {
				notified[serial]++
				att := notified[serial]
				if k%7 == 3 && !failedOnce[serial] {
					failedOnce[serial] = true
					e.report(r.ID, serial, "failed", att)
					continue
				}
				e.report(r.ID, serial, "downloading", att)
				e.report(r.ID, serial, "installing", att)
				e.report(r.ID, serial, "succeeded", att)
			}
			e.clock.Add(30 * time.Second)
		}
		final := e.find(r.ID)
		if final.Status.State != cradle.RolloutCompleted {
			t.Fatalf("rollout is %s (%s), want completed; status %+v", final.Status.State, final.Status.Reason, final.Status)
		}
		if len(notified) != 200 {
			t.Errorf("%d devices notified, want 200", len(notified))
		}
		for serial, c := range notified {
			if want := 1 + b2i(failedOnce[serial]); c != want {
				t.Errorf("%s notified %d times, want %d", serial, c, want)
			}
		}
		if got := len(inState(e.states(r.ID), cradle.DeviceSucceeded)); got != 200 {
			t.Errorf("%d devices succeeded, want 200", got)
		}
		if loads != 1 {
			t.Errorf("the rollout was loaded %d times, want once (no one else wrote it)", loads)
		}
		if n := e.count(`SELECT COUNT(*) FROM rollout_events`); n != 0 {
			t.Errorf("%d events left queued", n)
		}
		// Done: the next step has nothing to drive.
		if st := step(t, s); st.Rollouts != 0 || st.Saved != 0 {
			t.Errorf("step after completion: %+v", st)
		}
	})
}

var cmpEmpty = cmp.Comparer(func(a, b []string) bool { return slices.Equal(a, b) })

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pausedStore passes every call to the real store but holds SaveRollout
// until resumed, as a replica paused (a long GC, a VM migration) after it
// computed a step and before it wrote it.
type pausedStore struct {
	cradle.RolloutStore
	reached chan struct{}
	resume  chan struct{}
}

func newPausedStore(s cradle.RolloutStore) *pausedStore {
	return &pausedStore{RolloutStore: s, reached: make(chan struct{}), resume: make(chan struct{})}
}

func (p *pausedStore) SaveRollout(ctx context.Context, l cradle.Lease, s cradle.RolloutSave) (int64, bool, error) {
	close(p.reached)
	<-p.resume
	return p.RolloutStore.SaveRollout(ctx, l, s)
}

type stepResult struct {
	st  ota.StepStats
	err error
}

// stepPaused runs a step of s in the background until it reaches
// SaveRollout of p, and returns where its result will arrive once p is
// resumed.
func stepPaused(t *testing.T, s *ota.Scheduler, p *pausedStore) <-chan stepResult {
	t.Helper()
	res := make(chan stepResult, 1)
	go func() {
		st, err := s.Step(context.Background())
		res <- stepResult{st, err}
	}()
	select {
	case <-p.reached:
	case r := <-res:
		t.Fatalf("the step ended without saving: %+v, %v", r.st, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("the step never reached SaveRollout")
	}
	return res
}

// TestSchedulerFailureThresholdPauses fails devices one by one: the
// report that reaches the threshold pauses the rollout in the same step,
// and no device starts after it, however long the clock runs.
func TestSchedulerFailureThresholdPauses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		e.devices("dev", 50, map[string]string{"site": "a"})
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Selector: "site=a"},
			Phases:           []cradle.RolloutPhase{{Percent: 100}},
			RateLimit:        10,
			FailureThreshold: cradle.FailureThreshold{Count: 3, Action: cradle.FailurePause},
		})
		var n notes
		s := e.scheduler("replica-a", e.store, &n)
		step(t, s)
		first := n.take()
		if len(first) != 10 {
			t.Fatalf("first step notified %d devices, want the 10 CreateRollout started (the rate limit)", len(first))
		}
		for i, serial := range first[:3] {
			e.report(r.ID, serial, "failed", 1)
			e.clock.Add(time.Minute)
			st := step(t, s)
			got := n.take()
			state := e.find(r.ID).Status
			if i < 2 {
				if state.State != cradle.RolloutRunning || len(got) != 10 {
					t.Fatalf("after %d failures: %s, %d started; want running, 10 started", i+1, state.State, len(got))
				}
				continue
			}
			if state.State != cradle.RolloutPaused || !strings.Contains(state.Reason, "failure threshold") || state.Failures != 3 {
				t.Fatalf("after 3 failures: %+v; want paused by the failure threshold", state)
			}
			if len(got) != 0 || st.Started != 0 {
				t.Fatalf("the step that paused started %v", got)
			}
		}
		for range 5 {
			e.clock.Add(time.Minute)
			step(t, s)
		}
		if got := n.take(); len(got) != 0 {
			t.Fatalf("a paused rollout started %v", got)
		}
		if got := len(inState(e.states(r.ID), cradle.DeviceFailed)); got != 3 {
			t.Errorf("%d devices failed, want 3", got)
		}
		// The operator resumes: starts go on.
		if _, err := e.rollouts.ResumeRollout(e.ctx, r.ID); err != nil {
			t.Fatal(err)
		}
		if st := step(t, s); st.Loaded != 1 || st.Started != 10 {
			t.Errorf("step after resume: %+v; want a reload and 10 starts", st)
		}
	})
}

// TestSchedulerOperatorPause: an operator pauses while a step is between
// planning and saving; the step is refused (the revision moved on), nobody
// is notified, and the next step reloads the paused rollout rather than
// overwriting it.
func TestSchedulerOperatorPause(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		e.devices("dev", 40, map[string]string{"site": "a"})
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Selector: "site=a"},
			Phases:           []cradle.RolloutPhase{{Percent: 100}},
			RateLimit:        10,
			FailureThreshold: cradle.FailureThreshold{Percent: 50, Action: cradle.FailurePause},
		})
		var n notes
		p := newPausedStore(e.store)
		s := e.scheduler("replica-a", p, &n)
		initial := inState(e.states(r.ID), cradle.DeviceStarted) // CreateRollout's wave
		if len(initial) != 10 {
			t.Fatalf("CreateRollout started %v; want 10 devices", initial)
		}
		e.clock.Add(time.Minute)
		res := stepPaused(t, s, p)
		if _, err := e.rollouts.PauseRollout(e.ctx, r.ID, "checking a canary"); err != nil {
			t.Fatal(err)
		}
		close(p.resume)
		got := <-res
		if got.err != nil {
			t.Fatal(got.err)
		}
		if got.st.Conflicts != 1 || got.st.Saved != 0 || got.st.Started != 0 {
			t.Errorf("refused step: %+v; want one conflict, nothing saved or started", got.st)
		}
		if calls := n.take(); len(calls) != 0 {
			t.Errorf("a refused step notified %v", calls)
		}
		if started := inState(e.states(r.ID), cradle.DeviceStarted); !slices.Equal(started, initial) {
			t.Errorf("devices started after the operator paused: %v; want only CreateRollout's %v", started, initial)
		}
		// Steps with a fresh store: the scheduler reloads, and the
		// rollout stays paused.
		s.Store = e.store
		st := step(t, s)
		if st.Loaded != 1 || st.Started != 0 {
			t.Errorf("step after the pause: %+v; want a reload, no starts", st)
		}
		// Devices started before the pause finish: they are told again.
		if got := n.take(); !slices.Equal(got, initial) {
			t.Errorf("notified %v after the reload; want the devices in flight %v", got, initial)
		}
		for range 3 {
			e.clock.Add(time.Minute)
			step(t, s)
		}
		if got := e.find(r.ID).Status; got.State != cradle.RolloutPaused || got.Reason != "checking a canary" {
			t.Errorf("rollout %s (%q), want paused (checking a canary)", got.State, got.Reason)
		}
		if calls := n.take(); len(calls) != 0 {
			t.Errorf("a paused rollout notified %v", calls)
		}
	})
}

// TestSchedulerReplicas runs two schedulers, each on its own handle of
// one database: only the lease holder plans; when its lease expires (a
// pause longer than the TTL) the other takes over, and the first one's
// late write is refused by the fence.
func TestSchedulerReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		e.devices("dev", 30, map[string]string{"site": "a"})
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Selector: "site=a"},
			Phases:           []cradle.RolloutPhase{{Percent: 100}},
			RateLimit:        5,
			FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause},
		})
		var na, nb notes
		pa := newPausedStore(e.store)
		a := e.scheduler("replica-a", pa, &na)
		b := e.scheduler("replica-b", sqlstore.NewRolloutStore(e.open()), &nb)

		// A takes the lease first and plans; B stands by.
		close(pa.resume)
		e.clock.Add(time.Minute)
		if st := step(t, a); !st.Leader || st.Started != 5 || st.Notified != 10 {
			t.Fatalf("replica a: %+v; want leader, 5 started, 10 notified (with CreateRollout's 5)", st)
		}
		if st := step(t, b); st.Leader || st.Rollouts != 0 {
			t.Fatalf("replica b: %+v; want a standby that does nothing", st)
		}
		startedA := na.take()
		if len(nb.take()) != 0 {
			t.Fatal("standby replica notified")
		}

		// A computes its next step and is paused before it writes.
		pa2 := newPausedStore(e.store)
		a.Store = pa2
		e.clock.Add(time.Minute)
		res := stepPaused(t, a, pa2)
		// Its lease expires; B takes over and drives the rollout.
		e.clock.Add(16 * time.Second)
		st := step(t, b)
		if !st.Leader || st.Started != 5 || st.Notified != 15 {
			t.Fatalf("replica b after a's lease expired: %+v; want leader, 5 started, 15 notified (the 10 in flight too)", st)
		}
		startedB := nb.take()
		// A wakes up: its write is fenced off and it notifies nobody.
		close(pa2.resume)
		got := <-res
		if got.err != nil {
			t.Fatal(got.err)
		}
		if got.st.Conflicts != 1 || got.st.Saved != 0 {
			t.Errorf("late step of replica a: %+v; want its save refused", got.st)
		}
		if late := na.take(); len(late) != 0 {
			t.Errorf("replica a notified %v after losing its lease", late)
		}
		// The store holds B's step, not A's.
		stored := inState(e.states(r.ID), cradle.DeviceStarted)
		want := startedB // a's first step's devices and b's own
		for _, serial := range startedA {
			if !slices.Contains(startedB, serial) {
				t.Errorf("%s, started by a, not told again by b", serial)
			}
		}
		if len(want) != 15 {
			t.Errorf("b notified %d devices, want 15", len(want))
		}
		if diff := cmp.Diff(want, stored); diff != "" {
			t.Errorf("started devices in the store (-a's first and b's step +stored):\n%s", diff)
		}
		// A finds out it lost the lease and stands by.
		if st := step(t, a); st.Leader {
			t.Errorf("replica a still leads: %+v", st)
		}
		e.clock.Add(time.Minute)
		if st := step(t, b); !st.Leader || st.Started != 5 {
			t.Errorf("replica b: %+v; want leader, 5 started", st)
		}
		if len(na.take()) != 0 {
			t.Error("replica a notified after it stood down")
		}
		// B stops and gives the lease up: A takes over at once.
		if err := b.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		a.Store = e.store
		e.clock.Add(time.Minute)
		if st := step(t, a); !st.Leader || st.Loaded != 1 || st.Started != 5 {
			t.Errorf("replica a after b released the lease: %+v; want leader, a reload, 5 started", st)
		}
	})
}

// TestSchedulerRestart replaces a scheduler mid-rollout by a new one (a
// restart): it resumes from the stored state, takes the reports queued
// meanwhile and never starts a device twice.
func TestSchedulerRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		e.devices("dev", 20, map[string]string{"site": "a"})
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Selector: "site=a"},
			Phases:           []cradle.RolloutPhase{{Count: 4}, {Percent: 100}},
			MaxConcurrent:    4,
			FailureThreshold: cradle.FailureThreshold{Count: 3, Action: cradle.FailurePause},
		})
		var n notes
		s1 := e.scheduler("first", e.store, &n)
		step(t, s1)
		first := n.take()
		if len(first) != 4 {
			t.Fatalf("first step started %v; want the 4 canaries", first)
		}
		// The first scheduler dies without giving up its lease; the
		// canaries report meanwhile.
		for _, serial := range first {
			e.report(r.ID, serial, "succeeded", 1)
		}
		s2 := e.scheduler("second", e.store, &n)
		if st := step(t, s2); st.Leader {
			t.Fatalf("the new scheduler took a held lease: %+v", st)
		}
		e.clock.Add(16 * time.Second)
		seen := map[string]bool{}
		for _, serial := range first {
			seen[serial] = true
		}
		for i := 0; i < 20 && e.find(r.ID).Status.State != cradle.RolloutCompleted; i++ {
			st := step(t, s2)
			if i == 0 && (!st.Leader || st.Loaded != 1 || st.Events != 4) {
				t.Fatalf("first step after the restart: %+v; want leader, one load, the 4 queued reports", st)
			}
			for _, serial := range n.take() {
				if seen[serial] {
					t.Fatalf("%s started twice", serial)
				}
				seen[serial] = true
				e.report(r.ID, serial, "succeeded", 1)
			}
		}
		if got := e.find(r.ID).Status.State; got != cradle.RolloutCompleted || len(seen) != 20 {
			t.Fatalf("rollout %s with %d devices started; want completed, 20", got, len(seen))
		}
	})
}

// TestSchedulerReports: stale and foreign reports are consumed without
// effect; a dynamic rollout takes devices that join its target.
func TestSchedulerReports(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		e.devices("dev", 3, map[string]string{"site": "a"})
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Selector: "site=a"},
			Dynamic:          true,
			Phases:           []cradle.RolloutPhase{{Percent: 100}},
			Retries:          1,
			FailureThreshold: cradle.FailureThreshold{Count: 3, Action: cradle.FailurePause},
		})
		var n notes
		s := e.scheduler("replica-a", e.store, &n)
		step(t, s)
		if got := n.take(); len(got) != 3 {
			t.Fatalf("started %v, want 3 devices", got)
		}
		e.report(r.ID, "dev-0000", "failed", 1)     // retried: attempt 2
		e.report(r.ID, "dev-0000", "succeeded", 1)  // stale: attempt 1 is over
		e.report(r.ID, "nobody", "succeeded", 1)    // not in the rollout
		e.report(r.ID, "dev-0001", "rebooting", 1)  // unknown kind
		e.report(r.ID, "dev-0001", "installing", 1) // fine
		st := step(t, s)
		if st.Events != 5 || st.Refused != 3 {
			t.Errorf("step: %+v; want 5 events, 3 refused", st)
		}
		if got := n.take(); !slices.Equal(got, []string{"dev-0000"}) {
			t.Errorf("notified %v, want the retry of dev-0000", got)
		}
		if n := e.count(`SELECT COUNT(*) FROM rollout_events`); n != 0 {
			t.Errorf("%d events left queued", n)
		}
		states := e.states(r.ID)
		if states["dev-0000"] != cradle.DeviceStarted || states["dev-0001"] != cradle.DeviceInstalling {
			t.Errorf("states %v", states)
		}
		// A device joins the target; it is taken at the next join
		// interval, not before.
		e.devices("late", 1, map[string]string{"site": "a"})
		e.clock.Add(30 * time.Second)
		if st := step(t, s); st.Joined != 0 {
			t.Errorf("joined before the join interval: %+v", st)
		}
		e.clock.Add(31 * time.Second)
		st = step(t, s)
		if st.Joined != 1 {
			t.Errorf("step: %+v; want one device joined", st)
		}
		if got := n.take(); !slices.Equal(got, []string{"late-0000"}) {
			t.Errorf("notified %v, want late-0000", got)
		}
		// A step with nothing to do writes nothing.
		if st := step(t, s); st.Saved != 0 || st.Loaded != 0 {
			t.Errorf("idle step: %+v; want nothing loaded or saved", st)
		}
	})
}

// TestSchedulerAbortTimesOutSilentDevices: after an operator's abort, the
// devices already updating are still offered the update and their reports
// still count; one that falls silent is timed out after DeviceTimeout, for
// good (no retry), and then gets no pending update; once no device is in
// flight the scheduler no longer steps the rollout.
func TestSchedulerAbortTimesOutSilentDevices(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *schedEnv) {
		serials := e.devices("dev", 3, nil)
		r := e.create(cradle.RolloutSpec{
			Target:           cradle.RolloutTarget{Serials: serials},
			Phases:           []cradle.RolloutPhase{{Count: 2}, {Percent: 100}},
			DeviceTimeout:    cradle.Duration(10 * time.Minute),
			Retries:          2,
			FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause},
		}) // dev-0000 and dev-0001 start
		upd := sqlstore.NewUpdateService(e.db)
		listener := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(e.tenantID, "mqtt"))
		pending := func(serial string) bool {
			t.Helper()
			p, err := upd.PendingUpdate(listener, serial, "")
			if cradle.ErrorCode(err) == cradle.ENOTFOUND {
				return false
			} else if err != nil {
				t.Fatalf("pending update of %s: %v", serial, err)
			}
			if p.RolloutID != r.ID || p.Attempt != 1 {
				t.Fatalf("pending update of %s: %+v", serial, p)
			}
			return true
		}
		var n notes
		s := e.scheduler("replica-a", e.store, &n)
		step(t, s)
		n.take()
		if _, err := e.rollouts.AbortRollout(e.ctx, r.ID, "bad build"); err != nil {
			t.Fatal(err)
		}
		if st := step(t, s); st.Rollouts != 1 || st.Loaded != 1 {
			t.Errorf("step after the abort: %+v; want the aborted rollout loaded: two devices are in flight", st)
		}
		// The reload tells the devices still started again: they are
		// still offered their update.
		if got := n.take(); !slices.Equal(got, []string{"dev-0000", "dev-0001"}) {
			t.Errorf("notified %v at the reload; want the devices in flight", got)
		}
		e.clock.Add(5 * time.Minute)
		if err := upd.ReportUpdate(listener, "dev-0000", cradle.UpdateReport{RolloutID: r.ID, Attempt: 1, State: cradle.UpdateDownloading}); err != nil {
			t.Fatal(err)
		}
		if st := step(t, s); st.Events != 1 || st.Refused != 0 || st.Saved != 1 {
			t.Errorf("step with a report: %+v; want it applied and saved", st)
		}
		if !pending("dev-0000") || !pending("dev-0001") || pending("dev-0002") {
			t.Fatal("after the abort, want the update offered to the devices in flight only")
		}

		// dev-0001 has been silent since its start 10 minutes ago.
		e.clock.Add(5 * time.Minute)
		if st := step(t, s); st.Rollouts != 1 || st.Saved != 1 || st.Started != 0 {
			t.Errorf("step at dev-0001's timeout: %+v", st)
		}
		if pending("dev-0001") || !pending("dev-0000") {
			t.Fatal("want dev-0001 timed out and dev-0000 still updating")
		}
		// dev-0000 last reported 10 minutes ago.
		e.clock.Add(5 * time.Minute)
		if st := step(t, s); st.Rollouts != 1 || st.Saved != 1 || st.Started != 0 {
			t.Errorf("step at dev-0000's timeout: %+v", st)
		}
		if pending("dev-0000") {
			t.Fatal("dev-0000 is still offered the aborted release after its timeout")
		}
		for range 3 {
			e.clock.Add(time.Hour)
			if st := step(t, s); st.Rollouts != 0 || st.Loaded != 0 || st.Saved != 0 {
				t.Errorf("step with nothing in flight: %+v; want the aborted rollout no longer stepped", st)
			}
		}
		if got := n.take(); len(got) != 0 {
			t.Errorf("an aborted rollout notified %v after its reload", got)
		}
		recs := e.records(r.ID)
		for serial, want := range map[string]cradle.DeviceUpdateState{"dev-0000": cradle.DeviceFailed, "dev-0001": cradle.DeviceFailed, "dev-0002": cradle.DevicePending} {
			if d := recs[serial]; d.State != want || (want == cradle.DeviceFailed && (d.Attempt != 1 || !strings.Contains(d.Reason, "no report for 10m0s"))) {
				t.Errorf("%s: %+v; want %s", serial, d, want)
			}
		}
		if got := e.find(r.ID).Status; got.State != cradle.RolloutAborted || got.Reason != "bad build" || got.Failures != 0 {
			t.Errorf("rollout %s (%q), %d failures counted; want aborted (bad build), none counted", got.State, got.Reason, got.Failures)
		}
	})
}
