package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/mqtt"
	"cradle/internal/agent/spool"
	"cradle/internal/agent/update"
)

const runUsage = `cradle-agent run keeps the unit's operational identity: it enrolls with the
factory identity (EST simpleenroll with the IDevID), renews the LDevID from two
thirds of its lifetime (simplereenroll, a new key each time), retries with
exponential backoff and jitter, and never drops a working identity for a
failed renewal. Its state is in state_dir, written atomically; a guard holds it
back when it restarts in a loop. It stops on SIGINT or SIGTERM.

With its LDevID it connects to the server's MQTT broker (MQTT 5 or 3.1.1 over
TLS), sends telemetry (health, battery, link, energy, security state) every
telemetry.interval, and takes twin and command messages. While the broker
cannot be reached it uses the HTTPS device API, and tries MQTT again with
backoff. Telemetry waits in an on-disk spool (bounded; the oldest is dropped
first when full) until the server has it.

Desired configuration documents are checked against the model's JSON Schema
and applied by the handlers in order; the agent reports the version it
applied, or why it rejected the document (the running configuration is
kept) or why a handler failed (the handlers that ran are rolled back).
Commands (ping, reboot, upload-logs, rekey, set-config, wipe) run only when their
signature chains to the factory root, they name this unit, have not expired
and carry a sequence above the last one accepted; each gets a result.

With update.image_keys set it takes updates. On an MQTT notice, or every
update.poll_interval, it asks the server for a pending update, refreshes its
TUF metadata (refusing rolled-back, expired or mix-and-match metadata), and
takes the signed target only when model, hardware revision and security
counter fit. It streams the image (or a delta applied against the active slot)
into the inactive slot, never past the signed length, resuming an interrupted
download with Range; checks the signed SHA-256 and the MCUboot signature by the
key whose hash is in the fuses; arms the slot in the boot environment
(update.boot_env) and reboots (update.reboot). A trial boot must pass the
health checks (the server answers, update.health_hook, liveness) within
update.health_timeout; then the agent commits and advances the anti-rollback
fuses, otherwise it goes back to the old slot. Either way the server is told
the outcome and the reason. The update's state is saved before each step, so
a kill or a power cut at any point resumes or rolls back safely.

Usage:
  cradle-agent run --config FILE

The configuration is YAML (see agent.example.yaml):

  device: /var/lib/cradle/unit        # the unit (a simulated device directory)
  state_dir: /var/lib/cradle-agent    # the agent's state
  server: https://devices.example.com:8443
  key_store:                          # where the unit's keys live
    kind: file                        # file, tpm or pkcs11
    tpm: /dev/tpmrm0                  # tpm: device or host:port
    tpm_state: /var/lib/cradle-agent/tpm
    pkcs11_module: ""                 # pkcs11: module, token, pin source
    pkcs11_token: ""
    pkcs11_pin_source: ""
  mqtt:
    url: ""                           # mqtts://host:8883; "" = the server's host, port 8883; "off" = HTTPS only
    version: "5"                      # 5 or 3.1.1
    retry_base: 5s                    # reconnection backoff (full jitter), doubling
    retry_max: 5m                     # up to this
  telemetry:
    interval: 60s
  spool:
    dir: ""                           # "" = state_dir/spool
    max_bytes: 4194304
    max_records: 10000
  config:                             # desired configuration (the twin)
    schema: ""                        # the model's JSON Schema; "" checks the form only
    handlers:                         # run in order; a failure rolls back those that ran
      - file: /etc/app/config.json    # the config (or one top-level key) as JSON
        key: ""
        mode: "0644"
      - hook: /usr/libexec/app-reload # the config on stdin, CRADLE_CONFIG_VERSION set
        args: []
        timeout: 30s
  commands:
    reboot: []                        # e.g. [systemctl, reboot]; [] on a simulated unit counts a boot
  update:                             # A/B updates (off without image_keys)
    image_keys: []                    # PEM public keys images are signed with
    poll_interval: 1h                 # besides the MQTT notices
    health_hook: []                   # a program a trial boot must pass
    health_timeout: 5m
    boot_env: sim                     # sim (the unit's file) or uboot (fw_printenv/fw_setenv)
    fw_env_config: ""                 # the fw_env.config file; required with boot_env uboot
    reboot: sim                       # sim (bootloader simulator) or command (commands.reboot)
    boot_id_file: ""                  # with reboot command; "" = /proc/sys/kernel/random/boot_id
  memory:
    limit: 0                          # soft limit in bytes, at least 8388608; 0 = 10 MiB (unless GOMEMLIMIT is set); -1 = none
  log:
    level: info                       # debug, info, warn, error
    format: text                      # text or json

A verified wipe command (decommissioning) sends a tombstone signed with the
LDevID key, destroys the agent's keys, erases state_dir, the files of the
config handlers and the spool, sets the lifecycle fuse word to eol and exits;
a wipe cut short resumes at the next start, and a wiped unit never runs again.

Exit status: 0 stopped by a signal, 1 failed (the error is on stderr), 2 usage
error, 3 the unit is decommissioned (wiped).
`

// agentConfig is the YAML configuration of cradle-agent run.
type agentConfig struct {
	Device   string `yaml:"device"`
	StateDir string `yaml:"state_dir"`
	Server   string `yaml:"server"`
	KeyStore struct {
		Kind            string `yaml:"kind"`
		TPM             string `yaml:"tpm"`
		TPMState        string `yaml:"tpm_state"`
		PKCS11Module    string `yaml:"pkcs11_module"`
		PKCS11Token     string `yaml:"pkcs11_token"`
		PKCS11PINSource string `yaml:"pkcs11_pin_source"`
	} `yaml:"key_store"`
	MQTT struct {
		URL       string        `yaml:"url"`
		Version   string        `yaml:"version"`
		RetryBase time.Duration `yaml:"retry_base"`
		RetryMax  time.Duration `yaml:"retry_max"`
	} `yaml:"mqtt"`
	Telemetry struct {
		Interval time.Duration `yaml:"interval"`
	} `yaml:"telemetry"`
	Spool struct {
		Dir        string `yaml:"dir"`
		MaxBytes   int64  `yaml:"max_bytes"`
		MaxRecords int    `yaml:"max_records"`
	} `yaml:"spool"`
	Config   configSection   `yaml:"config"`
	Commands commandsSection `yaml:"commands"`
	Memory   memorySection   `yaml:"memory"`
	Update   updateSection   `yaml:"update"`
	Log      struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`

	mqttAddr    string       // host:port, "" for HTTPS only
	mqttVersion mqtt.Version // from MQTT.Version
}

// parseAgentConfig reads and checks the configuration; unknown keys are
// refused by name.
func parseAgentConfig(b []byte) (*agentConfig, error) {
	var c agentConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config: %v", err)
	}
	switch {
	case c.Device == "":
		return nil, errors.New("config: device (the unit's device directory) is required")
	case c.StateDir == "":
		return nil, errors.New("config: state_dir is required")
	case !strings.HasPrefix(c.Server, "https://"):
		return nil, fmt.Errorf("config: server %q must be the device listener's https:// URL", c.Server)
	}
	u, err := url.Parse(c.Server)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("config: server %q is not a URL with a host", c.Server)
	}
	switch c.MQTT.URL {
	case "off":
	case "":
		c.mqttAddr = net.JoinHostPort(u.Hostname(), "8883")
	default:
		m, err := url.Parse(c.MQTT.URL)
		if err != nil || (m.Scheme != "mqtts" && m.Scheme != "ssl" && m.Scheme != "tls") || m.Hostname() == "" || m.Path != "" {
			return nil, fmt.Errorf("config: mqtt.url %q: use mqtts://host:port (TLS only), or off", c.MQTT.URL)
		}
		c.mqttAddr = m.Host
		if m.Port() == "" {
			c.mqttAddr = net.JoinHostPort(m.Hostname(), "8883")
		}
	}
	if c.mqttVersion, err = mqtt.ParseVersion(c.MQTT.Version); err != nil {
		return nil, fmt.Errorf("config: mqtt.version %q: use 5 or 3.1.1", c.MQTT.Version)
	}
	if c.MQTT.RetryBase < 0 || c.MQTT.RetryMax < 0 || (c.MQTT.RetryMax > 0 && c.MQTT.RetryMax < c.MQTT.RetryBase) {
		return nil, fmt.Errorf("config: mqtt.retry_base %s and mqtt.retry_max %s: use positive durations, base up to max (0 takes 5s and 5m)", c.MQTT.RetryBase, c.MQTT.RetryMax)
	}
	switch {
	case c.Telemetry.Interval == 0:
		c.Telemetry.Interval = time.Minute
	case c.Telemetry.Interval < 100*time.Millisecond:
		return nil, fmt.Errorf("config: telemetry.interval %s is shorter than 100ms", c.Telemetry.Interval)
	}
	if c.Spool.Dir == "" {
		c.Spool.Dir = filepath.Join(c.StateDir, "spool")
	}
	if c.Spool.MaxBytes < 0 || c.Spool.MaxRecords < 0 {
		return nil, errors.New("config: spool.max_bytes and spool.max_records must not be negative (0 takes the default)")
	}
	if c.KeyStore.Kind == "" {
		c.KeyStore.Kind = hw.KeyStoreFile
	}
	if err := c.checkFeatures(); err != nil {
		return nil, err
	}
	if err := c.checkUpdate(); err != nil {
		return nil, err
	}
	if err := c.Memory.check(); err != nil {
		return nil, err
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("config: log.level %q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return nil, fmt.Errorf("config: log.format %q: use text or json", c.Log.Format)
	}
	return &c, nil
}

func (c *agentConfig) logger(w io.Writer) *slog.Logger {
	lvl := slog.LevelInfo
	if c.Log.Level != "" {
		lvl.UnmarshalText([]byte(c.Log.Level)) // checked by parseAgentConfig
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runRun runs `cradle-agent run`.
func runRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cradle-agent run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	cfgPath := fs.String("config", "", "the configuration file")
	if err := fs.Parse(args); err == flag.ErrHelp {
		fmt.Fprint(stdout, runUsage)
		return 0
	} else if err != nil || fs.NArg() > 0 || *cfgPath == "" {
		fmt.Fprintln(stderr, "error: run takes --config FILE; see cradle-agent run --help")
		return 2
	}
	b, err := os.ReadFile(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	cfg, err := parseAgentConfig(b)
	if err != nil {
		fmt.Fprintf(stderr, "error: %s: %v\n", *cfgPath, err)
		return 1
	}
	cfg.Memory.apply()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ring := &logRing{} // the agent's own log, for upload-logs commands
	if err := runUnit(ctx, cfg, cfg.logger(io.MultiWriter(stderr, ring)), ring, time.Now); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		if errors.Is(err, agent.ErrDecommissioned) {
			return exitDecommissioned
		}
		return 1
	}
	return 0
}

// exitDecommissioned is the exit status of a run on a wiped unit (and of
// the run that wiped it): the service manager is told not to restart it
// (RestartPreventExitStatus in cradle-agent.service).
const exitDecommissioned = 3

// runUnit opens the unit and steps its identity until ctx is done, with
// the channel (telemetry, twin, commands) beside it once the unit has an
// LDevID. It returns an error only for what the unit cannot mend by
// waiting (not provisioned, no such device, a bad key store, an unusable
// spool).
func runUnit(ctx context.Context, cfg *agentConfig, log *slog.Logger, ring *logRing, now func() time.Time) error {
	if err := agent.CheckDecommissioned(cfg.StateDir); err != nil {
		return err
	}
	dev, err := hw.OpenSimDevice(cfg.Device)
	if err != nil {
		return err
	}
	openBootEnv(cfg, dev)
	spec := hw.KeyStoreSpec{Kind: cfg.KeyStore.Kind, TPM: cfg.KeyStore.TPM, TPMState: cfg.KeyStore.TPMState,
		PKCS11Module: cfg.KeyStore.PKCS11Module, PKCS11Token: cfg.KeyStore.PKCS11Token, PKCS11PINSource: cfg.KeyStore.PKCS11PINSource}
	keys, closer, err := hw.OpenKeyStore(spec, dev)
	if err != nil {
		return err
	}
	defer closer.Close()
	dev.Keys = keys
	id, err := agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: cfg.StateDir, ServerURL: cfg.Server, Logger: log}, now())
	if err != nil {
		return err
	}
	wipeOpts := agent.WipeOptions{KeyStore: cfg.KeyStore.Kind, Files: cfg.wipeFiles()}
	if id.WipeInProgress() {
		// A wipe a power cut or a kill interrupted: finish it, nothing else.
		log.Warn("resuming the interrupted wipe")
		if err := id.ResumeWipe(ctx, now(), wipeOpts); err != nil {
			return err
		}
		return agent.CheckDecommissioned(cfg.StateDir)
	}
	// The factory root and serial, read once: commands are verified with
	// them, and the root is the channel's only trust anchor.
	root, serial, err := id.CommandTrust(ctx)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	sp, err := spool.Open(cfg.Spool.Dir, spool.Options{MaxBytes: cfg.Spool.MaxBytes, MaxRecords: cfg.Spool.MaxRecords})
	if err != nil {
		return err
	}
	defer sp.Close()
	if st := sp.Stats(); st.Records > 0 || st.Damaged > 0 || st.CutBytes > 0 {
		log.Info("telemetry spool", "waiting", st.Records, "damaged_skipped", st.Damaged, "torn_bytes_cut", st.CutBytes)
	}
	var rt *agent.Runtime
	var up *update.Updater
	var attested atomic.Bool // the identity's verdict, kept by stepIdentity
	rekeys := make(chan rekeyRequest)
	wipes := make(chan wipeRequest)
	applier, executor, err := features(cfg, dev, root, serial, func() *agent.Runtime { return rt }, ring, rekeys, wipes, log, now)
	if err != nil {
		return err
	}
	collector := agent.NewCollector(agent.CollectorOptions{DataDir: cfg.StateDir, Device: dev, Power: hw.SimPower{Dir: cfg.Device},
		CertNotAfter: func() time.Time { return rt.CertNotAfter() }, Attested: attested.Load, Reconnects: func() int64 { return rt.Reconnects() }, Logger: log})
	rt, err = agent.NewRuntime(agent.RuntimeOptions{Serial: serial, ServerURL: cfg.Server, MQTTAddr: cfg.mqttAddr, MQTTVersion: cfg.mqttVersion,
		Roots: roots, Interval: cfg.Telemetry.Interval,
		Backoff: agent.Backoff{Base: cfg.MQTT.RetryBase, Max: cfg.MQTT.RetryMax}, Collect: collector.Collect, Spool: sp,
		Twin: applier.Apply, TwinReported: applier.Reported, Command: executor.Handle, Now: now, Logger: log,
		UpdateNotice: func(payload []byte) {
			log.Info("update notice", "payload", string(payload[:min(len(payload), 256)]))
			if up != nil {
				up.Notify()
			}
		}})
	if err != nil {
		return err
	}
	if up, err = newUpdater(ctx, cfg, dev, rt, log, now); err != nil {
		return err
	}
	// The channel and the updater run on their own context, so that a
	// wipe can stop them (Quiesce) before it erases their files.
	chCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { rt.Run(chCtx) })
	if up != nil {
		wg.Go(func() { up.Run(chCtx, cfg.Update.PollInterval) })
	}
	wipeOpts.Quiesce = func() {
		cancel()
		wg.Wait()
		sp.Close()
	}
	log.Info("cradle-agent running", "device", cfg.Device, "server", cfg.Server, "mqtt", cfg.mqttAddr, "status", id.State().Status)
	err = stepIdentity(ctx, id, rt, &attested, rekeys, wipes, wipeOpts, log, now)
	if errors.Is(err, agent.ErrDecommissioned) {
		return agent.CheckDecommissioned(cfg.StateDir)
	}
	return err
}

// stepIdentity steps the identity until ctx is done, giving the runtime
// each new LDevID.
func stepIdentity(ctx context.Context, id *agent.Identity, rt *agent.Runtime, attested *atomic.Bool, rekeys <-chan rekeyRequest,
	wipes <-chan wipeRequest, wipeOpts agent.WipeOptions, log *slog.Logger, now func() time.Time) error {
	var given string // the certificate chain the runtime has
	for {
		next, err := id.Step(ctx, now())
		switch {
		case errors.Is(err, agent.ErrNotProvisioned):
			return err
		case ctx.Err() != nil:
			log.Info("cradle-agent stopping")
			return nil
		case err != nil:
			log.Warn("identity", "err", err, "retry_at", next.UTC().Format(time.RFC3339))
		}
		attested.Store(id.Attested())
		if cur := id.State().Current; cur != nil && cur.Chain != given {
			if c, err := id.Certificate(ctx); err != nil {
				log.Warn("LDevID not usable for the channel", "err", err)
			} else {
				rt.SetCertificate(c)
				given = cur.Chain
			}
		}
		// The wait is measured on the injected clock, the one Step and
		// next are on.
		wait := max(next.Sub(now()), time.Second)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			log.Info("cradle-agent stopping")
			return nil
		case <-t.C:
		case done := <-rekeys:
			// A rekey command: a new key and certificate now, on this
			// goroutine (the identity is stepped by one goroutine only);
			// the loop then hands the new certificate to the runtime.
			t.Stop()
			err := id.Rekey(ctx, now())
			if err != nil {
				log.Warn("rekey", "err", err)
			}
			done <- err
		case req := <-wipes:
			// A wipe command: it stops the channel, erases, and the
			// agent exits; a failed one is resumed at the next start.
			t.Stop()
			err := id.Wipe(ctx, req.commandID, req.sequence, now(), wipeOpts)
			req.done <- err
			if err != nil {
				log.Error("wipe failed; it resumes at the next start", "err", err)
				return err
			}
			return agent.ErrDecommissioned
		}
	}
}
