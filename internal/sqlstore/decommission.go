package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"cradle"
)

// DecommissionService implements cradle.DecommissionService. Executing a
// decommissioning is one transaction: every certificate of the device
// revoked (cessationOfOperation), every device token revoked and Mender
// auth set rejected, the device moved to eol, the signed wipe command
// issued and the record written, each step audited. The revocations reach
// the CRLs, the OCSP cache and the token caches through the store's
// revocation notifier (SetRevocationNotifier) when it commits.
type DecommissionService struct {
	db   *DB
	sign CommandSigner
	// OnExecuted, when set, is called after an execution committed, with
	// the device (now eol), the state it left and the certificates
	// revoked: the wiring closes the device's live sessions. It runs in
	// the caller's request, so it must return promptly.
	OnExecuted func(ctx context.Context, d *cradle.Device, from cradle.State, revoked []*cradle.Certificate)
}

var _ cradle.DecommissionService = (*DecommissionService)(nil)

// NewDecommissionService returns the decommissioning of db; sign signs the
// wipe commands (the command signer, as for NewCommandService).
func NewDecommissionService(db *DB, sign CommandSigner) *DecommissionService {
	return &DecommissionService{db: db, sign: sign}
}

// wipeTTL is how long a wipe command waits for an offline device.
const wipeTTL = cradle.MaxCommandTTL

const decomCols = `x.id, d.serial, x.state, x.reason, x.requested_by, x.requested_at, x.approved_by, x.approved_at, x.executed_at, x.command_id, x.revoked, x.tombstone_payload, x.confirmed_at`

func scanDecommission(sc interface{ Scan(...any) error }) (int64, *cradle.Decommission, error) {
	var id, requested int64
	var approved, executed, confirmed sql.NullInt64
	var state, revoked string
	var payload []byte
	x := &cradle.Decommission{}
	if err := sc.Scan(&id, &x.Serial, &state, &x.Reason, &x.RequestedBy, &requested, &x.ApprovedBy, &approved, &executed, &x.CommandID, &revoked, &payload, &confirmed); err != nil {
		return 0, nil, err
	}
	x.State, x.RequestedAt = cradle.DecommissionState(state), fromMicros(requested)
	x.ApprovedAt, x.ExecutedAt, x.ConfirmedAt = fromNullMicros(approved), fromNullMicros(executed), fromNullMicros(confirmed)
	if err := json.Unmarshal([]byte(revoked), &x.Revoked); err != nil {
		return 0, nil, fmt.Errorf("decommission of %s: revoked column: %w", x.Serial, err)
	}
	if x.Revoked == nil {
		x.Revoked = []cradle.DecommissionedCredential{}
	}
	if len(payload) > 0 {
		// Verified when it was stored; kept byte for byte.
		x.Tombstone = &cradle.Tombstone{}
		if err := json.Unmarshal(payload, x.Tombstone); err != nil {
			return 0, nil, fmt.Errorf("decommission of %s: tombstone column: %w", x.Serial, err)
		}
	}
	return id, x, nil
}

func decomNotFound(serial string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "device %q has no decommissioning: ask for one with cradle device decommission %s --reason R", serial, serial)
}

// findDecommission reads a device's record (locked inside a transaction).
func findDecommission(ctx context.Context, q querier, deviceID int64, lock string) (int64, *cradle.Decommission, error) {
	id, x, err := scanDecommission(q.queryRow(ctx, `SELECT `+decomCols+` FROM decommissions x JOIN devices d ON d.id = x.device_id WHERE x.device_id = ?`+lock, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	} else if err != nil {
		return 0, nil, fmt.Errorf("sqlstore: decommission: %w", err)
	}
	// The record's certificates revoked again for keyCompromise.
	recorded := map[string]bool{}
	for _, c := range x.Revoked {
		if strings.HasPrefix(c.Kind, "certificate:") {
			recorded[c.ID] = true
		}
	}
	if len(recorded) > 0 {
		rows, err := q.query(ctx, `SELECT serial FROM certificates WHERE device_id = ? AND status = 'revoked' AND reason = ? ORDER BY serial`, deviceID, int(cradle.ReasonKeyCompromise))
		if err != nil {
			return 0, nil, fmt.Errorf("sqlstore: decommission: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var serial string
			if err := rows.Scan(&serial); err != nil {
				return 0, nil, fmt.Errorf("sqlstore: decommission: %w", err)
			}
			if recorded[serial] {
				x.Compromised = append(x.Compromised, serial)
			}
		}
		if err := rows.Err(); err != nil {
			return 0, nil, fmt.Errorf("sqlstore: decommission: %w", err)
		}
	}
	return id, x, nil
}

// wipeRefusal says why the certificate certSerial may not speak for the
// wipe of the device serial, whose record is x; nil when it may: the
// decommissioning is wiping, the certificate is one of the LDevIDs its
// execution revoked and marked Wipe (valid at that moment: not one
// revoked earlier, at an rma, nor one superseded), and no certificate of the record was revoked again
// for keyCompromise.
func wipeRefusal(x *cradle.Decommission, serial, certSerial string) error {
	switch {
	case x == nil:
		return decomNotFound(serial)
	case x.State == cradle.DecommissionConfirmed:
		return cradle.Errorf(cradle.ECONFLICT, "the wipe of device %q was already confirmed at %s", serial, x.ConfirmedAt.Format(time.RFC3339))
	case x.State != cradle.DecommissionWiping:
		return cradle.Errorf(cradle.ECONFLICT, "the decommissioning of device %q is %s: no wipe was sent yet", serial, x.State)
	case len(x.Compromised) > 0:
		return cradle.Errorf(cradle.EINVALID, "certificate %s of device %q was revoked for keyCompromise after the decommissioning: no tombstone can confirm its wipe any more", x.Compromised[0], serial)
	}
	for _, c := range x.Revoked {
		if c.Kind == "certificate:"+string(cradle.CertLDevID) && c.ID == certSerial && c.Wipe {
			return nil
		}
	}
	return cradle.Errorf(cradle.EINVALID, "certificate %s is not one of the LDevIDs of device %q valid when its decommissioning was executed: only those may fetch the wipe and sign the tombstone", certSerial, serial)
}

// WipeCredential returns nil when the device serial, presenting the
// certificate certSerial (hex), may use the wipe routes of the device
// listener: see wipeRefusal. Otherwise the error says why.
func (s *DecommissionService) WipeCredential(ctx context.Context, serial, certSerial string) error {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "decommission.read", "device:"+serial)
	if err != nil {
		return err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	_, x, err := findDecommission(ctx, s.db, devID, "")
	if err != nil {
		return err
	}
	return wipeRefusal(x, serial, certSerial)
}

// forUpdateOf locks the decommissions row of a join on PostgreSQL.
func (tx *Tx) forUpdateOf() string {
	if tx.db.dialect.forUpdate == "" {
		return ""
	}
	return " FOR UPDATE OF x"
}

// checkDecommission returns nil when role may decommission a device in
// state from: the lifecycle's rule for a move to eol. A device already at
// eol without a decommissioning (moved there by a plain transition before
// that was refused) may be decommissioned by the roles that may move a
// deployed device to eol: its credentials are revoked and its wipe sent.
func checkDecommission(serial string, from cradle.State, role cradle.Role) error {
	if from == cradle.StateEOL {
		if cradle.CanTransition(cradle.StateDeployed, cradle.StateEOL, role) {
			return nil
		}
		return cradle.Errorf(cradle.ECONFLICT, "device %q is eol: only an admin may decommission it, as %s may not", serial, role)
	}
	return cradle.CheckTransition(serial, from, cradle.StateEOL, role)
}

// RequestDecommission asks for a device's decommissioning and, unless the
// policy wants a second admin, executes it.
func (s *DecommissionService) RequestDecommission(ctx context.Context, serial, reason string) (*cradle.Decommission, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "decommission.request", subject)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.TrimSpace(reason) == "":
		return nil, cradle.Errorf(cradle.EINVALID, "a decommissioning needs a reason (--reason): it goes into the certificate")
	case len(reason) > cradle.MaxDecommissionReason || !utf8.ValidString(reason):
		return nil, cradle.Errorf(cradle.EINVALID, "invalid reason: at most %d bytes of UTF-8 text", cradle.MaxDecommissionReason)
	}
	var out *cradle.Decommission
	var refused error
	var dev *cradle.Device
	var from cradle.State
	var revoked []*cradle.Certificate
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		from = d.State
		_, prev, err := findDecommission(ctx, tx, d.ID, "")
		if err != nil {
			return err
		}
		if prev != nil {
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q is already being decommissioned (%s, asked by %s at %s)", serial, prev.State, prev.RequestedBy, prev.RequestedAt.Format(time.RFC3339))
			return refused
		}
		if refused = checkDecommission(serial, d.State, a.Role); refused != nil {
			return refused
		}
		policy, err := findPolicy(ctx, tx, a.TenantID)
		if err != nil {
			return err
		}
		x := &cradle.Decommission{Serial: serial, State: cradle.DecommissionAwaitingApproval, Reason: reason, RequestedBy: a.String(),
			RequestedAt: tx.now, Revoked: []cradle.DecommissionedCredential{}}
		_, err = tx.exec(ctx, `INSERT INTO decommissions (tenant_id, device_id, state, reason, requested_by, requested_at) VALUES (?, ?, ?, ?, ?, ?)`,
			a.TenantID, d.ID, string(x.State), reason, x.RequestedBy, micros(tx.now))
		if err != nil && tx.db.dialect.uniqueViolation(err) {
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q is already being decommissioned", serial)
			return refused
		} else if err != nil {
			return fmt.Errorf("sqlstore: decommission: %w", err)
		}
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.request", Subject: subject,
			Details: map[string]any{"reason": reason, "approvers": max(policy.DecommissionApprovers, 1)}}); err != nil {
			return err
		}
		out = x
		if policy.DecommissionApprovers >= 2 {
			return nil
		}
		revoked, err = s.execute(ctx, tx, a, d, x)
		dev = d
		return err
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.request.refused", Subject: subject,
			Details: map[string]string{"state": string(from), "role": string(a.Role), "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	if dev != nil && s.OnExecuted != nil {
		s.OnExecuted(ctx, dev, from, revoked)
	}
	return out, nil
}

// ApproveDecommission has a second admin approve and execute a
// decommissioning that awaits approval.
func (s *DecommissionService) ApproveDecommission(ctx context.Context, serial string) (*cradle.Decommission, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "decommission.approve", subject)
	if err != nil {
		return nil, err
	}
	var out *cradle.Decommission
	var refused error
	var dev *cradle.Device
	var from cradle.State
	var revoked []*cradle.Certificate
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		from = d.State
		_, x, err := findDecommission(ctx, tx, d.ID, tx.forUpdateOf())
		if err != nil {
			return err
		}
		switch {
		case x == nil:
			return decomNotFound(serial)
		case x.State != cradle.DecommissionAwaitingApproval:
			refused = cradle.Errorf(cradle.ECONFLICT, "the decommissioning of device %q is %s: only one awaiting approval can be approved", serial, x.State)
			return refused
		case x.RequestedBy == a.String():
			refused = cradle.Errorf(cradle.EFORBIDDEN, "%s asked for this decommissioning and may not approve it too: the tenant's policy wants a second admin", a.String())
			return refused
		}
		// The request keeps the rule it was made under (a policy lowered
		// since does not apply to it), and the second admin must be
		// another person as far as the tokens tell.
		if err := secondApprover(ctx, tx, a, x); cradle.ErrorCode(err) == cradle.EFORBIDDEN {
			refused = err
			return refused
		} else if err != nil {
			return err
		}
		if refused = checkDecommission(serial, d.State, a.Role); refused != nil {
			return refused
		}
		now := tx.now
		x.ApprovedBy, x.ApprovedAt = a.String(), &now
		if _, err := tx.exec(ctx, `UPDATE decommissions SET approved_by = ?, approved_at = ? WHERE device_id = ?`, x.ApprovedBy, micros(now), d.ID); err != nil {
			return fmt.Errorf("sqlstore: decommission: %w", err)
		}
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.approve", Subject: subject,
			Details: map[string]string{"requested_by": x.RequestedBy}}); err != nil {
			return err
		}
		out, dev = x, d
		revoked, err = s.execute(ctx, tx, a, d, x)
		return err
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.approve.refused", Subject: subject,
			Details: map[string]string{"state": string(from), "role": string(a.Role), "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	if s.OnExecuted != nil {
		s.OnExecuted(ctx, dev, from, revoked)
	}
	return out, nil
}

// tokenOf returns the token id of an actor string ("token:tok_…(admin)"),
// or "" for another kind of actor.
func tokenOf(actor string) string {
	id, ok := strings.CutPrefix(actor, "token:")
	if !ok {
		return ""
	}
	if i := strings.LastIndexByte(id, '('); i >= 0 {
		id = id[:i]
	}
	return id
}

// maxTokenAncestry bounds the walk up tokens.created_by.
const maxTokenAncestry = 64

// tokenAncestry returns the tokens that token id descends from (its
// creator's token, that one's creator's, …; tokens.created_by), and
// when id was created.
func tokenAncestry(ctx context.Context, tx *Tx, tenantID int64, id string) ([]string, time.Time, error) {
	var out []string
	var created time.Time
	seen := map[string]bool{id: true}
	for cur := id; cur != "" && len(out) < maxTokenAncestry; {
		var by string
		var at int64
		err := tx.queryRow(ctx, `SELECT created_by, created_at FROM tokens WHERE tenant_id = ? AND id = ?`, tenantID, cur).Scan(&by, &at)
		if errors.Is(err, sql.ErrNoRows) {
			break
		} else if err != nil {
			return nil, time.Time{}, fmt.Errorf("sqlstore: token ancestry: %w", err)
		}
		if cur == id {
			created = fromMicros(at)
		}
		cur = tokenOf(by)
		if cur == "" || seen[cur] {
			break
		}
		seen[cur] = true
		out = append(out, cur)
	}
	return out, created, nil
}

// secondApprover refuses an approver a of request x who is the requester
// by another token: a token the requester's token made (at any depth),
// a token that made the requester's, or a token made after the request
// (an admin may make tokens; they are not a second person): EFORBIDDEN.
func secondApprover(ctx context.Context, tx *Tx, a cradle.Actor, x *cradle.Decommission) error {
	requester := tokenOf(x.RequestedBy)
	if a.Kind != "token" {
		return nil
	}
	up, created, err := tokenAncestry(ctx, tx, a.TenantID, a.ID)
	if err != nil {
		return err
	}
	if !created.IsZero() && created.After(x.RequestedAt) {
		return cradle.Errorf(cradle.EFORBIDDEN, "token %s was created at %s, after the decommissioning was asked for (%s): the approval needs a second admin's token that existed before the request",
			a.ID, created.Format(time.RFC3339), x.RequestedAt.Format(time.RFC3339))
	}
	if requester == "" {
		return nil
	}
	if slices.Contains(up, requester) {
		return cradle.Errorf(cradle.EFORBIDDEN, "token %s was created by the requester's token %s: the approval needs a second admin, not another token of the first", a.ID, requester)
	}
	down, _, err := tokenAncestry(ctx, tx, a.TenantID, requester)
	if err != nil {
		return err
	}
	if slices.Contains(down, a.ID) {
		return cradle.Errorf(cradle.EFORBIDDEN, "the requester's token %s was created by token %s: the approval needs a second admin, not another token of the first", requester, a.ID)
	}
	return nil
}

// execute revokes every credential of the locked device d, moves it to
// eol, issues its wipe command and writes the record x, in tx.
func (s *DecommissionService) execute(ctx context.Context, tx *Tx, a cradle.Actor, d *cradle.Device, x *cradle.Decommission) ([]*cradle.Certificate, error) {
	if s.sign == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "decommissioning needs the command signer to sign the wipe command (run cradle pki init)")
	}
	// Every credential, IDevID included, through the same path as any
	// revocation so that the revocation notifier runs after the commit
	// (CRLs, OCSP cache, MQTT sessions, the device token cache). The
	// certificates revoked here are the ones valid at this moment: the
	// record keeps their serials, and only those may fetch the wipe and
	// sign the tombstone.
	r, err := tx.revokeCredentials(ctx, a, map[int64]string{d.ID: d.Serial}, false, cradle.ReasonCessationOfOperation, "decommissioned")
	if err != nil {
		return nil, err
	}
	for _, c := range r.certs {
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "certificate.revoke", Subject: "certificate:" + c.Serial,
			Details: map[string]string{"device": c.DeviceSerial, "reason": cradle.ReasonCessationOfOperation.String(), "issuer": c.Issuer}}); err != nil {
			return nil, err
		}
	}
	for _, t := range r.tokens {
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.token.revoke", Subject: "device_token:" + t.ID,
			Details: map[string]string{"device": d.Serial, "reason": "decommissioned"}}); err != nil {
			return nil, err
		}
	}
	for _, st := range r.sets {
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.rejected", Subject: authSetSubject(st.ID),
			Details: map[string]any{"device": d.Serial, "reason": "decommissioned"}}); err != nil {
			return nil, err
		}
	}
	creds, certs := r.list(), r.certs

	// The lifecycle: eol, final (a device moved there by a plain
	// transition before that was refused is there already).
	if d.State != cradle.StateEOL {
		if err := tx.transition(ctx, a, d, cradle.DeviceTransition{To: cradle.StateEOL, Reason: "decommissioned: " + clip(x.Reason, cradle.MaxReasonLen-16)}); err != nil {
			return nil, err
		}
	}

	// The signed wipe command, waiting for the device.
	id, err := newCommandID()
	if err != nil {
		return nil, err
	}
	cmd, err := tx.issueCommand(ctx, a, d, s.sign, id, cradle.CommandRequest{Kind: cradle.CommandWipe, TTLSeconds: int64(wipeTTL / time.Second)})
	if err != nil {
		return nil, err
	}

	revoked, err := json.Marshal(creds)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: decommission: %w", err)
	}
	if _, err := tx.exec(ctx, `UPDATE decommissions SET state = ?, executed_at = ?, command_id = ?, revoked = ? WHERE device_id = ?`,
		string(cradle.DecommissionWiping), micros(tx.now), cmd.ID, string(revoked), d.ID); err != nil {
		return nil, fmt.Errorf("sqlstore: decommission: %w", err)
	}
	now := tx.now
	x.State, x.ExecutedAt, x.CommandID, x.Revoked = cradle.DecommissionWiping, &now, cmd.ID, creds
	return certs, tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.execute", Subject: "device:" + d.Serial,
		Details: map[string]any{"reason": x.Reason, "requested_by": x.RequestedBy, "approved_by": x.ApprovedBy, "command_id": cmd.ID,
			"command_sequence": cmd.Sequence, "revoked": creds}})
}

// ReissueWipe issues a fresh wipe command to a device being wiped whose
// wipe command expired unanswered (offline longer than its time to live;
// nothing else would send it again): same record, the record now names
// the new command, audited as decommission.wipe.reissue. A device asks
// for itself: the commands route calls it when a wiping device polls. It
// returns the record, unchanged while the command has not expired.
func (s *DecommissionService) ReissueWipe(ctx context.Context, serial string) (*cradle.Decommission, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermCommandDevice, "decommission.wipe.reissue", subject)
	if err != nil {
		return nil, err
	}
	if err := s.db.ownDevice(ctx, a, serial, "renew the wipe", "decommission.wipe.reissue.refused"); err != nil {
		return nil, err
	}
	if s.sign == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "decommissioning needs the command signer to sign the wipe command (run cradle pki init)")
	}
	var out *cradle.Decommission
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		_, x, err := findDecommission(ctx, tx, d.ID, tx.forUpdateOf())
		if err != nil {
			return err
		}
		if x == nil || x.State != cradle.DecommissionWiping || len(x.Compromised) > 0 {
			return wipeRefusal(x, serial, "")
		}
		out = x
		var state string
		var expires int64
		if err := tx.queryRow(ctx, `SELECT state, expires_at FROM device_commands WHERE device_id = ? AND public_id = ?`, d.ID, x.CommandID).Scan(&state, &expires); err != nil {
			return fmt.Errorf("sqlstore: reissue wipe: %w", err)
		}
		pending := state == string(cradle.CommandPending) || state == string(cradle.CommandDelivered)
		if pending && expires > micros(tx.now) || !pending && state != string(cradle.CommandExpired) {
			return nil // still waiting, or answered
		}
		id, err := newCommandID()
		if err != nil {
			return err
		}
		sys := cradle.SystemActor(a.TenantID, "decommission")
		cmd, err := tx.issueCommand(ctx, sys, d, s.sign, id, cradle.CommandRequest{Kind: cradle.CommandWipe, TTLSeconds: int64(wipeTTL / time.Second)})
		if err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `UPDATE decommissions SET command_id = ? WHERE device_id = ?`, cmd.ID, d.ID); err != nil {
			return fmt.Errorf("sqlstore: reissue wipe: %w", err)
		}
		previous := x.CommandID
		x.CommandID = cmd.ID
		return tx.audit(ctx, a.TenantID, sys.String(), cradle.AuditEvent{Action: "decommission.wipe.reissue", Subject: subject,
			Details: map[string]any{"previous_command_id": previous, "expired_at": fromMicros(expires), "command_id": cmd.ID, "command_sequence": cmd.Sequence}})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RecordTombstone verifies and keeps a device's signed tombstone.
func (s *DecommissionService) RecordTombstone(ctx context.Context, serial string, st cradle.SignedTombstone) (*cradle.Decommission, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermCommandDevice, "decommission.tombstone", subject)
	if err != nil {
		return nil, err
	}
	if err := s.db.ownDevice(ctx, a, serial, "send the tombstone", "decommission.tombstone.refused"); err != nil {
		return nil, err
	}
	refuse := func(err error) error {
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.tombstone.refused", Subject: subject,
			Details: map[string]string{"reason": cradle.ErrorMessage(err)}}, err)
	}
	t, cert, err := cradle.VerifyTombstone(st)
	if err != nil {
		return nil, refuse(err)
	}
	if t.Serial != serial {
		return nil, refuse(cradle.Errorf(cradle.EINVALID, "tombstone names device %q; it was sent for device %q", clip(t.Serial, 64), serial))
	}
	var out *cradle.Decommission
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		_, x, err := findDecommission(ctx, tx, d.ID, tx.forUpdateOf())
		if err != nil {
			return err
		}
		if x == nil || x.State != cradle.DecommissionWiping {
			refused = wipeRefusal(x, serial, "")
			return refused
		}
		// The certificate must be an LDevID this server issued to this
		// device, byte for byte; revoked by decommissioning, and for no
		// other reason (a compromised key proves nothing).
		rec, err := scanCert(tx.queryRow(ctx, `SELECT `+certCols+` FROM certificates WHERE serial = ? AND tenant_id = ?`, cradle.SerialHex(cert.SerialNumber), a.TenantID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			refused = cradle.Errorf(cradle.EINVALID, "tombstone certificate %s is not on record here", cradle.SerialHex(cert.SerialNumber))
		case err != nil:
			return fmt.Errorf("sqlstore: tombstone: %w", err)
		case rec.DeviceSerial != serial || rec.Kind != cradle.CertLDevID || !bytes.Equal(rec.DER, st.Certificate):
			refused = cradle.Errorf(cradle.EINVALID, "tombstone certificate %s is not an LDevID of device %q", rec.Serial, serial)
		case rec.Reason != nil && *rec.Reason != cradle.ReasonCessationOfOperation:
			refused = cradle.Errorf(cradle.EINVALID, "tombstone certificate %s was revoked for %s: its key proves nothing", rec.Serial, rec.Reason)
		default:
			refused = wipeRefusal(x, serial, rec.Serial)
		}
		if refused != nil {
			return refused
		}
		var cid, seq int64
		var kind string
		err = tx.queryRow(ctx, `SELECT id, sequence, kind FROM device_commands WHERE device_id = ? AND public_id = ?`+tx.db.dialect.forUpdate, d.ID, x.CommandID).Scan(&cid, &seq, &kind)
		if err != nil {
			return fmt.Errorf("sqlstore: tombstone: wipe command: %w", err)
		}
		if t.CommandID != x.CommandID || t.Sequence != uint64(seq) {
			refused = cradle.Errorf(cradle.EINVALID, "tombstone is for command %s (sequence %d); the wipe command of device %q is %s (sequence %d)",
				clip(t.CommandID, 64), t.Sequence, serial, x.CommandID, seq)
			return refused
		}
		if _, err := tx.exec(ctx, `INSERT INTO device_command_results (command_id, status, error, sequence, at, received_at) VALUES (?, ?, ?, ?, ?, ?)`,
			cid, string(cradle.CommandDone), "", seq, micros(t.At), micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: tombstone: %w", err)
		}
		if _, err := tx.exec(ctx, `UPDATE device_commands SET state = ?, error = '', finished_at = ? WHERE id = ?`, string(cradle.CommandDone), micros(tx.now), cid); err != nil {
			return fmt.Errorf("sqlstore: tombstone: %w", err)
		}
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "command.result", Subject: subject,
			Details: map[string]any{"id": x.CommandID, "sequence": seq, "status": cradle.CommandDone, "error": ""}}); err != nil {
			return err
		}
		now := tx.now
		if _, err := tx.exec(ctx, `UPDATE decommissions SET state = ?, tombstone_payload = ?, tombstone_signature = ?, tombstone_certificate = ?, confirmed_at = ? WHERE device_id = ?`,
			string(cradle.DecommissionConfirmed), st.Payload, st.Signature, st.Certificate, micros(now), d.ID); err != nil {
			return fmt.Errorf("sqlstore: tombstone: %w", err)
		}
		x.State, x.Tombstone, x.ConfirmedAt = cradle.DecommissionConfirmed, t, &now
		out = x
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "decommission.confirm", Subject: subject,
			Details: map[string]any{"command_id": x.CommandID, "sequence": seq, "certificate": rec.Serial, "erased": t.Erased, "lifecycle": t.Lifecycle, "at": t.At}})
	})
	if refused != nil {
		return nil, refuse(refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FindDecommission returns a device's decommissioning record.
func (s *DecommissionService) FindDecommission(ctx context.Context, serial string) (*cradle.Decommission, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "decommission.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	_, x, err := findDecommission(ctx, s.db, devID, "")
	if err != nil {
		return nil, err
	}
	if x == nil {
		return nil, decomNotFound(serial)
	}
	return x, nil
}

// DecommissionCertificate returns the record, the device and the audit
// entries of every step, signed with the audit key.
func (s *DecommissionService) DecommissionCertificate(ctx context.Context, serial string) (*cradle.DecommissionCertificate, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "decommission.certificate", "device:"+serial)
	if err != nil {
		return nil, err
	}
	if _, err := s.db.authorize(ctx, cradle.PermAuditRead, "decommission.certificate", "device:"+serial); err != nil {
		return nil, err
	}
	d, err := scanDevice(s.db.queryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND serial = ?`, a.TenantID, serial))
	if errors.Is(err, sql.ErrNoRows) || cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: decommission certificate: %w", err)
	}
	_, x, err := findDecommission(ctx, s.db, d.ID, "")
	if err != nil {
		return nil, err
	}
	if x == nil {
		return nil, decomNotFound(serial)
	}
	// The device's entries, and those of each credential it lost.
	subjects := []any{a.TenantID, "device:" + serial}
	for _, c := range x.Revoked {
		switch {
		case strings.HasPrefix(c.Kind, "certificate:"):
			subjects = append(subjects, "certificate:"+c.ID)
		case strings.HasPrefix(c.Kind, "token:"):
			subjects = append(subjects, "device_token:"+c.ID)
		case c.Kind == "mender-auth-set":
			subjects = append(subjects, authSetSubject(c.ID))
		}
	}
	rows, err := s.db.query(ctx, `SELECT `+auditCols+` FROM audit_entries WHERE tenant_id = ? AND subject IN (`+placeholders(len(subjects)-1)+`) ORDER BY seq`, subjects...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: decommission certificate: %w", err)
	}
	defer rows.Close()
	entries := []*cradle.AuditEntry{}
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: decommission certificate: %w", err)
		}
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: decommission certificate: %w", err)
	}
	var tenant string
	if err := s.db.queryRow(ctx, `SELECT name FROM tenants WHERE id = ?`, a.TenantID).Scan(&tenant); err != nil {
		return nil, fmt.Errorf("sqlstore: decommission certificate: tenant: %w", err)
	}
	c := &cradle.DecommissionCertificate{Tenant: tenant, Device: *d, Decommission: *x, Audit: entries, IssuedAt: s.db.now()}
	if err := c.Sign(s.db.key); err != nil {
		return nil, err
	}
	return c, nil
}
