package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"cradle"
)

// LeaseStore implements cradle.LeaseStore on the leases table. Each call
// is one statement that decides and writes at once (an INSERT … ON
// CONFLICT DO UPDATE … WHERE, or a conditional UPDATE), so two replicas
// that race for a free or expired lease cannot both win: PostgreSQL locks
// the conflicting row and evaluates the condition again on the version the
// winner wrote; SQLite runs writers one at a time. Times come from the
// store's clock.
//
// Leases are not audited: they change hands between the server's own
// replicas, every few seconds when renewed, and are no one's decision.
type LeaseStore struct {
	db *DB
}

var _ cradle.LeaseStore = (*LeaseStore)(nil)

// NewLeaseStore returns the lease store of db.
func NewLeaseStore(db *DB) *LeaseStore { return &LeaseStore{db: db} }

func checkLeaseArgs(name, holder string, ttl time.Duration) error {
	switch {
	case strings.TrimSpace(name) == "" || len(name) > 200:
		return cradle.Errorf(cradle.EINVALID, "lease name %q: give 1 to 200 characters", name)
	case strings.TrimSpace(holder) == "" || len(holder) > 200:
		return cradle.Errorf(cradle.EINVALID, "lease holder %q: give 1 to 200 characters", holder)
	case ttl <= 0:
		return cradle.Errorf(cradle.EINVALID, "lease ttl %v must be positive", ttl)
	}
	return nil
}

// AcquireLease takes name for holder until now+ttl. A new lease gets fence
// 1; a free (released) or expired one changes hands with its fence + 1; the
// holder of an unexpired lease renews it and keeps the fence (an expired
// lease of the same holder gets a new fence, since another replica may
// have read it as free). ok is false when another holder has it.
func (s *LeaseStore) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (cradle.Lease, bool, error) {
	if err := checkLeaseArgs(name, holder, ttl); err != nil {
		return cradle.Lease{}, false, err
	}
	var l cradle.Lease
	ok := false
	err := s.db.write(ctx, func(tx *Tx) error {
		now := micros(tx.now)
		var exp int64
		err := tx.queryRow(ctx, `INSERT INTO leases (name, holder, fence, expires_at) VALUES (?, ?, 1, ?)
			ON CONFLICT (name) DO UPDATE SET
				fence = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ? THEN leases.fence ELSE leases.fence + 1 END,
				holder = excluded.holder,
				expires_at = excluded.expires_at
			WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
			RETURNING name, holder, fence, expires_at`,
			name, holder, micros(tx.now.Add(ttl)), now, now).Scan(&l.Name, &l.Holder, &l.Fence, &exp)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		} else if err != nil {
			return fmt.Errorf("sqlstore: acquire lease %s: %w", name, err)
		}
		l.Expires, ok = fromMicros(exp), true
		return nil
	})
	if err != nil {
		return cradle.Lease{}, false, err
	}
	return l, ok, nil
}

// RenewLease extends l to now+ttl while its row still has l's holder and
// fence (a lease that expired but that no one took is still the holder's).
// ok is false when the lease changed hands.
func (s *LeaseStore) RenewLease(ctx context.Context, l cradle.Lease, ttl time.Duration) (cradle.Lease, bool, error) {
	if err := checkLeaseArgs(l.Name, l.Holder, ttl); err != nil {
		return cradle.Lease{}, false, err
	}
	ok := false
	err := s.db.write(ctx, func(tx *Tx) error {
		exp := tx.now.Add(ttl)
		res, err := tx.exec(ctx, `UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND fence = ?`, micros(exp), l.Name, l.Holder, l.Fence)
		if err != nil {
			return fmt.Errorf("sqlstore: renew lease %s: %w", l.Name, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("sqlstore: renew lease %s: %w", l.Name, err)
		}
		if n == 1 {
			l.Expires, ok = fromMicros(micros(exp)), true
		}
		return nil
	})
	if err != nil || !ok {
		return cradle.Lease{}, false, err
	}
	return l, true, nil
}

// ReleaseLease expires a held lease now, so another replica can take it
// at once; a lease that changed hands is left alone.
func (s *LeaseStore) ReleaseLease(ctx context.Context, l cradle.Lease) error {
	return s.db.write(ctx, func(tx *Tx) error {
		if _, err := tx.exec(ctx, `UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND fence = ? AND expires_at > ?`,
			micros(tx.now), l.Name, l.Holder, l.Fence, micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: release lease %s: %w", l.Name, err)
		}
		return nil
	})
}

// holdsLease reports, inside tx, whether l's row still has its holder and
// fence and is unexpired; on PostgreSQL it locks the row until the
// transaction ends, so the lease cannot change hands before a fenced write
// commits.
func (tx *Tx) holdsLease(ctx context.Context, l cradle.Lease) (bool, error) {
	var holder string
	var fence, exp int64
	err := tx.queryRow(ctx, `SELECT holder, fence, expires_at FROM leases WHERE name = ?`+tx.db.dialect.forUpdate, l.Name).Scan(&holder, &fence, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("sqlstore: lease %s: %w", l.Name, err)
	}
	return holder == l.Holder && fence == l.Fence && exp > micros(tx.now), nil
}
