-- Foreign update clients (compat.go): the Mender device API and hawkBit
-- DDI. Times are microseconds since the Unix epoch (UTC).

-- How each device talks to Cradle, and the name a foreign artifact gives
-- itself (what a Mender client compares with the name it runs).
ALTER TABLE devices ADD COLUMN protocol TEXT NOT NULL DEFAULT 'cradle';
ALTER TABLE releases ADD COLUMN artifact_name TEXT NOT NULL DEFAULT '';

-- Mender auth sets: one row per (identity, key) pair a device asked to be
-- admitted with. id_data is the canonical identity JSON, id_data_sha256
-- its SHA-256 (hex), key_fingerprint the SHA-256 (hex) of the DER key.
-- device_id is NULL until the set is bound to a device.
CREATE TABLE mender_auth_sets (
	id              INTEGER PRIMARY KEY,
	public_id       TEXT    NOT NULL UNIQUE,
	tenant_id       INTEGER NOT NULL REFERENCES tenants (id),
	id_data         TEXT    NOT NULL,
	id_data_sha256  TEXT    NOT NULL,
	pubkey          TEXT    NOT NULL,
	key_fingerprint TEXT    NOT NULL,
	status          TEXT    NOT NULL,
	device_id       INTEGER REFERENCES devices (id),
	decided_by      TEXT    NOT NULL DEFAULT '',
	reason          TEXT    NOT NULL DEFAULT '',
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL,
	UNIQUE (tenant_id, id_data_sha256, key_fingerprint)
);
CREATE INDEX mender_auth_sets_tenant ON mender_auth_sets (tenant_id, id);
CREATE INDEX mender_auth_sets_device ON mender_auth_sets (tenant_id, device_id);

-- Device tokens: Mender session tokens, hawkBit target tokens (one
-- device) and gateway tokens (device_id NULL: the whole tenant). Only the
-- SHA-256 (hex) of the whole token string is stored. auth_set_id is the
-- Mender auth set a session token was issued to.
CREATE TABLE device_tokens (
	id          INTEGER PRIMARY KEY,
	public_id   TEXT    NOT NULL UNIQUE,
	tenant_id   INTEGER NOT NULL REFERENCES tenants (id),
	device_id   INTEGER REFERENCES devices (id),
	auth_set_id INTEGER REFERENCES mender_auth_sets (id),
	kind        TEXT    NOT NULL,
	name        TEXT    NOT NULL DEFAULT '',
	secret_hash TEXT    NOT NULL,
	created_by  TEXT    NOT NULL,
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER,
	revoked_at  INTEGER
);
CREATE INDEX device_tokens_device ON device_tokens (tenant_id, device_id);
CREATE INDEX device_tokens_auth_set ON device_tokens (auth_set_id);

-- Inventory attributes a device reported (Mender inventory, hawkBit
-- configData).
CREATE TABLE device_attributes (
	device_id  INTEGER NOT NULL REFERENCES devices (id),
	name       TEXT    NOT NULL,
	value      TEXT    NOT NULL,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (device_id, name)
);

-- hawkBit action ids: one per attempt of a device in a rollout. The id is
-- the rowid, assigned by the database; the store refuses one past
-- 2^31 - 1 (clients read it as a 32-bit integer).
CREATE TABLE ddi_actions (
	id         INTEGER PRIMARY KEY,
	tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
	device_id  INTEGER NOT NULL REFERENCES devices (id),
	rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
	attempt    INTEGER NOT NULL,
	created_at INTEGER NOT NULL,
	UNIQUE (device_id, rollout_id, attempt)
);

-- The last log a device sent for an attempt.
CREATE TABLE update_logs (
	device_id  INTEGER NOT NULL REFERENCES devices (id),
	rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
	attempt    INTEGER NOT NULL,
	log        TEXT    NOT NULL,
	at         INTEGER NOT NULL,
	PRIMARY KEY (device_id, rollout_id, attempt)
);
