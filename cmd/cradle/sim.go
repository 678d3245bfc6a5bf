package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"cradle/internal/pki"
	"cradle/internal/sim"
)

// simSummary is `cradle sim --json`'s output.
type simSummary struct {
	Provisioned *sim.ProvisionReport `json:"provisioned,omitempty"`
	Enrolled    sim.EnrollReport     `json:"enrolled"`
	Run         *sim.RunReport       `json:"run,omitempty"`
}

func (a *app) simCmd() *cobra.Command {
	var (
		devices, concurrency              int
		dir, dataDir, passFile, deviceURL string
		mqttAddr, scenario                string
		duration, interval, offlineFor    time.Duration
		enrollTimeout                     time.Duration
		churnRate, offlineShare           float64
		jsonOut, noRun                    bool
	)
	cmd := &cobra.Command{
		Use:   "sim --devices N --data-dir DIR [--scenario steady|churn|offline --duration D]",
		Short: "Simulate a fleet: N devices provisioned, enrolled and connected to a server",
		Long: `Simulate a fleet of devices in this process: the real agent code over simulated
hardware, one directory per device under --dir.

Provisioning is a real factory line, set up through the API with an admin token
(--server, --token or the saved login): a test station enrolled with a new key,
a batch of N units (serials SIM-<tag>-NNNNN), locally administered MACs if the
server has too few, and a small firmware release. Each unit gets its own device
key in its simulated key store, an IDevID signed with the manufacturing CA key
from the server's PKI in --data-dir (run this on the server's machine; the key
files' passphrase comes from $CRADLE_PKI_PASSPHRASE or --passphrase-file), its
identity bundle, firmware and fuses; the station's signed records reach the
server as any station's. The PKI must be a test PKI. Units already in --dir are
kept: only the missing ones up to N are provisioned.

Then every unit enrolls over EST on the device listener (--device-url), at most
--concurrency at a time, connects to the MQTT broker (--mqtt) with its LDevID
and runs the scenario for --duration:

  steady   every device reports telemetry every --interval
  churn    as steady, and every minute a --churn-rate share of the devices
           disconnects and reconnects at a random moment of the minute
  offline  as steady, and an --offline-share of the devices goes offline for
           --offline-for in the middle of the run: their telemetry is spooled
           on disk and flushed when they are back

Every device runs the agent's twin applier: a desired configuration set for
it (cradle device config set, or a config group, e.g. with the selector
"batch in (SIM-<tag>-1,…)") is applied to config.json in its directory and
reported; the server shows the drift.

Progress goes to stderr on a terminal; the summary (enrolled, connected,
telemetry sent, configuration applied, errors, p50/p99 enrollment latency)
to stdout, as JSON with --json.

Against a local server:

  export CRADLE_PKI_PASSPHRASE=…
  cradle pki init --data-dir ./cradle-data --profile test --org Dev --hostname 127.0.0.1
  cradle serve --data-dir ./cradle-data          # prints an admin token once
  export CRADLE_TOKEN=…                          # the admin token
  cradle sim --devices 1000 --data-dir ./cradle-data --dir ./sim-fleet \
      --scenario steady --duration 2m`,
		Example: `  cradle sim --devices 1000 --data-dir ./cradle-data --scenario churn --duration 5m --churn-rate 0.2`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if devices < 1 {
				return errors.New("--devices N is required: how many simulated devices (at least 1)")
			}
			sc, err := sim.ParseScenario(scenario)
			if err != nil {
				return err
			}
			if dir == "" {
				return errors.New("--dir is required: the directory of the simulated devices")
			}
			u, err := url.Parse(deviceURL)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return fmt.Errorf("invalid --device-url %q: give the device listener's https://host:port", deviceURL)
			}
			if mqttAddr == "" {
				mqttAddr = net.JoinHostPort(u.Hostname(), "8883")
			}
			var progress io.Writer = io.Discard
			if isTerminal(a.stderr) {
				progress = a.stderr
			}
			var out simSummary
			have := 0
			if ents, err := os.ReadDir(dir); err == nil {
				for _, e := range ents {
					if matched, _ := filepath.Match("unit-*", e.Name()); matched {
						have++
					}
				}
			}
			if missing := devices - have; missing > 0 {
				if dataDir == "" {
					return fmt.Errorf("--data-dir is required to provision %d devices: the server's data directory, whose PKI signs their IDevIDs", missing)
				}
				server, token, err := a.endpoint()
				if err != nil {
					return err
				}
				if token == "" {
					return errors.New("no API token: provisioning sets up a factory line and needs an admin token (--token, $CRADLE_TOKEN or cradle login)")
				}
				h, keys, closeKeys, err := openPKI(ctx, dataDir, pkiPassphrase(passFile, a.stdin, a.stderr), pki.NameManufacturingCA)
				if err != nil {
					return err
				}
				defer closeKeys()
				line, err := sim.SetUpLine(ctx, dir, sim.LineConfig{API: server, Token: token, Root: h.Root, ManufacturingCA: h.ManufacturingCA,
					ManufacturingKey: keys[pki.NameManufacturingCA], CommandSigner: h.CommandSigner, Units: missing})
				if err != nil {
					return err
				}
				defer line.Close()
				rep, err := sim.Provision(ctx, line, dir, sim.Progress(progress, "provisioning"))
				out.Provisioned = &rep
				if err != nil {
					return err
				}
				if rep.Failed > 0 {
					return fmt.Errorf("%d of %d units failed at the station; see the progress above or rerun with a terminal", rep.Failed, rep.Units)
				}
			}
			fleet, err := sim.Open(ctx, dir, sim.Options{ServerURL: u.String(), MQTTAddr: mqttAddr, Concurrency: concurrency})
			if err != nil {
				return err
			}
			ectx, cancel := context.WithTimeout(ctx, enrollTimeout)
			out.Enrolled = fleet.Enroll(ectx, sim.Progress(progress, "enrolled"))
			cancel()
			if out.Enrolled.Failed > 0 {
				a.printSim(out, jsonOut)
				return fmt.Errorf("%d of %d devices did not enroll: %s", out.Enrolled.Failed, out.Enrolled.Units, firstOf(out.Enrolled.Errors))
			}
			if !noRun {
				rep, err := fleet.Run(ctx, sim.RunConfig{Scenario: sc, Duration: duration, Interval: interval,
					ChurnRate: churnRate, OfflineShare: offlineShare, OfflineFor: offlineFor, Progress: progress})
				out.Run = &rep
				if err != nil {
					a.printSim(out, jsonOut)
					return err
				}
			}
			a.printSim(out, jsonOut)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&devices, "devices", 0, "how many simulated devices (provisioned when --dir has fewer)")
	f.StringVar(&dir, "dir", "cradle-sim", "the directory of the simulated devices (kept between runs)")
	f.StringVar(&dataDir, "data-dir", "", "the server's data directory, whose PKI signs the IDevIDs (needed to provision)")
	f.StringVar(&passFile, "passphrase-file", "", "file whose first line is the PKI key files' passphrase (default: $"+pkiPassphraseEnv+", else a prompt)")
	f.StringVar(&deviceURL, "device-url", "https://127.0.0.1:8443", "the device listener (EST, device API)")
	f.StringVar(&mqttAddr, "mqtt", "", "the MQTT broker's host:port (default: --device-url's host, port 8883)")
	f.IntVar(&concurrency, "concurrency", 32, "devices enrolling or connecting at once")
	f.DurationVar(&enrollTimeout, "enroll-timeout", 5*time.Minute, "give up enrolling the devices not enrolled after this long")
	f.StringVar(&scenario, "scenario", "steady", "steady, churn or offline")
	f.DurationVar(&duration, "duration", time.Minute, "how long the scenario runs")
	f.DurationVar(&interval, "interval", 10*time.Second, "telemetry interval of each device")
	f.Float64Var(&churnRate, "churn-rate", 0.1, "churn: share of the devices that disconnect and reconnect each minute (0 to 1)")
	f.Float64Var(&offlineShare, "offline-share", 0.2, "offline: share of the devices that go offline (0 to 1)")
	f.DurationVar(&offlineFor, "offline-for", 0, "offline: how long they stay offline (default: a third of --duration)")
	f.BoolVar(&noRun, "enroll-only", false, "provision and enroll, then stop without connecting")
	f.BoolVar(&jsonOut, "json", false, "print the summary as JSON")
	a.addClientFlags(cmd)
	return cmd
}

func firstOf(errs []string) string {
	if len(errs) == 0 {
		return "no error recorded"
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Sprintf("%s (and %d more)", errs[0], len(errs)-1)
}

func (a *app) printSim(s simSummary, jsonOut bool) {
	if jsonOut {
		b, _ := json.Marshal(s)
		fmt.Fprintf(a.stdout, "%s\n", b)
		return
	}
	if p := s.Provisioned; p != nil {
		fmt.Fprintf(a.stdout, "provisioned: %d of %d in %s (%d records on the server, %d pending)\n", p.OK, p.Units, p.Elapsed.Round(time.Millisecond), p.Uploaded, p.Pending)
	}
	e := s.Enrolled
	fmt.Fprintf(a.stdout, "enrolled:    %d of %d in %s, latency p50 %s p99 %s, %d errors\n", e.Enrolled, e.Units, e.Elapsed.Round(time.Millisecond),
		e.P50.Round(time.Millisecond), e.P99.Round(time.Millisecond), len(e.Errors))
	if r := s.Run; r != nil {
		fmt.Fprintf(a.stdout, "%s for %s: %d connected (%d connections, %d link cuts), telemetry sent %d (spooled %d, unsent %d), config applied on %d (not applied on %d), %d errors\n",
			r.Scenario, r.Elapsed.Round(time.Second), r.Connected, r.Connections, r.LinkDowns, r.TelemetrySent, r.Spooled, r.Unsent,
			r.ConfigApplied, r.ConfigNotApplied, len(r.Errors))
		for _, e := range r.Errors {
			fmt.Fprintf(a.stdout, "  error: %s\n", e)
		}
	}
}
