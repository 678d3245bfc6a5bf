package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"cradle"
)

// AuditService implements cradle.AuditService.
type AuditService struct{ db *DB }

var _ cradle.AuditService = (*AuditService)(nil)

// NewAuditService returns the audit log of db.
func NewAuditService(db *DB) *AuditService { return &AuditService{db: db} }

const auditCols = `tenant_id, seq, time, actor, action, subject, details, prev_hash, hash`

func scanAudit(sc interface{ Scan(...any) error }) (*cradle.AuditEntry, error) {
	e := &cradle.AuditEntry{}
	var t int64
	var details string
	if err := sc.Scan(&e.TenantID, &e.Seq, &t, &e.Actor, &e.Action, &e.Subject, &details, &e.PrevHash, &e.Hash); err != nil {
		return nil, err
	}
	e.Time, e.Details = fromMicros(t), []byte(details)
	return e, nil
}

// FindAuditEntries lists entries of the actor's tenant in sequence order.
func (s *AuditService) FindAuditEntries(ctx context.Context, f cradle.AuditFilter) ([]*cradle.AuditEntry, error) {
	a, err := s.db.authorize(ctx, cradle.PermAuditRead, "audit.read", "audit")
	if err != nil {
		return nil, err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	if f.AfterSeq < 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid after %d: sequences start at 1", f.AfterSeq)
	}
	where, args := []string{"tenant_id = ?", "seq > ?"}, []any{a.TenantID, f.AfterSeq}
	if f.Action != nil {
		if act := *f.Action; strings.HasSuffix(act, ".") {
			// A prefix: "device." matches every device action. Serial
			// characters never include the range's upper bound '~'.
			where, args = append(where, "action >= ?", "action < ?"), append(args, act, act+"~")
		} else {
			where, args = append(where, "action = ?"), append(args, act)
		}
	}
	if f.Subject != nil {
		where, args = append(where, "subject = ?"), append(args, *f.Subject)
	}
	rows, err := s.db.query(ctx, `SELECT `+auditCols+` FROM audit_entries WHERE `+strings.Join(where, " AND ")+` ORDER BY seq LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find audit entries: %w", err)
	}
	defer rows.Close()
	out := []*cradle.AuditEntry{}
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find audit entries: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// VerifyAudit re-walks the actor's tenant chain.
func (s *AuditService) VerifyAudit(ctx context.Context) (*cradle.AuditVerification, error) {
	a, err := s.db.authorize(ctx, cradle.PermAuditRead, "audit.verify", "audit")
	if err != nil {
		return nil, err
	}
	witness, err := ReadWitness(s.db.witness)
	if err != nil && s.db.witness != "" {
		return nil, err
	}
	return s.verifyChain(ctx, a.TenantID, witness[a.TenantID])
}

// VerifyAll verifies every chain: tenant 0's and every tenant's, including
// chains whose tenant row is gone.
func (s *AuditService) VerifyAll(ctx context.Context) ([]*cradle.AuditVerification, error) {
	witness, err := ReadWitness(s.db.witness)
	if err != nil && s.db.witness != "" {
		return nil, err
	}
	ids := map[int64]bool{0: true}
	for _, q := range []string{`SELECT id FROM tenants`, `SELECT tenant_id FROM audit_heads`, `SELECT DISTINCT tenant_id FROM audit_entries`} {
		rows, err := s.db.query(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: verify audit: %w", err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlstore: verify audit: %w", err)
			}
			ids[id] = true
		}
		rows.Close()
	}
	for id := range witness {
		ids[id] = true
	}
	var out []*cradle.AuditVerification
	for id := int64(0); len(out) < len(ids); id++ {
		if !ids[id] {
			continue
		}
		v, err := s.verifyChain(ctx, id, witness[id])
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (s *AuditService) verifyChain(ctx context.Context, tenantID int64, witness *cradle.AuditCheckpoint) (*cradle.AuditVerification, error) {
	var cp *cradle.AuditCheckpoint
	var t int64
	var sig string
	c := cradle.AuditCheckpoint{TenantID: tenantID}
	err := s.db.queryRow(ctx, `SELECT seq, hash, time, signature FROM audit_heads WHERE tenant_id = ?`, tenantID).Scan(&c.Seq, &c.Hash, &t, &sig)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("sqlstore: verify audit: %w", err)
	default:
		c.Time = fromMicros(t)
		c.Signature, _ = base64.StdEncoding.DecodeString(sig)
		cp = &c
	}
	v := cradle.NewAuditVerifier(tenantID, s.db.pub, cp, witness)
	rows, err := s.db.query(ctx, `SELECT `+auditCols+` FROM audit_entries WHERE tenant_id = ? ORDER BY seq`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: verify audit: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: verify audit: %w", err)
		}
		v.Add(e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: verify audit: %w", err)
	}
	return v.Finish(), nil
}

// RecordRefusal appends a refusal that a transport decided on its own (a
// client certificate refused by the device listener, a malformed EST
// request) to the chain of tenantID (0 when no tenant is known). It never
// fails the request: a failure to record is logged.
func (s *AuditService) RecordRefusal(ctx context.Context, tenantID int64, actor string, ev cradle.AuditEvent) {
	s.db.refuse(ctx, tenantID, actor, ev, nil)
}
