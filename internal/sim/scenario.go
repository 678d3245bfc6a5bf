package sim

import (
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// Scenario names what the devices do during Fleet.Run.
type Scenario string

// The scenarios.
const (
	// Steady: every device stays connected and reports telemetry every
	// interval.
	Steady Scenario = "steady"
	// Churn: as Steady, and every minute a share of the devices
	// (RunConfig.ChurnRate) loses its connection at a random moment of the
	// minute and gets it back one to five seconds later (and at least
	// five seconds before the end of the run).
	Churn Scenario = "churn"
	// Offline: as Steady, and a share of the devices
	// (RunConfig.OfflineShare) is offline for RunConfig.OfflineFor from a
	// third of the run: their telemetry is spooled, and flushed when they
	// are back.
	Offline Scenario = "offline"
)

// ParseScenario checks a scenario name.
func ParseScenario(s string) (Scenario, error) {
	switch sc := Scenario(s); sc {
	case Steady, Churn, Offline:
		return sc, nil
	}
	return "", fmt.Errorf("sim: unknown scenario %q: use steady, churn or offline", s)
}

// RunConfig configures Fleet.Run. Zero values have the defaults documented
// on their fields.
type RunConfig struct {
	Scenario Scenario // "" means Steady
	// Duration is how long the scenario runs; required.
	Duration time.Duration
	// Interval is each device's telemetry interval; 0 means 10 s.
	Interval time.Duration
	// ChurnRate is Churn's share of the devices disconnected each minute,
	// in [0, 1]; 0 means 0.1.
	ChurnRate float64
	// OfflineShare is Offline's share of the devices taken offline, in
	// [0, 1]; 0 means 0.2. OfflineFor is how long, less than two thirds
	// of Duration (they are back before the end); 0 means a third of
	// Duration.
	OfflineShare float64
	OfflineFor   time.Duration
	// Seed seeds the scenario's random choices (which devices, when); 0
	// means a random seed.
	Seed uint64
	// Progress receives a line redrawn every second; nil discards it.
	Progress io.Writer
	// Done, when not nil, ends the run before Duration when it is closed.
	Done <-chan struct{}
}

func (c RunConfig) withDefaults() (RunConfig, error) {
	if c.Scenario == "" {
		c.Scenario = Steady
	}
	if _, err := ParseScenario(string(c.Scenario)); err != nil {
		return c, err
	}
	if c.Duration <= 0 {
		return c, fmt.Errorf("sim: duration %s: give how long the scenario runs", c.Duration)
	}
	if c.Interval == 0 {
		c.Interval = 10 * time.Second
	}
	if c.Interval < 10*time.Millisecond {
		return c, fmt.Errorf("sim: telemetry interval %s is below 10ms", c.Interval)
	}
	if c.ChurnRate == 0 {
		c.ChurnRate = 0.1
	}
	if c.OfflineShare == 0 {
		c.OfflineShare = 0.2
	}
	if c.ChurnRate < 0 || c.ChurnRate > 1 {
		return c, fmt.Errorf("sim: churn rate %g is not a share between 0 and 1", c.ChurnRate)
	}
	if c.OfflineShare < 0 || c.OfflineShare > 1 {
		return c, fmt.Errorf("sim: offline share %g is not a share between 0 and 1", c.OfflineShare)
	}
	if c.OfflineFor == 0 {
		c.OfflineFor = c.Duration / 3
	}
	if c.OfflineFor < 0 || c.Duration/3+c.OfflineFor >= c.Duration {
		return c, fmt.Errorf("sim: offline for %s: devices go offline at a third of the run (%s) and must be back before its end", c.OfflineFor, c.Duration)
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return c, nil
}

// churnMargin is how long before the end of a run a churned device is
// back at the latest.
const churnMargin = 5 * time.Second

// window is a period, from the start of the run, when a device's link is
// down.
type window struct{ from, to time.Duration }

// plan returns each of n devices' offline windows under c (sorted, not
// overlapping).
func plan(c RunConfig, n int) [][]window {
	r := rand.New(rand.NewPCG(c.Seed, 0x5157))
	out := make([][]window, n)
	switch c.Scenario {
	case Churn:
		for m := time.Duration(0); m < c.Duration; m += time.Minute {
			for i := range out {
				if r.Float64() >= c.ChurnRate {
					continue
				}
				from := m + time.Duration(r.Int64N(int64(time.Minute)))
				to := from + time.Second + time.Duration(r.Int64N(int64(4*time.Second)))
				// Every device is back in time to reconnect before the
				// end of the run.
				if to+churnMargin > c.Duration || (len(out[i]) > 0 && from <= out[i][len(out[i])-1].to) {
					continue
				}
				out[i] = append(out[i], window{from, to})
			}
		}
	case Offline:
		k := int(c.OfflineShare*float64(n) + 0.5)
		from := c.Duration / 3
		to := from + c.OfflineFor
		for _, i := range r.Perm(n)[:k] {
			out[i] = []window{{from, to}}
		}
	}
	return out
}
