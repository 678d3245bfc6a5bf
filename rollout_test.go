package cradle_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"cradle"
)

func validSpec() cradle.RolloutSpec {
	return cradle.RolloutSpec{
		ReleaseID: "rel-1",
		Target:    cradle.RolloutTarget{Selector: "env=prod"},
		Phases: []cradle.RolloutPhase{
			{Count: 10, Soak: cradle.Duration(time.Hour)},
			{Percent: 25, Approval: true},
			{Percent: 100},
		},
		RateLimit:        100,
		MaxConcurrent:    50,
		SuccessThreshold: 95,
		FailureThreshold: cradle.FailureThreshold{Percent: 2, Action: cradle.FailurePause},
		Windows:          []cradle.MaintenanceWindow{{Cron: "0 2 * * *", Duration: cradle.Duration(3 * time.Hour), TimeZone: "Europe/Berlin"}},
		Retries:          2,
	}
}

func TestRolloutSpecValidate(t *testing.T) {
	if err := func() *cradle.RolloutSpec { s := validSpec(); return &s }().Validate(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for _, tc := range []struct {
		name   string
		edit   func(*cradle.RolloutSpec)
		substr string
	}{
		{"no release", func(s *cradle.RolloutSpec) { s.ReleaseID = " " }, "release_id is required"},
		{"empty target", func(s *cradle.RolloutSpec) { s.Target = cradle.RolloutTarget{} }, "target is empty"},
		{"both targets", func(s *cradle.RolloutSpec) { s.Target.Serials = []string{"a"} }, "not both"},
		{"bad selector", func(s *cradle.RolloutSpec) { s.Target.Selector = "env in (" }, "target.selector"},
		{"duplicate serial", func(s *cradle.RolloutSpec) { s.Target = cradle.RolloutTarget{Serials: []string{"a", "a"}} }, `lists "a" twice`},
		{"bad serial", func(s *cradle.RolloutSpec) { s.Target = cradle.RolloutTarget{Serials: []string{"a b"}} }, "target.serials[0]"},
		{"dynamic list", func(s *cradle.RolloutSpec) { s.Target = cradle.RolloutTarget{Serials: []string{"a"}}; s.Dynamic = true }, "dynamic needs a target selector"},
		{"no phases", func(s *cradle.RolloutSpec) { s.Phases = nil }, "at least one phase"},
		{"count after canary", func(s *cradle.RolloutSpec) { s.Phases[1] = cradle.RolloutPhase{Count: 5} }, "only the first phase"},
		{"count and percent", func(s *cradle.RolloutSpec) { s.Phases[0].Percent = 5 }, "not both"},
		{"percent shrinks", func(s *cradle.RolloutSpec) { s.Phases[1].Percent = 100; s.Phases[2].Percent = 50 }, "does not grow"},
		{"percent over 100", func(s *cradle.RolloutSpec) { s.Phases[2].Percent = 101 }, "out of range"},
		{"last short of 100", func(s *cradle.RolloutSpec) { s.Phases[2].Percent = 90 }, "must reach percent 100"},
		{"approval first", func(s *cradle.RolloutSpec) { s.Phases[0].Approval = true }, "phases[0].approval"},
		{"negative soak", func(s *cradle.RolloutSpec) { s.Phases[0].Soak = -1 }, "soak is negative"},
		{"negative rate", func(s *cradle.RolloutSpec) { s.RateLimit = -1 }, "rate_limit"},
		{"negative cap", func(s *cradle.RolloutSpec) { s.MaxConcurrent = -1 }, "max_concurrent"},
		{"success over 100", func(s *cradle.RolloutSpec) { s.SuccessThreshold = 100.5 }, "success_threshold"},
		{"failure percent over 100", func(s *cradle.RolloutSpec) { s.FailureThreshold.Percent = 150 }, "failure_threshold.percent"},
		{"failure both", func(s *cradle.RolloutSpec) { s.FailureThreshold.Count = 3 }, "count or percent, not both"},
		{"failure none", func(s *cradle.RolloutSpec) { s.FailureThreshold.Percent = 0 }, "give a count"},
		{"failure negative", func(s *cradle.RolloutSpec) { s.FailureThreshold = cradle.FailureThreshold{Count: -2, Action: "pause"} }, "negative"},
		{"failure action", func(s *cradle.RolloutSpec) { s.FailureThreshold.Action = "panic" }, `action "panic"`},
		{"window no cron", func(s *cradle.RolloutSpec) { s.Windows[0].Cron = "" }, "windows[0].cron is required"},
		{"window no duration", func(s *cradle.RolloutSpec) { s.Windows[0].Duration = 0 }, "duration must be positive"},
		{"window too long", func(s *cradle.RolloutSpec) { s.Windows[0].Duration = cradle.Duration(8 * 24 * time.Hour) }, "longer than a week"},
		{"window bad zone", func(s *cradle.RolloutSpec) { s.Windows[0].TimeZone = "Mars/Olympus" }, `unknown time zone "Mars/Olympus"`},
		{"window Local zone", func(s *cradle.RolloutSpec) { s.Windows[0].TimeZone = "Local" }, "unknown time zone"},
		{"negative timeout", func(s *cradle.RolloutSpec) { s.DeviceTimeout = -1 }, "device_timeout"},
		{"too many retries", func(s *cradle.RolloutSpec) { s.Retries = 11 }, "retries 11"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.edit(&s)
			err := s.Validate()
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tc.substr) {
				t.Fatalf("got %v, want EINVALID containing %q", err, tc.substr)
			}
		})
	}
}

func TestPhaseSizeAndLimits(t *testing.T) {
	phases := []cradle.RolloutPhase{{Count: 5}, {Percent: 10}, {Percent: 50}, {Percent: 100}}
	for _, tc := range []struct{ n, phase, want int }{
		{1000, 0, 5}, {1000, 1, 100}, {1000, 2, 500}, {1000, 3, 1000},
		{30, 1, 5}, // 10% of 30 is 3: the canary already covers it
		{3, 0, 3},  // a canary larger than the target
		{7, 2, 5},  // ⌈3.5⌉ is 4, the canary 5
	} {
		if got := cradle.PhaseSize(phases, tc.phase, tc.n); got != tc.want {
			t.Errorf("PhaseSize(phase %d, n %d) = %d, want %d", tc.phase, tc.n, got, tc.want)
		}
	}
	for _, tc := range []struct {
		f    cradle.FailureThreshold
		n    int
		want int
	}{
		{cradle.FailureThreshold{Count: 7}, 10, 7},
		{cradle.FailureThreshold{Percent: 10}, 30, 3}, // not 4 from float rounding
		{cradle.FailureThreshold{Percent: 1.5}, 10_000, 150},
		{cradle.FailureThreshold{Percent: 1}, 10, 1},
		{cradle.FailureThreshold{Percent: 0.01}, 5, 1}, // at least one
	} {
		if got := tc.f.Limit(tc.n); got != tc.want {
			t.Errorf("%+v.Limit(%d) = %d, want %d", tc.f, tc.n, got, tc.want)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	var d struct{ D cradle.Duration }
	for in, want := range map[string]time.Duration{`{"D":"1h30m"}`: 90 * time.Minute, `{"D":90}`: 90 * time.Second, `{"D":"0s"}`: 0} {
		if err := json.Unmarshal([]byte(in), &d); err != nil || time.Duration(d.D) != want {
			t.Errorf("%s: %v %v, want %v", in, time.Duration(d.D), err, want)
		}
	}
	for _, in := range []string{`{"D":"soon"}`, `{"D":true}`, `{"D":1e300}`} {
		if err := json.Unmarshal([]byte(in), &d); err == nil || !strings.Contains(err.Error(), "invalid duration") {
			t.Errorf("%s: %v, want an invalid duration error", in, err)
		}
	}
	b, _ := json.Marshal(struct{ D cradle.Duration }{cradle.Duration(time.Hour)})
	if string(b) != `{"D":"1h0m0s"}` {
		t.Errorf("marshal: %s", b)
	}
}
