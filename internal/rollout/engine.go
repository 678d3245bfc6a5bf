package rollout

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"cradle"
)

// Candidate is a device of a rollout's target as the store finds it.
type Candidate = cradle.RolloutCandidate

// Start is one device the caller must now tell to update.
type Start struct {
	Serial  string
	Phase   int
	Attempt int
}

// Plan is what one planning step decided: the devices to start. Every
// other change (timeouts, retries, phase and rollout state) is in the
// engine's records: Rollout and Changes.
type Plan struct {
	Start []Start
}

// EventKind is what a device reported.
type EventKind string

// Event kinds. Downloading and Installing are progress and restart the
// device timeout; Succeeded ends the device's update; Failed and TimedOut
// (the device gave up waiting) end the attempt, which is retried while
// retries are left. Joined adds a device to a dynamic rollout's target.
const (
	EventDownloading EventKind = "downloading"
	EventInstalling  EventKind = "installing"
	EventSucceeded   EventKind = "succeeded"
	EventFailed      EventKind = "failed"
	EventTimedOut    EventKind = "timeout"
	EventJoined      EventKind = "joined"
)

// Event is one report about a device.
type Event struct {
	Kind   EventKind
	Serial string
	// Attempt is the attempt the report is about; 0 means the current one.
	// A report about an older attempt is stale and refused.
	Attempt int
	Reason  string
	// Labels and ActiveRollout describe a device that joined (EventJoined).
	Labels        map[string]string
	ActiveRollout string
}

// Options configure an Engine. The zero value uses the system clock.
type Options struct {
	Clock cradle.Clock
}

// Engine runs one rollout in memory.
type Engine struct {
	r       cradle.Rollout
	clock   cradle.Clock
	windows []*Window
	local   bool // some window is device-local
	sel     *cradle.LabelSelector

	devs    []cradle.RolloutDevice
	index   map[string]int32
	pending [][]int32          // per phase, in start order
	flying  map[int32]struct{} // devices started, downloading or installing
	dirty   []int32
	isDirty []bool

	zones map[string]*time.Location // tz label → zone; nil for an invalid label
}

// New makes a draft rollout. It validates spec (ValidateSpec).
func New(id string, spec cradle.RolloutSpec, opt Options) (*Engine, error) {
	if strings.TrimSpace(id) == "" {
		return nil, cradle.Errorf(cradle.EINVALID, "rollout id is required")
	}
	e := &Engine{r: cradle.Rollout{ID: id, RolloutSpec: spec}, clock: opt.Clock}
	if err := e.compile(); err != nil {
		return nil, err
	}
	e.r.Status = cradle.RolloutStatus{State: cradle.RolloutDraft, UpdatedAt: e.now()}
	for i, p := range spec.Phases {
		e.r.Status.Phases = append(e.r.Status.Phases, cradle.PhaseStatus{Name: phaseName(i, p), State: cradle.PhasePending})
	}
	e.reset(0)
	return e, nil
}

// Load rebuilds an engine from records that Rollout and Devices (or
// Changes) returned earlier, for example after a restart. The devices must
// be in the order Devices returned them.
func Load(r cradle.Rollout, devices []cradle.RolloutDevice, opt Options) (*Engine, error) {
	e := &Engine{r: r, clock: opt.Clock}
	if err := e.compile(); err != nil {
		return nil, err
	}
	if len(r.Status.Phases) != len(r.Phases) {
		return nil, cradle.Errorf(cradle.EINVALID, "rollout %s: status has %d phases, spec %d", r.ID, len(r.Status.Phases), len(r.Phases))
	}
	e.r.Status.Phases = slices.Clone(r.Status.Phases)
	e.r.Status.RecentStarts = slices.Clone(r.Status.RecentStarts)
	e.reset(len(devices))
	for i := range e.r.Status.Phases {
		p := &e.r.Status.Phases[i]
		p.Devices, p.Pending, p.Downloading, p.Installing, p.Succeeded, p.Failed = 0, 0, 0, 0, 0, 0
	}
	e.r.Status.Devices, e.r.Status.Skipped = 0, 0
	for _, d := range devices {
		if _, dup := e.index[d.Serial]; dup {
			return nil, cradle.Errorf(cradle.EINVALID, "rollout %s: device %q listed twice", r.ID, d.Serial)
		}
		if d.State != cradle.DeviceSkipped && (d.Phase < 0 || d.Phase >= len(r.Phases)) {
			return nil, cradle.Errorf(cradle.EINVALID, "rollout %s: device %q in phase %d of %d", r.ID, d.Serial, d.Phase, len(r.Phases))
		}
		e.add(d)
	}
	return e, nil
}

func (e *Engine) compile() error {
	if err := e.r.RolloutSpec.Validate(); err != nil {
		return err
	}
	ws, err := compileWindows(e.r.Windows)
	if err != nil {
		return err
	}
	e.windows = ws
	for _, w := range ws {
		e.local = e.local || w.DeviceLocal()
	}
	if e.r.Target.Selector != "" {
		sel, err := cradle.ParseLabelSelector(e.r.Target.Selector)
		if err != nil {
			return err
		}
		e.sel = sel
	}
	return nil
}

func (e *Engine) reset(n int) {
	e.devs = make([]cradle.RolloutDevice, 0, n)
	e.index = make(map[string]int32, n)
	e.pending = make([][]int32, len(e.r.Phases))
	e.flying = map[int32]struct{}{}
	e.isDirty = make([]bool, 0, n)
	e.zones = map[string]*time.Location{}
}

func phaseName(i int, p cradle.RolloutPhase) string {
	switch {
	case p.Name != "":
		return p.Name
	case i == 0 && p.Count > 0:
		return fmt.Sprintf("canary (%d)", p.Count)
	}
	return fmt.Sprintf("%v%%", p.Percent)
}

func (e *Engine) now() time.Time { return cradle.Now(e.clock) }

// add appends a device record and counts it.
func (e *Engine) add(d cradle.RolloutDevice) int32 {
	i := int32(len(e.devs))
	e.devs = append(e.devs, d)
	e.isDirty = append(e.isDirty, false)
	e.index[d.Serial] = i
	e.r.Status.Devices++
	if d.State == cradle.DeviceSkipped {
		e.r.Status.Skipped++
		return i
	}
	e.r.Status.Phases[d.Phase].Devices++
	e.count(d.Phase, d.State, +1)
	switch {
	case d.State == cradle.DevicePending:
		e.pending[d.Phase] = append(e.pending[d.Phase], i)
	case d.State.InFlight():
		e.flying[i] = struct{}{}
	}
	return i
}

func (e *Engine) count(phase int, s cradle.DeviceUpdateState, n int) {
	p := &e.r.Status.Phases[phase]
	switch s {
	case cradle.DevicePending:
		p.Pending += n
	case cradle.DeviceStarted, cradle.DeviceDownloading:
		p.Downloading += n
	case cradle.DeviceInstalling:
		p.Installing += n
	case cradle.DeviceSucceeded:
		p.Succeeded += n
	case cradle.DeviceFailed:
		p.Failed += n
	}
}

// set moves device i to state s and marks it changed.
func (e *Engine) set(i int32, s cradle.DeviceUpdateState, reason string) {
	d := &e.devs[i]
	if d.State != cradle.DeviceSkipped {
		e.count(d.Phase, d.State, -1)
		e.count(d.Phase, s, +1)
	}
	d.State, d.Reason = s, reason
	if s.InFlight() {
		e.flying[i] = struct{}{}
	} else {
		delete(e.flying, i)
	}
	e.touch(i)
}

func (e *Engine) touch(i int32) {
	if !e.isDirty[i] {
		e.isDirty[i] = true
		e.dirty = append(e.dirty, i)
	}
}

// CheckTarget applies the conflict rule and refuses an empty target: for
// an explicit serial list, every serial must be among the candidates and
// none may be in another active rollout (ECONFLICT naming them) unless it
// is skipped for a reason of the store's anyway; for a
// selector, every candidate must match it. Errors are EINVALID unless said.
func CheckTarget(spec *cradle.RolloutSpec, target []Candidate) error {
	if len(target) == 0 {
		return cradle.Errorf(cradle.EINVALID, "the rollout's target has no devices: check the selector or the serials")
	}
	if len(spec.Target.Serials) > 0 {
		found := make(map[string]bool, len(target))
		var busy []string
		for _, c := range target {
			found[c.Serial] = true
			if c.ActiveRollout != "" && c.SkipReason == "" {
				busy = append(busy, fmt.Sprintf("%s (rollout %s)", c.Serial, c.ActiveRollout))
			}
		}
		for _, s := range spec.Target.Serials {
			if !found[s] {
				return cradle.Errorf(cradle.EINVALID, "target.serials: no device %q", s)
			}
		}
		if len(found) != len(spec.Target.Serials) {
			return cradle.Errorf(cradle.EINVALID, "the target has %d devices but the serial list %d", len(found), len(spec.Target.Serials))
		}
		if len(busy) > 0 {
			more := ""
			if len(busy) > 10 {
				more = fmt.Sprintf(" and %d more", len(busy)-10)
				busy = busy[:10]
			}
			return cradle.Errorf(cradle.ECONFLICT, "%s%s already in an active rollout: a device is in at most one; abort that rollout or leave these devices out", strings.Join(busy, ", "), more)
		}
		return nil
	}
	sel, err := cradle.ParseLabelSelector(spec.Target.Selector)
	if err != nil {
		return err
	}
	for _, c := range target {
		if !sel.Matches(c.Labels) {
			return cradle.Errorf(cradle.EINVALID, "device %q does not match the target selector %q", c.Serial, spec.Target.Selector)
		}
	}
	return nil
}

// Begin starts a draft rollout over its target (see CheckTarget): it puts
// every device in a phase, or skips it when the store gave a skip reason
// or it is in another active rollout. Devices of an explicit list keep the list's order, so the first
// ones listed are the canaries; a selector's devices are shuffled by a hash
// of the rollout ID and the serial, so canaries spread over the fleet and
// the order is the same on every server. Then it plans (see Plan).
func (e *Engine) Begin(target []Candidate) (Plan, error) {
	if e.r.Status.State != cradle.RolloutDraft {
		return Plan{}, cradle.Errorf(cradle.ECONFLICT, "rollout %s is %s: only a draft can start", e.r.ID, e.r.Status.State)
	}
	if err := CheckTarget(&e.r.RolloutSpec, target); err != nil {
		return Plan{}, err
	}
	order := make([]int, len(target))
	for i := range order {
		order[i] = i
	}
	seen := make(map[string]bool, len(target))
	for _, c := range target {
		if seen[c.Serial] {
			return Plan{}, cradle.Errorf(cradle.EINVALID, "the target lists device %q twice", c.Serial)
		}
		seen[c.Serial] = true
	}
	if len(e.r.Target.Serials) > 0 {
		pos := make(map[string]int, len(e.r.Target.Serials))
		for i, s := range e.r.Target.Serials {
			pos[s] = i
		}
		slices.SortFunc(order, func(a, b int) int { return cmp.Compare(pos[target[a].Serial], pos[target[b].Serial]) })
	} else {
		keys := make([]uint64, len(target))
		for i, c := range target {
			h := fnv.New64a()
			h.Write([]byte(e.r.ID))
			h.Write([]byte{0})
			h.Write([]byte(c.Serial))
			keys[i] = h.Sum64()
		}
		slices.SortFunc(order, func(a, b int) int {
			if c := cmp.Compare(keys[a], keys[b]); c != 0 {
				return c
			}
			return strings.Compare(target[a].Serial, target[b].Serial)
		})
	}
	eligible := 0
	for _, c := range target {
		if c.ActiveRollout == "" && c.SkipReason == "" {
			eligible++
		}
	}
	e.reset(len(target))
	phase, placed := 0, 0
	for _, k := range order {
		c := target[k]
		d := cradle.RolloutDevice{Serial: c.Serial, Labels: c.Labels, State: cradle.DevicePending, ActiveRollout: c.ActiveRollout}
		switch {
		case c.SkipReason != "":
			d.State, d.Phase, d.Reason = cradle.DeviceSkipped, -1, c.SkipReason
		case c.ActiveRollout != "":
			d.State, d.Phase = cradle.DeviceSkipped, -1
			d.Reason = fmt.Sprintf("in active rollout %s", c.ActiveRollout)
		default:
			for placed >= cradle.PhaseSize(e.r.Phases, phase, eligible) && phase < len(e.r.Phases)-1 {
				phase++
			}
			d.Phase = phase
			placed++
		}
		e.touch(e.add(d))
	}
	now := e.now()
	e.r.Status.State = cradle.RolloutRunning
	e.r.Status.StartedAt, e.r.Status.UpdatedAt = now, now
	e.r.Status.Phase = 0
	return e.Plan(), nil
}

// Event applies a device's report. It returns ENOTFOUND for a device not
// in the rollout, ECONFLICT for a report that does not fit the device's
// state (a stale attempt, progress after the end), EINVALID for an unknown
// kind. Failures past the threshold pause or abort the rollout at once.
func (e *Engine) Event(ev Event) error {
	if e.r.Status.State == cradle.RolloutDraft {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s has not started", e.r.ID)
	}
	if ev.Kind == EventJoined {
		return e.join(ev)
	}
	i, ok := e.index[ev.Serial]
	if !ok {
		return cradle.Errorf(cradle.ENOTFOUND, "device %q is not in rollout %s", ev.Serial, e.r.ID)
	}
	d := &e.devs[i]
	if ev.Attempt != 0 && ev.Attempt != d.Attempt {
		return cradle.Errorf(cradle.ECONFLICT, "device %q reported on attempt %d, but attempt %d is current", ev.Serial, ev.Attempt, d.Attempt)
	}
	if !d.State.InFlight() {
		return cradle.Errorf(cradle.ECONFLICT, "device %q is %s in rollout %s: a %s report does not apply", ev.Serial, d.State, e.r.ID, ev.Kind)
	}
	now := e.now()
	switch ev.Kind {
	case EventDownloading:
		if d.State == cradle.DeviceInstalling {
			return cradle.Errorf(cradle.ECONFLICT, "device %q is installing: it cannot go back to downloading", ev.Serial)
		}
		d.Progress = now
		e.set(i, cradle.DeviceDownloading, "")
	case EventInstalling:
		d.Progress = now
		e.set(i, cradle.DeviceInstalling, "")
	case EventSucceeded:
		d.Progress = now
		e.set(i, cradle.DeviceSucceeded, "")
	case EventFailed, EventTimedOut:
		reason := ev.Reason
		if reason == "" {
			reason = string(ev.Kind)
		}
		e.attemptFailed(i, reason)
	default:
		return cradle.Errorf(cradle.EINVALID, "unknown event kind %q", ev.Kind)
	}
	e.r.Status.UpdatedAt = now
	return nil
}

// attemptFailed ends device i's attempt: a retry while retries are left
// and the rollout may still start devices, a final failure otherwise.
func (e *Engine) attemptFailed(i int32, reason string) {
	d := &e.devs[i]
	d.Progress = e.now()
	st := e.r.Status.State
	if d.Attempt <= e.r.Retries && st.Active() {
		e.set(i, cradle.DevicePending, fmt.Sprintf("attempt %d: %s", d.Attempt, reason))
		e.pending[d.Phase] = append(e.pending[d.Phase], i)
		return
	}
	e.set(i, cradle.DeviceFailed, fmt.Sprintf("attempt %d: %s", d.Attempt, reason))
	if !st.Active() {
		return
	}
	e.r.Status.Failures++
	if limit := e.r.FailureThreshold.Limit(e.r.Status.Devices - e.r.Status.Skipped); e.r.Status.Failures >= limit {
		why := fmt.Sprintf("failure threshold reached: %d devices failed (threshold %d)", e.r.Status.Failures, limit)
		if e.r.FailureThreshold.Action == cradle.FailureAbort {
			e.r.Status.State, e.r.Status.Reason = cradle.RolloutAborted, why
		} else if st == cradle.RolloutRunning {
			e.r.Status.State, e.r.Status.Reason = cradle.RolloutPaused, why
		}
	}
}

// join adds a device to a dynamic rollout: to the current phase while it
// has not finished, else to the next one, else to the last one, which then
// runs again.
func (e *Engine) join(ev Event) error {
	if !e.r.Dynamic {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s is not dynamic: devices do not join it", e.r.ID)
	}
	if !e.r.Status.State.Active() {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s is %s: devices no longer join it", e.r.ID, e.r.Status.State)
	}
	if err := cradle.ValidateLabels(ev.Labels); err != nil {
		return err
	}
	if _, ok := e.index[ev.Serial]; ok {
		return nil // already in: joining again changes nothing
	}
	if !e.sel.Matches(ev.Labels) {
		return cradle.Errorf(cradle.EINVALID, "device %q does not match the target selector %q", ev.Serial, e.r.Target.Selector)
	}
	d := cradle.RolloutDevice{Serial: ev.Serial, Labels: ev.Labels, State: cradle.DevicePending, ActiveRollout: ev.ActiveRollout}
	if ev.ActiveRollout != "" {
		d.State, d.Phase, d.Reason = cradle.DeviceSkipped, -1, fmt.Sprintf("in active rollout %s", ev.ActiveRollout)
		e.touch(e.add(d))
		return nil
	}
	cur := e.r.Status.Phase
	last := len(e.r.Phases) - 1
	switch ps := &e.r.Status.Phases[cur]; {
	case ps.State == cradle.PhasePending || ps.State == cradle.PhaseAwaiting || ps.State == cradle.PhaseRunning:
		d.Phase = cur
	case cur < last:
		d.Phase = cur + 1
	default:
		d.Phase = last
		ps.State, ps.SoakUntil = cradle.PhaseRunning, time.Time{}
	}
	e.touch(e.add(d))
	e.r.Status.UpdatedAt = e.now()
	return nil
}

// Plan is one planning step: it fails attempts whose device has not
// reported for the device timeout, moves phases on (soak, approval, success
// threshold), completes the rollout, and starts devices of the current
// phase while the rate limit, the concurrency cap and the windows allow.
// Only a running rollout starts devices.
func (e *Engine) Plan() Plan {
	var p Plan
	if e.r.Status.State == cradle.RolloutDraft {
		return p
	}
	now := e.now()
	e.timeouts(now)
	if e.r.Status.State != cradle.RolloutRunning {
		return p
	}
	e.advance(now)
	if e.r.Status.State != cradle.RolloutRunning {
		return p
	}
	e.start(now, &p)
	if len(p.Start) > 0 {
		e.r.Status.UpdatedAt = now
	}
	return p
}

func (e *Engine) timeouts(now time.Time) {
	timeout := e.r.Timeout()
	var late []int32
	for i := range e.flying {
		if !now.Before(e.devs[i].Progress.Add(timeout)) {
			late = append(late, i)
		}
	}
	slices.Sort(late) // the same order on every run: thresholds trip on the same device
	for _, i := range late {
		e.attemptFailed(i, fmt.Sprintf("no report for %v", timeout))
	}
}

func (e *Engine) advance(now time.Time) {
	st := &e.r.Status
	for {
		ph := &st.Phases[st.Phase]
		switch ph.State {
		case cradle.PhasePending:
			if e.r.Phases[st.Phase].Approval && !ph.Approved {
				ph.State = cradle.PhaseAwaiting
				return
			}
			ph.State, ph.StartedAt = cradle.PhaseRunning, now
		case cradle.PhaseAwaiting:
			if !ph.Approved {
				return
			}
			ph.State, ph.StartedAt = cradle.PhaseRunning, now
		case cradle.PhaseRunning:
			if !ph.Done() {
				return
			}
			if done := ph.Succeeded + ph.Failed; done > 0 && !ph.Accepted && float64(ph.Succeeded)*100 < e.r.SuccessPercent()*float64(done) {
				st.State = cradle.RolloutPaused
				st.Reason = fmt.Sprintf("phase %s: %d of %d devices succeeded, below the success threshold of %v%%; resume to accept the phase", ph.Name, ph.Succeeded, done, e.r.SuccessPercent())
				return
			}
			ph.State, ph.FinishedAt = cradle.PhaseSoaking, now
			ph.SoakUntil = now.Add(time.Duration(e.r.Phases[st.Phase].Soak))
		case cradle.PhaseSoaking:
			if now.Before(ph.SoakUntil) {
				return
			}
			ph.State = cradle.PhaseCompleted
		case cradle.PhaseCompleted:
			if st.Phase < len(st.Phases)-1 {
				st.Phase++
				continue
			}
			if !e.r.Dynamic {
				st.State, st.Reason, st.UpdatedAt = cradle.RolloutCompleted, "every phase completed", now
			}
			return
		}
	}
}

func (e *Engine) start(now time.Time, p *Plan) {
	st := &e.r.Status
	ph := &st.Phases[st.Phase]
	if ph.State != cradle.PhaseRunning || ph.Pending == 0 {
		return
	}
	budget := len(e.pending[st.Phase])
	if e.r.RateLimit > 0 {
		cut := 0
		for cut < len(st.RecentStarts) && !now.Before(st.RecentStarts[cut].Add(time.Minute)) {
			cut++
		}
		st.RecentStarts = slices.Delete(st.RecentStarts, 0, cut)
		budget = min(budget, e.r.RateLimit-len(st.RecentStarts))
	}
	if e.r.MaxConcurrent > 0 {
		down := 0
		for i := range st.Phases {
			down += st.Phases[i].Downloading
		}
		budget = min(budget, e.r.MaxConcurrent-down)
	}
	if budget <= 0 {
		return
	}
	open := e.openFunc(now)
	if open == nil {
		return // no window open anywhere
	}
	q := e.pending[st.Phase]
	w, r := 0, 0
	for ; r < len(q) && budget > 0; r++ {
		i := q[r]
		d := &e.devs[i]
		if !open(d) {
			q[w] = i
			w++
			continue
		}
		d.Attempt++
		d.Progress = now
		e.set(i, cradle.DeviceStarted, "")
		p.Start = append(p.Start, Start{Serial: d.Serial, Phase: d.Phase, Attempt: d.Attempt})
		if e.r.RateLimit > 0 {
			st.RecentStarts = append(st.RecentStarts, now)
		}
		budget--
	}
	w += copy(q[w:], q[r:])
	e.pending[st.Phase] = q[:w]
}

// openFunc returns whether a device may start now as far as the windows
// go, or nil when no device may.
func (e *Engine) openFunc(now time.Time) func(*cradle.RolloutDevice) bool {
	always := func(*cradle.RolloutDevice) bool { return true }
	if len(e.windows) == 0 {
		return always
	}
	if !e.local {
		for _, w := range e.windows {
			if w.OpenAt(now, nil) {
				return always
			}
		}
		return nil
	}
	// Whether a window is open depends only on the device's zone: decide
	// once per zone.
	global := false
	for _, w := range e.windows {
		global = global || (!w.DeviceLocal() && w.OpenAt(now, nil))
	}
	if global {
		return always
	}
	byZone := map[*time.Location]bool{}
	return func(d *cradle.RolloutDevice) bool {
		loc := e.zone(d.Labels[cradle.RolloutTZLabel])
		open, ok := byZone[loc]
		if !ok {
			for _, w := range e.windows {
				if w.DeviceLocal() {
					l := loc
					if l == nil {
						l = w.Location()
					}
					open = open || w.OpenAt(now, l)
				}
			}
			byZone[loc] = open
		}
		return open
	}
}

// zone returns the zone a tz label names, or nil when it names none.
func (e *Engine) zone(name string) *time.Location {
	if name == "" {
		return nil
	}
	loc, ok := e.zones[name]
	if !ok {
		loc, _ = cradle.LoadTimeZone(name)
		e.zones[name] = loc
	}
	return loc
}

// Pause stops new starts; devices updating finish. ECONFLICT unless
// running.
func (e *Engine) Pause(reason string) error {
	if e.r.Status.State != cradle.RolloutRunning {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s is %s: only a running rollout can be paused", e.r.ID, e.r.Status.State)
	}
	if reason == "" {
		reason = "paused by an operator"
	}
	e.r.Status.State, e.r.Status.Reason, e.r.Status.UpdatedAt = cradle.RolloutPaused, reason, e.now()
	return nil
}

// Resume runs a paused rollout again. The failure count starts anew, and a
// phase that fell short of the success threshold is accepted. ECONFLICT
// unless paused.
func (e *Engine) Resume() error {
	st := &e.r.Status
	if st.State != cradle.RolloutPaused {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s is %s: only a paused rollout can be resumed", e.r.ID, st.State)
	}
	if ph := &st.Phases[st.Phase]; ph.State == cradle.PhaseRunning && ph.Done() {
		ph.Accepted = true
	}
	st.State, st.Reason, st.Failures, st.UpdatedAt = cradle.RolloutRunning, "", 0, e.now()
	return nil
}

// Abort ends the rollout for good: no device starts again; devices
// updating finish and their reports are still taken. ECONFLICT when it has
// already ended.
func (e *Engine) Abort(reason string) error {
	st := &e.r.Status
	if st.State == cradle.RolloutAborted || st.State == cradle.RolloutCompleted {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s is already %s", e.r.ID, st.State)
	}
	if reason == "" {
		reason = "aborted by an operator"
	}
	st.State, st.Reason, st.UpdatedAt = cradle.RolloutAborted, reason, e.now()
	return nil
}

// Approve lets phase start once the phases before it have completed.
// EINVALID for a phase that does not ask for approval, ECONFLICT when the
// rollout has ended or the phase has already started.
func (e *Engine) Approve(phase int) error {
	st := &e.r.Status
	if phase < 0 || phase >= len(e.r.Phases) {
		return cradle.Errorf(cradle.EINVALID, "rollout %s has no phase %d: phases are 0 to %d", e.r.ID, phase, len(e.r.Phases)-1)
	}
	if !e.r.Phases[phase].Approval {
		return cradle.Errorf(cradle.EINVALID, "phase %d of rollout %s does not ask for approval", phase, e.r.ID)
	}
	if st.State == cradle.RolloutAborted || st.State == cradle.RolloutCompleted {
		return cradle.Errorf(cradle.ECONFLICT, "rollout %s is %s", e.r.ID, st.State)
	}
	ph := &st.Phases[phase]
	if ph.State != cradle.PhasePending && ph.State != cradle.PhaseAwaiting {
		return cradle.Errorf(cradle.ECONFLICT, "phase %d of rollout %s is %s: approval comes before a phase starts", phase, e.r.ID, ph.State)
	}
	ph.Approved = true
	st.UpdatedAt = e.now()
	return nil
}

// Rollout returns the rollout and its status.
func (e *Engine) Rollout() cradle.Rollout {
	r := e.r
	r.Status.Phases = slices.Clone(r.Status.Phases)
	r.Status.RecentStarts = slices.Clone(r.Status.RecentStarts)
	return r
}

// Device returns one device's record.
func (e *Engine) Device(serial string) (cradle.RolloutDevice, bool) {
	i, ok := e.index[serial]
	if !ok {
		return cradle.RolloutDevice{}, false
	}
	return e.devs[i], true
}

// Devices returns every device record, in the order Load expects.
func (e *Engine) Devices() []cradle.RolloutDevice { return slices.Clone(e.devs) }

// Changes returns the device records changed since the last call, in
// their order, so a store writes only those.
func (e *Engine) Changes() []cradle.RolloutDevice {
	slices.Sort(e.dirty)
	out := make([]cradle.RolloutDevice, len(e.dirty))
	for k, i := range e.dirty {
		out[k] = e.devs[i]
		e.isDirty[i] = false
	}
	e.dirty = e.dirty[:0]
	return out
}
