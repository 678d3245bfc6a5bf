package sqlstore

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"time"

	"cradle"
)

// CertificateService keeps device certificates, and is also the PKI's
// cross-tenant store (cradle.CertificateAuthorityStore) for the system
// actor.
type CertificateService struct{ db *DB }

var (
	_ cradle.CertificateService        = (*CertificateService)(nil)
	_ cradle.CertificateAuthorityStore = (*CertificateService)(nil)
)

// NewCertificateService returns the certificate store of db.
func NewCertificateService(db *DB) *CertificateService { return &CertificateService{db: db} }

const certCols = `serial, tenant_id, kind, issuer, subject, not_before, not_after, status, revoked_at, reason, superseded_by, der, created_at,
	(SELECT devices.serial FROM devices WHERE devices.id = certificates.device_id) AS device_serial`

func scanCert(sc interface{ Scan(...any) error }) (*cradle.Certificate, error) {
	c := &cradle.Certificate{}
	var kind, status string
	var nb, na, created int64
	var revokedAt, reason sql.NullInt64
	var superseded sql.NullString
	if err := sc.Scan(&c.Serial, &c.TenantID, &kind, &c.Issuer, &c.Subject, &nb, &na, &status, &revokedAt, &reason, &superseded, &c.DER, &created, &c.DeviceSerial); err != nil {
		return nil, err
	}
	c.Kind, c.Status = cradle.CertKind(kind), cradle.CertStatus(status)
	c.NotBefore, c.NotAfter, c.CreatedAt = fromMicros(nb), fromMicros(na), fromMicros(created)
	if revokedAt.Valid {
		t := fromMicros(revokedAt.Int64)
		c.RevokedAt = &t
		r := cradle.RevocationReason(reason.Int64)
		c.Reason = &r
	}
	c.SupersededBy = superseded.String
	return c, nil
}

// certRecord is the row of a parsed certificate.
func certRecord(tenantID int64, deviceSerial string, kind cradle.CertKind, cert *x509.Certificate, now time.Time) *cradle.Certificate {
	return &cradle.Certificate{
		Serial: cradle.SerialHex(cert.SerialNumber), TenantID: tenantID, DeviceSerial: deviceSerial, Kind: kind,
		Issuer: hex.EncodeToString(cert.AuthorityKeyId), Subject: cert.Subject.String(),
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(), Status: cradle.CertValid, CreatedAt: now, DER: cert.Raw,
	}
}

func (tx *Tx) insertCert(ctx context.Context, c *cradle.Certificate, deviceID int64, actor string) error {
	if c.Issuer == "" {
		return cradle.Errorf(cradle.EINVALID, "certificate %s has no authority key identifier; Cradle records only certificates that name their issuer's key", c.Serial)
	}
	_, err := tx.exec(ctx, `INSERT INTO certificates (serial, tenant_id, device_id, kind, issuer, subject, not_before, not_after, status, der, created_by, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.Serial, c.TenantID, deviceID, string(c.Kind), c.Issuer, c.Subject, micros(c.NotBefore), micros(c.NotAfter), string(c.Status), c.DER, actor, micros(c.CreatedAt))
	if err != nil && tx.db.dialect.uniqueViolation(err) {
		return cradle.Errorf(cradle.ECONFLICT, "certificate serial %s is already recorded", c.Serial)
	} else if err != nil {
		return fmt.Errorf("sqlstore: record certificate: %w", err)
	}
	return nil
}

// IssueCertificate issues a device certificate in one transaction.
func (s *CertificateService) IssueCertificate(ctx context.Context, req cradle.CertificateIssue) (*cradle.Certificate, error) {
	subject := "device:" + req.DeviceSerial
	a, err := s.db.authorize(ctx, cradle.PermCertIssue, "certificate.issue", subject)
	if err != nil {
		return nil, err
	}
	if err := s.db.ownDevice(ctx, a, req.DeviceSerial, "ask for a certificate", "certificate.issue.refused"); err != nil {
		return nil, err
	}
	if req.Issue == nil {
		return nil, errors.New("sqlstore: issue certificate: no Issue function")
	}
	var out *cradle.Certificate
	var refused error
	var details map[string]string
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, req.DeviceSerial)
		if err != nil {
			return err
		}
		if !slices.Contains(req.States, d.State) {
			refused = cradle.Errorf(cradle.EFORBIDDEN, "device %q is %s; a certificate is issued only to a device that is %s", d.Serial, d.State, joinStates(req.States))
			details = map[string]string{"state": string(d.State)}
			return refused
		}
		var old *cradle.Certificate
		if req.Renews != "" {
			old, err = scanCert(tx.queryRow(ctx, `SELECT `+certCols+` FROM certificates WHERE serial = ? AND tenant_id = ?`+tx.db.dialect.forUpdate, req.Renews, a.TenantID))
			switch {
			case errors.Is(err, sql.ErrNoRows) || (err == nil && old.DeviceSerial != d.Serial):
				refused = cradle.Errorf(cradle.EFORBIDDEN, "certificate %s is not a certificate of device %q", req.Renews, d.Serial)
			case err != nil:
				return fmt.Errorf("sqlstore: issue certificate: %w", err)
			case old.Status == cradle.CertRevoked:
				refused = cradle.Errorf(cradle.EFORBIDDEN, "certificate %s of device %q was revoked; a revoked certificate cannot be renewed", old.Serial, d.Serial)
			}
			if refused != nil {
				details = map[string]string{"renews": req.Renews}
				return refused
			}
		}
		cert, err := req.Issue(ctx, d)
		if err != nil {
			return err
		}
		out = certRecord(a.TenantID, d.Serial, req.Kind, cert, tx.now)
		if err := tx.insertCert(ctx, out, d.ID, a.String()); err != nil {
			return err
		}
		ev := map[string]string{"serial": out.Serial, "kind": string(req.Kind), "issuer": out.Issuer, "not_after": out.NotAfter.Format(time.RFC3339)}
		if old != nil {
			if _, err := tx.exec(ctx, `UPDATE certificates SET status = ?, superseded_by = ? WHERE serial = ? AND status = ?`,
				string(cradle.CertSuperseded), out.Serial, old.Serial, string(cradle.CertValid)); err != nil {
				return fmt.Errorf("sqlstore: issue certificate: %w", err)
			}
			ev["renews"] = old.Serial
		}
		action := "certificate.issue"
		if old != nil {
			action = "certificate.renew"
		}
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: subject, Details: ev}); err != nil {
			return err
		}
		if req.Deploy && d.State == cradle.StateProvisioned {
			t := cradle.DeviceTransition{To: cradle.StateDeployed, Reason: "enrolled: certificate " + out.Serial}
			if refused = cradle.CheckTransition(d.Serial, d.State, t.To, a.Role); refused != nil {
				return refused
			}
			if err := tx.transition(ctx, a, d, t); err != nil {
				return err
			}
			return tx.quarantineUnclaimed(ctx, a, d)
		}
		return nil
	})
	if refused != nil {
		if details == nil {
			details = map[string]string{}
		}
		details["reason"] = cradle.ErrorMessage(refused)
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "certificate.issue.refused", Subject: subject, Details: details}, refused)
	}
	if err != nil {
		if cradle.ErrorCode(err) != cradle.EINTERNAL {
			s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "certificate.issue.refused", Subject: subject}, err)
		}
		return nil, err
	}
	return out, nil
}

// RecordCertificate stores a certificate issued elsewhere.
func (s *CertificateService) RecordCertificate(ctx context.Context, deviceSerial string, kind cradle.CertKind, cert *x509.Certificate) (*cradle.Certificate, error) {
	subject := "device:" + deviceSerial
	a, err := s.db.authorize(ctx, cradle.PermCertIssue, "certificate.record", subject)
	if err != nil {
		return nil, err
	}
	var out *cradle.Certificate
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, deviceSerial)
		if err != nil {
			return err
		}
		out = certRecord(a.TenantID, d.Serial, kind, cert, tx.now)
		if err := tx.insertCert(ctx, out, d.ID, a.String()); err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "certificate.record", Subject: subject,
			Details: map[string]string{"serial": out.Serial, "kind": string(kind), "issuer": out.Issuer}})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func certNotFound(serial string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "certificate %s not found", serial)
}

// FindCertificateBySerial returns a certificate of the actor's tenant.
func (s *CertificateService) FindCertificateBySerial(ctx context.Context, serial string) (*cradle.Certificate, error) {
	a, err := s.db.authorize(ctx, cradle.PermCertRead, "certificate.read", "certificate:"+serial)
	if err != nil {
		return nil, err
	}
	n, err := cradle.ParseSerialHex(serial)
	if err != nil {
		return nil, err
	}
	c, err := scanCert(s.db.queryRow(ctx, `SELECT `+certCols+` FROM certificates WHERE serial = ? AND tenant_id = ?`, cradle.SerialHex(n), a.TenantID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, certNotFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find certificate: %w", err)
	}
	return c, nil
}

// FindCertificates lists the tenant's certificates, newest first.
func (s *CertificateService) FindCertificates(ctx context.Context, f cradle.CertificateFilter) ([]*cradle.Certificate, string, error) {
	a, err := s.db.authorize(ctx, cradle.PermCertRead, "certificate.read", "certificates")
	if err != nil {
		return nil, "", err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, "", err
	}
	q := `SELECT ` + certCols + ` FROM certificates WHERE tenant_id = ?`
	args := []any{a.TenantID}
	if f.DeviceSerial != nil {
		q += ` AND device_id = (SELECT id FROM devices WHERE tenant_id = ? AND serial = ?)`
		args = append(args, a.TenantID, *f.DeviceSerial)
	}
	if f.Status != nil {
		q += ` AND status = ?`
		args = append(args, string(*f.Status))
	}
	if f.ExpiringBefore != nil {
		q += ` AND status <> 'revoked' AND not_after < ?`
		args = append(args, micros(*f.ExpiringBefore))
	}
	if f.Cursor != "" {
		created, serial, err := decodeCertCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		q += ` AND (created_at < ? OR (created_at = ? AND serial < ?))`
		args = append(args, created, created, serial)
	}
	q += ` ORDER BY certificates.created_at DESC, certificates.serial DESC LIMIT ?`
	args = append(args, limit+1)
	rows, err := s.db.query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("sqlstore: find certificates: %w", err)
	}
	defer rows.Close()
	var out []*cradle.Certificate
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, "", fmt.Errorf("sqlstore: find certificates: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("sqlstore: find certificates: %w", err)
	}
	var next string
	if len(out) > limit {
		out = out[:limit]
		last := out[len(out)-1]
		next = encodeCertCursor(micros(last.CreatedAt), last.Serial)
	}
	return out, next, nil
}

func encodeCertCursor(created int64, serial string) string {
	return "c" + strconv.FormatInt(created, 36) + "." + serial
}

func decodeCertCursor(c string) (int64, string, error) {
	bad := cradle.Errorf(cradle.EINVALID, "invalid cursor %q: pass the next_cursor of a previous page unchanged", c)
	if len(c) < 4 || c[0] != 'c' {
		return 0, "", bad
	}
	for i := 1; i < len(c); i++ {
		if c[i] == '.' {
			created, err := strconv.ParseInt(c[1:i], 36, 64)
			if err != nil {
				return 0, "", bad
			}
			n, err := cradle.ParseSerialHex(c[i+1:])
			if err != nil || cradle.SerialHex(n) != c[i+1:] {
				return 0, "", bad
			}
			return created, c[i+1:], nil
		}
	}
	return 0, "", bad
}

// RevokeCertificate revokes one certificate of the tenant.
func (s *CertificateService) RevokeCertificate(ctx context.Context, serial string, reason cradle.RevocationReason) (*cradle.Certificate, error) {
	a, err := s.db.authorize(ctx, cradle.PermCertRevoke, "certificate.revoke", "certificate:"+serial)
	if err != nil {
		return nil, err
	}
	n, err := cradle.ParseSerialHex(serial)
	if err != nil {
		return nil, err
	}
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	var c *cradle.Certificate
	err = s.db.write(ctx, func(tx *Tx) error {
		c, err = scanCert(tx.queryRow(ctx, `SELECT `+certCols+` FROM certificates WHERE serial = ? AND tenant_id = ?`+tx.db.dialect.forUpdate, cradle.SerialHex(n), a.TenantID))
		if errors.Is(err, sql.ErrNoRows) {
			return certNotFound(serial)
		} else if err != nil {
			return fmt.Errorf("sqlstore: revoke certificate: %w", err)
		}
		if c.Status == cradle.CertRevoked {
			if reason != cradle.ReasonKeyCompromise || c.Reason == nil || *c.Reason == cradle.ReasonKeyCompromise {
				return cradle.Errorf(cradle.ECONFLICT, "certificate %s was already revoked at %s (%s)", c.Serial, c.RevokedAt.Format(time.RFC3339), reasonName(c.Reason))
			}
			// RFC 5280 (5.3.1) lets a revocation's reason become
			// keyCompromise: the key may be in other hands, which a
			// decommissioning's tombstone must not then be taken from.
			// The revocation date stays; the CRL and OCSP say the new
			// reason once the notifier has run.
			previous := *c.Reason
			if _, err := tx.exec(ctx, `UPDATE certificates SET reason = ? WHERE serial = ?`, int(reason), c.Serial); err != nil {
				return fmt.Errorf("sqlstore: revoke certificate: %w", err)
			}
			c.Reason = &reason
			tx.revoked = append(tx.revoked, c)
			return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "certificate.revoke", Subject: "certificate:" + c.Serial,
				Details: map[string]string{"device": c.DeviceSerial, "reason": reason.String(), "previous_reason": previous.String(), "issuer": c.Issuer}})
		}
		return tx.revoke(ctx, a, c, reason)
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func reasonName(r *cradle.RevocationReason) string {
	if r == nil {
		return cradle.ReasonUnspecified.String()
	}
	return r.String()
}

func checkReason(r cradle.RevocationReason) error {
	if r == cradle.ReasonRemoveFromCRL || r.String() == "reason("+strconv.Itoa(int(r))+")" {
		return cradle.Errorf(cradle.EINVALID, "revocation reason %d cannot be used", int(r))
	}
	return nil
}

func (tx *Tx) revoke(ctx context.Context, a cradle.Actor, c *cradle.Certificate, reason cradle.RevocationReason) error {
	if _, err := tx.exec(ctx, `UPDATE certificates SET status = ?, revoked_at = ?, reason = ? WHERE serial = ?`,
		string(cradle.CertRevoked), micros(tx.now), int(reason), c.Serial); err != nil {
		return fmt.Errorf("sqlstore: revoke certificate: %w", err)
	}
	now := tx.now
	c.Status, c.RevokedAt, c.Reason = cradle.CertRevoked, &now, &reason
	tx.revoked = append(tx.revoked, c)
	return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "certificate.revoke", Subject: "certificate:" + c.Serial,
		Details: map[string]string{"device": c.DeviceSerial, "reason": reason.String(), "issuer": c.Issuer}})
}

// RevokeDeviceCertificates revokes every unexpired, unrevoked certificate
// of a device.
func (s *CertificateService) RevokeDeviceCertificates(ctx context.Context, deviceSerial string, reason cradle.RevocationReason) ([]*cradle.Certificate, error) {
	a, err := s.db.authorize(ctx, cradle.PermCertRevoke, "certificate.revoke", "device:"+deviceSerial)
	if err != nil {
		return nil, err
	}
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	var out []*cradle.Certificate
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, deviceSerial)
		if err != nil {
			return err
		}
		rows, err := tx.query(ctx, `SELECT `+certCols+` FROM certificates WHERE device_id = ? AND status <> 'revoked' AND not_after > ? ORDER BY created_at`, d.ID, micros(tx.now))
		if err != nil {
			return fmt.Errorf("sqlstore: revoke device certificates: %w", err)
		}
		for rows.Next() {
			c, err := scanCert(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("sqlstore: revoke device certificates: %w", err)
			}
			out = append(out, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("sqlstore: revoke device certificates: %w", err)
		}
		for _, c := range out {
			if err := tx.revoke(ctx, a, c, reason); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// authorizeSystem lets only the server itself through.
func (s *CertificateService) authorizeSystem(ctx context.Context, action string) error {
	a, err := s.db.authorize(ctx, cradle.PermCertRead, action, "certificates")
	if err != nil {
		return err
	}
	if a.Role != cradle.RoleSystem {
		err := cradle.Errorf(cradle.EFORBIDDEN, "role %s may not read certificates across tenants", a.Role)
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: "certificates"}, err)
	}
	return nil
}

// LookupCertificate returns the certificate with the serial in any tenant.
func (s *CertificateService) LookupCertificate(ctx context.Context, serial *big.Int) (*cradle.Certificate, error) {
	if err := s.authorizeSystem(ctx, "certificate.lookup"); err != nil {
		return nil, err
	}
	hexSerial := cradle.SerialHex(serial)
	c, err := scanCert(s.db.queryRowPrepared(ctx, `SELECT `+certCols+` FROM certificates WHERE serial = ?`, hexSerial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, certNotFound(hexSerial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: lookup certificate: %w", err)
	}
	return c, nil
}

// RevokedCertificates lists an issuer's revoked, unexpired certificates.
func (s *CertificateService) RevokedCertificates(ctx context.Context, issuer string, now time.Time) ([]cradle.RevokedEntry, error) {
	if err := s.authorizeSystem(ctx, "certificate.lookup"); err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT serial, revoked_at, reason FROM certificates WHERE issuer = ? AND status = 'revoked' AND not_after > ? ORDER BY revoked_at, serial`, issuer, micros(now))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: revoked certificates: %w", err)
	}
	defer rows.Close()
	var out []cradle.RevokedEntry
	for rows.Next() {
		var serial string
		var at, reason int64
		if err := rows.Scan(&serial, &at, &reason); err != nil {
			return nil, fmt.Errorf("sqlstore: revoked certificates: %w", err)
		}
		n, ok := new(big.Int).SetString(serial, 16)
		if !ok {
			return nil, fmt.Errorf("sqlstore: revoked certificates: bad serial %q in the database", serial)
		}
		out = append(out, cradle.RevokedEntry{Serial: n, RevokedAt: fromMicros(at), Reason: cradle.RevocationReason(reason)})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: revoked certificates: %w", err)
	}
	return out, nil
}

// NextCRLNumber returns the issuer's next CRL number.
func (s *CertificateService) NextCRLNumber(ctx context.Context, issuer string) (*big.Int, error) {
	if err := s.authorizeSystem(ctx, "crl.number"); err != nil {
		return nil, err
	}
	var n int64
	err := s.db.write(ctx, func(tx *Tx) error {
		// One statement, so that concurrent replicas never get the same
		// number: the row lock of the upsert orders them.
		return tx.queryRow(ctx, `INSERT INTO crl_numbers (issuer, number) VALUES (?, 1)
			ON CONFLICT (issuer) DO UPDATE SET number = crl_numbers.number + 1 RETURNING number`, issuer).Scan(&n)
	})
	if err != nil {
		return nil, fmt.Errorf("sqlstore: next CRL number: %w", err)
	}
	return big.NewInt(n), nil
}

func joinStates(ss []cradle.State) string {
	out := ""
	for i, s := range ss {
		switch {
		case i == 0:
		case i == len(ss)-1:
			out += " or "
		default:
			out += ", "
		}
		out += string(s)
	}
	return out
}
