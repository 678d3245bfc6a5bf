// Command importbench measures the bulk import of devices into the embedded
// SQLite store against a baseline in the same run: a bare batched INSERT of
// the same rows through the same driver, in one transaction, with no parsing,
// validation or audit.
//
//	go run ./bench/importbench -n 1000000
//
// It prints a table of rows/s for both and their ratio. Each is run -runs
// times on a fresh database, alternating, and the median is reported, since
// the machines are shared and noisy.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	_ "modernc.org/sqlite"
)

func main() {
	n := flag.Int("n", 1_000_000, "devices to import")
	runs := flag.Int("runs", 3, "runs of each, alternating")
	flag.Parse()
	if err := run(*n, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "importbench:", err)
		os.Exit(1)
	}
}

func run(n, runs int) error {
	csv := makeCSV(n)
	fmt.Fprintf(os.Stderr, "importbench: %d rows, %.1f MB of CSV, %d runs each\n", n, float64(len(csv))/1e6, runs)
	var ours, bare []float64
	for i := range runs {
		d, err := importOurs(csv, n)
		if err != nil {
			return err
		}
		ours = append(ours, float64(n)/d.Seconds())
		b, err := importBare(n)
		if err != nil {
			return err
		}
		bare = append(bare, float64(n)/b.Seconds())
		fmt.Fprintf(os.Stderr, "run %d: cradle import %v, bare INSERT %v\n", i+1, d.Round(time.Millisecond), b.Round(time.Millisecond))
	}
	o, b := median(ours), median(bare)
	fmt.Printf("%-44s %14s\n", "what", "rows/s (median)")
	fmt.Printf("%-44s %14.0f\n", "cradle import (CSV stream, validate, audit)", o)
	fmt.Printf("%-44s %14.0f\n", "baseline: bare batched INSERT, same rows", b)
	fmt.Printf("%-44s %14.2f   (goal >= 0.50)\n", "ratio", o/b)
	return nil
}

func row(i int) (serial, mac string) {
	return fmt.Sprintf("SN-%08d", i), fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
}

func makeCSV(n int) []byte {
	var b bytes.Buffer
	b.WriteString("serial,model,hardware_revision,macs,labels\n")
	for i := range n {
		s, m := row(i)
		fmt.Fprintf(&b, "%s,gw-100,B2,%s,site=berlin;batch=%d\n", s, m, i/10000)
	}
	return b.Bytes()
}

func freshStore(dir string) (*sqlstore.DB, error) {
	_, key, _ := ed25519.GenerateKey(nil)
	return sqlstore.Open(context.Background(), filepath.Join(dir, "cradle.db"), sqlstore.Options{AuditKey: key})
}

func importOurs(csv []byte, n int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "importbench-*")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, err := freshStore(dir)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	tn, err := sqlstore.NewTenantService(db).CreateTenant(context.Background(), "bench")
	if err != nil {
		return 0, err
	}
	ctx := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(tn.ID, "bench"))
	start := time.Now()
	rep, err := sqlstore.NewDeviceService(db).ImportDevices(ctx, cradle.ImportCSV, bytes.NewReader(csv))
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if !rep.Committed || rep.Accepted != n {
		return 0, fmt.Errorf("import not committed: %+v", rep.Rejected[:min(3, len(rep.Rejected))])
	}
	return d, nil
}

// importBare inserts the same rows with multi-row INSERTs of the same size
// into the same schema, on a connection with the store's pragmas.
func importBare(n int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "importbench-*")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, err := freshStore(dir) // for the schema
	if err != nil {
		return 0, err
	}
	db.Close()
	raw, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "cradle.db")+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	raw.SetMaxOpenConns(1)
	if _, err := raw.Exec(`INSERT INTO tenants (name, created_at) VALUES ('bench', 0)`); err != nil {
		return 0, err
	}
	const batch = 256
	stmt := `INSERT INTO devices (tenant_id, serial, hardware_uid, macs, model, hardware_revision, labels, state, initial_state, created_by, created_at, updated_at, state_changed_at) VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?), ", batch), ", ")
	start := time.Now()
	tx, err := raw.Begin()
	if err != nil {
		return 0, err
	}
	ps, err := tx.Prepare(stmt)
	if err != nil {
		return 0, err
	}
	args := make([]any, 0, batch*13)
	now := time.Now().UnixMicro()
	for i := 0; i < n; i++ {
		s, m := row(i)
		args = append(args, 1, s, "", `["`+m+`"]`, "gw-100", "B2", fmt.Sprintf(`{"batch":"%d","site":"berlin"}`, i/10000), "factory", "factory", "bench", now, now, now)
		if len(args) == batch*13 {
			if _, err := ps.Exec(args...); err != nil {
				return 0, err
			}
			args = args[:0]
		}
	}
	if len(args) > 0 {
		k := len(args) / 13
		if _, err := tx.Exec(strings.TrimSuffix(stmt[:strings.Index(stmt, "VALUES")+7]+strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?), ", k), ", "), args...); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func median(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}
