-- Over-the-air updates: releases, image keys, rollouts, the scheduler's
-- leases, device reports and download accounting. Times are microseconds
-- since the Unix epoch (UTC).

-- Uploaded artifacts. The bytes are in the artifact store under sha256.
CREATE TABLE releases (
	id                 INTEGER PRIMARY KEY,
	tenant_id          INTEGER NOT NULL REFERENCES tenants (id),
	public_id          TEXT    NOT NULL UNIQUE,
	model              TEXT    NOT NULL,
	version            TEXT    NOT NULL,
	hardware_revisions TEXT    NOT NULL DEFAULT '[]', -- JSON array
	kind               TEXT    NOT NULL,
	sha256             TEXT    NOT NULL,
	size               INTEGER NOT NULL,
	file_name          TEXT    NOT NULL,
	security_counter   INTEGER NOT NULL,
	notes              TEXT    NOT NULL DEFAULT '',
	state              TEXT    NOT NULL,
	reason             TEXT    NOT NULL DEFAULT '',
	target_path        TEXT    NOT NULL DEFAULT '',
	image_key          TEXT    NOT NULL DEFAULT '',
	created_by         TEXT    NOT NULL,
	created_at         INTEGER NOT NULL,
	signed_at          INTEGER,
	updated_at         INTEGER NOT NULL,
	UNIQUE (tenant_id, model, version)
);
CREATE INDEX releases_tenant ON releases (tenant_id, id);
CREATE INDEX releases_sha256 ON releases (sha256);

-- Delta patches to a release from an earlier one.
CREATE TABLE release_deltas (
	release_id      INTEGER NOT NULL REFERENCES releases (id),
	from_release_id INTEGER NOT NULL REFERENCES releases (id),
	from_sha256     TEXT    NOT NULL,
	from_size       INTEGER NOT NULL,
	sha256          TEXT    NOT NULL,
	size            INTEGER NOT NULL,
	target_path     TEXT    NOT NULL,
	PRIMARY KEY (release_id, from_release_id)
);
CREATE INDEX release_deltas_sha256 ON release_deltas (sha256);

-- Public keys trusted to sign MCUboot images, one model each.
CREATE TABLE image_keys (
	tenant_id   INTEGER NOT NULL REFERENCES tenants (id),
	fingerprint TEXT    NOT NULL,
	model       TEXT    NOT NULL,
	public_key  TEXT    NOT NULL,
	name        TEXT    NOT NULL DEFAULT '',
	created_by  TEXT    NOT NULL,
	created_at  INTEGER NOT NULL,
	PRIMARY KEY (tenant_id, fingerprint)
);

-- Rollouts. spec and status are the JSON of cradle.RolloutSpec and
-- cradle.RolloutStatus; state repeats status.state for queries, and
-- in_flight the number of its devices started, downloading or installing
-- (from the status's phase counts, written with the device rows), so the
-- scheduler finds the aborted rollouts that still have updates to time out
-- without reading rollout_devices. revision grows with every write, so a
-- scheduler holding an older copy reloads.
CREATE TABLE rollouts (
	id         INTEGER PRIMARY KEY,
	tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
	public_id  TEXT    NOT NULL UNIQUE,
	release_id INTEGER NOT NULL REFERENCES releases (id),
	spec       TEXT    NOT NULL,
	status     TEXT    NOT NULL,
	state      TEXT    NOT NULL,
	revision   INTEGER NOT NULL,
	in_flight  INTEGER NOT NULL DEFAULT 0,
	created_by TEXT    NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
);
CREATE INDEX rollouts_tenant ON rollouts (tenant_id, id);
CREATE INDEX rollouts_state ON rollouts (state);

-- A rollout's devices, in the engine's order (position). labels holds
-- only what the engine reads (the tz label), as JSON, or '' for none. A
-- serial is unique in a rollout (serials are unique in a tenant), so the
-- scheduler updates a device's row by serial. WITHOUT ROWID: the rows
-- live in the primary key's tree, one tree less to write per device.
CREATE TABLE rollout_devices (
	rollout_id     INTEGER NOT NULL REFERENCES rollouts (id),
	position       INTEGER NOT NULL,
	device_id      INTEGER NOT NULL REFERENCES devices (id),
	serial         TEXT    NOT NULL,
	labels         TEXT    NOT NULL DEFAULT '',
	state          TEXT    NOT NULL,
	phase          INTEGER NOT NULL,
	attempt        INTEGER NOT NULL,
	progress       INTEGER,
	reason         TEXT    NOT NULL DEFAULT '',
	active_rollout TEXT    NOT NULL DEFAULT '',
	PRIMARY KEY (rollout_id, position),
	UNIQUE (rollout_id, serial)
) WITHOUT ROWID;
CREATE INDEX rollout_devices_device ON rollout_devices (device_id, state);

-- Device reports waiting for the scheduler, in the order received.
CREATE TABLE rollout_events (
	seq        INTEGER PRIMARY KEY,
	rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
	serial     TEXT    NOT NULL,
	kind       TEXT    NOT NULL,
	attempt    INTEGER NOT NULL,
	reason     TEXT    NOT NULL DEFAULT '',
	at         INTEGER NOT NULL
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, seq);

-- Leases: one replica at a time does a job; fence grows at each change of
-- hands.
CREATE TABLE leases (
	name       TEXT    PRIMARY KEY,
	holder     TEXT    NOT NULL,
	fence      INTEGER NOT NULL,
	expires_at INTEGER NOT NULL
);

-- What each device last said it runs.
CREATE TABLE device_software (
	device_id   INTEGER PRIMARY KEY REFERENCES devices (id),
	sha256      TEXT    NOT NULL,
	reported_at INTEGER NOT NULL
);

-- Download accounting per device and artifact.
CREATE TABLE artifact_downloads (
	device_id INTEGER NOT NULL REFERENCES devices (id),
	sha256    TEXT    NOT NULL,
	bytes     INTEGER NOT NULL,
	requests  INTEGER NOT NULL,
	completes INTEGER NOT NULL,
	first_at  INTEGER NOT NULL,
	last_at   INTEGER NOT NULL,
	PRIMARY KEY (device_id, sha256)
);
