package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// CertificatesIssuedSince counts the certificates of an issuer (its
// subject key id, hex), in every tenant and in any state, that the store
// recorded at or after since, and returns when it recorded the last of
// them. It is how `cradle pki retire-ca` sees a server that still issues
// from a device CA a rotation replaced (pki.Hierarchy.CheckNotIssuing).
// Only the system role may call it.
func (s *CertificateService) CertificatesIssuedSince(ctx context.Context, issuer string, since time.Time) (int, time.Time, error) {
	if err := s.authorizeSystem(ctx, "certificate.lookup"); err != nil {
		return 0, time.Time{}, err
	}
	var n int
	var last sql.NullInt64
	err := s.db.queryRowPrepared(ctx, `SELECT COUNT(*), MAX(created_at) FROM certificates WHERE issuer = ? AND created_at >= ?`,
		issuer, micros(since)).Scan(&n, &last)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("sqlstore: certificates issued since: %w", err)
	}
	if !last.Valid {
		return n, time.Time{}, nil
	}
	return n, fromMicros(last.Int64), nil
}
