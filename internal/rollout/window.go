package rollout

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	"cradle"

	"github.com/robfig/cron/v3"
)

// Window is a compiled maintenance window.
type Window struct {
	spec     cradle.MaintenanceWindow
	schedule cron.Schedule
	loc      *time.Location
	dur      time.Duration
}

// windowParser reads five-field cron expressions and descriptors (@daily).
var windowParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// windowProbe is where ParseWindow looks for a first opening: any fixed
// time works, since a schedule that matches nothing in five years (robfig's
// search horizon) matches nothing ever.
var windowProbe = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// ParseWindow compiles a window. The error is EINVALID and says what was
// wrong: a cron expression that does not parse, names its own time zone
// (use time_zone), repeats by interval (@every), or never matches; a
// duration not in (0, 7 days]; an unknown time zone.
func ParseWindow(w cradle.MaintenanceWindow) (*Window, error) {
	expr := strings.TrimSpace(w.Cron)
	switch {
	case expr == "":
		return nil, cradle.Errorf(cradle.EINVALID, "window cron expression is empty: give five fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\"")
	case len(expr) > 256:
		return nil, cradle.Errorf(cradle.EINVALID, "window cron expression is longer than 256 characters")
	case strings.Contains(expr, "TZ="):
		return nil, cradle.Errorf(cradle.EINVALID, "window cron %q names a time zone: put it in time_zone instead", expr)
	case strings.HasPrefix(expr, "@every"):
		return nil, cradle.Errorf(cradle.EINVALID, "window cron %q repeats by interval: give a cron expression or @hourly, @daily, @weekly, @monthly", expr)
	}
	if w.Duration <= 0 || time.Duration(w.Duration) > 7*24*time.Hour {
		return nil, cradle.Errorf(cradle.EINVALID, "window duration %v is out of range: give more than 0 and at most 168h", time.Duration(w.Duration))
	}
	loc, err := cradle.LoadTimeZone(w.TimeZone)
	if err != nil {
		return nil, err
	}
	sched, err := windowParser.Parse(expr)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid window cron %q: %v; give five fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\"", expr, err)
	}
	if sched.Next(windowProbe).IsZero() {
		return nil, cradle.Errorf(cradle.EINVALID, "window cron %q never matches a date", expr)
	}
	return &Window{spec: w, schedule: sched, loc: loc, dur: time.Duration(w.Duration)}, nil
}

// OpenAt reports whether the window is open at t read in loc: whether it
// opened at some time f with f ≤ t < f+duration. A nil loc means the
// window's own zone.
func (w *Window) OpenAt(t time.Time, loc *time.Location) bool {
	if loc == nil {
		loc = w.loc
	}
	// Next returns the first opening strictly after its argument, at whole
	// seconds. Openings after t-duration that are not after t are open now.
	f := w.schedule.Next(t.Add(-w.dur).In(loc))
	return !f.IsZero() && !f.After(t)
}

// DeviceLocal reports whether the window is read in each device's zone.
func (w *Window) DeviceLocal() bool { return w.spec.DeviceLocal }

// Location is the window's own zone.
func (w *Window) Location() *time.Location { return w.loc }

// ParseSpec reads a rollout spec from JSON: unknown fields are refused, and
// the spec must pass RolloutSpec.Validate and every window ParseWindow.
func ParseSpec(data []byte) (*cradle.RolloutSpec, error) {
	if len(data) > cradle.MaxRolloutSpecSize {
		return nil, cradle.Errorf(cradle.EINVALID, "rollout spec is %d bytes: at most %d", len(data), cradle.MaxRolloutSpecSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var spec cradle.RolloutSpec
	if err := dec.Decode(&spec); err != nil {
		if cradle.ErrorCode(err) == cradle.EINVALID {
			return nil, err
		}
		return nil, cradle.Errorf(cradle.EINVALID, "invalid rollout spec: %v", err)
	}
	if dec.More() {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid rollout spec: data after the JSON object")
	}
	if err := ValidateSpec(&spec); err != nil {
		return nil, err
	}
	return &spec, nil
}

// ValidateSpec checks a spec: RolloutSpec.Validate and the cron syntax of
// its windows.
func ValidateSpec(spec *cradle.RolloutSpec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	_, err := compileWindows(spec.Windows)
	return err
}

func compileWindows(ws []cradle.MaintenanceWindow) ([]*Window, error) {
	out := make([]*Window, 0, len(ws))
	for i, w := range ws {
		c, err := ParseWindow(w)
		if err != nil {
			return nil, cradle.Errorf(cradle.EINVALID, "windows[%d]: %s", i, cradle.ErrorMessage(err))
		}
		out = append(out, c)
	}
	return out, nil
}
