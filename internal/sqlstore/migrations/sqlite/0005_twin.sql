-- Configuration twins. Times are microseconds since the Unix epoch (UTC).
-- JSON documents are stored canonical (sorted keys, no spaces).

-- Configuration shared by the devices a label selector matches.
CREATE TABLE config_groups (
	tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
	name       TEXT    NOT NULL,
	selector   TEXT    NOT NULL,
	priority   INTEGER NOT NULL,
	config     TEXT    NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	updated_by TEXT    NOT NULL,
	PRIMARY KEY (tenant_id, name)
);

-- The JSON Schema a model's configuration must satisfy.
CREATE TABLE config_schemas (
	tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
	model      TEXT    NOT NULL,
	schema     TEXT    NOT NULL,
	updated_at INTEGER NOT NULL,
	updated_by TEXT    NOT NULL,
	PRIMARY KEY (tenant_id, model)
);

-- One row per device that has a twin: its own document, the effective
-- desired document and its version, the last report and the drift state
-- derived from both.
CREATE TABLE twins (
	device_id        INTEGER PRIMARY KEY REFERENCES devices (id),
	tenant_id        INTEGER NOT NULL,
	device_config    TEXT,             -- NULL: the device has no document of its own
	device_config_at INTEGER,
	version          INTEGER NOT NULL, -- 0 while there is no effective document
	effective        TEXT,
	effective_at     INTEGER,
	reported         TEXT,             -- the reported document as received (canonical config)
	reported_at      INTEGER,
	drift            TEXT    NOT NULL
);
CREATE INDEX twins_drift ON twins (tenant_id, drift);
