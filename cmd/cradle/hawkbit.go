package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/compat/hawkbit"
	"cradle/internal/deviceapi"
	"cradle/internal/sqlstore"
)

// The hawkBit DDI API (internal/compat/hawkbit) on the device listener, at
// /{tenant}/controller/v1/…: for SWUpdate's suricatta and other hawkBit
// clients, which authenticate with target or gateway tokens or the
// device's client certificate. It is mounted as the listener's catch-all
// public route ("/": the tenant is the path's first segment, which no
// more specific pattern can express beside /pki/ and the others); the
// handler authenticates every request itself and answers 404 for paths
// that are not the DDI API's.

// HawkbitConfig is hawkbit.*.
type HawkbitConfig struct {
	Enabled      bool          // hawkbit.enabled: serve the DDI API
	PollingSleep time.Duration // hawkbit.polling_sleep: the polling interval told to devices
	PollCache    time.Duration // hawkbit.poll_cache: how long a base poll trusts its reading of the device's update; 0 disables
}

var hawkbitEnabledField = configField{
	key: "hawkbit.enabled", env: "CRADLE_HAWKBIT_ENABLED", flag: "hawkbit-enabled",
	usage: "serve the hawkBit DDI API (SWUpdate suricatta, RAUC) on the device listener: true or false",
	set: func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		c.Hawkbit.Enabled = b
		return nil
	},
	get: func(c *Config) string { return strconv.FormatBool(c.Hawkbit.Enabled) },
}

var hawkbitPollingSleepField = configField{
	key: "hawkbit.polling_sleep", env: "CRADLE_HAWKBIT_POLLING_SLEEP", flag: "hawkbit-polling-sleep",
	usage: "how long hawkBit devices wait between polls, such as 5m (1s to 24h)",
	set: func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 24*time.Hour || d%time.Second != 0 {
			return fmt.Errorf("%q is not a whole number of seconds from 1s to 24h such as 5m", v)
		}
		c.Hawkbit.PollingSleep = d
		return nil
	},
	get: func(c *Config) string { return c.Hawkbit.PollingSleep.String() },
}

var hawkbitPollCacheField = configField{
	key: "hawkbit.poll_cache", env: "CRADLE_HAWKBIT_POLL_CACHE", flag: "hawkbit-poll-cache",
	usage: "how long a base poll trusts what it read of the device's pending update, from 0 (read it every time) to 1m",
	set: func(c *Config, v string) error {
		d, err := parsePollCache(v)
		if err != nil {
			return err
		}
		c.Hawkbit.PollCache = d
		return nil
	},
	get: func(c *Config) string { return c.Hawkbit.PollCache.String() },
}

// mountHawkbit mounts the DDI API on the listener when hawkbit.enabled
// and returns it (nil when disabled), for the rollout scheduler's Notify.
func mountHawkbit(cfg Config, db *sqlstore.DB, protocols cradle.ProtocolService, artifacts *artifact.Dir, downloads *artifact.Handler, listener *deviceapi.Server,
	tenantName func(context.Context, int64) (string, error), logger *slog.Logger) *hawkbit.Handler {
	if !cfg.Hawkbit.Enabled {
		return nil
	}
	h := &hawkbit.Handler{
		Protocol: protocols, Updates: sqlstore.NewUpdateService(db), Devices: sqlstore.NewDeviceService(db),
		Rollouts: sqlstore.NewRolloutService(db), Releases: sqlstore.NewReleaseService(db),
		Artifacts: artifacts, Blobs: downloads, TenantName: tenantName,
		CheckPeer: func(r *http.Request, chain []*x509.Certificate) (*cradle.Device, error) {
			return hawkbitPeer(listener, r, chain)
		},
		DownloadDevice: downloadDevice, PollingSleep: cfg.Hawkbit.PollingSleep,
		PollCache: pollCacheTTL(cfg.Hawkbit.PollCache), Logger: logger,
	}
	listener.Handle("/", h, true)
	return h
}

// hawkbitPeer checks a DDI request's client certificate as the listener
// checks its own routes, and requires the operational certificate
// (LDevID), as MQTT and commands do: an IDevID only enrolls. A refusal
// keeps its status (401 for the certificate, 403 for the device's state
// or an IDevID) and is audited as the listener audits its own; a failure
// of the store is not the device's fault and answers 500.
func hawkbitPeer(listener *deviceapi.Server, r *http.Request, chain []*x509.Certificate) (*cradle.Device, error) {
	_, dev, rec, err := listener.CheckPeer(r.Context(), chain)
	if err == nil && rec.Kind != cradle.CertLDevID {
		err = deviceapi.Refuse(http.StatusForbidden, fmt.Sprintf("certificate %s is an %s: the hawkBit DDI API takes the operational certificate (LDevID) from enrollment", rec.Serial, rec.Kind), rec)
	}
	if err == nil {
		return dev, nil
	}
	status, refused := deviceapi.RefusalStatus(err)
	if !refused {
		return nil, fmt.Errorf("hawkbit: checking the client certificate: %v", err)
	}
	listener.AuditRefusal(r, err)
	code := cradle.EUNAUTHORIZED
	if status == http.StatusForbidden {
		code = cradle.EFORBIDDEN
	}
	return nil, cradle.Errorf(code, "%s", err.Error())
}
