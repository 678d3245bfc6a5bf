package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/ota"
	"cradle/internal/sqlstore"
)

// otaRunner is the release side of cradle serve: the artifact store in
// <data_dir>/artifacts, the tenants' TUF repositories in <data_dir>/tuf
// (online keys opened with the PKI passphrase), the publisher the API
// uses, and two jobs: garbage collection of unreferenced artifacts every
// ota.gc_interval and the refresh of expiring TUF metadata every
// ota.refresh_interval (both also once at start). Artifact GC's lock is
// per process: when replicas share a data directory, each runs it, which
// is safe (a blob re-Put meanwhile is kept) but redundant.
type otaRunner struct {
	artifacts *artifact.Dir
	repos     *ota.Repos
	publisher *ota.Publisher
	stop      context.CancelFunc
	wg        sync.WaitGroup
}

// startOTA opens what the publisher needs and starts the jobs. rollouts
// may be nil (no rollouts to abort on a yank).
func startOTA(cfg Config, db *sqlstore.DB, releases cradle.ReleaseService, rollouts cradle.RolloutService, logger *slog.Logger) *otaRunner {
	dir := artifact.NewDir(filepath.Join(cfg.DataDir, "artifacts"))
	dir.MaxSize = cfg.OTA.MaxImageSize
	repos := &ota.Repos{DataDir: cfg.DataDir, Passphrase: pkiPassphrase(cfg.PKI.PassphraseFile, nil, io.Discard), Logger: logger}
	o := &otaRunner{artifacts: dir, repos: repos}
	o.publisher = &ota.Publisher{
		Releases: releases, Artifacts: dir, Repos: repos, Rollouts: rollouts,
		TenantName: tenantNamer(db), MaxImageSize: cfg.OTA.MaxImageSize, Logger: logger,
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.stop = cancel
	o.every(ctx, cfg.OTA.GCInterval, func(ctx context.Context) {
		st, err := ota.CollectGarbage(ctx, dir, releases, cfg.OTA.GCGrace, time.Now())
		if err != nil && ctx.Err() == nil {
			logger.Error("artifact garbage collection", "err", err)
		} else if st.Deleted > 0 || st.Temps > 0 {
			logger.Info("artifact garbage collection", "deleted", st.Deleted, "freed_bytes", st.FreedBytes, "temps", st.Temps, "kept", st.Kept, "young", st.Young)
		}
	})
	o.every(ctx, cfg.OTA.RefreshInterval, func(ctx context.Context) {
		if _, err := repos.RefreshAll(ctx); err != nil && ctx.Err() == nil {
			logger.Error("TUF metadata refresh", "err", err)
		}
	})
	return o
}

// every runs job at once and then every interval until ctx ends.
func (o *otaRunner) every(ctx context.Context, interval time.Duration, job func(context.Context)) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			job(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// close stops the jobs, waits for a run in progress, and releases the
// online keys.
func (o *otaRunner) close() error {
	o.stop()
	o.wg.Wait()
	return o.repos.Close()
}

// tenantNamer returns a function naming a tenant by id, caching names
// (a tenant is never renamed).
func tenantNamer(db *sqlstore.DB) func(ctx context.Context, id int64) (string, error) {
	tenants := sqlstore.NewTenantService(db)
	var names sync.Map
	return func(ctx context.Context, id int64) (string, error) {
		if n, ok := names.Load(id); ok {
			return n.(string), nil
		}
		all, err := tenants.FindTenants(ctx)
		if err != nil {
			return "", err
		}
		for _, t := range all {
			names.Store(t.ID, t.Name)
		}
		if n, ok := names.Load(id); ok {
			return n.(string), nil
		}
		return "", fmt.Errorf("tenant %d not found", id)
	}
}
