package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"unicode/utf8"

	"cradle"
)

// UpdateService implements cradle.UpdateService, the device's side of
// updates:
//
//   - a device's pending update is its rollout_devices row in state
//     started, downloading or installing of a rollout that is running,
//     paused or aborted (an aborted rollout lets attempts in flight
//     finish), with the release of that rollout and the delta whose base
//     digest is exactly the one the device runs; a yanked release is never
//     handed out (its attempts time out in the engine), and of two
//     rollouts with an attempt in flight the newest wins;
//   - a suspended device (quarantine) is handed out only a remediation
//     release: an attempt of another rollout is left to time out, its
//     reports are refused, and a software report must name the image of a
//     remediation release of its tenant (EFORBIDDEN, audited);
//   - a report is queued as a rollout_events row for the scheduler, which
//     feeds it to the rollout engine; the row's kind is the state reported
//     (the engine's event kinds);
//   - what a device runs is kept per device; a change of image is audited;
//   - download accounting adds to per-device, per-artifact totals; it is
//     bookkeeping, like telemetry, and not audited.
//
// A device actor acts only for itself (EFORBIDDEN, audited).
type UpdateService struct{ db *DB }

var _ cradle.UpdateService = (*UpdateService)(nil)

// NewUpdateService returns the device update store of db.
func NewUpdateService(db *DB) *UpdateService { return &UpdateService{db: db} }

// deviceActor authorizes a device-side update call: PermUpdateDevice, and
// a device only for itself.
func (s *UpdateService) deviceActor(ctx context.Context, action, serial string) (cradle.Actor, error) {
	return s.db.updateActor(ctx, action, serial)
}

// updateActor authorizes a device-side update call (the update service's
// and the protocol service's): PermUpdateDevice, and a device only for
// itself.
func (db *DB) updateActor(ctx context.Context, action, serial string) (cradle.Actor, error) {
	a, err := db.authorize(ctx, cradle.PermUpdateDevice, action, "device:"+serial)
	if err != nil {
		return a, err
	}
	return a, db.ownDevice(ctx, a, serial, "act on the updates", action+".refused")
}

// PendingUpdate returns the device's attempt in progress.
func (s *UpdateService) PendingUpdate(ctx context.Context, serial, runningSHA256 string) (*cradle.PendingUpdate, error) {
	a, err := s.deviceActor(ctx, "update.pending", serial)
	if err != nil {
		return nil, err
	}
	if runningSHA256 != "" {
		if err := cradle.ValidateSHA256("running sha256", runningSHA256); err != nil {
			return nil, err
		}
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	p := &cradle.PendingUpdate{}
	var relID int64
	var state, rolloutState string
	err = s.db.queryRowPrepared(ctx, `SELECT ro.public_id, ro.release_id, rd.attempt, rd.state, ro.state FROM rollout_devices rd JOIN rollouts ro ON ro.id = rd.rollout_id
		JOIN releases r ON r.id = ro.release_id JOIN devices d ON d.id = rd.device_id
		WHERE rd.device_id = ? AND ro.tenant_id = ? AND rd.state IN ('started', 'downloading', 'installing') AND ro.state IN ('running', 'paused', 'aborted')
			AND r.state <> 'yanked' AND (d.state <> 'suspended' OR r.remediation = ?)
		ORDER BY ro.id DESC LIMIT 1`, devID, a.TenantID, true).Scan(&p.RolloutID, &relID, &p.Attempt, &state, &rolloutState)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "device %q has no update in progress", serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: pending update: %w", err)
	}
	p.State, p.RolloutState = cradle.DeviceUpdateState(state), cradle.RolloutState(rolloutState)
	rs, err := findReleases(ctx, s.db.queryPrepared, `r.id = ?`, ``, relID) // constant texts: one release
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("sqlstore: pending update: rollout %s has no release", p.RolloutID)
	}
	p.Release = *rs[0]
	if runningSHA256 != "" {
		for i := range p.Release.Deltas {
			if d := p.Release.Deltas[i]; d.FromSHA256 == runningSHA256 {
				p.Delta = &d
				break
			}
		}
	}
	return p, nil
}

// updateReportStates are the states a device may report.
var updateReportStates = []string{cradle.UpdateDownloading, cradle.UpdateInstalling, cradle.UpdateSucceeded, cradle.UpdateFailed, cradle.UpdateTimedOut}

// ReportUpdate queues a device's report for the rollout's engine.
func (s *UpdateService) ReportUpdate(ctx context.Context, serial string, r cradle.UpdateReport) error {
	subject := "device:" + serial
	a, err := s.deviceActor(ctx, "update.report", serial)
	if err != nil {
		return err
	}
	known := false
	for _, st := range updateReportStates {
		known = known || r.State == st
	}
	switch {
	case !known:
		return cradle.Errorf(cradle.EINVALID, "invalid update state %q: report downloading, installing, succeeded, failed or timeout", clip(r.State, 40))
	case r.RolloutID == "":
		return cradle.Errorf(cradle.EINVALID, "rollout_id is required")
	case r.Attempt < 0:
		return cradle.Errorf(cradle.EINVALID, "invalid attempt %d: attempts count from 1 (0: the current one)", r.Attempt)
	case len(r.Reason) > cradle.MaxUpdateReason || !utf8.ValidString(r.Reason):
		return cradle.Errorf(cradle.EINVALID, "invalid reason: at most %d bytes of UTF-8 text", cradle.MaxUpdateReason)
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		var rolloutID int64
		var state cradle.DeviceUpdateState
		var devState string
		var remediation bool
		err := tx.queryRow(ctx, `SELECT ro.id, rd.state, d.state, r.remediation FROM rollouts ro JOIN rollout_devices rd ON rd.rollout_id = ro.id
			JOIN releases r ON r.id = ro.release_id JOIN devices d ON d.id = rd.device_id
			WHERE ro.tenant_id = ? AND ro.public_id = ? AND rd.device_id = ?`, a.TenantID, r.RolloutID, devID).Scan(&rolloutID, &state, &devState, &remediation)
		if errors.Is(err, sql.ErrNoRows) {
			return cradle.Errorf(cradle.ENOTFOUND, "device %q is not in rollout %q", serial, clip(r.RolloutID, 40))
		} else if err != nil {
			return fmt.Errorf("sqlstore: update report: %w", err)
		}
		if devState == string(cradle.StateSuspended) && !remediation {
			refused = cradle.Errorf(cradle.EFORBIDDEN, "device %q is suspended: it reports only on remediation updates, and rollout %s is not one", serial, r.RolloutID)
			return refused
		}
		if !state.InFlight() {
			// The device's update has ended (or never started): the
			// engine would refuse the report as stale, and a completed
			// rollout is never stepped, so queuing it would only grow
			// the queue. It is audited, not queued.
			return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.report.stale", Subject: subject,
				Details: map[string]any{"rollout": r.RolloutID, "attempt": r.Attempt, "state": r.State, "reason": r.Reason, "device_state": state}})
		}
		if _, err := tx.exec(ctx, `INSERT INTO rollout_events (rollout_id, serial, kind, attempt, reason, at) VALUES (?, ?, ?, ?, ?, ?)`,
			rolloutID, serial, r.State, r.Attempt, r.Reason, micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: update report: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.report", Subject: subject,
			Details: map[string]any{"rollout": r.RolloutID, "attempt": r.Attempt, "state": r.State, "reason": r.Reason}})
	})
	if refused != nil {
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.report.refused", Subject: subject,
			Details: map[string]any{"rollout": r.RolloutID, "state": r.State, "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	return err
}

// ReportSoftware records the image a device runs. Reporting the same
// image again only refreshes the time; a new image is audited.
func (s *UpdateService) ReportSoftware(ctx context.Context, serial, sha256 string) error {
	a, err := s.deviceActor(ctx, "update.software", serial)
	if err != nil {
		return err
	}
	if err := cradle.ValidateSHA256("sha256", sha256); err != nil {
		return err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return err
	}
	var refused error
	err = s.db.write(ctx, func(tx *Tx) error {
		var devState string
		if err := tx.queryRow(ctx, `SELECT state FROM devices WHERE id = ?`, devID).Scan(&devState); err != nil {
			return fmt.Errorf("sqlstore: report software: %w", err)
		}
		if devState == string(cradle.StateSuspended) {
			var n int
			if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM releases WHERE tenant_id = ? AND sha256 = ? AND remediation = ? AND state <> 'yanked'`,
				a.TenantID, sha256, true).Scan(&n); err != nil {
				return fmt.Errorf("sqlstore: report software: %w", err)
			}
			if n == 0 {
				refused = cradle.Errorf(cradle.EFORBIDDEN, "device %q is suspended: it reports only the image of a remediation release, and %s is none", serial, sha256)
				return refused
			}
		}
		var prev string
		err := tx.queryRow(ctx, `SELECT sha256 FROM device_software WHERE device_id = ?`, devID).Scan(&prev)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sqlstore: report software: %w", err)
		}
		if _, err := tx.exec(ctx, `INSERT INTO device_software (device_id, sha256, reported_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET sha256 = excluded.sha256, reported_at = excluded.reported_at`, devID, sha256, micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: report software: %w", err)
		}
		if prev == sha256 {
			return nil
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.software", Subject: "device:" + serial,
			Details: map[string]any{"sha256": sha256, "previous": prev}})
	})
	if refused != nil {
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "update.software.refused", Subject: "device:" + serial,
			Details: map[string]any{"sha256": sha256, "reason": cradle.ErrorMessage(refused)}}, refused)
	}
	return err
}

// FindSoftware returns what a device last reported running, with the
// release of the tenant that has that image (one of the device's model
// first, then the newest).
func (s *UpdateService) FindSoftware(ctx context.Context, serial string) (*cradle.DeviceSoftware, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "update.software.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	sw := &cradle.DeviceSoftware{}
	var at int64
	var model string
	err = s.db.queryRow(ctx, `SELECT s.sha256, s.reported_at, d.model FROM device_software s JOIN devices d ON d.id = s.device_id WHERE s.device_id = ?`, devID).Scan(&sw.SHA256, &at, &model)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "device %q has not reported the software it runs", serial)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find software: %w", err)
	}
	sw.ReportedAt = fromMicros(at)
	err = s.db.queryRow(ctx, `SELECT public_id, version FROM releases WHERE tenant_id = ? AND sha256 = ?
		ORDER BY CASE WHEN model = ? THEN 0 ELSE 1 END, id DESC LIMIT 1`, a.TenantID, sw.SHA256, model).Scan(&sw.ReleaseID, &sw.Version)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlstore: find software: %w", err)
	}
	return sw, nil
}

// downloadKey names one artifact_downloads row.
type downloadKey struct {
	deviceID int64
	sha256   string
}

// RecordDownloads adds download records to the totals of their devices,
// in one transaction. Records of devices that do not exist (any more) are
// skipped; a malformed record refuses the whole batch (EINVALID).
func (s *UpdateService) RecordDownloads(ctx context.Context, recs []cradle.DownloadRecord) error {
	a, err := s.db.authorize(ctx, cradle.PermUpdateDevice, "update.downloads", "downloads")
	if err != nil {
		return err
	}
	if err := s.db.requireSystem(ctx, a, "update.downloads", "downloads", "record download accounting"); err != nil {
		return err
	}
	for i, r := range recs {
		if err := cradle.ValidateSHA256(fmt.Sprintf("records[%d].sha256", i), r.SHA256); err != nil {
			return err
		}
		if r.Bytes < 0 {
			return cradle.Errorf(cradle.EINVALID, "invalid records[%d].bytes %d: a download serves zero bytes or more", i, r.Bytes)
		}
	}
	if len(recs) == 0 {
		return nil
	}
	return s.db.write(ctx, func(tx *Tx) error {
		type devKey struct {
			tenantID int64
			serial   string
		}
		ids := map[devKey]int64{} // 0: no such device
		sums := map[downloadKey]*cradle.DeviceDownload{}
		for _, r := range recs {
			k := devKey{r.TenantID, r.Serial}
			id, ok := ids[k]
			if !ok {
				err := tx.queryRow(ctx, `SELECT id FROM devices WHERE tenant_id = ? AND serial = ?`, r.TenantID, r.Serial).Scan(&id)
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("sqlstore: record downloads: %w", err)
				}
				ids[k] = id
			}
			if id == 0 {
				continue
			}
			at := r.At
			if at.IsZero() {
				at = tx.now
			}
			dk := downloadKey{id, r.SHA256}
			d := sums[dk]
			if d == nil {
				d = &cradle.DeviceDownload{SHA256: r.SHA256, FirstAt: at, LastAt: at}
				sums[dk] = d
			}
			d.Bytes += r.Bytes
			d.Requests++
			if r.Complete {
				d.Completes++
			}
			if at.Before(d.FirstAt) {
				d.FirstAt = at
			}
			if at.After(d.LastAt) {
				d.LastAt = at
			}
		}
		// A stable order keeps concurrent batches on PostgreSQL from
		// locking the same rows in opposite orders.
		keys := make([]downloadKey, 0, len(sums))
		for k := range sums {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if keys[i].deviceID != keys[j].deviceID {
				return keys[i].deviceID < keys[j].deviceID
			}
			return keys[i].sha256 < keys[j].sha256
		})
		for _, k := range keys {
			d := sums[k]
			if _, err := tx.exec(ctx, `INSERT INTO artifact_downloads (device_id, sha256, bytes, requests, completes, first_at, last_at) VALUES (?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (device_id, sha256) DO UPDATE SET bytes = artifact_downloads.bytes + excluded.bytes,
					requests = artifact_downloads.requests + excluded.requests, completes = artifact_downloads.completes + excluded.completes,
					first_at = CASE WHEN excluded.first_at < artifact_downloads.first_at THEN excluded.first_at ELSE artifact_downloads.first_at END,
					last_at = CASE WHEN excluded.last_at > artifact_downloads.last_at THEN excluded.last_at ELSE artifact_downloads.last_at END`,
				k.deviceID, k.sha256, d.Bytes, d.Requests, d.Completes, micros(d.FirstAt), micros(d.LastAt)); err != nil {
				return fmt.Errorf("sqlstore: record downloads: %w", err)
			}
		}
		return nil
	})
}

// FindDownloads lists a device's download totals, most recent first.
func (s *UpdateService) FindDownloads(ctx context.Context, serial string) ([]*cradle.DeviceDownload, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "update.downloads.read", "device:"+serial)
	if err != nil {
		return nil, err
	}
	devID, err := s.db.deviceID(ctx, a.TenantID, serial)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT sha256, bytes, requests, completes, first_at, last_at FROM artifact_downloads WHERE device_id = ? ORDER BY last_at DESC, sha256`, devID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find downloads: %w", err)
	}
	defer rows.Close()
	out := []*cradle.DeviceDownload{}
	for rows.Next() {
		d := &cradle.DeviceDownload{}
		var first, last int64
		if err := rows.Scan(&d.SHA256, &d.Bytes, &d.Requests, &d.Completes, &first, &last); err != nil {
			return nil, fmt.Errorf("sqlstore: find downloads: %w", err)
		}
		d.FirstAt, d.LastAt = fromMicros(first), fromMicros(last)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: find downloads: %w", err)
	}
	return out, nil
}
