package agent_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"cradle/internal/agent"
	"cradle/internal/pki"
)

// TestFleetRenewalTwoYears runs 1,000 simulated units against one server
// for two years of virtual time with 90-day LDevIDs (each renews 12
// times), or with -short 100 units with 30-day LDevIDs (36 renewals
// each), through a 6-hour server outage on a day when the whole fleet is
// due. No unit's LDevID ever lapses, and no unit ever schedules its next
// step after its LDevID's expiry. (A renewal costs about 5 ms of CPU over
// the whole stack, two TLS handshakes included: 36,000 renewals do not fit
// a test's minute on a two-core machine.)
func TestFleetRenewalTwoYears(t *testing.T) {
	units, lifetime := 1000, 90*24*time.Hour
	if testing.Short() {
		units, lifetime = 100, 30*24*time.Hour
	}
	const horizon = 2 * 365 * 24 * time.Hour
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: lifetime})
	ctx := context.Background()
	start := s.clock.Now()
	outageFrom := start.Add(180 * 24 * time.Hour) // a renewal day of the whole fleet (2/3 of 30 and of 90 days divide it)
	outageTo := outageFrom.Add(6 * time.Hour)

	began := time.Now()
	ids := s.openFleet(t, units, start, 1)
	provisioned := time.Since(began)

	next := make([]time.Time, units)
	notAfter := make([]time.Time, units)
	for i := range next {
		next[i] = start
	}
	var (
		failed, events int
		steps          int
		firstErr       error
	)
	end := start.Add(horizon)
	for {
		now := end
		for _, n := range next {
			if n.Before(now) {
				now = n
			}
		}
		if !now.Before(end) {
			break
		}
		// Units due within the same hour step together at its end, an
		// hour late at most, so that they run in parallel.
		now = now.Add(time.Hour - 1).Truncate(time.Hour)
		for i, na := range notAfter {
			if !na.IsZero() && !now.Before(na) {
				t.Fatalf("unit %d: its LDevID lapsed at %s (now %s)", i, na, now)
			}
		}
		s.setClock(now)
		s.down.Store(!now.Before(outageFrom) && now.Before(outageTo))
		events++
		steps += stepDue(ctx, ids, next, now, func(i int, err error) {
			if st := ids[i].State(); st.Current != nil {
				notAfter[i] = st.Current.NotAfter
			}
			if err != nil {
				failed++
				if firstErr == nil && !s.down.Load() {
					firstErr = fmt.Errorf("unit %d at %s with the server up: %w", i, now, err)
				}
			}
			if !notAfter[i].IsZero() && !next[i].Before(notAfter[i]) {
				firstErr = errors.Join(firstErr, fmt.Errorf("unit %d scheduled its next step at %s, after its LDevID expires at %s", i, next[i], notAfter[i]))
			}
		})
		if firstErr != nil {
			t.Fatal(firstErr)
		}
	}
	elapsed := time.Since(began)

	renewals := 0
	for i, id := range ids {
		st := id.State()
		if st.Status != agent.StatusEnrolled || !st.Current.NotAfter.After(end) {
			t.Errorf("unit %d ends %s with an LDevID valid until %s", i, st.Status, st.Current.NotAfter)
		}
		renewals += st.KeySeq - 1
	}
	// One renewal every two thirds of the lifetime, one fewer for the
	// outage's delay.
	if min := units * (int(horizon/(lifetime/3*2)) - 1); renewals < min {
		t.Errorf("%d renewals for %d units, want at least %d", renewals, units, min)
	}
	if failed == 0 {
		t.Error("no attempt failed during the outage: the outage tested nothing")
	}
	t.Logf("%d units, %s of virtual time: %d renewals (+%d enrollments), %d failed attempts during the outage, %d steps over %d clock events; provisioning %s, run %s (%.0f renewals/s)",
		units, horizon, renewals, units, failed, steps, events, provisioned.Round(time.Millisecond), (elapsed - provisioned).Round(time.Millisecond),
		float64(renewals+units)/(elapsed-provisioned).Seconds())
}

// openFleet provisions units simulated units SN-00000… on s and opens
// their agent identities at start, each with its own random source of
// seed.
func (s *estStack) openFleet(t *testing.T, units int, start time.Time, seed uint64) []*agent.Identity {
	t.Helper()
	dir := t.TempDir()
	ids := make([]*agent.Identity, units)
	for i := range units {
		serial := fmt.Sprintf("SN-%05d", i)
		dev := s.provision(filepath.Join(dir, serial, "unit"), serial)
		id, err := agent.OpenIdentity(agent.IdentityOptions{
			Device: dev, StateDir: filepath.Join(dir, serial, "state"), ServerURL: s.url,
			Rand: rand.New(rand.NewPCG(seed, uint64(i))),
		}, start)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

// stepDue steps every unit of ids due at now (next[i] not after it), on
// four goroutines a CPU, and records its next step in next[i]; record
// then sees the step's error, under a lock that serializes it with the
// other units' records. It returns the steps taken.
func stepDue(ctx context.Context, ids []*agent.Identity, next []time.Time, now time.Time, record func(i int, err error)) int {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		steps int
	)
	due := make(chan int)
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range due {
				n, err := ids[i].Step(ctx, now)
				mu.Lock()
				steps++
				next[i] = n
				record(i, err)
				mu.Unlock()
			}
		})
	}
	for i, n := range next {
		if !n.After(now) {
			due <- i
		}
	}
	close(due)
	wg.Wait()
	return steps
}
