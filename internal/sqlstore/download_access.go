package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"cradle"
)

// DeviceMayDownload reports whether the device serial of the actor's
// tenant may still download the artifact whose SHA-256 (hex) is sha256:
// a deployed device any, a suspended device only the image or a delta of
// a remediation release, a device in any other state (or unknown)
// nothing. A signed download URL outlives what it was signed for; the
// download route asks this on each request. When the answer is no, the
// reason says why. Needs PermDeviceRead (the system role).
func (s *DeviceService) DeviceMayDownload(ctx context.Context, serial, sha256 string) (bool, string, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "device.read", "device:"+serial)
	if err != nil {
		return false, "", err
	}
	var state string
	err = s.db.queryRow(ctx, `SELECT state FROM devices WHERE tenant_id = ? AND serial = ?`, a.TenantID, serial).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Sprintf("device %q is not on record", serial), nil
	} else if err != nil {
		return false, "", fmt.Errorf("sqlstore: download access: %w", err)
	}
	switch cradle.State(state) {
	case cradle.StateDeployed:
		return true, "", nil
	case cradle.StateSuspended:
		var n int
		if err := s.db.queryRow(ctx, `SELECT COUNT(*) FROM releases r WHERE r.tenant_id = ? AND r.remediation = ?
			AND (r.sha256 = ? OR EXISTS (SELECT 1 FROM release_deltas x WHERE x.release_id = r.id AND x.sha256 = ?))`,
			a.TenantID, true, sha256, sha256).Scan(&n); err != nil {
			return false, "", fmt.Errorf("sqlstore: download access: %w", err)
		}
		if n > 0 {
			return true, "", nil
		}
		return false, fmt.Sprintf("device %q is suspended: it may only download remediation updates", serial), nil
	}
	return false, fmt.Sprintf("device %q is %s: it may not download updates", serial, state), nil
}
