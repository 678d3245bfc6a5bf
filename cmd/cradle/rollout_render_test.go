package main

import (
	"strings"
	"testing"
	"time"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

// fixedRollout is a rollout of 100 devices (2 skipped) in three phases:
// the canary done, the first wave soaking, the last needing approval.
func fixedRollout() *cradle.Rollout {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return &cradle.Rollout{ID: "ro_00000000000000000001", RolloutSpec: cradle.RolloutSpec{
		ReleaseID: "rel_00000000000000000001", Target: cradle.RolloutTarget{Selector: "env=prod"},
		Phases: []cradle.RolloutPhase{{Name: "canary", Count: 5, Soak: cradle.Duration(10 * time.Minute)},
			{Percent: 50, Soak: cradle.Duration(10 * time.Minute)}, {Percent: 100, Approval: true}},
		FailureThreshold: cradle.FailureThreshold{Percent: 5, Action: cradle.FailurePause},
	}, Status: cradle.RolloutStatus{State: cradle.RolloutRunning, Phase: 1, Devices: 100, Skipped: 2, Failures: 1, StartedAt: at,
		Phases: []cradle.PhaseStatus{
			{Name: "canary", State: cradle.PhaseCompleted, Devices: 5, Succeeded: 5},
			{Name: "wave-1", State: cradle.PhaseSoaking, Devices: 44, Succeeded: 43, Failed: 1, SoakUntil: at.Add(30 * time.Minute)},
			{Name: "wave-2", State: cradle.PhasePending, Devices: 49, Pending: 49},
		}}}
}

// TestRenderRollout holds the live view and the one-line summary of fixed
// rollouts to golden strings.
func TestRenderRollout(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 25, 50, 0, time.UTC)
	soaking := fixedRollout()
	awaiting := fixedRollout()
	awaiting.Status.Phase = 2
	awaiting.Status.Phases[1].State = cradle.PhaseCompleted
	awaiting.Status.Phases[2].State = cradle.PhaseAwaiting
	paused := fixedRollout()
	paused.Status.State = cradle.RolloutPaused
	paused.Status.Reason = "failure threshold reached: 5 of 98 devices failed"
	paused.Status.Failures = 5
	paused.Status.Phases[1] = cradle.PhaseStatus{Name: "wave-1", State: cradle.PhaseRunning, Devices: 44, Pending: 10, Downloading: 3, Installing: 2, Succeeded: 24, Failed: 5}
	completed := fixedRollout()
	completed.Status.State = cradle.RolloutCompleted
	completed.Status.Phase = 2
	for i := range completed.Status.Phases {
		p := &completed.Status.Phases[i]
		p.State, p.Pending, p.Succeeded, p.Failed = cradle.PhaseCompleted, 0, p.Devices, 0
	}
	completed.Status.Phases[2].Approved = true
	completed.Status.Failures = 0
	for _, tt := range []struct {
		name      string
		ro        *cradle.Rollout
		view, log string
	}{
		{"soaking", soaking, `
Rollout ro_00000000000000000001 of release rel_00000000000000000001: running, phase 2 of 3
PHASE     STATE      DEVICES  PENDING  DOWNLOADING  INSTALLING  SUCCEEDED  FAILED  SOAK/APPROVAL
0 canary  completed  5        0        0            0           5          0       -
1 wave-1  soaking    44       0        0            0           43         1       soak 4m10s left
2 wave-2  pending    49       49       0            0           0          0       needs approval
[####################....................]  50%  49/98 done, 1 failed, 2 skipped
Failures since start or resume: 1 of 5 allowed (then pause)
`, "ro_00000000000000000001 running phase 2/3 soaking (0 pending, 0 downloading, 0 installing, 43 succeeded, 1 failed); total 49/98 done (50%), 1 failed, 2 skipped"},
		{"awaiting approval", awaiting, `
Rollout ro_00000000000000000001 of release rel_00000000000000000001: running, phase 3 of 3
PHASE     STATE              DEVICES  PENDING  DOWNLOADING  INSTALLING  SUCCEEDED  FAILED  SOAK/APPROVAL
0 canary  completed          5        0        0            0           5          0       -
1 wave-1  completed          44       0        0            0           43         1       -
2 wave-2  awaiting_approval  49       49       0            0           0          0       awaiting approval
[####################....................]  50%  49/98 done, 1 failed, 2 skipped
Failures since start or resume: 1 of 5 allowed (then pause)
`, "ro_00000000000000000001 running phase 3/3 awaiting_approval (49 pending, 0 downloading, 0 installing, 0 succeeded, 0 failed); total 49/98 done (50%), 1 failed, 2 skipped"},
		{"paused by the failure threshold", paused, `
Rollout ro_00000000000000000001 of release rel_00000000000000000001: paused, phase 2 of 3
Reason: failure threshold reached: 5 of 98 devices failed
PHASE     STATE      DEVICES  PENDING  DOWNLOADING  INSTALLING  SUCCEEDED  FAILED  SOAK/APPROVAL
0 canary  completed  5        0        0            0           5          0       -
1 wave-1  running    44       10       3            2           24         5       soak 10m0s
2 wave-2  pending    49       49       0            0           0          0       needs approval
[#############...........................]  34%  34/98 done, 5 failed, 2 skipped
Failures since start or resume: 5 of 5 allowed (then pause)
`, "ro_00000000000000000001 paused phase 2/3 running (10 pending, 3 downloading, 2 installing, 24 succeeded, 5 failed); total 34/98 done (34%), 5 failed, 2 skipped; reason: failure threshold reached: 5 of 98 devices failed"},
		{"completed", completed, `
Rollout ro_00000000000000000001 of release rel_00000000000000000001: completed
PHASE     STATE      DEVICES  PENDING  DOWNLOADING  INSTALLING  SUCCEEDED  FAILED  SOAK/APPROVAL
0 canary  completed  5        0        0            0           5          0       -
1 wave-1  completed  44       0        0            0           44         0       -
2 wave-2  completed  49       0        0            0           49         0       approved
[########################################] 100%  98/98 done, 0 failed, 2 skipped
Failures since start or resume: 0 of 5 allowed (then pause)
`, "ro_00000000000000000001 completed phase 3/3 completed (0 pending, 0 downloading, 0 installing, 49 succeeded, 0 failed); total 98/98 done (100%), 0 failed, 2 skipped"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(strings.TrimPrefix(tt.view, "\n"), renderRollout(tt.ro, now)); diff != "" {
				t.Errorf("renderRollout (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.log, summaryLine(tt.ro)); diff != "" {
				t.Errorf("summaryLine (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParsePhases(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    []cradle.RolloutPhase
		wantErr string
	}{
		{"100%", []cradle.RolloutPhase{{Percent: 100}}, ""},
		{"5, 10%,50%,100%", []cradle.RolloutPhase{{Count: 5}, {Percent: 10}, {Percent: 50}, {Percent: 100}}, ""},
		{"12.5%,100%", []cradle.RolloutPhase{{Percent: 12.5}, {Percent: 100}}, ""},
		{"10%,5,100%", nil, "only the first phase (the canary) may be a count"},
		{"0,100%", nil, `invalid --phases element "0"`},
		{"ten%", nil, `invalid --phases element "ten%"`},
		{"", nil, `invalid --phases element ""`},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parsePhases(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseWindow(t *testing.T) {
	for _, tt := range []struct {
		in          string
		deviceLocal bool
		want        cradle.MaintenanceWindow
		wantErr     string
	}{
		{"0 2 * * *|4h", false, cradle.MaintenanceWindow{Cron: "0 2 * * *", Duration: cradle.Duration(4 * time.Hour)}, ""},
		{"@daily | 90m | Europe/Berlin", true, cradle.MaintenanceWindow{Cron: "@daily", Duration: cradle.Duration(90 * time.Minute), TimeZone: "Europe/Berlin", DeviceLocal: true}, ""},
		{"0 2 * * *", false, cradle.MaintenanceWindow{}, "write 'CRON|DURATION[|TZ]'"},
		{"0 2 * * *|4 hours", false, cradle.MaintenanceWindow{}, `duration "4 hours"`},
		{"a|1h|UTC|x", false, cradle.MaintenanceWindow{}, "write 'CRON|DURATION[|TZ]'"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseWindow(tt.in, tt.deviceLocal)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
