package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"cradle"
	"cradle/internal/rollout"
)

// RolloutService implements cradle.RolloutService: every call runs the
// rollout engine (internal/rollout) over the stored records, with the
// store's clock, inside one write transaction that also bumps the
// rollout's revision and appends the audit entry.
//
// Creating a rollout locks the tenant's audit head first, so two creations
// in one tenant (also on two replicas sharing PostgreSQL) see each other's
// devices and the conflict rule holds. An operator's decision locks the
// rollout row, so a scheduler step that loaded an older revision is
// refused when it saves (SaveRollout) and reloads.
type RolloutService struct {
	db *DB
}

var _ cradle.RolloutService = (*RolloutService)(nil)

// NewRolloutService returns the rollout store of db for operators.
func NewRolloutService(db *DB) *RolloutService { return &RolloutService{db: db} }

// rolloutChunk is how many device rows one multi-row INSERT writes: 11
// columns each stay well below SQLite's and PostgreSQL's parameter limits.
const rolloutChunk = 500

func newRolloutID() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("sqlstore: rollout id: %w", err)
	}
	return "ro_" + hex.EncodeToString(b[:]), nil
}

func rolloutNotFound(id string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "rollout %q not found", id)
}

// releaseTarget is what a rollout needs of its release.
type releaseTarget struct {
	id        int64
	publicID  string
	model     string
	revisions []string // empty: every hardware revision of the model
	state     cradle.ReleaseState
	// remediation: the rollout may update suspended devices too.
	remediation bool
}

// admits says whether a device in state st is a candidate of a rollout of
// the release, and the reason it is skipped if it is one but may not be
// updated: deployed devices are candidates; suspended ones are too, and
// skipped unless the release is a remediation.
func (r *releaseTarget) admits(st string) (ok bool, skip string) {
	switch cradle.State(st) {
	case cradle.StateDeployed:
		return true, ""
	case cradle.StateSuspended:
		if r.remediation {
			return true, ""
		}
		return true, cradle.RolloutSkipSuspended
	}
	return false, ""
}

func (r *releaseTarget) fits(revision string) bool {
	return len(r.revisions) == 0 || slices.Contains(r.revisions, revision)
}

// loadRelease reads a release of the tenant by its public ID (ENOTFOUND).
func loadRelease(ctx context.Context, q interface {
	queryRow(context.Context, string, ...any) *sql.Row
}, tenantID int64, publicID string) (*releaseTarget, error) {
	r := &releaseTarget{publicID: publicID}
	var revs, state string
	err := q.queryRow(ctx, `SELECT id, model, hardware_revisions, state, remediation FROM releases WHERE tenant_id = ? AND public_id = ?`, tenantID, publicID).
		Scan(&r.id, &r.model, &revs, &state, &r.remediation)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "release %q not found", publicID)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout release: %w", err)
	}
	r.state = cradle.ReleaseState(state)
	if r.revisions, err = decodeStringList([]byte(revs)); err != nil {
		return nil, fmt.Errorf("sqlstore: release %s: hardware_revisions column: %w", publicID, err)
	}
	return r, nil
}

// checkRolloutRelease refuses a release no new rollout may use.
func checkRolloutRelease(r *releaseTarget) error {
	switch r.state {
	case cradle.ReleaseSigned:
		return nil
	case cradle.ReleaseUploaded:
		return cradle.Errorf(cradle.EINVALID, "release %s is uploaded, not signed: sign it (cradle release sign %s) before rolling it out", r.publicID, r.publicID)
	case cradle.ReleaseDeprecated:
		return cradle.Errorf(cradle.EINVALID, "release %s is deprecated: no new rollout may use it; roll out a newer release", r.publicID)
	case cradle.ReleaseYanked:
		return cradle.Errorf(cradle.EINVALID, "release %s is yanked: it can never be rolled out; roll out another release", r.publicID)
	}
	return cradle.Errorf(cradle.EINVALID, "release %s is %s: only a signed release can be rolled out", r.publicID, r.state)
}

// activeHolders maps the device row IDs of the tenant that an active
// rollout other than except holds (a row not skipped) to that rollout's
// public ID.
func activeHolders(ctx context.Context, q interface {
	query(context.Context, string, ...any) (*sql.Rows, error)
}, tenantID, except int64) (map[int64]string, error) {
	rows, err := q.query(ctx, `SELECT rd.device_id, r.public_id FROM rollouts r JOIN rollout_devices rd ON rd.rollout_id = r.id
		WHERE r.tenant_id = ? AND r.state IN (?, ?) AND r.id <> ? AND rd.state <> ?`,
		tenantID, string(cradle.RolloutRunning), string(cradle.RolloutPaused), except, string(cradle.DeviceSkipped))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: active rollouts: %w", err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var pid string
		if err := rows.Scan(&id, &pid); err != nil {
			return nil, fmt.Errorf("sqlstore: active rollouts: %w", err)
		}
		out[id] = pid
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: active rollouts: %w", err)
	}
	return out, nil
}

// quarantinedHolds returns the suspended devices of the tenant that only
// active rollouts of releases other than remediations hold (a row not
// skipped): rollouts that will offer them nothing while they stay
// suspended (UpdateService.PendingUpdate).
func quarantinedHolds(ctx context.Context, tx *Tx, tenantID int64) ([]int64, error) {
	rows, err := tx.query(ctx, `SELECT rd.device_id FROM rollouts r JOIN rollout_devices rd ON rd.rollout_id = r.id
		JOIN releases rel ON rel.id = r.release_id JOIN devices d ON d.id = rd.device_id
		WHERE r.tenant_id = ? AND r.state IN (?, ?) AND rd.state <> ? AND d.state = ?
		GROUP BY rd.device_id HAVING MAX(CASE WHEN rel.remediation = ? THEN 1 ELSE 0 END) = 0`,
		tenantID, string(cradle.RolloutRunning), string(cradle.RolloutPaused), string(cradle.DeviceSkipped), string(cradle.StateSuspended), true)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: quarantined devices in rollouts: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlstore: quarantined devices in rollouts: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: quarantined devices in rollouts: %w", err)
	}
	return out, nil
}

// selectorCandidates returns the deployed and suspended devices of the
// tenant of the release's model and revisions whose labels match sel,
// leaving out those in skip (device row IDs), with their row IDs. A
// suspended device carries a skip reason unless the release is a
// remediation (releaseTarget.admits).
func selectorCandidates(ctx context.Context, q interface {
	query(context.Context, string, ...any) (*sql.Rows, error)
}, tenantID int64, rel *releaseTarget, sel *cradle.LabelSelector, skip func(int64) bool) ([]rollout.Candidate, []int64, error) {
	rows, err := q.query(ctx, `SELECT id, serial, hardware_revision, state, labels FROM devices WHERE tenant_id = ? AND state IN (?, ?) AND model = ? ORDER BY id`,
		tenantID, string(cradle.StateDeployed), string(cradle.StateSuspended), rel.model)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlstore: rollout target: %w", err)
	}
	defer rows.Close()
	var cands []rollout.Candidate
	var ids []int64
	var serial, rev, state string
	var labels sql.RawBytes
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id, &serial, &rev, &state, &labels); err != nil {
			return nil, nil, fmt.Errorf("sqlstore: rollout target: %w", err)
		}
		if !rel.fits(rev) || (skip != nil && skip(id)) {
			continue
		}
		m, err := decodeStringMap(labels)
		if err != nil {
			return nil, nil, fmt.Errorf("sqlstore: device %s: labels column: %w", serial, err)
		}
		if !sel.Matches(m) {
			continue
		}
		_, skipReason := rel.admits(state)
		cands = append(cands, rollout.Candidate{Serial: serial, Labels: m, SkipReason: skipReason})
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("sqlstore: rollout target: %w", err)
	}
	return cands, ids, nil
}

// listCandidates looks up an explicit serial list: every serial must name
// a deployed or suspended device of the release's model and revisions
// (EINVALID naming up to five offenders); a suspended one is skipped
// unless the release is a remediation (releaseTarget.admits).
func listCandidates(ctx context.Context, tx *Tx, tenantID int64, rel *releaseTarget, serials []string) ([]rollout.Candidate, []int64, error) {
	type dev struct {
		id          int64
		model, rev  string
		state       string
		labels      map[string]string
		serialFound string
	}
	found := make(map[string]dev, len(serials))
	for lo := 0; lo < len(serials); lo += rolloutChunk {
		part := serials[lo:min(lo+rolloutChunk, len(serials))]
		args := make([]any, 0, len(part)+1)
		args = append(args, tenantID)
		for _, s := range part {
			args = append(args, s)
		}
		rows, err := tx.query(ctx, `SELECT id, serial, model, hardware_revision, state, labels FROM devices WHERE tenant_id = ? AND serial IN (`+placeholders(len(part))+`)`, args...)
		if err != nil {
			return nil, nil, fmt.Errorf("sqlstore: rollout target: %w", err)
		}
		for rows.Next() {
			var d dev
			var labels []byte
			if err := rows.Scan(&d.id, &d.serialFound, &d.model, &d.rev, &d.state, &labels); err != nil {
				rows.Close()
				return nil, nil, fmt.Errorf("sqlstore: rollout target: %w", err)
			}
			if d.labels, err = decodeStringMap(labels); err != nil {
				rows.Close()
				return nil, nil, fmt.Errorf("sqlstore: device %s: labels column: %w", d.serialFound, err)
			}
			found[d.serialFound] = d
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, fmt.Errorf("sqlstore: rollout target: %w", err)
		}
	}
	var bad []string
	cands := make([]rollout.Candidate, 0, len(serials))
	ids := make([]int64, 0, len(serials))
	for _, s := range serials {
		d, ok := found[s]
		admitted, skipReason := false, ""
		if ok {
			admitted, skipReason = rel.admits(d.state)
		}
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("%q (no such device)", s))
		case !admitted:
			bad = append(bad, fmt.Sprintf("%q (%s, not deployed)", s, d.state))
		case d.model != rel.model:
			bad = append(bad, fmt.Sprintf("%q (model %s)", s, d.model))
		case !rel.fits(d.rev):
			bad = append(bad, fmt.Sprintf("%q (hardware revision %q)", s, d.rev))
		default:
			cands = append(cands, rollout.Candidate{Serial: s, Labels: d.labels, SkipReason: skipReason})
			ids = append(ids, d.id)
		}
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 5 {
			more = fmt.Sprintf(" and %d more", len(bad)-5)
			bad = bad[:5]
		}
		revs := ""
		if len(rel.revisions) > 0 {
			revs = ", hardware revisions " + strings.Join(rel.revisions, ", ")
		}
		return nil, nil, cradle.Errorf(cradle.EINVALID, "target.serials: release %s is for deployed devices of model %s%s, which these are not: %s%s",
			rel.publicID, rel.model, revs, strings.Join(bad, ", "), more)
	}
	return cands, ids, nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// tzCodec encodes the labels column of rollout device rows (the tz label
// alone, as JSON, or ""), once per zone.
type tzCodec map[string]string

func (c tzCodec) encode(l map[string]string) (string, error) {
	tz, ok := l[cradle.RolloutTZLabel]
	if !ok {
		return "", nil
	}
	if s, ok := c[tz]; ok {
		return s, nil
	}
	b, err := json.Marshal(map[string]string{cradle.RolloutTZLabel: tz})
	if err != nil {
		return "", err
	}
	c[tz] = string(b)
	return string(b), nil
}

// rowBatcher writes rows through multi-row INSERTs of rolloutChunk rows,
// the full-size statement prepared once, the rest in one last statement.
type rowBatcher struct {
	tx    *Tx
	head  string // INSERT … VALUES
	row   string // one row's "(…)"
	width int    // parameters per row
	args  []any
	full  *sql.Stmt
}

func (b *rowBatcher) add(ctx context.Context, args ...any) error {
	b.args = append(b.args, args...)
	if len(b.args) == rolloutChunk*b.width {
		return b.flush(ctx)
	}
	return nil
}

func (b *rowBatcher) text(n int) string {
	return b.tx.db.dialect.rebind(b.head + strings.TrimSuffix(strings.Repeat(b.row+", ", n), ", "))
}

func (b *rowBatcher) flush(ctx context.Context) error {
	n := len(b.args) / b.width
	if n == 0 {
		return nil
	}
	var err error
	if n == rolloutChunk {
		if b.full == nil {
			if b.full, err = b.tx.tx.PrepareContext(ctx, b.text(rolloutChunk)); err != nil {
				return fmt.Errorf("sqlstore: rollout devices: %w", err)
			}
		}
		_, err = b.full.ExecContext(ctx, b.args...)
	} else {
		_, err = b.tx.tx.ExecContext(ctx, b.text(n), b.args...)
	}
	b.args = b.args[:0]
	if err != nil {
		return fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	return nil
}

func (b *rowBatcher) close() {
	if b.full != nil {
		b.full.Close()
	}
}

// insertRolloutDevices writes device rows at positions first, first+1, ….
// Most rows of a new rollout are fresh (pending, no attempt yet): they
// bind five parameters and take the rest as constants; the rollout's row
// ID is in the statements' text. That halves the parameters a rollout over
// a million devices binds.
func (tx *Tx) insertRolloutDevices(ctx context.Context, rolloutID, first int64, devs []cradle.RolloutDevice, deviceIDs []int64) error {
	rid := strconv.FormatInt(rolloutID, 10)
	const cols = `INSERT INTO rollout_devices (rollout_id, position, device_id, serial, labels, phase, state, attempt, progress, reason, active_rollout) VALUES `
	fresh := &rowBatcher{tx: tx, head: cols, row: "(" + rid + ", ?, ?, ?, ?, ?, '" + string(cradle.DevicePending) + "', 0, NULL, '', '')", width: 5}
	other := &rowBatcher{tx: tx, head: cols, row: "(" + rid + ", " + placeholders(10) + ")", width: 10}
	defer fresh.close()
	defer other.close()
	tzs := tzCodec{}
	for i := range devs {
		d := &devs[i]
		labels, err := tzs.encode(d.Labels)
		if err != nil {
			return fmt.Errorf("sqlstore: rollout devices: %w", err)
		}
		pos := first + int64(i)
		if d.State == cradle.DevicePending && d.Attempt == 0 && d.Progress.IsZero() && d.Reason == "" && d.ActiveRollout == "" {
			err = fresh.add(ctx, pos, deviceIDs[i], d.Serial, labels, d.Phase)
		} else {
			var progress any
			if !d.Progress.IsZero() {
				progress = micros(d.Progress)
			}
			err = other.add(ctx, pos, deviceIDs[i], d.Serial, labels, d.Phase, string(d.State), d.Attempt, progress, d.Reason, d.ActiveRollout)
		}
		if err != nil {
			return err
		}
	}
	if err := fresh.flush(ctx); err != nil {
		return err
	}
	return other.flush(ctx)
}

// CreateRollout checks the spec, the release and the target, runs the
// engine's Begin and stores the rollout and every device record in one
// transaction.
func (s *RolloutService) CreateRollout(ctx context.Context, spec cradle.RolloutSpec) (*cradle.Rollout, error) {
	a, err := s.db.authorize(ctx, cradle.PermRolloutWrite, "rollout.create", "release:"+spec.ReleaseID)
	if err != nil {
		return nil, err
	}
	if err := rollout.ValidateSpec(&spec); err != nil {
		return nil, err
	}
	id, err := newRolloutID()
	if err != nil {
		return nil, err
	}
	var out cradle.Rollout
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		rel, err := loadRelease(ctx, tx, a.TenantID, spec.ReleaseID)
		if err != nil {
			return err
		}
		if err := checkRolloutRelease(rel); err != nil {
			refused = err
			return err
		}
		held, err := activeHolders(ctx, tx, a.TenantID, 0)
		if err != nil {
			return err
		}
		if rel.remediation {
			// A suspended device is offered nothing more by the rollout of
			// a release that is not a remediation: that rollout does not
			// hold it against a remediation.
			stuck, err := quarantinedHolds(ctx, tx, a.TenantID)
			if err != nil {
				return err
			}
			for _, id := range stuck {
				delete(held, id)
			}
		}
		var cands []rollout.Candidate
		var ids []int64
		if len(spec.Target.Serials) > 0 {
			cands, ids, err = listCandidates(ctx, tx, a.TenantID, rel, spec.Target.Serials)
		} else {
			sel, perr := cradle.ParseLabelSelector(spec.Target.Selector)
			if perr != nil {
				return perr
			}
			cands, ids, err = selectorCandidates(ctx, tx, a.TenantID, rel, sel, nil)
		}
		if err != nil {
			refused = err
			return err
		}
		byID := make(map[string]int64, len(ids))
		for i := range cands {
			cands[i].ActiveRollout = held[ids[i]]
			byID[cands[i].Serial] = ids[i]
		}
		e, err := rollout.New(id, spec, rollout.Options{Clock: s.db.clock})
		if err != nil {
			return err
		}
		plan, err := e.Begin(cands)
		if err != nil {
			refused = err
			return err
		}
		out = e.Rollout()
		specJSON, err := json.Marshal(out.RolloutSpec)
		if err != nil {
			return fmt.Errorf("sqlstore: create rollout: %w", err)
		}
		statusJSON, err := json.Marshal(out.Status)
		if err != nil {
			return fmt.Errorf("sqlstore: create rollout: %w", err)
		}
		var rid int64
		if err := tx.queryRow(ctx, `INSERT INTO rollouts (tenant_id, public_id, release_id, spec, status, state, in_flight, revision, created_by, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?) RETURNING id`,
			a.TenantID, id, rel.id, string(specJSON), string(statusJSON), string(out.Status.State), inFlight(&out.Status), a.String(), micros(tx.now), micros(tx.now)).Scan(&rid); err != nil {
			return fmt.Errorf("sqlstore: create rollout: %w", err)
		}
		devs := e.Changes()
		devIDs := make([]int64, len(devs))
		for i := range devs {
			devIDs[i] = byID[devs[i].Serial]
		}
		if err := tx.insertRolloutDevices(ctx, rid, 0, devs, devIDs); err != nil {
			return err
		}
		details := map[string]any{"id": id, "release": rel.publicID, "devices": out.Status.Devices, "skipped": out.Status.Skipped,
			"started": len(plan.Start), "phases": len(out.Phases), "dynamic": out.Dynamic}
		if out.Target.Selector != "" {
			details["selector"] = out.Target.Selector
		} else {
			details["serials"] = len(out.Target.Serials)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "rollout.create", Subject: "rollout:" + id, Details: details})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "rollout.create.refused", Subject: "release:" + spec.ReleaseID,
			Details: map[string]string{"reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// storedRollout is a rollout row.
type storedRollout struct {
	id       int64
	tenantID int64
	revision int64
	r        cradle.Rollout
}

const rolloutCols = `id, tenant_id, public_id, spec, status, revision`

func scanRollout(sc interface{ Scan(...any) error }) (*storedRollout, error) {
	var sr storedRollout
	var spec, status []byte
	if err := sc.Scan(&sr.id, &sr.tenantID, &sr.r.ID, &spec, &status, &sr.revision); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(spec, &sr.r.RolloutSpec); err != nil {
		return nil, fmt.Errorf("sqlstore: rollout %s: spec column: %w", sr.r.ID, err)
	}
	if err := json.Unmarshal(status, &sr.r.Status); err != nil {
		return nil, fmt.Errorf("sqlstore: rollout %s: status column: %w", sr.r.ID, err)
	}
	return &sr, nil
}

// rolloutDeviceCols are the columns of a rollout device row as
// scanRolloutDevice reads them.
const rolloutDeviceCols = `position, serial, labels, state, phase, attempt, progress, reason, active_rollout`

func scanRolloutDevice(sc interface{ Scan(...any) error }) (int64, cradle.RolloutDevice, error) {
	var d cradle.RolloutDevice
	var pos int64
	var labels []byte
	var state string
	var progress sql.NullInt64
	if err := sc.Scan(&pos, &d.Serial, &labels, &state, &d.Phase, &d.Attempt, &progress, &d.Reason, &d.ActiveRollout); err != nil {
		return 0, d, err
	}
	d.State = cradle.DeviceUpdateState(state)
	if progress.Valid {
		d.Progress = fromMicros(progress.Int64)
	}
	if len(labels) > 0 {
		m, err := decodeStringMap(labels)
		if err != nil {
			return 0, d, fmt.Errorf("rollout device %s: labels column: %w", d.Serial, err)
		}
		d.Labels = m
	}
	return pos, d, nil
}

// loadRolloutDevices reads every device row of a rollout in position
// order, the order the engine's Load needs.
func loadRolloutDevices(ctx context.Context, q interface {
	query(context.Context, string, ...any) (*sql.Rows, error)
}, rolloutID int64) ([]cradle.RolloutDevice, error) {
	rows, err := q.query(ctx, `SELECT `+rolloutDeviceCols+` FROM rollout_devices WHERE rollout_id = ? ORDER BY position`, rolloutID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	defer rows.Close()
	var out []cradle.RolloutDevice
	for rows.Next() {
		_, d, err := scanRolloutDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	return out, nil
}

// inFlight returns the number of a rollout's devices started, downloading
// or installing, from its status's phase counts (Downloading counts the
// started ones too), which the engine keeps in step with the device
// records: the rollouts.in_flight column written with them.
func inFlight(st *cradle.RolloutStatus) int {
	n := 0
	for i := range st.Phases {
		n += st.Phases[i].Downloading + st.Phases[i].Installing
	}
	return n
}

// writeRolloutStatus stores a rollout's status and the changed device
// records, bumps the revision and returns the new one. A change whose
// serial is not in the rollout yet (a dynamic join) is appended at the next
// position; joinIDs gives its device row ID.
func (tx *Tx) writeRolloutStatus(ctx context.Context, tenantID int64, sr *storedRollout, r cradle.Rollout, changes []cradle.RolloutDevice) (int64, error) {
	status, err := json.Marshal(r.Status)
	if err != nil {
		return 0, fmt.Errorf("sqlstore: rollout status: %w", err)
	}
	res, err := tx.exec(ctx, `UPDATE rollouts SET status = ?, state = ?, in_flight = ?, revision = revision + 1, updated_at = ? WHERE id = ? AND revision = ?`,
		string(status), string(r.Status.State), inFlight(&r.Status), micros(tx.now), sr.id, sr.revision)
	if err != nil {
		return 0, fmt.Errorf("sqlstore: rollout status: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return 0, fmt.Errorf("sqlstore: rollout status: %w", err)
	} else if n != 1 {
		return 0, errRevisionMoved
	}
	if len(changes) == 0 {
		return sr.revision + 1, nil
	}
	upd, err := tx.tx.PrepareContext(ctx, tx.db.dialect.rebind(`UPDATE rollout_devices SET labels = ?, state = ?, phase = ?, attempt = ?, progress = ?, reason = ?, active_rollout = ? WHERE rollout_id = ? AND serial = ?`))
	if err != nil {
		return 0, fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	defer upd.Close()
	tzs := tzCodec{}
	var joins []cradle.RolloutDevice
	for i := range changes {
		d := &changes[i]
		labels, err := tzs.encode(d.Labels)
		if err != nil {
			return 0, fmt.Errorf("sqlstore: rollout devices: %w", err)
		}
		var progress any
		if !d.Progress.IsZero() {
			progress = micros(d.Progress)
		}
		res, err := upd.ExecContext(ctx, labels, string(d.State), d.Phase, d.Attempt, progress, d.Reason, d.ActiveRollout, sr.id, d.Serial)
		if err != nil {
			return 0, fmt.Errorf("sqlstore: rollout device %s: %w", d.Serial, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return 0, fmt.Errorf("sqlstore: rollout device %s: %w", d.Serial, err)
		} else if n == 0 {
			joins = append(joins, *d)
		}
	}
	if len(joins) == 0 {
		return sr.revision + 1, nil
	}
	ids := make([]int64, len(joins))
	for i, d := range joins {
		if err := tx.queryRow(ctx, `SELECT id FROM devices WHERE tenant_id = ? AND serial = ?`, tenantID, d.Serial).Scan(&ids[i]); errors.Is(err, sql.ErrNoRows) {
			return 0, cradle.Errorf(cradle.ENOTFOUND, "rollout %s: joining device %q not found", r.ID, d.Serial)
		} else if err != nil {
			return 0, fmt.Errorf("sqlstore: rollout join %s: %w", d.Serial, err)
		}
	}
	var next int64
	if err := tx.queryRow(ctx, `SELECT COALESCE(MAX(position), -1) + 1 FROM rollout_devices WHERE rollout_id = ?`, sr.id).Scan(&next); err != nil {
		return 0, fmt.Errorf("sqlstore: rollout join: %w", err)
	}
	if err := tx.insertRolloutDevices(ctx, sr.id, next, joins, ids); err != nil {
		return 0, err
	}
	return sr.revision + 1, nil
}

// errRevisionMoved reports that a rollout row was not at the revision a
// write started from.
var errRevisionMoved = errors.New("sqlstore: rollout revision moved")

// decide loads a rollout and its devices in a write transaction, applies
// an operator's decision with the engine and stores the result.
func (s *RolloutService) decide(ctx context.Context, id, action string, details map[string]any, fn func(*rollout.Engine) error) (*cradle.Rollout, error) {
	subject := "rollout:" + id
	a, err := s.db.authorize(ctx, cradle.PermRolloutWrite, action, subject)
	if err != nil {
		return nil, err
	}
	var out cradle.Rollout
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		sr, err := scanRollout(tx.queryRow(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE tenant_id = ? AND public_id = ?`+tx.db.dialect.forUpdate, a.TenantID, id))
		if errors.Is(err, sql.ErrNoRows) {
			return rolloutNotFound(id)
		} else if err != nil {
			return fmt.Errorf("sqlstore: %s: %w", action, err)
		}
		devs, err := loadRolloutDevices(ctx, tx, sr.id)
		if err != nil {
			return err
		}
		e, err := rollout.Load(sr.r, devs, rollout.Options{Clock: s.db.clock})
		if err != nil {
			return fmt.Errorf("sqlstore: %s: load rollout %s: %w", action, id, err)
		}
		from := sr.r.Status.State
		if err := fn(e); err != nil {
			refused = err
			return err
		}
		out = e.Rollout()
		if _, err := tx.writeRolloutStatus(ctx, a.TenantID, sr, out, e.Changes()); err != nil {
			return err
		}
		d := map[string]any{"from": from, "to": out.Status.State}
		for k, v := range details {
			d[k] = v
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: subject, Details: d})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: subject,
			Details: map[string]string{"reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// PauseRollout pauses a running rollout.
func (s *RolloutService) PauseRollout(ctx context.Context, id, reason string) (*cradle.Rollout, error) {
	if len(reason) > 1024 {
		return nil, cradle.Errorf(cradle.EINVALID, "reason is longer than 1024 bytes")
	}
	return s.decide(ctx, id, "rollout.pause", map[string]any{"reason": reason}, func(e *rollout.Engine) error { return e.Pause(reason) })
}

// ResumeRollout runs a paused rollout again.
func (s *RolloutService) ResumeRollout(ctx context.Context, id string) (*cradle.Rollout, error) {
	return s.decide(ctx, id, "rollout.resume", nil, func(e *rollout.Engine) error { return e.Resume() })
}

// AbortRollout ends a rollout for good.
func (s *RolloutService) AbortRollout(ctx context.Context, id, reason string) (*cradle.Rollout, error) {
	if len(reason) > 1024 {
		return nil, cradle.Errorf(cradle.EINVALID, "reason is longer than 1024 bytes")
	}
	return s.decide(ctx, id, "rollout.abort", map[string]any{"reason": reason}, func(e *rollout.Engine) error { return e.Abort(reason) })
}

// ApproveRollout lets a phase that asks for approval start.
func (s *RolloutService) ApproveRollout(ctx context.Context, id string, phase int) (*cradle.Rollout, error) {
	return s.decide(ctx, id, "rollout.approve", map[string]any{"phase": phase}, func(e *rollout.Engine) error { return e.Approve(phase) })
}

// FindRollout returns a rollout of the actor's tenant.
func (s *RolloutService) FindRollout(ctx context.Context, id string) (*cradle.Rollout, error) {
	a, err := s.db.authorize(ctx, cradle.PermRolloutRead, "rollout.read", "rollout:"+id)
	if err != nil {
		return nil, err
	}
	sr, err := scanRollout(s.db.queryRow(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE tenant_id = ? AND public_id = ?`, a.TenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, rolloutNotFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find rollout: %w", err)
	}
	return &sr.r, nil
}

// FindRollouts lists the tenant's rollouts, newest first.
func (s *RolloutService) FindRollouts(ctx context.Context, f cradle.RolloutFilter) ([]*cradle.Rollout, error) {
	a, err := s.db.authorize(ctx, cradle.PermRolloutRead, "rollout.list", "rollouts")
	if err != nil {
		return nil, err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	q := `SELECT r.id, r.tenant_id, r.public_id, r.spec, r.status, r.revision FROM rollouts r`
	where, args := []string{"r.tenant_id = ?"}, []any{a.TenantID}
	if f.State != nil {
		switch st := *f.State; st {
		case cradle.RolloutDraft, cradle.RolloutRunning, cradle.RolloutPaused, cradle.RolloutAborted, cradle.RolloutCompleted:
			where, args = append(where, "r.state = ?"), append(args, string(st))
		default:
			return nil, cradle.Errorf(cradle.EINVALID, "unknown rollout state %q: use draft, running, paused, aborted or completed", st)
		}
	}
	if f.ReleaseID != "" {
		q += ` JOIN releases rel ON rel.id = r.release_id`
		where, args = append(where, "rel.public_id = ?"), append(args, f.ReleaseID)
	}
	rows, err := s.db.query(ctx, q+` WHERE `+strings.Join(where, " AND ")+` ORDER BY r.id DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find rollouts: %w", err)
	}
	defer rows.Close()
	out := []*cradle.Rollout{}
	for rows.Next() {
		sr, err := scanRollout(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find rollouts: %w", err)
		}
		out = append(out, &sr.r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: find rollouts: %w", err)
	}
	return out, nil
}

// FindRolloutDevices lists a rollout's device records in the rollout's
// order; f.After continues after a serial of an earlier page.
func (s *RolloutService) FindRolloutDevices(ctx context.Context, id string, f cradle.RolloutDeviceFilter) ([]*cradle.RolloutDevice, error) {
	a, err := s.db.authorize(ctx, cradle.PermRolloutRead, "rollout.devices", "rollout:"+id)
	if err != nil {
		return nil, err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	var rid int64
	if err := s.db.queryRow(ctx, `SELECT id FROM rollouts WHERE tenant_id = ? AND public_id = ?`, a.TenantID, id).Scan(&rid); errors.Is(err, sql.ErrNoRows) {
		return nil, rolloutNotFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	where, args := []string{"rollout_id = ?"}, []any{rid}
	if f.After != "" {
		var pos int64
		if err := s.db.queryRow(ctx, `SELECT position FROM rollout_devices WHERE rollout_id = ? AND serial = ?`, rid, f.After).Scan(&pos); errors.Is(err, sql.ErrNoRows) {
			return nil, cradle.Errorf(cradle.EINVALID, "after: device %q is not in rollout %s", f.After, id)
		} else if err != nil {
			return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
		}
		where, args = append(where, "position > ?"), append(args, pos)
	}
	if f.State != nil {
		switch st := *f.State; st {
		case cradle.DevicePending, cradle.DeviceStarted, cradle.DeviceDownloading, cradle.DeviceInstalling, cradle.DeviceSucceeded, cradle.DeviceFailed, cradle.DeviceSkipped:
			where, args = append(where, "state = ?"), append(args, string(st))
		default:
			return nil, cradle.Errorf(cradle.EINVALID, "unknown device state %q: use pending, started, downloading, installing, succeeded, failed or skipped", st)
		}
	}
	if f.Phase != nil {
		where, args = append(where, "phase = ?"), append(args, *f.Phase)
	}
	rows, err := s.db.query(ctx, `SELECT `+rolloutDeviceCols+` FROM rollout_devices WHERE `+strings.Join(where, " AND ")+` ORDER BY position LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	defer rows.Close()
	out := []*cradle.RolloutDevice{}
	for rows.Next() {
		_, d, err := scanRolloutDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
		}
		out = append(out, &d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: rollout devices: %w", err)
	}
	return out, nil
}
