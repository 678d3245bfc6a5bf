package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"cradle"
)

func (a *app) deviceClaimCmd() *cobra.Command {
	var (
		c        cradle.DeviceClaim
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "claim SERIAL --code CODE [--site SITE] [--owner OWNER]",
		Short: "Claim a device with the code on its label, binding it to a site or owner",
		Long: `Claim a device with the claim code printed on its label (from the factory
station), binding it to a site, an owner or both. They are stored as the device's
labels site= and owner=, and a quarantine=true label (see "cradle policy") is
removed. Case, hyphens and spaces in the code do not matter.

A wrong code is refused and audited; after 5 wrong codes in a row claiming the
device is locked for 15 minutes. Claiming again for the same site and owner is
answered with the device; for another site or owner it is refused.`,
		Example: `  cradle device claim SX-2648-00001 --code 7K3M-9QXA-2PZ --site plant-7 --owner acme-ops`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c.Code == "" {
				return fmt.Errorf("--code is required: the claim code printed on the unit's label")
			}
			if c.Site == "" && c.Owner == "" {
				return fmt.Errorf("give --site, --owner or both")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			d, err := cl.ClaimDevice(cmd.Context(), args[0], c)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, d)
			}
			return writeDevice(a.stdout, d)
		},
	}
	cmd.Flags().StringVar(&c.Code, "code", "", "the claim code from the unit's label (required)")
	cmd.Flags().StringVar(&c.Site, "site", "", "the site to bind the device to (label site)")
	cmd.Flags().StringVar(&c.Owner, "owner", "", "the owner to bind the device to (label owner)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the device as JSON")
	return cmd
}

// parseSpan reads a span flag such as 90m, 36h or 7d.
func parseSpan(flag, s string) (time.Duration, error) {
	d, ok := spanOf(s)
	if !ok || d <= 0 {
		return 0, fmt.Errorf("invalid --%s %q: use a positive span such as 90m, 36h or 7d", flag, s)
	}
	return d, nil
}

func (a *app) deviceTelemetryCmd() *cobra.Command {
	var (
		metric, since, from, to, step string
		jsonFlag                      bool
	)
	cmd := &cobra.Command{
		Use:   "telemetry SERIAL --metric METRIC [--since 1h] [--step 5m]",
		Short: "Show one metric of a device over time",
		Long: `Show one metric of a device over time: the raw points, or with --step the
minimum, maximum and average of each bucket of that width. Points older than the
server's raw retention are kept as hourly rollups.

Metrics the agent reports: ` + metricNames() + `.`,
		Example: `  cradle device telemetry SX-2648-00001 --metric health.cpu_pct --since 6h --step 15m`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if metric == "" {
				return fmt.Errorf("--metric is required, such as --metric health.cpu_pct")
			}
			q := cradle.TelemetryQuery{Serial: args[0], Metric: metric}
			var err error
			switch {
			case from != "" && cmd.Flags().Changed("since"):
				return fmt.Errorf("give --since or --from, not both")
			case from != "":
				if q.From, err = time.Parse(time.RFC3339, from); err != nil {
					return fmt.Errorf("invalid --from %q: use an RFC 3339 time such as 2026-03-01T09:00:00Z", from)
				}
			default:
				span, err := parseSpan("since", since)
				if err != nil {
					return err
				}
				q.From = time.Now().Add(-span)
			}
			if to != "" {
				if q.To, err = time.Parse(time.RFC3339, to); err != nil {
					return fmt.Errorf("invalid --to %q: use an RFC 3339 time such as 2026-03-01T10:00:00Z", to)
				}
			}
			if step != "" {
				if q.Step, err = parseSpan("step", step); err != nil {
					return err
				}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			series, err := cl.DeviceTelemetry(cmd.Context(), q)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, series)
			}
			unit := ""
			if m, ok := cradle.LookupMetric(metric); ok {
				unit = m.Unit
			}
			if q.Step == 0 {
				t := newTable(a.stdout, "TIME", "VALUE", "UNIT")
				for _, s := range series.Samples {
					if s.Count == 1 {
						t.row(formatTime(s.Time), formatValue(s.Avg), unit)
					} else { // an hourly rollup of pruned raw points
						t.row(formatTime(s.Time), fmt.Sprintf("%s (avg of %d, min %s, max %s)", formatValue(s.Avg), s.Count, formatValue(s.Min), formatValue(s.Max)), unit)
					}
				}
				return t.flush()
			}
			t := newTable(a.stdout, "TIME", "MIN", "MAX", "AVG", "COUNT", "UNIT")
			for _, s := range series.Samples {
				t.row(formatTime(s.Time), formatValue(s.Min), formatValue(s.Max), formatValue(s.Avg), strconv.FormatInt(s.Count, 10), unit)
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&metric, "metric", "", "the metric, such as health.cpu_pct (required)")
	cmd.Flags().StringVar(&since, "since", "1h", "how far back: a span such as 90m, 36h or 7d")
	cmd.Flags().StringVar(&from, "from", "", "start at this RFC 3339 time instead of --since")
	cmd.Flags().StringVar(&to, "to", "", "end before this RFC 3339 time (default: now)")
	cmd.Flags().StringVar(&step, "step", "", "aggregate into buckets of this width, such as 5m or 1h (default: raw points)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"serial","metric","from","to","step","samples":[{"time","min","max","avg","count"}…]}`)
	cmd.RegisterFlagCompletionFunc("metric", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		var names []string
		for _, m := range cradle.TelemetryMetrics {
			names = append(names, m.Name+"\t"+m.Description)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func metricNames() string {
	var names []string
	for _, m := range cradle.TelemetryMetrics {
		names = append(names, m.Name)
	}
	return strings.Join(names, ", ")
}

// formatValue writes a measurement compactly: 12.5, 3, 1e+09.
func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (a *app) deviceStatusCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "status SERIAL",
		Short: "Show what the server concludes about a device from its telemetry",
		Long: `Show what the server concludes about a device from its latest telemetry: online
or offline (3 missed reporting intervals of 60 s), battery low (below 15 %),
certificate expiring (within 14 days), insecure (secure boot off or debug ports
unlocked) and attested (the last TPM attestation verified), with the reasons, and
the newest value of each metric.`,
		Example: `  cradle device status SX-2648-00001`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			rep, err := cl.DeviceStatus(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, rep)
			}
			st := rep.Status
			t := newTable(a.stdout)
			t.row("serial:", rep.Serial)
			t.row("state:", string(rep.State))
			t.row("labels:", formatLabels(rep.Labels))
			if rep.Firmware != "" {
				t.row("firmware:", rep.Firmware+" (factory)")
			}
			online := "offline"
			if st.Online {
				online = "online"
			}
			t.row("connection:", online)
			if st.LastSeen.IsZero() {
				t.row("last seen:", "never")
			} else {
				t.row("last seen:", formatTime(st.LastSeen))
			}
			t.row("battery low:", yesNo(st.BatteryLow))
			t.row("certificate expiring:", yesNo(st.CertExpiring))
			t.row("insecure:", yesNo(st.Insecure))
			if st.Attested == nil {
				t.row("attested:", "unknown")
			} else {
				t.row("attested:", yesNo(*st.Attested))
			}
			for i, r := range st.Reasons {
				label := ""
				if i == 0 {
					label = "reasons:"
				}
				t.row(label, r)
			}
			if err := t.flush(); err != nil {
				return err
			}
			if len(rep.Latest) == 0 {
				return nil
			}
			fmt.Fprintln(a.stdout)
			names := make([]string, 0, len(rep.Latest))
			for n := range rep.Latest {
				names = append(names, n)
			}
			sort.Strings(names)
			lt := newTable(a.stdout, "METRIC", "VALUE", "UNIT", "AT")
			for _, n := range names {
				unit := ""
				if m, ok := cradle.LookupMetric(n); ok {
					unit = m.Unit
				}
				p := rep.Latest[n]
				lt.row(n, formatValue(p.Value), orDash(unit), formatTime(p.Time))
			}
			return lt.flush()
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"serial","state","labels","status":{…},"latest":{…}}`)
	return cmd
}

func (a *app) policyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Show or change the tenant's fleet policy",
		Long: `Show or change the tenant's fleet policy.

quarantine_unclaimed: when on, a device that enrolls before it is claimed
("cradle device claim") gets the label quarantine=true, so that config groups
and rollouts can hold it apart (selector quarantine=true, or !quarantine to
leave it out); claiming it removes the label. Off by default.

decommission_approvers: how many admins must agree to decommission a device
("cradle device decommission"): 0 or 1, the requester alone (the default), or
2, a second admin approves.`,
	}
	a.addClientFlags(cmd)
	var jsonFlag bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the tenant's policy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			p, err := cl.FindPolicy(cmd.Context())
			if err != nil {
				return err
			}
			return a.writePolicy(p, jsonFlag)
		},
	}
	show.Flags().BoolVar(&jsonFlag, "json", false, `print {"quarantine_unclaimed":…}`)
	var quarantine bool
	var approvers int
	set := &cobra.Command{
		Use:   "set [--quarantine-unclaimed=true|false] [--decommission-approvers N]",
		Short: "Change the tenant's policy (admin)",
		Example: `  cradle policy set --quarantine-unclaimed=true
  cradle policy set --decommission-approvers 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, d := cmd.Flags().Changed("quarantine-unclaimed"), cmd.Flags().Changed("decommission-approvers")
			if !q && !d {
				return fmt.Errorf("nothing to change: give --quarantine-unclaimed=true|false or --decommission-approvers 0|1|2")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			// The flags not given keep their values.
			p, err := cl.FindPolicy(cmd.Context())
			if err != nil {
				return err
			}
			if q {
				p.QuarantineUnclaimed = quarantine
			}
			if d {
				p.DecommissionApprovers = approvers
			}
			p, err = cl.UpdatePolicy(cmd.Context(), *p)
			if err != nil {
				return err
			}
			return a.writePolicy(p, jsonFlag)
		},
	}
	set.Flags().BoolVar(&quarantine, "quarantine-unclaimed", false, "label devices that enroll unclaimed quarantine=true")
	set.Flags().IntVar(&approvers, "decommission-approvers", 0, "admins who must agree to decommission a device: 0 or 1 (the requester alone) or 2")
	set.Flags().BoolVar(&jsonFlag, "json", false, "print the policy as JSON")
	cmd.AddCommand(show, set)
	return cmd
}

func (a *app) writePolicy(p *cradle.TenantPolicy, jsonFlag bool) error {
	if jsonFlag {
		return writeJSON(a.stdout, p)
	}
	t := newTable(a.stdout)
	t.row("quarantine_unclaimed:", strconv.FormatBool(p.QuarantineUnclaimed))
	if err := t.flush(); err != nil {
		return err
	}
	// A table of its own, so that the line above keeps its alignment.
	t = newTable(a.stdout)
	t.row("decommission_approvers:", strconv.Itoa(max(p.DecommissionApprovers, 1)))
	return t.flush()
}
