package cradle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
)

// TelemetryPoint is one measurement a device reported: the value of one
// metric at one time.
type TelemetryPoint struct {
	Serial string    `json:"serial,omitempty"` // the device; set by the service, not by the payload
	Metric string    `json:"metric"`           // a name from TelemetryMetrics, or any name ValidateMetricName accepts
	Time   time.Time `json:"time"`             // zero: the time the server receives it
	Value  float64   `json:"value"`            // finite; booleans are 0 and 1
}

// MetricInfo describes a metric of the vocabulary: its unit and the range a
// value must be in. A Bool metric takes 0 (false) or 1 (true) only.
type MetricInfo struct {
	Name        string
	Unit        string
	Description string
	Min, Max    float64
	Bool        bool
}

// TelemetryMetrics is the vocabulary of metrics the agent reports, by group.
// Values of these metrics are checked against their range. Other names are
// accepted as long as ValidateMetricName accepts them (an agent extension,
// a newer agent); their values need only be finite.
var TelemetryMetrics = []MetricInfo{
	// Health.
	{Name: "health.uptime_s", Unit: "s", Description: "time since boot", Min: 0, Max: math.MaxFloat64},
	{Name: "health.cpu_pct", Unit: "%", Description: "CPU load over the last reporting interval", Min: 0, Max: 100},
	{Name: "health.mem_pct", Unit: "%", Description: "memory in use", Min: 0, Max: 100},
	{Name: "health.storage_pct", Unit: "%", Description: "data partition in use", Min: 0, Max: 100},
	{Name: "health.temp_c", Unit: "°C", Description: "SoC temperature", Min: -273.15, Max: 1000},
	// Battery.
	{Name: "battery.pct", Unit: "%", Description: "state of charge", Min: 0, Max: 100},
	{Name: "battery.voltage_v", Unit: "V", Description: "battery voltage", Min: 0, Max: 1000},
	{Name: "battery.charging", Unit: "bool", Description: "1 while charging", Min: 0, Max: 1, Bool: true},
	// Connectivity.
	{Name: "link.rssi_dbm", Unit: "dBm", Description: "received signal strength of the active link", Min: -200, Max: 50},
	{Name: "link.reconnects", Unit: "count", Description: "reconnections to the server since the agent started", Min: 0, Max: math.MaxFloat64},
	// Energy.
	{Name: "energy.wh", Unit: "Wh", Description: "energy counter since installation", Min: 0, Max: math.MaxFloat64},
	// Security state.
	{Name: "security.secure_boot", Unit: "bool", Description: "1 when the boot chain is verified", Min: 0, Max: 1, Bool: true},
	{Name: "security.debug_locked", Unit: "bool", Description: "1 when the debug ports (JTAG, SWD) are locked", Min: 0, Max: 1, Bool: true},
	{Name: "security.cert_expiry_s", Unit: "s", Description: "time left until the device certificate expires, as of the point's time; negative once expired", Min: -math.MaxFloat64, Max: math.MaxFloat64},
	{Name: "security.attested", Unit: "bool", Description: "1 when the last TPM attestation was verified by the server", Min: 0, Max: 1, Bool: true},
}

// Metric names of the vocabulary that DeriveStatus reads.
const (
	MetricBatteryPct  = "battery.pct"
	MetricSecureBoot  = "security.secure_boot"
	MetricDebugLocked = "security.debug_locked"
	MetricCertExpiryS = "security.cert_expiry_s"
	MetricAttested    = "security.attested"
)

// Telemetry limits.
const (
	MaxMetricNameLen    = 64      // characters in a metric name
	MaxTelemetryPoints  = 10000   // points in one payload or one RecordTelemetry call
	MaxTelemetryBytes   = 1 << 20 // the largest payload ParseTelemetry accepts, whatever its limit
	MaxTelemetrySamples = 10000   // samples one QueryTelemetry returns
)

const (
	telemetryClockSkew = time.Hour // how far ahead of the server a point may be
	telemetryMinYear   = 2000      // points before this year come from a device whose clock is not set
	defaultPayloadSize = 256 << 10 // ParseTelemetry's limit when it is given none
)

var metricIndex = func() map[string]*MetricInfo {
	m := make(map[string]*MetricInfo, len(TelemetryMetrics))
	for i := range TelemetryMetrics {
		m[TelemetryMetrics[i].Name] = &TelemetryMetrics[i]
	}
	return m
}()

// LookupMetric returns the vocabulary entry of a metric, if it has one.
func LookupMetric(name string) (MetricInfo, bool) {
	if m, ok := metricIndex[name]; ok {
		return *m, true
	}
	return MetricInfo{}, false
}

// ValidateMetricName checks a metric name: at most 64 characters, two or
// more dot-separated parts of lower-case letters, digits and '_'
// ([a-z0-9_]+(\.[a-z0-9_]+)+).
func ValidateMetricName(name string) error {
	ok := len(name) > 0 && len(name) <= MaxMetricNameLen
	dots, part := 0, 0
	for i := 0; ok && i < len(name); i++ {
		switch c := name[i]; {
		case c == '.':
			ok = part > 0
			dots, part = dots+1, 0
		case isLower(c) || isDigit(c) || c == '_':
			part++
		default:
			ok = false
		}
	}
	if !ok || dots == 0 || part == 0 {
		return Errorf(EINVALID, "invalid metric name %q: use up to %d characters, dot-separated parts of a-z, 0-9 and '_', such as health.cpu_pct", name, MaxMetricNameLen)
	}
	return nil
}

// ValidateMetricValue checks a value of metric name: finite, and within
// the metric's range when the vocabulary has it.
func ValidateMetricValue(name string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return Errorf(EINVALID, "metric %s: value %v is not a finite number", name, v)
	}
	m, ok := metricIndex[name]
	if !ok {
		return nil
	}
	if m.Bool && v != 0 && v != 1 {
		return Errorf(EINVALID, "metric %s: value %v is not 0 or 1", name, v)
	}
	if v < m.Min || v > m.Max {
		return Errorf(EINVALID, "metric %s: value %v is out of its range [%v, %v] %s", name, v, m.Min, m.Max, m.Unit)
	}
	return nil
}

// ValidateTelemetry checks points before they are stored, against the
// server's time now: each has a valid name and value, and a time (if set)
// after 2000-01-01 (earlier means the device clock is not set) and at most
// an hour ahead of now. The error names the first bad point.
func ValidateTelemetry(pts []TelemetryPoint, now time.Time) error {
	if len(pts) > MaxTelemetryPoints {
		return Errorf(ETOOLARGE, "%d telemetry points in one request; send at most %d", len(pts), MaxTelemetryPoints)
	}
	floor := time.Date(telemetryMinYear, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, p := range pts {
		if err := ValidateMetricName(p.Metric); err != nil {
			return Errorf(EINVALID, "point %d: %s", i, ErrorMessage(err))
		}
		if err := ValidateMetricValue(p.Metric, p.Value); err != nil {
			return Errorf(EINVALID, "point %d: %s", i, ErrorMessage(err))
		}
		if p.Time.IsZero() {
			continue
		}
		if p.Time.Before(floor) {
			return Errorf(EINVALID, "point %d: metric %s: time %s is before %d; set the device clock (NTP) before reporting", i, p.Metric, p.Time.UTC().Format(time.RFC3339), telemetryMinYear)
		}
		if p.Time.After(now.Add(telemetryClockSkew)) {
			return Errorf(EINVALID, "point %d: metric %s: time %s is more than %s ahead of the server (%s); check the device clock", i, p.Metric,
				p.Time.UTC().Format(time.RFC3339), telemetryClockSkew, now.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// ParseTelemetry reads a device's telemetry payload: a JSON object
//
//	{"time": "2026-03-01T09:00:00Z", "metrics": {"health.cpu_pct": 12.5, "battery.charging": true}}
//
// or a JSON array of such objects (a device sending what it buffered while
// offline). "time" is RFC 3339 and optional: a point without it gets a zero
// Time, which the service replaces with the time it receives it. Values are
// JSON numbers; true and false stand for 1 and 0. Unknown fields, duplicate
// metrics in one object, bad names, values that are not finite or out of
// their metric's range, and trailing data are refused with EINVALID naming
// the field. A payload over limit bytes (0 or less: 256 KiB; never more than
// MaxTelemetryBytes) or with more than MaxTelemetryPoints points is refused
// with ETOOLARGE. Serial is left empty. Points come out in payload order.
func ParseTelemetry(r io.Reader, limit int) ([]TelemetryPoint, error) {
	if limit <= 0 {
		limit = defaultPayloadSize
	}
	limit = min(limit, MaxTelemetryBytes)
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("telemetry: read payload: %w", err)
	}
	if len(data) > limit {
		return nil, Errorf(ETOOLARGE, "telemetry payload is larger than %d bytes; send fewer points per message", limit)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, Errorf(EINVALID, "telemetry payload is empty; send {\"metrics\": {...}}")
	}
	var entries []json.RawMessage
	array := data[0] == '['
	if array {
		if err := strictDecode(data, &entries); err != nil {
			return nil, Errorf(EINVALID, "telemetry payload is not a JSON array of objects: %s", jsonReason(err))
		}
		if len(entries) == 0 {
			return nil, Errorf(EINVALID, "telemetry payload is an empty array; send at least one {\"metrics\": {...}}")
		}
	} else {
		entries = []json.RawMessage{data}
	}
	var pts []TelemetryPoint
	for i, raw := range entries {
		field := ""
		if array {
			field = "[" + strconv.Itoa(i) + "]."
		}
		var e struct {
			Time    *string         `json:"time"`
			Metrics json.RawMessage `json:"metrics"`
		}
		if err := strictDecode(raw, &e); err != nil {
			return nil, Errorf(EINVALID, "telemetry payload%s: not an object of \"time\" and \"metrics\": %s", fieldSuffix(field), jsonReason(err))
		}
		var at time.Time
		if e.Time != nil {
			if at, err = time.Parse(time.RFC3339Nano, *e.Time); err != nil {
				return nil, Errorf(EINVALID, "telemetry payload: %stime %q is not an RFC 3339 time such as 2026-03-01T09:00:00Z", field, *e.Time)
			}
		}
		if pts, err = parseMetrics(pts, e.Metrics, field, at); err != nil {
			return nil, err
		}
	}
	return pts, nil
}

// fieldSuffix formats an optional field prefix for a message.
func fieldSuffix(field string) string {
	if field == "" {
		return ""
	}
	return " " + field[:len(field)-1]
}

// parseMetrics appends the points of one "metrics" object to pts.
func parseMetrics(pts []TelemetryPoint, raw json.RawMessage, field string, at time.Time) ([]TelemetryPoint, error) {
	bad := func(format string, args ...any) error {
		return Errorf(EINVALID, "telemetry payload: %smetrics%s", field, fmt.Sprintf(format, args...))
	}
	if len(raw) == 0 || string(raw) == "null" {
		return nil, bad(" is missing; send {\"metrics\": {\"health.cpu_pct\": 12.5}}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad(" is not an object of metric names and numbers")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad(": %s", jsonReason(err))
		}
		name := tok.(string) // object keys are always strings
		if err := ValidateMetricName(name); err != nil {
			return nil, bad("[%q]: %s", name, ErrorMessage(err))
		}
		if seen[name] {
			return nil, bad("[%q]: metric appears twice", name)
		}
		seen[name] = true
		tok, err = dec.Token()
		if err != nil {
			return nil, bad("[%q]: %s", name, jsonReason(err))
		}
		var v float64
		switch x := tok.(type) {
		case json.Number:
			if v, err = strconv.ParseFloat(string(x), 64); err != nil {
				return nil, bad("[%q]: value %s is out of range", name, x)
			}
		case bool:
			if x {
				v = 1
			}
		default:
			return nil, bad("[%q]: value is not a number or a boolean", name)
		}
		if err := ValidateMetricValue(name, v); err != nil {
			return nil, bad("[%q]: %s", name, ErrorMessage(err))
		}
		if len(pts) >= MaxTelemetryPoints {
			return nil, Errorf(ETOOLARGE, "telemetry payload holds more than %d points; send fewer per message", MaxTelemetryPoints)
		}
		pts = append(pts, TelemetryPoint{Metric: name, Time: at, Value: v})
	}
	if len(seen) == 0 {
		return nil, bad(" is empty; send at least one metric")
	}
	return pts, nil
}

// strictDecode decodes one JSON value, refusing unknown fields and trailing
// data.
func strictDecode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// jsonReason turns a decoding error into a short reason for the device.
func jsonReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%s at byte %d", se.Error(), se.Offset)
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Sprintf("field %s holds a %s", te.Field, te.Value)
		}
		return fmt.Sprintf("found a %s", te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "the JSON is cut short"
	}
	return err.Error()
}

// TelemetryQuery selects one metric of one device over [From, To).
type TelemetryQuery struct {
	Serial string
	Metric string
	From   time.Time // inclusive; zero: the oldest stored
	To     time.Time // exclusive; zero: no end
	// Step is the width of the buckets samples are aggregated in, aligned
	// to multiples of Step since the Unix epoch. Zero returns the stored
	// points unaggregated (raw points, and hourly rollups where the raw
	// points were pruned).
	Step time.Duration
}

// TelemetrySample is one bucket of a query: the aggregate of Count values
// from Time on. A raw point is a sample with Count 1.
type TelemetrySample struct {
	Time  time.Time `json:"time"`
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	Avg   float64   `json:"avg"`
	Count int64     `json:"count"`
}

// TelemetryService stores device telemetry as time series with retention:
// raw points, folded into hourly rollups (min, max, sum, count) when they
// age out. Writes are not audited (they are measurements, not changes);
// refusals are.
type TelemetryService interface {
	// RecordTelemetry stores points of device serial in one transaction;
	// their Serial fields are ignored and zero Times get the server's time.
	// A point already stored for the same metric and time is kept as it is,
	// so a device may resend what it is unsure was received. Needs
	// PermTelemetryWrite; a device may record only for itself (EFORBIDDEN).
	// ENOTFOUND when the device is not in the actor's tenant; EINVALID or
	// ETOOLARGE from ValidateTelemetry, naming the bad point.
	RecordTelemetry(ctx context.Context, serial string, pts []TelemetryPoint) error
	// QueryTelemetry returns the samples of q in time order. Needs
	// PermTelemetryRead. ENOTFOUND for a device not in the tenant; EINVALID
	// for a bad metric name, From not before To, a negative Step, or a
	// query that would return more than MaxTelemetrySamples samples (ask
	// with a larger Step or a shorter range).
	QueryTelemetry(ctx context.Context, q TelemetryQuery) ([]TelemetrySample, error)
	// LatestTelemetry returns the newest raw point of each metric of the
	// device, by metric name (empty when it has none). Needs
	// PermTelemetryRead. ENOTFOUND for a device not in the tenant.
	LatestTelemetry(ctx context.Context, serial string) (map[string]TelemetryPoint, error)
	// PruneTelemetry applies retention in the actor's tenant: raw points
	// older than rawBefore are folded into hourly rollups and deleted, and
	// rollups of hours that start before rollupBefore are deleted. A zero
	// time leaves its tier alone. It returns the number of rows deleted
	// (raw points and rollups). Needs PermTelemetryWrite and the system
	// role (EFORBIDDEN otherwise).
	PruneTelemetry(ctx context.Context, rawBefore, rollupBefore time.Time) (int64, error)
}

// StatusPolicy holds the thresholds DeriveStatus applies. Its zero value
// means the defaults given for each field.
type StatusPolicy struct {
	Interval          time.Duration // the agent's reporting interval; zero: 60 s
	MissedIntervals   int           // intervals without a report before a device is offline; zero: 3
	BatteryLowPct     float64       // battery.pct below this is low; zero: 15
	CertExpiryWarning time.Duration // certificate expiry closer than this is expiring; zero: 14 days
}

// DefaultStatusPolicy is the zero StatusPolicy with its defaults filled in.
var DefaultStatusPolicy = StatusPolicy{Interval: time.Minute, MissedIntervals: 3, BatteryLowPct: 15, CertExpiryWarning: 14 * 24 * time.Hour}

func (p StatusPolicy) withDefaults() StatusPolicy {
	d := DefaultStatusPolicy
	if p.Interval > 0 {
		d.Interval = p.Interval
	}
	if p.MissedIntervals > 0 {
		d.MissedIntervals = p.MissedIntervals
	}
	if p.BatteryLowPct > 0 {
		d.BatteryLowPct = p.BatteryLowPct
	}
	if p.CertExpiryWarning > 0 {
		d.CertExpiryWarning = p.CertExpiryWarning
	}
	return d
}

// DeviceStatus is what the server concludes about a device from its
// telemetry. Reasons explains each flag that is set, for people.
type DeviceStatus struct {
	Online       bool      `json:"online"`
	LastSeen     time.Time `json:"last_seen"` // zero: never seen
	BatteryLow   bool      `json:"battery_low"`
	CertExpiring bool      `json:"cert_expiring"` // expiring or expired
	Insecure     bool      `json:"insecure"`
	Attested     *bool     `json:"attested,omitempty"` // the last TPM attestation verified; nil: never reported
	Reasons      []string  `json:"reasons,omitempty"`
}

// DeriveStatus computes a device's status at now from its latest points
// (LatestTelemetry) and the time it was last seen (zero: the newest point
// in latest):
//   - online while lastSeen is at most MissedIntervals × Interval before now
//     (3 × 60 s by default);
//   - battery low when battery.pct is below BatteryLowPct (15 %);
//   - certificate expiring when security.cert_expiry_s, counted down from
//     its point's time to now, leaves less than CertExpiryWarning (14 days);
//   - insecure when security.secure_boot or security.debug_locked is 0;
//   - attested set from security.attested, when the device reported it.
//
// A metric the device never reported sets no flag.
func DeriveStatus(latest map[string]TelemetryPoint, lastSeen, now time.Time, policy StatusPolicy) DeviceStatus {
	p := policy.withDefaults()
	if lastSeen.IsZero() {
		for _, pt := range latest {
			if pt.Time.After(lastSeen) {
				lastSeen = pt.Time
			}
		}
	}
	s := DeviceStatus{LastSeen: lastSeen}
	if lastSeen.IsZero() {
		s.Reasons = append(s.Reasons, "never seen")
	} else if silent := now.Sub(lastSeen); silent <= time.Duration(p.MissedIntervals)*p.Interval {
		s.Online = true
	} else {
		s.Reasons = append(s.Reasons, fmt.Sprintf("offline: last seen %s ago (%d missed %s intervals)", silent.Round(time.Second), int64(silent/p.Interval), p.Interval))
	}
	if b, ok := latest[MetricBatteryPct]; ok && b.Value < p.BatteryLowPct {
		s.BatteryLow = true
		s.Reasons = append(s.Reasons, fmt.Sprintf("battery low: %.4g %% (below %.4g %%)", b.Value, p.BatteryLowPct))
	}
	if c, ok := latest[MetricCertExpiryS]; ok {
		// Clamp before converting: a float out of int64's range converts
		// to an unspecified Duration.
		secs := math.Max(math.Min(c.Value, 100*365*24*3600), -100*365*24*3600)
		left := time.Duration(secs*float64(time.Second)) - now.Sub(c.Time)
		if left < p.CertExpiryWarning {
			s.CertExpiring = true
			if left <= 0 {
				s.Reasons = append(s.Reasons, fmt.Sprintf("certificate expired %s ago", (-left).Round(time.Second)))
			} else {
				s.Reasons = append(s.Reasons, fmt.Sprintf("certificate expires in %s (warning at %s)", left.Round(time.Second), p.CertExpiryWarning))
			}
		}
	}
	if b, ok := latest[MetricSecureBoot]; ok && b.Value == 0 {
		s.Insecure = true
		s.Reasons = append(s.Reasons, "secure boot is off")
	}
	if d, ok := latest[MetricDebugLocked]; ok && d.Value == 0 {
		s.Insecure = true
		s.Reasons = append(s.Reasons, "debug ports are not locked")
	}
	if a, ok := latest[MetricAttested]; ok {
		att := a.Value == 1
		s.Attested = &att
		if !att {
			s.Reasons = append(s.Reasons, "the last TPM attestation was not verified")
		}
	}
	return s
}
