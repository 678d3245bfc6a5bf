package sim

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"cradle"
	"cradle/internal/agent"
)

// RunReport sums Fleet.Run.
type RunReport struct {
	Scenario Scenario      `json:"scenario"`
	Devices  int           `json:"devices"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	// Connected is the devices connected over MQTT at the end of the run.
	Connected int `json:"connected"`
	// Connections counts MQTT connections made (reconnections included).
	Connections int64 `json:"connections"`
	// LinkDowns counts the scenario's link cuts (churn, offline).
	LinkDowns int `json:"link_downs"`
	// TelemetrySent counts telemetry messages the server acknowledged
	// (over MQTT or HTTPS), spooled ones flushed later included.
	TelemetrySent int64 `json:"telemetry_sent"`
	// Spooled counts telemetry messages that waited in a device's spool.
	Spooled int64 `json:"spooled"`
	// Unsent counts telemetry messages still in the devices' spools at
	// the end.
	Unsent int64 `json:"unsent"`
	// ConfigApplied counts the devices whose last desired configuration
	// document (version ≥ 1) is applied at the end; ConfigNotApplied those
	// whose last one was rejected or failed.
	ConfigApplied    int `json:"config_applied"`
	ConfigNotApplied int `json:"config_not_applied"`
	// Errors are the devices' failures, "serial: error", at most one per
	// device.
	Errors []string `json:"errors,omitempty"`
}

// counters are a run's shared counts.
type counters struct {
	everConnected, spooled atomic.Int64
}

// Run connects every enrolled device's agent runtime (MQTT with its
// LDevID, HTTPS as the fallback) and runs the scenario for cfg.Duration,
// then disconnects them. Each device applies the desired configuration
// documents the server sends with the agent's twin applier (its running
// config is written to config.json in its unit directory) and reports
// them. Devices start Options.Concurrency at a time. It
// fails when cfg is invalid or a device is not enrolled; the devices'
// own failures are in the report.
func (f *Fleet) Run(ctx context.Context, cfg RunConfig) (RunReport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return RunReport{}, err
	}
	rep := RunReport{Scenario: cfg.Scenario, Devices: len(f.Devices)}
	windows := plan(cfg, len(f.Devices))
	var c counters
	var mu sync.Mutex
	fail := func(d *Device, err error) {
		mu.Lock()
		rep.Errors = append(rep.Errors, d.Serial+": "+err.Error())
		mu.Unlock()
	}
	start := time.Now()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	end := time.NewTimer(cfg.Duration)
	defer end.Stop()

	devs := make([]*running, len(f.Devices))
	var devMu sync.Mutex
	connected := func() (n int) {
		devMu.Lock()
		defer devMu.Unlock()
		for _, r := range devs {
			if r != nil {
				r.observe(&c)
				if r.rt.Channel() == agent.ChannelMQTT {
					n++
				}
			}
		}
		return n
	}
	// Progress once a second.
	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	progressDone.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				fmt.Fprintln(cfg.Progress)
				return
			case <-t.C:
				fmt.Fprintf(cfg.Progress, "\r\033[K%s %s/%s  connected %d/%d  spooled %d",
					cfg.Scenario, time.Since(start).Round(time.Second), cfg.Duration, connected(), len(f.Devices), c.spooled.Load())
			}
		}
	})

	sem := make(chan struct{}, f.opts.Concurrency)
	var wg sync.WaitGroup
	var linkDowns, sent, unsent, connections, applied, notApplied atomic.Int64
	for i, d := range f.Devices {
		wg.Go(func() {
			l := newLink()
			r, err := f.startDevice(runCtx, d, l, &c, sem, cfg)
			if err != nil {
				fail(d, err)
				return
			}
			devMu.Lock()
			devs[i] = r
			devMu.Unlock()
			for _, w := range windows[i] {
				if !sleepUntil(runCtx, start.Add(w.from)) {
					break
				}
				l.setDown(true)
				linkDowns.Add(1)
				if !sleepUntil(runCtx, start.Add(w.to)) {
					break
				}
				l.setDown(false)
			}
			<-runCtx.Done()
			if r.seenMQTT.Load() {
				connections.Add(1 + r.rt.Reconnects())
			}
			s, u, err := r.stop()
			sent.Add(s)
			unsent.Add(u)
			switch v, status := r.config(); {
			case v >= 1 && status == cradle.ReportApplied:
				applied.Add(1)
			case v >= 1:
				notApplied.Add(1)
			}
			if err != nil {
				fail(d, err)
			}
		})
	}
	select {
	case <-end.C:
	case <-cfg.Done:
	case <-ctx.Done():
	}
	rep.Connected = connected()
	cancel()
	wg.Wait()
	close(stopProgress)
	progressDone.Wait()
	rep.Elapsed = time.Since(start)
	rep.Connections, rep.TelemetrySent, rep.Spooled, rep.Unsent = connections.Load(), sent.Load(), c.spooled.Load(), unsent.Load()
	rep.LinkDowns = int(linkDowns.Load())
	rep.ConfigApplied, rep.ConfigNotApplied = int(applied.Load()), int(notApplied.Load())
	return rep, ctx.Err()
}

// sleepUntil waits until t; false when ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	tm := time.NewTimer(time.Until(t))
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}
