-- Quarantine (issue 9): a release flagged as remediation is the only kind
-- of update a suspended device is offered. 0 or 1.
ALTER TABLE releases ADD COLUMN remediation INTEGER NOT NULL DEFAULT 0;
