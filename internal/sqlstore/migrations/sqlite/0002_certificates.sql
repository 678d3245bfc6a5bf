-- Certificates of devices: LDevIDs the device CA issued, IDevIDs the
-- factory recorded. Serials are random (≥ 64 bits) and so unique across
-- tenants and issuers; they are stored as lower-case hex.
CREATE TABLE certificates (
	serial        TEXT    PRIMARY KEY,
	tenant_id     INTEGER NOT NULL REFERENCES tenants (id),
	device_id     INTEGER NOT NULL REFERENCES devices (id),
	kind          TEXT    NOT NULL,
	issuer        TEXT    NOT NULL, -- the issuing CA's subject key id, hex
	subject       TEXT    NOT NULL,
	not_before    INTEGER NOT NULL,
	not_after     INTEGER NOT NULL,
	status        TEXT    NOT NULL, -- valid, superseded, revoked
	revoked_at    INTEGER,
	reason        INTEGER,
	superseded_by TEXT,
	der           BLOB    NOT NULL,
	created_by    TEXT    NOT NULL,
	created_at    INTEGER NOT NULL
);
CREATE INDEX certificates_device ON certificates (device_id, created_at);
CREATE INDEX certificates_tenant ON certificates (tenant_id, created_at);
CREATE INDEX certificates_expiry ON certificates (tenant_id, not_after) WHERE status <> 'revoked';
CREATE INDEX certificates_revoked ON certificates (issuer, not_after) WHERE status = 'revoked';

-- The last CRL number of each issuer: strictly increasing (RFC 5280 5.2.3).
CREATE TABLE crl_numbers (
	issuer TEXT    PRIMARY KEY,
	number INTEGER NOT NULL
);
