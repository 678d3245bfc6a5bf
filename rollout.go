package cradle

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// A rollout brings one release to the devices of a target, phase by phase.
// The rules below are enforced by RolloutSpec.Validate (everything but the
// cron syntax, which internal/rollout checks because this package imports
// only the standard library) and carried out by the engine in
// internal/rollout.
//
// Conflict rule: a device is in at most one active (running or paused)
// rollout. Creating or starting a rollout whose explicit serial list names a
// device of another active rollout is refused (ECONFLICT, naming the
// devices). A device that a label selector brings in while it is in another
// active rollout is skipped, with the other rollout named in its reason, and
// is not retried when that rollout ends.

// RolloutState is where a rollout is in its life.
type RolloutState string

// Rollout states. Draft: created, not started. Running: the engine starts
// devices. Paused: by an operator or by the failure or success threshold;
// devices already updating finish, no new ones start. Aborted and Completed
// are final.
const (
	RolloutDraft     RolloutState = "draft"
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutAborted   RolloutState = "aborted"
	RolloutCompleted RolloutState = "completed"
)

// Active reports whether a rollout in state s holds its devices (see the
// conflict rule).
func (s RolloutState) Active() bool { return s == RolloutRunning || s == RolloutPaused }

// Failure actions: what the engine does when the failure threshold is reached.
const (
	FailurePause = "pause"
	FailureAbort = "abort"
)

// RolloutTZLabel is the device label that names a device's IANA time zone
// for device-local maintenance windows.
const RolloutTZLabel = "tz"

// Limits on a rollout spec.
const (
	MaxRolloutPhases   = 32
	MaxRolloutWindows  = 16
	MaxRolloutSerials  = 100_000
	MaxRolloutRetries  = 10
	MaxRolloutSpecSize = 4 << 20 // bytes of JSON
)

// Duration is a time.Duration written in JSON as Go's duration text ("90s",
// "1h30m"). A JSON number is read as seconds.
type Duration time.Duration

// MarshalJSON writes d as text.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads text ("15m") or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return Errorf(EINVALID, "invalid duration %q: write it like \"90s\" or \"1h30m\"", truncate(s, 40))
		}
		*d = Duration(v)
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil || math.IsNaN(n) || math.Abs(n) > float64(math.MaxInt64)/float64(time.Second) {
		return Errorf(EINVALID, "invalid duration %s: write it like \"90s\" or as a number of seconds", truncate(string(b), 40))
	}
	*d = Duration(n * float64(time.Second))
	return nil
}

// RolloutTarget is the devices a rollout updates: a label selector or an
// explicit list of serials, exactly one of them.
type RolloutTarget struct {
	Selector string   `json:"selector,omitempty"`
	Serials  []string `json:"serials,omitempty"`
}

// RolloutPhase is one step of a rollout. The first phase (the canary) gives
// Count devices or Percent of the target; later phases give Percent only.
// Percents are cumulative, of the whole target: waves of 10, 50, 100 mean
// the first 10%, then up to 50%, then the rest. The last phase reaches 100
// percent, so every device of the target is in a phase.
type RolloutPhase struct {
	Name    string  `json:"name,omitempty"`
	Count   int     `json:"count,omitempty"`
	Percent float64 `json:"percent,omitempty"`
	// Soak is how long the engine waits after the phase's last device
	// finished before it moves on.
	Soak Duration `json:"soak,omitempty"`
	// Approval makes the phase wait for an operator's approval before it
	// starts. The first phase cannot ask for it: starting the rollout is
	// its approval.
	Approval bool `json:"approval,omitempty"`
}

// FailureThreshold is the number (Count) or share (Percent of the target)
// of devices whose update failed for good at which the engine acts: Action
// pause or abort. Exactly one of Count and Percent is set. Failures are
// counted since the rollout started or was last resumed: an operator who
// resumes accepts the failures so far.
type FailureThreshold struct {
	Count   int     `json:"count,omitempty"`
	Percent float64 `json:"percent,omitempty"`
	Action  string  `json:"action"`
}

// Limit returns the failure count that trips the threshold for a target of
// n devices (at least 1).
func (f FailureThreshold) Limit(n int) int {
	if f.Count > 0 {
		return f.Count
	}
	return max(1, ceilPercent(f.Percent, n))
}

// ceilPercent returns ⌈pct·n/100⌉, tolerant of float rounding (10% of 30 is
// 3, not 4).
func ceilPercent(pct float64, n int) int {
	return int(math.Ceil(pct*float64(n)/100 - 1e-9))
}

// PhaseSize returns the cumulative number of devices up to and including
// phase i for a target of n devices.
func PhaseSize(phases []RolloutPhase, i, n int) int {
	c := 0
	for j := 0; j <= i && j < len(phases); j++ {
		p := phases[j]
		if p.Count > 0 {
			c = max(c, min(p.Count, n))
		} else {
			c = max(c, min(ceilPercent(p.Percent, n), n))
		}
	}
	return c
}

// MaintenanceWindow is a recurring span of time in which devices may start
// an update: it opens at each time the cron expression (five fields:
// minute hour day-of-month month day-of-week, or a descriptor such as
// "@daily") names, and lasts Duration. Times are read in TimeZone (an IANA
// name, default UTC) or, when DeviceLocal, in the zone of each device's "tz"
// label; a device without a valid one uses TimeZone.
type MaintenanceWindow struct {
	Cron        string   `json:"cron"`
	Duration    Duration `json:"duration"`
	TimeZone    string   `json:"time_zone,omitempty"`
	DeviceLocal bool     `json:"device_local,omitempty"`
}

// RolloutSpec is what an operator asks for. Zero values are documented per
// field.
type RolloutSpec struct {
	ReleaseID string        `json:"release_id"`
	Target    RolloutTarget `json:"target"`
	// Dynamic gives the release to devices that join the selector's target
	// after the rollout started; a dynamic rollout stays running after its
	// last phase until an operator aborts it. Needs a selector.
	Dynamic bool           `json:"dynamic,omitempty"`
	Phases  []RolloutPhase `json:"phases"`
	// RateLimit is the most devices started in any 60 seconds (a retry is
	// a start); 0 is unlimited.
	RateLimit int `json:"rate_limit,omitempty"`
	// MaxConcurrent caps the devices downloading at once (started and not
	// yet installing); 0 is unlimited.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
	// SuccessThreshold is the percent of a phase's devices (skipped ones
	// aside) that must succeed before the next phase starts; below it the
	// rollout pauses when the phase has finished. 0 means 100.
	SuccessThreshold float64          `json:"success_threshold,omitempty"`
	FailureThreshold FailureThreshold `json:"failure_threshold"`
	// Windows restrict when devices start; none means any time. Updates
	// already started are not interrupted when a window closes.
	Windows []MaintenanceWindow `json:"windows,omitempty"`
	// DeviceTimeout fails an attempt when a device has not reported
	// progress for this long; 0 means one hour.
	DeviceTimeout Duration `json:"device_timeout,omitempty"`
	// Retries is how many more attempts a device gets after a failed or
	// timed-out one.
	Retries int `json:"retries,omitempty"`
}

// Default values of RolloutSpec fields left zero.
const (
	DefaultDeviceTimeout    = time.Hour
	DefaultSuccessThreshold = 100.0
)

// Timeout returns DeviceTimeout or its default.
func (s *RolloutSpec) Timeout() time.Duration {
	if s.DeviceTimeout <= 0 {
		return DefaultDeviceTimeout
	}
	return time.Duration(s.DeviceTimeout)
}

// SuccessPercent returns SuccessThreshold or its default.
func (s *RolloutSpec) SuccessPercent() float64 {
	if s.SuccessThreshold == 0 {
		return DefaultSuccessThreshold
	}
	return s.SuccessThreshold
}

// Validate checks every rule of a spec but the cron syntax of its windows
// (internal/rollout.ParseWindow checks that). The error is EINVALID and
// names the field.
func (s *RolloutSpec) Validate() error {
	if strings.TrimSpace(s.ReleaseID) == "" {
		return Errorf(EINVALID, "release_id is required")
	}
	if err := s.Target.validate(); err != nil {
		return err
	}
	if s.Dynamic && s.Target.Selector == "" {
		return Errorf(EINVALID, "dynamic needs a target selector: an explicit serial list never gains devices")
	}
	if err := validatePhases(s.Phases); err != nil {
		return err
	}
	if s.RateLimit < 0 {
		return Errorf(EINVALID, "rate_limit %d is negative: give devices per minute, or 0 for no limit", s.RateLimit)
	}
	if s.MaxConcurrent < 0 {
		return Errorf(EINVALID, "max_concurrent %d is negative: give a number of devices, or 0 for no limit", s.MaxConcurrent)
	}
	if !(s.SuccessThreshold >= 0 && s.SuccessThreshold <= 100) {
		return Errorf(EINVALID, "success_threshold %v is out of range: give a percent from 0 to 100", s.SuccessThreshold)
	}
	f := s.FailureThreshold
	switch {
	case f.Count < 0:
		return Errorf(EINVALID, "failure_threshold.count %d is negative", f.Count)
	case !(f.Percent >= 0 && f.Percent <= 100):
		return Errorf(EINVALID, "failure_threshold.percent %v is out of range: give a percent above 0 and at most 100", f.Percent)
	case f.Count > 0 && f.Percent > 0:
		return Errorf(EINVALID, "failure_threshold: give count or percent, not both")
	case f.Count == 0 && f.Percent == 0:
		return Errorf(EINVALID, "failure_threshold: give a count (at least 1) or a percent above 0")
	case f.Action != FailurePause && f.Action != FailureAbort:
		return Errorf(EINVALID, "failure_threshold.action %q: use %q or %q", truncate(f.Action, 40), FailurePause, FailureAbort)
	}
	if len(s.Windows) > MaxRolloutWindows {
		return Errorf(EINVALID, "%d windows: at most %d", len(s.Windows), MaxRolloutWindows)
	}
	for i, w := range s.Windows {
		if strings.TrimSpace(w.Cron) == "" {
			return Errorf(EINVALID, "windows[%d].cron is required", i)
		}
		if w.Duration <= 0 {
			return Errorf(EINVALID, "windows[%d].duration must be positive", i)
		}
		if time.Duration(w.Duration) > 7*24*time.Hour {
			return Errorf(EINVALID, "windows[%d].duration %v is longer than a week", i, time.Duration(w.Duration))
		}
		if _, err := LoadTimeZone(w.TimeZone); err != nil {
			return Errorf(EINVALID, "windows[%d].time_zone: %s", i, ErrorMessage(err))
		}
	}
	if s.DeviceTimeout < 0 {
		return Errorf(EINVALID, "device_timeout is negative: give a duration such as \"30m\", or leave it out for one hour")
	}
	if s.Retries < 0 || s.Retries > MaxRolloutRetries {
		return Errorf(EINVALID, "retries %d is out of range: 0 to %d", s.Retries, MaxRolloutRetries)
	}
	return nil
}

func (t *RolloutTarget) validate() error {
	switch {
	case t.Selector != "" && len(t.Serials) > 0:
		return Errorf(EINVALID, "target: give a selector or serials, not both")
	case t.Selector == "" && len(t.Serials) == 0:
		return Errorf(EINVALID, "target is empty: give a label selector or a list of serials")
	case t.Selector != "":
		if _, err := ParseLabelSelector(t.Selector); err != nil {
			return Errorf(EINVALID, "target.selector: %s", ErrorMessage(err))
		}
		return nil
	}
	if len(t.Serials) > MaxRolloutSerials {
		return Errorf(EINVALID, "target lists %d serials: at most %d; use a label selector", len(t.Serials), MaxRolloutSerials)
	}
	seen := make(map[string]bool, len(t.Serials))
	for i, s := range t.Serials {
		if err := validateToken(fmt.Sprintf("target.serials[%d]", i), s, 64, true); err != nil {
			return err
		}
		if seen[s] {
			return Errorf(EINVALID, "target.serials lists %q twice", s)
		}
		seen[s] = true
	}
	return nil
}

func validatePhases(phases []RolloutPhase) error {
	if len(phases) == 0 {
		return Errorf(EINVALID, "phases: give at least one phase (e.g. {\"percent\": 100})")
	}
	if len(phases) > MaxRolloutPhases {
		return Errorf(EINVALID, "%d phases: at most %d", len(phases), MaxRolloutPhases)
	}
	last := 0.0
	for i, p := range phases {
		switch {
		case p.Count < 0:
			return Errorf(EINVALID, "phases[%d].count %d is negative", i, p.Count)
		case p.Count > 0 && i > 0:
			return Errorf(EINVALID, "phases[%d]: only the first phase (the canary) may give a count; give a percent", i)
		case p.Count > 0 && p.Percent != 0:
			return Errorf(EINVALID, "phases[%d]: give count or percent, not both", i)
		case p.Count == 0 && !(p.Percent > 0 && p.Percent <= 100):
			return Errorf(EINVALID, "phases[%d].percent %v is out of range: give a cumulative percent above 0 and at most 100", i, p.Percent)
		case p.Count == 0 && p.Percent <= last:
			return Errorf(EINVALID, "phases[%d].percent %v does not grow: percents are cumulative, so each must exceed the one before (%v)", i, p.Percent, last)
		case p.Soak < 0:
			return Errorf(EINVALID, "phases[%d].soak is negative", i)
		case p.Approval && i == 0:
			return Errorf(EINVALID, "phases[0].approval: the first phase starts when the rollout starts; approval applies between phases")
		case len(p.Name) > 64:
			return Errorf(EINVALID, "phases[%d].name is longer than 64 characters", i)
		}
		if p.Count == 0 {
			last = p.Percent
		}
	}
	if last != 100 {
		return Errorf(EINVALID, "the last phase must reach percent 100, so that every device of the target is in a phase")
	}
	return nil
}

// LoadTimeZone loads an IANA time zone; "" and "UTC" are UTC. "Local" is
// refused: a rollout must mean the same on every server.
func LoadTimeZone(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if name == "Local" || len(name) > 64 {
		return nil, Errorf(EINVALID, "unknown time zone %q: give an IANA name such as \"Europe/Berlin\"", truncate(name, 64))
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, Errorf(EINVALID, "unknown time zone %q: give an IANA name such as \"Europe/Berlin\"", truncate(name, 64))
	}
	return loc, nil
}

// Rollout is a rollout and its live status.
type Rollout struct {
	ID string `json:"id"`
	RolloutSpec
	Status RolloutStatus `json:"status"`
}

// PhaseState is where one phase is.
type PhaseState string

// Phase states, in order.
const (
	PhasePending   PhaseState = "pending"
	PhaseAwaiting  PhaseState = "awaiting_approval"
	PhaseRunning   PhaseState = "running"
	PhaseSoaking   PhaseState = "soaking"
	PhaseCompleted PhaseState = "completed"
)

// RolloutStatus is a rollout's live state.
type RolloutStatus struct {
	State RolloutState `json:"state"`
	// Reason says why the rollout is paused, aborted or completed.
	Reason string `json:"reason,omitempty"`
	// Phase is the index of the current phase.
	Phase  int           `json:"phase"`
	Phases []PhaseStatus `json:"phases"`
	// Devices is how many devices are in the rollout, Skipped how many of
	// them were never started (see RolloutDevice.Reason).
	Devices int `json:"devices"`
	Skipped int `json:"skipped"`
	// Failures is the count of devices failed for good since the start or
	// the last resume, which the failure threshold compares.
	Failures  int       `json:"failures"`
	StartedAt time.Time `json:"started_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// RecentStarts are the start times within the last minute, oldest
	// first, which the rate limit reads.
	RecentStarts []time.Time `json:"recent_starts,omitempty"`
}

// PhaseStatus counts one phase's devices by state.
type PhaseStatus struct {
	Name        string     `json:"name"`
	State       PhaseState `json:"state"`
	Devices     int        `json:"devices"`
	Pending     int        `json:"pending"`
	Downloading int        `json:"downloading"` // started or downloading
	Installing  int        `json:"installing"`
	Succeeded   int        `json:"succeeded"`
	Failed      int        `json:"failed"`
	StartedAt   time.Time  `json:"started_at,omitzero"`
	FinishedAt  time.Time  `json:"finished_at,omitzero"`
	SoakUntil   time.Time  `json:"soak_until,omitzero"`
	// Accepted is set when an operator resumed the rollout after this
	// phase fell short of the success threshold.
	Accepted bool `json:"accepted,omitempty"`
	Approved bool `json:"approved,omitempty"`
}

// Done reports whether every device of the phase has finished.
func (p *PhaseStatus) Done() bool { return p.Pending == 0 && p.Downloading == 0 && p.Installing == 0 }

// DeviceUpdateState is where one device is in a rollout.
type DeviceUpdateState string

// Device states in a rollout. Pending: waiting for its phase, the rate
// limit, the cap or a window. Started: told to update, nothing reported
// yet. Failed: failed for good (retries used up). Skipped: never started
// (see Reason).
const (
	DevicePending     DeviceUpdateState = "pending"
	DeviceStarted     DeviceUpdateState = "started"
	DeviceDownloading DeviceUpdateState = "downloading"
	DeviceInstalling  DeviceUpdateState = "installing"
	DeviceSucceeded   DeviceUpdateState = "succeeded"
	DeviceFailed      DeviceUpdateState = "failed"
	DeviceSkipped     DeviceUpdateState = "skipped"
)

// InFlight reports whether a device in state s is updating.
func (s DeviceUpdateState) InFlight() bool {
	return s == DeviceStarted || s == DeviceDownloading || s == DeviceInstalling
}

// RolloutDevice is one device's record in a rollout. A skipped device is in
// no phase (Phase -1).
type RolloutDevice struct {
	Serial string            `json:"serial"`
	Labels map[string]string `json:"labels,omitempty"`
	State  DeviceUpdateState `json:"state"`
	Phase  int               `json:"phase"`
	// Attempt counts starts; an event that names an older attempt is stale.
	Attempt int `json:"attempt"`
	// Progress is when the device last started or reported progress; the
	// device timeout runs from it.
	Progress time.Time `json:"progress,omitzero"`
	Reason   string    `json:"reason,omitempty"`
	// ActiveRollout is the ID of another active rollout the device is in
	// when it joins this one; such a device is skipped.
	ActiveRollout string `json:"active_rollout,omitempty"`
}

// RolloutSkipSuspended is the reason a rollout records for a suspended
// device it skips: only a rollout of a remediation release (see Release)
// updates a suspended device.
const RolloutSkipSuspended = "suspended: only remediation updates"

// RolloutCandidate is a device of a rollout's target as the store finds it:
// deployed, of the release's model and hardware revisions, matching the
// target.
type RolloutCandidate struct {
	Serial string
	Labels map[string]string
	// ActiveRollout is the ID of another active rollout the device is in,
	// or "".
	ActiveRollout string
	// SkipReason, when not empty, says why the store keeps the device out
	// of the rollout although it matches the target (a suspended device
	// and a release that is not a remediation): the device is recorded
	// as skipped with this reason.
	SkipReason string
}

// RolloutFilter selects rollouts.
type RolloutFilter struct {
	State     *RolloutState
	ReleaseID string
	// Limit: 0 means DefaultPageSize; at most MaxPageSize. Newest first.
	Limit int
}

// RolloutDeviceFilter selects a rollout's device records, in the
// rollout's order.
type RolloutDeviceFilter struct {
	State *DeviceUpdateState
	Phase *int
	// After is the serial after which to continue (paging); Limit: 0
	// means DefaultPageSize; at most MaxPageSize.
	After string
	Limit int
}

// RolloutService is the operator's view of rollouts. Every change runs the
// engine (internal/rollout) on the stored records in one transaction that
// bumps the rollout's revision, so a scheduler holding an older copy
// notices and reloads.
type RolloutService interface {
	// CreateRollout checks the spec, the release (signed, not deprecated
	// or yanked, of the tenant) and the target (see the conflict rule; a
	// device of another model or hardware revision than the release's is
	// refused in an explicit list and left out of a selector's target),
	// then starts the rollout: its devices placed in phases, all in one
	// transaction. Needs PermRolloutWrite. EINVALID (spec, empty target,
	// release not signed), ENOTFOUND (release), ECONFLICT (devices in
	// another active rollout). Nothing is stored on error.
	CreateRollout(ctx context.Context, spec RolloutSpec) (*Rollout, error)
	// FindRollout returns a rollout with its live status. Needs
	// PermRolloutRead. ENOTFOUND.
	FindRollout(ctx context.Context, id string) (*Rollout, error)
	// FindRollouts lists rollouts, newest first. Needs PermRolloutRead.
	FindRollouts(ctx context.Context, f RolloutFilter) ([]*Rollout, error)
	// FindRolloutDevices lists a rollout's device records. Needs
	// PermRolloutRead.
	FindRolloutDevices(ctx context.Context, id string, f RolloutDeviceFilter) ([]*RolloutDevice, error)
	// PauseRollout, ResumeRollout, AbortRollout and ApproveRollout apply
	// an operator's decision (see the engine's rules). Needs
	// PermRolloutWrite. ENOTFOUND, ECONFLICT for a rollout in the wrong
	// state, EINVALID for a phase that needs no approval.
	PauseRollout(ctx context.Context, id, reason string) (*Rollout, error)
	ResumeRollout(ctx context.Context, id string) (*Rollout, error)
	AbortRollout(ctx context.Context, id, reason string) (*Rollout, error)
	ApproveRollout(ctx context.Context, id string, phase int) (*Rollout, error)
}

// Lease is a named, expiring right to do one job (drive the rollouts,
// publish a tenant's TUF repository) that one server replica holds at a
// time. Fence grows every time the lease changes hands; a fenced write
// checks, in its own transaction, that the lease still has this fence and
// holder, so a replica that lost its lease (paused, partitioned) cannot
// overwrite the work of the one that took it over.
type Lease struct {
	Name    string
	Holder  string
	Fence   int64
	Expires time.Time
}

// LeaseStore hands out leases. Holders are unique per process (host, pid
// and a random part).
type LeaseStore interface {
	// AcquireLease takes the lease name for ttl when it is free, expired
	// or already the holder's (then it is renewed, same fence). ok is
	// false when another holder has it.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (l Lease, ok bool, err error)
	// RenewLease extends a held lease; ok is false when it was lost
	// (another holder, or a new fence).
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, bool, error)
	// ReleaseLease gives a held lease up (expires it now); a lost lease is
	// left alone.
	ReleaseLease(ctx context.Context, l Lease) error
}

// RolloutRef names a rollout for the scheduler.
type RolloutRef struct {
	TenantID int64
	ID       string
	Revision int64
}

// RolloutEvent is a device's report queued for the engine, in the order
// received (Seq).
type RolloutEvent struct {
	Seq     int64
	Serial  string
	Kind    string // an internal/rollout EventKind
	Attempt int
	Reason  string
	At      time.Time
}

// RolloutSave is what one scheduler step writes: the rollout's new status,
// the device records that changed, and the events it consumed (deleted by
// their Seq: a report whose Seq is lower but that committed after the step
// read the queue is not among them, and stays for the next step).
type RolloutSave struct {
	TenantID int64
	ID       string
	Revision int64 // the revision the step started from
	Rollout  Rollout
	Changes  []RolloutDevice
	Events   []int64
}

// RolloutStore is what the scheduler needs, across tenants. It is used
// with the system role.
type RolloutStore interface {
	LeaseStore
	// ActiveRollouts lists the running and paused rollouts of every
	// tenant with their revisions, and the aborted ones with devices
	// still in flight (updates started before the abort, which report or
	// time out) or with queued events.
	ActiveRollouts(ctx context.Context) ([]RolloutRef, error)
	// LoadRollout returns a rollout, its device records in the order the
	// engine's Load expects, and its revision.
	LoadRollout(ctx context.Context, tenantID int64, id string) (Rollout, []RolloutDevice, int64, error)
	// RolloutEvents returns up to limit queued events of a rollout with
	// Seq > after, oldest first.
	RolloutEvents(ctx context.Context, tenantID int64, id string, after int64, limit int) ([]RolloutEvent, error)
	// RolloutJoiners returns the devices that match a dynamic rollout's
	// target now and are not in it, as candidates.
	RolloutJoiners(ctx context.Context, tenantID int64, id string) ([]RolloutCandidate, error)
	// SaveRollout writes a step if lease still holds (fence and holder)
	// and the rollout is still at s.Revision; then it returns the new
	// revision and ok. ok is false, and nothing is written, when the
	// lease or the revision moved on: the caller reloads.
	SaveRollout(ctx context.Context, lease Lease, s RolloutSave) (revision int64, ok bool, err error)
}
