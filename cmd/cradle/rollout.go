package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/rollout"
)

// rolloutCmd is "cradle rollout": phased rollouts of a signed release.
func (a *app) rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Roll a signed release out to a fleet in phases; watch, pause, resume, abort, approve",
		Long: `A rollout brings one signed release to the devices of a label selector or of an
explicit list, phase by phase: a canary (a count or a percent), then waves by
cumulative percent, each soaking before the next. A failure threshold pauses or
aborts it; a rate limit, a cap on concurrent downloads and maintenance windows
pace it. A device is in at most one running or paused rollout.`,
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.rolloutCreateCmd(), a.rolloutListCmd(), a.rolloutShowCmd(), a.rolloutDevicesCmd(),
		a.rolloutPauseCmd(), a.rolloutResumeCmd(), a.rolloutAbortCmd(), a.rolloutApproveCmd())
	return cmd
}

// rolloutFlags are the spec flags of rollout create.
type rolloutFlags struct {
	release, selector, serials, serialsFile, phases string
	soak, timeout                                   time.Duration
	approvalFrom, rate, maxConcurrent, failureCount int
	retries                                         int
	successThreshold, failurePercent                float64
	failureAction                                   string
	windows                                         []string
	deviceLocal, dynamic                            bool
}

// specFlagNames are the flags that --spec excludes.
var specFlagNames = []string{"release", "selector", "serials", "serials-file", "phases", "soak", "approval-from", "rate", "max-concurrent",
	"success-threshold", "failure-count", "failure-percent", "failure-action", "window", "device-local", "timeout", "retries", "dynamic"}

// parsePhases reads --phases: a comma-separated list of cumulative
// percents ("50%"), the first of which may be a device count ("5").
func parsePhases(s string) ([]cradle.RolloutPhase, error) {
	var out []cradle.RolloutPhase
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if pct, ok := strings.CutSuffix(f, "%"); ok {
			p, err := strconv.ParseFloat(pct, 64)
			if err != nil {
				return nil, fmt.Errorf("invalid --phases element %q: write a percent such as 10%% (or a count for the first)", f)
			}
			out = append(out, cradle.RolloutPhase{Percent: p})
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("invalid --phases element %q: write a percent such as 10%% (or a count for the first)", f)
		}
		if i > 0 {
			return nil, fmt.Errorf("invalid --phases element %q: only the first phase (the canary) may be a count; write later ones as percents", f)
		}
		out = append(out, cradle.RolloutPhase{Count: n})
	}
	return out, nil
}

// parseWindow reads --window 'CRON|DURATION[|TZ]'.
func parseWindow(s string, deviceLocal bool) (cradle.MaintenanceWindow, error) {
	parts := strings.Split(s, "|")
	if len(parts) < 2 || len(parts) > 3 {
		return cradle.MaintenanceWindow{}, fmt.Errorf("invalid --window %q: write 'CRON|DURATION[|TZ]', e.g. '0 2 * * *|4h|Europe/Berlin'", s)
	}
	d, err := time.ParseDuration(strings.TrimSpace(parts[1]))
	if err != nil {
		return cradle.MaintenanceWindow{}, fmt.Errorf("invalid --window %q: duration %q: write it like 4h or 90m", s, parts[1])
	}
	w := cradle.MaintenanceWindow{Cron: strings.TrimSpace(parts[0]), Duration: cradle.Duration(d), DeviceLocal: deviceLocal}
	if len(parts) == 3 {
		w.TimeZone = strings.TrimSpace(parts[2])
	}
	return w, nil
}

// readSerials reads a serials file: one serial per line; blank lines and
// lines starting with # are skipped; "-" reads stdin.
func (a *app) readSerials(name string) ([]string, error) {
	data, err := a.readDoc(name, cradle.MaxRolloutSpecSize)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// spec builds the rollout spec the flags describe.
func (a *app) rolloutSpec(f *rolloutFlags) (*cradle.RolloutSpec, error) {
	if f.release == "" {
		return nil, fmt.Errorf("--release is required (or give the whole spec with --spec FILE.json)")
	}
	n := 0
	for _, v := range []string{f.selector, f.serials, f.serialsFile} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("give the target with exactly one of --selector, --serials and --serials-file")
	}
	if (f.failureCount > 0) == (f.failurePercent > 0) {
		return nil, fmt.Errorf("give the failure threshold with exactly one of --failure-count and --failure-percent")
	}
	spec := &cradle.RolloutSpec{ReleaseID: f.release, Dynamic: f.dynamic, RateLimit: f.rate, MaxConcurrent: f.maxConcurrent,
		SuccessThreshold: f.successThreshold, DeviceTimeout: cradle.Duration(f.timeout), Retries: f.retries,
		FailureThreshold: cradle.FailureThreshold{Count: f.failureCount, Percent: f.failurePercent, Action: f.failureAction}}
	switch {
	case f.selector != "":
		spec.Target.Selector = f.selector
	case f.serials != "":
		for _, s := range strings.Split(f.serials, ",") {
			if s = strings.TrimSpace(s); s != "" {
				spec.Target.Serials = append(spec.Target.Serials, s)
			}
		}
	default:
		var err error
		if spec.Target.Serials, err = a.readSerials(f.serialsFile); err != nil {
			return nil, err
		}
	}
	var err error
	if spec.Phases, err = parsePhases(f.phases); err != nil {
		return nil, err
	}
	for i := range spec.Phases {
		if i < len(spec.Phases)-1 {
			spec.Phases[i].Soak = cradle.Duration(f.soak)
		}
		if f.approvalFrom > 0 && i >= f.approvalFrom {
			spec.Phases[i].Approval = true
		}
	}
	if f.approvalFrom > 0 && f.approvalFrom >= len(spec.Phases) {
		return nil, fmt.Errorf("--approval-from %d: there are only %d phases (numbered from 0)", f.approvalFrom, len(spec.Phases))
	}
	for _, w := range f.windows {
		mw, err := parseWindow(w, f.deviceLocal)
		if err != nil {
			return nil, err
		}
		spec.Windows = append(spec.Windows, mw)
	}
	if f.deviceLocal && len(spec.Windows) == 0 {
		return nil, fmt.Errorf("--device-local needs a --window")
	}
	return spec, nil
}

func (a *app) rolloutCreateCmd() *cobra.Command {
	var (
		jsonFlag bool
		specFile string
		f        rolloutFlags
	)
	cmd := &cobra.Command{
		Use: "create --release ID (--selector S | --serials A,B | --serials-file F) (--failure-count N | --failure-percent P) [flags]\n" +
			"  cradle rollout create --spec FILE.json",
		Short: "Create and start a rollout of a signed release",
		Long: `Create and start a rollout of a signed release, from flags or from a JSON spec
file (--spec; the two are exclusive). --phases lists cumulative percents of the
target; the first may be a device count (the canary); the last must be 100%.
--soak is the wait after each phase but the last; --approval-from N makes phase N
and later wait for "cradle rollout approve". Windows are 'CRON|DURATION[|TZ]'
(five cron fields); --device-local reads them in each device's "tz" label.`,
		Example: `  cradle rollout create --release rel_0123456789abcdef0123 --selector 'env=prod' \
      --phases 5,10%,50%,100% --soak 30m --failure-percent 2 --failure-action abort \
      --window '0 2 * * *|4h|Europe/Berlin' --rate 100 --max-concurrent 500
  cradle rollout create --spec rollout.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var spec *cradle.RolloutSpec
			if specFile != "" {
				for _, name := range specFlagNames {
					if cmd.Flags().Changed(name) {
						return fmt.Errorf("--spec and --%s are exclusive: put everything in the spec file, or use flags only", name)
					}
				}
				data, err := a.readDoc(specFile, cradle.MaxRolloutSpecSize)
				if err != nil {
					return err
				}
				if spec, err = rollout.ParseSpec(data); err != nil {
					return fmt.Errorf("%s: %s", specFile, errorText(err))
				}
			} else {
				var err error
				if spec, err = a.rolloutSpec(&f); err != nil {
					return err
				}
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, _ []string) (*cradle.Rollout, error) {
				return cl.CreateRollout(ctx, *spec)
			}, a.writeRollout)(cmd, nil)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&specFile, "spec", "", "the rollout spec as a JSON file (- reads stdin); excludes the flags below")
	fl.StringVar(&f.release, "release", "", "the signed release to roll out")
	fl.StringVar(&f.selector, "selector", "", "target: the devices this label selector matches")
	fl.StringVar(&f.serials, "serials", "", "target: these serials, comma-separated")
	fl.StringVar(&f.serialsFile, "serials-file", "", "target: the serials in this file, one per line (- reads stdin)")
	fl.StringVar(&f.phases, "phases", "100%", "cumulative percents of the target, the first may be a count, e.g. 5,10%,50%,100%")
	fl.DurationVar(&f.soak, "soak", 0, "wait after each phase but the last finished, e.g. 30m")
	fl.IntVar(&f.approvalFrom, "approval-from", 0, "phases from this index (1 or more) on wait for cradle rollout approve")
	fl.IntVar(&f.rate, "rate", 0, "most devices started per minute (0: no limit)")
	fl.IntVar(&f.maxConcurrent, "max-concurrent", 0, "most devices downloading at once (0: no limit)")
	fl.Float64Var(&f.successThreshold, "success-threshold", 0, "percent of a phase that must succeed to go on (default 100)")
	fl.IntVar(&f.failureCount, "failure-count", 0, "failure threshold: this many devices failed for good")
	fl.Float64Var(&f.failurePercent, "failure-percent", 0, "failure threshold: this percent of the target failed for good")
	fl.StringVar(&f.failureAction, "failure-action", cradle.FailurePause, "what the failure threshold does: pause or abort")
	fl.StringArrayVar(&f.windows, "window", nil, "a maintenance window 'CRON|DURATION[|TZ]'; repeat for more (default: any time)")
	fl.BoolVar(&f.deviceLocal, "device-local", false, "read the windows in each device's tz label")
	fl.DurationVar(&f.timeout, "timeout", 0, "fail a device's attempt after this long without progress (default 1h)")
	fl.IntVar(&f.retries, "retries", 0, "more attempts a device gets after a failed one (0 to 10)")
	fl.BoolVar(&f.dynamic, "dynamic", false, "devices that join the selector's target later get the release too")
	fl.BoolVar(&jsonFlag, "json", false, "print the rollout as JSON")
	cmd.RegisterFlagCompletionFunc("failure-action", cobra.FixedCompletions([]string{cradle.FailurePause, cradle.FailureAbort}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func (a *app) rolloutListCmd() *cobra.Command {
	var (
		jsonFlag       bool
		state, release string
		limit          int
	)
	cmd := &cobra.Command{
		Use:   "list [--state S] [--release ID]",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			f := cradle.RolloutFilter{ReleaseID: release, Limit: limit}
			if state != "" {
				st := cradle.RolloutState(state)
				f.State = &st
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			ros, err := cl.FindRollouts(cmd.Context(), f)
			if err != nil {
				return err
			}
			if ros == nil {
				ros = []*cradle.Rollout{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"rollouts": ros})
			}
			t := newTable(a.stdout, "ID", "RELEASE", "STATE", "PHASE", "DEVICES", "DONE", "FAILED", "STARTED")
			for _, ro := range ros {
				done, failed, total := rolloutTotals(ro)
				t.row(ro.ID, ro.ReleaseID, string(ro.Status.State), fmt.Sprintf("%d/%d", ro.Status.Phase+1, len(ro.Phases)),
					strconv.Itoa(total), strconv.Itoa(done), strconv.Itoa(failed), formatTime(ro.Status.StartedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only rollouts in this state: draft, running, paused, aborted or completed")
	cmd.Flags().StringVar(&release, "release", "", "only rollouts of this release")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (default: the server's page size)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"rollouts":[…]}`)
	return cmd
}

func (a *app) rolloutShowCmd() *cobra.Command {
	var (
		jsonFlag, watch bool
		interval        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "show ID [--watch [--interval 2s]]",
		Short: "Show a rollout's live status per phase; --watch follows it until it completes or is aborted",
		Long: `Show a rollout's live status per phase. With --watch it polls every --interval
until the rollout completes or is aborted (or Ctrl-C): on a terminal the view is
redrawn in place; otherwise one line is printed per change (with --json, one
JSON object per line).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval <= 0 {
				return fmt.Errorf("invalid --interval %v: give a positive duration such as 2s", interval)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if watch {
				return a.watchRollout(cmd.Context(), cl, args[0], interval, jsonFlag, isTerminal(a.stdout) && !jsonFlag)
			}
			ro, err := cl.FindRollout(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, ro)
			}
			return a.writeRollout(ro)
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "follow the rollout until it completes or is aborted")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often --watch asks the server")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the rollout as JSON")
	return cmd
}

func (a *app) writeRollout(ro *cradle.Rollout) error {
	_, err := io.WriteString(a.stdout, renderRollout(ro, time.Now()))
	return err
}

// watchRollout polls a rollout until it is final or ctx ends. On a
// terminal (tty) it redraws the view in place; otherwise it prints a line
// (or, with asJSON, the rollout as one line of JSON) whenever the status
// changed.
func (a *app) watchRollout(ctx context.Context, cl *httpapi.Client, id string, interval time.Duration, asJSON, tty bool) error {
	var prev string
	drawn := 0
	for {
		ro, err := cl.FindRollout(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch {
		case tty:
			view := renderRollout(ro, time.Now())
			if drawn > 0 {
				// Back to the first line of the last view, and clear from there.
				fmt.Fprintf(a.stdout, "\x1b[%dF\x1b[J", drawn)
			}
			io.WriteString(a.stdout, view)
			drawn = strings.Count(view, "\n")
		default:
			line := summaryLine(ro)
			if line != prev {
				prev = line
				if asJSON {
					if err := writeJSONLine(a.stdout, ro); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(a.stdout, "%s %s\n", formatTime(time.Now()), line)
				}
			}
		}
		if st := ro.Status.State; st == cradle.RolloutCompleted || st == cradle.RolloutAborted {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// rolloutTotals counts a rollout's devices that finished (succeeded or
// failed), failed, and that are in a phase (skipped ones aside).
func rolloutTotals(ro *cradle.Rollout) (done, failed, total int) {
	for _, p := range ro.Status.Phases {
		done += p.Succeeded + p.Failed
		failed += p.Failed
		total += p.Devices
	}
	return done, failed, total
}

// progressBar draws done of total in width cells.
func progressBar(done, total, width int) string {
	filled := 0
	if total > 0 {
		filled = done * width / total
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

func percentOf(done, total int) int {
	if total == 0 {
		return 0
	}
	return done * 100 / total
}

// phaseNote is the SOAK/APPROVAL column of a phase at now.
func phaseNote(spec cradle.RolloutPhase, p cradle.PhaseStatus, now time.Time) string {
	switch {
	case p.State == cradle.PhaseAwaiting:
		return "awaiting approval"
	case p.State == cradle.PhaseSoaking && p.SoakUntil.After(now):
		return "soak " + p.SoakUntil.Sub(now).Round(time.Second).String() + " left"
	case p.State == cradle.PhaseSoaking:
		return "soak over"
	case p.Accepted:
		return "accepted below threshold"
	case p.Approved:
		return "approved"
	case spec.Approval && p.State == cradle.PhasePending:
		return "needs approval"
	case spec.Soak > 0 && p.State != cradle.PhaseCompleted:
		return "soak " + time.Duration(spec.Soak).String()
	}
	return "-"
}

// renderRollout is the live view of a rollout at now: a heading, a table
// of its phases, a progress bar and the counts the thresholds read.
func renderRollout(ro *cradle.Rollout, now time.Time) string {
	var b strings.Builder
	st := ro.Status
	fmt.Fprintf(&b, "Rollout %s of release %s: %s", ro.ID, ro.ReleaseID, st.State)
	if len(ro.Phases) > 0 && (st.State == cradle.RolloutRunning || st.State == cradle.RolloutPaused) {
		fmt.Fprintf(&b, ", phase %d of %d", st.Phase+1, len(ro.Phases))
	}
	b.WriteString("\n")
	if st.Reason != "" {
		fmt.Fprintf(&b, "Reason: %s\n", st.Reason)
	}
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tSTATE\tDEVICES\tPENDING\tDOWNLOADING\tINSTALLING\tSUCCEEDED\tFAILED\tSOAK/APPROVAL")
	for i, p := range st.Phases {
		var spec cradle.RolloutPhase
		if i < len(ro.Phases) {
			spec = ro.Phases[i]
		}
		name := strconv.Itoa(i)
		if p.Name != "" {
			name += " " + p.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", name, p.State, p.Devices, p.Pending, p.Downloading, p.Installing,
			p.Succeeded, p.Failed, phaseNote(spec, p, now))
	}
	tw.Flush()
	done, failed, total := rolloutTotals(ro)
	fmt.Fprintf(&b, "%s %3d%%  %d/%d done, %d failed, %d skipped\n", progressBar(done, total, 40), percentOf(done, total), done, total, failed, st.Skipped)
	fmt.Fprintf(&b, "Failures since start or resume: %d of %d allowed (then %s)\n", st.Failures, ro.FailureThreshold.Limit(st.Devices-st.Skipped), ro.FailureThreshold.Action)
	return b.String()
}

// summaryLine is a rollout's status on one line, for a log: it changes
// only when the status does.
func summaryLine(ro *cradle.Rollout) string {
	st := ro.Status
	done, failed, total := rolloutTotals(ro)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", ro.ID, st.State)
	if st.Phase < len(st.Phases) {
		p := st.Phases[st.Phase]
		fmt.Fprintf(&b, " phase %d/%d %s", st.Phase+1, len(st.Phases), p.State)
		fmt.Fprintf(&b, " (%d pending, %d downloading, %d installing, %d succeeded, %d failed)", p.Pending, p.Downloading, p.Installing, p.Succeeded, p.Failed)
	}
	fmt.Fprintf(&b, "; total %d/%d done (%d%%), %d failed, %d skipped", done, total, percentOf(done, total), failed, st.Skipped)
	if st.Reason != "" {
		fmt.Fprintf(&b, "; reason: %s", st.Reason)
	}
	return b.String()
}

// writeJSONLine writes v as one line of JSON.
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func (a *app) rolloutDevicesCmd() *cobra.Command {
	var (
		jsonFlag bool
		state    string
		phase    int
		limit    int
	)
	cmd := &cobra.Command{
		Use:   "devices ID [--state S] [--phase N]",
		Short: "List a rollout's devices in the rollout's order, with their state, phase and attempts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			var f cradle.RolloutDeviceFilter
			if state != "" {
				st := cradle.DeviceUpdateState(state)
				f.State = &st
			}
			if cmd.Flags().Changed("phase") {
				if phase < 0 {
					return fmt.Errorf("invalid --phase %d: phases are numbered from 0", phase)
				}
				f.Phase = &phase
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			// Every page, unless --limit asks for one.
			page := limit
			if page == 0 {
				page = cradle.DefaultPageSize
			}
			f.Limit = page
			all := []*cradle.RolloutDevice{}
			for {
				ds, err := cl.FindRolloutDevices(cmd.Context(), args[0], f)
				if err != nil {
					return err
				}
				all = append(all, ds...)
				if limit != 0 || len(ds) < page {
					break
				}
				f.After = ds[len(ds)-1].Serial
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"devices": all})
			}
			t := newTable(a.stdout, "SERIAL", "PHASE", "STATE", "ATTEMPT", "PROGRESS", "REASON")
			for _, d := range all {
				reason := d.Reason
				if d.ActiveRollout != "" && !strings.Contains(reason, d.ActiveRollout) {
					reason = strings.TrimSpace(reason + " (in " + d.ActiveRollout + ")")
				}
				t.row(d.Serial, strconv.Itoa(d.Phase), string(d.State), strconv.Itoa(d.Attempt), formatTime(d.Progress), orDash(reason))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only devices in this state: pending, started, downloading, installing, succeeded, failed or skipped")
	cmd.Flags().IntVar(&phase, "phase", 0, "only devices of this phase (numbered from 0)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (default: all)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"devices":[…]}`)
	return cmd
}

// rolloutDecisionCmd is one of pause, resume, abort and approve.
func (a *app) rolloutDecisionCmd(use, short string, setup func(*cobra.Command), call func(ctx context.Context, cl *httpapi.Client, id string) (*cradle.Rollout, error), check func() error) *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if check != nil {
				if err := check(); err != nil {
					return err
				}
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Rollout, error) {
				return call(ctx, cl, args[0])
			}, a.writeRollout)(cmd, args)
		},
	}
	if setup != nil {
		setup(cmd)
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the rollout as JSON")
	return cmd
}

func (a *app) rolloutPauseCmd() *cobra.Command {
	var reason string
	return a.rolloutDecisionCmd("pause ID [--reason TEXT]", "Pause a running rollout: devices already updating finish, no new ones start",
		func(c *cobra.Command) { c.Flags().StringVar(&reason, "reason", "", "why") },
		func(ctx context.Context, cl *httpapi.Client, id string) (*cradle.Rollout, error) {
			return cl.PauseRollout(ctx, id, reason)
		}, nil)
}

func (a *app) rolloutResumeCmd() *cobra.Command {
	return a.rolloutDecisionCmd("resume ID", "Resume a paused rollout; the failures so far are accepted", nil,
		func(ctx context.Context, cl *httpapi.Client, id string) (*cradle.Rollout, error) {
			return cl.ResumeRollout(ctx, id)
		}, nil)
}

func (a *app) rolloutAbortCmd() *cobra.Command {
	var reason string
	return a.rolloutDecisionCmd("abort ID --reason TEXT", "Abort a rollout: no device starts any more (final)",
		func(c *cobra.Command) { c.Flags().StringVar(&reason, "reason", "", "why (required)") },
		func(ctx context.Context, cl *httpapi.Client, id string) (*cradle.Rollout, error) {
			return cl.AbortRollout(ctx, id, reason)
		}, func() error {
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why the rollout is aborted")
			}
			return nil
		})
}

func (a *app) rolloutApproveCmd() *cobra.Command {
	phase := -1
	return a.rolloutDecisionCmd("approve ID --phase N", "Approve a phase that waits for an operator",
		func(c *cobra.Command) {
			c.Flags().IntVar(&phase, "phase", -1, "the phase to approve, numbered from 0 (required)")
		},
		func(ctx context.Context, cl *httpapi.Client, id string) (*cradle.Rollout, error) {
			return cl.ApproveRollout(ctx, id, phase)
		}, func() error {
			if phase < 0 {
				return fmt.Errorf("--phase is required: the phase to approve, numbered from 0")
			}
			return nil
		})
}
