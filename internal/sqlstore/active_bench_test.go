package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"cradle"
)

// BenchmarkActiveRollouts measures the query every scheduler step starts
// with on SQLite, over a tenant's history: 10 running rollouts and 10,000
// aborted ones, of which 10 still have a device in flight (rollouts.in_flight)
// and the rest none and no queued report.
//
//	go test -run '^$' -bench BenchmarkActiveRollouts ./internal/sqlstore/
func BenchmarkActiveRollouts(b *testing.B) {
	const aborted, live = 10000, 10
	db, tn, sys := benchStore(b)
	r, err := NewReleaseService(db).CreateRelease(sys, cradle.ReleaseCreate{Model: "gw-1", Version: "1.0", Kind: cradle.ReleaseFile,
		SHA256: strings.Repeat("ab", 32), Size: 1000, FileName: "fw.bin"})
	if err != nil {
		b.Fatal(err)
	}
	// Rollout rows are fixtures here: the engine's writes are tested in
	// storetest; only the rows ActiveRollouts reads matter.
	tx, err := db.wdb.Begin()
	if err != nil {
		b.Fatal(err)
	}
	for i := range aborted + live {
		state, flying := "aborted", 0
		switch {
		case i >= aborted:
			state = "running"
		case i%(aborted/live) == 0:
			flying = 1
		}
		if _, err := tx.Exec(`INSERT INTO rollouts (tenant_id, public_id, release_id, spec, status, state, in_flight, revision, created_by, created_at, updated_at)
			SELECT ?, ?, id, '{}', '{}', ?, ?, 1, 'bench', 0, 0 FROM releases WHERE public_id = ?`, tn.ID, fmt.Sprintf("ro_%05d", i), state, flying, r.ID); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	store := NewRolloutStore(db)
	b.ResetTimer()
	for b.Loop() {
		refs, err := store.ActiveRollouts(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if len(refs) != 2*live {
			b.Fatalf("%d active rollouts, want %d", len(refs), 2*live)
		}
	}
}
