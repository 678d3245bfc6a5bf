package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
)

// Metrics the collector reports beyond cradle.TelemetryMetrics (the
// server accepts any well-formed name).
const (
	// MetricLinkUp is 1 while a network interface other than loopback is
	// up.
	MetricLinkUp = "link.up"
	// MetricRollbackVersion is the anti-rollback counter of the fuses:
	// the lowest firmware security version the unit boots.
	MetricRollbackVersion = "security.rollback_version"
)

// CollectorOptions configures NewCollector. Every source is optional: a
// missing one leaves its metrics out.
type CollectorOptions struct {
	// Root prefixes /proc and /sys ("" means "/"); tests point it at
	// fixtures.
	Root string
	// DataDir is on the data partition whose use is health.storage_pct;
	// "" leaves it out.
	DataDir string
	// Device gives the security state (fuses); nil leaves it out.
	Device *hw.Device
	// Power is the unit's power monitor (battery, energy), read after
	// /sys/class/power_supply and taking precedence; nil: none.
	Power hw.Power
	// CertNotAfter returns the LDevID's expiry (zero while there is none)
	// for security.cert_expiry_s; nil leaves it out.
	CertNotAfter func() time.Time
	// Reconnects returns the channel's reconnection count for
	// link.reconnects; nil leaves it out.
	Reconnects func() int64
	// Logger receives a debug line per source that could not be read;
	// nil discards.
	Logger *slog.Logger
}

// Collector gathers a unit's telemetry from Linux (/proc, /sys, statfs),
// its hardware (fuses, power monitor), its identity and its channel. It is
// safe for concurrent use.
type Collector struct {
	opts CollectorOptions

	mu        sync.Mutex
	prevBusy  uint64 // /proc/stat at the last Collect
	prevTotal uint64
}

// NewCollector returns a collector over opts.
func NewCollector(opts CollectorOptions) *Collector {
	if opts.Root == "" {
		opts.Root = "/"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{opts: opts}
}

// telemetryPayload is the JSON cradle.ParseTelemetry reads.
type telemetryPayload struct {
	Time    string             `json:"time"`
	Metrics map[string]float64 `json:"metrics"`
}

// Collect returns one telemetry payload at now, as cradle.ParseTelemetry
// reads it: {"time": …, "metrics": {…}}. health.cpu_pct is the load since
// the previous Collect, so the first call leaves it out. A source that
// cannot be read is left out (and logged at debug level); values out of
// their metric's range are left out too, so the payload is always
// accepted. It fails only when no source gave anything.
func (c *Collector) Collect(ctx context.Context, now time.Time) ([]byte, error) {
	m := map[string]float64{}
	c.health(m)
	c.battery(ctx, m)
	c.link(m)
	c.security(ctx, m, now)
	if c.opts.Reconnects != nil {
		m["link.reconnects"] = float64(c.opts.Reconnects())
	}
	for name, v := range m {
		if err := cradle.ValidateMetricValue(name, v); err != nil {
			c.opts.Logger.Debug("telemetry value left out", "err", err)
			delete(m, name)
		}
	}
	if len(m) == 0 {
		return nil, errors.New("agent: telemetry: no source could be read")
	}
	return json.Marshal(telemetryPayload{Time: now.UTC().Format(time.RFC3339Nano), Metrics: m})
}

func (c *Collector) path(p string) string { return filepath.Join(c.opts.Root, p) }

func (c *Collector) skip(source string, err error) {
	c.opts.Logger.Debug("telemetry source not read", "source", source, "err", err)
}

func (c *Collector) health(m map[string]float64) {
	if b, err := os.ReadFile(c.path("proc/uptime")); err != nil {
		c.skip("uptime", err)
	} else if f := strings.Fields(string(b)); len(f) == 0 {
		c.skip("uptime", errors.New("empty"))
	} else if v, err := strconv.ParseFloat(f[0], 64); err != nil {
		c.skip("uptime", err)
	} else {
		m["health.uptime_s"] = v
	}
	if busy, total, err := c.cpuTimes(); err != nil {
		c.skip("cpu", err)
	} else {
		c.mu.Lock()
		if c.prevTotal > 0 && total > c.prevTotal && busy >= c.prevBusy {
			m["health.cpu_pct"] = 100 * float64(busy-c.prevBusy) / float64(total-c.prevTotal)
		}
		c.prevBusy, c.prevTotal = busy, total
		c.mu.Unlock()
	}
	if v, err := c.memPct(); err != nil {
		c.skip("meminfo", err)
	} else {
		m["health.mem_pct"] = v
	}
	if c.opts.DataDir != "" {
		var st syscall.Statfs_t
		if err := syscall.Statfs(c.opts.DataDir, &st); err != nil {
			c.skip("statfs", err)
		} else if used, avail := st.Blocks-st.Bfree, st.Bavail; used+avail > 0 {
			m["health.storage_pct"] = 100 * float64(used) / float64(used+avail)
		}
	}
	if v, ok := c.temperature(); ok {
		m["health.temp_c"] = v
	}
}

// cpuTimes reads the busy and total jiffies of all CPUs from /proc/stat.
func (c *Collector) cpuTimes() (busy, total uint64, err error) {
	b, err := os.ReadFile(c.path("proc/stat"))
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, errors.New("no cpu line")
	}
	// user nice system idle iowait irq softirq steal (guest time is
	// already in user and nice).
	var idle uint64
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("cpu line: %w", err)
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return total - idle, total, nil
}

// memPct reads /proc/meminfo: the share of MemTotal not MemAvailable.
func (c *Collector) memPct() (float64, error) {
	b, err := os.ReadFile(c.path("proc/meminfo"))
	if err != nil {
		return 0, err
	}
	var total, avail float64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			total = n
		case "MemAvailable":
			avail = n
		}
	}
	if total <= 0 || avail > total {
		return 0, errors.New("no MemTotal and MemAvailable")
	}
	return 100 * (total - avail) / total, nil
}

// temperature is the hottest thermal zone, in °C.
func (c *Collector) temperature() (float64, bool) {
	zones, _ := filepath.Glob(c.path("sys/class/thermal/thermal_zone*/temp"))
	hot, ok := math.Inf(-1), false
	for _, z := range zones {
		if v, err := readNumber(z); err == nil {
			hot, ok = math.Max(hot, v/1000), true // millidegrees
		} else {
			c.skip("thermal", err)
		}
	}
	return hot, ok
}

func readNumber(path string) (float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
}

func readWord(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// battery reads the first battery of /sys/class/power_supply, then the
// power monitor.
func (c *Collector) battery(ctx context.Context, m map[string]float64) {
	supplies, _ := filepath.Glob(c.path("sys/class/power_supply/*"))
	sort.Strings(supplies)
	for _, s := range supplies {
		if readWord(filepath.Join(s, "type")) != "Battery" {
			continue
		}
		if v, err := readNumber(filepath.Join(s, "capacity")); err == nil {
			m["battery.pct"] = v
		}
		if v, err := readNumber(filepath.Join(s, "voltage_now")); err == nil {
			m["battery.voltage_v"] = v / 1e6 // microvolts
		}
		switch readWord(filepath.Join(s, "status")) {
		case "Charging":
			m["battery.charging"] = 1
		case "Discharging", "Not charging", "Full":
			m["battery.charging"] = 0
		}
		break
	}
	if c.opts.Power == nil {
		return
	}
	r, err := c.opts.Power.ReadPower(ctx)
	if err != nil {
		if !errors.Is(err, hw.ErrNotFound) {
			c.skip("power monitor", err)
		}
		return
	}
	set := func(name string, v *float64) {
		if v != nil {
			m[name] = *v
		}
	}
	set("battery.pct", r.BatteryPct)
	set("battery.voltage_v", r.VoltageV)
	set("energy.wh", r.EnergyWh)
	if r.Charging != nil {
		m["battery.charging"] = 0
		if *r.Charging {
			m["battery.charging"] = 1
		}
	}
}

// link reads the interfaces' state and the wireless signal level.
func (c *Collector) link(m map[string]float64) {
	ifaces, _ := filepath.Glob(c.path("sys/class/net/*"))
	up, seen := false, false
	for _, i := range ifaces {
		if filepath.Base(i) == "lo" {
			continue
		}
		state := readWord(filepath.Join(i, "operstate"))
		if state == "" {
			continue
		}
		seen = true
		up = up || state == "up"
	}
	if seen {
		m[MetricLinkUp] = 0
		if up {
			m[MetricLinkUp] = 1
		}
	}
	// /proc/net/wireless: two header lines, then
	// "wlan0: 0000   70.  -40.  -256  …" (status, link, level, noise).
	b, err := os.ReadFile(c.path("proc/net/wireless"))
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range lines[min(2, len(lines)):] {
		f := strings.Fields(l)
		if len(f) < 4 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSuffix(f[3], "."), 64); err == nil {
			m["link.rssi_dbm"] = v
			return
		}
	}
}

// security reads the fuses and the certificate's expiry.
func (c *Collector) security(ctx context.Context, m map[string]float64, now time.Time) {
	if c.opts.Device != nil && c.opts.Device.Fuses != nil {
		if f, err := c.opts.Device.Fuses.Read(ctx); err != nil {
			c.skip("fuses", err)
		} else {
			m[cradle.MetricSecureBoot] = bit(f.Bit(hw.FuseSecureBoot))
			m[cradle.MetricDebugLocked] = bit(f.Bit(hw.FuseDebugLock))
			if n, err := hw.ThermometerCount(f[hw.FuseAntiRollback]); err == nil {
				m[MetricRollbackVersion] = float64(n)
			}
		}
	}
	if c.opts.CertNotAfter != nil {
		if na := c.opts.CertNotAfter(); !na.IsZero() {
			m[cradle.MetricCertExpiryS] = math.Floor(na.Sub(now).Seconds())
		}
	}
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
