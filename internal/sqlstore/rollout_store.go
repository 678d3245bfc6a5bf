package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"cradle"
)

// RolloutStore implements cradle.RolloutStore, the scheduler's side of
// rollouts, across tenants. A step's write (SaveRollout) is fenced: in one
// transaction it checks that the scheduler's lease still has its holder and
// fence and is unexpired and that the rollout is still at the revision the
// step loaded, and writes nothing otherwise.
type RolloutStore struct {
	*LeaseStore
	db *DB
}

var _ cradle.RolloutStore = (*RolloutStore)(nil)

// NewRolloutStore returns the scheduler's rollout store of db.
func NewRolloutStore(db *DB) *RolloutStore {
	return &RolloutStore{LeaseStore: NewLeaseStore(db), db: db}
}

// schedulerActor is who the audit log names for the scheduler's changes.
func schedulerActor(tenantID int64) string {
	return cradle.SystemActor(tenantID, "rollout-scheduler").String()
}

// ActiveRollouts lists the running and paused rollouts of every tenant,
// and the aborted ones with devices in flight or queued reports, oldest
// first.
func (s *RolloutStore) ActiveRollouts(ctx context.Context) ([]cradle.RolloutRef, error) {
	// An abort does not interrupt updates in flight (the device still gets
	// its pending update): their reports must still reach the engine, and
	// a device that never reports again must still time out, or it would
	// be offered the aborted release for ever. in_flight is kept on the
	// rollout row, so this query never reads rollout_devices: it runs at
	// every scheduler step, and aborted rollouts pile up over the years.
	rows, err := s.db.query(ctx, `SELECT r.tenant_id, r.public_id, r.revision FROM rollouts r WHERE r.state IN (?, ?)
		OR (r.state = ? AND (r.in_flight > 0 OR EXISTS (SELECT 1 FROM rollout_events e WHERE e.rollout_id = r.id))) ORDER BY r.id`,
		string(cradle.RolloutRunning), string(cradle.RolloutPaused), string(cradle.RolloutAborted))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: active rollouts: %w", err)
	}
	defer rows.Close()
	out := []cradle.RolloutRef{}
	for rows.Next() {
		var r cradle.RolloutRef
		if err := rows.Scan(&r.TenantID, &r.ID, &r.Revision); err != nil {
			return nil, fmt.Errorf("sqlstore: active rollouts: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: active rollouts: %w", err)
	}
	return out, nil
}

func (s *RolloutStore) find(ctx context.Context, tenantID int64, id string) (*storedRollout, error) {
	sr, err := scanRollout(s.db.queryRow(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE tenant_id = ? AND public_id = ?`, tenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, rolloutNotFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: load rollout: %w", err)
	}
	return sr, nil
}

// LoadRollout returns a rollout, its device records in position order and
// its revision. The rollout row is read before the devices: if a write
// lands in between, the devices are newer than the revision returned, and
// the save of a step planned on them is refused for the revision.
func (s *RolloutStore) LoadRollout(ctx context.Context, tenantID int64, id string) (cradle.Rollout, []cradle.RolloutDevice, int64, error) {
	sr, err := s.find(ctx, tenantID, id)
	if err != nil {
		return cradle.Rollout{}, nil, 0, err
	}
	devs, err := loadRolloutDevices(ctx, s.db, sr.id)
	if err != nil {
		return cradle.Rollout{}, nil, 0, err
	}
	return sr.r, devs, sr.revision, nil
}

// RolloutEvents returns up to limit queued events of a rollout with
// Seq > after, oldest first.
func (s *RolloutStore) RolloutEvents(ctx context.Context, tenantID int64, id string, after int64, limit int) ([]cradle.RolloutEvent, error) {
	if limit <= 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "limit %d must be positive", limit)
	}
	var rid int64
	if err := s.db.queryRow(ctx, `SELECT id FROM rollouts WHERE tenant_id = ? AND public_id = ?`, tenantID, id).Scan(&rid); errors.Is(err, sql.ErrNoRows) {
		return nil, rolloutNotFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout events: %w", err)
	}
	rows, err := s.db.query(ctx, `SELECT seq, serial, kind, attempt, reason, at FROM rollout_events WHERE rollout_id = ? AND seq > ? ORDER BY seq LIMIT ?`, rid, after, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout events: %w", err)
	}
	defer rows.Close()
	out := []cradle.RolloutEvent{}
	for rows.Next() {
		var ev cradle.RolloutEvent
		var at int64
		if err := rows.Scan(&ev.Seq, &ev.Serial, &ev.Kind, &ev.Attempt, &ev.Reason, &at); err != nil {
			return nil, fmt.Errorf("sqlstore: rollout events: %w", err)
		}
		ev.At = fromMicros(at)
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: rollout events: %w", err)
	}
	return out, nil
}

// RolloutJoiners returns, for a dynamic rollout that is running or paused,
// the deployed devices (and suspended ones, for a remediation release) of
// its release's model and hardware revisions that match its selector and
// are not in it, each with the other active rollout that holds it, if any.
// It returns none for any other rollout.
func (s *RolloutStore) RolloutJoiners(ctx context.Context, tenantID int64, id string) ([]cradle.RolloutCandidate, error) {
	sr, err := s.find(ctx, tenantID, id)
	if err != nil {
		return nil, err
	}
	if !sr.r.Dynamic || sr.r.Target.Selector == "" || !sr.r.Status.State.Active() {
		return []cradle.RolloutCandidate{}, nil
	}
	sel, err := cradle.ParseLabelSelector(sr.r.Target.Selector)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout %s: stored selector: %w", id, err)
	}
	rel, err := loadRelease(ctx, s.db, tenantID, sr.r.ReleaseID)
	if err != nil {
		return nil, err
	}
	in := map[int64]bool{}
	rows, err := s.db.query(ctx, `SELECT device_id FROM rollout_devices WHERE rollout_id = ?`, sr.id)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout joiners: %w", err)
	}
	for rows.Next() {
		var d int64
		if err := rows.Scan(&d); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlstore: rollout joiners: %w", err)
		}
		in[d] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: rollout joiners: %w", err)
	}
	held, err := activeHolders(ctx, s.db, tenantID, sr.id)
	if err != nil {
		return nil, err
	}
	cands, ids, err := selectorCandidates(ctx, s.db, tenantID, rel, sel, func(d int64) bool { return in[d] })
	if err != nil {
		return nil, err
	}
	// A suspended device does not join a rollout that would skip it: it
	// joins when it is deployed again.
	out := []cradle.RolloutCandidate{}
	for i := range cands {
		if cands[i].SkipReason != "" {
			continue
		}
		cands[i].ActiveRollout = held[ids[i]]
		out = append(out, cands[i])
	}
	return out, nil
}

// errStepRefused rolls a SaveRollout back whose lease or revision moved on.
var errStepRefused = errors.New("sqlstore: rollout step refused")

// SaveRollout writes a scheduler step when the lease still holds and the
// rollout is at sv.Revision: the status and state, the changed device rows
// (a change for a device not yet in the rollout is a dynamic join, appended
// at the next position), and the deletion of the events consumed. A join
// of a device that another active rollout has taken since the step read
// the joiners is refused like a moved revision (ok false), so the caller
// reloads and sees it. A change of the rollout's state (the thresholds
// paused, aborted or completed it) is audited.
func (s *RolloutStore) SaveRollout(ctx context.Context, lease cradle.Lease, sv cradle.RolloutSave) (int64, bool, error) {
	if sv.Rollout.ID != sv.ID {
		return 0, false, cradle.Errorf(cradle.EINVALID, "save of rollout %s carries rollout %s", sv.ID, sv.Rollout.ID)
	}
	var rev int64
	err := s.db.write(ctx, func(tx *Tx) error {
		if ok, err := tx.holdsLease(ctx, lease); err != nil {
			return err
		} else if !ok {
			return errStepRefused
		}
		sr, err := scanRollout(tx.queryRow(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE tenant_id = ? AND public_id = ?`+tx.db.dialect.forUpdate, sv.TenantID, sv.ID))
		if errors.Is(err, sql.ErrNoRows) {
			return rolloutNotFound(sv.ID)
		} else if err != nil {
			return fmt.Errorf("sqlstore: save rollout: %w", err)
		}
		if sr.revision != sv.Revision {
			return errStepRefused
		}
		if sv.Rollout.Status.Devices > sr.r.Status.Devices {
			// Joins: decide the conflict rule against creations in
			// the tenant, one at a time.
			if err := tx.lockTenant(ctx, sv.TenantID); err != nil {
				return err
			}
			if err := tx.checkJoins(ctx, sv.TenantID, sr.id, sv.Changes); err != nil {
				return err
			}
		}
		if rev, err = tx.writeRolloutStatus(ctx, sv.TenantID, sr, sv.Rollout, sv.Changes); errors.Is(err, errRevisionMoved) {
			return errStepRefused
		} else if err != nil {
			return err
		}
		if err := tx.deleteEvents(ctx, sr.id, sv.Events); err != nil {
			return err
		}
		if from, to := sr.r.Status.State, sv.Rollout.Status.State; from != to {
			return tx.audit(ctx, sv.TenantID, schedulerActor(sv.TenantID), cradle.AuditEvent{Action: "rollout.state", Subject: "rollout:" + sv.ID,
				Details: map[string]any{"from": from, "to": to, "reason": sv.Rollout.Status.Reason, "revision": rev, "fence": lease.Fence}})
		}
		return nil
	})
	if errors.Is(err, errStepRefused) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, err
	}
	return rev, true, nil
}

// checkJoins refuses (errStepRefused) a step that starts a device joining
// rollout rolloutID while another active rollout holds it.
func (tx *Tx) checkJoins(ctx context.Context, tenantID, rolloutID int64, changes []cradle.RolloutDevice) error {
	for _, d := range changes {
		if d.State == cradle.DeviceSkipped {
			continue
		}
		var in int
		if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM rollout_devices WHERE rollout_id = ? AND serial = ?`, rolloutID, d.Serial).Scan(&in); err != nil {
			return fmt.Errorf("sqlstore: save rollout: joins: %w", err)
		}
		if in > 0 {
			continue
		}
		var other string
		err := tx.queryRow(ctx, `SELECT r.public_id FROM devices dv JOIN rollout_devices rd ON rd.device_id = dv.id JOIN rollouts r ON r.id = rd.rollout_id
			WHERE dv.tenant_id = ? AND dv.serial = ? AND r.id <> ? AND r.state IN (?, ?) AND rd.state <> ? LIMIT 1`,
			tenantID, d.Serial, rolloutID, string(cradle.RolloutRunning), string(cradle.RolloutPaused), string(cradle.DeviceSkipped)).Scan(&other)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		} else if err != nil {
			return fmt.Errorf("sqlstore: save rollout: joins: %w", err)
		}
		return errStepRefused
	}
	return nil
}

// deleteEvents deletes the consumed events of a rollout by their seq, in
// chunks that stay within the databases' limits on bound parameters.
func (tx *Tx) deleteEvents(ctx context.Context, rolloutID int64, seqs []int64) error {
	const chunk = 500
	for len(seqs) > 0 {
		n := min(chunk, len(seqs))
		args := make([]any, 0, n+1)
		args = append(args, rolloutID)
		for _, s := range seqs[:n] {
			args = append(args, s)
		}
		q := `DELETE FROM rollout_events WHERE rollout_id = ? AND seq IN (?` + strings.Repeat(", ?", n-1) + `)`
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return fmt.Errorf("sqlstore: save rollout: events: %w", err)
		}
		seqs = seqs[n:]
	}
	return nil
}
