package cradle

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"time"
)

// CommandKind names what a command asks a device to do. The kinds are
// those of internal/command, which signs and verifies them.
type CommandKind string

// Command kinds.
const (
	CommandReboot     CommandKind = "reboot"
	CommandUploadLogs CommandKind = "upload-logs"
	CommandRekey      CommandKind = "rekey"
	CommandSetConfig  CommandKind = "set-config"
	CommandPing       CommandKind = "ping"
	CommandWipe       CommandKind = "wipe" // issued only by decommissioning (DecommissionService)
)

// CommandKinds lists every kind a device knows, in a stable order.
var CommandKinds = []CommandKind{CommandReboot, CommandUploadLogs, CommandRekey, CommandSetConfig, CommandPing, CommandWipe}

// CommandState is where a command is in its life.
type CommandState string

// Command states. A command is pending until it is sent to the device
// (delivered), then done, refused or failed when the device reports. A
// pending or delivered command past its expiry is expired and never sent
// again.
const (
	CommandPending   CommandState = "pending"
	CommandDelivered CommandState = "delivered"
	CommandDone      CommandState = "done"
	CommandRefused   CommandState = "refused"
	CommandFailed    CommandState = "failed"
	CommandExpired   CommandState = "expired"
)

// CommandStates lists every state, in a stable order.
var CommandStates = []CommandState{CommandPending, CommandDelivered, CommandDone, CommandRefused, CommandFailed, CommandExpired}

// Finished reports whether s is a final state.
func (s CommandState) Finished() bool {
	return s == CommandDone || s == CommandRefused || s == CommandFailed || s == CommandExpired
}

// Command time-to-live bounds.
const (
	MinCommandTTL     = time.Minute
	MaxCommandTTL     = 30 * 24 * time.Hour
	DefaultCommandTTL = time.Hour
	// MaxCommandArgsSize bounds a command's arguments (JSON).
	MaxCommandArgsSize = 16 << 10
	// MaxCommandLogsSize bounds the logs a device uploads for one
	// upload-logs command.
	MaxCommandLogsSize = 256 << 10
)

// CommandRequest asks for a command to be sent to a device.
type CommandRequest struct {
	Kind CommandKind `json:"kind"`
	// Args is a JSON object of the kind's arguments; empty means none.
	Args json.RawMessage `json:"args,omitempty"`
	// TTLSeconds is how long the device may act on the command; 0 means
	// DefaultCommandTTL, else MinCommandTTL to MaxCommandTTL.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// Normalize checks r and fills in the default TTL. The error is EINVALID
// and names the field.
func (r *CommandRequest) Normalize() error {
	if !slices.Contains(CommandKinds, r.Kind) {
		return Errorf(EINVALID, "unknown command kind %q: use one of reboot, upload-logs, rekey, set-config, ping", r.Kind)
	}
	if r.Kind == CommandWipe {
		return Errorf(EINVALID, "command kind wipe is issued only by decommissioning: cradle device decommission SERIAL --reason R")
	}
	if len(r.Args) > MaxCommandArgsSize {
		return Errorf(EINVALID, "command args of %d bytes are over the %d-byte limit", len(r.Args), MaxCommandArgsSize)
	}
	if t := bytes.TrimSpace(r.Args); len(t) == 0 || string(t) == "null" {
		r.Args = nil
	} else {
		var obj map[string]json.RawMessage
		if t[0] != '{' || json.Unmarshal(t, &obj) != nil {
			return Errorf(EINVALID, "invalid command args: must be a JSON object")
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, t); err != nil {
			return Errorf(EINVALID, "invalid command args: %v", err)
		}
		r.Args = buf.Bytes()
	}
	if r.Kind == CommandSetConfig {
		// The device applies it as a desired document, with the twin's
		// checks, handlers and versions.
		if _, _, err := ParseDesired(r.Args); err != nil {
			return Errorf(EINVALID, `set-config args must be a desired document {"version": N, "config": {…}}: %s`, ErrorMessage(err))
		}
	}
	if r.TTLSeconds == 0 {
		r.TTLSeconds = int64(DefaultCommandTTL / time.Second)
	}
	// Compared in seconds: a Duration of a huge count would overflow into range.
	if r.TTLSeconds < int64(MinCommandTTL/time.Second) || r.TTLSeconds > int64(MaxCommandTTL/time.Second) {
		return Errorf(EINVALID, "invalid command ttl of %d seconds: use %d to %d seconds (1 minute to 30 days)", r.TTLSeconds, int64(MinCommandTTL/time.Second), int64(MaxCommandTTL/time.Second))
	}
	return nil
}

// DeviceCommand is a signed command to one device and what became of it.
type DeviceCommand struct {
	ID       string          `json:"id"`
	Device   string          `json:"device"`
	Kind     CommandKind     `json:"kind"`
	Args     json.RawMessage `json:"args,omitempty"`
	Sequence uint64          `json:"sequence"` // strictly increasing per device, from 1, never reused
	State    CommandState    `json:"state"`
	// Error is the device's reason when the command was refused or failed.
	Error       string     `json:"error,omitempty"`
	IssuedBy    string     `json:"issued_by"`
	IssuedAt    time.Time  `json:"issued_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	// Results are every result the device reported for the command,
	// oldest first: the one that finished it, and any later refusal of
	// the same command sent again (a replay).
	Results []CommandResult `json:"results"`
	// LogsSize is the size of the logs uploaded for an upload-logs
	// command; 0 when none.
	LogsSize int `json:"logs_size,omitempty"`
	// Envelope is the signed envelope (internal/command) sent to the
	// device; only PendingCommands fills it in.
	Envelope []byte `json:"-"`
}

// CommandResult is what a device reported about a command: the
// command.Result document of internal/command.
type CommandResult struct {
	// CommandID is empty when the device refused an envelope whose
	// signature did not verify.
	CommandID string       `json:"command_id"`
	Sequence  uint64       `json:"sequence"`
	Status    CommandState `json:"status"` // done, refused or failed
	Error     string       `json:"error,omitempty"`
	At        time.Time    `json:"at"`
	// ReceivedAt is when the server stored it.
	ReceivedAt time.Time `json:"received_at"`
}

// CommandFilter selects a device's commands.
type CommandFilter struct {
	State *CommandState
	// Limit is the number of commands, newest first: 0 means
	// DefaultPageSize; at most MaxPageSize.
	Limit int
}

// CommandService issues signed commands to devices and records what the
// devices report.
type CommandService interface {
	// IssueCommand signs a command for a device in state deployed, with
	// the device's next sequence number, and stores it pending. Needs
	// PermCommandIssue. EINVALID (kind, args, TTL), ENOTFOUND, ECONFLICT
	// when the device is not deployed.
	IssueCommand(ctx context.Context, serial string, r CommandRequest) (*DeviceCommand, error)
	// FindDeviceCommand returns one command of a device. Needs
	// PermCommandRead. ENOTFOUND.
	FindDeviceCommand(ctx context.Context, serial, id string) (*DeviceCommand, error)
	// FindDeviceCommands lists a device's commands, newest first. Needs
	// PermCommandRead. ENOTFOUND, EINVALID (limit, state).
	FindDeviceCommands(ctx context.Context, serial string, f CommandFilter) ([]*DeviceCommand, error)
	// PendingCommands returns the commands to send to the device: not
	// finished and not expired, in sequence order, with their envelopes.
	// Needs PermCommandDevice; a device only for itself (EFORBIDDEN).
	PendingCommands(ctx context.Context, serial string) ([]*DeviceCommand, error)
	// MarkCommandsDelivered records that the commands were sent to the
	// device; commands already delivered or finished are left as they
	// are. Needs PermCommandDevice; a device only for itself.
	MarkCommandsDelivered(ctx context.Context, serial string, ids []string) error
	// RecordCommandResult stores a result the device reported. The first
	// result of a command finishes it. A refusal of a command already
	// finished (the device refused it sent again) is stored with it and
	// leaves its state. A result without a command ID (a forged envelope
	// the device refused) is audited only. Needs PermCommandDevice; a
	// device only for itself. EINVALID (status, error), ENOTFOUND (no
	// such command of this device), ECONFLICT (done or failed reported for
	// a finished command).
	RecordCommandResult(ctx context.Context, serial string, r CommandResult) (*DeviceCommand, error)
	// StoreCommandLogs stores the logs a device uploaded for one of its
	// upload-logs commands, replacing earlier ones. Needs
	// PermCommandDevice; a device only for itself. ETOOLARGE over
	// MaxCommandLogsSize, ENOTFOUND, EINVALID for another kind.
	StoreCommandLogs(ctx context.Context, serial, id string, logs []byte) error
	// FindCommandLogs returns the logs uploaded for a command. Needs
	// PermCommandRead. ENOTFOUND when the command has none.
	FindCommandLogs(ctx context.Context, serial, id string) ([]byte, error)
}
