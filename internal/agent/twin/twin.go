// Package twin is the device side of the configuration twin: it takes the
// desired documents the server sends ({"version","config"}), checks them,
// applies them through handlers, and produces the reported document
// ({"version","status","error","config","at"}) the device sends back.
//
// Design. The Applier keeps the running configuration and its version in
// one state file (twin.json in its state directory), replaced atomically,
// so after a crash it is either the old or the new one, never a mix. A
// desired document goes through these steps, and the report says where it
// stopped:
//
//   - Parse: strict JSON, version ≥ 1, config an object within the limits
//     of cradle.ParseConfig. A document that fails is rejected.
//   - Version: a version below the last one handled is stale (an old
//     retained or re-delivered message) and is ignored: the report is
//     unchanged. The version last handled again is a duplicate: the stored
//     report is returned and nothing runs again.
//   - Schema: when the Applier has the model's JSON Schema, a config that
//     fails it is rejected, with the JSON pointer of the failing place.
//     Rejected documents leave the running config untouched and run no
//     handler.
//   - Handlers, in order: a file handler writes the config (or one key of
//     it) as JSON to a path, atomically; a hook runs an executable with the
//     document on stdin and CRADLE_CONFIG_VERSION in its environment. A
//     handler that fails makes the version failed. The handlers that ran
//     for it, the failing one included, are then run again with the
//     previous running config, last first, to roll the device back; when
//     there is no previous config (the first version) nothing is rolled
//     back. The report says failed with the handler's error and whether the
//     rollback worked, and its config is the previous running config.
//   - Commit: the new running config and the report are written to the
//     state file; the report says applied.
package twin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/twinschema"
)

// StateFile is the name of the Applier's state file in its directory.
const StateFile = "twin.json"

// Handler applies a configuration to the device.
type Handler interface {
	// Name says which handler it is, in errors ("file /etc/app.json").
	Name() string
	// Apply makes the device use cfg (canonical JSON is its encoding).
	// It must leave things as they were or fully applied when it can.
	Apply(ctx context.Context, version int64, cfg map[string]any, canonical []byte) error
}

// Options configure an Applier.
type Options struct {
	StateDir   string    // required; created 0700 if missing
	SchemaFile string    // the model's JSON Schema; "" means none
	Handlers   []Handler // run in order
	// Now is the clock of the reports; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger // nil discards
}

// Applier applies desired documents. It is safe for concurrent use;
// documents are applied one at a time.
type Applier struct {
	opts   Options
	schema *twinschema.Schema
	logger *slog.Logger

	mu    sync.Mutex
	state state
}

// state is what the state file holds.
type state struct {
	Version  int64                `json:"version"`  // the running config's version; 0: none yet
	Config   json.RawMessage      `json:"config"`   // the running config
	Handled  int64                `json:"handled"`  // the last desired version handled
	Reported *cradle.TwinReported `json:"reported"` // the report of Handled
}

// New loads the state and the schema. It fails when the state file or the
// schema cannot be read or is invalid.
func New(opts Options) (*Applier, error) {
	if opts.StateDir == "" {
		return nil, errors.New("twin: no state directory")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Applier{opts: opts, logger: opts.Logger}
	if a.logger == nil {
		a.logger = slog.New(slog.DiscardHandler)
	}
	if opts.SchemaFile != "" {
		data, err := os.ReadFile(opts.SchemaFile)
		if err != nil {
			return nil, fmt.Errorf("twin: config schema: %w", err)
		}
		if a.schema, err = twinschema.Compile(data); err != nil {
			return nil, fmt.Errorf("twin: config schema %s: %s", opts.SchemaFile, cradle.ErrorMessage(err))
		}
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("twin: state directory: %w", err)
	}
	data, err := os.ReadFile(a.path())
	switch {
	case errors.Is(err, os.ErrNotExist):
		a.state = state{Config: json.RawMessage(`{}`)}
	case err != nil:
		return nil, fmt.Errorf("twin: state: %w", err)
	default:
		if err := json.Unmarshal(data, &a.state); err != nil {
			return nil, fmt.Errorf("twin: state file %s is corrupt: %w", a.path(), err)
		}
		if _, err := cradle.ParseConfig(a.state.Config); err != nil {
			return nil, fmt.Errorf("twin: state file %s: running config: %s", a.path(), cradle.ErrorMessage(err))
		}
	}
	return a, nil
}

func (a *Applier) path() string { return filepath.Join(a.opts.StateDir, StateFile) }

// Running returns the running config and its version (0: none yet).
func (a *Applier) Running() (int64, []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.Version, bytes.Clone(a.state.Config)
}

// Reported returns the current reported document: the report of the last
// version handled, or, before any, version 0 applied with the running
// config.
func (a *Applier) Reported() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reportedLocked()
}

func (a *Applier) reportedLocked() []byte {
	r := a.state.Reported
	if r == nil {
		r = &cradle.TwinReported{Version: 0, Status: cradle.ReportApplied, Config: a.state.Config, At: a.opts.Now().UTC()}
	}
	b, _ := json.Marshal(r)
	return b
}

// Apply handles one desired document and returns the reported document.
func (a *Applier) Apply(ctx context.Context, desired []byte) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	d, cfg, err := cradle.ParseDesired(desired)
	if err != nil {
		// Say which version was refused when the document names one.
		var v struct{ Version int64 }
		if json.Unmarshal(desired, &v) != nil || v.Version < 1 {
			v.Version = a.state.Handled
		}
		if v.Version < a.state.Handled {
			return a.reportedLocked()
		}
		return a.finish(v.Version, cradle.ReportRejected, cradle.ErrorMessage(err), nil, 0)
	}
	switch {
	case d.Version < a.state.Handled:
		a.logger.Info("stale desired configuration ignored", "version", d.Version, "handled", a.state.Handled)
		return a.reportedLocked()
	case d.Version == a.state.Handled && a.state.Reported != nil:
		return a.reportedLocked()
	}
	if a.schema != nil {
		if err := a.schema.Validate(cfg); err != nil {
			return a.finish(d.Version, cradle.ReportRejected, cradle.ErrorMessage(err), nil, 0)
		}
	}
	var prev map[string]any
	if a.state.Version > 0 {
		prev, _ = cradle.ParseConfig(a.state.Config) // checked when loaded
	}
	for i, h := range a.opts.Handlers {
		err := h.Apply(ctx, d.Version, cfg, d.Config)
		if err == nil {
			continue
		}
		msg := fmt.Sprintf("%s: %v", h.Name(), err)
		if prev == nil {
			msg += "; nothing to roll back to (no earlier configuration)"
		} else {
			var failures []string
			for j := i; j >= 0; j-- {
				hj := a.opts.Handlers[j]
				if rerr := hj.Apply(context.WithoutCancel(ctx), a.state.Version, prev, a.state.Config); rerr != nil {
					failures = append(failures, fmt.Sprintf("%s: %v", hj.Name(), rerr))
				}
			}
			if len(failures) == 0 {
				msg += fmt.Sprintf("; rolled back to version %d", a.state.Version)
			} else {
				msg += fmt.Sprintf("; rolling back to version %d failed too: %v", a.state.Version, failures)
			}
		}
		a.logger.Warn("desired configuration failed", "version", d.Version, "err", msg)
		return a.finish(d.Version, cradle.ReportFailed, msg, nil, 0)
	}
	return a.finish(d.Version, cradle.ReportApplied, "", d.Config, d.Version)
}

// finish records the outcome of a version: running, when not nil, is the
// new running config at version runningVersion.
func (a *Applier) finish(version int64, status cradle.ReportStatus, msg string, running []byte, runningVersion int64) []byte {
	next := a.state
	if running != nil {
		next.Config, next.Version = running, runningVersion
	}
	next.Handled = version
	next.Reported = &cradle.TwinReported{Version: version, Status: status, Error: oneLine(msg), Config: next.Config, At: a.opts.Now().UTC().Truncate(time.Millisecond)}
	data, err := json.Marshal(next)
	if err == nil {
		err = atomicfile.WriteFile(a.path(), data, 0o600)
	}
	if err != nil {
		// The handlers ran, but the state is not saved: say so, and keep
		// the old state, so the next delivery of this version runs again.
		a.logger.Error("twin state not saved", "err", err)
		r := &cradle.TwinReported{Version: version, Status: cradle.ReportFailed, Error: "saving the agent's configuration state: " + err.Error(), Config: a.state.Config, At: next.Reported.At}
		b, _ := json.Marshal(r)
		return b
	}
	a.state = next
	b, _ := json.Marshal(next.Reported)
	return b
}

// oneLine makes an error fit a report: one line of printable characters,
// at most 4096 bytes, keeping the end (where a hook's stderr says why).
func oneLine(s string) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }), " / ")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	if len(s) > 4000 {
		s = strings.ToValidUTF8("…"+s[len(s)-4000:], "")
	}
	return s
}
