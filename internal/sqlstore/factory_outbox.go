package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"cradle"
)

// The outbox is one queue for the whole server: the webhook dispatcher
// runs as the system and delivers every tenant's events.

// authorizeOutbox lets only the server itself through.
func (s *FactoryService) authorizeOutbox(ctx context.Context, action string) error {
	a, err := s.db.authorize(ctx, cradle.PermFactoryProvision, action, "factory-events")
	if err != nil {
		return err
	}
	if a.Role != cradle.RoleSystem {
		err := cradle.Errorf(cradle.EFORBIDDEN, "role %s may not read or change the factory event queue; only the server's webhook dispatcher does", a.Role)
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: "factory-events"}, err)
	}
	return nil
}

// DueFactoryEvents returns up to limit live events due at now, oldest
// first.
func (s *FactoryService) DueFactoryEvents(ctx context.Context, now time.Time, limit int) ([]*cradle.FactoryEvent, error) {
	if err := s.authorizeOutbox(ctx, "factory.events"); err != nil {
		return nil, err
	}
	limit, err := pageLimit(limit)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT id, event_id, type, source, subject, time, data, attempts FROM factory_events
		WHERE dead = 0 AND next_attempt_at <= ? ORDER BY id LIMIT ?`, micros(now), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: due factory events: %w", err)
	}
	defer rows.Close()
	out := []*cradle.FactoryEvent{}
	for rows.Next() {
		ev := &cradle.FactoryEvent{}
		var t int64
		if err := rows.Scan(&ev.ID, &ev.EventID, &ev.Type, &ev.Source, &ev.Subject, &t, &ev.Data, &ev.Attempts); err != nil {
			return nil, fmt.Errorf("sqlstore: due factory events: %w", err)
		}
		ev.Time = fromMicros(t)
		out = append(out, ev)
	}
	return out, rows.Err()
}

func eventNotFound(id int64) error {
	return cradle.Errorf(cradle.ENOTFOUND, "factory event %d not found (already delivered?)", id)
}

// FactoryEventDelivered removes a delivered event.
func (s *FactoryService) FactoryEventDelivered(ctx context.Context, id int64) error {
	if err := s.authorizeOutbox(ctx, "factory.events"); err != nil {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		res, err := tx.exec(ctx, `DELETE FROM factory_events WHERE id = ?`, id)
		if err != nil {
			return fmt.Errorf("sqlstore: factory event delivered: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("sqlstore: factory event delivered: %w", err)
		} else if n == 0 {
			return eventNotFound(id)
		}
		return nil
	})
}

// maxEventError bounds the stored error of a failed delivery.
const maxEventError = 2048

// FactoryEventFailed counts a failed delivery and schedules the next at
// next, or gives up on the event when next is zero.
func (s *FactoryService) FactoryEventFailed(ctx context.Context, id int64, next time.Time, lastError string) error {
	if err := s.authorizeOutbox(ctx, "factory.events"); err != nil {
		return err
	}
	if len(lastError) > maxEventError {
		lastError = lastError[:maxEventError]
	}
	// PostgreSQL stores only valid UTF-8 without NUL in TEXT.
	lastError = strings.ReplaceAll(strings.ToValidUTF8(lastError, "\uFFFD"), "\x00", "")
	dead, at := 0, int64(0)
	if next.IsZero() {
		dead = 1
	} else {
		at = micros(next)
	}
	return s.db.write(ctx, func(tx *Tx) error {
		res, err := tx.exec(ctx, `UPDATE factory_events SET attempts = attempts + 1, next_attempt_at = ?, dead = ?, last_error = ? WHERE id = ?`, at, dead, lastError, id)
		if err != nil {
			return fmt.Errorf("sqlstore: factory event failed: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("sqlstore: factory event failed: %w", err)
		} else if n == 0 {
			return eventNotFound(id)
		}
		return nil
	})
}
