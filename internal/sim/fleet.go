// Package sim runs a fleet of simulated devices in one process, for tests,
// benchmarks and demonstrations (cradle sim). It is wiring of real parts
// only: every device is a simulated unit (hw.SimDevice: its own key store,
// fuses, flash and factory partition in its own directory) run by the real
// agent code.
//
// # Parties and flow
//
// Provisioning goes through a real factory station (factory.Station, opened
// from an enrolled station directory): each unit gets a serial and MAC
// reserved from the server, its own device key created in its simulated
// key store, an IDevID from the manufacturing CA, the identity bundle in
// its factory partition, firmware and fuses, and a signed trace record
// that the server stores as it stores any station's (device created, IDevID
// recorded, unit provisioned). Nothing is recorded on the server by a
// short cut.
//
// Enrollment is the agent's: an agent.Identity per unit steps through EST
// simpleenroll with the IDevID and the confirmation with the new LDevID,
// with at most Options.Concurrency units in flight. The same Step drives
// renewals when the caller moves the clock (StepIdentities).
//
// The device channel (MQTT with the LDevID, telemetry, the twin) is the
// agent runtime's, one per unit; see Fleet.Run and the scenarios.
//
// # Layout
//
// A fleet directory holds one directory per unit, unit-NNNNN, with the
// simulated hardware in unit/ and the agent's state in state/. A fleet
// directory outlives the process: Open finds its units again, so a second
// run resumes with the same identities.
package sim

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/factory"
)

// Options configures a Fleet. The zero value of every field but ServerURL
// has the default documented on it.
type Options struct {
	// ServerURL is the device listener's base URL (https://host:8443),
	// where EST and the device HTTPS API live. Required.
	ServerURL string
	// MQTTAddr is the broker's host:port; "" means the host of ServerURL
	// and port 8883.
	MQTTAddr string
	// Concurrency bounds the units doing network work at once (enrolling,
	// connecting); 0 means 32.
	Concurrency int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the units' agent logs; nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = 32
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Device is one simulated unit of a fleet.
type Device struct {
	// Serial is the serial the station gave the unit.
	Serial string
	// Dir is the unit's directory in the fleet (unit/ and state/).
	Dir string
	// HW is the unit's simulated hardware.
	HW *hw.Device

	mu       sync.Mutex // serializes Identity, which is not safe for concurrent use
	identity *agent.Identity
}

// UnitDir and StateDir are the unit's hardware and agent state directories.
func (d *Device) UnitDir() string  { return filepath.Join(d.Dir, "unit") }
func (d *Device) StateDir() string { return filepath.Join(d.Dir, "state") }

// ConfigFile is where the unit's twin applier writes its running
// configuration (JSON) during Fleet.Run.
func (d *Device) ConfigFile() string { return filepath.Join(d.Dir, "unit", "config.json") }

// Identity returns the unit's agent identity. Callers other than the
// fleet must not use it while the fleet steps identities.
func (d *Device) Identity() *agent.Identity { return d.identity }

// Fleet is the simulated units of a fleet directory.
type Fleet struct {
	Dir     string
	Devices []*Device
	opts    Options
}

// ProvisionReport sums a provisioning run.
type ProvisionReport struct {
	Units   int           `json:"units"`
	OK      int           `json:"ok"`
	Failed  int           `json:"failed"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// Device is the time spent in the units' simulated hardware (key
	// generation, flash, fuses, each write synced), summed over the
	// stations; HSM the time signing.
	Device time.Duration `json:"device_ns"`
	HSM    time.Duration `json:"hsm_ns"`
	// Uploaded is the trace records the server stored; Pending those it
	// did not get (the station keeps them in its journal).
	Uploaded int `json:"uploaded"`
	Pending  int `json:"pending"`
}

// Provision creates simulated units in dir (created if missing; the units
// are numbered after those already there), as many as the line's batches
// hold, and runs them through the line's stations, in parallel. progress,
// when not nil, is called as units are taken by a station. It returns when
// every unit is provisioned and its record uploaded, or with the first
// station error; failed units are counted and their directories removed,
// so that Open never sees them.
func Provision(ctx context.Context, line *Line, dir string, progress func(done, total int)) (ProvisionReport, error) {
	var rep ProvisionReport
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return rep, fmt.Errorf("sim: %w", err)
	}
	first, err := nextIndex(dir)
	if err != nil {
		return rep, err
	}
	// The hardware UID is unique per unit across fleets: a random fleet
	// tag, then the unit's number.
	tag := make([]byte, 4)
	rand.Read(tag)
	uidPrefix := "SIM-" + strings.ToUpper(hex.EncodeToString(tag))
	total := 0
	for _, n := range line.Units {
		total += n
	}
	var (
		mu    sync.Mutex
		next  = first
		done  int
		errs  []error
		start = time.Now()
		wg    sync.WaitGroup
	)
	for k, st := range line.Stations {
		left := line.Units[k]
		units := func() (factory.Unit, bool, error) {
			if left == 0 {
				return factory.Unit{}, false, nil
			}
			left--
			mu.Lock()
			i := next
			next++
			done++
			if progress != nil {
				progress(done, total)
			}
			mu.Unlock()
			unitDir := filepath.Join(unitName(dir, i), "unit")
			dev, err := hw.CreateSimDevice(unitDir, fmt.Sprintf("%s-%05d", uidPrefix, i))
			if err != nil {
				return factory.Unit{Spec: unitDir}, true, err
			}
			return factory.Unit{Spec: unitDir, Device: dev}, true, nil
		}
		wg.Go(func() {
			stats, sync, err := st.Run(ctx, line.Batches[k], line.Release, units, nil)
			mu.Lock()
			defer mu.Unlock()
			rep.Units += stats.Units
			rep.OK += stats.OK
			rep.Failed += stats.Failed + stats.Skipped
			rep.Device += stats.Device
			rep.HSM += stats.HSM
			if sync != nil {
				rep.Uploaded += sync.Uploaded + sync.Known
				rep.Pending += sync.Pending
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("station %s: %w", st.Name(), err))
			}
		})
	}
	wg.Wait()
	rep.Elapsed = time.Since(start)
	// A unit that failed has no identity; drop it from the fleet.
	for j := first; j < next; j++ {
		d := unitName(dir, j)
		if _, ferr := provisionedSerial(ctx, filepath.Join(d, "unit")); ferr != nil {
			os.RemoveAll(d)
		}
	}
	return rep, errors.Join(errs...)
}

func unitName(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("unit-%05d", i)) }

// nextIndex returns the number after the highest unit in dir.
func nextIndex(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("sim: %w", err)
	}
	next := 0
	for _, e := range ents {
		var k int
		if _, err := fmt.Sscanf(e.Name(), "unit-%05d", &k); err == nil && k >= next {
			next = k + 1
		}
	}
	return next, nil
}

// provisionedSerial returns the serial in a unit's factory partition, or an
// error when the unit holds no identity bundle.
func provisionedSerial(ctx context.Context, unitDir string) (string, error) {
	dev, err := hw.OpenSimDevice(unitDir)
	if err != nil {
		return "", err
	}
	return serialOf(ctx, dev)
}

func serialOf(ctx context.Context, dev *hw.Device) (string, error) {
	files, _, err := dev.FactoryData.Read(ctx)
	if err != nil {
		return "", err
	}
	b, ok := files[agent.FactoryFileDeviceInfo]
	if !ok {
		return "", fmt.Errorf("sim: no %s in the factory partition: the unit was not provisioned", agent.FactoryFileDeviceInfo)
	}
	var info struct {
		Serial string `json:"serial"`
	}
	if err := json.Unmarshal(b, &info); err != nil || info.Serial == "" {
		return "", fmt.Errorf("sim: %s names no serial", agent.FactoryFileDeviceInfo)
	}
	return info.Serial, nil
}

// Open loads the provisioned units of a fleet directory and opens their
// agent identities (enrolled or not) at opts.Now. It fails on a unit
// directory it cannot read, and when dir holds no unit.
func Open(ctx context.Context, dir string, opts Options) (*Fleet, error) {
	if opts.ServerURL == "" {
		return nil, errors.New("sim: no server URL: give the device listener's https:// address")
	}
	opts = opts.withDefaults()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	f := &Fleet{Dir: dir, opts: opts}
	now := opts.Now()
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "unit-") {
			continue
		}
		d := &Device{Dir: filepath.Join(dir, e.Name())}
		if d.HW, err = hw.OpenSimDevice(d.UnitDir()); err != nil {
			return nil, fmt.Errorf("sim: %s: %w", e.Name(), err)
		}
		if d.Serial, err = serialOf(ctx, d.HW); err != nil {
			return nil, fmt.Errorf("sim: %s: %w", e.Name(), err)
		}
		d.identity, err = agent.OpenIdentity(agent.IdentityOptions{
			Device: d.HW, StateDir: d.StateDir(), ServerURL: opts.ServerURL,
			Logger: opts.Logger.With("serial", d.Serial),
			// A fleet that enrolls at once must not wait minutes between
			// attempts when the server is momentarily saturated.
			Backoff: agent.Backoff{Base: time.Second, Max: time.Minute},
		}, now)
		if err != nil {
			return nil, fmt.Errorf("sim: %s: %w", d.Serial, err)
		}
		f.Devices = append(f.Devices, d)
	}
	if len(f.Devices) == 0 {
		return nil, fmt.Errorf("sim: %s holds no provisioned unit: provision some first", dir)
	}
	slices.SortFunc(f.Devices, func(a, b *Device) int { return cmp.Compare(a.Dir, b.Dir) })
	return f, nil
}

// StepReport sums one StepIdentities.
type StepReport struct {
	// Stepped is the units whose identity was due; Enrolled those
	// enrolled afterwards (whether due or not); Failed the due ones whose
	// step failed.
	Stepped, Enrolled, Failed int
	// Latencies are the durations of the due units' successful steps, in
	// fleet order.
	Latencies []time.Duration
	// Errors are the failures, at most one per unit, "serial: error".
	Errors []string
	// Next is the earliest time a unit is due again.
	Next time.Time
}

// StepIdentities steps, at now, the identity of every unit due then
// (never stepped since Open, or whose last Step asked to be called again
// by now), with at most Options.Concurrency at once: enrollment of new
// units, renewal of due LDevIDs on an advanced clock.
func (f *Fleet) StepIdentities(ctx context.Context, now time.Time) StepReport {
	type result struct {
		i    int
		took time.Duration
		next time.Time
		err  error
	}
	work := make(chan int)
	results := make(chan result)
	var wg sync.WaitGroup
	for range min(f.opts.Concurrency, len(f.Devices)) {
		wg.Go(func() {
			for i := range work {
				d := f.Devices[i]
				d.mu.Lock()
				t := time.Now()
				next, err := d.identity.Step(ctx, now)
				took := time.Since(t)
				d.mu.Unlock()
				results <- result{i, took, next, err}
			}
		})
	}
	go func() {
		for i, d := range f.Devices {
			d.mu.Lock()
			st := d.identity.State()
			d.mu.Unlock()
			if !due(st, now) {
				continue
			}
			select {
			case work <- i:
			case <-ctx.Done():
			}
		}
		close(work)
		wg.Wait()
		close(results)
	}()
	var rep StepReport
	lat := map[int]time.Duration{}
	for r := range results {
		rep.Stepped++
		if r.err == nil {
			lat[r.i] = r.took
		}
		if r.err != nil {
			rep.Failed++
			rep.Errors = append(rep.Errors, f.Devices[r.i].Serial+": "+r.err.Error())
		}
	}
	for i, d := range f.Devices {
		if l, ok := lat[i]; ok {
			rep.Latencies = append(rep.Latencies, l)
		}
		st := d.identity.State()
		if st.Status == agent.StatusEnrolled {
			rep.Enrolled++
		}
		if n := nextDue(st); rep.Next.IsZero() || n.Before(rep.Next) {
			rep.Next = n
		}
	}
	return rep
}

// due reports whether a unit's identity has work at now: the same
// conditions as agent.Identity.Step's, so that units with nothing to do
// are not counted as stepped.
func due(st agent.State, now time.Time) bool {
	switch {
	case now.Before(st.HoldUntil), now.Before(st.NextAttempt):
		return false
	case st.Status != agent.StatusEnrolled:
		return true
	default:
		return !now.Before(st.RenewAt) || !now.Before(st.Current.NotAfter)
	}
}

// nextDue returns when a unit's identity has work next (see due).
func nextDue(st agent.State) time.Time {
	n := st.NextAttempt
	if st.HoldUntil.After(n) {
		n = st.HoldUntil
	}
	if st.Status == agent.StatusEnrolled && st.RenewAt.After(n) {
		n = st.RenewAt
	}
	return n
}

// EnrollReport sums Enroll.
type EnrollReport struct {
	Units    int           `json:"units"`
	Enrolled int           `json:"enrolled"`
	Failed   int           `json:"failed"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	// P50 and P99 are the percentiles of the enrollment latency of the
	// units enrolled by this call (a unit's enrollment: the EST exchange,
	// the new key, the state written, the confirmation).
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	// Errors are the units' last failed attempts, "serial: error" (a
	// unit enrolled at a retry keeps its earlier error here).
	Errors []string `json:"errors,omitempty"`
}

// Enroll enrolls every unit not enrolled yet, Options.Concurrency at a
// time, retrying a failed unit (after the agent's backoff, on the fleet's
// clock) until all are enrolled or ctx is done (give it a deadline: a
// server that refuses a unit for good is retried until then). Progress, when not nil, is
// called after each round with the units enrolled so far.
func (f *Fleet) Enroll(ctx context.Context, progress func(enrolled, total int)) EnrollReport {
	start := time.Now()
	rep := EnrollReport{Units: len(f.Devices)}
	var lats []time.Duration
	last := map[string]string{} // serial → its last error
	for {
		now := f.opts.Now()
		r := f.StepIdentities(ctx, now)
		lats = append(lats, r.Latencies...)
		rep.Enrolled = r.Enrolled
		for _, e := range r.Errors {
			serial, _, _ := strings.Cut(e, ": ")
			last[serial] = e
		}
		if progress != nil {
			progress(r.Enrolled, len(f.Devices))
		}
		if r.Enrolled == len(f.Devices) || ctx.Err() != nil {
			break
		}
		// Wait for the earliest retry, on the fleet's clock.
		wait := r.Next.Sub(now)
		if wait < 10*time.Millisecond {
			wait = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	rep.Failed = len(f.Devices) - rep.Enrolled
	rep.Elapsed = time.Since(start)
	for _, e := range last {
		rep.Errors = append(rep.Errors, e)
	}
	slices.Sort(rep.Errors)
	rep.P50, rep.P99 = Percentile(lats, 50), Percentile(lats, 99)
	return rep
}

// Percentile returns the p-th percentile (nearest rank) of ds, 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(k, len(s)-1))]
}

// Progress writes a one-line progress display to w, redrawn in place.
func Progress(w io.Writer, what string) func(done, total int) {
	return func(done, total int) {
		fmt.Fprintf(w, "\r\033[K%s %d/%d", what, done, total)
		if done == total {
			fmt.Fprintln(w)
		}
	}
}
