package sqlstore

import (
	"bufio"
	"container/heap"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"cradle"
)

// importBatch is the number of rows per multi-row INSERT: 13 columns × 256
// rows stays far below both dialects' limits on bound parameters.
const importBatch = 256

const importCols = 13

// ImportDevices registers every row of the stream in one transaction, or
// none. The stream is first copied to a temporary file, so that a slow
// upload never holds the write transaction (on SQLite, the database's only
// writer) open; the transaction then runs at disk speed.
func (s *DeviceService) ImportDevices(ctx context.Context, format cradle.ImportFormat, r io.Reader) (*cradle.ImportReport, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceCreate, "device.import", "devices")
	if err != nil {
		return nil, err
	}
	if format != cradle.ImportCSV && format != cradle.ImportJSONL {
		return nil, cradle.Errorf(cradle.EINVALID, "unknown import format %q: use csv or jsonl", format)
	}
	spool, err := os.CreateTemp("", "cradle-import-*")
	if err != nil {
		return nil, fmt.Errorf("sqlstore: import: spool: %w", err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	if _, err := io.Copy(spool, r); err != nil {
		var ce *cradle.Error
		if errors.As(err, &ce) {
			return nil, ce
		}
		return nil, fmt.Errorf("sqlstore: import: read: %w", err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("sqlstore: import: spool: %w", err)
	}
	rd, err := cradle.NewImportReader(format, bufio.NewReaderSize(spool, 256<<10))
	if err != nil {
		return nil, err
	}

	rep := &cradle.ImportReport{Rejected: []cradle.ImportError{}}
	// Rows are rejected out of line order (a duplicate shows at its batch's
	// INSERT), so the report keeps the rejections with the lowest lines in
	// a max-heap and sorts them at the end.
	var rejected rejectHeap
	reject := func(line int, serial, reason string) {
		rep.RejectedCount++
		e := cradle.ImportError{Line: line, Serial: serial, Reason: reason}
		if len(rejected) < cradle.MaxImportErrors {
			heap.Push(&rejected, e)
		} else if line < rejected[0].Line {
			rejected[0] = e
			heap.Fix(&rejected, 0)
		}
	}
	defer func() {
		rep.Rejected = append(rep.Rejected, rejected...)
		slices.SortFunc(rep.Rejected, func(a, b cradle.ImportError) int { return a.Line - b.Line })
	}()
	digest := sha256.New()
	var rollback = errors.New("rows rejected")
	err = s.db.write(ctx, func(tx *Tx) error {
		ins := newBatchInserter(ctx, tx, a)
		defer ins.close()
		if err := tx.queryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM devices`).Scan(&ins.startID); err != nil {
			return fmt.Errorf("sqlstore: import: %w", err)
		}
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			row, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				var ce *cradle.Error
				if errors.As(err, &ce) {
					return ce
				}
				return fmt.Errorf("sqlstore: import: %w", err)
			}
			if row.Err != nil {
				reject(row.Line, row.Device.Serial, cradle.ErrorMessage(row.Err))
				continue
			}
			if err := ins.add(row); err != nil {
				return err
			}
			if ins.full() {
				if err := ins.flush(reject, digest); err != nil {
					return err
				}
			}
		}
		if err := ins.flush(reject, digest); err != nil {
			return err
		}
		rep.Accepted = ins.inserted
		if rep.RejectedCount > 0 {
			return rollback
		}
		// Config groups whose selector matches the new devices reach them now.
		if err := tx.twinsForNewDevices(ctx, a.TenantID, ""); err != nil {
			return err
		}
		rep.Committed = true
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.import", Subject: "devices",
			Details: map[string]any{"format": format, "accepted": rep.Accepted, "serials_sha256": hex.EncodeToString(digest.Sum(nil))}})
	})
	if errors.Is(err, rollback) {
		rep.Committed = false
		s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.import.rejected", Subject: "devices",
			Details: map[string]any{"format": format, "valid_rows": rep.Accepted, "rejected_rows": rep.RejectedCount}}, nil)
		return rep, nil
	}
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// batchInserter collects rows and inserts them with one statement per batch.
type batchInserter struct {
	ctx      context.Context
	tx       *Tx
	actor    string
	tenant   int64
	now      int64
	rows     []cradle.ImportRow
	args     []any
	serials  map[string]int // serial → line, within the current batch
	full1    *sql.Stmt      // prepared statement for a full batch
	startID  int64          // the highest device id before the import
	inserted int
}

func newBatchInserter(ctx context.Context, tx *Tx, a cradle.Actor) *batchInserter {
	return &batchInserter{ctx: ctx, tx: tx, actor: a.String(), tenant: a.TenantID, now: micros(tx.now),
		rows: make([]cradle.ImportRow, 0, importBatch), args: make([]any, 0, importBatch*importCols),
		serials: make(map[string]int, importBatch)}
}

func (b *batchInserter) full() bool { return len(b.rows) == importBatch }

func (b *batchInserter) close() {
	if b.full1 != nil {
		b.full1.Close()
	}
}

func (b *batchInserter) add(row cradle.ImportRow) error {
	enc, err := encodeDevice(&row.Device)
	if err != nil {
		return fmt.Errorf("sqlstore: import: %w", err)
	}
	d := &row.Device
	b.rows = append(b.rows, row)
	b.args = append(b.args, b.tenant, d.Serial, d.HardwareUID, enc.macs, d.Model, d.HardwareRevision, enc.labels,
		string(d.State), string(d.State), b.actor, b.now, b.now, b.now)
	return nil
}

func insertSQL(n int) string {
	var sb strings.Builder
	sb.WriteString(`INSERT INTO devices (tenant_id, serial, hardware_uid, macs, model, hardware_revision, labels, state, initial_state, created_by, created_at, updated_at, state_changed_at) VALUES `)
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
	}
	sb.WriteString(` ON CONFLICT (tenant_id, serial) DO NOTHING RETURNING serial`)
	return sb.String()
}

// flush inserts the collected rows. A serial that is already registered, or
// that appeared earlier in the import, is not inserted and its row is
// rejected with the reason.
func (b *batchInserter) flush(reject func(int, string, string), digest io.Writer) error {
	if len(b.rows) == 0 {
		return nil
	}
	// Duplicates inside one statement are found here; the database finds the
	// rest.
	clear(b.serials)
	var dupInBatch []int
	for i, r := range b.rows {
		if _, seen := b.serials[r.Device.Serial]; seen {
			dupInBatch = append(dupInBatch, i)
			continue
		}
		b.serials[r.Device.Serial] = r.Line
	}
	rows, args := b.rows, b.args
	if len(dupInBatch) > 0 {
		rows, args = make([]cradle.ImportRow, 0, len(b.rows)), make([]any, 0, len(b.args))
		for i, r := range b.rows {
			if len(dupInBatch) > 0 && dupInBatch[0] == i {
				dupInBatch = dupInBatch[1:]
				reject(r.Line, r.Device.Serial, fmt.Sprintf("serial %q appears earlier in this import (line %d)", r.Device.Serial, b.serials[r.Device.Serial]))
				continue
			}
			rows = append(rows, r)
			args = append(args, b.args[i*importCols:(i+1)*importCols]...)
		}
	}
	var res *sql.Rows
	var err error
	if len(rows) == importBatch {
		if b.full1 == nil {
			if b.full1, err = b.tx.tx.PrepareContext(b.ctx, b.tx.db.dialect.rebind(insertSQL(importBatch))); err != nil {
				return fmt.Errorf("sqlstore: import: %w", err)
			}
		}
		res, err = b.full1.QueryContext(b.ctx, args...)
	} else {
		res, err = b.tx.query(b.ctx, insertSQL(len(rows)), args...)
	}
	if err != nil {
		return fmt.Errorf("sqlstore: import: %w", err)
	}
	got := make(map[string]bool, len(rows))
	for res.Next() {
		var s string
		if err := res.Scan(&s); err != nil {
			res.Close()
			return fmt.Errorf("sqlstore: import: %w", err)
		}
		got[s] = true
	}
	res.Close()
	if err := res.Err(); err != nil {
		return fmt.Errorf("sqlstore: import: %w", err)
	}
	for _, r := range rows {
		if got[r.Device.Serial] {
			b.inserted++
			io.WriteString(digest, r.Device.Serial+"\n")
			continue
		}
		reason, err := b.conflictReason(r.Device.Serial)
		if err != nil {
			return err
		}
		reject(r.Line, r.Device.Serial, reason)
	}
	b.rows, b.args = b.rows[:0], b.args[:0]
	return nil
}

// conflictReason tells apart a serial registered before the import from one
// this import inserted from an earlier line.
func (b *batchInserter) conflictReason(serial string) (string, error) {
	var by string
	var id, at int64
	err := b.tx.queryRow(b.ctx, `SELECT id, created_by, created_at FROM devices WHERE tenant_id = ? AND serial = ?`, b.tenant, serial).Scan(&id, &by, &at)
	if err != nil {
		return "", fmt.Errorf("sqlstore: import: %w", err)
	}
	if id > b.startID && by == b.actor && at == b.now {
		return fmt.Sprintf("serial %q appears earlier in this import", serial), nil
	}
	return fmt.Sprintf("device %q already exists in this tenant", serial), nil
}

// rejectHeap is a max-heap of rejected rows by line.
type rejectHeap []cradle.ImportError

func (h rejectHeap) Len() int           { return len(h) }
func (h rejectHeap) Less(i, j int) bool { return h[i].Line > h[j].Line }
func (h rejectHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *rejectHeap) Push(x any)        { *h = append(*h, x.(cradle.ImportError)) }
func (h *rejectHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
