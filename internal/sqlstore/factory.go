package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"cradle"
)

// FactoryService keeps production batches, the MAC address pool, factory
// stations, unit allocations and trace records, and is the outbox of
// factory events for the webhook dispatcher (system actor only).
type FactoryService struct{ db *DB }

var (
	_ cradle.FactoryService = (*FactoryService)(nil)
	_ cradle.FactoryOutbox  = (*FactoryService)(nil)
)

// NewFactoryService returns the factory store of db.
func NewFactoryService(db *DB) *FactoryService { return &FactoryService{db: db} }

// querier is what both a transaction and the database read with.
type querier interface {
	query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	queryRow(ctx context.Context, q string, args ...any) *sql.Row
}

// refuseErr audits a request refused for a reason the client can act on
// (anything but EINTERNAL) and returns err.
func (s *FactoryService) refuseErr(ctx context.Context, a cradle.Actor, action, subject string, details map[string]string, err error) error {
	if err == nil || cradle.ErrorCode(err) == cradle.EINTERNAL {
		return err
	}
	if details == nil {
		details = map[string]string{}
	}
	details["reason"] = cradle.ErrorMessage(err)
	return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: subject, Details: details}, err)
}

// Batches.

const batchCols = `pk, tenant_id, id, model, hardware_revision, quantity, firmware_version, profile, serial_pattern, allocated, provisioned, failed, created_at, created_by`

func scanBatch(sc interface{ Scan(...any) error }) (*cradle.Batch, int64, error) {
	b := &cradle.Batch{}
	var pk, created int64
	var profile string
	if err := sc.Scan(&pk, &b.TenantID, &b.ID, &b.Model, &b.HardwareRevision, &b.Quantity, &b.FirmwareVersion, &profile, &b.SerialPattern,
		&b.Allocated, &b.Provisioned, &b.Failed, &created, &b.CreatedBy); err != nil {
		return nil, 0, err
	}
	b.Profile, b.CreatedAt = cradle.Profile(profile), fromMicros(created)
	return b, pk, nil
}

func batchNotFound(id string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "batch %q not found: list batches with cradle factory batch list", id)
}

// findBatch reads a batch of the tenant; lock takes its row for update.
func findBatch(ctx context.Context, q querier, d *dialect, tenantID int64, id string, lock bool) (*cradle.Batch, error) {
	sfx := ""
	if lock {
		sfx = d.forUpdate
	}
	b, _, err := scanBatch(q.queryRow(ctx, `SELECT `+batchCols+` FROM batches WHERE tenant_id = ? AND id = ?`+sfx, tenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, batchNotFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find batch: %w", err)
	}
	return b, nil
}

// CreateBatch records a new production batch.
func (s *FactoryService) CreateBatch(ctx context.Context, c cradle.BatchCreate) (*cradle.Batch, error) {
	subject := "batch:" + c.ID
	a, err := s.db.authorize(ctx, cradle.PermBatchWrite, "factory.batch.create", subject)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var b *cradle.Batch
	err = s.db.write(ctx, func(tx *Tx) error {
		b = &cradle.Batch{ID: c.ID, TenantID: a.TenantID, Model: c.Model, HardwareRevision: c.HardwareRevision, Quantity: c.Quantity,
			FirmwareVersion: c.FirmwareVersion, Profile: c.Profile, SerialPattern: c.SerialPattern, CreatedAt: tx.now, CreatedBy: a.String()}
		_, err := tx.exec(ctx, `INSERT INTO batches (tenant_id, id, model, hardware_revision, quantity, firmware_version, profile, serial_pattern, allocated, provisioned, failed, created_at, created_by)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?)`,
			a.TenantID, c.ID, c.Model, c.HardwareRevision, c.Quantity, c.FirmwareVersion, string(c.Profile), c.SerialPattern, micros(tx.now), a.String())
		if s.db.dialect.uniqueViolation(err) {
			return cradle.Errorf(cradle.ECONFLICT, "batch %q already exists; choose another id", c.ID)
		} else if err != nil {
			return fmt.Errorf("sqlstore: create batch: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "factory.batch.create", Subject: subject, Details: c})
	})
	if err != nil {
		return nil, s.refuseErr(ctx, a, "factory.batch.create", subject, nil, err)
	}
	return b, nil
}

// FindBatch returns a batch of the actor's tenant.
func (s *FactoryService) FindBatch(ctx context.Context, id string) (*cradle.Batch, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "batch:"+id)
	if err != nil {
		return nil, err
	}
	return findBatch(ctx, s.db, s.db.dialect, a.TenantID, id, false)
}

// FindBatches lists the tenant's batches, newest first.
func (s *FactoryService) FindBatches(ctx context.Context, cursor string, limit int) ([]*cradle.Batch, string, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "batches")
	if err != nil {
		return nil, "", err
	}
	if limit, err = pageLimit(limit); err != nil {
		return nil, "", err
	}
	q, args := `SELECT `+batchCols+` FROM batches WHERE tenant_id = ?`, []any{a.TenantID}
	if cursor != "" {
		before, err := decodeBatchCursor(cursor)
		if err != nil {
			return nil, "", err
		}
		q, args = q+` AND pk < ?`, append(args, before)
	}
	rows, err := s.db.query(ctx, q+` ORDER BY pk DESC LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return nil, "", fmt.Errorf("sqlstore: find batches: %w", err)
	}
	defer rows.Close()
	var out []*cradle.Batch
	var pks []int64
	for rows.Next() {
		b, pk, err := scanBatch(rows)
		if err != nil {
			return nil, "", fmt.Errorf("sqlstore: find batches: %w", err)
		}
		out, pks = append(out, b), append(pks, pk)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("sqlstore: find batches: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = encodeBatchCursor(pks[limit-1])
	}
	return out, next, nil
}

// encodeBatchCursor and decodeBatchCursor keep the cursor of batch pages
// opaque: it is the row number of the page's last batch.
func encodeBatchCursor(pk int64) string { return encodeCursor('b', pk) }

func decodeBatchCursor(c string) (int64, error) { return decodeCursor('b', 1, c) }

// MAC ranges.

// AddMACRange adds a block of addresses to the tenant's pool.
func (s *FactoryService) AddMACRange(ctx context.Context, first, last string) (*cradle.MACRange, error) {
	subject := "mac-range:" + first + "-" + last
	a, err := s.db.authorize(ctx, cradle.PermBatchWrite, "factory.mac-range.add", subject)
	if err != nil {
		return nil, err
	}
	lo, err := cradle.ParseMAC(first)
	if err != nil {
		return nil, err
	}
	hi, err := cradle.ParseMAC(last)
	if err != nil {
		return nil, err
	}
	if lo > hi {
		return nil, cradle.Errorf(cradle.EINVALID, "MAC range %s-%s: the first address is after the last", cradle.FormatMAC(lo), cradle.FormatMAC(hi))
	}
	out := &cradle.MACRange{First: cradle.FormatMAC(lo), Last: cradle.FormatMAC(hi)}
	subject = "mac-range:" + out.First + "-" + out.Last
	err = s.db.write(ctx, func(tx *Tx) error {
		if tx.db.dialect == postgresDialect {
			// Two overlapping blocks added at once must not both pass the
			// check below. (SQLite has one writer at a time.)
			if _, err := tx.exec(ctx, `SELECT pg_advisory_xact_lock(7243003)`); err != nil {
				return fmt.Errorf("sqlstore: add MAC range: %w", err)
			}
		}
		var oFirst, oLast int64
		var oTenant int64
		err := tx.queryRow(ctx, `SELECT first_mac, last_mac, tenant_id FROM mac_ranges WHERE first_mac <= ? AND last_mac >= ? ORDER BY first_mac LIMIT 1`,
			int64(hi), int64(lo)).Scan(&oFirst, &oLast, &oTenant)
		switch {
		case err == nil && oTenant == a.TenantID:
			return cradle.Errorf(cradle.ECONFLICT, "MAC range %s-%s overlaps the range %s-%s already in this tenant's pool", out.First, out.Last, cradle.FormatMAC(uint64(oFirst)), cradle.FormatMAC(uint64(oLast)))
		case err == nil:
			return cradle.Errorf(cradle.ECONFLICT, "MAC range %s-%s overlaps addresses that belong to another tenant; every address may be handed out once on this server", out.First, out.Last)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("sqlstore: add MAC range: %w", err)
		}
		if _, err := tx.exec(ctx, `INSERT INTO mac_ranges (tenant_id, first_mac, last_mac, next_offset, created_at, created_by) VALUES (?, ?, ?, 0, ?, ?)`,
			a.TenantID, int64(lo), int64(hi), micros(tx.now), a.String()); err != nil {
			return fmt.Errorf("sqlstore: add MAC range: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "factory.mac-range.add", Subject: subject,
			Details: map[string]string{"first": out.First, "last": out.Last, "size": strconv.FormatUint(hi-lo+1, 10)}})
	})
	if err != nil {
		return nil, s.refuseErr(ctx, a, "factory.mac-range.add", subject, nil, err)
	}
	return out, nil
}

// MACRanges lists the tenant's blocks in address order.
func (s *FactoryService) MACRanges(ctx context.Context) ([]*cradle.MACRange, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "mac-ranges")
	if err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT first_mac, last_mac, next_offset FROM mac_ranges WHERE tenant_id = ? ORDER BY first_mac`, a.TenantID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: MAC ranges: %w", err)
	}
	defer rows.Close()
	out := []*cradle.MACRange{}
	for rows.Next() {
		var first, last, used int64
		if err := rows.Scan(&first, &last, &used); err != nil {
			return nil, fmt.Errorf("sqlstore: MAC ranges: %w", err)
		}
		out = append(out, &cradle.MACRange{First: cradle.FormatMAC(uint64(first)), Last: cradle.FormatMAC(uint64(last)), Used: used})
	}
	return out, rows.Err()
}

// Stations.

const stationCols = `tenant_id, name, profile, cert_serial, fingerprint, der, token_id, enrolled_at, enrolled_by`

func scanStation(sc interface{ Scan(...any) error }) (*cradle.Station, error) {
	st := &cradle.Station{}
	var profile string
	var at int64
	if err := sc.Scan(&st.TenantID, &st.Name, &profile, &st.CertSerial, &st.Fingerprint, &st.DER, &st.TokenID, &at, &st.EnrolledBy); err != nil {
		return nil, err
	}
	st.Profile, st.EnrolledAt = cradle.Profile(profile), fromMicros(at)
	return st, nil
}

func stationNotFound(name string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "station %q not found: enroll it with cradle factory station enroll", name)
}

func findStation(ctx context.Context, q querier, tenantID int64, name string) (*cradle.Station, error) {
	st, err := scanStation(q.queryRow(ctx, `SELECT `+stationCols+` FROM stations WHERE tenant_id = ? AND name = ?`, tenantID, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, stationNotFound(name)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find station: %w", err)
	}
	return st, nil
}

// EnrollStation records a station and the certificate Issue returns.
func (s *FactoryService) EnrollStation(ctx context.Context, e cradle.StationEnroll) (*cradle.Station, error) {
	subject := "station:" + e.Name
	a, err := s.db.authorize(ctx, cradle.PermStationEnroll, "factory.station.enroll", subject)
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateStationName(e.Name); err != nil {
		return nil, err
	}
	if _, err := cradle.ParseProfile(string(e.Profile)); err != nil {
		return nil, err
	}
	if e.Issue == nil {
		return nil, errors.New("sqlstore: enroll station: no Issue function")
	}
	var st *cradle.Station
	err = s.db.write(ctx, func(tx *Tx) error {
		var n int
		if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM stations WHERE tenant_id = ? AND name = ?`, a.TenantID, e.Name).Scan(&n); err != nil {
			return fmt.Errorf("sqlstore: enroll station: %w", err)
		}
		if n > 0 {
			return cradle.Errorf(cradle.ECONFLICT, "station %q is already enrolled; choose another name", e.Name)
		}
		cert, err := e.Issue(ctx)
		if err != nil {
			return err
		}
		if cert == nil || cert.SerialNumber == nil {
			return errors.New("sqlstore: enroll station: Issue returned no certificate")
		}
		sum := sha256.Sum256(cert.Raw)
		st = &cradle.Station{Name: e.Name, TenantID: a.TenantID, Profile: e.Profile, CertSerial: cradle.SerialHex(cert.SerialNumber),
			Fingerprint: hex.EncodeToString(sum[:]), EnrolledAt: tx.now, EnrolledBy: a.String(), TokenID: e.TokenID, DER: cert.Raw}
		_, err = tx.exec(ctx, `INSERT INTO stations (tenant_id, name, profile, cert_serial, fingerprint, der, token_id, enrolled_at, enrolled_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.TenantID, st.Name, string(st.Profile), st.CertSerial, st.Fingerprint, st.DER, st.TokenID, micros(tx.now), st.EnrolledBy)
		if s.db.dialect.uniqueViolation(err) {
			return cradle.Errorf(cradle.ECONFLICT, "station %q is already enrolled; choose another name", e.Name)
		} else if err != nil {
			return fmt.Errorf("sqlstore: enroll station: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "factory.station.enroll", Subject: subject,
			Details: map[string]string{"profile": string(st.Profile), "certificate": st.CertSerial, "fingerprint": st.Fingerprint, "token": st.TokenID}})
	})
	if err != nil {
		return nil, s.refuseErr(ctx, a, "factory.station.enroll", subject, nil, err)
	}
	return st, nil
}

// FindStation returns a station of the actor's tenant.
func (s *FactoryService) FindStation(ctx context.Context, name string) (*cradle.Station, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "station:"+name)
	if err != nil {
		return nil, err
	}
	return findStation(ctx, s.db, a.TenantID, name)
}

// FindStations lists the tenant's stations by name.
func (s *FactoryService) FindStations(ctx context.Context) ([]*cradle.Station, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "stations")
	if err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT `+stationCols+` FROM stations WHERE tenant_id = ? ORDER BY name`, a.TenantID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find stations: %w", err)
	}
	defer rows.Close()
	out := []*cradle.Station{}
	for rows.Next() {
		st, err := scanStation(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find stations: %w", err)
		}
		out = append(out, st)
	}
	return out, rows.Err()
}

// factoryUnit is a row of factory_units.
type factoryUnit struct {
	pk       int64
	serial   string
	deviceID int64
	mac      uint64
	batch    string
	station  string
	status   cradle.UnitStatus
}

const unitCols = `pk, serial, device_id, mac, batch_id, station, status`

func scanUnit(sc interface{ Scan(...any) error }) (*factoryUnit, error) {
	u := &factoryUnit{}
	var mac int64
	var status string
	if err := sc.Scan(&u.pk, &u.serial, &u.deviceID, &mac, &u.batch, &u.station, &status); err != nil {
		return nil, err
	}
	u.mac, u.status = uint64(mac), cradle.UnitStatus(status)
	return u, nil
}

// findUnit reads the factory row of a serial, or nil when it has none.
func findUnit(ctx context.Context, q querier, tenantID int64, serial string) (*factoryUnit, error) {
	u, err := scanUnit(q.queryRow(ctx, `SELECT `+unitCols+` FROM factory_units WHERE tenant_id = ? AND serial = ?`, tenantID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find unit: %w", err)
	}
	return u, nil
}
