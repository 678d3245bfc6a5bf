package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"cradle"
)

// DeviceService implements cradle.DeviceService.
type DeviceService struct {
	db *DB
	// OnTransition, when set, is called after TransitionDevice committed
	// a move of d from state from (the wiring closes a suspended
	// device's live sessions with it). It runs in the caller's request,
	// so it must return promptly.
	OnTransition func(d *cradle.Device, from cradle.State)
}

var _ cradle.DeviceService = (*DeviceService)(nil)

// NewDeviceService returns the device registry of db.
func NewDeviceService(db *DB) *DeviceService { return &DeviceService{db: db} }

const deviceCols = `id, tenant_id, serial, hardware_uid, macs, model, hardware_revision, labels, state, protocol, created_at, updated_at, state_changed_at`

func scanDevice(sc interface{ Scan(...any) error }) (*cradle.Device, error) {
	d := &cradle.Device{}
	var macs, labels []byte
	var state, protocol string
	var created, updated, changed int64
	if err := sc.Scan(&d.ID, &d.TenantID, &d.Serial, &d.HardwareUID, &macs, &d.Model, &d.HardwareRevision, &labels, &state, &protocol, &created, &updated, &changed); err != nil {
		return nil, err
	}
	var err error
	if d.MACs, err = decodeStringList(macs); err != nil {
		return nil, fmt.Errorf("device %s: macs column: %w", d.Serial, err)
	}
	if d.Labels, err = decodeStringMap(labels); err != nil {
		return nil, fmt.Errorf("device %s: labels column: %w", d.Serial, err)
	}
	if d.MACs == nil {
		d.MACs = []string{}
	}
	if d.Labels == nil {
		d.Labels = map[string]string{}
	}
	d.State, d.Protocol = cradle.State(state), cradle.Protocol(protocol)
	d.CreatedAt, d.UpdatedAt, d.StateChangedAt = fromMicros(created), fromMicros(updated), fromMicros(changed)
	return d, nil
}

func notFound(serial string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "device %q not found", serial)
}

// FindDeviceBySerial returns a device of the actor's tenant.
func (s *DeviceService) FindDeviceBySerial(ctx context.Context, serial string) (*cradle.Device, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "device.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	d, err := scanDevice(s.db.queryRowPrepared(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND serial = ?`, a.TenantID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find device: %w", err)
	}
	return d, nil
}

// setLabels stores d.Labels (checked by the caller) and recomputes the
// device's twin: labels choose config groups, so the effective desired
// document may change.
func (tx *Tx) setLabels(ctx context.Context, tenantID int64, d *cradle.Device) error {
	labels, err := json.Marshal(d.Labels)
	if err != nil {
		return fmt.Errorf("sqlstore: device %s: labels: %w", d.Serial, err)
	}
	d.UpdatedAt = tx.now
	if _, err := tx.exec(ctx, `UPDATE devices SET labels = ?, updated_at = ? WHERE id = ?`, string(labels), micros(tx.now), d.ID); err != nil {
		return fmt.Errorf("sqlstore: device %s: labels: %w", d.Serial, err)
	}
	return tx.recomputeDevice(ctx, tenantID, d.Serial)
}

// deviceID returns the id of a device of the tenant, or ENOTFOUND.
func (db *DB) deviceID(ctx context.Context, tenantID int64, serial string) (int64, error) {
	if cradle.ValidateSerial(serial) != nil {
		return 0, notFound(serial)
	}
	var id int64
	err := db.queryRowPrepared(ctx, `SELECT id FROM devices WHERE tenant_id = ? AND serial = ?`, tenantID, serial).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, notFound(serial)
	} else if err != nil {
		return 0, fmt.Errorf("sqlstore: find device: %w", err)
	}
	return id, nil
}

// encodeCursor and decodeCursor keep a page cursor opaque to clients: it is
// a row number of the page's last row (a device id, a batch's pk) after a
// kind letter, so that one list's cursor is refused by another. decodeCursor
// refuses a number below lowest.
func encodeCursor(kind byte, id int64) string {
	return base64.RawURLEncoding.EncodeToString(strconv.AppendInt([]byte{kind}, id, 10))
}

func decodeCursor(kind byte, lowest int64, c string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil && len(b) > 1 && b[0] == kind {
		if id, err := strconv.ParseInt(string(b[1:]), 10, 64); err == nil && id >= lowest {
			return id, nil
		}
	}
	return 0, cradle.Errorf(cradle.EINVALID, "invalid cursor %q: pass the next_cursor of a previous page unchanged", c)
}

func pageLimit(n int) (int, error) {
	switch {
	case n == 0:
		return cradle.DefaultPageSize, nil
	case n < 0 || n > cradle.MaxPageSize:
		return 0, cradle.Errorf(cradle.EINVALID, "invalid limit %d: use 1 to %d", n, cradle.MaxPageSize)
	}
	return n, nil
}

// FindDevices lists the tenant's devices in creation order.
func (s *DeviceService) FindDevices(ctx context.Context, f cradle.DeviceFilter) ([]*cradle.Device, string, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "device.list", "devices")
	if err != nil {
		return nil, "", err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, "", err
	}
	var after int64
	if f.Cursor != "" {
		if after, err = decodeCursor('d', 0, f.Cursor); err != nil {
			return nil, "", err
		}
	}
	where := []string{"tenant_id = ?", "id > ?"}
	args := []any{a.TenantID, after}
	if f.State != nil {
		if _, err := cradle.ParseState(string(*f.State)); err != nil {
			return nil, "", err
		}
		where, args = append(where, "state = ?"), append(args, string(*f.State))
	}
	if f.Model != nil {
		where, args = append(where, "model = ?"), append(args, *f.Model)
	}
	if f.Protocol != nil {
		if !slices.Contains(cradle.Protocols, *f.Protocol) {
			return nil, "", cradle.Errorf(cradle.EINVALID, "unknown protocol %q: use cradle, mender or hawkbit", clip(string(*f.Protocol), 40))
		}
		where, args = append(where, "protocol = ?"), append(args, string(*f.Protocol))
	}
	if f.SerialPrefix != nil && *f.SerialPrefix != "" {
		p := *f.SerialPrefix
		if err := cradle.ValidateSerial(p); err != nil {
			return nil, "", cradle.Errorf(cradle.EINVALID, "invalid serial prefix %q: use the characters of a serial", p)
		}
		// Serial characters all sort below '~', so [p, p+"~") is exactly
		// the serials that start with p; the (tenant_id, serial) index
		// serves it.
		where, args = append(where, "serial >= ?", "serial < ?"), append(args, p, p+"~")
	}
	if f.Selector != nil {
		for _, r := range f.Selector.Requirements {
			if err := cradle.ValidateLabelKey(r.Key); err != nil {
				return nil, "", err
			}
			expr, karg := s.db.dialect.labelValue(r.Key)
			switch r.Op {
			case cradle.OpEquals:
				cond, cargs := s.db.dialect.labelEquals(r.Key, r.Values[0])
				where, args = append(where, cond), append(args, cargs...)
			case cradle.OpNotEquals:
				where, args = append(where, "("+expr+" IS NULL OR "+expr+" <> ?)"), append(args, karg, karg, r.Values[0])
			case cradle.OpIn, cradle.OpNotIn:
				ph := strings.TrimSuffix(strings.Repeat("?, ", len(r.Values)), ", ")
				vals := make([]any, len(r.Values))
				for i, v := range r.Values {
					vals[i] = v
				}
				if r.Op == cradle.OpIn {
					where, args = append(where, expr+" IN ("+ph+")"), append(append(args, karg), vals...)
				} else {
					where, args = append(where, "("+expr+" IS NULL OR "+expr+" NOT IN ("+ph+"))"), append(append(args, karg, karg), vals...)
				}
			case cradle.OpExists:
				where, args = append(where, expr+" IS NOT NULL"), append(args, karg)
			case cradle.OpNotExists:
				where, args = append(where, expr+" IS NULL"), append(args, karg)
			default:
				return nil, "", cradle.Errorf(cradle.EINVALID, "unknown selector operator %q", r.Op)
			}
		}
	}
	q := `SELECT ` + deviceCols + ` FROM devices WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id LIMIT ?`
	rows, err := s.db.query(ctx, q, append(args, limit+1)...)
	if err != nil {
		return nil, "", fmt.Errorf("sqlstore: find devices: %w", err)
	}
	defer rows.Close()
	out := make([]*cradle.Device, 0, min(limit, 64))
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, "", fmt.Errorf("sqlstore: find devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("sqlstore: find devices: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = encodeCursor('d', out[len(out)-1].ID)
	}
	return out, next, nil
}

// deviceRow holds the encoded columns of a new device.
type deviceRow struct {
	macs, labels string
}

func encodeDevice(c *cradle.DeviceCreate) (deviceRow, error) {
	m, err := json.Marshal(c.MACs)
	if err != nil {
		return deviceRow{}, err
	}
	l, err := json.Marshal(c.Labels)
	if err != nil {
		return deviceRow{}, err
	}
	return deviceRow{macs: string(m), labels: string(l)}, nil
}

// CreateDevice registers a device.
func (s *DeviceService) CreateDevice(ctx context.Context, c cradle.DeviceCreate) (*cradle.Device, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceCreate, "device.create", "device:"+c.Serial)
	if err != nil {
		return nil, err
	}
	if err := c.Normalize(); err != nil {
		return nil, err
	}
	enc, err := encodeDevice(&c)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: create device: %w", err)
	}
	var d *cradle.Device
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err = tx.createDevice(ctx, a, &c, enc, cradle.ProtocolCradle)
		return err
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// createDevice inserts a normalized device that talks protocol p, hands it
// the config groups its labels select and audits its creation.
func (tx *Tx) createDevice(ctx context.Context, a cradle.Actor, c *cradle.DeviceCreate, enc deviceRow, p cradle.Protocol) (*cradle.Device, error) {
	now := micros(tx.now)
	var id int64
	err := tx.queryRow(ctx, `INSERT INTO devices (tenant_id, serial, hardware_uid, macs, model, hardware_revision, labels, state, initial_state, protocol, created_by, created_at, updated_at, state_changed_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		a.TenantID, c.Serial, c.HardwareUID, enc.macs, c.Model, c.HardwareRevision, enc.labels, string(c.State), string(c.State), string(p), a.String(), now, now, now).Scan(&id)
	if tx.db.dialect.uniqueViolation(err) {
		return nil, cradle.Errorf(cradle.ECONFLICT, "device %q already exists in this tenant", c.Serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: create device: %w", err)
	}
	d := &cradle.Device{ID: id, TenantID: a.TenantID, Serial: c.Serial, HardwareUID: c.HardwareUID, MACs: c.MACs, Model: c.Model,
		HardwareRevision: c.HardwareRevision, Labels: c.Labels, State: c.State, Protocol: p, CreatedAt: tx.now, UpdatedAt: tx.now, StateChangedAt: tx.now}
	// Config groups whose selector matches its labels reach it now.
	if err := tx.twinsForNewDevices(ctx, a.TenantID, c.Serial); err != nil {
		return nil, err
	}
	if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.create", Subject: "device:" + c.Serial, Details: c}); err != nil {
		return nil, err
	}
	return d, nil
}

// lockDevice reads a device for change inside tx.
func (tx *Tx) lockDevice(ctx context.Context, tenantID int64, serial string) (*cradle.Device, error) {
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	d, err := scanDevice(tx.queryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND serial = ?`+tx.db.dialect.forUpdate, tenantID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find device: %w", err)
	}
	return d, nil
}

// UpdateDevice changes a device's labels.
func (s *DeviceService) UpdateDevice(ctx context.Context, serial string, u cradle.DeviceUpdate) (*cradle.Device, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceUpdate, "device.update", "device:"+serial)
	if err != nil {
		return nil, err
	}
	if err := u.Validate(); err != nil {
		return nil, err
	}
	var d *cradle.Device
	err = s.db.write(ctx, func(tx *Tx) error {
		var err error
		if d, err = tx.lockDevice(ctx, a.TenantID, serial); err != nil {
			return err
		}
		for k, v := range u.SetLabels {
			d.Labels[k] = v
		}
		for _, k := range u.RemoveLabels {
			delete(d.Labels, k)
		}
		if err := cradle.ValidateLabels(d.Labels); err != nil {
			return err
		}
		if err := tx.setLabels(ctx, a.TenantID, d); err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.update", Subject: "device:" + serial, Details: u})
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// TransitionDevice moves a device through the lifecycle.
func (s *DeviceService) TransitionDevice(ctx context.Context, serial string, t cradle.DeviceTransition) (*cradle.Device, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "device.transition", "device:"+serial)
	if err != nil {
		return nil, err
	}
	if _, err := cradle.ParseState(string(t.To)); err != nil {
		return nil, err
	}
	if len(t.Reason) > cradle.MaxReasonLen {
		return nil, cradle.Errorf(cradle.EINVALID, "reason is %d bytes long, at most %d", len(t.Reason), cradle.MaxReasonLen)
	}
	var d *cradle.Device
	var refused error
	var from cradle.State
	err = s.db.write(ctx, func(tx *Tx) error {
		var err error
		if d, err = tx.lockDevice(ctx, a.TenantID, serial); err != nil {
			return err
		}
		from = d.State
		if refused = cradle.CheckTransition(serial, d.State, t.To, a.Role); refused != nil {
			return refused
		}
		if t.To == cradle.StateEOL {
			// eol only through decommissioning, which revokes every
			// credential and sends the signed wipe; a plain move would
			// leave them valid and make decommissioning impossible.
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q (%s) cannot be moved to eol by a plain transition: decommission it with cradle device decommission %s --reason R, which revokes its credentials and sends it the signed wipe", serial, d.State, serial)
			return refused
		}
		return tx.transition(ctx, a, d, t)
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.transition.refused", Subject: "device:" + serial,
			Details: map[string]string{"from": string(from), "to": string(t.To), "role": string(a.Role), "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	if s.OnTransition != nil {
		s.OnTransition(d, from)
	}
	return d, nil
}

// transition moves a locked device whose move was checked, records it in
// the device's history and audits it.
func (tx *Tx) transition(ctx context.Context, a cradle.Actor, d *cradle.Device, t cradle.DeviceTransition) error {
	from := d.State
	var seq int64
	if err := tx.queryRow(ctx, `SELECT COALESCE(MAX(seq), 1) + 1 FROM device_transitions WHERE device_id = ?`, d.ID).Scan(&seq); err != nil {
		return fmt.Errorf("sqlstore: transition: %w", err)
	}
	if _, err := tx.exec(ctx, `INSERT INTO device_transitions (device_id, seq, from_state, to_state, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		d.ID, seq, string(from), string(t.To), a.String(), t.Reason, micros(tx.now)); err != nil {
		return fmt.Errorf("sqlstore: transition: %w", err)
	}
	if _, err := tx.exec(ctx, `UPDATE devices SET state = ?, state_changed_at = ?, updated_at = ? WHERE id = ?`, string(t.To), micros(tx.now), micros(tx.now), d.ID); err != nil {
		return fmt.Errorf("sqlstore: transition: %w", err)
	}
	d.State, d.StateChangedAt, d.UpdatedAt = t.To, tx.now, tx.now
	if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.transition", Subject: "device:" + d.Serial,
		Details: map[string]string{"from": string(from), "to": string(t.To), "reason": t.Reason}}); err != nil {
		return err
	}
	if t.To == cradle.StateRMA {
		// Returned for repair: its operational credentials go with the
		// move (revoke.go).
		return tx.revokeForRMA(ctx, a, d)
	}
	return nil
}

// FindDeviceHistory returns a device's lifecycle transitions, the creation
// first.
func (s *DeviceService) FindDeviceHistory(ctx context.Context, serial string) ([]*cradle.StateChange, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "device.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	var id, created int64
	var initial, createdBy string
	err = s.db.queryRow(ctx, `SELECT id, initial_state, created_by, created_at FROM devices WHERE tenant_id = ? AND serial = ?`, a.TenantID, serial).Scan(&id, &initial, &createdBy, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: device history: %w", err)
	}
	out := []*cradle.StateChange{{Seq: 1, To: cradle.State(initial), Actor: createdBy, Reason: "created", At: fromMicros(created)}}
	rows, err := s.db.query(ctx, `SELECT seq, from_state, to_state, actor, reason, at FROM device_transitions WHERE device_id = ? ORDER BY seq`, id)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: device history: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		c := &cradle.StateChange{}
		var from, to string
		var at int64
		if err := rows.Scan(&c.Seq, &from, &to, &c.Actor, &c.Reason, &at); err != nil {
			return nil, fmt.Errorf("sqlstore: device history: %w", err)
		}
		c.From, c.To, c.At = cradle.State(from), cradle.State(to), fromMicros(at)
		out = append(out, c)
	}
	return out, rows.Err()
}
