package sqlstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"cradle"
)

// BenchmarkPendingUpdate measures a device asking for its pending update
// (what a check-in does) on SQLite: 10,000 devices, all with an attempt in
// flight in one running rollout of a release with two deltas, and a
// finished earlier rollout of every device too; each asks with the digest of
// a delta base, so the answer carries the delta.
//
//	go test -run '^$' -bench BenchmarkPendingUpdate ./internal/sqlstore/
func BenchmarkPendingUpdate(b *testing.B) {
	const devices = 10000
	db, tn, sys := benchStore(b)
	var rows strings.Builder
	for i := range devices {
		fmt.Fprintf(&rows, `{"serial":"bench-%05d","model":"gw-1"}`+"\n", i)
	}
	if rep, err := NewDeviceService(db).ImportDevices(sys, cradle.ImportJSONL, strings.NewReader(rows.String())); err != nil || !rep.Committed {
		b.Fatalf("import: %v %+v", err, rep)
	}
	rel := NewReleaseService(db)
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	var rs []*cradle.Release
	for i, v := range []string{"1.0", "1.1", "2.0"} {
		r, err := rel.CreateRelease(sys, cradle.ReleaseCreate{Model: "gw-1", Version: v, Kind: cradle.ReleaseFile, SHA256: sum(v), Size: 1000, FileName: "fw.bin", SecurityCounter: uint32(i)})
		if err != nil {
			b.Fatal(err)
		}
		var ds []cradle.ReleaseDelta
		for _, base := range rs {
			ds = append(ds, cradle.ReleaseDelta{FromRelease: base.ID, FromSHA256: base.SHA256, FromSize: base.Size, SHA256: sum(base.ID + r.ID), Size: 100, TargetPath: "gw-1/" + v + "/from-" + base.Version})
		}
		if r, err = rel.MarkReleaseSigned(sys, r.ID, "gw-1/"+v+"/fw.bin", ds); err != nil {
			b.Fatal(err)
		}
		rs = append(rs, r)
	}
	// Rollouts are fixtures here: the rollout store is another file's.
	for i, ro := range []struct{ id, state, devState string }{{"ro_old", "completed", "succeeded"}, {"ro_live", "running", "started"}} {
		if _, err := db.wdb.Exec(`INSERT INTO rollouts (tenant_id, public_id, release_id, spec, status, state, revision, created_by, created_at, updated_at)
			SELECT ?, ?, id, '{}', '{}', ?, 1, 'bench', 0, 0 FROM releases WHERE public_id = ?`, tn.ID, ro.id, ro.state, rs[i+1].ID); err != nil {
			b.Fatal(err)
		}
		if _, err := db.wdb.Exec(`INSERT INTO rollout_devices (rollout_id, position, device_id, serial, state, phase, attempt)
			SELECT r.id, d.id, d.id, d.serial, ?, 0, 1 FROM devices d, rollouts r WHERE d.tenant_id = ? AND r.public_id = ?`, ro.devState, tn.ID, ro.id); err != nil {
			b.Fatal(err)
		}
	}
	svc := NewUpdateService(db)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		serial := fmt.Sprintf("bench-%05d", i%devices)
		ctx := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: tn.ID, Role: cradle.RoleDevice, Kind: "device", ID: serial})
		p, err := svc.PendingUpdate(ctx, serial, rs[1].SHA256)
		if err != nil {
			b.Fatal(err)
		}
		if p.Delta == nil || p.Release.ID != rs[2].ID {
			b.Fatalf("pending update: %+v", p)
		}
	}
}
