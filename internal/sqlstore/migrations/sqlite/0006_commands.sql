-- Signed commands to devices. Times are microseconds since the Unix epoch
-- (UTC). Commands are never deleted, so a device's sequence numbers, the
-- highest plus one for the next, are never reused.
CREATE TABLE device_commands (
	id           INTEGER PRIMARY KEY,
	tenant_id    INTEGER NOT NULL REFERENCES tenants (id),
	device_id    INTEGER NOT NULL REFERENCES devices (id),
	public_id    TEXT    NOT NULL UNIQUE,
	sequence     INTEGER NOT NULL,
	kind         TEXT    NOT NULL,
	args         TEXT    NOT NULL DEFAULT '',
	envelope     BLOB    NOT NULL,
	state        TEXT    NOT NULL,
	error        TEXT    NOT NULL DEFAULT '',
	issued_by    TEXT    NOT NULL,
	issued_at    INTEGER NOT NULL,
	expires_at   INTEGER NOT NULL,
	delivered_at INTEGER,
	finished_at  INTEGER,
	logs         BLOB,
	UNIQUE (device_id, sequence)
);

-- Every result a device reported, in the order received.
CREATE TABLE device_command_results (
	id          INTEGER PRIMARY KEY,
	command_id  INTEGER NOT NULL REFERENCES device_commands (id),
	status      TEXT    NOT NULL,
	error       TEXT    NOT NULL DEFAULT '',
	sequence    INTEGER NOT NULL,
	at          INTEGER NOT NULL,
	received_at INTEGER NOT NULL
);
CREATE INDEX device_command_results_command ON device_command_results (command_id, id);
