package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"cradle"
	"cradle/internal/command"
)

// CommandSigner signs a command with the command signer key and returns
// the envelope JSON (command.Sign with the key and chain loaded by serve).
type CommandSigner func(command.Command) ([]byte, error)

// CommandService implements cradle.CommandService. The sequence number of
// a command is allocated in the transaction that stores its signed
// envelope, with the device row locked: strictly increasing per device and
// never reused, also with several servers on one PostgreSQL database.
type CommandService struct {
	db   *DB
	sign CommandSigner
}

var _ cradle.CommandService = (*CommandService)(nil)

// NewCommandService returns the command store of db; sign signs every
// command issued.
func NewCommandService(db *DB, sign CommandSigner) *CommandService {
	return &CommandService{db: db, sign: sign}
}

const commandCols = `c.id, c.public_id, d.serial, c.sequence, c.kind, c.args, c.state, c.error, c.issued_by, c.issued_at, c.expires_at, c.delivered_at, c.finished_at, COALESCE(LENGTH(c.logs), 0)`

func scanCommand(sc interface{ Scan(...any) error }, now time.Time) (int64, *cradle.DeviceCommand, error) {
	var id int64
	c := &cradle.DeviceCommand{Results: []cradle.CommandResult{}}
	var kind, args, state string
	var issued, expires int64
	var delivered, finished sql.NullInt64
	var seq int64
	if err := sc.Scan(&id, &c.ID, &c.Device, &seq, &kind, &args, &state, &c.Error, &c.IssuedBy, &issued, &expires, &delivered, &finished, &c.LogsSize); err != nil {
		return 0, nil, err
	}
	c.Sequence, c.Kind, c.State = uint64(seq), cradle.CommandKind(kind), cradle.CommandState(state)
	if args != "" {
		c.Args = []byte(args)
	}
	c.IssuedAt, c.ExpiresAt = fromMicros(issued), fromMicros(expires)
	c.DeliveredAt, c.FinishedAt = fromNullMicros(delivered), fromNullMicros(finished)
	if !c.State.Finished() && !now.Before(c.ExpiresAt) {
		c.State = cradle.CommandExpired
	}
	return id, c, nil
}

func newCommandID() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("sqlstore: command id: %w", err)
	}
	return "cmd_" + hex.EncodeToString(b[:]), nil
}

func commandNotFound(serial, id string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "command %q of device %q not found", id, serial)
}

// IssueCommand signs and stores a command for a deployed device.
func (s *CommandService) IssueCommand(ctx context.Context, serial string, r cradle.CommandRequest) (*cradle.DeviceCommand, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermCommandIssue, "command.issue", subject)
	if err != nil {
		return nil, err
	}
	if err := r.Normalize(); err != nil {
		return nil, err
	}
	id, err := newCommandID()
	if err != nil {
		return nil, err
	}
	var out *cradle.DeviceCommand
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		if d.State != cradle.StateDeployed {
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q is %s; commands go only to deployed devices", serial, d.State)
			return refused
		}
		out, err = tx.issueCommand(ctx, a, d, s.sign, id, r)
		return err
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.issue.refused", Subject: subject,
			Details: map[string]string{"kind": string(r.Kind), "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// issueCommand signs r (normalized by the caller) for the locked device d
// with its next sequence number, stores it pending and audits it. The
// sequence is allocated under the device's row lock, so it is strictly
// increasing and never reused.
func (tx *Tx) issueCommand(ctx context.Context, a cradle.Actor, d *cradle.Device, sign CommandSigner, id string, r cradle.CommandRequest) (*cradle.DeviceCommand, error) {
	var last int64
	if err := tx.queryRow(ctx, `SELECT COALESCE(MAX(sequence), 0) FROM device_commands WHERE device_id = ?`, d.ID).Scan(&last); err != nil {
		return nil, fmt.Errorf("sqlstore: issue command: %w", err)
	}
	now := tx.now.Truncate(time.Microsecond)
	cmd := command.Command{ID: id, Device: d.Serial, Kind: command.Kind(r.Kind), Args: r.Args, Sequence: uint64(last) + 1,
		IssuedAt: now, ExpiresAt: now.Add(time.Duration(r.TTLSeconds) * time.Second)}
	env, err := sign(cmd)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: issue command: sign: %w", err)
	}
	if _, err := tx.exec(ctx, `INSERT INTO device_commands (tenant_id, device_id, public_id, sequence, kind, args, envelope, state, issued_by, issued_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.TenantID, d.ID, id, int64(cmd.Sequence), string(r.Kind), string(r.Args), env, string(cradle.CommandPending), a.String(), micros(cmd.IssuedAt), micros(cmd.ExpiresAt)); err != nil {
		return nil, fmt.Errorf("sqlstore: issue command: %w", err)
	}
	out := &cradle.DeviceCommand{ID: id, Device: d.Serial, Kind: r.Kind, Args: r.Args, Sequence: cmd.Sequence, State: cradle.CommandPending,
		IssuedBy: a.String(), IssuedAt: cmd.IssuedAt, ExpiresAt: cmd.ExpiresAt, Results: []cradle.CommandResult{}}
	return out, tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.issue", Subject: "device:" + d.Serial,
		Details: map[string]any{"id": id, "kind": r.Kind, "sequence": cmd.Sequence, "expires_at": cmd.ExpiresAt, "args": string(r.Args)}})
}

// results fills in the results of commands, keyed by row id.
func (s *CommandService) results(ctx context.Context, byID map[int64]*cradle.DeviceCommand) error {
	if len(byID) == 0 {
		return nil
	}
	ids := make([]any, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	ph := strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", ")
	rows, err := s.db.query(ctx, `SELECT command_id, status, error, sequence, at, received_at FROM device_command_results WHERE command_id IN (`+ph+`) ORDER BY id`, ids...)
	if err != nil {
		return fmt.Errorf("sqlstore: command results: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var cid, seq, at, recv int64
		var status, msg string
		if err := rows.Scan(&cid, &status, &msg, &seq, &at, &recv); err != nil {
			return fmt.Errorf("sqlstore: command results: %w", err)
		}
		c := byID[cid]
		c.Results = append(c.Results, cradle.CommandResult{CommandID: c.ID, Sequence: uint64(seq), Status: cradle.CommandState(status), Error: msg, At: fromMicros(at), ReceivedAt: fromMicros(recv)})
	}
	return rows.Err()
}

// FindDeviceCommand returns one command of a device.
func (s *CommandService) FindDeviceCommand(ctx context.Context, serial, id string) (*cradle.DeviceCommand, error) {
	a, err := s.db.authorize(ctx, cradle.PermCommandRead, "command.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	rid, c, err := scanCommand(s.db.queryRow(ctx, `SELECT `+commandCols+` FROM device_commands c JOIN devices d ON d.id = c.device_id WHERE c.device_id = ? AND c.public_id = ?`, devID, id), s.db.now())
	if errors.Is(err, sql.ErrNoRows) {
		return nil, commandNotFound(serial, id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find command: %w", err)
	}
	if err := s.results(ctx, map[int64]*cradle.DeviceCommand{rid: c}); err != nil {
		return nil, err
	}
	return c, nil
}

// FindDeviceCommands lists a device's commands, newest first.
func (s *CommandService) FindDeviceCommands(ctx context.Context, serial string, f cradle.CommandFilter) ([]*cradle.DeviceCommand, error) {
	a, err := s.db.authorize(ctx, cradle.PermCommandRead, "command.list", "device:"+serial)
	if err != nil {
		return nil, err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	now := s.db.now()
	where, args := "c.device_id = ?", []any{devID}
	if f.State != nil {
		switch st := *f.State; st {
		case cradle.CommandPending, cradle.CommandDelivered:
			where, args = where+" AND c.state = ? AND c.expires_at > ?", append(args, string(st), micros(now))
		case cradle.CommandExpired:
			where, args = where+" AND c.state IN ('pending', 'delivered') AND c.expires_at <= ?", append(args, micros(now))
		case cradle.CommandDone, cradle.CommandRefused, cradle.CommandFailed:
			where, args = where+" AND c.state = ?", append(args, string(st))
		default:
			return nil, cradle.Errorf(cradle.EINVALID, "unknown command state %q: use pending, delivered, done, refused, failed or expired", st)
		}
	}
	rows, err := s.db.query(ctx, `SELECT `+commandCols+` FROM device_commands c JOIN devices d ON d.id = c.device_id WHERE `+where+` ORDER BY c.sequence DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find commands: %w", err)
	}
	out, byID, err := s.scanAll(rows, now)
	if err != nil {
		return nil, err
	}
	if err := s.results(ctx, byID); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *CommandService) scanAll(rows *sql.Rows, now time.Time) ([]*cradle.DeviceCommand, map[int64]*cradle.DeviceCommand, error) {
	defer rows.Close()
	out := []*cradle.DeviceCommand{}
	byID := map[int64]*cradle.DeviceCommand{}
	for rows.Next() {
		id, c, err := scanCommand(rows, now)
		if err != nil {
			return nil, nil, fmt.Errorf("sqlstore: find commands: %w", err)
		}
		out = append(out, c)
		byID[id] = c
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("sqlstore: find commands: %w", err)
	}
	return out, byID, nil
}

// deviceActor authorizes a device-side call: PermCommandDevice, and a
// device only for itself.
func (s *CommandService) deviceActor(ctx context.Context, action, serial string) (cradle.Actor, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermCommandDevice, action, subject)
	if err != nil {
		return a, err
	}
	return a, s.db.ownDevice(ctx, a, serial, "act on the commands", action+".refused")
}

// PendingCommands returns the unfinished, unexpired commands of a device
// with their envelopes, in sequence order.
func (s *CommandService) PendingCommands(ctx context.Context, serial string) ([]*cradle.DeviceCommand, error) {
	a, err := s.deviceActor(ctx, "command.pending", serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	now := s.db.now()
	rows, err := s.db.query(ctx, `SELECT `+commandCols+`, c.envelope FROM device_commands c JOIN devices d ON d.id = c.device_id
		WHERE c.device_id = ? AND c.state IN ('pending', 'delivered') AND c.expires_at > ? ORDER BY c.sequence`, devID, micros(now))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: pending commands: %w", err)
	}
	defer rows.Close()
	out := []*cradle.DeviceCommand{}
	for rows.Next() {
		var env []byte
		_, c, err := scanCommand(scanFunc(func(dest ...any) error { return rows.Scan(append(dest, &env)...) }), now)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: pending commands: %w", err)
		}
		c.Envelope = env
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: pending commands: %w", err)
	}
	return out, nil
}

type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

// MarkCommandsDelivered records that pending commands were sent.
func (s *CommandService) MarkCommandsDelivered(ctx context.Context, serial string, ids []string) error {
	a, err := s.deviceActor(ctx, "command.deliver", serial)
	if err != nil || len(ids) == 0 {
		return err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		var marked []string
		for _, id := range ids {
			res, err := tx.exec(ctx, `UPDATE device_commands SET state = 'delivered', delivered_at = ? WHERE device_id = ? AND public_id = ? AND state = 'pending'`,
				micros(tx.now), devID, id)
			if err != nil {
				return fmt.Errorf("sqlstore: mark delivered: %w", err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return fmt.Errorf("sqlstore: mark delivered: %w", err)
			} else if n > 0 {
				marked = append(marked, id)
			}
		}
		if len(marked) == 0 {
			return nil
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.deliver", Subject: "device:" + serial,
			Details: map[string]any{"ids": marked}})
	})
}

// RecordCommandResult stores a result the device reported.
func (s *CommandService) RecordCommandResult(ctx context.Context, serial string, r cradle.CommandResult) (*cradle.DeviceCommand, error) {
	subject := "device:" + serial
	a, err := s.deviceActor(ctx, "command.result", serial)
	if err != nil {
		return nil, err
	}
	switch {
	case r.Status != cradle.CommandDone && r.Status != cradle.CommandRefused && r.Status != cradle.CommandFailed:
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result status %q: want done, refused or failed", r.Status)
	case r.Status == cradle.CommandDone && r.Error != "", r.Status != cradle.CommandDone && r.Error == "":
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: an error message goes with refused and failed, and only with them")
	case len(r.Error) > command.MaxResultSize:
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: error message over %d bytes", command.MaxResultSize)
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	if r.CommandID == "" {
		// A refusal of an envelope the device could not authenticate:
		// nothing to attach it to, but worth an audit entry.
		if r.Status != cradle.CommandRefused {
			return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: command_id is required unless the status is refused")
		}
		err := s.db.write(ctx, func(tx *Tx) error {
			return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.result.unattributed", Subject: subject,
				Details: map[string]any{"status": r.Status, "error": r.Error, "at": r.At}})
		})
		return nil, err
	}
	var conflict error
	err = s.db.write(ctx, func(tx *Tx) error {
		var rid, seq int64
		var state string
		err := tx.queryRow(ctx, `SELECT id, sequence, state FROM device_commands WHERE device_id = ? AND public_id = ?`+tx.db.dialect.forUpdate, devID, r.CommandID).Scan(&rid, &seq, &state)
		if errors.Is(err, sql.ErrNoRows) {
			return commandNotFound(serial, r.CommandID)
		} else if err != nil {
			return fmt.Errorf("sqlstore: command result: %w", err)
		}
		if r.Sequence != uint64(seq) {
			return cradle.Errorf(cradle.EINVALID, "command result for %s carries sequence %d; the command has sequence %d", r.CommandID, r.Sequence, seq)
		}
		finished := cradle.CommandState(state).Finished()
		if finished && r.Status != cradle.CommandRefused {
			conflict = cradle.Errorf(cradle.ECONFLICT, "command %s is already %s; a device reports done or failed once", r.CommandID, state)
			return conflict
		}
		if _, err := tx.exec(ctx, `INSERT INTO device_command_results (command_id, status, error, sequence, at, received_at) VALUES (?, ?, ?, ?, ?, ?)`,
			rid, string(r.Status), r.Error, seq, micros(r.At), micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: command result: %w", err)
		}
		action := "command.result"
		if finished {
			action = "command.result.replay"
		} else if _, err := tx.exec(ctx, `UPDATE device_commands SET state = ?, error = ?, finished_at = ? WHERE id = ?`,
			string(r.Status), r.Error, micros(tx.now), rid); err != nil {
			return fmt.Errorf("sqlstore: command result: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: subject,
			Details: map[string]any{"id": r.CommandID, "sequence": seq, "status": r.Status, "error": r.Error}})
	})
	if conflict != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.result.refused", Subject: subject,
			Details: map[string]string{"id": r.CommandID, "status": string(r.Status), "reason": cradle.ErrorMessage(conflict)}}, conflict)
	}
	if err != nil {
		return nil, err
	}
	return s.findSystem(ctx, a.TenantID, devID, serial, r.CommandID)
}

// findSystem reads a command after a device-side change, without the
// read permission a device does not hold.
func (s *CommandService) findSystem(ctx context.Context, tenantID, devID int64, serial, id string) (*cradle.DeviceCommand, error) {
	rid, c, err := scanCommand(s.db.queryRow(ctx, `SELECT `+commandCols+` FROM device_commands c JOIN devices d ON d.id = c.device_id WHERE c.device_id = ? AND c.public_id = ?`, devID, id), s.db.now())
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find command: %w", err)
	}
	if err := s.results(ctx, map[int64]*cradle.DeviceCommand{rid: c}); err != nil {
		return nil, err
	}
	return c, nil
}

// StoreCommandLogs stores the logs uploaded for an upload-logs command.
func (s *CommandService) StoreCommandLogs(ctx context.Context, serial, id string, logs []byte) error {
	a, err := s.deviceActor(ctx, "command.logs", serial)
	if err != nil {
		return err
	}
	if len(logs) > cradle.MaxCommandLogsSize {
		return cradle.Errorf(cradle.ETOOLARGE, "logs of %d bytes are over the %d-byte limit; send the most recent lines", len(logs), cradle.MaxCommandLogsSize)
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		var rid int64
		var kind string
		err := tx.queryRow(ctx, `SELECT id, kind FROM device_commands WHERE device_id = ? AND public_id = ?`+tx.db.dialect.forUpdate, devID, id).Scan(&rid, &kind)
		if errors.Is(err, sql.ErrNoRows) {
			return commandNotFound(serial, id)
		} else if err != nil {
			return fmt.Errorf("sqlstore: command logs: %w", err)
		}
		if cradle.CommandKind(kind) != cradle.CommandUploadLogs {
			return cradle.Errorf(cradle.EINVALID, "command %s is %s, not upload-logs; logs go with upload-logs commands only", id, kind)
		}
		if logs == nil {
			logs = []byte{}
		}
		if _, err := tx.exec(ctx, `UPDATE device_commands SET logs = ? WHERE id = ?`, logs, rid); err != nil {
			return fmt.Errorf("sqlstore: command logs: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.logs", Subject: "device:" + serial,
			Details: map[string]any{"id": id, "size": len(logs)}})
	})
}

// FindCommandLogs returns the logs uploaded for a command.
func (s *CommandService) FindCommandLogs(ctx context.Context, serial, id string) ([]byte, error) {
	a, err := s.db.authorize(ctx, cradle.PermCommandRead, "command.logs.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	var logs []byte
	err = s.db.queryRow(ctx, `SELECT logs FROM device_commands WHERE device_id = ? AND public_id = ?`, devID, id).Scan(&logs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, commandNotFound(serial, id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: command logs: %w", err)
	}
	if logs == nil {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "command %s of device %q has no uploaded logs", id, serial)
	}
	return logs, nil
}
