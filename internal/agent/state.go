package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"cradle/internal/atomicfile"
)

// StateVersion is the version of the state file this agent writes and
// the newest it reads.
const StateVersion = 1

// StateFile is the name of the agent's state file in its state directory.
const StateFile = "state.json"

// maxStateBytes bounds the state file: a few certificates and times.
const maxStateBytes = 1 << 20

// EnrollStatus is where the unit's operational identity stands.
type EnrollStatus string

// The enrollment statuses, in the order a unit normally passes them.
const (
	// StatusUnenrolled: no LDevID yet; the next step enrolls with the
	// IDevID.
	StatusUnenrolled EnrollStatus = "unenrolled"
	// StatusConfirming: a new LDevID is stored (State.Current) but the
	// server has not yet accepted it on a connection; the one it replaces
	// (State.Previous) and its key are kept until it has.
	StatusConfirming EnrollStatus = "confirming"
	// StatusEnrolled: the LDevID in State.Current works; it is renewed
	// from State.RenewAt.
	StatusEnrolled EnrollStatus = "enrolled"
)

// Credential is an LDevID with the name of its key in the unit's key
// store.
type Credential struct {
	// KeyName names the private key in hw.KeyStore.
	KeyName string `json:"key_name"`
	// Chain is PEM: the LDevID, then the device CA that issued it, the
	// chain the agent presents in TLS.
	Chain string `json:"chain"`
	// NotAfter is the LDevID's expiry, copied for people reading the file.
	NotAfter time.Time `json:"not_after"`
}

// State is the agent's persisted state (StateFile, JSON). Only the agent
// writes it, always whole (SaveState).
type State struct {
	// Version is StateVersion when written by this agent.
	Version int          `json:"version"`
	Status  EnrollStatus `json:"status"`
	// Current is the LDevID in use (nil while unenrolled).
	Current *Credential `json:"current,omitempty"`
	// Previous is the LDevID Current replaces, kept while Status is
	// StatusConfirming.
	Previous *Credential `json:"previous,omitempty"`
	// KeySeq numbers LDevID keys: the next key is "ldevid-<KeySeq+1>".
	KeySeq int `json:"key_seq"`
	// CACerts is PEM: the CA certificates of the last /cacerts that
	// chain to the factory root (device CAs, the manufacturing CA).
	CACerts string `json:"ca_certs,omitempty"`
	// RenewAt is when Current should be renewed (two thirds of its
	// lifetime).
	RenewAt time.Time `json:"renew_at,omitzero"`
	// NextAttempt is when the next step is due (a renewal, or a retry
	// after a failure).
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// Failures counts consecutive failed attempts; 0 after a success.
	Failures int `json:"failures"`
	// LastError is the error of the last failed attempt.
	LastError string `json:"last_error,omitempty"`
	// Starts are the agent's start times within the restart guard's
	// window, oldest first.
	Starts []time.Time `json:"starts,omitempty"`
	// HoldUntil is set when the restart guard tripped: the agent does
	// nothing before it.
	HoldUntil time.Time `json:"hold_until,omitzero"`
	// Attestation is the server's verdict on the unit's last TPM
	// attestation; nil while not attested (a key store without a TPM
	// never is).
	Attestation *Attestation `json:"attestation,omitempty"`
	// Wipe is set, before anything is erased, while a wipe command is
	// being carried out: a start that finds it finishes the wipe
	// (ResumeWipe) and does nothing else.
	Wipe *WipeProgress `json:"wipe,omitempty"`
}

// Attestation records a TPM attestation the server verified.
type Attestation struct {
	// Method is "tpm".
	Method string `json:"method"`
	// EKCertificate is the SHA-256 (hex) of the EK certificate attested
	// with, AKName the attestation key's TPM Name (hex).
	EKCertificate string `json:"ek_certificate_sha256"`
	AKName        string `json:"ak_name"`
	// At is when the server verified it.
	At time.Time `json:"at"`
}

// NewState returns the state of a unit that has never run the agent.
func NewState() *State {
	return &State{Version: StateVersion, Status: StatusUnenrolled}
}

// ParseState decodes and checks a state file. It refuses a file from a
// newer agent (a higher version), one without a version, and one whose
// fields contradict each other (an enrolled state without a current
// LDevID, an unknown status, a bad key name).
func ParseState(b []byte) (*State, error) {
	if len(b) > maxStateBytes {
		return nil, fmt.Errorf("agent: state file is %d bytes, more than the %d a state holds; it is not this agent's", len(b), maxStateBytes)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("agent: state file does not parse: %w", err)
	}
	switch {
	case s.Version == 0:
		return nil, fmt.Errorf("agent: state file has no version; it is not this agent's (move it aside to start over)")
	case s.Version > StateVersion:
		return nil, fmt.Errorf("agent: state file is version %d, written by a newer agent; this agent reads up to version %d: upgrade it", s.Version, StateVersion)
	case s.Version < 0:
		return nil, fmt.Errorf("agent: state file has version %d", s.Version)
	case s.KeySeq < 0 || s.Failures < 0:
		return nil, fmt.Errorf("agent: state file has a negative key sequence or failure count")
	}
	switch s.Status {
	case StatusUnenrolled:
		if s.Current != nil || s.Previous != nil {
			return nil, fmt.Errorf("agent: state file says %s but holds an LDevID", s.Status)
		}
	case StatusConfirming, StatusEnrolled:
		if s.Current == nil {
			return nil, fmt.Errorf("agent: state file says %s but holds no current LDevID", s.Status)
		}
		if s.Status == StatusEnrolled && s.Previous != nil {
			return nil, fmt.Errorf("agent: state file says %s but still holds a previous LDevID", s.Status)
		}
	default:
		return nil, fmt.Errorf("agent: state file has unknown status %q (want %s, %s or %s)", s.Status, StatusUnenrolled, StatusConfirming, StatusEnrolled)
	}
	for _, c := range []*Credential{s.Current, s.Previous} {
		if c == nil {
			continue
		}
		if err := checkLDevIDKeyName(c.KeyName); err != nil {
			return nil, fmt.Errorf("agent: state file: %w", err)
		}
		if _, err := parseChain([]byte(c.Chain)); err != nil {
			return nil, fmt.Errorf("agent: state file: LDevID with key %s: %w", c.KeyName, err)
		}
	}
	if w := s.Wipe; w != nil {
		if err := w.check(); err != nil {
			return nil, fmt.Errorf("agent: state file: wipe: %w", err)
		}
	}
	if s.CACerts != "" {
		if _, err := parseChain([]byte(s.CACerts)); err != nil {
			return nil, fmt.Errorf("agent: state file: CA certificates: %w", err)
		}
	}
	return &s, nil
}

// LoadState reads the state in dir; a missing file is NewState (a unit
// that never ran the agent). Temporary files a crash left behind are
// removed.
func LoadState(dir string) (*State, error) {
	if tmps, err := filepath.Glob(filepath.Join(dir, "."+StateFile+".tmp-*")); err == nil {
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: read state: %w", err)
	}
	s, err := ParseState(b)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, filepath.Join(dir, StateFile))
	}
	return s, nil
}

// SaveState writes s to dir (created if missing) atomically and durably:
// a temporary file in dir, synced, renamed over StateFile, and the
// directory synced. After a crash the file holds the old state or the new
// one, never a mix. It sets s.Version to StateVersion.
func SaveState(dir string, s *State) error {
	s.Version = StateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("agent: save state: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("agent: save state: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, StateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("agent: save state in %s: %w", dir, err)
	}
	return nil
}

// RestartGuard stops a crash loop from hammering the server and the
// flash: when the agent starts more than MaxStarts times within Window, it
// holds off for Hold before doing anything, and says so. The zero value
// means 10 starts in 10 minutes, then an hour's hold.
type RestartGuard struct {
	Window    time.Duration
	MaxStarts int
	Hold      time.Duration
}

func (g RestartGuard) withDefaults() RestartGuard {
	if g.Window <= 0 {
		g.Window = 10 * time.Minute
	}
	if g.MaxStarts <= 0 {
		g.MaxStarts = 10
	}
	if g.Hold <= 0 {
		g.Hold = time.Hour
	}
	return g
}

// recordStart notes a start at now in s and reports whether it trips the
// guard, in which case s.HoldUntil is set and the counted starts are
// cleared (after the hold the agent gets MaxStarts starts again).
func (g RestartGuard) recordStart(s *State, now time.Time) bool {
	g = g.withDefaults()
	kept := s.Starts[:0]
	for _, t := range s.Starts {
		// A start "in the future" means the clock was set back: forget it.
		if now.Sub(t) < g.Window && !t.After(now) {
			kept = append(kept, t)
		}
	}
	s.Starts = append(kept, now)
	if len(s.Starts) <= g.MaxStarts {
		return false
	}
	s.Starts = nil
	s.HoldUntil = now.Add(g.Hold)
	return true
}

// ErrRestartLoop: the agent started too often in a short time and holds
// off (see RestartGuard).
var ErrRestartLoop = errors.New("agent: restart loop")

// restartLoopError explains a hold.
func restartLoopError(g RestartGuard, until time.Time) error {
	g = g.withDefaults()
	return fmt.Errorf("agent started more than %d times within %s (a crash loop?); holding off until %s before enrolling or renewing; look at the previous runs' logs: %w",
		g.MaxStarts, g.Window, until.UTC().Format(time.RFC3339), ErrRestartLoop)
}

// ldevidKeyPrefix starts the key store name of every LDevID key.
const ldevidKeyPrefix = "ldevid-"

func checkLDevIDKeyName(name string) error {
	n, ok := strings.CutPrefix(name, ldevidKeyPrefix)
	if !ok || n == "" || len(name) > 64 || strings.Trim(n, "0123456789") != "" {
		return fmt.Errorf("LDevID key name %q is not %s<n>", name, ldevidKeyPrefix)
	}
	return nil
}
