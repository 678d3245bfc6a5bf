package sqlstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"cradle"

	"github.com/jackc/pgx/v5/pgconn"
)

// ProtocolService implements cradle.ProtocolService, the store side of the
// Mender device API and hawkBit DDI:
//
//   - a Mender auth set is keyed by (tenant, SHA-256 of the canonical
//     identity, key fingerprint); every decision on it (pending, accepted,
//     rejected, preauthorized) is audited, but a device that asks again
//     while its set is pending or rejected writes nothing: the refusal was
//     recorded when the set got that status, and a device retrying every
//     few minutes must not grow the audit log. A tenant keeps at most
//     cradle.MaxPendingMenderAuthSets pending sets; a new pending set
//     first drops those older than cradle.PendingMenderAuthSetAge;
//   - device tokens are "<public id>.<secret>"; only the SHA-256 of the
//     whole string is stored. Checking one is one read, and writes only
//     when it is refused, at most once a minute per token (refusals);
//   - a device's protocol, its move from provisioned to deployed (as the
//     device itself, in its history) and its inventory are written only
//     when they change;
//   - hawkBit action ids are rows of ddi_actions, numbered by the database.
type ProtocolService struct {
	db *DB
	// noAutoAdmit turns off the admission of a new Mender auth set by
	// the MAC of a provisioned device (mender.auto_admit false).
	noAutoAdmit bool
	// refusals limits the audit rows of repeated refusals.
	refusals refusalLimiter
}

var _ cradle.ProtocolService = (*ProtocolService)(nil)

// NewProtocolService returns the Mender and hawkBit store of db, with
// automatic admission of Mender devices by MAC on.
func NewProtocolService(db *DB) *ProtocolService { return &ProtocolService{db: db} }

// SetMenderAutoAdmit turns automatic admission of Mender devices by the
// MAC of a provisioned device on or off (the server setting
// mender.auto_admit); off, every new auth set waits for an operator. Call
// it before the service is used. It returns s.
func (s *ProtocolService) SetMenderAutoAdmit(on bool) *ProtocolService {
	s.noAutoAdmit = !on
	return s
}

// refuseLimited audits a refusal as db.refuse does, but at most once a
// minute per key in this process; the audited row counts the refusals
// left out since the last one ("not_audited").
func (s *ProtocolService) refuseLimited(ctx context.Context, key string, tenantID int64, actor string, ev cradle.AuditEvent, err error) error {
	ok, skipped := s.refusals.allow(key, s.db.now())
	if !ok {
		return err
	}
	if d, isMap := ev.Details.(map[string]string); isMap && skipped > 0 {
		d["not_audited"] = strconv.Itoa(skipped)
	}
	return s.db.refuse(ctx, tenantID, actor, ev, err)
}

// Device tokens: "dtk_" and 16 hex digits (the public id), '.', and 43
// base64url characters (32 random bytes).
const (
	deviceTokenIDPrefix  = "dtk_"
	deviceTokenIDLen     = len(deviceTokenIDPrefix) + 16
	deviceTokenSecretLen = 43
	deviceTokenLen       = deviceTokenIDLen + 1 + deviceTokenSecretLen
	maxDeviceTokenName   = 128
	// staleSessionAge is how long after expiring a Mender session token
	// is kept (for the operator's view) before a login of its set deletes it.
	staleSessionAge = 24 * time.Hour
)

// newPublicID returns prefix and 16 random hex digits.
func newPublicID(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("sqlstore: random id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// newDeviceToken returns a token's public id and its whole string.
func newDeviceToken() (id, token string, err error) {
	if id, err = newPublicID(deviceTokenIDPrefix); err != nil {
		return "", "", err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("sqlstore: device token: %w", err)
	}
	return id, id + "." + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// parseDeviceToken returns the public id of a well-formed token string.
func parseDeviceToken(s string) (string, bool) {
	if len(s) != deviceTokenLen || !strings.HasPrefix(s, deviceTokenIDPrefix) || s[deviceTokenIDLen] != '.' || !isHex(s[len(deviceTokenIDPrefix):deviceTokenIDLen]) {
		return "", false
	}
	for _, c := range []byte(s[deviceTokenIDLen+1:]) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", false
		}
	}
	// 43 characters carry 258 bits: the last one holds 2 unused bits,
	// which a strict decoder requires to be zero.
	if _, err := base64.RawURLEncoding.Strict().DecodeString(s[deviceTokenIDLen+1:]); err != nil {
		return "", false
	}
	return s[:deviceTokenIDLen], true
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// deviceActorOf is the device itself, the actor of its own admission.
func deviceActorOf(tenantID int64, serial string) cradle.Actor {
	return cradle.Actor{TenantID: tenantID, Role: cradle.RoleDevice, Kind: "device", ID: serial}
}

// inadmissible reports whether a device in state s may not talk to the
// server at all.
func inadmissible(s cradle.State) bool {
	return s == cradle.StateSuspended || s == cradle.StateRMA || s == cradle.StateEOL
}

// deploy moves a locked provisioned device to deployed as the device
// itself, recorded in its history like any transition, and applies the
// tenant's quarantine policy as a first enrollment does.
func (tx *Tx) deploy(ctx context.Context, d *cradle.Device, reason string) error {
	dev := deviceActorOf(d.TenantID, d.Serial)
	t := cradle.DeviceTransition{To: cradle.StateDeployed, Reason: reason}
	if err := cradle.CheckTransition(d.Serial, d.State, t.To, dev.Role); err != nil {
		return err
	}
	if err := tx.transition(ctx, dev, d, t); err != nil {
		return err
	}
	return tx.quarantineUnclaimed(ctx, dev, d)
}

// setProtocol records the protocol a locked device talks, audited as its
// admission.
func (tx *Tx) setProtocol(ctx context.Context, a cradle.Actor, d *cradle.Device, p cradle.Protocol) error {
	from := d.Protocol
	if _, err := tx.exec(ctx, `UPDATE devices SET protocol = ?, updated_at = ? WHERE id = ?`, string(p), micros(tx.now), d.ID); err != nil {
		return fmt.Errorf("sqlstore: device protocol: %w", err)
	}
	d.Protocol, d.UpdatedAt = p, tx.now
	return tx.audit(ctx, d.TenantID, a.String(), cradle.AuditEvent{Action: "device.admit", Subject: "device:" + d.Serial,
		Details: map[string]string{"protocol": string(p), "previous": string(from)}})
}

// lockDeviceByID reads a device for change inside tx.
func (tx *Tx) lockDeviceByID(ctx context.Context, id int64) (*cradle.Device, error) {
	d, err := scanDevice(tx.queryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE id = ?`+tx.db.dialect.forUpdate, id))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find device: %w", err)
	}
	return d, nil
}

// ---- Mender auth sets ----

func authSetSubject(id string) string { return "mender_auth_set:" + id }

func authSetNotFound(id string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "mender auth set %q not found", clip(id, 40))
}

// authSet is a row of mender_auth_sets.
type authSet struct {
	id       int64
	deviceID sql.NullInt64
	cradle.MenderAuthSet
}

const authSetCols = `s.id, s.public_id, s.id_data, s.pubkey, s.key_fingerprint, s.status, s.device_id, COALESCE(d.serial, ''), s.decided_by, s.reason, s.created_at, s.updated_at`
const authSetFrom = ` FROM mender_auth_sets s LEFT JOIN devices d ON d.id = s.device_id`

func scanAuthSet(sc interface{ Scan(...any) error }) (*authSet, error) {
	s := &authSet{}
	var status string
	var created, updated int64
	if err := sc.Scan(&s.id, &s.ID, &s.IDData, &s.PublicKey, &s.KeyFingerprint, &status, &s.deviceID, &s.DeviceSerial, &s.DecidedBy, &s.Reason, &created, &updated); err != nil {
		return nil, err
	}
	s.Status = cradle.MenderAuthStatus(status)
	s.CreatedAt, s.UpdatedAt = fromMicros(created), fromMicros(updated)
	return s, nil
}

// lockAuthSet reads an auth set of the tenant for change inside tx. The
// row lock is on mender_auth_sets only (PostgreSQL refuses FOR UPDATE on
// the nullable side of an outer join).
func (tx *Tx) lockAuthSet(ctx context.Context, tenantID int64, where string, args ...any) (*authSet, error) {
	forUpdate := ""
	if tx.db.dialect.forUpdate != "" {
		forUpdate = " FOR UPDATE OF s"
	}
	s, err := scanAuthSet(tx.queryRow(ctx, `SELECT `+authSetCols+authSetFrom+` WHERE s.tenant_id = ? AND `+where+forUpdate, append([]any{tenantID}, args...)...))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: mender auth set: %w", err)
	}
	return s, nil
}

// setAuthStatus writes an auth set's decision.
func (tx *Tx) setAuthStatus(ctx context.Context, s *authSet, status cradle.MenderAuthStatus, deviceID sql.NullInt64, serial, decidedBy, reason string) error {
	if _, err := tx.exec(ctx, `UPDATE mender_auth_sets SET status = ?, device_id = ?, decided_by = ?, reason = ?, updated_at = ? WHERE id = ?`,
		string(status), deviceID, decidedBy, reason, micros(tx.now), s.id); err != nil {
		return fmt.Errorf("sqlstore: mender auth set: %w", err)
	}
	s.Status, s.deviceID, s.DeviceSerial, s.DecidedBy, s.Reason, s.UpdatedAt = status, deviceID, serial, decidedBy, reason, tx.now
	return nil
}

// revokeSetTokens revokes the live session tokens of an auth set and
// returns how many.
func (tx *Tx) revokeSetTokens(ctx context.Context, setID int64) (int64, error) {
	res, err := tx.exec(ctx, `UPDATE device_tokens SET revoked_at = ? WHERE auth_set_id = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
		micros(tx.now), setID, micros(tx.now))
	if err != nil {
		return 0, fmt.Errorf("sqlstore: revoke device tokens: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("sqlstore: revoke device tokens: %w", err)
	}
	tx.tokensRevoked = tx.tokensRevoked || n > 0
	return n, nil
}

// checkMenderRequest checks that a request is in the canonical forms the
// handler promises.
func checkMenderRequest(req cradle.MenderAuthRequest) error {
	canon, _, err := cradle.CanonicalMenderIDData(req.IDData)
	if err != nil {
		return err
	}
	if canon != req.IDData {
		return cradle.Errorf(cradle.EINVALID, "id_data is not canonical: pass it through cradle.CanonicalMenderIDData")
	}
	_, pub, fp, err := cradle.ParseDevicePublicKey(req.PublicKey)
	if err != nil {
		return err
	}
	if pub != req.PublicKey || fp != req.KeyFingerprint {
		return cradle.Errorf(cradle.EINVALID, "public key is not canonical or its fingerprint does not match: pass it through cradle.ParseDevicePublicKey")
	}
	if req.MAC != "" {
		if m, err := cradle.NormalizeMAC(req.MAC); err != nil || m != req.MAC {
			return cradle.Errorf(cradle.EINVALID, "invalid mac %q: lower case with colons, as cradle.CanonicalMenderIDData returns it", clip(req.MAC, 40))
		}
	}
	return nil
}

func pendingError(id string) error {
	return cradle.Errorf(cradle.EUNAUTHORIZED, "mender auth set %s is pending: an operator must accept it (cradle device mender accept %s --serial <serial>)", id, id)
}

func rejectedError(s *authSet) error {
	msg := fmt.Sprintf("mender auth set %s was rejected", s.ID)
	if s.Reason != "" {
		msg += " (" + clip(s.Reason, 200) + ")"
	}
	return cradle.Errorf(cradle.EUNAUTHORIZED, "%s: this identity and key are not admitted; an operator may accept it again", msg)
}

// MenderAuthenticate admits a verified auth request.
func (s *ProtocolService) MenderAuthenticate(ctx context.Context, req cradle.MenderAuthRequest, ttl time.Duration) (*cradle.IssuedToken, *cradle.Device, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "mender.auth", "mender")
	if err != nil {
		return nil, nil, err
	}
	if err := s.db.requireSystem(ctx, a, "mender.auth", "mender", "admit Mender devices"); err != nil {
		return nil, nil, err
	}
	if err := checkMenderRequest(req); err != nil {
		return nil, nil, err
	}
	if ttl <= 0 {
		return nil, nil, cradle.Errorf(cradle.EINVALID, "invalid session token lifetime %v: use a positive duration (default %v)", ttl, cradle.DefaultMenderTokenTTL)
	}
	idSum := sha256Hex(req.IDData)
	// A set that is pending or rejected answers from a read alone.
	cur, err := scanAuthSet(s.db.queryRow(ctx, `SELECT `+authSetCols+authSetFrom+` WHERE s.tenant_id = ? AND s.id_data_sha256 = ? AND s.key_fingerprint = ?`,
		a.TenantID, idSum, req.KeyFingerprint))
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, nil, fmt.Errorf("sqlstore: mender auth: %w", err)
	case cur.Status == cradle.MenderPending:
		return nil, nil, pendingError(cur.ID)
	case cur.Status == cradle.MenderRejected:
		return nil, nil, rejectedError(cur)
	}

	var out *cradle.IssuedToken
	var dev *cradle.Device
	var answer, forbidden error // answer: committed, then returned
	var refusedSet, refusedSerial string
	err = s.db.write(ctx, func(tx *Tx) error {
		// Serialize with the tenant's other audited writes (PostgreSQL),
		// so two first requests of one pair or one MAC cannot both win.
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		set, err := tx.lockAuthSet(ctx, a.TenantID, `s.id_data_sha256 = ? AND s.key_fingerprint = ?`, idSum, req.KeyFingerprint)
		if err != nil {
			return err
		}
		if set == nil {
			if set, err = tx.newAuthSet(ctx, a, req, idSum, !s.noAutoAdmit); err != nil {
				return err
			}
			if set == nil {
				answer = tooManyPending()
				return nil
			}
		}
		switch set.Status {
		case cradle.MenderPending:
			answer = pendingError(set.ID)
			return nil
		case cradle.MenderRejected:
			answer = rejectedError(set)
			return nil
		case cradle.MenderPreauthorized:
			if err := tx.setAuthStatus(ctx, set, cradle.MenderAccepted, set.deviceID, set.DeviceSerial, set.DecidedBy, ""); err != nil {
				return err
			}
			if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.accepted", Subject: authSetSubject(set.ID),
				Details: map[string]string{"device": set.DeviceSerial, "by": "preauthorization", "key_fingerprint": set.KeyFingerprint}}); err != nil {
				return err
			}
		}
		if !set.deviceID.Valid {
			return fmt.Errorf("sqlstore: mender auth set %s is accepted but bound to no device", set.ID)
		}
		d, err := tx.lockDeviceByID(ctx, set.deviceID.Int64)
		if err != nil {
			return err
		}
		refusedSet, refusedSerial = set.ID, d.Serial
		switch {
		case inadmissible(d.State):
			forbidden = cradle.Errorf(cradle.EFORBIDDEN, "device %q is in state %s: it may not log in", d.Serial, d.State)
			return forbidden
		case d.State != cradle.StateProvisioned && d.State != cradle.StateDeployed:
			forbidden = cradle.Errorf(cradle.EFORBIDDEN, "device %q is in state %s: it must be provisioned before it logs in", d.Serial, d.State)
			return forbidden
		case d.Protocol == cradle.ProtocolHawkbit:
			forbidden = cradle.Errorf(cradle.EFORBIDDEN, "device %q talks hawkbit: it may not log in with the Mender API", d.Serial)
			return forbidden
		}
		if d.Protocol != cradle.ProtocolMender {
			if err := tx.setProtocol(ctx, a, d, cradle.ProtocolMender); err != nil {
				return err
			}
		}
		if d.State == cradle.StateProvisioned {
			if err := tx.deploy(ctx, d, "admitted: mender auth set "+set.ID); err != nil {
				return err
			}
		}
		exp := tx.now.Add(ttl).Truncate(time.Microsecond)
		out, err = tx.insertDeviceToken(ctx, a, cradle.TokenMenderSession, d, set.id, "mender session", &exp)
		if err != nil {
			return err
		}
		// The set's old tokens go: sessions expired, and tokens revoked,
		// more than a day ago.
		stale := micros(tx.now.Add(-staleSessionAge))
		if _, err := tx.exec(ctx, `DELETE FROM device_tokens WHERE auth_set_id = ? AND ((kind = ? AND expires_at < ?) OR revoked_at < ?)`,
			set.id, string(cradle.TokenMenderSession), stale, stale); err != nil {
			return fmt.Errorf("sqlstore: mender auth: stale tokens: %w", err)
		}
		dev = d
		return nil
	})
	if forbidden != nil {
		return nil, nil, s.refuseLimited(ctx, "mender_auth_set:"+refusedSet, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.refused", Subject: authSetSubject(refusedSet),
			Details: map[string]string{"device": refusedSerial, "reason": cradle.ErrorMessage(forbidden)}}, forbidden)
	}
	if err != nil {
		return nil, nil, err
	}
	if answer != nil {
		return nil, nil, answer
	}
	return out, dev, nil
}

func tooManyPending() error {
	return cradle.Errorf(cradle.EUNAUTHORIZED, "this tenant already has %d pending Mender auth sets, the most kept: an operator must accept or reject some (cradle device mender list --status pending) before new devices can ask", cradle.MaxPendingMenderAuthSets)
}

// newAuthSet stores the first request of an (identity, key) pair: accepted
// and bound when auto is on and its MAC names exactly one provisioned
// device of the tenant that talks cradle or mender and has no accepted or
// preauthorized set, else pending. A pending set first drops the tenant's
// pending sets older than cradle.PendingMenderAuthSetAge; it returns nil,
// having written nothing else, when the tenant has
// cradle.MaxPendingMenderAuthSets pending sets already.
func (tx *Tx) newAuthSet(ctx context.Context, a cradle.Actor, req cradle.MenderAuthRequest, idSum string, auto bool) (*authSet, error) {
	pub, err := newPublicID("mas_")
	if err != nil {
		return nil, err
	}
	set := &authSet{MenderAuthSet: cradle.MenderAuthSet{ID: pub, IDData: req.IDData, PublicKey: req.PublicKey, KeyFingerprint: req.KeyFingerprint,
		Status: cradle.MenderPending, CreatedAt: tx.now, UpdatedAt: tx.now}}
	var match *cradle.Device
	if auto && req.MAC != "" {
		if match, err = tx.autoAdmitDevice(ctx, a.TenantID, req.MAC); err != nil {
			return nil, err
		}
	}
	if match == nil {
		if full, err := tx.makeRoomForPending(ctx, a); err != nil || full {
			return nil, err
		}
	}
	if match != nil {
		set.Status, set.DeviceSerial, set.DecidedBy = cradle.MenderAccepted, match.Serial, a.String()
		set.deviceID = sql.NullInt64{Int64: match.ID, Valid: true}
	}
	err = tx.queryRow(ctx, `INSERT INTO mender_auth_sets (public_id, tenant_id, id_data, id_data_sha256, pubkey, key_fingerprint, status, device_id, decided_by, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		set.ID, a.TenantID, set.IDData, idSum, set.PublicKey, set.KeyFingerprint, string(set.Status), set.deviceID, set.DecidedBy, micros(tx.now), micros(tx.now)).Scan(&set.id)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: mender auth set: %w", err)
	}
	details := map[string]string{"id_data": set.IDData, "key_fingerprint": set.KeyFingerprint}
	action := "mender.auth.pending"
	if match != nil {
		action, details["device"], details["by"] = "mender.auth.accepted", match.Serial, "mac "+req.MAC
	}
	if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: authSetSubject(set.ID), Details: details}); err != nil {
		return nil, err
	}
	return set, nil
}

// makeRoomForPending drops the tenant's pending sets older than
// cradle.PendingMenderAuthSetAge (audited, one row) and reports whether
// cradle.MaxPendingMenderAuthSets are still pending. Pending sets have
// no tokens, so nothing refers to them.
func (tx *Tx) makeRoomForPending(ctx context.Context, a cradle.Actor) (full bool, err error) {
	res, err := tx.exec(ctx, `DELETE FROM mender_auth_sets WHERE tenant_id = ? AND status = ? AND updated_at < ?`,
		a.TenantID, string(cradle.MenderPending), micros(tx.now.Add(-cradle.PendingMenderAuthSetAge)))
	if err != nil {
		return false, fmt.Errorf("sqlstore: mender auth: drop old pending sets: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.expired", Subject: "mender_auth_sets",
			Details: map[string]any{"dropped": n, "pending_for_more_than": cradle.PendingMenderAuthSetAge.String()}}); err != nil {
			return false, err
		}
	}
	var pending int
	if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM mender_auth_sets WHERE tenant_id = ? AND status = ? LIMIT ?) p`,
		a.TenantID, string(cradle.MenderPending), cradle.MaxPendingMenderAuthSets).Scan(&pending); err != nil {
		return false, fmt.Errorf("sqlstore: mender auth: pending sets: %w", err)
	}
	return pending >= cradle.MaxPendingMenderAuthSets, nil
}

// autoAdmitDevice returns the one device a new auth set with this MAC is
// accepted for, or nil. Only a provisioned device qualifies: a factory
// record not yet in service, whose first key this is. A deployed device
// has its credentials already, and a MAC is no secret: admitting by it
// would hand the device to whoever sends its MAC.
func (tx *Tx) autoAdmitDevice(ctx context.Context, tenantID int64, mac string) (*cradle.Device, error) {
	// macs is a JSON array of normalized MACs, so the quoted MAC finds
	// the candidates; the decoded list confirms them.
	rows, err := tx.query(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND state = 'provisioned' AND protocol IN ('cradle', 'mender') AND macs LIKE ?`,
		tenantID, `%"`+mac+`"%`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: mender auth: devices by mac: %w", err)
	}
	var found []*cradle.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlstore: mender auth: devices by mac: %w", err)
		}
		if slices.Contains(d.MACs, mac) {
			found = append(found, d)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: mender auth: devices by mac: %w", err)
	}
	if len(found) != 1 {
		return nil, nil
	}
	var n int
	if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM mender_auth_sets WHERE tenant_id = ? AND device_id = ? AND status IN (?, ?, ?)`,
		tenantID, found[0].ID, string(cradle.MenderAccepted), string(cradle.MenderPreauthorized), string(cradle.MenderRejected)).Scan(&n); err != nil {
		return nil, fmt.Errorf("sqlstore: mender auth: %w", err)
	}
	if n > 0 {
		// A second key of an admitted (or preauthorized) device waits
		// for an operator, and so does a new key of a device whose key
		// was rejected (revoked, returned for repair): its MAC alone does
		// not admit it again.
		return nil, nil
	}
	return found[0], nil
}

// FindMenderAuthSets lists auth sets, newest first.
func (s *ProtocolService) FindMenderAuthSets(ctx context.Context, f cradle.MenderAuthFilter) ([]*cradle.MenderAuthSet, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "mender.auth.list", "mender_auth_sets")
	if err != nil {
		return nil, err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	where, args := []string{"s.tenant_id = ?"}, []any{a.TenantID}
	if f.Status != nil {
		switch *f.Status {
		case cradle.MenderPending, cradle.MenderAccepted, cradle.MenderRejected, cradle.MenderPreauthorized:
		default:
			return nil, cradle.Errorf(cradle.EINVALID, "unknown status %q: use pending, accepted, rejected or preauthorized", clip(string(*f.Status), 40))
		}
		where, args = append(where, "s.status = ?"), append(args, string(*f.Status))
	}
	if f.Serial != "" {
		where, args = append(where, "d.serial = ?"), append(args, f.Serial)
	}
	rows, err := s.db.query(ctx, `SELECT `+authSetCols+authSetFrom+` WHERE `+strings.Join(where, " AND ")+` ORDER BY s.id DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find mender auth sets: %w", err)
	}
	defer rows.Close()
	out := []*cradle.MenderAuthSet{}
	for rows.Next() {
		set, err := scanAuthSet(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find mender auth sets: %w", err)
		}
		out = append(out, &set.MenderAuthSet)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: find mender auth sets: %w", err)
	}
	return out, nil
}

// FindMenderAuthSet returns one auth set.
func (s *ProtocolService) FindMenderAuthSet(ctx context.Context, id string) (*cradle.MenderAuthSet, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "mender.auth.read", authSetSubject(id))
	if err != nil {
		return nil, err
	}
	set, err := scanAuthSet(s.db.queryRow(ctx, `SELECT `+authSetCols+authSetFrom+` WHERE s.tenant_id = ? AND s.public_id = ?`, a.TenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, authSetNotFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find mender auth set: %w", err)
	}
	return &set.MenderAuthSet, nil
}

// AcceptMenderAuthSet accepts a pending or rejected set for a device,
// creating the device when needed.
func (s *ProtocolService) AcceptMenderAuthSet(ctx context.Context, id string, acc cradle.MenderAccept) (*cradle.MenderAuthSet, error) {
	subject := authSetSubject(id)
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "mender.auth.accept", subject)
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateSerial(acc.Serial); err != nil {
		return nil, err
	}
	// Creating the device needs the right to create devices too; the
	// refusal is audited like any other.
	if _, err := s.db.deviceID(ctx, a.TenantID, acc.Serial); cradle.ErrorCode(err) == cradle.ENOTFOUND {
		if _, err := s.db.authorize(ctx, cradle.PermDeviceCreate, "mender.auth.accept", subject); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	var out *cradle.MenderAuthSet
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		set, err := tx.lockAuthSet(ctx, a.TenantID, `s.public_id = ?`, id)
		if err != nil {
			return err
		}
		if set == nil {
			return authSetNotFound(id)
		}
		switch set.Status {
		case cradle.MenderAccepted:
			if set.DeviceSerial == acc.Serial {
				out = &set.MenderAuthSet // accepting twice changes nothing
				return nil
			}
			refused = cradle.Errorf(cradle.ECONFLICT, "mender auth set %s is already accepted for device %q; reject it first", set.ID, set.DeviceSerial)
			return refused
		case cradle.MenderPreauthorized:
			refused = cradle.Errorf(cradle.ECONFLICT, "mender auth set %s is preauthorized for device %q: it is accepted at the device's next request", set.ID, set.DeviceSerial)
			return refused
		}
		d, err := tx.lockDevice(ctx, a.TenantID, acc.Serial)
		switch {
		case cradle.ErrorCode(err) == cradle.ENOTFOUND:
			if !a.Role.Allowed(cradle.PermDeviceCreate) {
				refused = cradle.Errorf(cradle.EFORBIDDEN, "role %s may not create device %q", a.Role, acc.Serial)
				return refused
			}
			if d, err = tx.createMenderDevice(ctx, a, set, acc); err != nil {
				return err
			}
		case err != nil:
			return err
		case d.Protocol == cradle.ProtocolHawkbit:
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q talks hawkbit: a Mender key cannot be accepted for it", d.Serial)
			return refused
		case d.State != cradle.StateProvisioned && d.State != cradle.StateDeployed:
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q is in state %s: a Mender key can be accepted only for a provisioned or deployed device", d.Serial, d.State)
			return refused
		}
		// One key per device: the set accepted before is rejected.
		if _, err := tx.rejectDeviceSets(ctx, a, d, set.id, "superseded by "+set.ID, cradle.MenderAccepted); err != nil {
			return err
		}
		prev := set.Status
		if err := tx.setAuthStatus(ctx, set, cradle.MenderAccepted, sql.NullInt64{Int64: d.ID, Valid: true}, d.Serial, a.String(), ""); err != nil {
			return err
		}
		out = &set.MenderAuthSet
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.accepted", Subject: subject,
			Details: map[string]string{"device": d.Serial, "previous": string(prev), "key_fingerprint": set.KeyFingerprint}})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.accept.refused", Subject: subject,
			Details: map[string]string{"device": acc.Serial, "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// createMenderDevice creates the device an accepted set names, in state
// provisioned, through the same code as CreateDevice. The identity's MAC,
// if any, becomes the device's, so a new key of the same device is
// accepted by its MAC later only when the operator rejected this one.
func (tx *Tx) createMenderDevice(ctx context.Context, a cradle.Actor, set *authSet, acc cradle.MenderAccept) (*cradle.Device, error) {
	if acc.Model == "" {
		return nil, cradle.Errorf(cradle.EINVALID, "device %q does not exist: give its model to create it", acc.Serial)
	}
	c := cradle.DeviceCreate{Serial: acc.Serial, Model: acc.Model, HardwareRevision: acc.HardwareRevision, State: cradle.StateProvisioned}
	if _, mac, err := cradle.CanonicalMenderIDData(set.IDData); err == nil && mac != "" {
		c.MACs = []string{mac}
	}
	if err := c.Normalize(); err != nil {
		return nil, err
	}
	enc, err := encodeDevice(&c)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: create device: %w", err)
	}
	return tx.createDevice(ctx, a, &c, enc, cradle.ProtocolMender)
}

// rejectDeviceSets rejects the sets of device d in one of statuses, other
// than the set of internal id keep (0: none), revokes their tokens, audits
// each, and returns how many it rejected.
func (tx *Tx) rejectDeviceSets(ctx context.Context, a cradle.Actor, d *cradle.Device, keep int64, reason string, statuses ...cradle.MenderAuthStatus) (int, error) {
	q := `SELECT id, public_id FROM mender_auth_sets WHERE tenant_id = ? AND device_id = ? AND id <> ? AND status IN (?` + strings.Repeat(", ?", len(statuses)-1) + `) ORDER BY id`
	args := []any{d.TenantID, d.ID, keep}
	for _, st := range statuses {
		args = append(args, string(st))
	}
	rows, err := tx.query(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("sqlstore: mender auth sets: %w", err)
	}
	type old struct {
		id  int64
		pub string
	}
	var olds []old
	for rows.Next() {
		var o old
		if err := rows.Scan(&o.id, &o.pub); err != nil {
			rows.Close()
			return 0, fmt.Errorf("sqlstore: mender auth sets: %w", err)
		}
		olds = append(olds, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("sqlstore: mender auth sets: %w", err)
	}
	for _, o := range olds {
		if _, err := tx.exec(ctx, `UPDATE mender_auth_sets SET status = ?, decided_by = ?, reason = ?, updated_at = ? WHERE id = ?`,
			string(cradle.MenderRejected), a.String(), reason, micros(tx.now), o.id); err != nil {
			return 0, fmt.Errorf("sqlstore: mender auth sets: %w", err)
		}
		n, err := tx.revokeSetTokens(ctx, o.id)
		if err != nil {
			return 0, err
		}
		if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.rejected", Subject: authSetSubject(o.pub),
			Details: map[string]any{"device": d.Serial, "reason": reason, "tokens_revoked": n}}); err != nil {
			return 0, err
		}
	}
	return len(olds), nil
}

// RejectMenderAuthSet rejects a set and revokes its session tokens.
func (s *ProtocolService) RejectMenderAuthSet(ctx context.Context, id, reason string) (*cradle.MenderAuthSet, error) {
	subject := authSetSubject(id)
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "mender.auth.reject", subject)
	if err != nil {
		return nil, err
	}
	if len(reason) > cradle.MaxReasonLen || !utf8.ValidString(reason) {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid reason: at most %d bytes of UTF-8 text", cradle.MaxReasonLen)
	}
	var out *cradle.MenderAuthSet
	err = s.db.write(ctx, func(tx *Tx) error {
		set, err := tx.lockAuthSet(ctx, a.TenantID, `s.public_id = ?`, id)
		if err != nil {
			return err
		}
		if set == nil {
			return authSetNotFound(id)
		}
		out = &set.MenderAuthSet
		if set.Status == cradle.MenderRejected && set.Reason == reason {
			return nil
		}
		prev := set.Status
		if err := tx.setAuthStatus(ctx, set, cradle.MenderRejected, set.deviceID, set.DeviceSerial, a.String(), reason); err != nil {
			return err
		}
		n, err := tx.revokeSetTokens(ctx, set.id)
		if err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.rejected", Subject: subject,
			Details: map[string]any{"device": set.DeviceSerial, "previous": prev, "reason": reason, "tokens_revoked": n}})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PreauthorizeMender stores a preauthorized set for an existing device.
func (s *ProtocolService) PreauthorizeMender(ctx context.Context, p cradle.MenderPreauth) (*cradle.MenderAuthSet, error) {
	subject := "device:" + p.Serial
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "mender.auth.preauthorize", subject)
	if err != nil {
		return nil, err
	}
	idData, _, err := cradle.CanonicalMenderIDData(p.IDData)
	if err != nil {
		return nil, err
	}
	_, pub, fp, err := cradle.ParseDevicePublicKey(p.PublicKey)
	if err != nil {
		return nil, err
	}
	idSum := sha256Hex(idData)
	var out *cradle.MenderAuthSet
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, p.Serial)
		if err != nil {
			return err
		}
		if d.Protocol == cradle.ProtocolHawkbit {
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q talks hawkbit: a Mender key cannot be preauthorized for it", d.Serial)
			return refused
		}
		if inadmissible(d.State) {
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q is in state %s: a Mender key cannot be preauthorized for it", d.Serial, d.State)
			return refused
		}
		old, err := tx.lockAuthSet(ctx, a.TenantID, `s.id_data_sha256 = ? AND s.key_fingerprint = ?`, idSum, fp)
		if err != nil {
			return err
		}
		if old != nil {
			refused = cradle.Errorf(cradle.ECONFLICT, "this identity and key are already known as mender auth set %s (%s); accept or reject that one", old.ID, old.Status)
			return refused
		}
		id, err := newPublicID("mas_")
		if err != nil {
			return err
		}
		set := &authSet{deviceID: sql.NullInt64{Int64: d.ID, Valid: true}, MenderAuthSet: cradle.MenderAuthSet{ID: id, IDData: idData, PublicKey: pub,
			KeyFingerprint: fp, Status: cradle.MenderPreauthorized, DeviceSerial: d.Serial, DecidedBy: a.String(), CreatedAt: tx.now, UpdatedAt: tx.now}}
		err = tx.queryRow(ctx, `INSERT INTO mender_auth_sets (public_id, tenant_id, id_data, id_data_sha256, pubkey, key_fingerprint, status, device_id, decided_by, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			set.ID, a.TenantID, idData, idSum, pub, fp, string(set.Status), set.deviceID, set.DecidedBy, micros(tx.now), micros(tx.now)).Scan(&set.id)
		if tx.db.dialect.uniqueViolation(err) {
			refused = cradle.Errorf(cradle.ECONFLICT, "this identity and key are already known as a mender auth set")
			return refused
		} else if err != nil {
			return fmt.Errorf("sqlstore: preauthorize: %w", err)
		}
		out = &set.MenderAuthSet
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.preauthorized", Subject: authSetSubject(id),
			Details: map[string]string{"device": d.Serial, "id_data": idData, "key_fingerprint": fp}})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "mender.auth.preauthorize.refused", Subject: subject,
			Details: map[string]string{"reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ---- Device tokens ----

const deviceTokenCols = `t.public_id, t.kind, COALESCE(d.serial, ''), t.name, t.created_by, t.created_at, t.expires_at, t.revoked_at`

func scanDeviceToken(sc interface{ Scan(...any) error }) (*cradle.DeviceToken, error) {
	t := &cradle.DeviceToken{}
	var kind string
	var created int64
	var expires, revoked sql.NullInt64
	if err := sc.Scan(&t.ID, &kind, &t.DeviceSerial, &t.Name, &t.CreatedBy, &created, &expires, &revoked); err != nil {
		return nil, err
	}
	t.Kind, t.CreatedAt, t.ExpiresAt, t.RevokedAt = cradle.DeviceTokenKind(kind), fromMicros(created), fromNullMicros(expires), fromNullMicros(revoked)
	return t, nil
}

// insertDeviceToken makes a token of kind for device d (nil: a gateway
// token) and audits it.
func (tx *Tx) insertDeviceToken(ctx context.Context, a cradle.Actor, kind cradle.DeviceTokenKind, d *cradle.Device, authSetID int64, name string, expires *time.Time) (*cradle.IssuedToken, error) {
	id, secret, err := newDeviceToken()
	if err != nil {
		return nil, err
	}
	tok := cradle.DeviceToken{ID: id, Kind: kind, Name: name, CreatedBy: a.String(), CreatedAt: tx.now, ExpiresAt: expires}
	var devID, setID any
	if d != nil {
		devID, tok.DeviceSerial = d.ID, d.Serial
	}
	if authSetID != 0 {
		setID = authSetID
	}
	if _, err := tx.exec(ctx, `INSERT INTO device_tokens (public_id, tenant_id, device_id, auth_set_id, kind, name, secret_hash, created_by, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		id, a.TenantID, devID, setID, string(kind), name, sha256Hex(secret), tok.CreatedBy, micros(tx.now), nullMicros(expires)); err != nil {
		return nil, fmt.Errorf("sqlstore: device token: %w", err)
	}
	details := map[string]string{"kind": string(kind), "device": tok.DeviceSerial, "name": name}
	if expires != nil {
		details["expires_at"] = expires.Format(time.RFC3339)
	}
	if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.token.create", Subject: "device_token:" + id, Details: details}); err != nil {
		return nil, err
	}
	return &cradle.IssuedToken{Token: tok, Secret: secret}, nil
}

// CreateDeviceToken makes a target, gateway or Mender tenant token.
func (s *ProtocolService) CreateDeviceToken(ctx context.Context, c cradle.DeviceTokenCreate) (*cradle.IssuedToken, error) {
	a, err := s.db.authorize(ctx, cradle.PermTokenWrite, "device.token.create", "device_token:new")
	if err != nil {
		return nil, err
	}
	switch {
	case c.Kind == cradle.TokenHawkbitTarget && c.Serial == "":
		return nil, cradle.Errorf(cradle.EINVALID, "a target token needs the serial of its device")
	case (c.Kind == cradle.TokenGateway || c.Kind == cradle.TokenMenderTenant) && c.Serial != "":
		return nil, cradle.Errorf(cradle.EINVALID, "a %s token is the tenant's, not a device's: leave the serial empty", c.Kind)
	case c.Kind != cradle.TokenHawkbitTarget && c.Kind != cradle.TokenGateway && c.Kind != cradle.TokenMenderTenant:
		return nil, cradle.Errorf(cradle.EINVALID, "invalid token kind %q: use target, gateway or tenant (Mender session tokens are issued at login)", clip(string(c.Kind), 40))
	case len(c.Name) > maxDeviceTokenName || !utf8.ValidString(c.Name) || strings.ContainsFunc(c.Name, unicode.IsControl):
		return nil, cradle.Errorf(cradle.EINVALID, "invalid name: at most %d bytes of UTF-8 text without control characters", maxDeviceTokenName)
	}
	now := s.db.now()
	var exp *time.Time
	if c.ExpiresAt != nil {
		e := c.ExpiresAt.UTC().Truncate(time.Microsecond)
		if !e.After(now) {
			return nil, cradle.Errorf(cradle.EINVALID, "invalid expires_at %s: it is not in the future", e.Format(time.RFC3339))
		}
		exp = &e
	}
	var out *cradle.IssuedToken
	err = s.db.write(ctx, func(tx *Tx) error {
		var d *cradle.Device
		if c.Serial != "" {
			var err error
			if d, err = tx.lockDevice(ctx, a.TenantID, c.Serial); err != nil {
				return err
			}
		}
		var err error
		out, err = tx.insertDeviceToken(ctx, a, c.Kind, d, 0, c.Name, exp)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FindDeviceTokens lists a device's tokens, or the tenant's gateway and
// Mender tenant tokens: the newest cradle.MaxPageSize.
func (s *ProtocolService) FindDeviceTokens(ctx context.Context, serial string) ([]*cradle.DeviceToken, error) {
	subject := "device_tokens"
	if serial != "" {
		subject = "device:" + serial
	}
	a, err := s.db.authorize(ctx, cradle.PermTokenRead, "device.token.list", subject)
	if err != nil {
		return nil, err
	}
	q := `SELECT ` + deviceTokenCols + ` FROM device_tokens t LEFT JOIN devices d ON d.id = t.device_id WHERE t.tenant_id = ? AND `
	args := []any{a.TenantID}
	if serial == "" {
		q += `t.device_id IS NULL`
	} else {
		devID, err := s.db.deviceID(ctx, a.TenantID, serial)
		if err != nil {
			return nil, err
		}
		q, args = q+`t.device_id = ?`, append(args, devID)
	}
	rows, err := s.db.query(ctx, q+` ORDER BY t.id DESC LIMIT ?`, append(args, cradle.MaxPageSize)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find device tokens: %w", err)
	}
	defer rows.Close()
	out := []*cradle.DeviceToken{}
	for rows.Next() {
		t, err := scanDeviceToken(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find device tokens: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeDeviceToken revokes one token of the tenant.
func (s *ProtocolService) RevokeDeviceToken(ctx context.Context, id string) error {
	subject := "device_token:" + id
	a, err := s.db.authorize(ctx, cradle.PermTokenWrite, "device.token.revoke", subject)
	if err != nil {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		var revoked sql.NullInt64
		var serial string
		err := tx.queryRow(ctx, `SELECT t.revoked_at, COALESCE(d.serial, '') FROM device_tokens t LEFT JOIN devices d ON d.id = t.device_id WHERE t.tenant_id = ? AND t.public_id = ?`,
			a.TenantID, id).Scan(&revoked, &serial)
		if errors.Is(err, sql.ErrNoRows) {
			return cradle.Errorf(cradle.ENOTFOUND, "device token %q not found", clip(id, 40))
		} else if err != nil {
			return fmt.Errorf("sqlstore: revoke device token: %w", err)
		}
		if revoked.Valid {
			return nil
		}
		tx.tokensRevoked = true
		if _, err := tx.exec(ctx, `UPDATE device_tokens SET revoked_at = ? WHERE tenant_id = ? AND public_id = ?`, micros(tx.now), a.TenantID, id); err != nil {
			return fmt.Errorf("sqlstore: revoke device token: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.token.revoke", Subject: subject, Details: map[string]string{"device": serial}})
	})
}

// RevokeDeviceTokens revokes every live token of a device and rejects its
// accepted and preauthorized Mender auth sets, so that its Mender client
// cannot simply log in again.
func (s *ProtocolService) RevokeDeviceTokens(ctx context.Context, serial string) (int, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermTokenWrite, "device.token.revoke", subject)
	if err != nil {
		return 0, err
	}
	var n int64
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		res, err := tx.exec(ctx, `UPDATE device_tokens SET revoked_at = ? WHERE tenant_id = ? AND device_id = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
			micros(tx.now), a.TenantID, d.ID, micros(tx.now))
		if err != nil {
			return fmt.Errorf("sqlstore: revoke device tokens: %w", err)
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		tx.tokensRevoked = tx.tokensRevoked || n > 0
		if n > 0 {
			if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.token.revoke", Subject: subject, Details: map[string]int64{"revoked": n}}); err != nil {
				return err
			}
		}
		_, err = tx.rejectDeviceSets(ctx, a, d, 0, "tokens revoked", cradle.MenderAccepted, cradle.MenderPreauthorized)
		return err
	})
	return int(n), err
}

// authTokenQuery reads a token with its tenant and its device (zero
// columns for a gateway token) in one statement.
const authTokenQuery = `SELECT t.public_id, t.kind, t.name, t.created_by, t.created_at, t.expires_at, t.revoked_at, t.secret_hash, t.tenant_id,
	COALESCE(d.id, 0), COALESCE(d.tenant_id, 0), COALESCE(d.serial, ''), COALESCE(d.hardware_uid, ''), COALESCE(d.macs, '[]'), COALESCE(d.model, ''),
	COALESCE(d.hardware_revision, ''), COALESCE(d.labels, '{}'), COALESCE(d.state, ''), COALESCE(d.protocol, ''), COALESCE(d.created_at, 0),
	COALESCE(d.updated_at, 0), COALESCE(d.state_changed_at, 0)
	FROM device_tokens t JOIN tenants tn ON tn.id = t.tenant_id LEFT JOIN devices d ON d.id = t.device_id WHERE t.public_id = ?`

// AuthenticateDeviceToken checks a token string across tenants.
func (s *ProtocolService) AuthenticateDeviceToken(ctx context.Context, secret string) (*cradle.DeviceTokenAuth, error) {
	a, err := s.db.authorize(ctx, cradle.PermTokenRead, "device.token.auth", "device_tokens")
	if err != nil {
		return nil, err
	}
	if a.Role != cradle.RoleSystem {
		return nil, s.db.requireSystem(ctx, a, "device.token.auth", "device_tokens", "check device tokens")
	}
	id, ok := parseDeviceToken(secret)
	if !ok {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "malformed device token: expected dtk_<16 hex>.<secret> as issued by the server")
	}
	tok := cradle.DeviceToken{}
	var kind, hashHex string
	var created int64
	var expires, revoked sql.NullInt64
	var tenantID int64
	row := s.db.queryRowPrepared(ctx, authTokenQuery, id)
	d, err := scanDevice(scanFunc(func(dest ...any) error {
		return row.Scan(append([]any{&tok.ID, &kind, &tok.Name, &tok.CreatedBy, &created, &expires, &revoked, &hashHex, &tenantID}, dest...)...)
	}))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "unknown device token %s", id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: authenticate device token: %w", err)
	}
	tok.Kind, tok.CreatedAt, tok.ExpiresAt, tok.RevokedAt = cradle.DeviceTokenKind(kind), fromMicros(created), fromNullMicros(expires), fromNullMicros(revoked)
	if d.ID == 0 {
		d = nil
	} else {
		tok.DeviceSerial = d.Serial
	}
	refuse := func(why string, err error) (*cradle.DeviceTokenAuth, error) {
		details := map[string]string{"reason": why, "kind": kind}
		if d != nil {
			details["device"] = d.Serial
		}
		return nil, s.refuseLimited(ctx, "device_token:"+id, tenantID, "anonymous", cradle.AuditEvent{Action: "device.token.refused", Subject: "device_token:" + id, Details: details}, err)
	}
	if subtle.ConstantTimeCompare([]byte(sha256Hex(secret)), []byte(hashHex)) != 1 {
		return refuse("wrong secret", cradle.Errorf(cradle.EUNAUTHORIZED, "unknown device token %s: the secret does not match", id))
	}
	now := cradle.Now(s.db.clock)
	switch {
	case tok.RevokedAt != nil:
		return refuse("revoked", cradle.Errorf(cradle.EUNAUTHORIZED, "device token %s was revoked at %s", id, tok.RevokedAt.Format(time.RFC3339)))
	case tok.ExpiresAt != nil && !now.Before(*tok.ExpiresAt):
		return refuse("expired", cradle.Errorf(cradle.EUNAUTHORIZED, "device token %s expired at %s", id, tok.ExpiresAt.Format(time.RFC3339)))
	case d != nil && inadmissible(d.State):
		return refuse("device "+string(d.State), cradle.Errorf(cradle.EFORBIDDEN, "device %q is in state %s: its tokens are refused", d.Serial, d.State))
	}
	return &cradle.DeviceTokenAuth{Token: tok, TenantID: tenantID, Device: d}, nil
}

// ---- Admission ----

// AdmitDevice records the protocol a device talks and deploys it.
func (s *ProtocolService) AdmitDevice(ctx context.Context, serial string, p cradle.Protocol) (*cradle.Device, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermDeviceTransition, "device.admit", subject)
	if err != nil {
		return nil, err
	}
	if err := s.db.ownDevice(ctx, a, serial, "admit", "device.admit.refused"); err != nil {
		return nil, err
	}
	if !slices.Contains(cradle.Protocols, p) {
		return nil, cradle.Errorf(cradle.EINVALID, "unknown protocol %q: use cradle, mender or hawkbit", clip(string(p), 40))
	}
	if cradle.ValidateSerial(serial) != nil {
		return nil, notFound(serial)
	}
	d, err := scanDevice(s.db.queryRowPrepared(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND serial = ?`, a.TenantID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: admit device: %w", err)
	}
	if d.Protocol == p && d.State == cradle.StateDeployed {
		return d, nil
	}
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		var err error
		if d, err = tx.lockDevice(ctx, a.TenantID, serial); err != nil {
			return err
		}
		if d.State != cradle.StateProvisioned && d.State != cradle.StateDeployed {
			refused = cradle.Errorf(cradle.ECONFLICT, "device %q is in state %s: only a provisioned or deployed device is admitted", serial, d.State)
			return refused
		}
		if d.Protocol != p {
			if refused, err = tx.checkProtocolSwitch(ctx, d, p); err != nil {
				return err
			} else if refused != nil {
				return refused
			}
			if err := tx.setProtocol(ctx, a, d, p); err != nil {
				return err
			}
		}
		if d.State == cradle.StateProvisioned {
			return tx.deploy(ctx, d, "admitted: "+string(p))
		}
		return nil
	})
	if refused != nil {
		// A refused device keeps polling: one audit row a minute.
		return nil, s.refuseLimited(ctx, fmt.Sprintf("device.admit:%d/%s", a.TenantID, serial), a.TenantID, a.String(), cradle.AuditEvent{Action: "device.admit.refused", Subject: subject,
			Details: map[string]string{"protocol": string(p), "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// checkProtocolSwitch returns the refusal (ECONFLICT) of locked device d
// switching to protocol p, or nil when the switch is allowed: never
// between the foreign protocols, and from cradle to a foreign one only
// while d is provisioned, when the device proved itself with its own
// credential (cradle.OwnCredentialFromContext), or when an operator chose
// it (hawkbit: d has a live target token; mender: d has an accepted auth
// set). Back to cradle (the native agent, with its device certificate)
// is allowed.
func (tx *Tx) checkProtocolSwitch(ctx context.Context, d *cradle.Device, p cradle.Protocol) (refused, err error) {
	foreign := func(p cradle.Protocol) bool { return p == cradle.ProtocolMender || p == cradle.ProtocolHawkbit }
	switch {
	case !foreign(p):
		return nil, nil
	case foreign(d.Protocol):
		return cradle.Errorf(cradle.ECONFLICT, "device %q talks %s: it may not switch to %s", d.Serial, d.Protocol, p), nil
	case d.State == cradle.StateProvisioned, cradle.OwnCredentialFromContext(ctx):
		return nil, nil
	}
	var n int
	var how string
	if p == cradle.ProtocolHawkbit {
		err = tx.queryRow(ctx, `SELECT COUNT(*) FROM device_tokens WHERE device_id = ? AND kind = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
			d.ID, string(cradle.TokenHawkbitTarget), micros(tx.now)).Scan(&n)
		how = "an operator gives it a target token (cradle device token create --serial " + d.Serial + ")"
	} else {
		err = tx.queryRow(ctx, `SELECT COUNT(*) FROM mender_auth_sets WHERE device_id = ? AND status = ?`, d.ID, string(cradle.MenderAccepted)).Scan(&n)
		how = "an operator accepts its Mender key (cradle device mender accept)"
	}
	if err != nil {
		return nil, fmt.Errorf("sqlstore: admit device: %w", err)
	}
	if n > 0 {
		return nil, nil
	}
	return cradle.Errorf(cradle.ECONFLICT, "device %q is %s and talks cradle: it switches to %s only when %s", d.Serial, d.State, p, how), nil
}

// ---- Inventory attributes ----

// attributeActor authorizes a call on a device's attributes: the device
// for itself with devicePerm, anyone else with otherPerm.
func (s *ProtocolService) attributeActor(ctx context.Context, serial, action string, devicePerm, otherPerm cradle.Permission) (cradle.Actor, error) {
	p := otherPerm
	if a, ok := cradle.ActorFromContext(ctx); ok && a.Role == cradle.RoleDevice {
		p = devicePerm
	}
	a, err := s.db.authorize(ctx, p, action, "device:"+serial)
	if err != nil {
		return a, err
	}
	return a, s.db.ownDevice(ctx, a, serial, "touch the attributes", action+".refused")
}

func validateAttributeName(n string) error {
	if n == "" || len(n) > cradle.MaxAttributeNameLen || !utf8.ValidString(n) || strings.ContainsFunc(n, unicode.IsControl) {
		return cradle.Errorf(cradle.EINVALID, "invalid attribute name %q: 1 to %d bytes of UTF-8 text without control characters", clip(n, 40), cradle.MaxAttributeNameLen)
	}
	return nil
}

// currentAttributes reads a device's attributes by name.
func currentAttributes(ctx context.Context, query queryFunc, deviceID int64) (map[string]string, error) {
	rows, err := query(ctx, `SELECT name, value FROM device_attributes WHERE device_id = ?`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: device attributes: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var n, v string
		if err := rows.Scan(&n, &v); err != nil {
			return nil, fmt.Errorf("sqlstore: device attributes: %w", err)
		}
		out[n] = v
	}
	return out, rows.Err()
}

// attributeChanges returns the names to write and to delete to go from cur
// to the given attributes.
func attributeChanges(cur map[string]string, attrs []cradle.DeviceAttribute, replace bool) (set, drop []string, err error) {
	given := make(map[string]bool, len(attrs))
	for _, at := range attrs {
		given[at.Name] = true
		if v, ok := cur[at.Name]; !ok || v != at.Value {
			set = append(set, at.Name)
		}
	}
	total := len(attrs)
	for n := range cur {
		if given[n] {
			continue
		}
		if replace {
			drop = append(drop, n)
		} else {
			total++
		}
	}
	if total > cradle.MaxDeviceAttributes {
		return nil, nil, cradle.Errorf(cradle.EINVALID, "too many attributes: the device would have %d, at most %d are kept", total, cradle.MaxDeviceAttributes)
	}
	sort.Strings(set)
	sort.Strings(drop)
	return set, drop, nil
}

// SetDeviceAttributes stores inventory attributes, writing only changes.
func (s *ProtocolService) SetDeviceAttributes(ctx context.Context, serial string, attrs []cradle.DeviceAttribute, replace bool) error {
	a, err := s.attributeActor(ctx, serial, "device.attributes", cradle.PermTwinReport, cradle.PermDeviceUpdate)
	if err != nil {
		return err
	}
	if len(attrs) > cradle.MaxDeviceAttributes {
		return cradle.Errorf(cradle.EINVALID, "too many attributes: %d, at most %d", len(attrs), cradle.MaxDeviceAttributes)
	}
	byName := make(map[string]string, len(attrs))
	for _, at := range attrs {
		if err := validateAttributeName(at.Name); err != nil {
			return err
		}
		if len(at.Value) > cradle.MaxAttributeValueLen || !utf8.ValidString(at.Value) || strings.IndexByte(at.Value, 0) >= 0 {
			return cradle.Errorf(cradle.EINVALID, "invalid value of attribute %q: at most %d bytes of UTF-8 text without NUL", clip(at.Name, 40), cradle.MaxAttributeValueLen)
		}
		if _, dup := byName[at.Name]; dup {
			return cradle.Errorf(cradle.EINVALID, "attribute %q is given twice", clip(at.Name, 40))
		}
		byName[at.Name] = at.Value
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	cur, err := currentAttributes(ctx, s.db.query, devID)
	if err != nil {
		return err
	}
	set, drop, err := attributeChanges(cur, attrs, replace)
	if err != nil || len(set)+len(drop) == 0 {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		// Read again under the device's lock: another report may have
		// landed since.
		if _, err := tx.lockDeviceByID(ctx, devID); err != nil {
			return err
		}
		cur, err := currentAttributes(ctx, tx.query, devID)
		if err != nil {
			return err
		}
		set, drop, err := attributeChanges(cur, attrs, replace)
		if err != nil || len(set)+len(drop) == 0 {
			return err
		}
		for _, n := range set {
			if _, err := tx.exec(ctx, `INSERT INTO device_attributes (device_id, name, value, updated_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (device_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, devID, n, byName[n], micros(tx.now)); err != nil {
				return fmt.Errorf("sqlstore: set device attributes: %w", err)
			}
		}
		if err := tx.dropAttributes(ctx, devID, drop); err != nil {
			return err
		}
		details := map[string]any{"changed": set}
		if len(drop) > 0 {
			details["removed"] = drop
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.attributes", Subject: "device:" + serial, Details: details})
	})
}

func (tx *Tx) dropAttributes(ctx context.Context, devID int64, names []string) error {
	for _, n := range names {
		if _, err := tx.exec(ctx, `DELETE FROM device_attributes WHERE device_id = ? AND name = ?`, devID, n); err != nil {
			return fmt.Errorf("sqlstore: remove device attributes: %w", err)
		}
	}
	return nil
}

// RemoveDeviceAttributes drops the named attributes.
func (s *ProtocolService) RemoveDeviceAttributes(ctx context.Context, serial string, names []string) error {
	a, err := s.attributeActor(ctx, serial, "device.attributes", cradle.PermTwinReport, cradle.PermDeviceUpdate)
	if err != nil {
		return err
	}
	if len(names) > cradle.MaxDeviceAttributes {
		return cradle.Errorf(cradle.EINVALID, "too many attribute names: %d, at most %d", len(names), cradle.MaxDeviceAttributes)
	}
	for _, n := range names {
		if err := validateAttributeName(n); err != nil {
			return err
		}
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	present := func(cur map[string]string) []string {
		var out []string
		for _, n := range names {
			if _, ok := cur[n]; ok && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
		sort.Strings(out)
		return out
	}
	cur, err := currentAttributes(ctx, s.db.query, devID)
	if err != nil || len(present(cur)) == 0 {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		if _, err := tx.lockDeviceByID(ctx, devID); err != nil {
			return err
		}
		cur, err := currentAttributes(ctx, tx.query, devID)
		if err != nil {
			return err
		}
		drop := present(cur)
		if len(drop) == 0 {
			return nil
		}
		if err := tx.dropAttributes(ctx, devID, drop); err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.attributes", Subject: "device:" + serial,
			Details: map[string]any{"changed": []string{}, "removed": drop}})
	})
}

// FindDeviceAttributes returns a device's attributes by name.
func (s *ProtocolService) FindDeviceAttributes(ctx context.Context, serial string) ([]cradle.DeviceAttribute, error) {
	a, err := s.attributeActor(ctx, serial, "device.attributes.read", cradle.PermTwinRead, cradle.PermDeviceRead)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT name, value, updated_at FROM device_attributes WHERE device_id = ? ORDER BY name`, devID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find device attributes: %w", err)
	}
	defer rows.Close()
	out := []cradle.DeviceAttribute{}
	for rows.Next() {
		var at cradle.DeviceAttribute
		var upd int64
		if err := rows.Scan(&at.Name, &at.Value, &upd); err != nil {
			return nil, fmt.Errorf("sqlstore: find device attributes: %w", err)
		}
		at.UpdatedAt = fromMicros(upd)
		out = append(out, at)
	}
	return out, rows.Err()
}

// ---- hawkBit actions and update logs ----

// rolloutAttempt returns the internal id of a rollout of the tenant that
// device devID is in, checking that attempt is one it has made.
func rolloutAttempt(ctx context.Context, queryRow func(context.Context, string, ...any) *sql.Row, tenantID, devID int64, serial, rolloutID string, attempt int) (int64, error) {
	var id int64
	var cur int
	err := queryRow(ctx, `SELECT ro.id, rd.attempt FROM rollouts ro JOIN rollout_devices rd ON rd.rollout_id = ro.id
		WHERE ro.tenant_id = ? AND ro.public_id = ? AND rd.device_id = ?`, tenantID, rolloutID, devID).Scan(&id, &cur)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, cradle.Errorf(cradle.ENOTFOUND, "device %q is not in rollout %q", serial, clip(rolloutID, 40))
	} else if err != nil {
		return 0, fmt.Errorf("sqlstore: rollout attempt: %w", err)
	}
	if attempt > cur {
		return 0, cradle.Errorf(cradle.ENOTFOUND, "device %q has made no attempt %d in rollout %q (its latest is %d)", serial, attempt, rolloutID, cur)
	}
	return id, nil
}

func checkAttempt(rolloutID string, attempt int) error {
	if rolloutID == "" {
		return cradle.Errorf(cradle.EINVALID, "rollout_id is required")
	}
	if attempt < 1 {
		return cradle.Errorf(cradle.EINVALID, "invalid attempt %d: attempts count from 1", attempt)
	}
	return nil
}

// sequenceExhausted reports PostgreSQL's "reached maximum value of
// sequence".
func sequenceExhausted(err error) bool {
	var e *pgconn.PgError
	return errors.As(err, &e) && e.Code == "2200H"
}

// DDIAction returns the action of a device's attempt, making it the first
// time. Concurrent first calls get the same action: the insert yields to
// the unique (device, rollout, attempt) key and both read the winner's row.
func (s *ProtocolService) DDIAction(ctx context.Context, serial, rolloutID string, attempt int) (*cradle.DDIAction, error) {
	a, err := s.db.updateActor(ctx, "update.action", serial)
	if err != nil {
		return nil, err
	}
	if err := checkAttempt(rolloutID, attempt); err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	const find = `SELECT a.id, a.created_at FROM ddi_actions a JOIN rollouts ro ON ro.id = a.rollout_id
		WHERE a.device_id = ? AND ro.tenant_id = ? AND ro.public_id = ? AND a.attempt = ?`
	act := &cradle.DDIAction{Serial: serial, RolloutID: rolloutID, Attempt: attempt}
	var created int64
	err = s.db.queryRowPrepared(ctx, find, devID, a.TenantID, rolloutID, attempt).Scan(&act.ID, &created)
	if err == nil {
		act.CreatedAt = fromMicros(created)
		return act, nil
	} else if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlstore: ddi action: %w", err)
	}
	err = s.db.write(ctx, func(tx *Tx) error {
		roID, err := rolloutAttempt(ctx, tx.queryRow, a.TenantID, devID, serial, rolloutID, attempt)
		if err != nil {
			return err
		}
		res, err := tx.exec(ctx, `INSERT INTO ddi_actions (tenant_id, device_id, rollout_id, attempt, created_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (device_id, rollout_id, attempt) DO NOTHING`, a.TenantID, devID, roID, attempt, micros(tx.now))
		if sequenceExhausted(err) {
			return cradle.Errorf(cradle.EINTERNAL, "hawkBit action ids are exhausted (%d)", cradle.MaxDDIActionID)
		} else if err != nil {
			return fmt.Errorf("sqlstore: ddi action: %w", err)
		}
		made, _ := res.RowsAffected()
		if err := tx.queryRow(ctx, `SELECT id, created_at FROM ddi_actions WHERE device_id = ? AND rollout_id = ? AND attempt = ?`, devID, roID, attempt).Scan(&act.ID, &created); err != nil {
			return fmt.Errorf("sqlstore: ddi action: %w", err)
		}
		act.CreatedAt = fromMicros(created)
		if act.ID < 1 || act.ID > cradle.MaxDDIActionID {
			return cradle.Errorf(cradle.EINTERNAL, "hawkBit action ids are exhausted: %d is past %d", act.ID, cradle.MaxDDIActionID)
		}
		if made == 0 {
			return nil // a concurrent call made it
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.action", Subject: "device:" + serial,
			Details: map[string]any{"rollout": rolloutID, "attempt": attempt, "action_id": act.ID}})
	})
	if err != nil {
		return nil, err
	}
	return act, nil
}

// FindDDIAction returns one of the device's actions by id.
func (s *ProtocolService) FindDDIAction(ctx context.Context, serial string, id int64) (*cradle.DDIAction, error) {
	a, err := s.db.updateActor(ctx, "update.action", serial)
	if err != nil {
		return nil, err
	}
	notFound := cradle.Errorf(cradle.ENOTFOUND, "device %q has no action %d", serial, id)
	if id < 1 || id > cradle.MaxDDIActionID {
		return nil, notFound
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	act := &cradle.DDIAction{ID: id, Serial: serial}
	var created int64
	err = s.db.queryRowPrepared(ctx, `SELECT ro.public_id, a.attempt, a.created_at FROM ddi_actions a JOIN rollouts ro ON ro.id = a.rollout_id
		WHERE a.id = ? AND a.device_id = ? AND a.tenant_id = ?`, id, devID, a.TenantID).Scan(&act.RolloutID, &act.Attempt, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find ddi action: %w", err)
	}
	act.CreatedAt = fromMicros(created)
	return act, nil
}

// StoreUpdateLog keeps the log of an attempt; the last one sent wins.
func (s *ProtocolService) StoreUpdateLog(ctx context.Context, serial, rolloutID string, attempt int, log string) error {
	a, err := s.db.updateActor(ctx, "update.log", serial)
	if err != nil {
		return err
	}
	if err := checkAttempt(rolloutID, attempt); err != nil {
		return err
	}
	if len(log) > cradle.MaxUpdateLogBytes {
		return cradle.Errorf(cradle.ETOOLARGE, "update log is %d bytes; at most %d are kept", len(log), cradle.MaxUpdateLogBytes)
	}
	if !utf8.ValidString(log) || strings.IndexByte(log, 0) >= 0 {
		return cradle.Errorf(cradle.EINVALID, "update log is not UTF-8 text without NUL bytes")
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		roID, err := rolloutAttempt(ctx, tx.queryRow, a.TenantID, devID, serial, rolloutID, attempt)
		if err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `INSERT INTO update_logs (device_id, rollout_id, attempt, log, at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (device_id, rollout_id, attempt) DO UPDATE SET log = excluded.log, at = excluded.at`, devID, roID, attempt, log, micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: store update log: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.log", Subject: "device:" + serial,
			Details: map[string]any{"rollout": rolloutID, "attempt": attempt, "bytes": len(log)}})
	})
}

// FindUpdateLogs returns a device's logs, newest first.
func (s *ProtocolService) FindUpdateLogs(ctx context.Context, serial, rolloutID string) ([]*cradle.UpdateLog, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "update.log.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	q := `SELECT ro.public_id, l.attempt, l.log, l.at FROM update_logs l JOIN rollouts ro ON ro.id = l.rollout_id WHERE l.device_id = ? AND ro.tenant_id = ?`
	args := []any{devID, a.TenantID}
	if rolloutID != "" {
		q, args = q+` AND ro.public_id = ?`, append(args, rolloutID)
	}
	rows, err := s.db.query(ctx, q+` ORDER BY l.at DESC, ro.id DESC, l.attempt DESC`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find update logs: %w", err)
	}
	defer rows.Close()
	out := []*cradle.UpdateLog{}
	for rows.Next() {
		l := &cradle.UpdateLog{Serial: serial}
		var at int64
		if err := rows.Scan(&l.RolloutID, &l.Attempt, &l.Log, &at); err != nil {
			return nil, fmt.Errorf("sqlstore: find update logs: %w", err)
		}
		l.At = fromMicros(at)
		out = append(out, l)
	}
	return out, rows.Err()
}
