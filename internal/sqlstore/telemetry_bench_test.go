package sqlstore

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
)

// BenchmarkTelemetryIngest measures telemetry points per second into SQLite
// through RecordTelemetry (device messages of 50 points: 10 metrics at 5
// times, from 1,000 devices in turn) against the baseline: a bare batched
// insert of the same points, one transaction and one prepared 50-row insert
// per message, into a plain table with the same columns in the same
// database file, on the same connection, interleaved message by message so
// both tables grow alike. It reports both rates and their ratio (the goal
// is ratio ≥ 0.5). For the cause of the gap it also inserts the same rows,
// in the store's order, into a third table keyed like the store's
// (device, metric, time), WITHOUT ROWID, ON CONFLICT DO NOTHING:
// keyed_points/s and ratio_keyed (the store against that) show what the
// key costs and what the store adds on top of it.
//
//	go test -run '^$' -bench BenchmarkTelemetryIngest -benchtime 20000x ./internal/sqlstore/
func BenchmarkTelemetryIngest(b *testing.B) {
	const (
		devices   = 1000
		metrics   = 10
		times     = 5
		perMsg    = metrics * times
		interval  = 12 * time.Second
		messageDt = times * interval
	)
	ctx := context.Background()
	db, tn, sys := benchStore(b)
	devSvc, svc := NewDeviceService(db), NewTelemetryService(db)
	serials := make([]string, devices)
	deviceIDs := make([]int64, devices)
	actors := make([]context.Context, devices)
	for i := range serials {
		serials[i] = fmt.Sprintf("bench-%05d", i)
		d, err := devSvc.CreateDevice(sys, cradle.DeviceCreate{Serial: serials[i], Model: "gw-1"})
		if err != nil {
			b.Fatal(err)
		}
		deviceIDs[i] = d.ID
		actors[i] = cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: tn.ID, Role: cradle.RoleDevice, Kind: "device", ID: serials[i]})
	}
	names := make([]string, metrics)
	for i := range names {
		names[i] = cradle.TelemetryMetrics[i].Name
	}

	if _, err := db.wdb.ExecContext(ctx, `CREATE TABLE bench_plain (tenant_id INTEGER NOT NULL, device_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, time INTEGER NOT NULL, value REAL NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	if _, err := db.wdb.ExecContext(ctx, `CREATE TABLE bench_keyed (tenant_id INTEGER NOT NULL, device_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, time INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (device_id, metric_id, time)) WITHOUT ROWID`); err != nil {
		b.Fatal(err)
	}
	rows := strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?),", perMsg), ",")
	bare, err := db.wdb.PrepareContext(ctx, `INSERT INTO bench_plain (tenant_id, device_id, metric_id, time, value) VALUES `+rows)
	if err != nil {
		b.Fatal(err)
	}
	defer bare.Close()
	keyed, err := db.wdb.PrepareContext(ctx, `INSERT INTO bench_keyed (tenant_id, device_id, metric_id, time, value) VALUES `+rows+` ON CONFLICT DO NOTHING`)
	if err != nil {
		b.Fatal(err)
	}
	defer keyed.Close()
	insert := func(st *sql.Stmt, args []any) {
		tx, err := db.wdb.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}

	start := time.Now().Add(-24 * time.Hour).Truncate(time.Hour)
	pts := make([]cradle.TelemetryPoint, perMsg)
	args := make([]any, 0, 5*perMsg)
	keyedArgs := make([]any, 0, 5*perMsg)
	var storeTime, bareTime, keyedTime time.Duration
	b.ResetTimer()
	for i := range b.N {
		d, round := i%devices, i/devices
		base := start.Add(time.Duration(round) * messageDt)
		for j := range pts {
			pts[j] = cradle.TelemetryPoint{Metric: names[j%metrics], Time: base.Add(time.Duration(j/metrics) * interval), Value: float64((i + j) % 2)}
		}

		t0 := time.Now()
		if err := svc.RecordTelemetry(actors[d], serials[d], pts); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		args = args[:0]
		for j, p := range pts {
			args = append(args, tn.ID, deviceIDs[d], int64(j%metrics+1), p.Time.UnixMicro(), p.Value)
		}
		insert(bare, args)
		t2 := time.Now()
		// The same rows in key order (metric, time), as the store sends them.
		keyedArgs = keyedArgs[:0]
		for m := range metrics {
			for t := range times {
				p := pts[t*metrics+m]
				keyedArgs = append(keyedArgs, tn.ID, deviceIDs[d], int64(m+1), p.Time.UnixMicro(), p.Value)
			}
		}
		insert(keyed, keyedArgs)
		t3 := time.Now()
		storeTime += t1.Sub(t0)
		bareTime += t2.Sub(t1)
		keyedTime += t3.Sub(t2)
	}
	b.StopTimer()
	points := float64(b.N * perMsg)
	storeRate, bareRate, keyedRate := points/storeTime.Seconds(), points/bareTime.Seconds(), points/keyedTime.Seconds()
	b.ReportMetric(storeRate, "store_points/s")
	b.ReportMetric(bareRate, "bare_points/s")
	b.ReportMetric(storeRate/bareRate, "ratio")
	b.ReportMetric(keyedRate, "keyed_points/s")
	b.ReportMetric(storeRate/keyedRate, "ratio_keyed")
}

// benchStore opens a SQLite store in b's temporary directory, closed when
// b ends, with a tenant "bench"; sys acts in it as the system.
func benchStore(b *testing.B) (db *DB, tn *cradle.Tenant, sys context.Context) {
	b.Helper()
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	db, err := Open(ctx, filepath.Join(b.TempDir(), "cradle.db"), Options{AuditKey: key})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	tn, err = NewTenantService(db).CreateTenant(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return db, tn, cradle.NewContextWithActor(ctx, cradle.SystemActor(tn.ID, "bench"))
}
