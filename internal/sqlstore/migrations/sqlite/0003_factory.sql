-- The factory: production batches, the tenant's MAC address pool, factory
-- stations, the units handed to stations, their signed trace records, and
-- the outbox of provisioning events for the MES webhook.

CREATE TABLE batches (
	pk                INTEGER PRIMARY KEY,
	tenant_id         INTEGER NOT NULL REFERENCES tenants (id),
	id                TEXT    NOT NULL,
	model             TEXT    NOT NULL,
	hardware_revision TEXT    NOT NULL,
	quantity          INTEGER NOT NULL,
	firmware_version  TEXT    NOT NULL,
	profile           TEXT    NOT NULL,
	serial_pattern    TEXT    NOT NULL,
	allocated         INTEGER NOT NULL, -- only grows: the next unit's sequence is allocated + 1
	provisioned       INTEGER NOT NULL,
	failed            INTEGER NOT NULL,
	created_at        INTEGER NOT NULL,
	created_by        TEXT    NOT NULL,
	UNIQUE (tenant_id, id)
);

-- Addresses are 48-bit numbers. Blocks never overlap, across all tenants;
-- next_offset only grows.
CREATE TABLE mac_ranges (
	pk          INTEGER PRIMARY KEY,
	tenant_id   INTEGER NOT NULL REFERENCES tenants (id),
	first_mac   INTEGER NOT NULL,
	last_mac    INTEGER NOT NULL,
	next_offset INTEGER NOT NULL,
	created_at  INTEGER NOT NULL,
	created_by  TEXT    NOT NULL,
	CHECK (first_mac <= last_mac)
);
CREATE INDEX mac_ranges_tenant ON mac_ranges (tenant_id, first_mac);
CREATE INDEX mac_ranges_first ON mac_ranges (first_mac);

CREATE TABLE stations (
	pk          INTEGER PRIMARY KEY,
	tenant_id   INTEGER NOT NULL REFERENCES tenants (id),
	name        TEXT    NOT NULL,
	profile     TEXT    NOT NULL,
	cert_serial TEXT    NOT NULL,
	fingerprint TEXT    NOT NULL,
	der         BLOB    NOT NULL,
	token_id    TEXT    NOT NULL,
	enrolled_at INTEGER NOT NULL,
	enrolled_by TEXT    NOT NULL,
	UNIQUE (tenant_id, name)
);

-- A MAC is handed out once, in any tenant; a failed unit keeps its row.
CREATE TABLE factory_units (
	pk           INTEGER PRIMARY KEY,
	tenant_id    INTEGER NOT NULL REFERENCES tenants (id),
	serial       TEXT    NOT NULL,
	device_id    INTEGER NOT NULL REFERENCES devices (id),
	mac          INTEGER NOT NULL UNIQUE,
	batch_id     TEXT    NOT NULL,
	station      TEXT    NOT NULL, -- the station that holds it
	status       TEXT    NOT NULL, -- allocated, provisioned, failed
	allocated_at INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL,
	UNIQUE (tenant_id, serial)
);
CREATE INDEX factory_units_batch ON factory_units (tenant_id, batch_id, pk);

-- Trace records as the stations signed them; never changed.
CREATE TABLE factory_traces (
	pk          INTEGER PRIMARY KEY,
	record_id   TEXT    NOT NULL UNIQUE,
	tenant_id   INTEGER NOT NULL REFERENCES tenants (id),
	serial      TEXT    NOT NULL,
	batch_id    TEXT    NOT NULL,
	station     TEXT    NOT NULL,
	status      TEXT    NOT NULL,
	payload     BLOB    NOT NULL,
	signature   BLOB    NOT NULL,
	received_at INTEGER NOT NULL
);
CREATE INDEX factory_traces_serial ON factory_traces (tenant_id, serial, pk);
CREATE INDEX factory_traces_batch ON factory_traces (tenant_id, batch_id, pk);

-- The outbox of CloudEvents for the MES webhook, written in the
-- transaction of the record it announces.
CREATE TABLE factory_events (
	id              INTEGER PRIMARY KEY,
	tenant_id       INTEGER NOT NULL REFERENCES tenants (id),
	event_id        TEXT    NOT NULL,
	type            TEXT    NOT NULL,
	source          TEXT    NOT NULL,
	subject         TEXT    NOT NULL,
	time            INTEGER NOT NULL,
	data            BLOB    NOT NULL,
	attempts        INTEGER NOT NULL,
	next_attempt_at INTEGER NOT NULL,
	dead            INTEGER NOT NULL,
	last_error      TEXT    NOT NULL
);
CREATE INDEX factory_events_due ON factory_events (dead, next_attempt_at, id);
