package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/command"
)

// CommandSequenceFile is the file in the agent's state directory that
// holds the last command sequence accepted: the replay guard. Losing it
// would let old commands run again, so it lives with the identity state.
const CommandSequenceFile = "command-sequence"

// CommandActions are what the agent does for each kind of command. A nil
// action makes commands of its kind fail with "not supported by this
// agent". Each runs after the command verified and its sequence was
// recorded, so it runs at most once; its error is reported as the
// command's failure.
type CommandActions struct {
	// Reboot arranges a reboot shortly after it returns: the result is
	// sent first (see RebootAfter). On the simulated device it counts a
	// boot.
	Reboot func(ctx context.Context) error
	// CollectLogs returns the agent's recent log lines; the executor keeps
	// the newest cradle.MaxCommandLogsSize bytes of them, cut at a line,
	// and hands them to UploadLogs.
	CollectLogs func(ctx context.Context) ([]byte, error)
	// UploadLogs sends the logs of an upload-logs command to the server
	// (see PostCommandLogs).
	UploadLogs func(ctx context.Context, commandID string, logs []byte) error
	// Rekey replaces the device key (see Identity.Rekey).
	Rekey func(ctx context.Context) error
	// SetConfig applies a set-config command's args, a JSON object.
	SetConfig func(ctx context.Context, args json.RawMessage) error
	// Wipe decommissions the unit (see Identity.Wipe): tombstone, then
	// crypto-erase. Its result rarely reaches the server, whose LDevID
	// check now refuses the unit; the tombstone is the confirmation.
	Wipe func(ctx context.Context, commandID string, sequence uint64) error
}

// ExecutorOptions configures NewExecutor.
type ExecutorOptions struct {
	// Root is the root certificate of the factory bundle; Serial is the
	// unit's serial (see Identity.CommandTrust). Required.
	Root   *x509.Certificate
	Serial string
	// Sequence is the persisted replay guard; required (OpenSequenceFile
	// on CommandSequenceFile in the state directory).
	Sequence command.SequenceStore
	Actions  CommandActions
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives a line per command; nil discards.
	Logger *slog.Logger
}

// Executor verifies command envelopes from the server and carries them
// out. It is safe for concurrent use: envelopes are handled one at a time
// (a rekey never overlaps a reboot), and a replayed, expired, foreign or
// forged one is refused before anything runs.
type Executor struct {
	mu      sync.Mutex
	v       *command.Verifier
	actions CommandActions
	now     func() time.Time
	logger  *slog.Logger
}

// NewExecutor returns an executor for the unit. It does no I/O.
func NewExecutor(opts ExecutorOptions) (*Executor, error) {
	if opts.Root == nil || opts.Serial == "" || opts.Sequence == nil {
		return nil, errors.New("agent: command executor needs the factory root, the unit's serial and a sequence store")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Executor{
		v:       &command.Verifier{Root: opts.Root, Serial: opts.Serial, Sequence: opts.Sequence, Now: opts.Now},
		actions: opts.Actions, now: opts.Now, logger: opts.Logger,
	}, nil
}

// OpenCommandSequence opens the replay guard in the state directory.
func OpenCommandSequence(stateDir string) (*command.SequenceFile, error) {
	return command.OpenSequenceFile(filepath.Join(stateDir, CommandSequenceFile))
}

// CommandTrust reads what commands are verified with from the factory
// bundle: the root certificate and the unit's serial.
func (id *Identity) CommandTrust(ctx context.Context) (*x509.Certificate, string, error) {
	f, err := id.readFactory(ctx)
	if err != nil {
		return nil, "", err
	}
	return f.root, f.serial, nil
}

// maxResultError bounds the error message of a result, so that a result
// always fits command.MaxResultSize.
const maxResultError = 4 << 10

// Handle verifies one envelope, carries the command out and returns the
// command.Result JSON to send back on commands/result (MQTT) or POST
// /device/v1/commands/result (HTTPS). A refused envelope is reported as
// refused and does nothing; a command whose action fails as failed.
func (e *Executor) Handle(ctx context.Context, envelope []byte) []byte {
	e.mu.Lock()
	res := e.handle(ctx, envelope)
	e.mu.Unlock()
	if len(res.Error) > maxResultError {
		res.Error = res.Error[:maxResultError] + "…"
	}
	out, err := json.Marshal(res)
	if err != nil { // a Result always encodes
		panic(fmt.Sprintf("agent: encode a command result: %v", err))
	}
	return out
}

func (e *Executor) handle(ctx context.Context, envelope []byte) command.Result {
	cmd, err := e.v.Verify(envelope)
	if err != nil {
		var ve *command.VerifyError
		if errors.As(err, &ve) && errors.Is(err, command.ErrSequenceStore) {
			e.logger.Error("command refused: cannot record its sequence", "err", err)
		} else {
			e.logger.Warn("command refused", "err", err)
		}
		return command.Refused(err, e.now())
	}
	log := e.logger.With("command", cmd.ID, "kind", cmd.Kind, "sequence", cmd.Sequence)
	log.Info("command accepted")
	if err := e.run(ctx, cmd); err != nil {
		log.Warn("command failed", "err", err)
		return command.Result{CommandID: cmd.ID, Sequence: cmd.Sequence, Status: command.StatusFailed, Error: err.Error(), At: e.now()}
	}
	log.Info("command done")
	return command.Result{CommandID: cmd.ID, Sequence: cmd.Sequence, Status: command.StatusDone, At: e.now()}
}

func unsupported(k command.Kind) error {
	return fmt.Errorf("%s is not supported by this agent", k)
}

func (e *Executor) run(ctx context.Context, cmd *command.Command) error {
	a := e.actions
	switch cmd.Kind {
	case command.KindPing:
		return nil
	case command.KindReboot:
		if a.Reboot == nil {
			return unsupported(cmd.Kind)
		}
		return a.Reboot(ctx)
	case command.KindUploadLogs:
		if a.CollectLogs == nil || a.UploadLogs == nil {
			return unsupported(cmd.Kind)
		}
		logs, err := a.CollectLogs(ctx)
		if err != nil {
			return fmt.Errorf("collect the logs: %w", err)
		}
		if err := a.UploadLogs(ctx, cmd.ID, tailLines(logs, cradle.MaxCommandLogsSize)); err != nil {
			return fmt.Errorf("upload the logs: %w", err)
		}
		return nil
	case command.KindRekey:
		if a.Rekey == nil {
			return unsupported(cmd.Kind)
		}
		return a.Rekey(ctx)
	case command.KindSetConfig:
		if a.SetConfig == nil {
			return unsupported(cmd.Kind)
		}
		args := cmd.Args
		if len(args) == 0 {
			args = json.RawMessage("{}")
		}
		return a.SetConfig(ctx, args)
	case command.KindWipe:
		if a.Wipe == nil {
			return unsupported(cmd.Kind)
		}
		return a.Wipe(ctx, cmd.ID, cmd.Sequence)
	}
	return fmt.Errorf("unknown command kind %q", cmd.Kind)
}

// tailLines returns the newest max bytes of logs, starting at a line.
func tailLines(logs []byte, max int) []byte {
	if len(logs) <= max {
		return logs
	}
	tail := logs[len(logs)-max:]
	if i := bytes.IndexByte(tail, '\n'); i >= 0 && i+1 < len(tail) {
		tail = tail[i+1:]
	}
	return tail
}

// PostCommandLogs sends the logs of an upload-logs command to the device
// listener at serverURL (POST /device/v1/commands/{id}/logs) with hc,
// whose TLS configuration presents the LDevID.
func PostCommandLogs(ctx context.Context, hc *http.Client, serverURL, commandID string, logs []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(serverURL, "/")+"/device/v1/commands/"+url.PathEscape(commandID)+"/logs", bytes.NewReader(logs))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent: post logs: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		var e cradle.Error
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("agent: post logs: %s: %s", resp.Status, e.Message)
	}
	return nil
}

// RebootAfter returns a Reboot action that runs argv (such as
// ["systemctl", "reboot"]) delay after it returns, so that the result is
// sent first. A failure to start it is logged: the result has gone.
func RebootAfter(argv []string, delay time.Duration, logger *slog.Logger) func(context.Context) error {
	return func(context.Context) error {
		if len(argv) == 0 {
			return errors.New("no reboot command configured")
		}
		if _, err := exec.LookPath(argv[0]); err != nil {
			return fmt.Errorf("reboot command: %w", err)
		}
		time.AfterFunc(delay, func() {
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil && logger != nil {
				logger.Error("reboot failed", "command", argv, "err", err, "output", string(out))
			}
		})
		return nil
	}
}

// BootCountKey is the boot environment variable SimulatedReboot counts
// in, as U-Boot counts boots in bootcount.
const BootCountKey = "bootcount"

// SimulatedReboot returns the Reboot action of a simulated device: it
// counts a boot in env's BootCountKey, which is what a reboot of the
// simulated hardware amounts to.
func SimulatedReboot(env hw.BootEnv) func(context.Context) error {
	return func(ctx context.Context) error {
		vars, err := env.Get(ctx)
		if err != nil {
			return fmt.Errorf("read the boot environment: %w", err)
		}
		n, _ := strconv.Atoi(vars[BootCountKey])
		if err := env.Set(ctx, map[string]string{BootCountKey: strconv.Itoa(n + 1)}); err != nil {
			return fmt.Errorf("count the boot: %w", err)
		}
		return nil
	}
}
