-- Decommissioning (decommission.go). Times are microseconds since the Unix
-- epoch (UTC). One row per device: eol is final, so a device is
-- decommissioned at most once. revoked is the JSON list of the
-- credentials revoked (cradle.DecommissionedCredential); the tombstone
-- columns hold the device's signed statement exactly as it arrived.
CREATE TABLE decommissions (
	id                    INTEGER PRIMARY KEY,
	tenant_id             INTEGER NOT NULL REFERENCES tenants (id),
	device_id             INTEGER NOT NULL UNIQUE REFERENCES devices (id),
	state                 TEXT    NOT NULL,
	reason                TEXT    NOT NULL,
	requested_by          TEXT    NOT NULL,
	requested_at          INTEGER NOT NULL,
	approved_by           TEXT    NOT NULL DEFAULT '',
	approved_at           INTEGER,
	executed_at           INTEGER,
	command_id            TEXT    NOT NULL DEFAULT '',
	revoked               TEXT    NOT NULL DEFAULT '[]',
	tombstone_payload     BLOB,
	tombstone_signature   BLOB,
	tombstone_certificate BLOB,
	confirmed_at          INTEGER
);
CREATE INDEX decommissions_tenant ON decommissions (tenant_id, state);

-- How many admins must agree to decommission a device: 0 or 1, or 2.
ALTER TABLE tenant_policies ADD COLUMN decommission_approvers INTEGER NOT NULL DEFAULT 0;
