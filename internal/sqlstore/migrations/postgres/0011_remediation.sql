-- Quarantine (issue 9): a release flagged as remediation is the only kind
-- of update a suspended device is offered.
ALTER TABLE releases ADD COLUMN remediation BOOLEAN NOT NULL DEFAULT FALSE;
