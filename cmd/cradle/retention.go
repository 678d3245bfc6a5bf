package main

import (
	"context"
	"log/slog"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// retention is the telemetry retention job of cradle serve: every
// interval it prunes each tenant's time series (PruneTelemetry), raw
// points to hourly rollups after RawRetention and rollups after
// RollupRetention.
type retention struct {
	cfg    TelemetryConfig
	db     *sqlstore.DB
	now    func() time.Time
	logger *slog.Logger
	stop   context.CancelFunc
	done   chan struct{}
}

// startRetention runs the job once at once, then every cfg.PruneInterval,
// until stop is called.
func startRetention(cfg TelemetryConfig, db *sqlstore.DB, now func() time.Time, logger *slog.Logger) *retention {
	ctx, cancel := context.WithCancel(context.Background())
	r := &retention{cfg: cfg, db: db, now: now, logger: logger, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		t := time.NewTicker(cfg.PruneInterval)
		defer t.Stop()
		for {
			if _, err := r.prune(ctx); err != nil && ctx.Err() == nil {
				logger.Error("telemetry retention", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return r
}

// close stops the job and waits for a run in progress.
func (r *retention) close() {
	r.stop()
	<-r.done
}

// prune applies the retention to every tenant once and returns the rows
// it deleted.
func (r *retention) prune(ctx context.Context) (int64, error) {
	now := r.now()
	var rawBefore, rollupBefore time.Time
	if r.cfg.RawRetention > 0 {
		rawBefore = now.Add(-r.cfg.RawRetention)
	}
	if r.cfg.RollupRetention > 0 {
		rollupBefore = now.Add(-r.cfg.RollupRetention)
	}
	if rawBefore.IsZero() && rollupBefore.IsZero() {
		return 0, nil
	}
	tenants, err := sqlstore.NewTenantService(r.db).FindTenants(ctx)
	if err != nil {
		return 0, err
	}
	svc := sqlstore.NewTelemetryService(r.db)
	var total int64
	for _, t := range tenants {
		n, err := svc.PruneTelemetry(cradle.NewContextWithActor(ctx, cradle.SystemActor(t.ID, "telemetry-retention")), rawBefore, rollupBefore)
		if err != nil {
			return total, err
		}
		if n > 0 {
			r.logger.Info("telemetry pruned", "tenant", t.Name, "rows", n, "raw_before", rawBefore, "rollup_before", rollupBefore)
		}
		total += n
	}
	return total, nil
}
