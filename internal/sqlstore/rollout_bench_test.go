package sqlstore

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cradle"
)

// fillFleet inserts n deployed devices of model gw-1 labelled env=prod
// (a quarter of them with a tz label each of four zones) into the tenant
// with one SQL statement, and a signed release for them; it returns the
// release's ID.
func fillFleet(tb testing.TB, db *DB, tenantID int64, n int) string {
	tb.Helper()
	ctx := context.Background()
	now := micros(db.now())
	if _, err := db.wdb.ExecContext(ctx, db.dialect.rebind(`WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?)
		INSERT INTO devices (tenant_id, serial, hardware_uid, macs, model, hardware_revision, labels, state, initial_state, created_by, created_at, updated_at, state_changed_at)
		SELECT ?, printf('SN%08d', i), '', '[]', 'gw-1', 'B',
			CASE i % 4 WHEN 0 THEN '{"env":"prod","tz":"Europe/Berlin"}' WHEN 1 THEN '{"env":"prod","tz":"America/New_York"}'
				WHEN 2 THEN '{"env":"prod","tz":"Asia/Tokyo"}' ELSE '{"env":"prod","site":"s1"}' END,
			'deployed', 'provisioned', 'bench', ?, ?, ? FROM seq`), n, tenantID, now, now, now); err != nil {
		tb.Fatalf("fill devices: %v", err)
	}
	const rel = "rel_00000000000000000bench"
	if _, err := db.wdb.ExecContext(ctx, db.dialect.rebind(`INSERT INTO releases (tenant_id, public_id, model, version, kind, sha256, size, file_name, security_counter, state, created_by, created_at, updated_at)
		VALUES (?, ?, 'gw-1', '2.0.0', 'file', 'ab', 1, 'fw.bin', 0, 'signed', 'bench', ?, ?)`), tenantID, rel, now, now); err != nil {
		tb.Fatalf("release: %v", err)
	}
	return rel
}

// planStore opens a SQLite store in a temporary directory with one tenant
// and returns a system actor's context in it.
func planStore(tb testing.TB) (*DB, *cradle.Tenant, context.Context) {
	tb.Helper()
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	db, err := Open(ctx, filepath.Join(tb.TempDir(), "cradle.db"), Options{AuditKey: key})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	tn, err := NewTenantService(db).CreateTenant(ctx, "bench")
	if err != nil {
		tb.Fatal(err)
	}
	return db, tn, cradle.NewContextWithActor(ctx, cradle.SystemActor(tn.ID, "bench"))
}

// planSpec is the rollout: a canary of 100 devices, then 10%, 50%
// and 100% of the fleet, selected by a label.
func planSpec(rel string) cradle.RolloutSpec {
	return cradle.RolloutSpec{
		ReleaseID: rel,
		Target:    cradle.RolloutTarget{Selector: "env=prod"},
		Phases: []cradle.RolloutPhase{
			{Count: 100, Soak: cradle.Duration(time.Hour)},
			{Percent: 10}, {Percent: 50}, {Percent: 100},
		},
		RateLimit:        1000,
		FailureThreshold: cradle.FailureThreshold{Percent: 1, Action: cradle.FailurePause},
	}
}

// dropRollouts deletes every rollout, so the next creation sees the same
// free fleet.
func dropRollouts(tb testing.TB, db *DB) {
	tb.Helper()
	for _, q := range []string{`DELETE FROM rollout_devices`, `DELETE FROM rollouts`} {
		if _, err := db.wdb.Exec(q); err != nil {
			tb.Fatal(err)
		}
	}
}

func benchCreateRollout(b *testing.B, n int) {
	db, tn, sys := planStore(b)
	rel := fillFleet(b, db, tn.ID, n)
	svc := NewRolloutService(db)
	b.ResetTimer()
	for b.Loop() {
		r, err := svc.CreateRollout(sys, planSpec(rel))
		if err != nil {
			b.Fatal(err)
		}
		if r.Status.Devices != n {
			b.Fatalf("rollout over %d devices, want %d", r.Status.Devices, n)
		}
		b.StopTimer()
		dropRollouts(b, db)
		b.StartTimer()
	}
	b.ReportMetric(float64(n), "devices")
}

// BenchmarkCreateRollout10k plans a rollout over 10,000 devices on SQLite:
// CreateRollout with a selector matching all of them (reading the fleet,
// the engine's Begin, writing 10,000 device rows, the audit entry).
//
//	go test -run '^$' -bench BenchmarkCreateRollout10k ./internal/sqlstore/
func BenchmarkCreateRollout10k(b *testing.B) { benchCreateRollout(b, 10_000) }

// BenchmarkCreateRollout1M is the figure: planning a rollout over
// 1,000,000 devices on SQLite (goal ≤ 10 s). Filling the fleet takes a
// while and is not timed; it runs when CRADLE_BENCH_1M=1.
//
//	CRADLE_BENCH_1M=1 go test -run '^$' -bench BenchmarkCreateRollout1M -benchtime 3x -timeout 30m ./internal/sqlstore/
func BenchmarkCreateRollout1M(b *testing.B) {
	if os.Getenv("CRADLE_BENCH_1M") == "" {
		b.Skip("set CRADLE_BENCH_1M=1 to plan a rollout over 1,000,000 devices")
	}
	benchCreateRollout(b, 1_000_000)
}

// TestCreateRolloutFleet creates the benchmark's rollout over 10,000
// devices and checks where the devices went: 100 canaries (started at
// once, under the rate limit), then up to 10%, 50% and 100%, every row
// stored in the engine's order with only the tz label.
func TestCreateRolloutFleet(t *testing.T) {
	const n = 10_000
	db, tn, sys := planStore(t)
	rel := fillFleet(t, db, tn.ID, n)
	r, err := NewRolloutService(db).CreateRollout(sys, planSpec(rel))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, p := range r.Status.Phases {
		got = append(got, p.Devices)
	}
	if want := []int{100, 900, 4000, 5000}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("phase sizes %v, want %v", got, want)
	}
	if r.Status.Phases[0].Downloading != 100 {
		t.Fatalf("canaries started: %d, want 100", r.Status.Phases[0].Downloading)
	}
	rows, err := db.rdb.Query(`SELECT position, phase, labels, state FROM rollout_devices ORDER BY position`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	next, lastPhase, tz := 0, 0, 0
	for rows.Next() {
		var pos, phase int
		var labels, state string
		if err := rows.Scan(&pos, &phase, &labels, &state); err != nil {
			t.Fatal(err)
		}
		if pos != next || phase < lastPhase || (phase == 0) != (state == "started") {
			t.Fatalf("row %d: position %d, phase %d after %d, state %s", next, pos, phase, lastPhase, state)
		}
		if labels != "" {
			tz++
			if m, err := decodeStringMap([]byte(labels)); err != nil || len(m) != 1 || m[cradle.RolloutTZLabel] == "" {
				t.Fatalf("row %d: labels %q", pos, labels)
			}
		}
		next, lastPhase = next+1, phase
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if next != n || tz != n*3/4 {
		t.Fatalf("%d rows, %d with tz; want %d, %d", next, tz, n, n*3/4)
	}
}
