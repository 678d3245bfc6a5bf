package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/ota"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

// Main is `cradle serve` wired together: the store, the operator API and
// the HTTP server. Tests run it on 127.0.0.1:0 with a temporary data
// directory, exactly as the program does.
type Main struct {
	Config Config
	Logger *slog.Logger // nil: discard
	Stdout io.Writer    // where the first start prints the admin token; nil: discard

	db       *sqlstore.DB
	api      *httpapi.Server
	ln       net.Listener
	srv      *http.Server
	serveErr chan error
	device   *deviceListener // nil without a PKI
	keys     func() error    // closes the PKI's keys
	webhook  *webhookRunner  // nil without factory.webhook_url
	// retention prunes telemetry; nil until Run has started serving.
	retention *retention
	// otaJobs holds the artifact store, the TUF repositories and their
	// jobs; publisher is its ReleasePublisher.
	otaJobs   *otaRunner
	publisher *ota.Publisher
	// scheduler drives the rollouts; nil until Run has started serving.
	scheduler *rolloutScheduler
}

// Run prepares the data directory and the audit key, opens the store,
// creates the default tenant and its admin token on the first start, and
// starts serving in the background. Call Close to stop.
func (m *Main) Run(ctx context.Context) (err error) {
	if m.Logger == nil {
		m.Logger = slog.New(slog.DiscardHandler)
	}
	if m.Stdout == nil {
		m.Stdout = io.Discard
	}
	cfg := m.Config
	defer func() {
		if err != nil {
			m.closeResources()
		}
	}()

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("serve: data directory: %w", err)
	}
	keyPath := filepath.Join(cfg.DataDir, auditKeyFile)
	if err := checkKeyNotLost(cfg.DataDir, keyPath, cfg.StoreDSN()); err != nil {
		return err
	}
	key, created, err := loadOrCreateAuditKey(keyPath)
	if err != nil {
		return err
	}
	if created {
		m.Logger.Info("created audit key; back it up with the data directory", "path", keyPath)
	}
	m.db, err = sqlstore.Open(ctx, cfg.StoreDSN(), sqlstore.Options{
		AuditKey:    key,
		WitnessPath: filepath.Join(cfg.DataDir, witnessFile),
		Logger:      m.Logger,
	})
	if err != nil {
		return err
	}
	m.Logger.Info("store open", "dialect", m.db.Dialect(), "store", redactDSN(cfg.StoreDSN()))

	// Listen before creating the first token, so that its secret is not
	// lost to a port that is taken.
	m.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	tokens := sqlstore.NewTokenService(m.db)
	secret, err := tokens.Bootstrap(ctx)
	if err != nil {
		return fmt.Errorf("serve: bootstrap: %w", err)
	}
	if secret != "" {
		printBootstrap(m.Stdout, m.Addr(), secret)
	}

	// The artifact store: uploads, garbage collection and downloads.
	artifacts := openArtifactStore(cfg)

	// The device listener serves once the data directory holds a PKI.
	var certs cradle.CertificateService = sqlstore.NewCertificateService(m.db)
	metrics := prometheus.NewRegistry()
	if h, err := pki.LoadHierarchy(pkiDirOf(cfg.DataDir)); err == nil {
		h, keys, closeKeys, err := openPKI(ctx, cfg.DataDir, pkiPassphrase(cfg.PKI.PassphraseFile, nil, io.Discard), deviceKeyNames(h)...)
		if err != nil {
			return err
		}
		m.keys = closeKeys
		if m.device, err = newDeviceListener(ctx, cfg, m.db, artifacts, h, keys, metrics, m.Logger); err != nil {
			return err
		}
		// Revocations reach the CRLs, the OCSP cache and the MQTT
		// sessions through the store's revocation notifier (revoke.go).
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("serve: %w", err)
	} else {
		m.Logger.Info("no PKI in the data directory: the device listener is off until cradle pki init")
	}

	devices := sqlstore.NewDeviceService(m.db)
	var protocols cradle.ProtocolService = sqlstore.NewProtocolService(m.db)
	if m.device != nil {
		protocols = m.device.protocols
		var disconnect func(*cradle.Device, cradle.State)
		if m.device.mqtt != nil {
			disconnect = disconnectOnTransition(m.device.mqtt, m.Logger)
		}
		tokens := m.device.protocols.Cache
		devices.OnTransition = func(d *cradle.Device, from cradle.State) {
			tokens.Flush() // a suspended, rma or eol device's tokens are refused now
			if disconnect != nil {
				disconnect(d, from)
			}
		}
	}
	m.otaJobs = startOTA(cfg, m.db, artifacts, sqlstore.NewReleaseService(m.db), sqlstore.NewRolloutService(m.db), m.Logger)
	m.publisher = m.otaJobs.publisher
	m.api = &httpapi.Server{
		Devices:        devices,
		Claims:         sqlstore.NewClaimService(m.db),
		Telemetry:      sqlstore.NewTelemetryService(m.db),
		Tokens:         tokens,
		Audit:          sqlstore.NewAuditService(m.db),
		Certificates:   certs,
		Factory:        sqlstore.NewFactoryService(m.db),
		Twins:          sqlstore.NewTwinService(m.db),
		Releases:       sqlstore.NewReleaseService(m.db),
		Rollouts:       sqlstore.NewRolloutService(m.db),
		Updates:        sqlstore.NewUpdateService(m.db),
		Protocols:      protocols,
		Revocations:    sqlstore.NewRevocationService(m.db),
		Publisher:      m.publisher,
		Ready:          m.db.Ping,
		Logger:         m.Logger,
		MaxBodyBytes:   cfg.HTTP.MaxBodyBytes,
		MaxImportBytes: cfg.HTTP.MaxImportBytes,
		Registerer:     metrics,
	}
	if m.device != nil {
		// Factory stations get their certificates from the current device
		// CA; batches and stations must be of the PKI's profile.
		m.api.StationIssuer = m.device.issueStation
		m.api.Profile = cradle.Profile(m.device.authority.Hierarchy.Profile())
		m.api.Commands = pushingCommands{CommandService: m.device.commands.store, relay: m.device.commands}
		m.api.Decommissions = m.device.decom.svc
	}
	if cfg.Factory.WebhookURL != "" {
		if m.webhook, err = startWebhook(ctx, cfg.Factory, m.db, m.Logger); err != nil {
			return err
		}
		m.api.OnFactoryEvent = m.webhook.d.Notify
	}
	m.srv = &http.Server{
		Handler:           m.api.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn),
		// Requests must outlive the signal that starts the shutdown:
		// in-flight ones are allowed to finish.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	m.serveErr = make(chan error, 1)
	go func() {
		err := m.srv.Serve(m.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		m.serveErr <- err
	}()
	m.retention = startRetention(cfg.Telemetry, m.db, time.Now, m.Logger)
	// Started devices are told over MQTT when the broker runs (and the
	// hawkBit API's poll cache forgets them); the others find their update
	// when they poll.
	var notify func(context.Context, int64, []string)
	if m.device != nil && (m.device.mqtt != nil || m.device.hawkbit != nil) {
		notify = m.device.notifyUpdates
	}
	m.scheduler = startScheduler(cfg.OTA.SchedulerInterval, sqlstore.NewRolloutStore(m.db), notify, m.Logger)
	m.Logger.Info("listening", "addr", m.Addr())
	if m.device != nil {
		m.device.start()
		m.Logger.Info("device listener", "addr", m.device.Addr(), "profile", m.device.authority.Hierarchy.Profile())
	}
	return nil
}

// Addr returns the server's base URL, with the real port when the
// configuration asked for port 0.
func (m *Main) Addr() string {
	if m.ln == nil {
		return ""
	}
	return "http://" + m.ln.Addr().String()
}

// Wait blocks until ctx is done (nil) or the server stops serving on its
// own (its error).
func (m *Main) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-m.serveErr:
		if err == nil {
			err = errors.New("serve: the HTTP server stopped")
		}
		m.serveErr <- err // for Close
		return err
	}
}

// Close stops the server gracefully: readyz turns 503, in-flight requests
// get up to the shutdown timeout to finish, then the store is closed (which
// checkpoints SQLite and flushes the audit witness).
func (m *Main) Close() error {
	if m.srv == nil {
		return m.closeResources()
	}
	m.api.SetDraining(true)
	if m.scheduler != nil {
		// Before the device listener, which carries the notifications.
		m.scheduler.close()
		m.scheduler = nil
	}
	m.Logger.Info("shutting down", "timeout", m.Config.HTTP.ShutdownTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), m.Config.HTTP.ShutdownTimeout)
	defer cancel()
	if m.device != nil {
		if err := m.device.shutdown(ctx); err != nil {
			m.Logger.Warn("device listener shutdown", "err", err)
		}
		m.device = nil
	}
	err := m.srv.Shutdown(ctx)
	if m.webhook != nil {
		m.webhook.stop()
		m.webhook = nil
	}
	if err != nil {
		m.Logger.Warn("requests still running at the shutdown timeout were cut off", "err", err)
		m.srv.Close()
		err = fmt.Errorf("serve: shutdown: %w", err)
	}
	if serr := <-m.serveErr; serr != nil && err == nil {
		err = serr
	}
	m.srv = nil
	if cerr := m.closeResources(); cerr != nil && err == nil {
		err = cerr
	}
	if err == nil {
		m.Logger.Info("stopped")
	}
	return err
}

func (m *Main) closeResources() error {
	var err error
	if m.otaJobs != nil {
		err = m.otaJobs.close()
		m.otaJobs, m.publisher = nil, nil
	}
	if m.retention != nil {
		m.retention.close()
		m.retention = nil
	}
	if m.scheduler != nil {
		m.scheduler.close()
		m.scheduler = nil
	}
	if m.device != nil {
		m.device.closeNow()
		m.device = nil
	}
	if m.keys != nil {
		err = m.keys()
		m.keys = nil
	}
	if m.ln != nil && m.srv == nil {
		m.ln.Close()
	}
	if m.db != nil {
		err = m.db.Close()
		m.db = nil
	}
	return err
}

func printBootstrap(w io.Writer, addr, secret string) {
	fmt.Fprintf(w, `Created tenant %q and its first admin API token. It is shown only this once:

    %s

Use it with the CLI, either for this shell:

    export CRADLE_SERVER=%s
    export CRADLE_TOKEN=%s

or saved in your CLI configuration:

    cradle login --server %s --token %s

`, cradle.DefaultTenantName, secret, addr, secret, addr, secret)
}

// newLogger returns the server's logger as configured.
func newLogger(w io.Writer, c LogConfig) *slog.Logger {
	var level slog.Level
	switch c.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func (a *app) serveCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Cradle server",
		Long: `Run the Cradle server: the operator REST API under /api/v1, /healthz, /readyz and /metrics.

With no configuration it keeps everything in ./cradle-data (SQLite) and listens on
127.0.0.1:8080. Settings come from, each overriding the one before: the defaults,
a YAML file (--config or CRADLE_CONFIG; see cmd/cradle/cradle.example.yaml),
CRADLE_* environment variables, and the flags below.

On the first start it creates the audit key that signs the audit log
(audit-key.pem in the data directory: back it up with the data directory) and
the tenant "default", and prints an admin API token once. It refuses to start
when the SQLite database exists but the audit key does not, rather than make a
new key that cannot vouch for the log signed so far.

When the data directory holds a PKI (cradle pki init), it also serves the
device-facing HTTPS listener on device.listen (:8443): EST enrollment under
/.well-known/est/, the OCSP responder at /pki/ocsp, CRLs and CA certificates
under /pki/. The PKI's file keys are opened with the passphrase in
$CRADLE_PKI_PASSPHRASE or pki.passphrase_file. With a PKI the API also enrolls
factory stations (certificates from the current device CA) and accepts batches
and stations of the PKI's profile only; without one it refuses both.

SIGINT or SIGTERM stops it gracefully: /readyz answers 503, requests in flight
get up to http.shutdown_timeout to finish, then the store is closed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				configPath = os.Getenv("CRADLE_CONFIG")
			}
			flags := map[string]string{}
			for _, f := range configFields {
				if fl := cmd.Flags().Lookup(f.flag); fl != nil && fl.Changed {
					flags[f.flag] = fl.Value.String()
				}
			}
			cfg, err := loadConfig(configPath, os.LookupEnv, flags)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			m := &Main{Config: cfg, Logger: newLogger(a.stderr, cfg.Log), Stdout: a.stdout}
			// Errors are returned, not logged: run prints each once.
			if err := m.Run(ctx); err != nil {
				return err
			}
			werr := m.Wait(ctx)
			stop() // a second signal now kills the process the default way
			if err := m.Close(); err != nil && werr == nil {
				werr = err
			}
			return werr
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "YAML configuration file (default: $CRADLE_CONFIG, else none)")
	def := DefaultConfig()
	for _, f := range configFields {
		d := f.get(&def)
		if d == "" {
			d = `""`
		}
		cmd.Flags().String(f.flag, "", fmt.Sprintf("%s (default %s; env %s)", f.usage, d, f.env))
	}
	return cmd
}
