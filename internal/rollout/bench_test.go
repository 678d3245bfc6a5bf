package rollout_test

import (
	"fmt"
	"testing"
	"time"

	"cradle"
	"cradle/internal/rollout"
)

func benchFleet(n int) []rollout.Candidate {
	zones := []string{"Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC"}
	labelSets := make([]map[string]string, len(zones))
	for i, z := range zones {
		labelSets[i] = map[string]string{"env": "prod", cradle.RolloutTZLabel: z}
	}
	cands := make([]rollout.Candidate, n)
	for i := range cands {
		cands[i] = rollout.Candidate{Serial: fmt.Sprintf("SN%08d", i), Labels: labelSets[i%len(zones)]}
		if i%1000 == 0 {
			cands[i].ActiveRollout = "r-other"
		}
	}
	return cands
}

func benchSpec() cradle.RolloutSpec {
	return cradle.RolloutSpec{
		ReleaseID: "rel-bench",
		Target:    cradle.RolloutTarget{Selector: "env=prod"},
		Phases: []cradle.RolloutPhase{
			{Count: 100, Soak: cradle.Duration(time.Hour)},
			{Percent: 1}, {Percent: 10}, {Percent: 50}, {Percent: 100},
		},
		RateLimit:        1000,
		MaxConcurrent:    5000,
		FailureThreshold: cradle.FailureThreshold{Percent: 1, Action: cradle.FailurePause},
		Windows:          []cradle.MaintenanceWindow{{Cron: "0 1 * * *", Duration: cradle.Duration(4 * time.Hour), DeviceLocal: true}},
	}
}

// BenchmarkPlan plans a rollout over 1,000,000 device records in memory:
// the target check, the conflict rule, the ordering and phase assignment
// of every device and the first planning step (Begin). Reading the records
// from the store is not included.
func BenchmarkPlan(b *testing.B) {
	cands := benchFleet(1_000_000)
	clock := &fakeClock{t: time.Date(2026, 6, 1, 23, 30, 0, 0, time.UTC)} // 01:30 in Berlin
	b.ResetTimer()
	for b.Loop() {
		e, err := rollout.New("r-bench", benchSpec(), rollout.Options{Clock: clock})
		if err != nil {
			b.Fatal(err)
		}
		p, err := e.Begin(cands)
		if err != nil {
			b.Fatal(err)
		}
		// Only the canaries whose local window is open (Berlin's) start.
		if n := len(p.Start); n == 0 || n > 100 {
			b.Fatalf("started %d, want some of the 100 canaries", n)
		}
	}
}

// BenchmarkPlanStep is one steady-state step of a running rollout over
// 1,000,000 devices in the last phase, with device-local windows open for
// a quarter of them: a step scans pending devices until the rate limit is
// used up.
func BenchmarkPlanStep(b *testing.B) {
	spec := benchSpec()
	spec.Phases = []cradle.RolloutPhase{{Percent: 100}}
	spec.MaxConcurrent = 0
	clock := &fakeClock{t: time.Date(2026, 6, 1, 23, 30, 0, 0, time.UTC)}
	e, err := rollout.New("r-bench", spec, rollout.Options{Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.Begin(benchFleet(1_000_000)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		clock.Advance(time.Minute)
		e.Plan()
		e.Changes()
	}
}
