package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// CertificateDependents counts the certificates of an issuer (its subject
// key id, hex), in every tenant, that are neither expired at now nor
// revoked (superseded ones count: they stay usable until they expire),
// and returns the latest expiry among them. It is how the PKI knows when
// an old device CA can be retired. Only the system role may call it.
func (s *CertificateService) CertificateDependents(ctx context.Context, issuer string, now time.Time) (int, time.Time, error) {
	if err := s.authorizeSystem(ctx, "certificate.lookup"); err != nil {
		return 0, time.Time{}, err
	}
	var n int
	var last sql.NullInt64
	err := s.db.queryRowPrepared(ctx, `SELECT COUNT(*), MAX(not_after) FROM certificates WHERE issuer = ? AND status <> 'revoked' AND not_after > ?`,
		issuer, micros(now)).Scan(&n, &last)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("sqlstore: certificate dependents: %w", err)
	}
	if !last.Valid {
		return n, time.Time{}, nil
	}
	return n, fromMicros(last.Int64), nil
}
