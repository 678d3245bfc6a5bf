-- Zero-touch claims: the hash of each unit's claim code (from its signed
-- factory record), the site and owner it was claimed for, and the count
-- of wrong codes that locks claiming for a while. Times are microseconds
-- since the Unix epoch (UTC); claimed_at is NULL while unclaimed.
CREATE TABLE device_claims (
	device_id    INTEGER PRIMARY KEY REFERENCES devices (id),
	tenant_id    INTEGER NOT NULL REFERENCES tenants (id),
	code_hash    TEXT    NOT NULL,
	site         TEXT    NOT NULL DEFAULT '',
	owner        TEXT    NOT NULL DEFAULT '',
	claimed_by   TEXT    NOT NULL DEFAULT '',
	claimed_at   INTEGER,
	failures     INTEGER NOT NULL DEFAULT 0,
	locked_until INTEGER NOT NULL DEFAULT 0
);

-- A tenant's fleet policy; a tenant without a row has the zero policy.
CREATE TABLE tenant_policies (
	tenant_id            INTEGER PRIMARY KEY REFERENCES tenants (id),
	quarantine_unclaimed INTEGER NOT NULL DEFAULT 0,
	updated_at           INTEGER NOT NULL
);
