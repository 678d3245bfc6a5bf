package sqlstore

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"cradle"
)

// ClaimService implements cradle.ClaimService.
type ClaimService struct{ db *DB }

var _ cradle.ClaimService = (*ClaimService)(nil)

// NewClaimService returns the claim service of db.
func NewClaimService(db *DB) *ClaimService { return &ClaimService{db: db} }

// claimRow is a device's row of device_claims.
type claimRow struct {
	hash, site, owner string
	claimedAt         sql.NullInt64
	failures          int
	lockedUntil       int64
}

// findClaim reads the claim row of a device; nil when it has none.
func findClaim(ctx context.Context, q querier, deviceID int64) (*claimRow, error) {
	c := &claimRow{}
	err := q.queryRow(ctx, `SELECT code_hash, site, owner, claimed_at, failures, locked_until FROM device_claims WHERE device_id = ?`, deviceID).
		Scan(&c.hash, &c.site, &c.owner, &c.claimedAt, &c.failures, &c.lockedUntil)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find claim: %w", err)
	}
	return c, nil
}

// recordClaimHash keeps the claim code hash of a unit's factory record.
// A re-provisioned unit (rma) gets its new label's code; a claim it had
// stays.
func (tx *Tx) recordClaimHash(ctx context.Context, tenantID, deviceID int64, hash string) error {
	if hash == "" {
		return nil
	}
	_, err := tx.exec(ctx, `INSERT INTO device_claims (device_id, tenant_id, code_hash) VALUES (?, ?, ?)
		ON CONFLICT (device_id) DO UPDATE SET code_hash = excluded.code_hash, failures = 0, locked_until = 0`, deviceID, tenantID, hash)
	if err != nil {
		return fmt.Errorf("sqlstore: record claim code: %w", err)
	}
	return nil
}

// quarantineUnclaimed applies the tenant's quarantine policy to a device
// that just enrolled: when the policy is on and the device is not
// claimed, it gets the label quarantine=true, audited.
func (tx *Tx) quarantineUnclaimed(ctx context.Context, a cradle.Actor, d *cradle.Device) error {
	p, err := findPolicy(ctx, tx, a.TenantID)
	if err != nil || !p.QuarantineUnclaimed {
		return err
	}
	c, err := findClaim(ctx, tx, d.ID)
	if err != nil || (c != nil && c.claimedAt.Valid) {
		return err
	}
	d.Labels[cradle.LabelQuarantine] = "true"
	if err := cradle.ValidateLabels(d.Labels); err != nil {
		return err
	}
	if err := tx.setLabels(ctx, a.TenantID, d); err != nil {
		return err
	}
	return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.quarantine", Subject: "device:" + d.Serial,
		Details: map[string]string{"reason": "enrolled unclaimed while the tenant policy quarantine_unclaimed is on", "label": cradle.LabelQuarantine + "=true"}})
}

// ClaimDevice binds a device to a site or owner with its claim code.
func (s *ClaimService) ClaimDevice(ctx context.Context, serial string, c cradle.DeviceClaim) (*cradle.Device, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermDeviceClaim, "device.claim", subject)
	if err != nil {
		return nil, err
	}
	refusal := func(err error) error {
		return s.db.refuse(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.claim.refused", Subject: subject,
			Details: map[string]string{"reason": cradle.ErrorMessage(err)}}, err)
	}
	if err := c.Validate(); err != nil {
		return nil, refusal(err)
	}
	var d *cradle.Device
	var wrongCode error // a wrong code is counted, so its transaction commits
	err = s.db.write(ctx, func(tx *Tx) error {
		var err error
		if d, err = tx.lockDevice(ctx, a.TenantID, serial); err != nil {
			return err
		}
		row, err := findClaim(ctx, tx, d.ID)
		if err != nil {
			return err
		}
		if row == nil || row.hash == "" {
			return cradle.Errorf(cradle.ECONFLICT, "device %q has no claim code on record: only units provisioned by a factory station that prints claim codes can be claimed; label it with cradle device label instead", serial)
		}
		switch d.State {
		case cradle.StateProvisioned, cradle.StateDeployed, cradle.StateSuspended:
		default:
			return cradle.Errorf(cradle.ECONFLICT, "device %q is %s: only a provisioned, deployed or suspended device can be claimed", serial, d.State)
		}
		if until := fromMicros(row.lockedUntil); row.lockedUntil != 0 && tx.now.Before(until) {
			return cradle.Errorf(cradle.EFORBIDDEN, "claiming device %q is locked until %s after %d wrong claim codes; check the label and try again then",
				serial, until.Format(time.RFC3339), cradle.MaxClaimFailures)
		}
		want := cradle.ClaimCodeHash(serial, c.Code)
		if subtle.ConstantTimeCompare([]byte(want), []byte(row.hash)) != 1 {
			failures, locked := row.failures+1, int64(0)
			msg := fmt.Sprintf("the claim code does not match device %q; %d more wrong codes lock claiming it for %s", serial, cradle.MaxClaimFailures-failures, cradle.ClaimLockout)
			if failures >= cradle.MaxClaimFailures {
				failures, locked = 0, micros(tx.now.Add(cradle.ClaimLockout))
				msg = fmt.Sprintf("the claim code does not match device %q; after %d wrong codes claiming it is locked until %s", serial, cradle.MaxClaimFailures, fromMicros(locked).Format(time.RFC3339))
			}
			if _, err := tx.exec(ctx, `UPDATE device_claims SET failures = ?, locked_until = ? WHERE device_id = ?`, failures, locked, d.ID); err != nil {
				return fmt.Errorf("sqlstore: claim: %w", err)
			}
			wrongCode = cradle.Errorf(cradle.EFORBIDDEN, "%s", msg)
			details := map[string]string{"reason": msg, "failures": fmt.Sprint(row.failures + 1)}
			if locked != 0 {
				details["locked_until"] = fromMicros(locked).Format(time.RFC3339)
			}
			return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.claim.refused", Subject: subject, Details: details})
		}
		if row.claimedAt.Valid {
			if row.site == c.Site && row.owner == c.Owner {
				return nil // the same claim again: nothing to change
			}
			return cradle.Errorf(cradle.ECONFLICT, "device %q is already claimed for site %q and owner %q; it cannot be claimed again for others", serial, row.site, row.owner)
		}
		_, quarantined := d.Labels[cradle.LabelQuarantine]
		delete(d.Labels, cradle.LabelQuarantine)
		if c.Site != "" {
			d.Labels[cradle.LabelSite] = c.Site
		}
		if c.Owner != "" {
			d.Labels[cradle.LabelOwner] = c.Owner
		}
		if err := cradle.ValidateLabels(d.Labels); err != nil {
			return err
		}
		if err := tx.setLabels(ctx, a.TenantID, d); err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `UPDATE device_claims SET site = ?, owner = ?, claimed_by = ?, claimed_at = ?, failures = 0, locked_until = 0 WHERE device_id = ?`,
			c.Site, c.Owner, a.String(), micros(tx.now), d.ID); err != nil {
			return fmt.Errorf("sqlstore: claim: %w", err)
		}
		details := map[string]string{"site": c.Site, "owner": c.Owner}
		if quarantined {
			details["quarantine"] = "released"
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "device.claim", Subject: subject, Details: details})
	})
	switch {
	case err != nil && cradle.ErrorCode(err) != cradle.EINTERNAL:
		return nil, refusal(err)
	case err != nil:
		return nil, err
	case wrongCode != nil:
		return nil, wrongCode
	}
	return d, nil
}

// findPolicy reads a tenant's policy; the zero policy when none was set.
func findPolicy(ctx context.Context, q querier, tenantID int64) (*cradle.TenantPolicy, error) {
	var quarantine, approvers int
	err := q.queryRow(ctx, `SELECT quarantine_unclaimed, decommission_approvers FROM tenant_policies WHERE tenant_id = ?`, tenantID).Scan(&quarantine, &approvers)
	if errors.Is(err, sql.ErrNoRows) {
		return &cradle.TenantPolicy{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find policy: %w", err)
	}
	return &cradle.TenantPolicy{QuarantineUnclaimed: quarantine != 0, DecommissionApprovers: approvers}, nil
}

// FindPolicy returns the actor's tenant policy.
func (s *ClaimService) FindPolicy(ctx context.Context) (*cradle.TenantPolicy, error) {
	a, err := s.db.authorize(ctx, cradle.PermDeviceRead, "policy.read", "policy")
	if err != nil {
		return nil, err
	}
	return findPolicy(ctx, s.db, a.TenantID)
}

// UpdatePolicy replaces the actor's tenant policy.
func (s *ClaimService) UpdatePolicy(ctx context.Context, p cradle.TenantPolicy) (*cradle.TenantPolicy, error) {
	a, err := s.db.authorize(ctx, cradle.PermPolicyWrite, "policy.update", "policy")
	if err != nil {
		return nil, err
	}
	if p.DecommissionApprovers < 0 || p.DecommissionApprovers > 2 {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid decommission_approvers %d: use 0 or 1 (the requesting admin alone) or 2 (a second admin approves)", p.DecommissionApprovers)
	}
	q := 0
	if p.QuarantineUnclaimed {
		q = 1
	}
	err = s.db.write(ctx, func(tx *Tx) error {
		if _, err := tx.exec(ctx, `INSERT INTO tenant_policies (tenant_id, quarantine_unclaimed, decommission_approvers, updated_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (tenant_id) DO UPDATE SET quarantine_unclaimed = excluded.quarantine_unclaimed, decommission_approvers = excluded.decommission_approvers, updated_at = excluded.updated_at`,
			a.TenantID, q, p.DecommissionApprovers, micros(tx.now)); err != nil {
			return fmt.Errorf("sqlstore: update policy: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "policy.update", Subject: "policy", Details: p})
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}
