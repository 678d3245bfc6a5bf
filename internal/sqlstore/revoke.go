package sqlstore

import (
	"context"
	"fmt"
	"slices"

	"cradle"
)

// RevocationService revokes devices: one device by serial, or every
// device a label selector matches, in one transaction. The revoked
// certificates reach the DB's revocation notifier after the commit (the
// server regenerates the CRL, invalidates the OCSP cache and closes MQTT
// sessions there).
type RevocationService struct{ db *DB }

var _ cradle.RevocationService = (*RevocationService)(nil)

// NewRevocationService returns the revocation service of db.
func NewRevocationService(db *DB) *RevocationService { return &RevocationService{db: db} }

// SetRevocationNotifier sets the function told, after each commit, of the
// certificates revoked in it (whatever revoked them: an operator, a move
// to rma, decommissioning); it is also told, with the certificates
// revoked (maybe none), after a commit that revoked device tokens. It runs on the committing goroutine, before
// the call that revoked returns, and must be prompt. Set it before
// serving.
func (db *DB) SetRevocationNotifier(fn func([]*cradle.Certificate)) { db.onRevoke = fn }

// revokeBatch is how many devices one statement of a bulk revocation
// names (well under PostgreSQL's 65535 parameters).
const revokeBatch = 500

// revokedCreds is what revokeCredentials took, by kind.
type revokedCreds struct {
	certs  []*cradle.Certificate
	valid  map[string]bool // serials of the certificates that were valid (not superseded)
	tokens []cradle.DecommissionedCredential
	sets   []cradle.DecommissionedCredential
}

// list is every credential as decommissioning names them.
func (r *revokedCreds) list() []cradle.DecommissionedCredential {
	out := make([]cradle.DecommissionedCredential, 0, len(r.certs)+len(r.tokens)+len(r.sets))
	for _, c := range r.certs {
		out = append(out, cradle.DecommissionedCredential{Kind: "certificate:" + string(c.Kind), ID: c.Serial, RevokedAt: *c.RevokedAt,
			Wipe: c.Kind == cradle.CertLDevID && r.valid[c.Serial]})
	}
	out = append(out, r.tokens...)
	return append(out, r.sets...)
}

// revokeCredentials revokes, in tx, the credentials of the devices
// (tenant's, by id → serial): every unexpired, unrevoked certificate (only
// LDevIDs when operational is set), every live device token, and every
// Mender auth set bound to them that is not rejected yet (rejected, with
// why). Statements name revokeBatch devices at a time. The certificates
// are queued for the revocation notifier. It writes no audit entry: the
// caller audits what it did.
func (tx *Tx) revokeCredentials(ctx context.Context, a cradle.Actor, devices map[int64]string, operational bool, reason cradle.RevocationReason, why string) (*revokedCreds, error) {
	ids := make([]int64, 0, len(devices))
	for id := range devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	now := micros(tx.now)
	at := tx.now
	out := &revokedCreds{valid: map[string]bool{}}
	certKind := ""
	if operational {
		certKind = ` AND kind = 'ldevid'`
	}
	for chunk := range slices.Chunk(ids, revokeBatch) {
		in := placeholders(len(chunk))
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		// Certificates.
		certWhere := ` WHERE device_id IN (` + in + `) AND status <> 'revoked' AND not_after > ?` + certKind
		rows, err := tx.query(ctx, `SELECT serial, device_id, kind, issuer, status FROM certificates`+certWhere, append(args, now)...)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: revoke certificates: %w", err)
		}
		for rows.Next() {
			var id int64
			var kind, status string
			c := &cradle.Certificate{TenantID: a.TenantID, Status: cradle.CertRevoked, RevokedAt: &at, Reason: &reason}
			if err := rows.Scan(&c.Serial, &id, &kind, &c.Issuer, &status); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlstore: revoke certificates: %w", err)
			}
			c.Kind, c.DeviceSerial = cradle.CertKind(kind), devices[id]
			out.certs = append(out.certs, c)
			out.valid[c.Serial] = status == string(cradle.CertValid)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlstore: revoke certificates: %w", err)
		}
		if _, err := tx.exec(ctx, `UPDATE certificates SET status = 'revoked', revoked_at = ?, reason = ?`+certWhere,
			append([]any{now, int(reason)}, append(args, now)...)...); err != nil {
			return nil, fmt.Errorf("sqlstore: revoke certificates: %w", err)
		}

		// Device tokens (session tokens of the auth sets included: they
		// name the device too).
		tokWhere := ` WHERE tenant_id = ? AND device_id IN (` + in + `) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`
		tokArgs := append(append([]any{a.TenantID}, args...), now)
		rows, err = tx.query(ctx, `SELECT public_id, kind FROM device_tokens`+tokWhere, tokArgs...)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: revoke device tokens: %w", err)
		}
		for rows.Next() {
			var id, kind string
			if err := rows.Scan(&id, &kind); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlstore: revoke device tokens: %w", err)
			}
			out.tokens = append(out.tokens, cradle.DecommissionedCredential{Kind: "token:" + kind, ID: id, RevokedAt: at})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlstore: revoke device tokens: %w", err)
		}
		tx.tokensRevoked = tx.tokensRevoked || len(out.tokens) > 0
		if _, err := tx.exec(ctx, `UPDATE device_tokens SET revoked_at = ?`+tokWhere, append([]any{now}, tokArgs...)...); err != nil {
			return nil, fmt.Errorf("sqlstore: revoke device tokens: %w", err)
		}

		// Mender auth sets: rejected, so that the key is refused.
		setWhere := ` WHERE tenant_id = ? AND device_id IN (` + in + `) AND status <> 'rejected'`
		setArgs := append([]any{a.TenantID}, args...)
		rows, err = tx.query(ctx, `SELECT public_id FROM mender_auth_sets`+setWhere, setArgs...)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: reject auth sets: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlstore: reject auth sets: %w", err)
			}
			out.sets = append(out.sets, cradle.DecommissionedCredential{Kind: "mender-auth-set", ID: id, RevokedAt: at})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlstore: reject auth sets: %w", err)
		}
		if _, err := tx.exec(ctx, `UPDATE mender_auth_sets SET status = 'rejected', decided_by = ?, reason = ?, updated_at = ?`+setWhere,
			append([]any{a.String(), why, now}, setArgs...)...); err != nil {
			return nil, fmt.Errorf("sqlstore: reject auth sets: %w", err)
		}
	}
	tx.revoked = append(tx.revoked, out.certs...)
	return out, nil
}

// outOfService takes revoked devices (tenant's, by id → serial) out of
// service in tx: deployed → suspended, provisioned → rma, each move in
// the device's history by a with the reason why; other states stay. It
// returns serial → new state of the devices moved, and writes no audit
// entry (the revocation's names them). Statements name revokeBatch
// devices at a time. The rma move needs no revokeForRMA here: the
// revocation took every credential already.
func (tx *Tx) outOfService(ctx context.Context, a cradle.Actor, devices map[int64]string, why string) (map[string]cradle.State, error) {
	ids := make([]int64, 0, len(devices))
	for id := range devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	now := micros(tx.now)
	moved := map[string]cradle.State{}
	const next = `CASE state WHEN 'deployed' THEN 'suspended' ELSE 'rma' END`
	for chunk := range slices.Chunk(ids, revokeBatch) {
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		where := ` WHERE id IN (` + placeholders(len(chunk)) + `) AND state IN ('deployed', 'provisioned')`
		rows, err := tx.query(ctx, `SELECT id, `+next+` FROM devices`+where, args...)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: out of service: %w", err)
		}
		for rows.Next() {
			var id int64
			var to string
			if err := rows.Scan(&id, &to); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlstore: out of service: %w", err)
			}
			moved[devices[id]] = cradle.State(to)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlstore: out of service: %w", err)
		}
		if _, err := tx.exec(ctx, `INSERT INTO device_transitions (device_id, seq, from_state, to_state, actor, reason, at)
			SELECT id, (SELECT COALESCE(MAX(t.seq), 1) + 1 FROM device_transitions t WHERE t.device_id = devices.id), state, `+next+`, ?, ?, ? FROM devices`+where,
			append([]any{a.String(), clip(why, cradle.MaxReasonLen), now}, args...)...); err != nil {
			return nil, fmt.Errorf("sqlstore: out of service: history: %w", err)
		}
		if _, err := tx.exec(ctx, `UPDATE devices SET state = `+next+`, state_changed_at = ?, updated_at = ?`+where,
			append([]any{now, now}, args...)...); err != nil {
			return nil, fmt.Errorf("sqlstore: out of service: %w", err)
		}
	}
	return moved, nil
}

// revokeForRMA takes the operational credentials of a device moved to
// rma, in the transaction of the move, and audits them: its LDevIDs,
// device tokens and Mender auth sets. Its IDevID stays valid: the device
// enrolls with it again once the factory has re-provisioned it.
func (tx *Tx) revokeForRMA(ctx context.Context, a cradle.Actor, d *cradle.Device) error {
	r, err := tx.revokeCredentials(ctx, a, map[int64]string{d.ID: d.Serial}, true, cradle.ReasonCessationOfOperation, "returned for repair (rma)")
	if err != nil {
		return err
	}
	return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.credentials.revoke", Subject: "device:" + d.Serial,
		Details: map[string]any{"why": "rma", "reason": cradle.ReasonCessationOfOperation.String(), "revoked": r.list()}})
}

// RevokeDevice revokes every credential of a device.
func (s *RevocationService) RevokeDevice(ctx context.Context, serial string, reason cradle.RevocationReason) (*cradle.DeviceRevocation, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermCertRevoke, "device.revoke", subject)
	if err != nil {
		return nil, err
	}
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	var out *cradle.DeviceRevocation
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		r, err := tx.revokeCredentials(ctx, a, map[int64]string{d.ID: d.Serial}, false, reason, "device revoked: "+reason.String())
		if err != nil {
			return err
		}
		moved, err := tx.outOfService(ctx, a, map[int64]string{d.ID: d.Serial}, "credentials revoked: "+reason.String())
		if err != nil {
			return err
		}
		out = &cradle.DeviceRevocation{Serial: d.Serial, Reason: reason, RevokedAt: tx.now, Revoked: r.list(), State: d.State}
		details := map[string]any{"reason": reason.String(), "revoked": out.Revoked}
		if to, ok := moved[d.Serial]; ok {
			details["state"] = map[string]cradle.State{"from": d.State, "to": to}
			out.State = to
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.revoke", Subject: subject, Details: details})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RevokeDevices revokes every credential of the devices a selector
// matches: one transaction, statements of revokeBatch devices, one audit
// entry naming them all.
func (s *RevocationService) RevokeDevices(ctx context.Context, selector string, reason cradle.RevocationReason) (*cradle.BulkRevocation, error) {
	a, err := s.db.authorize(ctx, cradle.PermCertRevoke, "device.revoke", "devices")
	if err != nil {
		return nil, err
	}
	sel, err := cradle.ParseLabelSelector(selector)
	if err != nil {
		return nil, err
	}
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	out := &cradle.BulkRevocation{Selector: sel.String(), Reason: reason, Devices: []string{}}
	err = s.db.write(ctx, func(tx *Tx) error {
		rows, err := tx.query(ctx, `SELECT id, serial, labels FROM devices WHERE tenant_id = ?`, a.TenantID)
		if err != nil {
			return fmt.Errorf("sqlstore: revoke devices: %w", err)
		}
		matched := map[int64]string{}
		for rows.Next() {
			var id int64
			var serial string
			var labels []byte
			if err := rows.Scan(&id, &serial, &labels); err != nil {
				rows.Close()
				return fmt.Errorf("sqlstore: revoke devices: %w", err)
			}
			l, err := decodeStringMap(labels)
			if err != nil {
				rows.Close()
				return fmt.Errorf("sqlstore: revoke devices: device %s: labels column: %w", serial, err)
			}
			if sel.Matches(l) {
				matched[id] = serial
				out.Devices = append(out.Devices, serial)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("sqlstore: revoke devices: %w", err)
		}
		slices.Sort(out.Devices)
		r, err := tx.revokeCredentials(ctx, a, matched, false, reason, "devices revoked by selector "+out.Selector+": "+reason.String())
		if err != nil {
			return err
		}
		out.RevokedAt, out.Certificates, out.Tokens, out.AuthSets = tx.now, len(r.certs), len(r.tokens), len(r.sets)
		moved, err := tx.outOfService(ctx, a, matched, "credentials revoked: "+reason.String())
		if err != nil {
			return err
		}
		for _, to := range moved {
			if to == cradle.StateSuspended {
				out.Suspended++
			} else {
				out.RMA++
			}
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.revoke.bulk", Subject: "devices",
			Details: map[string]any{"selector": out.Selector, "reason": reason.String(), "devices": out.Devices,
				"certificates": out.Certificates, "tokens": out.Tokens, "auth_sets": out.AuthSets, "out_of_service": moved}})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
