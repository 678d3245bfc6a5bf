package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"cradle"
	"cradle/internal/compat/hawkbit"
	"cradle/internal/webhook"
)

// Config is the configuration of `cradle serve`. Its sources, each
// overriding the one before: the defaults (DefaultConfig), a YAML file
// (--config or CRADLE_CONFIG; none by default), CRADLE_* environment
// variables, and command-line flags. configFields lists every field with its
// YAML key, variable and flag.
type Config struct {
	DataDir string        // data_dir: the directory for the SQLite file, the audit key and the witness
	Listen  string        // listen: host:port of the HTTP server; port 0 picks a free one
	Store   string        // store: "" for <data_dir>/cradle.db, "sqlite:PATH", or a postgres:// URL
	Log     LogConfig     // log.*
	HTTP    HTTPConfig    // http.*
	Device  DeviceConfig  // device.*
	PKI     PKIConfig     // pki.*
	Factory FactoryConfig // factory.*
	// Telemetry is telemetry.*: retention of the time series.
	Telemetry TelemetryConfig
	// OTA is ota.*: release artifacts and TUF repositories.
	OTA OTAConfig
	// Mender is mender.*: the Mender device API (mender.go).
	Mender  MenderConfig
	Hawkbit HawkbitConfig // hawkbit.*: the hawkBit DDI API on the device listener (hawkbit.go)
}

// OTAConfig is the release side of cradle serve: the artifact store's
// limit and garbage collection, and the refresh of the TUF repositories'
// expiring metadata.
type OTAConfig struct {
	MaxImageSize      int64         // ota.max_image_size: the largest uploaded artifact
	GCInterval        time.Duration // ota.gc_interval: how often unreferenced artifacts are collected
	GCGrace           time.Duration // ota.gc_grace: how long an unreferenced artifact is spared
	RefreshInterval   time.Duration // ota.refresh_interval: how often expiring TUF metadata is re-signed
	SchedulerInterval time.Duration // ota.scheduler_interval: the time between steps of the rollout scheduler
}

// TelemetryConfig is the retention of device telemetry, applied by a job
// in cradle serve to every tenant.
type TelemetryConfig struct {
	RawRetention    time.Duration // raw points older than this are folded into hourly rollups; 0 keeps them
	RollupRetention time.Duration // hourly rollups older than this are deleted; 0 keeps them
	PruneInterval   time.Duration // how often the job runs
}

// FactoryConfig is the delivery of factory provisioning events to an MES.
type FactoryConfig struct {
	WebhookURL        string // CloudEvents receiver; "" delivers nothing (events wait in the outbox)
	WebhookSecretFile string // a file holding the HMAC secret of X-Cradle-Signature; "" signs nothing
}

// DeviceConfig is the device-facing HTTPS listener, which serves when the
// data directory holds a PKI (cradle pki init).
type DeviceConfig struct {
	Listen         string        // host:port; port 0 picks a free one
	URLHost        string        // host[:port] in the AIA/CRL URLs of issued certificates; "" means the server certificate's first name and Listen's port
	LDevIDLifetime time.Duration // lifetime of issued LDevIDs
	MQTTListen     string        // host:port of the embedded MQTT broker (TLS, client certificates); "" turns it off
	CoAPListen     string        // UDP host:port of the CoAP listener (DTLS 1.2, LDevID client certificates); "" (the default) turns it off
	TPMEKRoots     string        // PEM file of the TPM manufacturers' root certificates that attestation trusts; "" accepts no attestation
	ArtifactListen string        // host:port of a plain HTTP listener serving only /artifacts/ (signed URLs); "" turns it off
	ArtifactURLTTL time.Duration // lifetime of the signed artifact download URLs given to devices
}

// PKIConfig says how the server opens the PKI's keys.
type PKIConfig struct {
	PassphraseFile string // a file holding the passphrase of file keys; "" means $CRADLE_PKI_PASSPHRASE
}

// LogConfig chooses how the server logs (to stderr).
type LogConfig struct {
	Level  string // debug, info, warn or error
	Format string // text or json
}

// HTTPConfig holds the HTTP server's limits.
type HTTPConfig struct {
	MaxBodyBytes    int64         // limit of a JSON request body
	MaxImportBytes  int64         // limit of a device import stream
	ShutdownTimeout time.Duration // how long in-flight requests may run after SIGTERM
}

// DefaultConfig returns the configuration used when nothing is set: an
// embedded SQLite store in ./cradle-data, served on 127.0.0.1:8080.
func DefaultConfig() Config {
	return Config{
		DataDir: "./cradle-data",
		Listen:  "127.0.0.1:8080",
		Log:     LogConfig{Level: "info", Format: "text"},
		HTTP: HTTPConfig{
			MaxBodyBytes:    1 << 20,
			MaxImportBytes:  1 << 30,
			ShutdownTimeout: 30 * time.Second,
		},
		Device:    DeviceConfig{Listen: ":8443", LDevIDLifetime: 90 * 24 * time.Hour, MQTTListen: ":8883", ArtifactURLTTL: 24 * time.Hour},
		Telemetry: TelemetryConfig{RawRetention: 7 * day, RollupRetention: 400 * day, PruneInterval: time.Hour},
		OTA:       OTAConfig{MaxImageSize: cradle.DefaultMaxImageSize, GCInterval: time.Hour, GCGrace: day, RefreshInterval: time.Hour, SchedulerInterval: time.Second},
		Mender:    defaultMenderConfig(),
		Hawkbit:   HawkbitConfig{Enabled: true, PollingSleep: hawkbit.DefaultPollingSleep, PollCache: hawkbit.DefaultPollCache},
	}
}

// StoreDSN returns the store to open: Store, or the SQLite file in DataDir
// when Store is empty.
func (c Config) StoreDSN() string {
	if c.Store == "" {
		return filepath.Join(c.DataDir, "cradle.db")
	}
	return c.Store
}

// configField is one configuration setting and the names it has in each
// source. All sources go through set, so a value is checked the same way
// wherever it comes from.
type configField struct {
	key   string // YAML key, dotted for nested keys
	env   string
	flag  string
	usage string
	set   func(c *Config, v string) error
	get   func(c *Config) string
}

var configFields = []configField{
	{
		key: "data_dir", env: "CRADLE_DATA_DIR", flag: "data-dir",
		usage: "directory for the SQLite store, the audit key and the audit witness",
		set: func(c *Config, v string) error {
			if v == "" {
				return errors.New("must not be empty")
			}
			c.DataDir = v
			return nil
		},
		get: func(c *Config) string { return c.DataDir },
	},
	{
		key: "listen", env: "CRADLE_LISTEN", flag: "listen",
		usage: "host:port to serve HTTP on (port 0 picks a free port)",
		set: func(c *Config, v string) error {
			if err := checkListen(v); err != nil {
				return err
			}
			c.Listen = v
			return nil
		},
		get: func(c *Config) string { return c.Listen },
	},
	{
		key: "store", env: "CRADLE_STORE", flag: "store",
		usage: `database: empty for <data_dir>/cradle.db, "sqlite:PATH", or "postgres://…"`,
		set: func(c *Config, v string) error {
			if err := checkStore(v); err != nil {
				return err
			}
			c.Store = v
			return nil
		},
		get: func(c *Config) string { return c.Store },
	},
	{
		key: "log.level", env: "CRADLE_LOG_LEVEL", flag: "log-level",
		usage: "log level: debug, info, warn or error",
		set: func(c *Config, v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				c.Log.Level = v
				return nil
			}
			return fmt.Errorf("%q is not a log level; use debug, info, warn or error", v)
		},
		get: func(c *Config) string { return c.Log.Level },
	},
	{
		key: "log.format", env: "CRADLE_LOG_FORMAT", flag: "log-format",
		usage: "log format: text or json",
		set: func(c *Config, v string) error {
			switch v {
			case "text", "json":
				c.Log.Format = v
				return nil
			}
			return fmt.Errorf("%q is not a log format; use text or json", v)
		},
		get: func(c *Config) string { return c.Log.Format },
	},
	{
		key: "http.max_body_bytes", env: "CRADLE_HTTP_MAX_BODY_BYTES", flag: "max-body-bytes",
		usage: "limit of a JSON request body, in bytes (suffixes KiB, MiB, GiB)",
		set: func(c *Config, v string) (err error) {
			c.HTTP.MaxBodyBytes, err = parseByteSize(v)
			return err
		},
		get: func(c *Config) string { return formatByteSize(c.HTTP.MaxBodyBytes) },
	},
	{
		key: "http.max_import_bytes", env: "CRADLE_HTTP_MAX_IMPORT_BYTES", flag: "max-import-bytes",
		usage: "limit of a device import stream, in bytes (suffixes KiB, MiB, GiB)",
		set: func(c *Config, v string) (err error) {
			c.HTTP.MaxImportBytes, err = parseByteSize(v)
			return err
		},
		get: func(c *Config) string { return formatByteSize(c.HTTP.MaxImportBytes) },
	},
	{
		key: "http.shutdown_timeout", env: "CRADLE_HTTP_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout",
		usage: "how long in-flight requests may finish after SIGINT or SIGTERM",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("%q is not a positive duration such as 30s or 2m", v)
			}
			c.HTTP.ShutdownTimeout = d
			return nil
		},
		get: func(c *Config) string { return c.HTTP.ShutdownTimeout.String() },
	},
	{
		key: "device.listen", env: "CRADLE_DEVICE_LISTEN", flag: "device-listen",
		usage: "host:port of the device-facing HTTPS listener (EST, OCSP, CRLs), which serves once the data directory holds a PKI",
		set: func(c *Config, v string) error {
			if err := checkListen(v); err != nil {
				return err
			}
			c.Device.Listen = v
			return nil
		},
		get: func(c *Config) string { return c.Device.Listen },
	},
	{
		key: "device.url_host", env: "CRADLE_DEVICE_URL_HOST", flag: "device-url-host",
		usage: "host[:port] that devices reach the listener at, written in the OCSP/CRL/CA URLs of issued certificates (empty: the server certificate's first name)",
		set: func(c *Config, v string) error {
			if strings.ContainsAny(v, " /") {
				return fmt.Errorf("%q is not host[:port]", v)
			}
			c.Device.URLHost = v
			return nil
		},
		get: func(c *Config) string { return c.Device.URLHost },
	},
	{
		key: "device.ldevid_lifetime", env: "CRADLE_DEVICE_LDEVID_LIFETIME", flag: "ldevid-lifetime",
		usage: "lifetime of the operational certificates (LDevIDs) the server issues; at least 1h",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Hour {
				return fmt.Errorf("%q is not a duration of at least 1h, such as 2160h (90 days)", v)
			}
			c.Device.LDevIDLifetime = d
			return nil
		},
		get: func(c *Config) string { return c.Device.LDevIDLifetime.String() },
	},
	{
		key: "device.mqtt_listen", env: "CRADLE_DEVICE_MQTT_LISTEN", flag: "mqtt-listen",
		usage: "host:port of the embedded MQTT broker for devices (MQTT 3.1.1 and 5 over TLS, LDevID client certificates), which serves with the device listener; empty turns it off",
		set: func(c *Config, v string) error {
			if v != "" {
				if err := checkListen(v); err != nil {
					return err
				}
			}
			c.Device.MQTTListen = v
			return nil
		},
		get: func(c *Config) string { return c.Device.MQTTListen },
	},
	{
		key: "device.coap_listen", env: "CRADLE_DEVICE_COAP_LISTEN", flag: "coap-listen",
		usage: "UDP host:port of the CoAP listener for constrained devices (CoAP over DTLS 1.2, LDevID client certificates: telemetry, configuration, block-wise firmware), usually :5684; empty (the default) turns it off",
		set: func(c *Config, v string) error {
			if v != "" {
				if err := checkListen(v); err != nil {
					return err
				}
			}
			c.Device.CoAPListen = v
			return nil
		},
		get: func(c *Config) string { return c.Device.CoAPListen },
	},
	{
		key: "device.tpm_ek_roots", env: "CRADLE_DEVICE_TPM_EK_ROOTS", flag: "tpm-ek-roots",
		usage: "PEM file of the TPM manufacturers' root certificates that TPM attestation trusts for EK certificates (empty: every attestation is refused)",
		set: func(c *Config, v string) error {
			c.Device.TPMEKRoots = v
			return nil
		},
		get: func(c *Config) string { return c.Device.TPMEKRoots },
	},
	{
		key: "device.artifact_listen", env: "CRADLE_DEVICE_ARTIFACT_LISTEN", flag: "artifact-listen",
		usage: "host:port of a plain HTTP listener that serves only artifact downloads at signed URLs, for download clients without TLS (empty turns it off)",
		set: func(c *Config, v string) error {
			if v != "" {
				if err := checkListen(v); err != nil {
					return err
				}
			}
			c.Device.ArtifactListen = v
			return nil
		},
		get: func(c *Config) string { return c.Device.ArtifactListen },
	},
	{
		key: "device.artifact_url_ttl", env: "CRADLE_DEVICE_ARTIFACT_URL_TTL", flag: "artifact-url-ttl",
		usage: "how long a signed artifact download URL given to a device stays valid, from 1m to 720h",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Minute || d > 720*time.Hour {
				return fmt.Errorf("%q is not a duration from 1m to 720h, such as 24h", v)
			}
			c.Device.ArtifactURLTTL = d
			return nil
		},
		get: func(c *Config) string { return c.Device.ArtifactURLTTL.String() },
	},
	{
		key: "pki.passphrase_file", env: "CRADLE_PKI_PASSPHRASE_FILE", flag: "pki-passphrase-file",
		usage: "file holding the passphrase of the PKI's file keys (empty: $CRADLE_PKI_PASSPHRASE)",
		set: func(c *Config, v string) error {
			c.PKI.PassphraseFile = v
			return nil
		},
		get: func(c *Config) string { return c.PKI.PassphraseFile },
	},
	{
		key: "factory.webhook_url", env: "CRADLE_FACTORY_WEBHOOK_URL", flag: "factory-webhook-url",
		usage: "http(s) URL that receives every factory provisioning event as a CloudEvent, with retries (empty: events wait in the outbox)",
		set: func(c *Config, v string) error {
			if v != "" {
				if err := (&webhook.Dispatcher{URL: v}).Validate(); err != nil {
					return errors.New(cradle.ErrorMessage(err))
				}
			}
			c.Factory.WebhookURL = v
			return nil
		},
		get: func(c *Config) string { return c.Factory.WebhookURL },
	},
	{
		key: "factory.webhook_secret_file", env: "CRADLE_FACTORY_WEBHOOK_SECRET_FILE", flag: "factory-webhook-secret-file",
		usage: "file holding the secret that signs webhook bodies (HMAC-SHA256 in X-Cradle-Signature; empty: unsigned)",
		set: func(c *Config, v string) error {
			c.Factory.WebhookSecretFile = v
			return nil
		},
		get: func(c *Config) string { return c.Factory.WebhookSecretFile },
	},
	{
		key: "telemetry.raw_retention", env: "CRADLE_TELEMETRY_RAW_RETENTION", flag: "telemetry-raw-retention",
		usage: "how long raw telemetry points are kept before they are folded into hourly rollups (such as 7d or 36h; 0 keeps them)",
		set: func(c *Config, v string) (err error) {
			c.Telemetry.RawRetention, err = parseRetention(v)
			return err
		},
		get: func(c *Config) string { return formatRetention(c.Telemetry.RawRetention) },
	},
	{
		key: "telemetry.rollup_retention", env: "CRADLE_TELEMETRY_ROLLUP_RETENTION", flag: "telemetry-rollup-retention",
		usage: "how long hourly telemetry rollups are kept (such as 400d; 0 keeps them); at least telemetry.raw_retention",
		set: func(c *Config, v string) (err error) {
			c.Telemetry.RollupRetention, err = parseRetention(v)
			return err
		},
		get: func(c *Config) string { return formatRetention(c.Telemetry.RollupRetention) },
	},
	{
		key: "telemetry.prune_interval", env: "CRADLE_TELEMETRY_PRUNE_INTERVAL", flag: "telemetry-prune-interval",
		usage: "how often the retention job runs, such as 1h or 15m",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("%q is not a positive duration such as 1h or 15m", v)
			}
			c.Telemetry.PruneInterval = d
			return nil
		},
		get: func(c *Config) string { return c.Telemetry.PruneInterval.String() },
	},
	{
		key: "ota.max_image_size", env: "CRADLE_OTA_MAX_IMAGE_SIZE", flag: "ota-max-image-size",
		usage: "the largest release artifact an upload may carry, in bytes (suffixes KiB, MiB, GiB; at most 4GiB)",
		set: func(c *Config, v string) error {
			n, err := parseByteSize(v)
			if err != nil {
				return err
			}
			if n > 4<<30 {
				return fmt.Errorf("%q is larger than the artifact store's limit of 4GiB", v)
			}
			c.OTA.MaxImageSize = n
			return nil
		},
		get: func(c *Config) string { return formatByteSize(c.OTA.MaxImageSize) },
	},
	{
		key: "ota.gc_interval", env: "CRADLE_OTA_GC_INTERVAL", flag: "ota-gc-interval",
		usage: "how often artifacts no release refers to are deleted, such as 1h",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second {
				return fmt.Errorf("%q is not a duration of at least 1s such as 1h", v)
			}
			c.OTA.GCInterval = d
			return nil
		},
		get: func(c *Config) string { return c.OTA.GCInterval.String() },
	},
	{
		key: "ota.gc_grace", env: "CRADLE_OTA_GC_GRACE", flag: "ota-gc-grace",
		usage: "how long an unreferenced artifact is kept after it was stored (longer than the slowest upload), such as 24h",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Minute {
				return fmt.Errorf("%q is not a duration of at least 1m such as 24h", v)
			}
			c.OTA.GCGrace = d
			return nil
		},
		get: func(c *Config) string { return c.OTA.GCGrace.String() },
	},
	{
		key: "ota.refresh_interval", env: "CRADLE_OTA_REFRESH_INTERVAL", flag: "ota-refresh-interval",
		usage: "how often the TUF repositories' expiring targets, snapshot and timestamp metadata are re-signed, such as 1h (at most 6h: timestamp lasts a day)",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > 6*time.Hour {
				return fmt.Errorf("%q is not a duration from 1s to 6h such as 1h", v)
			}
			c.OTA.RefreshInterval = d
			return nil
		},
		get: func(c *Config) string { return c.OTA.RefreshInterval.String() },
	},
	{
		key: "ota.scheduler_interval", env: "CRADLE_OTA_SCHEDULER_INTERVAL", flag: "ota-scheduler-interval",
		usage: "how often the rollout scheduler steps every active rollout (reports applied, devices started), such as 1s; at most 1m",
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < 10*time.Millisecond || d > time.Minute {
				return fmt.Errorf("%q is not a duration from 10ms to 1m such as 1s", v)
			}
			c.OTA.SchedulerInterval = d
			return nil
		},
		get: func(c *Config) string { return c.OTA.SchedulerInterval.String() },
	},
	hawkbitEnabledField, hawkbitPollingSleepField, hawkbitPollCacheField,
}

// configGroups are the YAML keys that hold nested keys.
var configGroups = []string{"log", "http", "device", "pki", "factory", "telemetry", "ota", "hawkbit"}

const day = 24 * time.Hour

// spanOf reads s as a number of days (7d, at most 100 years) or a Go
// duration (36h, 90m); ok is false when it is neither. The callers bound
// the result.
func spanOf(s string) (d time.Duration, ok bool) {
	if n, isDays := strings.CutSuffix(s, "d"); isDays {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*365 {
			return 0, false
		}
		return time.Duration(days) * day, true
	}
	d, err := time.ParseDuration(s)
	return d, err == nil
}

// parseRetention reads a retention span: 0 (keep), or a duration such as
// 36h or a number of days such as 7d.
func parseRetention(v string) (time.Duration, error) {
	if v == "0" {
		return 0, nil
	}
	d, ok := spanOf(v)
	if !ok || d < 0 || d > 100*365*day {
		return 0, fmt.Errorf("%q is not a span such as 7d, 400d or 36h (0 keeps everything)", v)
	}
	return d, nil
}

// formatRetention writes a span as parseRetention reads it, in days when
// it is whole days.
func formatRetention(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	if d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	return d.String()
}

func checkListen(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("%q is not host:port (for example 127.0.0.1:8080 or :8080)", v)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q has a bad host %q", v, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q has a bad port %q; use a number from 0 to 65535", v, port)
	}
	return nil
}

func checkStore(v string) error {
	switch {
	case v == "":
	case strings.HasPrefix(v, "postgres://"), strings.HasPrefix(v, "postgresql://"):
	case strings.HasPrefix(v, "sqlite:") && len(v) > len("sqlite:"):
	default:
		return fmt.Errorf("%q is not a store; use postgres://…, sqlite:PATH, or leave it empty for <data_dir>/cradle.db", redactDSN(v))
	}
	return nil
}

// redactDSN hides a password in a URL-shaped DSN so that it can be shown in
// an error message.
func redactDSN(v string) string {
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok {
		return v
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok {
		return v
	}
	if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
		return scheme + "://" + user + ":xxxxx@" + host
	}
	return v
}

// parseByteSize parses a positive byte count: digits, optionally followed by
// KiB, MiB or GiB.
func parseByteSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size; use a positive number of bytes, optionally with KiB, MiB or GiB (for example 1MiB)", v)
	}
	return n * mult, nil
}

// formatByteSize writes n in the largest unit that divides it.
func formatByteSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10)
}

// parseConfigYAML applies a YAML configuration document to c. Every key
// must be known and every value a scalar that its field accepts; errors name
// the field ("config: listen: …") and the line.
func parseConfigYAML(data []byte, c *Config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil // a file of comments only
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config: line %d: the file must be a mapping of keys such as data_dir: and listen:", root.Line)
	}
	return applyYAMLMapping(root, "", c)
}

func applyYAMLMapping(m *yaml.Node, prefix string, c *Config) error {
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		name := prefix + k.Value
		if k.Kind != yaml.ScalarNode {
			return fmt.Errorf("config: line %d: keys must be plain names", k.Line)
		}
		if seen[name] {
			return fmt.Errorf("config: %s: given twice (line %d)", name, k.Line)
		}
		seen[name] = true
		if prefix == "" && slices.Contains(configGroups, name) {
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				continue // "log:" with nothing under it
			}
			if v.Kind != yaml.MappingNode {
				return fmt.Errorf("config: %s: line %d: expected keys nested under %s:", name, v.Line, name)
			}
			if err := applyYAMLMapping(v, name+".", c); err != nil {
				return err
			}
			continue
		}
		f := findConfigField(name)
		if f == nil {
			return fmt.Errorf("config: unknown key %q (line %d); known keys: %s", name, k.Line, strings.Join(configKeys(), ", "))
		}
		if v.Kind != yaml.ScalarNode {
			return fmt.Errorf("config: %s: line %d: expected a single value", name, v.Line)
		}
		val := v.Value
		if v.Tag == "!!null" {
			val = ""
		}
		if err := f.set(c, val); err != nil {
			return fmt.Errorf("config: %s: %v (line %d)", name, err, v.Line)
		}
	}
	return nil
}

func findConfigField(key string) *configField {
	for i := range configFields {
		if configFields[i].key == key {
			return &configFields[i]
		}
	}
	return nil
}

func configKeys() []string {
	keys := make([]string, len(configFields))
	for i, f := range configFields {
		keys[i] = f.key
	}
	return keys
}

// loadConfig builds the configuration from the defaults, the YAML file at
// path (none when path is ""), the environment (lookupEnv) and the flags
// that were given on the command line (by flag name).
func loadConfig(path string, lookupEnv func(string) (string, bool), flags map[string]string) (Config, error) {
	c := DefaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return c, fmt.Errorf("config: file %s does not exist; check --config or CRADLE_CONFIG", path)
		} else if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		if err := parseConfigYAML(data, &c); err != nil {
			return c, fmt.Errorf("%w (in %s)", err, path)
		}
	}
	for _, f := range configFields {
		if v, ok := lookupEnv(f.env); ok {
			if err := f.set(&c, v); err != nil {
				return c, fmt.Errorf("config: %s: %v (from %s)", f.key, err, f.env)
			}
		}
	}
	for _, f := range configFields {
		if v, ok := flags[f.flag]; ok {
			if err := f.set(&c, v); err != nil {
				return c, fmt.Errorf("config: %s: %v (from --%s)", f.key, err, f.flag)
			}
		}
	}
	if t := c.Telemetry; t.RollupRetention != 0 && t.RawRetention == 0 {
		return c, fmt.Errorf("config: telemetry.rollup_retention: %s, but telemetry.raw_retention 0 keeps raw points forever, so there are no rollups to keep; set both to 0, or raw_retention to a span", formatRetention(t.RollupRetention))
	}
	if t := c.Telemetry; t.RollupRetention != 0 && t.RollupRetention < t.RawRetention {
		return c, fmt.Errorf("config: telemetry.rollup_retention: %s is shorter than telemetry.raw_retention (%s); keep rollups at least as long as raw points",
			formatRetention(t.RollupRetention), formatRetention(t.RawRetention))
	}
	return c, nil
}
