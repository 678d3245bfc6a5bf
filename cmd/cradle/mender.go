package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"cradle"
	"cradle/internal/compat/mender"
	"cradle/internal/deviceapi"
)

// The Mender device API (internal/compat/mender) on the device listener,
// under /api/devices/, as public routes: the Mender client presents no
// client certificate; it logs in with a signed auth request and then
// carries a session token. Artifacts come from the same signed URLs as
// the native agent's (artifacts.go).

// MenderConfig is mender.*.
type MenderConfig struct {
	Enabled       bool          // mender.enabled: serve the Mender device API on the device listener
	DefaultTenant string        // mender.default_tenant: the tenant of devices that send no tenant token
	TokenTTL      time.Duration // mender.token_ttl: the lifetime of a Mender session token
	PollCache     time.Duration // mender.poll_cache: how long an update check trusts its reading of the device's update; 0 disables
	AutoAdmit     bool          // mender.auto_admit: admit a new key by the MAC of a provisioned device
}

func defaultMenderConfig() MenderConfig {
	return MenderConfig{Enabled: true, DefaultTenant: "default", TokenTTL: cradle.DefaultMenderTokenTTL, PollCache: mender.DefaultPollCache, AutoAdmit: true}
}

// The mender.* settings join the configuration table here, so that the
// shared config.go carries only the Config field.
func init() {
	configGroups = append(configGroups, "mender")
	configFields = append(configFields, []configField{
		{
			key: "mender.enabled", env: "CRADLE_MENDER_ENABLED", flag: "mender-enabled",
			usage: "serve the Mender device API (mender-client 3.x) under /api/devices/ on the device listener",
			set: func(c *Config, v string) error {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return fmt.Errorf("%q is not true or false", v)
				}
				c.Mender.Enabled = b
				return nil
			},
			get: func(c *Config) string { return strconv.FormatBool(c.Mender.Enabled) },
		},
		{
			key: "mender.default_tenant", env: "CRADLE_MENDER_DEFAULT_TENANT", flag: "mender-default-tenant",
			usage: "the tenant of Mender devices that send no tenant token; empty: a tenant token is required",
			set: func(c *Config, v string) error {
				if v != "" {
					if err := cradle.ValidateTenantName(v); err != nil {
						return errors.New(cradle.ErrorMessage(err))
					}
				}
				c.Mender.DefaultTenant = v
				return nil
			},
			get: func(c *Config) string { return c.Mender.DefaultTenant },
		},
		{
			key: "mender.token_ttl", env: "CRADLE_MENDER_TOKEN_TTL", flag: "mender-token-ttl",
			usage: "how long a Mender session token stays valid, from 1m to 720h",
			set: func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < time.Minute || d > 720*time.Hour {
					return fmt.Errorf("%q is not a duration from 1m to 720h, such as 24h", v)
				}
				c.Mender.TokenTTL = d
				return nil
			},
			get: func(c *Config) string { return c.Mender.TokenTTL.String() },
		},
		{
			key: "mender.poll_cache", env: "CRADLE_MENDER_POLL_CACHE", flag: "mender-poll-cache",
			usage: "how long an update check trusts what it read of the device's pending update, from 0 (read it every time) to 1m",
			set: func(c *Config, v string) error {
				d, err := parsePollCache(v)
				if err != nil {
					return err
				}
				c.Mender.PollCache = d
				return nil
			},
			get: func(c *Config) string { return c.Mender.PollCache.String() },
		},
		{
			key: "mender.auto_admit", env: "CRADLE_MENDER_AUTO_ADMIT", flag: "mender-auto-admit",
			usage: "admit a new Mender key at once when its MAC is a provisioned device's (never a deployed one); false: an operator accepts every key",
			set: func(c *Config, v string) error {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return fmt.Errorf("%q is not true or false", v)
				}
				c.Mender.AutoAdmit = b
				return nil
			},
			get: func(c *Config) string { return strconv.FormatBool(c.Mender.AutoAdmit) },
		},
	}...)
}

// parsePollCache reads a poll cache TTL (mender.poll_cache,
// hawkbit.poll_cache): 0 to 1m.
func parsePollCache(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > time.Minute {
		return 0, fmt.Errorf("%q is not a duration from 0s to 1m, such as 5s", v)
	}
	return d, nil
}

// pollCacheTTL is a configured poll cache TTL as the handlers take it,
// where 0 means their default.
func pollCacheTTL(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// tenantIDByName resolves a tenant name to its id, remembering it once
// found (tenants are not renamed).
type tenantIDByName struct {
	name string
	find func(ctx context.Context, name string) (*cradle.Tenant, error)

	mu sync.Mutex
	id int64
}

func (t *tenantIDByName) get(ctx context.Context) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.id != 0 {
		return t.id, nil
	}
	tn, err := t.find(ctx, t.name)
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return 0, cradle.Errorf(cradle.EUNAUTHORIZED, "the default tenant %q of this server does not exist: configure the device with a tenant token", t.name)
	} else if err != nil {
		return 0, err
	}
	t.id = tn.ID
	return t.id, nil
}

// mountMender mounts the Mender device API on the listener when
// mender.enabled, over the protocol and update services, with download
// URLs signed like the native agent's, and returns it (nil when disabled),
// for the rollout scheduler's Notify.
func mountMender(cfg Config, l *deviceapi.Server, protocols cradle.ProtocolService, updates *deviceUpdates,
	findTenant func(ctx context.Context, name string) (*cradle.Tenant, error), logger *slog.Logger) *mender.Server {
	if !cfg.Mender.Enabled {
		return nil
	}
	s := &mender.Server{
		Protocols: protocols, Updates: updates.svc, TokenTTL: cfg.Mender.TokenTTL, PollCache: pollCacheTTL(cfg.Mender.PollCache),
		Logger: logger.With("api", "mender"),
		SignURL: func(r *http.Request, dev *cradle.Device, rel *cradle.Release) (string, time.Time, error) {
			return updates.signURL(r, dev, rel.ID, rel.SHA256)
		},
	}
	if cfg.Mender.DefaultTenant != "" {
		s.DefaultTenant = (&tenantIDByName{name: cfg.Mender.DefaultTenant, find: findTenant}).get
	}
	s.Routes(func(pattern string, h http.Handler) { l.Handle(pattern, h, true) })
	return s
}
