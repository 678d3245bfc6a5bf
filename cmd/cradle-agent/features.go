package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/twin"
	"cradle/internal/agent/update"
)

// configSection is the `config:` part of agent.yaml: how desired
// configuration documents are checked and applied.
type configSection struct {
	// Schema is the model's JSON Schema file; "" checks only the form.
	Schema   string          `yaml:"schema"`
	Handlers []handlerConfig `yaml:"handlers"`
}

// handlerConfig is one handler: exactly one of File and Hook.
type handlerConfig struct {
	File    string        `yaml:"file"`    // write the config (or Key's value) as JSON here
	Key     string        `yaml:"key"`     // file: one top-level key only
	Mode    string        `yaml:"mode"`    // file: octal, default 0600
	Hook    string        `yaml:"hook"`    // run this program with the config on stdin
	Args    []string      `yaml:"args"`    // hook: its arguments
	Timeout time.Duration `yaml:"timeout"` // hook: default 30s
}

// commandsSection is the `commands:` part of agent.yaml.
type commandsSection struct {
	// Reboot is the program a reboot command runs (after its result is
	// sent), e.g. [systemctl, reboot]. Empty on a simulated unit counts a
	// boot in its boot environment instead.
	Reboot []string `yaml:"reboot"`
}

// checkFeatures validates the config and commands sections.
func (c *agentConfig) checkFeatures() error {
	for i, h := range c.Config.Handlers {
		where := fmt.Sprintf("config.handlers[%d]", i)
		switch {
		case (h.File == "") == (h.Hook == ""):
			return fmt.Errorf("config: %s: give exactly one of file and hook", where)
		case h.File != "" && (len(h.Args) > 0 || h.Timeout != 0):
			return fmt.Errorf("config: %s: args and timeout belong to a hook, not a file", where)
		case h.Hook != "" && (h.Key != "" || h.Mode != ""):
			return fmt.Errorf("config: %s: key and mode belong to a file, not a hook", where)
		case h.Timeout < 0:
			return fmt.Errorf("config: %s: timeout %s is negative", where, h.Timeout)
		}
		if h.Mode != "" {
			if m, err := strconv.ParseUint(h.Mode, 8, 32); err != nil || m > 0o777 {
				return fmt.Errorf("config: %s: mode %q is not an octal file mode such as 0644", where, h.Mode)
			}
		}
	}
	return nil
}

// handlers builds the twin handlers the configuration names.
func (c *agentConfig) handlers() []twin.Handler {
	var hs []twin.Handler
	for _, h := range c.Config.Handlers {
		if h.File != "" {
			m, _ := strconv.ParseUint(h.Mode, 8, 32) // checked; "" gives 0, the handler's default
			hs = append(hs, &twin.File{Path: h.File, Key: h.Key, Mode: os.FileMode(m)})
			continue
		}
		hs = append(hs, &twin.Hook{Path: h.Hook, Args: h.Args, Timeout: h.Timeout})
	}
	return hs
}

// maxLogRing is how much of its own log the agent keeps for upload-logs
// commands.
const maxLogRing = 256 << 10

// logRing keeps the newest maxLogRing bytes written to it.
type logRing struct {
	mu  sync.Mutex
	buf []byte
}

func (r *logRing) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, p...)
	if over := len(r.buf) - maxLogRing; over > 0 {
		r.buf = append(r.buf[:0], r.buf[over:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of what the ring holds.
func (r *logRing) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.buf...)
}

// rekeyRequest asks the identity loop, the only goroutine that may step
// the identity, to replace the device key now.
type rekeyRequest chan error

// wipeRequest asks the identity loop to carry out a verified wipe
// command (agent.Identity.Wipe); done gets its outcome.
type wipeRequest struct {
	commandID string
	sequence  uint64
	done      chan error
}

// features builds the twin applier and the command executor of a unit,
// whose commands are verified with the factory root and serial.
// Rekey requests go to rekeys, served by stepIdentity.
func features(cfg *agentConfig, dev *hw.Device, root *x509.Certificate, serial string, rt func() *agent.Runtime, ring *logRing,
	rekeys chan<- rekeyRequest, wipes chan<- wipeRequest, log *slog.Logger, now func() time.Time) (*twin.Applier, *agent.Executor, error) {
	applier, err := twin.New(twin.Options{StateDir: filepath.Join(cfg.StateDir, "twin"), SchemaFile: cfg.Config.Schema,
		Handlers: cfg.handlers(), Now: now, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	seq, err := agent.OpenCommandSequence(cfg.StateDir)
	if err != nil {
		return nil, nil, err
	}
	reboot := agent.SimulatedReboot(dev.BootEnv)
	if len(cfg.Commands.Reboot) > 0 {
		reboot = agent.RebootAfter(cfg.Commands.Reboot, 2*time.Second, log)
	}
	actions := agent.CommandActions{
		Reboot:      reboot,
		CollectLogs: func(context.Context) ([]byte, error) { return ring.Bytes(), nil },
		UploadLogs: func(ctx context.Context, commandID string, logs []byte) error {
			return agent.PostCommandLogs(ctx, &http.Client{Transport: rt().Transport(), Timeout: 30 * time.Second}, cfg.Server, commandID, logs)
		},
		Rekey: func(ctx context.Context) error {
			done := make(rekeyRequest, 1)
			select {
			case rekeys <- done:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		Wipe: func(ctx context.Context, commandID string, sequence uint64) error {
			req := wipeRequest{commandID: commandID, sequence: sequence, done: make(chan error, 1)}
			select {
			case wipes <- req:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case err := <-req.done:
				return err
			case <-ctx.Done(): // the wipe stops the channel before it erases
				return ctx.Err()
			}
		},
		// set-config carries a desired document ({"version", "config"},
		// the JSON of twin/desired), applied with the same checks, handlers
		// and versions as one pushed on the twin.
		SetConfig: func(ctx context.Context, args json.RawMessage) error {
			var rep struct {
				Status string `json:"status"`
				Error  string `json:"error"`
			}
			if err := json.Unmarshal(applier.Apply(ctx, args), &rep); err != nil {
				return fmt.Errorf("agent: set-config: the applier's report: %w", err)
			}
			if rep.Status != "applied" {
				return fmt.Errorf("agent: set-config %s: %s", rep.Status, rep.Error)
			}
			return nil
		},
	}
	ex, err := agent.NewExecutor(agent.ExecutorOptions{Root: root, Serial: serial, Sequence: seq, Actions: actions, Now: now, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return applier, ex, nil
}

// updateSection is the `update:` part of agent.yaml: A/B updates into the
// inactive slot (internal/agent/update).
type updateSection struct {
	// ImageKeys are PEM public keys (PKIX) images may be signed with; the
	// one whose hash is in the image_key_hash fuses is used. None: the
	// agent takes no updates.
	ImageKeys []string `yaml:"image_keys"`
	// PollInterval is how often the agent asks for an update besides the
	// MQTT notices; default 1h.
	PollInterval time.Duration `yaml:"poll_interval"`
	// HealthHook is a program a trial boot of a new image must pass.
	HealthHook []string `yaml:"health_hook"`
	// HealthTimeout bounds the health checks of a trial boot; default 5m.
	HealthTimeout time.Duration `yaml:"health_timeout"`
	// BootEnv is where the A/B variables live: "sim" (default) the
	// simulated unit's boot environment file, or "uboot" a U-Boot
	// environment through fw_printenv / fw_setenv (libubootenv-tool).
	BootEnv string `yaml:"boot_env"`
	// FWEnvConfig is the fw_env.config file of the U-Boot environment;
	// required with boot_env uboot.
	FWEnvConfig string `yaml:"fw_env_config"`
	// Reboot is how an update reboots the unit: "sim" (default) the
	// bootloader simulator boots the simulated unit in-process; "command"
	// runs commands.reboot.
	Reboot string `yaml:"reboot"`
	// BootIDFile identifies the boot with reboot command; default
	// /proc/sys/kernel/random/boot_id.
	BootIDFile string `yaml:"boot_id_file"`
}

// checkUpdate validates the update section.
func (c *agentConfig) checkUpdate() error {
	u := c.Update
	if u.PollInterval < 0 || (u.PollInterval > 0 && u.PollInterval < time.Second) {
		return fmt.Errorf("config: update.poll_interval %s: use at least 1s (0 takes 1h)", u.PollInterval)
	}
	if u.HealthTimeout < 0 {
		return fmt.Errorf("config: update.health_timeout %s is negative", u.HealthTimeout)
	}
	if u.PollInterval == 0 {
		c.Update.PollInterval = time.Hour
	}
	return c.checkBootEnv()
}

// newUpdater builds the unit's updater, or nil when no image key is
// configured. Model, hardware revision and the TUF root come from the
// factory data; the reboot is update.reboot's (updateReboot).
func newUpdater(ctx context.Context, cfg *agentConfig, dev *hw.Device, rt *agent.Runtime, log *slog.Logger, now func() time.Time) (*update.Updater, error) {
	if len(cfg.Update.ImageKeys) == 0 {
		return nil, nil
	}
	var keys []crypto.PublicKey
	for i, p := range cfg.Update.ImageKeys {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("config: update.image_keys[%d]: %w", i, err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("config: update.image_keys[%d]: %s holds no PEM block", i, p)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("config: update.image_keys[%d]: %s: %w", i, p, err)
		}
		keys = append(keys, k)
	}
	files, _, err := dev.FactoryData.Read(ctx)
	if err != nil {
		return nil, err
	}
	var info struct {
		Model            string `json:"model"`
		HardwareRevision string `json:"hardware_revision"`
	}
	if err := json.Unmarshal(files["device.json"], &info); err != nil || info.Model == "" {
		return nil, fmt.Errorf("agent: updates need the model in the factory data's device.json (%v)", err)
	}
	if len(files["update-root.json"]) == 0 {
		return nil, errors.New("agent: updates need the TUF root (update-root.json) in the factory data")
	}
	writer, ok := dev.Slots.(hw.SlotWriter)
	if !ok {
		return nil, errors.New("agent: the unit's slots cannot be written flash-style")
	}
	// The runtime's transport presents the LDevID it holds at each
	// handshake, so it follows renewals.
	httpc := &http.Client{Transport: rt.Transport(), Timeout: 10 * time.Minute}
	reboot, bootID := updateReboot(cfg, dev, keys)
	return update.New(update.Options{
		Device: dev, Writer: writer, StateDir: filepath.Join(cfg.StateDir, "update"),
		Server:   &update.Client{ServerURL: cfg.Server, HTTP: httpc},
		Metadata: &update.TUF{Dir: filepath.Join(cfg.StateDir, "update", "tuf"), TrustedRoot: files["update-root.json"], HTTP: httpc, Now: now},
		Model:    info.Model, HardwareRevision: info.HardwareRevision, ImageKeys: keys,
		Reboot: reboot, BootID: bootID,
		HealthHook: cfg.Update.HealthHook, HealthTimeout: cfg.Update.HealthTimeout, Now: now, Logger: log,
	})
}

// wipeFiles are the files outside the state directory that the agent
// wrote and a wipe erases: the twin's file handlers' targets and a spool
// kept elsewhere.
func (c *agentConfig) wipeFiles() []string {
	var files []string
	for _, h := range c.Config.Handlers {
		if h.File != "" {
			files = append(files, h.File)
		}
	}
	if rel, err := filepath.Rel(c.StateDir, c.Spool.Dir); err != nil || strings.HasPrefix(rel, "..") {
		files = append(files, c.Spool.Dir)
	}
	return files
}
