package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
)

const runUsage = `cradle-agent run keeps the unit's operational identity: it enrolls with the
factory identity (EST simpleenroll with the IDevID), renews the LDevID from two
thirds of its lifetime (simplereenroll, a new key each time), retries with
exponential backoff and jitter, and never drops a working identity for a
failed renewal. Its state is in state_dir, written atomically; a guard holds it
back when it restarts in a loop. It stops on SIGINT or SIGTERM.

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
  log:
    level: info                       # debug, info, warn, error
    format: text                      # text or json

Exit status: 0 stopped by a signal, 1 failed (the error is on stderr), 2 usage error.
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
	Log struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`
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
	if c.KeyStore.Kind == "" {
		c.KeyStore.Kind = hw.KeyStoreFile
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runIdentity(ctx, cfg, cfg.logger(stderr), time.Now); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// runIdentity opens the unit and steps its identity until ctx is done. It
// returns an error only for what the unit cannot mend by waiting (not
// provisioned, no such device, a bad key store).
func runIdentity(ctx context.Context, cfg *agentConfig, log *slog.Logger, now func() time.Time) error {
	dev, err := hw.OpenSimDevice(cfg.Device)
	if err != nil {
		return err
	}
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
	log.Info("cradle-agent running", "device", cfg.Device, "server", cfg.Server, "status", id.State().Status)
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
		wait := time.Until(next)
		if wait < time.Second {
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			log.Info("cradle-agent stopping")
			return nil
		case <-t.C:
		}
	}
}
