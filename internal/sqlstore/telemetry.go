package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cradle"
)

// TelemetryService implements cradle.TelemetryService. A batch of points
// is one write transaction: metric names are resolved to ids of the
// tenant's dictionary (cached once committed), and the points go in
// through prepared multi-row inserts, up to telemetryChunk rows each.
type TelemetryService struct {
	db *DB

	metrics sync.Map // metricKey → committed metric id
	devices sync.Map // deviceKey → device id; devices are never deleted and keep their serial

	mu    sync.Mutex
	stmts map[int]*sql.Stmt // row count → prepared insert on the write pool
}

var _ cradle.TelemetryService = (*TelemetryService)(nil)

// NewTelemetryService returns the telemetry store of db.
func NewTelemetryService(db *DB) *TelemetryService {
	return &TelemetryService{db: db, stmts: map[int]*sql.Stmt{}}
}

type metricKey struct {
	tenant int64
	name   string
}

type telemetryRow struct {
	metric, time int64
	value        float64
}

type deviceKey struct {
	tenant int64
	serial string
}

const (
	// telemetryChunk is the most rows one insert statement carries: 5
	// parameters a row stay far below SQLite's and PostgreSQL's limits on
	// parameters.
	telemetryChunk = 500
	// maxTenantMetrics bounds a tenant's metric dictionary, so devices
	// inventing names cannot grow it without end.
	maxTenantMetrics = 1024
	hourMicros       = int64(time.Hour / time.Microsecond)
)

// device returns the id of a device of the tenant, or ENOTFOUND.
func (s *TelemetryService) device(ctx context.Context, tenantID int64, serial string) (int64, error) {
	if id, ok := s.devices.Load(deviceKey{tenantID, serial}); ok {
		return id.(int64), nil
	}
	id, err := s.db.deviceID(ctx, tenantID, serial)
	if err != nil {
		return 0, err
	}
	s.devices.Store(deviceKey{tenantID, serial}, id)
	return id, nil
}

// RecordTelemetry stores a batch of points of one device.
func (s *TelemetryService) RecordTelemetry(ctx context.Context, serial string, pts []cradle.TelemetryPoint) error {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermTelemetryWrite, "telemetry.record", subject)
	if err != nil {
		return err
	}
	if err := s.db.ownDevice(ctx, a, serial, "record telemetry", "telemetry.record.refused"); err != nil {
		return err
	}
	now := s.db.now()
	if err := cradle.ValidateTelemetry(pts, now); err != nil {
		return err
	}
	deviceID, err := s.device(ctx, a.TenantID, serial)
	if err != nil || len(pts) == 0 {
		return err
	}
	ids := make([]int64, len(pts))
	var missing []string
	for i, p := range pts {
		if id, ok := s.metrics.Load(metricKey{a.TenantID, p.Metric}); ok {
			ids[i] = id.(int64)
		} else if !slices.Contains(missing, p.Metric) {
			missing = append(missing, p.Metric)
		}
	}
	// Prepare before the transaction: on SQLite it holds the write pool's
	// only connection.
	var stmts []*sql.Stmt
	for off := 0; off < len(pts); off += telemetryChunk {
		st, err := s.insertStmt(ctx, min(telemetryChunk, len(pts)-off))
		if err != nil {
			return err
		}
		stmts = append(stmts, st)
	}
	nowMicros := micros(now)
	var created map[string]int64
	err = s.db.write(ctx, func(tx *Tx) error {
		if len(missing) > 0 {
			if created, err = s.resolveMetrics(ctx, tx, a.TenantID, missing); err != nil {
				return err
			}
			for i, p := range pts {
				if ids[i] == 0 {
					ids[i] = created[p.Metric]
				}
			}
		}
		// Rows in key order (metric, time): SQLite then inserts them along
		// one b-tree path instead of seeking for each.
		rows := make([]telemetryRow, len(pts))
		for i, p := range pts {
			rows[i] = telemetryRow{ids[i], nowMicros, p.Value}
			if !p.Time.IsZero() {
				rows[i].time = micros(p.Time)
			}
		}
		slices.SortFunc(rows, func(x, y telemetryRow) int {
			if c := cmp.Compare(x.metric, y.metric); c != 0 {
				return c
			}
			return cmp.Compare(x.time, y.time)
		})
		for off := 0; off < len(rows); off += telemetryChunk {
			end := min(off+telemetryChunk, len(rows))
			args := make([]any, 0, 5*(end-off))
			for _, r := range rows[off:end] {
				args = append(args, a.TenantID, deviceID, r.metric, r.time, r.value)
			}
			if _, err := tx.tx.StmtContext(ctx, stmts[off/telemetryChunk]).ExecContext(ctx, args...); err != nil {
				return fmt.Errorf("sqlstore: record telemetry: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for name, id := range created {
		s.metrics.Store(metricKey{a.TenantID, name}, id)
	}
	return nil
}

// resolveMetrics returns the ids of names in the tenant's dictionary,
// adding those it lacks, in tx.
func (s *TelemetryService) resolveMetrics(ctx context.Context, tx *Tx, tenantID int64, names []string) (map[string]int64, error) {
	out := make(map[string]int64, len(names))
	lookup := func(name string) error {
		var id int64
		err := tx.queryRow(ctx, `SELECT id FROM telemetry_metrics WHERE tenant_id = ? AND name = ?`, tenantID, name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		} else if err != nil {
			return fmt.Errorf("sqlstore: telemetry metric %s: %w", name, err)
		}
		out[name] = id
		return nil
	}
	var absent []string
	for _, n := range names {
		if err := lookup(n); err != nil {
			return nil, err
		}
		if _, ok := out[n]; !ok {
			absent = append(absent, n)
		}
	}
	if len(absent) == 0 {
		return out, nil
	}
	var count int
	if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM telemetry_metrics WHERE tenant_id = ?`, tenantID).Scan(&count); err != nil {
		return nil, fmt.Errorf("sqlstore: telemetry metrics: %w", err)
	}
	if count+len(absent) > maxTenantMetrics {
		return nil, cradle.Errorf(cradle.EINVALID, "metric %s would be this tenant's metric name number %d, over the limit of %d; report fewer distinct metric names",
			absent[0], count+len(absent), maxTenantMetrics)
	}
	for _, n := range absent {
		if _, err := tx.exec(ctx, `INSERT INTO telemetry_metrics (tenant_id, name) VALUES (?, ?) ON CONFLICT (tenant_id, name) DO NOTHING`, tenantID, n); err != nil {
			return nil, fmt.Errorf("sqlstore: telemetry metric %s: %w", n, err)
		}
		if err := lookup(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// insertStmt returns the prepared insert of n points: five parameters a
// row (tenant, device, metric, time, value). Sharing the tenant and device
// parameters between rows (?1, $1) binds fewer values, but the SQLite
// driver looks every numbered parameter up by name, which costs more.
func (s *TelemetryService) insertStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.stmts[n]; ok {
		return st, nil
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO telemetry_points (tenant_id, device_id, metric_id, time, value) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?, ?, ?, ?, ?)")
	}
	b.WriteString(` ON CONFLICT DO NOTHING`)
	st, err := s.db.wdb.PrepareContext(ctx, s.db.dialect.rebind(b.String()))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: record telemetry: prepare: %w", err)
	}
	s.stmts[n] = st
	return st, nil
}

// metricID returns the id of a metric of the tenant, or 0 when no point of
// it was ever stored.
func (s *TelemetryService) metricID(ctx context.Context, tenantID int64, name string) (int64, error) {
	if id, ok := s.metrics.Load(metricKey{tenantID, name}); ok {
		return id.(int64), nil
	}
	var id int64
	err := s.db.queryRowPrepared(ctx, `SELECT id FROM telemetry_metrics WHERE tenant_id = ? AND name = ?`, tenantID, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("sqlstore: telemetry metric: %w", err)
	}
	s.metrics.Store(metricKey{tenantID, name}, id)
	return id, nil
}

// telemetryUnion reads raw points and hourly rollups of one series as
// (t, mn, mx, sm, n). Pruning deletes the raw points it folds, so the two
// never count a value twice. Arguments: tenant, device, metric, from, to,
// twice.
const telemetryUnion = `(SELECT time AS t, value AS mn, value AS mx, value AS sm, 1 AS n FROM telemetry_points
		WHERE tenant_id = ? AND device_id = ? AND metric_id = ? AND time >= ? AND time < ?
	UNION ALL
	SELECT hour, min, max, sum, count FROM telemetry_rollups
		WHERE tenant_id = ? AND device_id = ? AND metric_id = ? AND hour >= ? AND hour < ?) AS u`

// QueryTelemetry returns one series, raw or downsampled into Step buckets
// by the database.
func (s *TelemetryService) QueryTelemetry(ctx context.Context, q cradle.TelemetryQuery) ([]cradle.TelemetrySample, error) {
	a, err := s.db.authorize(ctx, cradle.PermTelemetryRead, "telemetry.read", "device:"+q.Serial)
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateMetricName(q.Metric); err != nil {
		return nil, err
	}
	if q.Step != 0 && q.Step < time.Second {
		return nil, cradle.Errorf(cradle.EINVALID, "step %s is invalid: use 0 for raw points or at least 1s", q.Step)
	}
	from, to := int64(0), int64(1<<62)
	if !q.From.IsZero() {
		from = max(micros(q.From), 0)
	}
	if !q.To.IsZero() {
		to = micros(q.To)
	}
	if from >= to {
		return nil, cradle.Errorf(cradle.EINVALID, "the time range is empty: from %s is not before to %s",
			q.From.UTC().Format(time.RFC3339), q.To.UTC().Format(time.RFC3339))
	}
	deviceID, err := s.device(ctx, a.TenantID, q.Serial)
	if err != nil {
		return nil, err
	}
	metricID, err := s.metricID(ctx, a.TenantID, q.Metric)
	if err != nil || metricID == 0 {
		return []cradle.TelemetrySample{}, err
	}
	series := []any{a.TenantID, deviceID, metricID, from, to, a.TenantID, deviceID, metricID, from, to}
	var rows *sql.Rows
	if q.Step == 0 {
		rows, err = s.db.query(ctx, `SELECT t, mn, mx, sm, n FROM `+telemetryUnion+` ORDER BY t LIMIT ?`,
			append(series, cradle.MaxTelemetrySamples+1)...)
	} else {
		step := int64(q.Step / time.Microsecond)
		rows, err = s.db.query(ctx, `SELECT (t / ?) * ? AS b, MIN(mn), MAX(mx), SUM(sm), CAST(SUM(n) AS BIGINT) FROM `+telemetryUnion+`
			GROUP BY b ORDER BY b LIMIT ?`, append(append([]any{step, step}, series...), cradle.MaxTelemetrySamples+1)...)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlstore: query telemetry: %w", err)
	}
	defer rows.Close()
	out := []cradle.TelemetrySample{}
	for rows.Next() {
		var t, n int64
		var smp cradle.TelemetrySample
		var sum float64
		if err := rows.Scan(&t, &smp.Min, &smp.Max, &sum, &n); err != nil {
			return nil, fmt.Errorf("sqlstore: query telemetry: %w", err)
		}
		smp.Time, smp.Count, smp.Avg = fromMicros(t), n, sum/float64(n)
		out = append(out, smp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: query telemetry: %w", err)
	}
	if len(out) > cradle.MaxTelemetrySamples {
		return nil, cradle.Errorf(cradle.EINVALID, "the query matches more than %d samples; ask for a larger step or a shorter time range", cradle.MaxTelemetrySamples)
	}
	return out, nil
}

// LatestTelemetry returns the newest raw point of each metric of a device.
func (s *TelemetryService) LatestTelemetry(ctx context.Context, serial string) (map[string]cradle.TelemetryPoint, error) {
	a, err := s.db.authorize(ctx, cradle.PermTelemetryRead, "telemetry.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	deviceID, err := s.device(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	// One index seek per metric of the tenant's (bounded) dictionary.
	rows, err := s.db.query(ctx, `SELECT m.name, p.time, p.value FROM telemetry_metrics m
		JOIN telemetry_points p ON p.device_id = ? AND p.metric_id = m.id
			AND p.time = (SELECT MAX(q.time) FROM telemetry_points q WHERE q.device_id = ? AND q.metric_id = m.id)
		WHERE m.tenant_id = ?`, deviceID, deviceID, a.TenantID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: latest telemetry: %w", err)
	}
	defer rows.Close()
	out := map[string]cradle.TelemetryPoint{}
	for rows.Next() {
		var p cradle.TelemetryPoint
		var t int64
		if err := rows.Scan(&p.Metric, &t, &p.Value); err != nil {
			return nil, fmt.Errorf("sqlstore: latest telemetry: %w", err)
		}
		p.Serial, p.Time = serial, fromMicros(t)
		out[p.Metric] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: latest telemetry: %w", err)
	}
	return out, nil
}

// PruneTelemetry folds aged raw points into hourly rollups and deletes
// aged rollups, in one transaction. Rollups of an hour that was folded in
// parts (rawBefore inside the hour) are merged.
func (s *TelemetryService) PruneTelemetry(ctx context.Context, rawBefore, rollupBefore time.Time) (int64, error) {
	a, err := s.db.authorize(ctx, cradle.PermTelemetryWrite, "telemetry.prune", "telemetry")
	if err != nil {
		return 0, err
	}
	if a.Role != cradle.RoleSystem {
		err := cradle.Errorf(cradle.EFORBIDDEN, "role %s may not prune telemetry; retention is applied by the server", a.Role)
		return 0, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "telemetry.prune.refused", Subject: "telemetry"}, err)
	}
	merge := `min = min(telemetry_rollups.min, excluded.min), max = max(telemetry_rollups.max, excluded.max)`
	if s.db.dialect == postgresDialect {
		merge = `min = LEAST(telemetry_rollups.min, excluded.min), max = GREATEST(telemetry_rollups.max, excluded.max)`
	}
	var deleted int64
	err = s.db.write(ctx, func(tx *Tx) error {
		if !rawBefore.IsZero() {
			if _, err := tx.exec(ctx, `INSERT INTO telemetry_rollups (tenant_id, device_id, metric_id, hour, min, max, sum, count)
				SELECT tenant_id, device_id, metric_id, (time / `+strconv.FormatInt(hourMicros, 10)+`) * `+strconv.FormatInt(hourMicros, 10)+` AS h,
					MIN(value), MAX(value), SUM(value), COUNT(*)
				FROM telemetry_points WHERE tenant_id = ? AND time < ?
				GROUP BY tenant_id, device_id, metric_id, h
				ON CONFLICT (device_id, metric_id, hour) DO UPDATE SET `+merge+`,
					sum = telemetry_rollups.sum + excluded.sum, count = telemetry_rollups.count + excluded.count`,
				a.TenantID, micros(rawBefore)); err != nil {
				return fmt.Errorf("sqlstore: prune telemetry: fold: %w", err)
			}
			res, err := tx.exec(ctx, `DELETE FROM telemetry_points WHERE tenant_id = ? AND time < ?`, a.TenantID, micros(rawBefore))
			if err != nil {
				return fmt.Errorf("sqlstore: prune telemetry: %w", err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("sqlstore: prune telemetry: %w", err)
			}
			deleted += n
		}
		if !rollupBefore.IsZero() {
			res, err := tx.exec(ctx, `DELETE FROM telemetry_rollups WHERE tenant_id = ? AND hour < ?`, a.TenantID, micros(rollupBefore))
			if err != nil {
				return fmt.Errorf("sqlstore: prune telemetry: %w", err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("sqlstore: prune telemetry: %w", err)
			}
			deleted += n
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return deleted, nil
}
