// Package sqlstore implements Cradle's services on a SQL database: SQLite
// (modernc.org/sqlite, pure Go, WAL) by default, and PostgreSQL (pgx) for
// deployments with several server replicas.
//
// There is one implementation of every query; a small dialect shim covers what
// differs (placeholders, row locks, JSON access to labels, unique-violation
// detection), and each dialect has its own embedded migrations.
//
// Every change runs in one transaction together with the audit entry that
// records it and the re-signed head of its tenant's audit chain, so a change is
// never stored without its audit entry and the chain never gets ahead of its
// signature. Refusals (authorization, lifecycle) are audited in a transaction
// of their own after the refused one has been rolled back.
//
// On SQLite, writes go through a pool of one connection whose transactions
// begin IMMEDIATE, so writers queue in Go instead of failing with SQLITE_BUSY;
// reads use a separate pool and never wait for writers (WAL). On PostgreSQL,
// the per-tenant audit head row is locked FOR UPDATE, which serializes the
// audited writes of one tenant across replicas.
package sqlstore

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"cradle"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations
var migrations embed.FS

// Options configure a DB. AuditKey is required.
type Options struct {
	AuditKey    ed25519.PrivateKey // signs audit checkpoints
	WitnessPath string             // optional file the newest signed checkpoints are copied to
	Clock       cradle.Clock       // nil: system clock
	Logger      *slog.Logger       // nil: discard
}

// DB is an open store.
type DB struct {
	dialect *dialect
	rdb     *sql.DB // reads
	wdb     *sql.DB // writes (the same pool as rdb on PostgreSQL)
	key     ed25519.PrivateKey
	pub     ed25519.PublicKey
	clock   cradle.Clock
	logger  *slog.Logger
	witness string

	mu      sync.Mutex
	heads   map[int64]cradle.AuditCheckpoint // newest committed signed heads, for the witness
	dirty   bool
	stop    chan struct{}
	stopped chan struct{}
	closed  bool

	tokens     tokenCache
	background sync.WaitGroup // writes started off the request path
	stmts      sync.Map       // query text → *sql.Stmt on rdb, for the hot reads
	onTwin     func([]cradle.TwinChange)
	onRevoke   func([]*cradle.Certificate) // SetRevocationNotifier
}

// Open opens (creating if needed) the database and runs the embedded
// migrations. dsn is a file path or "sqlite:"+path for SQLite, or a
// "postgres://" or "postgresql://" URL for PostgreSQL.
func Open(ctx context.Context, dsn string, opts Options) (*DB, error) {
	if len(opts.AuditKey) != ed25519.PrivateKeySize {
		return nil, errors.New("sqlstore: open: an Ed25519 audit key is required")
	}
	db := &DB{
		key:     opts.AuditKey,
		pub:     opts.AuditKey.Public().(ed25519.PublicKey),
		clock:   opts.Clock,
		logger:  opts.Logger,
		witness: opts.WitnessPath,
		heads:   map[int64]cradle.AuditCheckpoint{},
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if db.logger == nil {
		db.logger = slog.New(slog.DiscardHandler)
	}
	db.tokens.entries = map[string]tokenCacheEntry{}
	var err error
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		err = db.openPostgres(dsn)
	default:
		err = db.openSQLite(strings.TrimPrefix(dsn, "sqlite:"))
	}
	if err != nil {
		return nil, err
	}
	if err := db.migrate(ctx); err != nil {
		db.closePools()
		return nil, err
	}
	if err := db.checkAuditKey(ctx); err != nil {
		db.closePools()
		return nil, err
	}
	if err := db.ensureHead(ctx, 0); err != nil {
		db.closePools()
		return nil, err
	}
	go db.flushLoop()
	return db, nil
}

func (db *DB) openSQLite(path string) error {
	if path == "" {
		return errors.New("sqlstore: open: empty SQLite path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("sqlstore: open: %w", err)
		}
	}
	base := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	// The writer gets a 64 MiB page cache (SQLite's default is 2 MiB), so
	// a big transaction (a rollout over a million devices) keeps its
	// pages in memory instead of spilling them to the WAL again and again.
	w, err := sql.Open("sqlite", base+"&_txlock=immediate&_pragma=cache_size(-65536)")
	if err != nil {
		return fmt.Errorf("sqlstore: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.Ping(); err != nil {
		w.Close()
		return fmt.Errorf("sqlstore: open %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", base+"&_pragma=query_only(1)&_pragma=mmap_size(1073741824)")
	if err != nil {
		w.Close()
		return fmt.Errorf("sqlstore: open %s: %w", path, err)
	}
	n := max(4, 2*runtime.NumCPU())
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	r.SetConnMaxIdleTime(0)
	r.SetConnMaxLifetime(0)
	db.rdb, db.wdb, db.dialect = r, w, sqliteDialect
	return nil
}

func (db *DB) openPostgres(dsn string) error {
	p, err := sql.Open("pgx", dsn)
	if err != nil {
		return fmt.Errorf("sqlstore: open postgres: %w", err)
	}
	p.SetMaxOpenConns(32)
	p.SetMaxIdleConns(32)
	p.SetConnMaxIdleTime(5 * time.Minute)
	if err := p.Ping(); err != nil {
		p.Close()
		return fmt.Errorf("sqlstore: open postgres: %w", err)
	}
	db.rdb, db.wdb, db.dialect = p, p, postgresDialect
	return nil
}

// Dialect returns "sqlite" or "postgres".
func (db *DB) Dialect() string { return db.dialect.name }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.rdb.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlstore: ping: %w", err)
	}
	return nil
}

// AuditPublicKey returns the key that verifies audit checkpoints.
func (db *DB) AuditPublicKey() ed25519.PublicKey { return db.pub }

// Close flushes the audit witness, checkpoints the SQLite WAL into the main
// file and closes the database. It is safe to call more than once.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return nil
	}
	db.closed = true
	db.mu.Unlock()
	close(db.stop)
	<-db.stopped
	db.background.Wait()
	err := db.flushWitness()
	if db.dialect == sqliteDialect {
		if _, cerr := db.wdb.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); cerr != nil && err == nil {
			err = fmt.Errorf("sqlstore: close: checkpoint: %w", cerr)
		}
	}
	if cerr := db.closePools(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

func (db *DB) closePools() error {
	var err error
	db.stmts.Range(func(k, st any) bool {
		st.(*sql.Stmt).Close()
		db.stmts.Delete(k)
		return true
	})
	if db.rdb != db.wdb {
		err = db.rdb.Close()
	}
	if cerr := db.wdb.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sqlstore: close: %w", err)
	}
	return nil
}

func (db *DB) now() time.Time {
	return cradle.Now(db.clock).UTC().Truncate(cradle.AuditTimePrecision)
}

// migrate applies the dialect's migrations that have not run yet, each in
// its own transaction. On PostgreSQL an advisory lock keeps replicas that
// start together from racing.
func (db *DB) migrate(ctx context.Context) error {
	dir := "migrations/" + db.dialect.name
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sql") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	tx, err := db.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	defer tx.Rollback()
	if db.dialect == postgresDialect {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(7243001)"); err != nil {
			return fmt.Errorf("sqlstore: migrate: lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("sqlstore: migrate: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	for _, name := range names {
		v, err := strconv.Atoi(strings.SplitN(name, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("sqlstore: migrate: bad migration name %s", name)
		}
		if applied[v] {
			continue
		}
		body, err := migrations.ReadFile(dir + "/" + name)
		if err != nil {
			return fmt.Errorf("sqlstore: migrate: %w", err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			return fmt.Errorf("sqlstore: migrate %s: %w", name, err)
		}
		if _, err := tx.ExecContext(ctx, db.dialect.rebind(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`), v, name, db.now().UnixMicro()); err != nil {
			return fmt.Errorf("sqlstore: migrate %s: %w", name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlstore: migrate: %w", err)
	}
	return nil
}

// dialect is what differs between SQLite and PostgreSQL.
type dialect struct {
	name string
	// rebind turns '?' placeholders into the dialect's.
	rebind func(string) string
	// forUpdate is appended to a SELECT that locks the rows it reads.
	forUpdate string
	// labelValue returns an expression for the value of label key, and its
	// argument.
	labelValue func(key string) (string, any)
	// labelEquals returns a condition that label key has value v, and its
	// arguments.
	labelEquals func(key, v string) (string, []any)
	// uniqueViolation reports whether err is a unique-constraint failure.
	uniqueViolation func(error) bool
}

var sqliteDialect = &dialect{
	name:      "sqlite",
	rebind:    func(q string) string { return q },
	forUpdate: "",
	labelValue: func(k string) (string, any) {
		return "json_extract(labels, ?)", `$."` + k + `"`
	},
	labelEquals: func(k, v string) (string, []any) {
		return "json_extract(labels, ?) = ?", []any{`$."` + k + `"`, v}
	},
	uniqueViolation: func(err error) bool {
		var e *sqlite.Error
		return errors.As(err, &e) && (e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
	},
}

var postgresDialect = &dialect{
	name:      "postgres",
	rebind:    rebindDollar,
	forUpdate: " FOR UPDATE",
	labelValue: func(k string) (string, any) {
		return "labels->>?", k
	},
	labelEquals: func(k, v string) (string, []any) {
		doc, _ := json.Marshal(map[string]string{k: v})
		return "labels @> ?::jsonb", []any{string(doc)}
	},
	uniqueViolation: func(err error) bool {
		var e *pgconn.PgError
		return errors.As(err, &e) && e.Code == "23505"
	},
}

// rebindDollar numbers '?' placeholders as $1, $2, …. Our queries never hold
// a '?' inside a string literal.
func rebindDollar(q string) string {
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// Tx is a write transaction that can append audit entries.
type Tx struct {
	tx    *sql.Tx
	db    *DB
	now   time.Time
	heads map[int64]cradle.AuditCheckpoint
	twins []cradle.TwinChange // effective desired documents changed in the transaction
	// revoked are the certificates revoked in the transaction, for the
	// revocation notifier.
	revoked []*cradle.Certificate
	// tokensRevoked: the transaction revoked device tokens (the notifier
	// is told even when no certificate was revoked, for token caches).
	tokensRevoked bool
}

func (tx *Tx) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return tx.tx.ExecContext(ctx, tx.db.dialect.rebind(q), args...)
}

func (tx *Tx) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return tx.tx.QueryContext(ctx, tx.db.dialect.rebind(q), args...)
}

func (tx *Tx) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return tx.tx.QueryRowContext(ctx, tx.db.dialect.rebind(q), args...)
}

// write runs fn in a write transaction and commits it when fn returns nil.
// Audit heads signed in the transaction are published to the witness only
// after the commit.
func (db *DB) write(ctx context.Context, fn func(*Tx) error) error {
	sqlTx, err := db.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlstore: begin: %w", err)
	}
	tx := &Tx{tx: sqlTx, db: db, now: db.now(), heads: map[int64]cradle.AuditCheckpoint{}}
	if err := fn(tx); err != nil {
		sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("sqlstore: commit: %w", err)
	}
	if len(tx.heads) > 0 {
		db.mu.Lock()
		for id, cp := range tx.heads {
			if cur, ok := db.heads[id]; !ok || cp.Seq > cur.Seq {
				db.heads[id] = cp
			}
		}
		db.dirty = true
		db.mu.Unlock()
	}
	if len(tx.twins) > 0 && db.onTwin != nil {
		db.onTwin(tx.twins)
	}
	if (len(tx.revoked) > 0 || tx.tokensRevoked) && db.onRevoke != nil {
		db.onRevoke(tx.revoked)
	}
	return nil
}

func (db *DB) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return db.rdb.QueryContext(ctx, db.dialect.rebind(q), args...)
}

func (db *DB) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return db.rdb.QueryRowContext(ctx, db.dialect.rebind(q), args...)
}

// queryRowPrepared is queryRow for a query of constant text on a hot path:
// the statement is prepared once and reused, so SQLite does not parse and
// plan it on every call (a third of a device lookup's time). Queries built
// from filters must not use it: their texts are unbounded.
func (db *DB) queryRowPrepared(ctx context.Context, q string, args ...any) *sql.Row {
	if st, ok := db.stmts.Load(q); ok {
		return st.(*sql.Stmt).QueryRowContext(ctx, args...)
	}
	st, err := db.rdb.PrepareContext(ctx, db.dialect.rebind(q))
	if err != nil {
		// QueryRow reports the same error when the row is scanned.
		return db.rdb.QueryRowContext(ctx, db.dialect.rebind(q), args...)
	}
	if prev, loaded := db.stmts.LoadOrStore(q, st); loaded {
		st.Close()
		st = prev.(*sql.Stmt)
	}
	return st.QueryRowContext(ctx, args...)
}

// checkAuditKey refuses a key that signed none of the store's chain heads:
// the store was created with another key (lost, or the wrong data
// directory), and every write would extend chains that can no longer be
// verified. Some heads failing alone is tampering, which verification
// reports; the server still starts.
func (db *DB) checkAuditKey(ctx context.Context) error {
	rows, err := db.query(ctx, `SELECT tenant_id, seq, hash, time, signature FROM audit_heads`)
	if err != nil {
		return fmt.Errorf("sqlstore: open: audit heads: %w", err)
	}
	defer rows.Close()
	var heads, bad int
	for rows.Next() {
		var c cradle.AuditCheckpoint
		var t int64
		var sig string
		if err := rows.Scan(&c.TenantID, &c.Seq, &c.Hash, &t, &sig); err != nil {
			return fmt.Errorf("sqlstore: open: audit heads: %w", err)
		}
		c.Time = fromMicros(t)
		c.Signature, _ = base64.StdEncoding.DecodeString(sig)
		heads++
		if !c.Verify(db.pub) {
			bad++
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlstore: open: audit heads: %w", err)
	}
	switch {
	case heads > 0 && bad == heads:
		return fmt.Errorf("sqlstore: open: the audit key does not match the key that signed this store's audit log (none of its %d chain heads verifies); start with the audit key the store was created with, restored from backup", heads)
	case bad > 0:
		db.logger.Error("audit chain heads with a bad signature: the audit log was tampered with; run cradle audit verify", "bad", bad, "heads", heads)
	}
	return nil
}

// ensureHead creates the signed empty head (sequence 0) of a tenant's chain
// if it has none, so that appends can always lock an existing row.
func (db *DB) ensureHead(ctx context.Context, tenantID int64) error {
	return db.write(ctx, func(tx *Tx) error { return tx.ensureHead(ctx, tenantID) })
}

func (tx *Tx) ensureHead(ctx context.Context, tenantID int64) error {
	cp := cradle.AuditCheckpoint{TenantID: tenantID, Seq: 0, Hash: cradle.GenesisHash, Time: tx.now}
	cp.Sign(tx.db.key)
	_, err := tx.exec(ctx, `INSERT INTO audit_heads (tenant_id, seq, hash, time, signature) VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id) DO NOTHING`,
		tenantID, cp.Seq, cp.Hash, cp.Time.UnixMicro(), base64.StdEncoding.EncodeToString(cp.Signature))
	if err != nil {
		return fmt.Errorf("sqlstore: audit head: %w", err)
	}
	return nil
}

// audit appends an entry to the tenant's chain and re-signs its head, in tx.
func (tx *Tx) audit(ctx context.Context, tenantID int64, actor string, ev cradle.AuditEvent) error {
	details := []byte("{}")
	if ev.Details != nil {
		var err error
		if details, err = json.Marshal(ev.Details); err != nil {
			return fmt.Errorf("sqlstore: audit details: %w", err)
		}
	}
	var seq int64
	var prev string
	err := tx.queryRow(ctx, `SELECT seq, hash FROM audit_heads WHERE tenant_id = ?`+tx.db.dialect.forUpdate, tenantID).Scan(&seq, &prev)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("sqlstore: audit: tenant %d has no audit head", tenantID)
	} else if err != nil {
		return fmt.Errorf("sqlstore: audit head: %w", err)
	}
	e := cradle.AuditEntry{TenantID: tenantID, Seq: seq + 1, Time: tx.now, Actor: actor, Action: ev.Action,
		Subject: ev.Subject, Details: details, PrevHash: prev}
	e.Hash = e.ComputeHash()
	if _, err := tx.exec(ctx, `INSERT INTO audit_entries (tenant_id, seq, time, actor, action, subject, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.TenantID, e.Seq, e.Time.UnixMicro(), e.Actor, e.Action, e.Subject, string(e.Details), e.PrevHash, e.Hash); err != nil {
		return fmt.Errorf("sqlstore: audit append: %w", err)
	}
	cp := cradle.AuditCheckpoint{TenantID: tenantID, Seq: e.Seq, Hash: e.Hash, Time: tx.now}
	cp.Sign(tx.db.key)
	if _, err := tx.exec(ctx, `UPDATE audit_heads SET seq = ?, hash = ?, time = ?, signature = ? WHERE tenant_id = ?`,
		cp.Seq, cp.Hash, cp.Time.UnixMicro(), base64.StdEncoding.EncodeToString(cp.Signature), tenantID); err != nil {
		return fmt.Errorf("sqlstore: audit head: %w", err)
	}
	tx.heads[tenantID] = cp
	return nil
}

// refuse records a refused request in its own transaction and returns err.
// A failure to record is logged; the refusal stands either way.
func (db *DB) refuse(ctx context.Context, tenantID int64, actor string, ev cradle.AuditEvent, err error) error {
	if ev.Details == nil {
		ev.Details = map[string]string{"reason": cradle.ErrorMessage(err)}
	}
	// Record the refusal even when the request's context has ended.
	actx := context.WithoutCancel(ctx)
	if aerr := db.write(actx, func(tx *Tx) error { return tx.audit(actx, tenantID, actor, ev) }); aerr != nil {
		db.logger.Error("audit of a refusal failed", "action", ev.Action, "subject", ev.Subject, "err", aerr)
	}
	return err
}

// ownDevice refuses a device actor acting on another device than itself:
// EFORBIDDEN ("device %q may not <what> of device %q"), audited as action.
// Other actors pass.
func (db *DB) ownDevice(ctx context.Context, a cradle.Actor, serial, what, action string) error {
	if a.Role != cradle.RoleDevice || a.ID == serial {
		return nil
	}
	err := cradle.Errorf(cradle.EFORBIDDEN, "device %q may not %s of device %q", a.ID, what, serial)
	return db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: "device:" + serial}, err)
}

// authorize checks the actor in ctx for p and audits a refusal.
func (db *DB) authorize(ctx context.Context, p cradle.Permission, action, subject string) (cradle.Actor, error) {
	a, err := cradle.Authorize(ctx, p)
	if err == nil {
		return a, nil
	}
	name := "anonymous"
	if _, ok := cradle.ActorFromContext(ctx); ok {
		name = a.String()
	}
	return a, db.refuse(ctx, a.TenantID, name, cradle.AuditEvent{Action: action + ".refused", Subject: subject,
		Details: map[string]string{"reason": cradle.ErrorMessage(err), "permission": string(p)}}, err)
}

// flushLoop copies new signed heads to the witness file every second.
func (db *DB) flushLoop() {
	defer close(db.stopped)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
			if err := db.flushWitness(); err != nil {
				db.logger.Error("audit witness not written", "path", db.witness, "err", err)
			}
		}
	}
}

// witnessFile is the witness file's format.
type witnessFile struct {
	Comment     string                   `json:"comment"`
	Checkpoints []cradle.AuditCheckpoint `json:"checkpoints"`
}

// flushWitness writes the newest signed heads to the witness file, merged
// with what it already holds, atomically (temporary file, fsync, rename).
func (db *DB) flushWitness() error {
	if db.witness == "" {
		return nil
	}
	db.mu.Lock()
	if !db.dirty {
		db.mu.Unlock()
		return nil
	}
	heads := make(map[int64]cradle.AuditCheckpoint, len(db.heads))
	for k, v := range db.heads {
		heads[k] = v
	}
	db.dirty = false
	db.mu.Unlock()

	old, err := ReadWitness(db.witness)
	if err != nil {
		return err
	}
	for id, cp := range old {
		if cur, ok := heads[id]; !ok || cur.Seq < cp.Seq {
			heads[id] = *cp
		}
	}
	wf := witnessFile{Comment: "newest signed audit checkpoints seen by this server; do not edit"}
	for _, cp := range heads {
		wf.Checkpoints = append(wf.Checkpoints, cp)
	}
	sort.Slice(wf.Checkpoints, func(i, j int) bool { return wf.Checkpoints[i].TenantID < wf.Checkpoints[j].TenantID })
	data, err := json.MarshalIndent(wf, "", "  ")
	if err != nil {
		return err
	}
	tmp := db.witness + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("sqlstore: witness: %w", err)
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("sqlstore: witness: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sqlstore: witness: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("sqlstore: witness: %w", err)
	}
	if err := os.Rename(tmp, db.witness); err != nil {
		return fmt.Errorf("sqlstore: witness: %w", err)
	}
	return nil
}

// ReadWitness reads a witness file; a missing file is an empty witness.
func ReadWitness(path string) (map[int64]*cradle.AuditCheckpoint, error) {
	out := map[int64]*cradle.AuditCheckpoint{}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: witness: %w", err)
	}
	var wf witnessFile
	if err := json.Unmarshal(data, &wf); err != nil {
		return nil, fmt.Errorf("sqlstore: witness %s is corrupt: %w", path, err)
	}
	for i := range wf.Checkpoints {
		cp := wf.Checkpoints[i]
		out[cp.TenantID] = &cp
	}
	return out, nil
}

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullMicros(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMicro()
}

func fromNullMicros(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromMicros(n.Int64)
	return &t
}

// queryPrepared is query for a query of constant text on a hot path,
// prepared once like queryRowPrepared (a device's update check reads its
// release and deltas with it). Queries built from filters must not use it.
func (db *DB) queryPrepared(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st, ok := db.stmts.Load(q); ok {
		return st.(*sql.Stmt).QueryContext(ctx, args...)
	}
	st, err := db.rdb.PrepareContext(ctx, db.dialect.rebind(q))
	if err != nil {
		return nil, err
	}
	if prev, loaded := db.stmts.LoadOrStore(q, st); loaded {
		st.Close()
		st = prev.(*sql.Stmt)
	}
	return st.QueryContext(ctx, args...)
}
