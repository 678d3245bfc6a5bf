package ota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sync"
	"time"

	"cradle"
	"cradle/internal/rollout"
)

// SchedulerLease is the name of the lease whose holder drives the rollouts.
const SchedulerLease = "rollout-scheduler"

// Defaults of the Scheduler fields left zero.
const (
	DefaultSchedulerInterval = time.Second
	DefaultSchedulerLeaseTTL = 15 * time.Second
	DefaultJoinInterval      = 30 * time.Second
)

// Limits of one scheduler step per rollout: the events read in one query,
// and the events applied in one step (the rest wait for the next step, so
// one busy rollout cannot make a step's transaction unbounded).
const (
	schedulerEventPage = 1000
	schedulerEventMax  = 20_000
)

// Scheduler drives every active rollout with the engine (internal/rollout)
// over a cradle.RolloutStore. Several server replicas may each run one;
// only the holder of the lease SchedulerLease plans, and every write it
// makes is fenced by that lease, so a replica that lost the lease (paused,
// partitioned) cannot overwrite the work of the one that took it over.
//
// Each step, for each running or paused rollout, and each aborted one with
// devices still in flight or reports queued (so a device that falls silent
// after an abort is timed out, and stops being offered the update), the
// scheduler:
//
//   - loads the rollout into an engine when it has none cached or the
//     stored revision differs from the cached one (an operator paused,
//     resumed, aborted or approved it, or another replica wrote it): one
//     LoadRollout per reload, never a query per device;
//   - applies the device reports queued since the last step, oldest first.
//     A report the engine refuses as stale or foreign (ENOTFOUND,
//     ECONFLICT) or malformed (EINVALID) is logged and consumed, so it
//     cannot block the queue;
//   - for a dynamic rollout, every JoinInterval, adds the devices that
//     joined its target (RolloutJoiners);
//   - plans, and writes the new status, the changed device records only
//     and the consumed events in one fenced SaveRollout. When the save is
//     refused (the lease or the revision moved on) the cached engine is
//     dropped and the rollout reloaded at the next step, and no device is
//     told to start; otherwise Notify gets the started devices.
//
// Notify also gets, when a rollout is loaded, its devices stored as
// started that have not reported since: the first wave, which
// CreateRollout starts (the engine's Begin plans), and any device whose
// notification a replica that stopped between saving and notifying never
// sent. A device told twice only asks for its update twice.
//
// A step that changed nothing writes nothing. Losing the lease drops every
// cached engine.
//
// The zero value of each field but Store is usable: see the field docs.
type Scheduler struct {
	// Store holds the rollouts; it is used with the system role.
	Store cradle.RolloutStore
	// Holder names this process in the lease; "" means HolderID().
	Holder string
	// Clock is the engines' clock; nil is the system clock. The lease
	// expires by the store's clock.
	Clock cradle.Clock
	// Notify tells the devices of a tenant that were started to update;
	// nil notifies nobody (devices poll). It is called after their start
	// has been stored, so a device that asks finds its update.
	Notify func(ctx context.Context, tenantID int64, serials []string)
	// Interval is the time between steps in Run; 0 means
	// DefaultSchedulerInterval.
	Interval time.Duration
	// LeaseTTL is how long the lease lasts without renewal (each step
	// renews it); 0 means DefaultSchedulerLeaseTTL. It bounds how long
	// the rollouts stand still when a replica holding it dies.
	LeaseTTL time.Duration
	// JoinInterval is how often a dynamic rollout looks for devices that
	// joined its target; 0 means DefaultJoinInterval.
	JoinInterval time.Duration
	// Logger receives the scheduler's log; nil discards it.
	Logger *slog.Logger

	mu     sync.Mutex // serializes steps
	holder string
	lease  *cradle.Lease
	cache  map[rolloutKey]*cachedRollout
}

// StepStats says what one Step did.
type StepStats struct {
	// Leader is true when this scheduler held the lease and planned.
	Leader bool
	// Rollouts is the number of active rollouts; Loaded how many of them
	// were (re)loaded from the store.
	Rollouts int
	Loaded   int
	// Events is the number of queued reports consumed, Refused how many
	// of them the engine refused (stale or foreign reports).
	Events  int
	Refused int
	// Joined is the number of devices that joined dynamic rollouts.
	Joined int
	// Started is the number of devices this step started. Notified is
	// the number of devices passed to Notify: those started, and at a
	// load those stored as started that have not reported since.
	Started  int
	Notified int
	// Saved is the number of rollouts written, Conflicts the number of
	// writes the store refused because the lease or the rollout's
	// revision moved on (those rollouts reload at the next step).
	Saved     int
	Conflicts int
}

type rolloutKey struct {
	tenant int64
	id     string
}

// cachedRollout is an engine and what the scheduler knows about the stored
// copy it mirrors.
type cachedRollout struct {
	engine   *rollout.Engine
	revision int64     // the stored revision the engine equals
	joinedAt time.Time // when joiners were last looked for
}

// HolderID returns a lease holder name unique to this process: the host
// name, the process id and a random part.
func HolderID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

func (s *Scheduler) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Run steps every Interval until ctx is done, then gives the lease up, so
// that another replica takes over at once, and returns nil. A step's error
// is logged and the next step tries again.
func (s *Scheduler) Run(ctx context.Context) error {
	if s.Store == nil {
		return errors.New("ota: scheduler has no store")
	}
	log := s.logger()
	t := time.NewTicker(orDefault(s.Interval, DefaultSchedulerInterval))
	defer t.Stop()
	for {
		if _, err := s.Step(ctx); err != nil && ctx.Err() == nil {
			log.Error("rollout scheduler step", "err", err)
		}
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := s.Release(rctx)
			cancel()
			if err != nil {
				log.Warn("rollout scheduler: give up the lease", "err", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// Release gives the lease up if this scheduler holds it and drops every
// cached engine. A later Step takes the lease again when it is free.
func (s *Scheduler) Release(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lease
	s.dropAll()
	if l == nil {
		return nil
	}
	return s.Store.ReleaseLease(ctx, *l)
}

func (s *Scheduler) dropAll() {
	s.lease = nil
	s.cache = nil
}

// Step is one scheduler step: it takes or renews the lease and, holding
// it, steps every active rollout (see Scheduler). The errors of single
// rollouts do not stop the others; they are returned together.
func (s *Scheduler) Step(ctx context.Context) (StepStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st StepStats
	if s.Store == nil {
		return st, errors.New("ota: scheduler has no store")
	}
	if err := s.holdLease(ctx); err != nil || s.lease == nil {
		return st, err
	}
	st.Leader = true
	refs, err := s.Store.ActiveRollouts(ctx)
	if err != nil {
		return st, fmt.Errorf("ota: active rollouts: %w", err)
	}
	st.Rollouts = len(refs)
	active := make(map[rolloutKey]bool, len(refs))
	for _, ref := range refs {
		active[rolloutKey{ref.TenantID, ref.ID}] = true
	}
	for k := range s.cache {
		if !active[k] {
			delete(s.cache, k) // completed, aborted or deleted
		}
	}
	var errs []error
	for _, ref := range refs {
		if err := s.stepRollout(ctx, ref, &st); err != nil {
			delete(s.cache, rolloutKey{ref.TenantID, ref.ID})
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			errs = append(errs, fmt.Errorf("ota: rollout %s: %w", ref.ID, err))
		}
	}
	return st, errors.Join(errs...)
}

// holdLease renews the lease, or takes it when this scheduler has none.
// s.lease is nil afterwards when another holder has it.
func (s *Scheduler) holdLease(ctx context.Context) error {
	ttl := orDefault(s.LeaseTTL, DefaultSchedulerLeaseTTL)
	if s.holder == "" {
		s.holder = s.Holder
		if s.holder == "" {
			s.holder = HolderID()
		}
	}
	if s.lease != nil {
		l, ok, err := s.Store.RenewLease(ctx, *s.lease, ttl)
		if err != nil {
			// Keep the caches: the fence guards every write, and the
			// next step finds out whether the lease still holds.
			return fmt.Errorf("ota: renew the scheduler lease: %w", err)
		}
		if ok {
			s.lease = &l
			return nil
		}
		s.logger().Warn("rollout scheduler lost its lease; another replica drives the rollouts now", "holder", s.holder, "fence", s.lease.Fence)
		s.dropAll()
		return nil
	}
	l, ok, err := s.Store.AcquireLease(ctx, SchedulerLease, s.holder, ttl)
	if err != nil {
		return fmt.Errorf("ota: acquire the scheduler lease: %w", err)
	}
	if !ok {
		return nil
	}
	s.logger().Info("rollout scheduler holds the lease", "holder", s.holder, "fence", l.Fence)
	s.dropAll() // nothing cached survives a change of hands
	s.lease = &l
	return nil
}

// stepRollout steps one rollout. On error the caller drops its cache.
func (s *Scheduler) stepRollout(ctx context.Context, ref cradle.RolloutRef, st *StepStats) error {
	log := s.logger().With("tenant", ref.TenantID, "rollout", ref.ID)
	key := rolloutKey{ref.TenantID, ref.ID}
	ctx = cradle.NewContextWithActor(ctx, cradle.SystemActor(ref.TenantID, SchedulerLease))
	c := s.cache[key]
	var told []string // devices loaded as started: told again
	if c == nil || c.revision != ref.Revision {
		r, devs, rev, err := s.Store.LoadRollout(ctx, ref.TenantID, ref.ID)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		e, err := rollout.Load(r, devs, rollout.Options{Clock: s.Clock})
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		for _, d := range devs {
			if d.State == cradle.DeviceStarted {
				told = append(told, d.Serial)
			}
		}
		c = &cachedRollout{engine: e, revision: rev}
		if s.cache == nil {
			s.cache = make(map[rolloutKey]*cachedRollout)
		}
		s.cache[key] = c
		st.Loaded++
	}
	e := c.engine
	before := e.Rollout().Status

	// Device reports, oldest first. Every step reads the queue from its
	// start: a step that consumed events saved them as consumed (which
	// deletes them) or was refused (which drops the cache), so what is
	// queued is all new. Seqs may be reused once the queue is empty (SQLite
	// rowids), so a seq remembered across steps would skip reports.
	consumed := 0
	var lastSeq int64
	var seqs []int64
	for consumed < schedulerEventMax {
		evs, err := s.Store.RolloutEvents(ctx, ref.TenantID, ref.ID, lastSeq, schedulerEventPage)
		if err != nil {
			return fmt.Errorf("events: %w", err)
		}
		for _, ev := range evs {
			err := e.Event(rollout.Event{Kind: rollout.EventKind(ev.Kind), Serial: ev.Serial, Attempt: ev.Attempt, Reason: ev.Reason})
			switch code := cradle.ErrorCode(err); code {
			case "":
			case cradle.ENOTFOUND, cradle.ECONFLICT:
				st.Refused++
				log.Info("device report refused as stale or foreign", "serial", ev.Serial, "kind", ev.Kind, "attempt", ev.Attempt, "reason", cradle.ErrorMessage(err))
			case cradle.EINVALID:
				st.Refused++
				log.Warn("device report refused as malformed", "serial", ev.Serial, "kind", ev.Kind, "reason", cradle.ErrorMessage(err))
			default:
				return fmt.Errorf("event %d: %w", ev.Seq, err)
			}
			lastSeq = ev.Seq
			seqs = append(seqs, ev.Seq)
			consumed++
		}
		if len(evs) < schedulerEventPage {
			break
		}
	}
	st.Events += consumed
	// Of the devices loaded as started, those that have not reported
	// since are told again with this step's starts.
	told = slices.DeleteFunc(told, func(serial string) bool {
		d, _ := e.Device(serial)
		return d.State != cradle.DeviceStarted
	})

	// Devices that joined a dynamic rollout's target.
	now := cradle.Now(s.Clock)
	r := e.Rollout()
	if r.Dynamic && r.Status.State.Active() && (c.joinedAt.IsZero() || now.Sub(c.joinedAt) >= orDefault(s.JoinInterval, DefaultJoinInterval)) {
		cands, err := s.Store.RolloutJoiners(ctx, ref.TenantID, ref.ID)
		if err != nil {
			return fmt.Errorf("joiners: %w", err)
		}
		for _, d := range cands {
			err := e.Event(rollout.Event{Kind: rollout.EventJoined, Serial: d.Serial, Labels: d.Labels, ActiveRollout: d.ActiveRollout})
			if err != nil {
				log.Warn("device not joined", "serial", d.Serial, "reason", cradle.ErrorMessage(err))
				continue
			}
			st.Joined++
		}
		c.joinedAt = now
	}

	plan := e.Plan()
	changes := e.Changes()
	after := e.Rollout()
	if consumed == 0 && len(changes) == 0 && len(plan.Start) == 0 && reflect.DeepEqual(before, after.Status) {
		s.notify(ctx, ref.TenantID, told, st) // nothing to write
		return nil
	}
	rev, ok, err := s.Store.SaveRollout(ctx, *s.lease, cradle.RolloutSave{
		TenantID: ref.TenantID,
		ID:       ref.ID,
		Revision: c.revision,
		Rollout:  after,
		Changes:  changes,
		Events:   seqs,
	})
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if !ok {
		// The lease or the rollout moved on: what this step computed is
		// void, and no device was started.
		st.Conflicts++
		delete(s.cache, key)
		log.Info("rollout step not saved: the rollout changed or the lease moved on; reloading", "revision", c.revision)
		return nil
	}
	c.revision = rev
	st.Saved++
	if after.Status.State != before.State {
		log.Info("rollout state changed", "from", before.State, "to", after.Status.State, "reason", after.Status.Reason)
	}
	for _, p := range plan.Start {
		told = append(told, p.Serial)
	}
	st.Started += len(plan.Start)
	if len(plan.Start) > 0 {
		log.Debug("devices started", "count", len(plan.Start), "phase", plan.Start[0].Phase)
	}
	s.notify(ctx, ref.TenantID, told, st)
	return nil
}

func (s *Scheduler) notify(ctx context.Context, tenantID int64, serials []string, st *StepStats) {
	if len(serials) == 0 {
		return
	}
	st.Notified += len(serials)
	if s.Notify != nil {
		s.Notify(ctx, tenantID, serials)
	}
}
