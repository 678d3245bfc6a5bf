-- Times are microseconds since the Unix epoch (UTC).
CREATE TABLE tenants (
	id         INTEGER PRIMARY KEY,
	name       TEXT    NOT NULL UNIQUE,
	created_at INTEGER NOT NULL
);

CREATE TABLE tokens (
	id           TEXT    PRIMARY KEY,
	tenant_id    INTEGER NOT NULL REFERENCES tenants (id),
	name         TEXT    NOT NULL,
	role         TEXT    NOT NULL,
	secret_hash  TEXT    NOT NULL,
	created_at   INTEGER NOT NULL,
	created_by   TEXT    NOT NULL,
	expires_at   INTEGER,
	revoked_at   INTEGER,
	last_used_at INTEGER
);
CREATE INDEX tokens_tenant ON tokens (tenant_id, created_at);

CREATE TABLE devices (
	id                INTEGER PRIMARY KEY,
	tenant_id         INTEGER NOT NULL REFERENCES tenants (id),
	serial            TEXT    NOT NULL,
	hardware_uid      TEXT    NOT NULL,
	macs              TEXT    NOT NULL,
	model             TEXT    NOT NULL,
	hardware_revision TEXT    NOT NULL,
	labels            TEXT    NOT NULL,
	state             TEXT    NOT NULL,
	initial_state     TEXT    NOT NULL,
	created_by        TEXT    NOT NULL,
	created_at        INTEGER NOT NULL,
	updated_at        INTEGER NOT NULL,
	state_changed_at  INTEGER NOT NULL,
	UNIQUE (tenant_id, serial)
);
CREATE INDEX devices_state ON devices (tenant_id, state, id);
CREATE INDEX devices_model ON devices (tenant_id, model, id);

CREATE TABLE device_transitions (
	device_id  INTEGER NOT NULL REFERENCES devices (id),
	seq        INTEGER NOT NULL,
	from_state TEXT    NOT NULL,
	to_state   TEXT    NOT NULL,
	actor      TEXT    NOT NULL,
	reason     TEXT    NOT NULL,
	at         INTEGER NOT NULL,
	PRIMARY KEY (device_id, seq)
);

-- One hash chain per tenant; tenant 0 is the chain of what happens before a
-- tenant is known. No foreign key: the log outlives what it talks about.
CREATE TABLE audit_entries (
	tenant_id INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	actor     TEXT    NOT NULL,
	action    TEXT    NOT NULL,
	subject   TEXT    NOT NULL,
	details   TEXT    NOT NULL,
	prev_hash TEXT    NOT NULL,
	hash      TEXT    NOT NULL,
	PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_subject ON audit_entries (tenant_id, subject, seq);

-- The signed head of each chain, rewritten in the transaction of every append.
CREATE TABLE audit_heads (
	tenant_id INTEGER PRIMARY KEY,
	seq       INTEGER NOT NULL,
	hash      TEXT    NOT NULL,
	time      INTEGER NOT NULL,
	signature TEXT    NOT NULL
);
