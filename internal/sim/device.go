package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/spool"
	"cradle/internal/agent/twin"
	"cradle/internal/atomicfile"
)

// running is a device's agent runtime during Fleet.Run.
type running struct {
	d      *Device
	rt     *agent.Runtime
	sp     *spool.Spool
	link   *link
	cancel context.CancelFunc
	done   chan struct{}

	twin      *twin.Applier
	initial   int   // records in the spool when it started
	collected int64 // telemetry payloads spooled
	seenMQTT  atomic.Bool
}

// startDevice starts d's agent runtime over its link, holding a slot of
// sem until it is connected over MQTT (or gave up for now), so that the
// fleet's TLS handshakes are spread out.
func (f *Fleet) startDevice(ctx context.Context, d *Device, l *link, c *counters, sem chan struct{}, cfg RunConfig) (*running, error) {
	d.mu.Lock()
	st := d.identity.State()
	serial, roots, err := d.identity.ChannelParams(ctx)
	tlsCert, certErr := d.identity.Certificate(ctx)
	d.mu.Unlock()
	switch {
	case err != nil:
		return nil, err
	case st.Status != agent.StatusEnrolled || certErr != nil:
		return nil, fmt.Errorf("sim: not enrolled (%s): enroll the fleet first", st.Status)
	}
	if err := simPower(d); err != nil {
		return nil, err
	}
	tw, err := twin.New(twin.Options{StateDir: filepath.Join(d.StateDir(), "twin"), Now: f.opts.Now,
		Handlers: []twin.Handler{&twin.File{Path: d.ConfigFile(), Mode: 0o644}}, Logger: f.opts.Logger.With("serial", serial)})
	if err != nil {
		return nil, err
	}
	sp, err := spool.Open(filepath.Join(d.StateDir(), "spool"), spool.Options{})
	if err != nil {
		return nil, err
	}
	r := &running{d: d, sp: sp, link: l, twin: tw, done: make(chan struct{}), initial: sp.Stats().Records}
	collector := agent.NewCollector(agent.CollectorOptions{DataDir: d.StateDir(), Device: d.HW, Power: hw.SimPower{Dir: d.UnitDir()},
		CertNotAfter: func() time.Time { return r.rt.CertNotAfter() }, Reconnects: func() int64 { return r.rt.Reconnects() }})
	collect := func(ctx context.Context, now time.Time) ([]byte, error) {
		b, err := collector.Collect(ctx, now)
		if err == nil {
			atomic.AddInt64(&r.collected, 1)
			if r.rt.Channel() != agent.ChannelMQTT {
				c.spooled.Add(1)
			}
		}
		return b, err
	}
	r.rt, err = agent.NewRuntime(agent.RuntimeOptions{
		Serial: serial, ServerURL: f.opts.ServerURL, MQTTAddr: f.opts.MQTTAddr, Roots: roots,
		Interval: cfg.Interval, Collect: collect, Spool: sp,
		Twin: tw.Apply, TwinReported: tw.Reported,
		// A pulled link is back within seconds in a simulation: retry
		// soon, not after the field's minutes.
		Backoff: agent.Backoff{Base: 200 * time.Millisecond, Max: time.Second},
		Rand:    rand.New(rand.NewPCG(cfg.Seed, uint64(len(d.Serial))<<32|uint64(crc(d.Serial)))),
		Now:     f.opts.Now, Logger: f.opts.Logger.With("serial", serial),
		Dial: l.DialContext,
	})
	if err != nil {
		sp.Close()
		return nil, err
	}
	r.rt.SetCertificate(tlsCert)
	rctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		cancel()
		sp.Close()
		return nil, ctx.Err()
	}
	go func() {
		defer close(r.done)
		r.rt.Run(rctx)
	}()
	// Hold the slot until connected, or a while.
	deadline := time.Now().Add(10 * time.Second)
	for r.rt.Channel() != agent.ChannelMQTT && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	<-sem
	r.observe(c)
	return r, nil
}

// observe notes that the device is connected over MQTT.
func (r *running) observe(c *counters) {
	if r.rt.Channel() == agent.ChannelMQTT && !r.seenMQTT.Swap(true) {
		c.everConnected.Add(1)
	}
}

// stop stops the runtime and closes the spool; it returns the telemetry
// the server acknowledged and what is still spooled.
func (r *running) stop() (sent, unsent int64, err error) {
	r.cancel()
	<-r.done
	st := r.sp.Stats()
	unsent = int64(st.Records)
	sent = int64(r.initial) + atomic.LoadInt64(&r.collected) - unsent - st.Dropped
	return sent, unsent, r.sp.Close()
}

// config returns the version and status of the device's last report.
func (r *running) config() (int64, cradle.ReportStatus) {
	rep, err := cradle.ParseReported(r.twin.Reported())
	if err != nil {
		return 0, ""
	}
	return rep.Version, rep.Status
}

// simPower gives a unit a power monitor reading (battery and energy
// counter) when it has none, so that its telemetry carries them.
func simPower(d *Device) error {
	path := filepath.Join(d.UnitDir(), hw.PowerFile)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	pct, volt, wh, charging := 20+rand.Float64()*80, 3.6+rand.Float64()*0.6, rand.Float64()*1000, rand.IntN(2) == 0
	b, err := json.Marshal(hw.PowerReading{BatteryPct: &pct, VoltageV: &volt, Charging: &charging, EnergyWh: &wh})
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o644)
}

// crc is a small hash of s, to seed each device's jitter differently.
func crc(s string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}
