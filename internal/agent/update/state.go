package update

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"cradle/internal/agent/hw"
	"cradle/internal/atomicfile"
)

// Phase is a persisted state of the updater (see the package doc).
type Phase string

// The phases, in the order an update goes through them.
const (
	PhaseIdle        Phase = "idle"
	PhaseFetching    Phase = "fetching"    // offer taken; TUF metadata to refresh and check
	PhaseDownloading Phase = "downloading" // streaming the image into the inactive slot, or the patch into the state dir
	PhaseApplying    Phase = "applying"    // delta: rebuilding the image into the inactive slot
	PhaseVerifying   Phase = "verifying"   // TUF length and digest, then the MCUboot signature
	PhaseInstalling  Phase = "installing"  // boot_slot=new, upgrade_available=1, bootcount=0 to set
	PhaseRebooting   Phase = "rebooting"   // the environment points at the new slot; a boot is due
	PhaseTrial       Phase = "trial"       // booted the new slot on trial; health checks
	PhaseCommitting  Phase = "committing"  // confirm the slot, then advance the anti-rollback fuses
	PhaseRollingBack Phase = "rolling-back"
	PhaseReverting   Phase = "reverting" // the environment points at the old slot again; a boot is due
	PhaseReporting   Phase = "reporting" // the outcome is to be told to the server
)

// stateVersion is the format of the state file.
const stateVersion = 1

// State is the updater's persisted state: update.json in the state dir.
type State struct {
	Version int   `json:"version"`
	Phase   Phase `json:"phase"`

	RolloutID   string `json:"rollout_id,omitempty"`
	Attempt     int    `json:"attempt,omitempty"`
	MetadataURL string `json:"metadata_url,omitempty"`
	TargetPath  string `json:"target_path,omitempty"`
	ArtifactURL string `json:"artifact_url,omitempty"`
	// OfferedSHA256 and OfferedSize are the server's claim, checked
	// against the signed metadata.
	OfferedSHA256 string `json:"offered_sha256,omitempty"`
	OfferedSize   int64  `json:"offered_size,omitempty"`
	Delta         *Patch `json:"delta,omitempty"`

	// From the signed target once fetched.
	Length          int64  `json:"length,omitempty"`
	SHA256          string `json:"sha256,omitempty"`
	SecurityCounter uint32 `json:"security_counter,omitempty"`
	ReleaseVersion  string `json:"release_version,omitempty"`

	OldSlot hw.Slot `json:"old_slot,omitempty"`
	NewSlot hw.Slot `json:"new_slot,omitempty"`
	// Offset is how far the download had got at the last save; the slot
	// (or patch file) itself is the truth on resume.
	Offset int64 `json:"offset,omitempty"`
	// Erased says the download's destination (the slot, or the patch
	// file) was emptied for this attempt: what it holds is this
	// download's prefix.
	Erased bool `json:"erased,omitempty"`
	// BootID is the boot during which a reboot was asked for: a resume in
	// the same boot asks again.
	BootID string `json:"boot_id,omitempty"`
	// TrialStart is when the health checks of a trial boot began (Unix
	// seconds on the injected clock, rounded up): the deadline is
	// TrialStart + HealthTimeout, kept across restarts of the agent.
	TrialStart int64 `json:"trial_start,omitempty"`

	// Outcome and Reason are the report to send in PhaseReporting.
	Outcome string `json:"outcome,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Reported says the server took (or refused for good) the outcome's
	// report; what is left of reporting is the software report.
	Reported bool `json:"reported,omitempty"`
}

// Patch is a delta download: the patch target and the base it applies to.
type Patch struct {
	URL        string `json:"url"`
	Path       string `json:"path"`
	Length     int64  `json:"length"`
	SHA256     string `json:"sha256"`
	FromSHA256 string `json:"from_sha256"`
}

const stateFile = "update.json"

// loadState reads the state file; a missing file is the idle state.
func loadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Version: stateVersion, Phase: PhaseIdle}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("update: read state: %w", err)
	}
	return parseState(b)
}

// parseState decodes a state file and checks its version and phase.
func parseState(b []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("update: state file %s: %w", stateFile, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("update: state file %s has version %d; this agent reads %d", stateFile, st.Version, stateVersion)
	}
	switch st.Phase {
	case PhaseIdle, PhaseFetching, PhaseDownloading, PhaseApplying, PhaseVerifying, PhaseInstalling,
		PhaseRebooting, PhaseTrial, PhaseCommitting, PhaseRollingBack, PhaseReverting, PhaseReporting:
	default:
		return nil, fmt.Errorf("update: state file %s: unknown phase %q", stateFile, st.Phase)
	}
	if st.Phase != PhaseIdle && st.Phase != PhaseFetching && st.Phase != PhaseReporting {
		if !validSlot(st.OldSlot) || !validSlot(st.NewSlot) || st.OldSlot == st.NewSlot {
			return nil, fmt.Errorf("update: state file %s: phase %s with slots %q and %q", stateFile, st.Phase, st.OldSlot, st.NewSlot)
		}
	}
	return &st, nil
}

func validSlot(s hw.Slot) bool { return s == hw.SlotA || s == hw.SlotB }

// saveState replaces the state file atomically.
func saveState(dir string, st *State) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, stateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("update: save state: %w", err)
	}
	return nil
}
