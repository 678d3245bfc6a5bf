package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"cradle"
	"cradle/internal/twinschema"
)

// TwinService implements cradle.TwinService. Every operator change
// recomputes the effective desired document of the devices it can reach
// (cradle.ConfigComposer) in the same transaction as the change and its
// audit entry; a device whose effective document changed gets the next
// version, and the DB's twin notifier (SetTwinNotifier) is told after the
// commit. Reports are not audited (a device sends one per desired
// version); refused ones are.
type TwinService struct {
	db *DB
}

var _ cradle.TwinService = (*TwinService)(nil)

// NewTwinService returns the twin store of db.
func NewTwinService(db *DB) *TwinService { return &TwinService{db: db} }

// SetTwinNotifier sets the function told, after each commit, of the
// devices whose effective desired document changed in it (for the device
// channel to push it). It runs on the committing goroutine and must not
// block. Set it before serving.
func (db *DB) SetTwinNotifier(fn func([]cradle.TwinChange)) { db.onTwin = fn }

// twinRow is a device with its twin, as recomputation needs it.
type twinRow struct {
	deviceID       int64
	serial, model  string
	labels         map[string]string
	exists         bool
	deviceConfig   []byte // nil: none
	deviceConfigAt sql.NullInt64
	version        int64
	effective      []byte // nil while version is 0
	effectiveAt    sql.NullInt64
	reported       []byte
	reportedAt     sql.NullInt64
	drift          cradle.DriftState
}

const twinRowCols = `d.id, d.serial, d.model, d.labels, t.device_id, t.device_config, t.device_config_at, t.version, t.effective, t.effective_at, t.reported, t.reported_at, t.drift`

func scanTwinRow(sc interface{ Scan(...any) error }) (*twinRow, error) {
	var r twinRow
	var labels []byte
	var id, version sql.NullInt64
	var devCfg, eff, rep, drift sql.NullString
	if err := sc.Scan(&r.deviceID, &r.serial, &r.model, &labels, &id, &devCfg, &r.deviceConfigAt, &version, &eff, &r.effectiveAt, &rep, &r.reportedAt, &drift); err != nil {
		return nil, err
	}
	var err error
	if r.labels, err = decodeStringMap(labels); err != nil {
		return nil, fmt.Errorf("device %s: labels column: %w", r.serial, err)
	}
	r.exists = id.Valid
	r.version = version.Int64
	r.drift = cradle.DriftNone
	if devCfg.Valid {
		r.deviceConfig = []byte(devCfg.String)
	}
	if eff.Valid {
		r.effective = []byte(eff.String)
	}
	if rep.Valid {
		r.reported = []byte(rep.String)
	}
	if drift.Valid {
		r.drift = cradle.DriftState(drift.String)
	}
	return &r, nil
}

func (r *twinRow) desired() *cradle.TwinDesired {
	if r.version == 0 {
		return nil
	}
	return &cradle.TwinDesired{Version: r.version, Config: json.RawMessage(r.effective)}
}

func (r *twinRow) report() (*cradle.TwinReported, error) {
	if r.reported == nil {
		return nil, nil
	}
	var rep cradle.TwinReported
	if err := json.Unmarshal(r.reported, &rep); err != nil {
		return nil, fmt.Errorf("sqlstore: twin of %s: reported column: %w", r.serial, err)
	}
	return &rep, nil
}

// lockTwinRows loads (and on PostgreSQL locks) the devices of the tenant,
// or the one named serial, with their twins, in id order.
func (tx *Tx) lockTwinRows(ctx context.Context, tenantID int64, serial string) ([]*twinRow, error) {
	return tx.lockTwinRowsWhere(ctx, tenantID, serial, false)
}

// lockDeviceTwin is lockTwinRows for one device, ENOTFOUND when the
// tenant has no such device; rows[0] is its twin.
func (tx *Tx) lockDeviceTwin(ctx context.Context, tenantID int64, serial string) ([]*twinRow, error) {
	rows, err := tx.lockTwinRows(ctx, tenantID, serial)
	if err == nil && len(rows) == 0 {
		err = notFound(serial)
	}
	return rows, err
}

// lockTwinRowsWhere is lockTwinRows, limited to devices without a twin
// row when onlyNew.
func (tx *Tx) lockTwinRowsWhere(ctx context.Context, tenantID int64, serial string, onlyNew bool) ([]*twinRow, error) {
	q := `SELECT ` + twinRowCols + ` FROM devices d LEFT JOIN twins t ON t.device_id = d.id WHERE d.tenant_id = ?`
	args := []any{tenantID}
	if serial != "" {
		q += ` AND d.serial = ?`
		args = append(args, serial)
	}
	if onlyNew {
		q += ` AND t.device_id IS NULL`
	}
	q += ` ORDER BY d.id`
	if tx.db.dialect.forUpdate != "" {
		q += ` FOR UPDATE OF d`
	}
	rows, err := tx.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: twins: %w", err)
	}
	defer rows.Close()
	var out []*twinRow
	for rows.Next() {
		r, err := scanTwinRow(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: twins: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: twins: %w", err)
	}
	return out, nil
}

// lockTenant serializes the tenant's twin changes (on PostgreSQL; SQLite
// has one writer) by locking its audit head, which every audited change
// takes anyway.
func (tx *Tx) lockTenant(ctx context.Context, tenantID int64) error {
	if tx.db.dialect.forUpdate == "" {
		return nil
	}
	var seq int64
	if err := tx.queryRow(ctx, `SELECT seq FROM audit_heads WHERE tenant_id = ?`+tx.db.dialect.forUpdate, tenantID).Scan(&seq); err != nil {
		return fmt.Errorf("sqlstore: lock tenant: %w", err)
	}
	return nil
}

func (tx *Tx) configGroups(ctx context.Context, tenantID int64) ([]*cradle.ConfigGroup, error) {
	return findGroups(ctx, tx.query, tenantID, "")
}

type queryFunc func(ctx context.Context, q string, args ...any) (*sql.Rows, error)

func findGroups(ctx context.Context, query queryFunc, tenantID int64, name string) ([]*cradle.ConfigGroup, error) {
	q := `SELECT name, selector, priority, config, created_at, updated_at, updated_by FROM config_groups WHERE tenant_id = ?`
	args := []any{tenantID}
	if name != "" {
		q += ` AND name = ?`
		args = append(args, name)
	}
	rows, err := query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: config groups: %w", err)
	}
	defer rows.Close()
	var out []*cradle.ConfigGroup
	for rows.Next() {
		var g cradle.ConfigGroup
		var cfg string
		var created, updated int64
		if err := rows.Scan(&g.Name, &g.Selector, &g.Priority, &cfg, &created, &updated, &g.UpdatedBy); err != nil {
			return nil, fmt.Errorf("sqlstore: config groups: %w", err)
		}
		g.Config = json.RawMessage(cfg)
		g.CreatedAt, g.UpdatedAt = fromMicros(created), fromMicros(updated)
		out = append(out, &g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: config groups: %w", err)
	}
	cradle.SortConfigGroups(out)
	return out, nil
}

// schemas compiles the tenant's model schemas on demand, once per
// transaction.
type schemas struct {
	tx       *Tx
	tenantID int64
	byModel  map[string]*twinschema.Schema
	override map[string]*twinschema.Schema // a schema being registered
}

func (s *schemas) get(ctx context.Context, model string) (*twinschema.Schema, error) {
	if sch, ok := s.override[model]; ok {
		return sch, nil
	}
	if sch, ok := s.byModel[model]; ok {
		return sch, nil
	}
	var text string
	err := s.tx.queryRow(ctx, `SELECT schema FROM config_schemas WHERE tenant_id = ? AND model = ?`, s.tenantID, model).Scan(&text)
	var sch *twinschema.Schema
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("sqlstore: config schema: %w", err)
	default:
		if sch, err = twinschema.Compile([]byte(text)); err != nil {
			return nil, fmt.Errorf("sqlstore: stored config schema of model %s: %w", model, err)
		}
	}
	if s.byModel == nil {
		s.byModel = map[string]*twinschema.Schema{}
	}
	s.byModel[model] = sch
	return sch, nil
}

// recompute brings the effective documents of rows up to date with
// groups and each row's own document, checks changed ones against their
// model's schema, and saves rows that changed (or whose own document
// changed: dirty). It returns how many effective documents changed.
func (tx *Tx) recompute(ctx context.Context, tenantID int64, rows []*twinRow, groups []*cradle.ConfigGroup, sch *schemas, dirty map[int64]bool) (int, error) {
	changed := 0
	composer := cradle.NewConfigComposer(groups)
	for _, r := range rows {
		var own map[string]any
		if r.deviceConfig != nil {
			var err error
			if own, err = cradle.ParseConfig(r.deviceConfig); err != nil {
				return 0, fmt.Errorf("sqlstore: twin of %s: stored device config: %w", r.serial, err)
			}
		}
		cfg, _, ok, err := composer.Compose(r.labels, own)
		if err != nil {
			return 0, fmt.Errorf("sqlstore: twin of %s: %w", r.serial, err)
		}
		if !ok && r.version == 0 {
			if dirty[r.deviceID] {
				if err := tx.saveTwin(ctx, tenantID, r); err != nil {
					return 0, err
				}
			}
			continue
		}
		eff := cradle.CanonicalConfig(cfg)
		if bytes.Equal(eff, r.effective) {
			if dirty[r.deviceID] {
				if err := tx.saveTwin(ctx, tenantID, r); err != nil {
					return 0, err
				}
			}
			continue
		}
		s, err := sch.get(ctx, r.model)
		if err != nil {
			return 0, err
		}
		if s != nil {
			if err := s.Validate(cfg); err != nil {
				return 0, cradle.Errorf(cradle.EINVALID, "device %s (model %s): %s", r.serial, r.model, cradle.ErrorMessage(err))
			}
		}
		r.version++
		r.effective = eff
		r.effectiveAt = sql.NullInt64{Int64: micros(tx.now), Valid: true}
		rep, err := r.report()
		if err != nil {
			return 0, err
		}
		r.drift = cradle.Drift(r.desired(), rep)
		if err := tx.saveTwin(ctx, tenantID, r); err != nil {
			return 0, err
		}
		doc, _ := json.Marshal(r.desired())
		tx.twins = append(tx.twins, cradle.TwinChange{TenantID: tenantID, Serial: r.serial, Desired: doc})
		changed++
	}
	return changed, nil
}

func nullBytes(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

func (tx *Tx) saveTwin(ctx context.Context, tenantID int64, r *twinRow) error {
	_, err := tx.exec(ctx, `INSERT INTO twins (device_id, tenant_id, device_config, device_config_at, version, effective, effective_at, reported, reported_at, drift)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (device_id) DO UPDATE SET device_config = excluded.device_config, device_config_at = excluded.device_config_at,
			version = excluded.version, effective = excluded.effective, effective_at = excluded.effective_at,
			reported = excluded.reported, reported_at = excluded.reported_at, drift = excluded.drift`,
		r.deviceID, tenantID, nullBytes(r.deviceConfig), r.deviceConfigAt, r.version, nullBytes(r.effective), r.effectiveAt,
		nullBytes(r.reported), r.reportedAt, string(r.drift))
	if err != nil {
		return fmt.Errorf("sqlstore: save twin of %s: %w", r.serial, err)
	}
	r.exists = true
	return nil
}

// recomputeDevice recomputes one device's twin after its labels changed.
func (tx *Tx) recomputeDevice(ctx context.Context, tenantID int64, serial string) error {
	rows, err := tx.lockTwinRows(ctx, tenantID, serial)
	if err != nil || len(rows) == 0 {
		return err
	}
	groups, err := tx.configGroups(ctx, tenantID)
	if err != nil {
		return err
	}
	_, err = tx.recompute(ctx, tenantID, rows, groups, &schemas{tx: tx, tenantID: tenantID}, nil)
	return err
}

// recomputeTenant recomputes the twins of every device of the tenant after
// its config groups changed to groups; it returns how many changed.
func (tx *Tx) recomputeTenant(ctx context.Context, tenantID int64, groups []*cradle.ConfigGroup) (int, error) {
	rows, err := tx.lockTwinRows(ctx, tenantID, "")
	if err != nil {
		return 0, err
	}
	return tx.recompute(ctx, tenantID, rows, groups, &schemas{tx: tx, tenantID: tenantID}, nil)
}

// twinsForNewDevices gives devices created in tx (those without a twin
// row; serial "" means every such device of the tenant) the effective
// document of the groups that match them. Without groups it costs one
// query.
func (tx *Tx) twinsForNewDevices(ctx context.Context, tenantID int64, serial string) error {
	groups, err := tx.configGroups(ctx, tenantID)
	if err != nil || len(groups) == 0 {
		return err
	}
	rows, err := tx.lockTwinRowsWhere(ctx, tenantID, serial, true)
	if err != nil {
		return err
	}
	_, err = tx.recompute(ctx, tenantID, rows, groups, &schemas{tx: tx, tenantID: tenantID}, nil)
	return err
}

// twinOf builds the operator view of a row.
func twinOf(r *twinRow, groups []*cradle.ConfigGroup) (*cradle.Twin, error) {
	t := &cradle.Twin{Serial: r.serial, Model: r.model, Groups: []string{}, Desired: r.desired(), Drift: r.drift}
	if r.deviceConfig != nil {
		t.DeviceConfig = json.RawMessage(r.deviceConfig)
	}
	if r.effectiveAt.Valid && t.Desired != nil {
		at := fromMicros(r.effectiveAt.Int64)
		t.DesiredAt = &at
	}
	var err error
	if t.Reported, err = r.report(); err != nil {
		return nil, err
	}
	if r.reportedAt.Valid {
		at := fromMicros(r.reportedAt.Int64)
		t.ReportedAt = &at
	}
	for _, g := range groups {
		if sel, err := cradle.ParseLabelSelector(g.Selector); err == nil && sel.Matches(r.labels) {
			t.Groups = append(t.Groups, g.Name)
		}
	}
	return t, nil
}

// readTwin reads a device's twin outside a write transaction.
func (s *TwinService) readTwin(ctx context.Context, tenantID int64, serial string) (*twinRow, error) {
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	r, err := scanTwinRow(s.db.queryRow(ctx, `SELECT `+twinRowCols+` FROM devices d LEFT JOIN twins t ON t.device_id = d.id WHERE d.tenant_id = ? AND d.serial = ?`, tenantID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: twin: %w", err)
	}
	return r, nil
}

// own checks that a device actor acts on itself.
func (s *TwinService) own(ctx context.Context, a cradle.Actor, action, serial string) error {
	return s.db.ownDevice(ctx, a, serial, action, "twin."+action+".refused")
}

// readOwnTwin authorizes reading serial's twin (a device only its own)
// and reads it.
func (s *TwinService) readOwnTwin(ctx context.Context, serial string) (cradle.Actor, *twinRow, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinRead, "twin.read", "device:"+serial)
	if err != nil {
		return a, nil, err
	}
	if err := s.own(ctx, a, "read", serial); err != nil {
		return a, nil, err
	}
	r, err := s.readTwin(ctx, a.TenantID, serial)
	return a, r, err
}

// FindTwin returns a device's twin.
func (s *TwinService) FindTwin(ctx context.Context, serial string) (*cradle.Twin, error) {
	a, r, err := s.readOwnTwin(ctx, serial)
	if err != nil {
		return nil, err
	}
	groups, err := findGroups(ctx, s.db.query, a.TenantID, "")
	if err != nil {
		return nil, err
	}
	return twinOf(r, groups)
}

// FindDesired returns a device's effective desired document, or nil.
func (s *TwinService) FindDesired(ctx context.Context, serial string) (*cradle.TwinDesired, error) {
	_, r, err := s.readOwnTwin(ctx, serial)
	if err != nil {
		return nil, err
	}
	return r.desired(), nil
}

// SetDeviceConfig replaces a device's own document.
func (s *TwinService) SetDeviceConfig(ctx context.Context, serial string, config []byte) (*cradle.Twin, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinWrite, "twin.desired", "device:"+serial)
	if err != nil {
		return nil, err
	}
	cfg, err := cradle.ParseConfig(config)
	if err != nil {
		return nil, err
	}
	doc := cradle.CanonicalConfig(cfg)
	return s.changeDeviceConfig(ctx, a, serial, doc, "twin.desired")
}

// DeleteDeviceConfig removes a device's own document.
func (s *TwinService) DeleteDeviceConfig(ctx context.Context, serial string) (*cradle.Twin, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinWrite, "twin.desired.delete", "device:"+serial)
	if err != nil {
		return nil, err
	}
	return s.changeDeviceConfig(ctx, a, serial, nil, "twin.desired.delete")
}

func (s *TwinService) changeDeviceConfig(ctx context.Context, a cradle.Actor, serial string, doc []byte, action string) (*cradle.Twin, error) {
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	var twin *cradle.Twin
	err := s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		rows, err := tx.lockDeviceTwin(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		r := rows[0]
		if doc == nil && r.deviceConfig == nil {
			return cradle.Errorf(cradle.ENOTFOUND, "device %q has no configuration of its own", serial)
		}
		r.deviceConfig = doc
		r.deviceConfigAt = sql.NullInt64{Int64: micros(tx.now), Valid: doc != nil}
		groups, err := tx.configGroups(ctx, a.TenantID)
		if err != nil {
			return err
		}
		if _, err := tx.recompute(ctx, a.TenantID, rows, groups, &schemas{tx: tx, tenantID: a.TenantID}, map[int64]bool{r.deviceID: true}); err != nil {
			return err
		}
		details := map[string]any{"version": r.version}
		if doc != nil {
			details["config"] = json.RawMessage(doc)
		}
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: "device:" + serial, Details: details}); err != nil {
			return err
		}
		twin, err = twinOf(r, groups)
		return err
	})
	if err != nil {
		if cradle.ErrorCode(err) == cradle.EINVALID {
			return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: "device:" + serial}, err)
		}
		return nil, err
	}
	return twin, nil
}

// ReportTwin stores a device's report and its drift state.
func (s *TwinService) ReportTwin(ctx context.Context, serial string, rep *cradle.TwinReported) error {
	a, err := s.db.authorize(ctx, cradle.PermTwinReport, "twin.report", "device:"+serial)
	if err != nil {
		return err
	}
	if err := s.own(ctx, a, "report", serial); err != nil {
		return err
	}
	if rep == nil {
		return cradle.Errorf(cradle.EINVALID, "no reported document")
	}
	if err := rep.Validate(); err != nil {
		return err
	}
	rep.At = rep.At.UTC()
	doc, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("sqlstore: report twin: %w", err)
	}
	if cradle.ValidateSerial(serial) != nil {
		return notFound(serial)
	}
	return s.db.write(ctx, func(tx *Tx) error {
		rows, err := tx.lockDeviceTwin(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		r := rows[0]
		r.reported = doc
		r.reportedAt = sql.NullInt64{Int64: micros(tx.now), Valid: true}
		r.drift = cradle.Drift(r.desired(), rep)
		return tx.saveTwin(ctx, a.TenantID, r)
	})
}

func encodeSerialCursor(serial string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("s" + serial))
}

func decodeSerialCursor(c string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 2 || b[0] != 's' {
		return "", cradle.Errorf(cradle.EINVALID, "invalid cursor %q: pass the next_cursor of a previous page unchanged", c)
	}
	return string(b[1:]), nil
}

// FindTwins lists twins by serial with their drift state.
func (s *TwinService) FindTwins(ctx context.Context, f cradle.TwinFilter) ([]*cradle.TwinStatus, string, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinRead, "twin.list", "twins")
	if err != nil {
		return nil, "", err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, "", err
	}
	q := `SELECT d.serial, t.version, t.reported, t.reported_at, t.drift FROM twins t JOIN devices d ON d.id = t.device_id WHERE t.tenant_id = ?`
	args := []any{a.TenantID}
	if f.Drift != nil {
		if _, err := cradle.ParseDriftState(string(*f.Drift)); err != nil {
			return nil, "", err
		}
		q += ` AND t.drift = ?`
		args = append(args, string(*f.Drift))
	}
	if f.Cursor != "" {
		after, err := decodeSerialCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		q += ` AND d.serial > ?`
		args = append(args, after)
	}
	q += ` ORDER BY d.serial LIMIT ?`
	args = append(args, limit+1)
	rows, err := s.db.query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("sqlstore: twins: %w", err)
	}
	defer rows.Close()
	var out []*cradle.TwinStatus
	for rows.Next() {
		var st cradle.TwinStatus
		var rep sql.NullString
		var repAt sql.NullInt64
		var drift string
		if err := rows.Scan(&st.Serial, &st.DesiredVersion, &rep, &repAt, &drift); err != nil {
			return nil, "", fmt.Errorf("sqlstore: twins: %w", err)
		}
		st.Drift = cradle.DriftState(drift)
		if rep.Valid {
			var r cradle.TwinReported
			if err := json.Unmarshal([]byte(rep.String), &r); err != nil {
				return nil, "", fmt.Errorf("sqlstore: twin of %s: reported column: %w", st.Serial, err)
			}
			st.ReportedVersion, st.ReportedStatus, st.Error = r.Version, r.Status, r.Error
		}
		if repAt.Valid {
			at := fromMicros(repAt.Int64)
			st.ReportedAt = &at
		}
		out = append(out, &st)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("sqlstore: twins: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = encodeSerialCursor(out[limit-1].Serial)
	}
	return out, next, nil
}

// PutConfigGroup creates or replaces a group.
func (s *TwinService) PutConfigGroup(ctx context.Context, name string, p cradle.ConfigGroupPut) (*cradle.ConfigGroup, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinWrite, "config_group.put", "config-group:"+name)
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateGroupName(name); err != nil {
		return nil, err
	}
	sel, cfg, err := p.Validate()
	if err != nil {
		return nil, err
	}
	g := &cradle.ConfigGroup{Name: name, Selector: sel.String(), Priority: p.Priority, Config: cradle.CanonicalConfig(cfg), UpdatedBy: a.String()}
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		groups, err := tx.configGroups(ctx, a.TenantID)
		if err != nil {
			return err
		}
		g.CreatedAt, g.UpdatedAt = tx.now, tx.now
		kept := groups[:0]
		for _, old := range groups {
			if old.Name == name {
				g.CreatedAt = old.CreatedAt
				continue
			}
			kept = append(kept, old)
		}
		groups = append(kept, g)
		cradle.SortConfigGroups(groups)
		if _, err := tx.exec(ctx, `INSERT INTO config_groups (tenant_id, name, selector, priority, config, created_at, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id, name) DO UPDATE SET selector = excluded.selector, priority = excluded.priority, config = excluded.config,
				updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
			a.TenantID, name, g.Selector, g.Priority, string(g.Config), micros(g.CreatedAt), micros(g.UpdatedAt), g.UpdatedBy); err != nil {
			return fmt.Errorf("sqlstore: put config group: %w", err)
		}
		n, err := tx.recomputeTenant(ctx, a.TenantID, groups)
		if err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "config_group.put", Subject: "config-group:" + name,
			Details: map[string]any{"selector": g.Selector, "priority": g.Priority, "config": g.Config, "devices_changed": n}})
	})
	if err != nil {
		if cradle.ErrorCode(err) == cradle.EINVALID {
			return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "config_group.put.refused", Subject: "config-group:" + name}, err)
		}
		return nil, err
	}
	return g, nil
}

// FindConfigGroups lists the tenant's groups in merge order.
func (s *TwinService) FindConfigGroups(ctx context.Context) ([]*cradle.ConfigGroup, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinRead, "config_group.list", "config-groups")
	if err != nil {
		return nil, err
	}
	return findGroups(ctx, s.db.query, a.TenantID, "")
}

// FindConfigGroup returns a group.
func (s *TwinService) FindConfigGroup(ctx context.Context, name string) (*cradle.ConfigGroup, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinRead, "config_group.read", "config-group:"+name)
	if err != nil {
		return nil, err
	}
	gs, err := findGroups(ctx, s.db.query, a.TenantID, name)
	if err != nil {
		return nil, err
	}
	if len(gs) == 0 {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "config group %q not found", name)
	}
	return gs[0], nil
}

// DeleteConfigGroup deletes a group and recomputes the devices it reached.
func (s *TwinService) DeleteConfigGroup(ctx context.Context, name string) error {
	a, err := s.db.authorize(ctx, cradle.PermTwinWrite, "config_group.delete", "config-group:"+name)
	if err != nil {
		return err
	}
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		res, err := tx.exec(ctx, `DELETE FROM config_groups WHERE tenant_id = ? AND name = ?`, a.TenantID, name)
		if err != nil {
			return fmt.Errorf("sqlstore: delete config group: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("sqlstore: delete config group: %w", err)
		} else if n == 0 {
			return cradle.Errorf(cradle.ENOTFOUND, "config group %q not found", name)
		}
		groups, err := tx.configGroups(ctx, a.TenantID)
		if err != nil {
			return err
		}
		n, err := tx.recomputeTenant(ctx, a.TenantID, groups)
		if err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "config_group.delete", Subject: "config-group:" + name,
			Details: map[string]any{"devices_changed": n}})
	})
	if cradle.ErrorCode(err) == cradle.EINVALID {
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "config_group.delete.refused", Subject: "config-group:" + name}, err)
	}
	return err
}

// PutConfigSchema registers a model's schema after checking the current
// effective documents of the model's devices against it.
func (s *TwinService) PutConfigSchema(ctx context.Context, model string, schema []byte) (*cradle.ConfigSchema, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinWrite, "config_schema.put", "model:"+model)
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateModelName(model); err != nil {
		return nil, err
	}
	sch, err := twinschema.Compile(schema)
	if err != nil {
		return nil, err
	}
	// Store it canonical, as the other documents.
	var doc any
	dec := json.NewDecoder(bytes.NewReader(schema))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid config schema: %v", err)
	}
	canon, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: put config schema: %w", err)
	}
	out := &cradle.ConfigSchema{Model: model, Schema: canon, UpdatedBy: a.String()}
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		rows, err := tx.lockTwinRows(ctx, a.TenantID, "")
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.model != model || r.version == 0 {
				continue
			}
			cfg, err := cradle.ParseConfig(r.effective)
			if err != nil {
				return fmt.Errorf("sqlstore: twin of %s: effective column: %w", r.serial, err)
			}
			if err := sch.Validate(cfg); err != nil {
				return cradle.Errorf(cradle.EINVALID, "device %s runs a desired configuration the schema refuses: %s; change its configuration first", r.serial, cradle.ErrorMessage(err))
			}
		}
		out.UpdatedAt = tx.now
		if _, err := tx.exec(ctx, `INSERT INTO config_schemas (tenant_id, model, schema, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id, model) DO UPDATE SET schema = excluded.schema, updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
			a.TenantID, model, string(canon), micros(tx.now), out.UpdatedBy); err != nil {
			return fmt.Errorf("sqlstore: put config schema: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "config_schema.put", Subject: "model:" + model,
			Details: map[string]any{"schema": json.RawMessage(canon)}})
	})
	if err != nil {
		if cradle.ErrorCode(err) == cradle.EINVALID {
			return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "config_schema.put.refused", Subject: "model:" + model}, err)
		}
		return nil, err
	}
	return out, nil
}

// FindConfigSchema returns a model's schema.
func (s *TwinService) FindConfigSchema(ctx context.Context, model string) (*cradle.ConfigSchema, error) {
	a, err := s.db.authorize(ctx, cradle.PermTwinRead, "config_schema.read", "model:"+model)
	if err != nil {
		return nil, err
	}
	out := &cradle.ConfigSchema{Model: model}
	var text string
	var at int64
	err = s.db.queryRow(ctx, `SELECT schema, updated_at, updated_by FROM config_schemas WHERE tenant_id = ? AND model = ?`, a.TenantID, model).Scan(&text, &at, &out.UpdatedBy)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "model %q has no config schema", model)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: config schema: %w", err)
	}
	out.Schema, out.UpdatedAt = json.RawMessage(text), fromMicros(at)
	return out, nil
}
