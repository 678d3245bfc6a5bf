-- Telemetry time series. Times are microseconds since the Unix epoch (UTC).
-- No foreign keys on the point tables: a check per inserted row would cost
-- ingest throughput, and devices and metric names are never deleted.

-- Metric names per tenant, so points carry a small integer.
CREATE TABLE telemetry_metrics (
	id        INTEGER PRIMARY KEY,
	tenant_id INTEGER NOT NULL REFERENCES tenants (id),
	name      TEXT    NOT NULL,
	UNIQUE (tenant_id, name)
);

-- Raw points, clustered by (device, metric, time) for range queries; a
-- resent point (same device, metric and time) is ignored.
CREATE TABLE telemetry_points (
	tenant_id INTEGER NOT NULL,
	device_id INTEGER NOT NULL,
	metric_id INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	value     REAL    NOT NULL,
	PRIMARY KEY (device_id, metric_id, time)
) WITHOUT ROWID;

-- Hourly aggregates of raw points that aged out; hour is the start of the hour.
CREATE TABLE telemetry_rollups (
	tenant_id INTEGER NOT NULL,
	device_id INTEGER NOT NULL,
	metric_id INTEGER NOT NULL,
	hour      INTEGER NOT NULL,
	min       REAL    NOT NULL,
	max       REAL    NOT NULL,
	sum       REAL    NOT NULL,
	count     INTEGER NOT NULL,
	PRIMARY KEY (device_id, metric_id, hour)
) WITHOUT ROWID;
