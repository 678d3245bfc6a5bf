package sqlstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"cradle"
	"cradle/internal/mcuboot"
)

// ReleaseService implements cradle.ReleaseService: release records, their
// delta patches and the image keys trusted per model. The rules it keeps in
// the transaction that makes a change:
//
//   - (tenant, model, version) is unique (ECONFLICT);
//   - a release is not recorded, nor signed, with a security counter below
//     that of a signed or deprecated release of its model (EINVALID
//     "downgrade", naming that release);
//   - an MCUboot release's image key is trusted for its model;
//   - a delta's base is a release of the same tenant and model, and the
//     delta's base digest and size are that release's;
//   - states move uploaded → signed → deprecated, and any of them → yanked,
//     which is final (ECONFLICT otherwise);
//   - an image key is trusted for one model only (ECONFLICT naming it).
//
// Every change is audited in its transaction; refused changes (permission,
// conflict, downgrade) are audited as "<action>.refused". A change first
// locks its tenant's audit head (PostgreSQL; SQLite has one writer), so the
// checks that read other rows of the tenant (duplicates, the downgrade
// floor, the model of a key) see every change committed before it, and
// row locks are always taken in the same order.
type ReleaseService struct{ db *DB }

var _ cradle.ReleaseService = (*ReleaseService)(nil)

// NewReleaseService returns the release store of db.
func NewReleaseService(db *DB) *ReleaseService { return &ReleaseService{db: db} }

func newReleaseID() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("sqlstore: release id: %w", err)
	}
	return "rel_" + hex.EncodeToString(b[:]), nil
}

// maxArtifactName bounds a foreign artifact's own name (Mender's
// artifact_name, a .swu's "name version").
const maxArtifactName = 256

func releaseNotFound(id string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "release %q not found", id)
}

const releaseCols = `r.id, r.public_id, r.model, r.version, r.hardware_revisions, r.kind, r.sha256, r.size, r.file_name, r.security_counter, r.notes, r.state, r.reason, r.target_path, r.image_key, r.artifact_name, r.remediation, r.created_by, r.created_at, r.signed_at, r.updated_at`

func scanRelease(sc interface{ Scan(...any) error }) (int64, *cradle.Release, error) {
	var id, counter, created, updated int64
	var signed sql.NullInt64
	var revs, kind, state string
	r := &cradle.Release{}
	if err := sc.Scan(&id, &r.ID, &r.Model, &r.Version, &revs, &kind, &r.SHA256, &r.Size, &r.FileName, &counter, &r.Notes, &state,
		&r.Reason, &r.TargetPath, &r.ImageKey, &r.ArtifactName, &r.Remediation, &r.CreatedBy, &created, &signed, &updated); err != nil {
		return 0, nil, err
	}
	if err := json.Unmarshal([]byte(revs), &r.HardwareRevisions); err != nil {
		return 0, nil, fmt.Errorf("release %s: hardware_revisions column: %w", r.ID, err)
	}
	if len(r.HardwareRevisions) == 0 {
		r.HardwareRevisions = nil
	}
	r.Kind, r.State, r.SecurityCounter = cradle.ReleaseKind(kind), cradle.ReleaseState(state), uint32(counter)
	r.CreatedAt, r.UpdatedAt = fromMicros(created), fromMicros(updated)
	if signed.Valid {
		r.SignedAt = fromMicros(signed.Int64)
	}
	return id, r, nil
}

// findReleases reads the releases a WHERE clause on "releases r" selects,
// in the order given, with their deltas. query is a transaction's or the
// read pool's.
func findReleases(ctx context.Context, query queryFunc, where, order string, args ...any) ([]*cradle.Release, error) {
	rows, err := query(ctx, `SELECT `+releaseCols+` FROM releases r WHERE `+where+` `+order, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find releases: %w", err)
	}
	defer rows.Close()
	out := []*cradle.Release{}
	byID := map[int64]*cradle.Release{}
	var ids []any
	for rows.Next() {
		id, r, err := scanRelease(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find releases: %w", err)
		}
		out = append(out, r)
		byID[id] = r
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: find releases: %w", err)
	}
	rows.Close()
	if len(ids) == 0 {
		return out, nil
	}
	ph := strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", ")
	drows, err := query(ctx, `SELECT d.release_id, f.public_id, d.from_sha256, d.from_size, d.sha256, d.size, d.target_path
		FROM release_deltas d JOIN releases f ON f.id = d.from_release_id WHERE d.release_id IN (`+ph+`) ORDER BY d.release_id, f.id`, ids...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: release deltas: %w", err)
	}
	defer drows.Close()
	for drows.Next() {
		var rid int64
		var d cradle.ReleaseDelta
		if err := drows.Scan(&rid, &d.FromRelease, &d.FromSHA256, &d.FromSize, &d.SHA256, &d.Size, &d.TargetPath); err != nil {
			return nil, fmt.Errorf("sqlstore: release deltas: %w", err)
		}
		byID[rid].Deltas = append(byID[rid].Deltas, d)
	}
	if err := drows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: release deltas: %w", err)
	}
	return out, nil
}

// findRelease reads one release of a tenant by public id, or ENOTFOUND.
func findRelease(ctx context.Context, query queryFunc, tenantID int64, id string) (*cradle.Release, error) {
	rs, err := findReleases(ctx, query, `r.tenant_id = ? AND r.public_id = ?`, ``, tenantID, id)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, releaseNotFound(id)
	}
	return rs[0], nil
}

// lockRelease reads (and on PostgreSQL locks) a release's row id and state.
func (tx *Tx) lockRelease(ctx context.Context, tenantID int64, id string) (int64, *cradle.Release, error) {
	rid, r, err := scanRelease(tx.queryRow(ctx, `SELECT `+releaseCols+` FROM releases r WHERE r.tenant_id = ? AND r.public_id = ?`+tx.db.dialect.forUpdate, tenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, releaseNotFound(id)
	} else if err != nil {
		return 0, nil, fmt.Errorf("sqlstore: release %s: %w", id, err)
	}
	return rid, r, nil
}

// checkDowngrade refuses a security counter below that of a signed or
// deprecated release of the model (other than exclude).
func (tx *Tx) checkDowngrade(ctx context.Context, tenantID int64, model string, counter uint32, exclude int64) error {
	var pub, version string
	var top int64
	err := tx.queryRow(ctx, `SELECT public_id, version, security_counter FROM releases
		WHERE tenant_id = ? AND model = ? AND state IN ('signed', 'deprecated') AND id <> ?
		ORDER BY security_counter DESC, id DESC LIMIT 1`, tenantID, model, exclude).Scan(&pub, &version, &top)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	} else if err != nil {
		return fmt.Errorf("sqlstore: downgrade check: %w", err)
	}
	if int64(counter) < top {
		return cradle.Errorf(cradle.EINVALID, "downgrade: security counter %d is below %d of release %s (model %q, version %s); a device that installed it would refuse this image — raise the security counter to at least %d",
			counter, top, pub, model, version, top)
	}
	return nil
}

// CreateRelease records an uploaded artifact in state uploaded.
func (s *ReleaseService) CreateRelease(ctx context.Context, c cradle.ReleaseCreate) (*cradle.Release, error) {
	subject := "release:" + c.Model + "/" + c.Version
	a, err := s.db.authorize(ctx, cradle.PermReleaseWrite, "release.create", subject)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if len(c.ArtifactName) > maxArtifactName || !utf8.ValidString(c.ArtifactName) || strings.ContainsFunc(c.ArtifactName, unicode.IsControl) {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid artifact_name: at most %d bytes of UTF-8 text without control characters", maxArtifactName)
	}
	id, err := newReleaseID()
	if err != nil {
		return nil, err
	}
	revs := c.HardwareRevisions
	if revs == nil {
		revs = []string{}
	}
	revsJSON, err := json.Marshal(revs)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: create release: %w", err)
	}
	var out *cradle.Release
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		// The downgrade check reads other releases of the model: serialize
		// with the tenant's other writes (PostgreSQL).
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		var other string
		err := tx.queryRow(ctx, `SELECT public_id FROM releases WHERE tenant_id = ? AND model = ? AND version = ?`, a.TenantID, c.Model, c.Version).Scan(&other)
		switch {
		case err == nil:
			refused = cradle.Errorf(cradle.ECONFLICT, "model %q already has a release of version %q (%s); choose another version", c.Model, c.Version, other)
			return refused
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("sqlstore: create release: %w", err)
		}
		if err := tx.checkDowngrade(ctx, a.TenantID, c.Model, c.SecurityCounter, 0); err != nil {
			if cradle.ErrorCode(err) == cradle.EINVALID {
				refused = err
			}
			return err
		}
		if c.ImageKey != "" {
			var model string
			err := tx.queryRow(ctx, `SELECT model FROM image_keys WHERE tenant_id = ? AND fingerprint = ?`, a.TenantID, c.ImageKey).Scan(&model)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				refused = cradle.Errorf(cradle.EINVALID, "image key %s is not trusted; add it with cradle release key add --model %s", c.ImageKey, c.Model)
				return refused
			case err != nil:
				return fmt.Errorf("sqlstore: create release: image key: %w", err)
			case model != c.Model:
				refused = cradle.Errorf(cradle.EINVALID, "wrong model: image key %s signs images of model %q, not %q", c.ImageKey, model, c.Model)
				return refused
			}
		}
		now := tx.now
		if _, err := tx.exec(ctx, `INSERT INTO releases (tenant_id, public_id, model, version, hardware_revisions, kind, sha256, size, file_name, security_counter, notes, state, image_key, artifact_name, remediation, created_by, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.TenantID, id, c.Model, c.Version, string(revsJSON), string(c.Kind), c.SHA256, c.Size, c.FileName, int64(c.SecurityCounter), c.Notes,
			string(cradle.ReleaseUploaded), c.ImageKey, c.ArtifactName, c.Remediation, a.String(), micros(now), micros(now)); err != nil {
			if tx.db.dialect.uniqueViolation(err) {
				return cradle.Errorf(cradle.ECONFLICT, "model %q already has a release of version %q; choose another version", c.Model, c.Version)
			}
			return fmt.Errorf("sqlstore: create release: %w", err)
		}
		out = &cradle.Release{ID: id, Model: c.Model, Version: c.Version, HardwareRevisions: c.HardwareRevisions, Kind: c.Kind, SHA256: c.SHA256,
			Size: c.Size, FileName: c.FileName, SecurityCounter: c.SecurityCounter, Notes: c.Notes, State: cradle.ReleaseUploaded,
			ImageKey: c.ImageKey, ArtifactName: c.ArtifactName, Remediation: c.Remediation, CreatedBy: a.String(), CreatedAt: now, UpdatedAt: now}
		if len(out.HardwareRevisions) == 0 {
			out.HardwareRevisions = nil
		}
		details := map[string]any{"model": c.Model, "version": c.Version, "hardware_revisions": revs, "kind": c.Kind, "sha256": c.SHA256,
			"size": c.Size, "file_name": c.FileName, "security_counter": c.SecurityCounter, "image_key": c.ImageKey}
		if c.ArtifactName != "" {
			details["artifact_name"] = c.ArtifactName
		}
		if c.Remediation {
			details["remediation"] = true
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "release.create", Subject: "release:" + id, Details: details})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "release.create.refused", Subject: subject,
			Details: map[string]any{"sha256": c.SHA256, "security_counter": c.SecurityCounter, "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FindRelease returns a release of the actor's tenant.
func (s *ReleaseService) FindRelease(ctx context.Context, id string) (*cradle.Release, error) {
	a, err := s.db.authorize(ctx, cradle.PermReleaseRead, "release.read", "release:"+id)
	if err != nil {
		return nil, err
	}
	return findRelease(ctx, s.db.query, a.TenantID, id)
}

// FindReleases lists the actor's tenant's releases, newest first.
func (s *ReleaseService) FindReleases(ctx context.Context, f cradle.ReleaseFilter) ([]*cradle.Release, error) {
	a, err := s.db.authorize(ctx, cradle.PermReleaseRead, "release.list", "releases")
	if err != nil {
		return nil, err
	}
	limit, err := pageLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	where, args := []string{"r.tenant_id = ?"}, []any{a.TenantID}
	if f.Model != "" {
		where, args = append(where, "r.model = ?"), append(args, f.Model)
	}
	if f.State != nil {
		switch st := *f.State; st {
		case cradle.ReleaseUploaded, cradle.ReleaseSigned, cradle.ReleaseDeprecated, cradle.ReleaseYanked:
			where, args = append(where, "r.state = ?"), append(args, string(st))
		default:
			return nil, cradle.Errorf(cradle.EINVALID, "unknown release state %q: use uploaded, signed, deprecated or yanked", st)
		}
	}
	return findReleases(ctx, s.db.query, strings.Join(where, " AND "), `ORDER BY r.id DESC LIMIT ?`, append(args, limit)...)
}

// validateDeltas checks the shape of deltas for release id: digests,
// sizes, target paths, one per base, none from the release itself.
func validateDeltas(id string, deltas []cradle.ReleaseDelta) error {
	seen := map[string]bool{}
	for i, d := range deltas {
		field := fmt.Sprintf("deltas[%d]", i)
		switch {
		case d.FromRelease == "":
			return cradle.Errorf(cradle.EINVALID, "%s.from_release is required", field)
		case d.FromRelease == id:
			return cradle.Errorf(cradle.EINVALID, "%s: a delta from release %s to itself", field, id)
		case seen[d.FromRelease]:
			return cradle.Errorf(cradle.EINVALID, "%s: a second delta from release %s", field, d.FromRelease)
		case d.FromSize <= 0 || d.Size <= 0:
			return cradle.Errorf(cradle.EINVALID, "%s: from_size %d and size %d must be positive", field, d.FromSize, d.Size)
		}
		seen[d.FromRelease] = true
		if err := cradle.ValidateSHA256(field+".from_sha256", d.FromSHA256); err != nil {
			return err
		}
		if err := cradle.ValidateSHA256(field+".sha256", d.SHA256); err != nil {
			return err
		}
		if err := cradle.ValidateTargetPath(field+".target_path", d.TargetPath); err != nil {
			return err
		}
	}
	return nil
}

// MarkReleaseSigned records that the release is a published TUF target.
// Re-signing a signed release replaces its target path and deltas, and
// SignedAt becomes the time of the latest signing.
func (s *ReleaseService) MarkReleaseSigned(ctx context.Context, id, targetPath string, deltas []cradle.ReleaseDelta) (*cradle.Release, error) {
	subject := "release:" + id
	a, err := s.db.authorize(ctx, cradle.PermReleaseWrite, "release.sign", subject)
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateTargetPath("target_path", targetPath); err != nil {
		return nil, err
	}
	if err := validateDeltas(id, deltas); err != nil {
		return nil, err
	}
	var out *cradle.Release
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		rid, r, err := tx.lockRelease(ctx, a.TenantID, id)
		if err != nil {
			return err
		}
		switch r.State {
		case cradle.ReleaseUploaded:
			if err := tx.checkDowngrade(ctx, a.TenantID, r.Model, r.SecurityCounter, rid); err != nil {
				if cradle.ErrorCode(err) == cradle.EINVALID {
					refused = err
				}
				return err
			}
		case cradle.ReleaseSigned:
		default:
			refused = cradle.Errorf(cradle.ECONFLICT, "release %s is %s; only an uploaded or signed release can be signed", id, r.State)
			return refused
		}
		fromIDs := make([]int64, len(deltas))
		for i, d := range deltas {
			var model, sha string
			var size int64
			err := tx.queryRow(ctx, `SELECT id, model, sha256, size FROM releases WHERE tenant_id = ? AND public_id = ?`, a.TenantID, d.FromRelease).Scan(&fromIDs[i], &model, &sha, &size)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return cradle.Errorf(cradle.EINVALID, "deltas[%d]: base release %q not found", i, d.FromRelease)
			case err != nil:
				return fmt.Errorf("sqlstore: sign release: delta base: %w", err)
			case model != r.Model:
				return cradle.Errorf(cradle.EINVALID, "deltas[%d]: base release %s is of model %q, not %q", i, d.FromRelease, model, r.Model)
			case sha != d.FromSHA256 || size != d.FromSize:
				return cradle.Errorf(cradle.EINVALID, "deltas[%d]: base release %s is %s (%d bytes), not %s (%d bytes)", i, d.FromRelease, sha, size, d.FromSHA256, d.FromSize)
			}
		}
		if _, err := tx.exec(ctx, `DELETE FROM release_deltas WHERE release_id = ?`, rid); err != nil {
			return fmt.Errorf("sqlstore: sign release: %w", err)
		}
		for i, d := range deltas {
			if _, err := tx.exec(ctx, `INSERT INTO release_deltas (release_id, from_release_id, from_sha256, from_size, sha256, size, target_path) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				rid, fromIDs[i], d.FromSHA256, d.FromSize, d.SHA256, d.Size, d.TargetPath); err != nil {
				return fmt.Errorf("sqlstore: sign release: delta: %w", err)
			}
		}
		if _, err := tx.exec(ctx, `UPDATE releases SET state = ?, target_path = ?, signed_at = ?, updated_at = ? WHERE id = ?`,
			string(cradle.ReleaseSigned), targetPath, micros(tx.now), micros(tx.now), rid); err != nil {
			return fmt.Errorf("sqlstore: sign release: %w", err)
		}
		if out, err = findRelease(ctx, tx.query, a.TenantID, id); err != nil {
			return err
		}
		ds := make([]map[string]any, len(deltas))
		for i, d := range deltas {
			ds[i] = map[string]any{"from_release": d.FromRelease, "sha256": d.SHA256, "size": d.Size}
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "release.sign", Subject: subject,
			Details: map[string]any{"from": r.State, "target_path": targetPath, "deltas": ds}})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "release.sign.refused", Subject: subject}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetReleaseState deprecates or yanks a release.
func (s *ReleaseService) SetReleaseState(ctx context.Context, id string, to cradle.ReleaseState, reason string) (*cradle.Release, error) {
	subject := "release:" + id
	var action string
	switch to {
	case cradle.ReleaseDeprecated:
		action = "release.deprecate"
	case cradle.ReleaseYanked:
		action = "release.yank"
	default:
		action = "release.state"
	}
	a, err := s.db.authorize(ctx, cradle.PermReleaseWrite, action, subject)
	if err != nil {
		return nil, err
	}
	if action == "release.state" {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid release state %q: a release can be set to deprecated or yanked", clip(string(to), 40))
	}
	if len(reason) > cradle.MaxReleaseReason || !utf8.ValidString(reason) {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid reason: at most %d bytes of UTF-8 text", cradle.MaxReleaseReason)
	}
	var out *cradle.Release
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		rid, r, err := tx.lockRelease(ctx, a.TenantID, id)
		if err != nil {
			return err
		}
		switch {
		case r.State == cradle.ReleaseYanked:
			refused = cradle.Errorf(cradle.ECONFLICT, "release %s is yanked; a yanked release stays yanked", id)
		case to == cradle.ReleaseDeprecated && r.State != cradle.ReleaseSigned:
			refused = cradle.Errorf(cradle.ECONFLICT, "release %s is %s; only a signed release can be deprecated", id, r.State)
		}
		if refused != nil {
			return refused
		}
		if _, err := tx.exec(ctx, `UPDATE releases SET state = ?, reason = ?, updated_at = ? WHERE id = ?`, string(to), reason, micros(tx.now), rid); err != nil {
			return fmt.Errorf("sqlstore: %s: %w", action, err)
		}
		if out, err = findRelease(ctx, tx.query, a.TenantID, id); err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action, Subject: subject,
			Details: map[string]any{"from": r.State, "to": to, "reason": reason}})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: subject}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetReleaseRemediation flags a release as remediation or clears the flag.
func (s *ReleaseService) SetReleaseRemediation(ctx context.Context, id string, remediation bool) (*cradle.Release, error) {
	subject := "release:" + id
	a, err := s.db.authorize(ctx, cradle.PermReleaseWrite, "release.remediation", subject)
	if err != nil {
		return nil, err
	}
	var out *cradle.Release
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		rid, r, err := tx.lockRelease(ctx, a.TenantID, id)
		if err != nil {
			return err
		}
		if r.State == cradle.ReleaseYanked {
			refused = cradle.Errorf(cradle.ECONFLICT, "release %s is yanked: it is never offered again, as remediation or otherwise", id)
			return refused
		}
		if r.Remediation == remediation {
			out, err = findRelease(ctx, tx.query, a.TenantID, id)
			return err
		}
		if _, err := tx.exec(ctx, `UPDATE releases SET remediation = ?, updated_at = ? WHERE id = ?`, remediation, micros(tx.now), rid); err != nil {
			return fmt.Errorf("sqlstore: release remediation: %w", err)
		}
		if out, err = findRelease(ctx, tx.query, a.TenantID, id); err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "release.remediation", Subject: subject,
			Details: map[string]any{"from": r.Remediation, "to": remediation, "model": r.Model, "version": r.Version}})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "release.remediation.refused", Subject: subject,
			Details: map[string]any{"to": remediation, "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// requireSystem refuses, with EFORBIDDEN audited as action+".refused", an
// actor that is not the server itself.
func (db *DB) requireSystem(ctx context.Context, a cradle.Actor, action, subject, what string) error {
	if a.Role == cradle.RoleSystem {
		return nil
	}
	err := cradle.Errorf(cradle.EFORBIDDEN, "role %s may not %s; only the server itself does", a.Role, what)
	return db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: action + ".refused", Subject: subject}, err)
}

// ReferencedArtifacts calls fn with each digest that a release which is
// not yanked, or one of its deltas, refers to, in every tenant. Each
// digest comes once. An error from fn stops the walk and is returned.
func (s *ReleaseService) ReferencedArtifacts(ctx context.Context, fn func(sha256 string) error) error {
	a, err := s.db.authorize(ctx, cradle.PermReleaseRead, "release.referenced", "artifacts")
	if err != nil {
		return err
	}
	if err := s.db.requireSystem(ctx, a, "release.referenced", "artifacts", "list the artifacts of every tenant"); err != nil {
		return err
	}
	rows, err := s.db.query(ctx, `SELECT sha256 FROM releases WHERE state <> 'yanked'
		UNION SELECT d.sha256 FROM release_deltas d JOIN releases r ON r.id = d.release_id WHERE r.state <> 'yanked'`)
	if err != nil {
		return fmt.Errorf("sqlstore: referenced artifacts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sum string
		if err := rows.Scan(&sum); err != nil {
			return fmt.Errorf("sqlstore: referenced artifacts: %w", err)
		}
		if err := fn(sum); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlstore: referenced artifacts: %w", err)
	}
	return nil
}

// parseImageKey parses a PEM "PUBLIC KEY" block holding an ECDSA P-256 or
// Ed25519 key, the key types MCUboot images are signed with here, and
// returns the key, its canonical PEM and its fingerprint: the hex of
// mcuboot.KeyHash, the value an image's KEYHASH TLV carries.
func parseImageKey(pemText string) (pub any, canonical, fingerprint string, err error) {
	block, rest := pem.Decode([]byte(pemText))
	switch {
	case block == nil:
		return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: no PEM block; give the key as -----BEGIN PUBLIC KEY-----")
	case block.Type != "PUBLIC KEY":
		return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: a PEM block of type %q; want \"PUBLIC KEY\" (a SubjectPublicKeyInfo, as imgtool getpub --encoding pem writes it)", clip(block.Type, 40))
	case strings.TrimSpace(string(rest)) != "":
		return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: data after the PEM block; give one key")
	}
	pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: %v", err)
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: ECDSA on %s; image keys are ECDSA P-256 or Ed25519", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: a %T; image keys are ECDSA P-256 or Ed25519", pub)
	}
	sum, err := mcuboot.KeyHash(pub)
	if err != nil {
		return nil, "", "", cradle.Errorf(cradle.EINVALID, "invalid public_key: %v", err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, "", "", fmt.Errorf("sqlstore: image key: %w", err)
	}
	return pub, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), hex.EncodeToString(sum), nil
}

func imageKeySubject(fp string) string { return "image_key:" + fp }

// AddImageKey trusts a public key for a model's images. Adding a key again
// for the same model returns the stored key and changes nothing.
func (s *ReleaseService) AddImageKey(ctx context.Context, k cradle.ImageKey) (*cradle.ImageKey, error) {
	a, err := s.db.authorize(ctx, cradle.PermReleaseWrite, "image_key.add", "image_key")
	if err != nil {
		return nil, err
	}
	if err := cradle.ValidateModelName(k.Model); err != nil {
		return nil, err
	}
	if len(k.Name) > 128 || !utf8.ValidString(k.Name) || strings.ContainsFunc(k.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid name %q: at most 128 printable characters", clip(k.Name, 80))
	}
	_, canonical, fp, err := parseImageKey(k.PublicKey)
	if err != nil {
		return nil, err
	}
	if k.Fingerprint != "" && k.Fingerprint != fp {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid fingerprint %q: the key's fingerprint is %s", clip(k.Fingerprint, 80), fp)
	}
	subject := imageKeySubject(fp)
	var out *cradle.ImageKey
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		cur, err := findImageKeys(ctx, tx.query, a.TenantID, "fingerprint = ?", fp)
		if err != nil {
			return err
		}
		if len(cur) > 0 {
			if cur[0].Model != k.Model {
				refused = cradle.Errorf(cradle.ECONFLICT, "image key %s is already trusted for model %q; one key signs the images of one model (use a key of its own for %q)", fp, cur[0].Model, k.Model)
				return refused
			}
			out = cur[0]
			return nil
		}
		out = &cradle.ImageKey{Fingerprint: fp, Model: k.Model, PublicKey: canonical, Name: k.Name, CreatedBy: a.String(), CreatedAt: tx.now}
		if _, err := tx.exec(ctx, `INSERT INTO image_keys (tenant_id, fingerprint, model, public_key, name, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			a.TenantID, fp, k.Model, canonical, k.Name, a.String(), micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: add image key: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "image_key.add", Subject: subject,
			Details: map[string]any{"model": k.Model, "name": k.Name, "public_key": canonical}})
	})
	if refused != nil {
		return nil, s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "image_key.add.refused", Subject: subject,
			Details: map[string]string{"model": k.Model, "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

func findImageKeys(ctx context.Context, query queryFunc, tenantID int64, where string, args ...any) ([]*cradle.ImageKey, error) {
	q := `SELECT fingerprint, model, public_key, name, created_by, created_at FROM image_keys WHERE tenant_id = ?`
	if where != "" {
		q += ` AND ` + where
	}
	rows, err := query(ctx, q+` ORDER BY model, created_at, fingerprint`, append([]any{tenantID}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: image keys: %w", err)
	}
	defer rows.Close()
	out := []*cradle.ImageKey{}
	for rows.Next() {
		k := &cradle.ImageKey{}
		var created int64
		if err := rows.Scan(&k.Fingerprint, &k.Model, &k.PublicKey, &k.Name, &k.CreatedBy, &created); err != nil {
			return nil, fmt.Errorf("sqlstore: image keys: %w", err)
		}
		k.CreatedAt = fromMicros(created)
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: image keys: %w", err)
	}
	return out, nil
}

// FindImageKeys lists the tenant's image keys, of one model when model is
// not empty, by model and age.
func (s *ReleaseService) FindImageKeys(ctx context.Context, model string) ([]*cradle.ImageKey, error) {
	a, err := s.db.authorize(ctx, cradle.PermReleaseRead, "image_key.list", "image_keys")
	if err != nil {
		return nil, err
	}
	if model == "" {
		return findImageKeys(ctx, s.db.query, a.TenantID, "")
	}
	return findImageKeys(ctx, s.db.query, a.TenantID, "model = ?", model)
}

// RemoveImageKey stops trusting a key. Releases it signed keep their
// record; new images signed by it are refused.
func (s *ReleaseService) RemoveImageKey(ctx context.Context, fingerprint string) error {
	subject := imageKeySubject(fingerprint)
	a, err := s.db.authorize(ctx, cradle.PermReleaseWrite, "image_key.remove", subject)
	if err != nil {
		return err
	}
	return s.db.write(ctx, func(tx *Tx) error {
		if err := tx.lockTenant(ctx, a.TenantID); err != nil {
			return err
		}
		cur, err := findImageKeys(ctx, tx.query, a.TenantID, "fingerprint = ?", fingerprint)
		if err != nil {
			return err
		}
		if len(cur) == 0 {
			return cradle.Errorf(cradle.ENOTFOUND, "image key %q not found", clip(fingerprint, 80))
		}
		if _, err := tx.exec(ctx, `DELETE FROM image_keys WHERE tenant_id = ? AND fingerprint = ?`, a.TenantID, fingerprint); err != nil {
			return fmt.Errorf("sqlstore: remove image key: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "image_key.remove", Subject: subject,
			Details: map[string]any{"model": cur[0].Model, "name": cur[0].Name}})
	})
}

// clip shortens s to at most n bytes (and a marker) for an error message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// AuthorizeRelease implements cradle.ReleaseService.
func (s *ReleaseService) AuthorizeRelease(ctx context.Context, p cradle.Permission, action, subject string) (cradle.Actor, error) {
	return s.db.authorize(ctx, p, action, subject)
}
