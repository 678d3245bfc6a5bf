package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"cradle"
	"cradle/internal/sqlstore"
	"cradle/internal/webhook"
)

// webhookRunner delivers the factory outbox to the MES in the
// background while the server runs.
type webhookRunner struct {
	d      *webhook.Dispatcher
	cancel context.CancelFunc
	done   chan struct{}
}

// startWebhook starts the dispatcher of factory events.
func startWebhook(ctx context.Context, cfg FactoryConfig, db *sqlstore.DB, log *slog.Logger) (*webhookRunner, error) {
	d := &webhook.Dispatcher{URL: cfg.WebhookURL, Outbox: sqlstore.NewFactoryService(db), Logger: log}
	if cfg.WebhookSecretFile != "" {
		b, err := os.ReadFile(cfg.WebhookSecretFile)
		if err != nil {
			return nil, fmt.Errorf("serve: factory.webhook_secret_file: %w", err)
		}
		if d.Secret = strings.TrimSpace(string(b)); d.Secret == "" {
			return nil, fmt.Errorf("serve: factory.webhook_secret_file %s is empty", cfg.WebhookSecretFile)
		}
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("serve: factory.webhook_url: %s", cradle.ErrorMessage(err))
	}
	// The outbox spans tenants: the dispatcher acts as the system.
	rctx, cancel := context.WithCancel(cradle.NewContextWithActor(context.WithoutCancel(ctx), cradle.SystemActor(0, "webhook")))
	r := &webhookRunner{d: d, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := d.Run(rctx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("factory webhook stopped", "err", err)
		}
	}()
	log.Info("factory webhook", "url", d.URL)
	return r, nil
}

// stop ends delivery; undelivered events stay in the outbox.
func (r *webhookRunner) stop() {
	r.cancel()
	<-r.done
}
