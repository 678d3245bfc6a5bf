package sqlstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"cradle"
)

// storedTrace reads a trace row: the payload, decoded, is the record.
func scanTrace(sc interface{ Scan(...any) error }) (*cradle.StoredTrace, int64, error) {
	t := &cradle.StoredTrace{}
	var tenantID, received int64
	if err := sc.Scan(&tenantID, &t.Signed.Payload, &t.Signed.Signature, &received); err != nil {
		return nil, 0, err
	}
	if err := json.Unmarshal(t.Signed.Payload, &t.Record); err != nil {
		return nil, 0, fmt.Errorf("trace payload: %w", err)
	}
	t.ReceivedAt = fromMicros(received)
	return t, tenantID, nil
}

const traceCols = `tenant_id, payload, signature, received_at`

// knownTrace compares a record with one already stored under its id:
// the same payload is the stored record (created false), anything else
// is a conflict. It returns nil, nil when the id is new.
func knownTrace(ctx context.Context, q querier, tenantID int64, id string, payload []byte) (*cradle.StoredTrace, error) {
	t, owner, err := scanTrace(q.queryRow(ctx, `SELECT `+traceCols+` FROM factory_traces WHERE record_id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("sqlstore: find trace record: %w", err)
	case owner != tenantID || !bytes.Equal(t.Signed.Payload, payload):
		return nil, cradle.Errorf(cradle.ECONFLICT, "record id %s is already stored with other content; a station gives every record a new id", id)
	}
	return t, nil
}

// RecordTrace stores a verified trace record and acts on it in one
// transaction: the device, its IDevID, the unit's status, the batch's
// counters, the trace row, the outbox event and the audit entry, or none
// of them.
func (s *FactoryService) RecordTrace(ctx context.Context, r *cradle.TraceRecord, signed cradle.SignedTrace) (*cradle.StoredTrace, bool, error) {
	if r == nil {
		return nil, false, cradle.Errorf(cradle.EINVALID, "no trace record")
	}
	subject := "device:" + r.Serial
	a, err := s.db.authorize(ctx, cradle.PermFactoryProvision, "factory.trace", subject)
	if err != nil {
		return nil, false, err
	}
	if err := r.Validate(); err != nil {
		return nil, false, err
	}
	signedRec, err := signed.Record()
	if err != nil {
		return nil, false, err
	}
	want, err := json.Marshal(r)
	if err != nil {
		return nil, false, fmt.Errorf("sqlstore: record trace: %w", err)
	}
	got, err := json.Marshal(signedRec)
	if err != nil {
		return nil, false, fmt.Errorf("sqlstore: record trace: %w", err)
	}
	if !bytes.Equal(want, got) {
		return nil, false, cradle.Errorf(cradle.EINVALID, "record %s differs from its signed payload; send the record the station signed", r.ID)
	}
	// A replayed upload (a station's journal syncing again) is answered
	// without a write.
	if t, err := knownTrace(ctx, s.db, a.TenantID, r.ID, signed.Payload); err != nil {
		return nil, false, s.refuseErr(ctx, a, "factory.trace", subject, map[string]string{"record": r.ID}, err)
	} else if t != nil {
		return t, false, nil
	}
	var out *cradle.StoredTrace
	created := false
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, r.Serial)
		if err != nil {
			return err
		}
		// Under the device's lock, a concurrent upload of the same record
		// has either committed (and is found here) or not started.
		if out, err = knownTrace(ctx, tx, a.TenantID, r.ID, signed.Payload); err != nil || out != nil {
			return err
		}
		if err := tx.checkTrace(ctx, a, d, r); err != nil {
			return err
		}
		if err := tx.applyTrace(ctx, a, d, r); err != nil {
			return err
		}
		_, err = tx.exec(ctx, `INSERT INTO factory_traces (record_id, tenant_id, serial, batch_id, station, status, payload, signature, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r.ID, a.TenantID, r.Serial, r.Batch, r.Station, string(r.Status), signed.Payload, signed.Signature, micros(tx.now))
		if tx.db.dialect.uniqueViolation(err) {
			return cradle.Errorf(cradle.ECONFLICT, "record id %s is already stored with other content; a station gives every record a new id", r.ID)
		} else if err != nil {
			return fmt.Errorf("sqlstore: record trace: %w", err)
		}
		typ := cradle.EventUnitProvisioned
		if r.Status == cradle.UnitFailed {
			typ = cradle.EventUnitFailed
		}
		if _, err := tx.exec(ctx, `INSERT INTO factory_events (tenant_id, event_id, type, source, subject, time, data, attempts, next_attempt_at, dead, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 0, '')`,
			a.TenantID, r.ID, typ, "/factory/stations/"+r.Station, r.Serial, micros(tx.now), signed.Payload, micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: record trace: outbox: %w", err)
		}
		details := map[string]string{"record": r.ID, "batch": r.Batch, "station": r.Station, "operator": r.Operator, "status": string(r.Status)}
		if r.RMA {
			details["rma"] = "true"
		}
		if r.Status == cradle.UnitProvisioned {
			details["idevid"] = r.IDevIDSerial
		} else {
			details["failed_step"] = r.FailedStep
		}
		out, created = &cradle.StoredTrace{Record: *signedRec, Signed: signed, ReceivedAt: tx.now}, true
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "factory.trace", Subject: subject, Details: details})
	})
	if err != nil {
		return nil, false, s.refuseErr(ctx, a, "factory.trace", subject, map[string]string{"record": r.ID, "status": string(r.Status)}, err)
	}
	return out, created, nil
}

// checkTrace refuses a record that does not match the unit's allocation,
// its batch, or where the unit stands.
func (tx *Tx) checkTrace(ctx context.Context, a cradle.Actor, d *cradle.Device, r *cradle.TraceRecord) error {
	u, err := findUnit(ctx, tx, a.TenantID, d.Serial)
	if err != nil {
		return err
	}
	if u == nil {
		return cradle.Errorf(cradle.ECONFLICT, "unit %s is not allocated to batch %s and station %s: it was never handed to a factory station", d.Serial, r.Batch, r.Station)
	}
	if u.batch != r.Batch || u.station != r.Station {
		return cradle.Errorf(cradle.ECONFLICT, "unit %s is not allocated to batch %s and station %s: it is held by station %s for batch %s", d.Serial, r.Batch, r.Station, u.station, u.batch)
	}
	b, err := findBatch(ctx, tx, tx.db.dialect, a.TenantID, r.Batch, false)
	if err != nil {
		return err
	}
	mac, err := cradle.ParseMAC(r.MAC) // checked by r.Validate
	if err != nil {
		return err
	}
	var bad []string
	if mac != u.mac {
		bad = append(bad, fmt.Sprintf("mac %s (allocated %s)", cradle.FormatMAC(mac), cradle.FormatMAC(u.mac)))
	}
	if r.Model != b.Model {
		bad = append(bad, fmt.Sprintf("model %s (batch: %s)", r.Model, b.Model))
	}
	if r.HardwareRevision != b.HardwareRevision {
		bad = append(bad, fmt.Sprintf("hardware revision %s (batch: %s)", r.HardwareRevision, b.HardwareRevision))
	}
	if r.Profile != b.Profile {
		bad = append(bad, fmt.Sprintf("profile %s (batch: %s)", r.Profile, b.Profile))
	}
	if len(bad) > 0 {
		return cradle.Errorf(cradle.ECONFLICT, "record %s does not match unit %s of batch %s: %s", r.ID, d.Serial, b.ID, strings.Join(bad, "; "))
	}
	if r.RMA {
		if d.State != cradle.StateRMA {
			return cradle.Errorf(cradle.ECONFLICT, "record %s re-provisions unit %s, which is in state %s, not rma", r.ID, d.Serial, d.State)
		}
		return nil
	}
	switch u.status {
	case cradle.UnitProvisioned:
		return cradle.Errorf(cradle.ECONFLICT, "unit %s is already provisioned; re-provisioning needs rma", d.Serial)
	case cradle.UnitFailed:
		return cradle.Errorf(cradle.ECONFLICT, "unit %s already failed; its serial and MAC are never reused: allocate a new unit", d.Serial)
	}
	return nil
}

// applyTrace acts on a checked record: a provisioned unit's device moves
// to provisioned with its hardware UID and IDevID; a failed unit is
// marked failed. Only first provisioning attempts count in the batch.
func (tx *Tx) applyTrace(ctx context.Context, a cradle.Actor, d *cradle.Device, r *cradle.TraceRecord) error {
	now := micros(tx.now)
	counter := ""
	switch r.Status {
	case cradle.UnitProvisioned:
		cert, err := x509.ParseCertificate(r.IDevID)
		if err != nil {
			return cradle.Errorf(cradle.EINVALID, "record %s: idevid is not a DER certificate: %v", r.ID, err)
		}
		n, err := cradle.ParseSerialHex(r.IDevIDSerial)
		if err != nil {
			return err
		}
		if n.Cmp(cert.SerialNumber) != 0 {
			return cradle.Errorf(cradle.EINVALID, "record %s: idevid_serial %s is not the serial of its idevid (%s)", r.ID, r.IDevIDSerial, cradle.SerialHex(cert.SerialNumber))
		}
		if fp := strings.ToLower(strings.ReplaceAll(r.IDevIDFingerprint, ":", "")); fp != "" {
			sum := sha256.Sum256(cert.Raw)
			if fp != hex.EncodeToString(sum[:]) {
				return cradle.Errorf(cradle.EINVALID, "record %s: idevid_fingerprint is not the SHA-256 of its idevid", r.ID)
			}
		}
		if err := cradle.CheckTransition(d.Serial, d.State, cradle.StateProvisioned, a.Role); err != nil {
			return err
		}
		if d.HardwareUID == "" && r.HardwareUID != "" {
			if !validUID(r.HardwareUID) {
				return cradle.Errorf(cradle.EINVALID, "record %s: hardware_uid must be at most %d printable characters without surrounding spaces", r.ID, cradle.MaxUIDLen)
			}
			if _, err := tx.exec(ctx, `UPDATE devices SET hardware_uid = ?, updated_at = ? WHERE id = ?`, r.HardwareUID, now, d.ID); err != nil {
				return fmt.Errorf("sqlstore: record trace: %w", err)
			}
			d.HardwareUID = r.HardwareUID
		}
		reason := "factory record " + r.ID + " from station " + r.Station
		if r.RMA {
			reason = "re-provisioned after rma: " + reason
		}
		if err := tx.transition(ctx, a, d, cradle.DeviceTransition{To: cradle.StateProvisioned, Reason: reason}); err != nil {
			return err
		}
		if err := tx.insertCert(ctx, certRecord(a.TenantID, d.Serial, cradle.CertIDevID, cert, tx.now), d.ID, a.String()); err != nil {
			return err
		}
		if err := tx.recordClaimHash(ctx, a.TenantID, d.ID, r.ClaimCodeHash); err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `UPDATE factory_units SET status = ?, updated_at = ? WHERE tenant_id = ? AND serial = ?`,
			string(cradle.UnitProvisioned), now, a.TenantID, d.Serial); err != nil {
			return fmt.Errorf("sqlstore: record trace: %w", err)
		}
		counter = "provisioned"
	case cradle.UnitFailed:
		if r.RMA {
			// The unit was provisioned once; it stays in rma for
			// another attempt, and the failure is in its records.
			return nil
		}
		if _, err := tx.exec(ctx, `UPDATE factory_units SET status = ?, updated_at = ? WHERE tenant_id = ? AND serial = ?`,
			string(cradle.UnitFailed), now, a.TenantID, d.Serial); err != nil {
			return fmt.Errorf("sqlstore: record trace: %w", err)
		}
		counter = "failed"
	}
	if r.RMA || counter == "" {
		return nil
	}
	if _, err := tx.exec(ctx, `UPDATE batches SET `+counter+` = `+counter+` + 1 WHERE tenant_id = ? AND id = ?`, a.TenantID, r.Batch); err != nil {
		return fmt.Errorf("sqlstore: record trace: %w", err)
	}
	return nil
}

func validUID(s string) bool {
	if len(s) > cradle.MaxUIDLen || strings.TrimSpace(s) != s || !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}

// listTraces reads trace records in the order received.
func listTraces(ctx context.Context, q querier, where string, args ...any) ([]*cradle.StoredTrace, error) {
	rows, err := q.query(ctx, `SELECT `+traceCols+` FROM factory_traces WHERE `+where+` ORDER BY pk`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: trace records: %w", err)
	}
	defer rows.Close()
	out := []*cradle.StoredTrace{}
	for rows.Next() {
		t, _, err := scanTrace(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: trace records: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// UnitTrace returns the chain of a unit from its batch to today.
func (s *FactoryService) UnitTrace(ctx context.Context, serial string) (*cradle.UnitTrace, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	d, err := scanDevice(s.db.queryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND serial = ?`, a.TenantID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: unit trace: %w", err)
	}
	ut := &cradle.UnitTrace{Device: d, Stations: []*cradle.Station{}, Certificates: []*cradle.Certificate{}}
	u, err := findUnit(ctx, s.db, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	batch := d.Labels["batch"]
	if u != nil {
		batch = u.batch
	}
	if batch != "" {
		ut.Batch, err = findBatch(ctx, s.db, s.db.dialect, a.TenantID, batch, false)
		if err != nil && cradle.ErrorCode(err) != cradle.ENOTFOUND {
			return nil, err
		}
	}
	if ut.Records, err = listTraces(ctx, s.db, `tenant_id = ? AND serial = ?`, a.TenantID, serial); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, t := range ut.Records {
		if name := t.Record.Station; !seen[name] {
			seen[name] = true
			st, err := findStation(ctx, s.db, a.TenantID, name)
			if err != nil {
				return nil, err
			}
			ut.Stations = append(ut.Stations, st)
		}
	}
	rows, err := s.db.query(ctx, `SELECT `+certCols+` FROM certificates WHERE device_id = ? ORDER BY created_at, serial`, d.ID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: unit trace: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: unit trace: %w", err)
		}
		ut.Certificates = append(ut.Certificates, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: unit trace: %w", err)
	}
	// Every role that reads the factory reads devices too.
	if ut.History, err = NewDeviceService(s.db).FindDeviceHistory(ctx, serial); err != nil {
		return nil, err
	}
	return ut, nil
}

// BatchTraces returns the records of a batch in the order received.
func (s *FactoryService) BatchTraces(ctx context.Context, batch string) ([]*cradle.StoredTrace, error) {
	a, err := s.db.authorize(ctx, cradle.PermFactoryRead, "factory.read", "batch:"+batch)
	if err != nil {
		return nil, err
	}
	if _, err := findBatch(ctx, s.db, s.db.dialect, a.TenantID, batch, false); err != nil {
		return nil, err
	}
	return listTraces(ctx, s.db, `tenant_id = ? AND batch_id = ?`, a.TenantID, batch)
}
