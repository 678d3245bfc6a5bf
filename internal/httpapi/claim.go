package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"cradle"
)

// The claim, policy, telemetry and status routes.

// TelemetrySeries is one metric of one device over a range: raw points
// (step 0) or buckets of step.
type TelemetrySeries struct {
	Serial  string                   `json:"serial"`
	Metric  string                   `json:"metric"`
	From    *time.Time               `json:"from,omitempty"`
	To      *time.Time               `json:"to,omitempty"`
	Step    string                   `json:"step,omitempty"` // a Go duration such as 5m0s; "" for raw points
	Samples []cradle.TelemetrySample `json:"samples"`
}

// DeviceStatusReport is what the server concludes about one device.
type DeviceStatusReport struct {
	Serial string              `json:"serial"`
	State  cradle.State        `json:"state"`
	Labels map[string]string   `json:"labels"`
	Status cradle.DeviceStatus `json:"status"`
	// Latest holds the newest point of each metric the device reported.
	Latest map[string]cradle.TelemetryPoint `json:"latest"`
	// Firmware is the firmware version the factory wrote, from the
	// unit's newest provisioned record; "" when there is none. Only the
	// single-device status has it.
	Firmware string `json:"firmware,omitempty"`
}

// DeviceStatusList is a page of device status reports.
type DeviceStatusList struct {
	Devices    []*DeviceStatusReport `json:"devices"`
	NextCursor string                `json:"next_cursor,omitempty"`
}

func notConfigured(what string) error {
	return cradle.Errorf(cradle.ENOTIMPLEMENTED, "%s is not available on this server", what)
}

func (s *Server) claimDevice(w http.ResponseWriter, r *http.Request) {
	if s.Claims == nil {
		s.writeError(w, r, notConfigured("claiming"))
		return
	}
	var c cradle.DeviceClaim
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.Claims.ClaimDevice(r.Context(), r.PathValue("serial"), c)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, d)
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Claims == nil {
		s.writeError(w, r, notConfigured("the tenant policy"))
		return
	}
	p, err := s.Claims.FindPolicy(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, p)
}

func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) {
	if s.Claims == nil {
		s.writeError(w, r, notConfigured("the tenant policy"))
		return
	}
	var p cradle.TenantPolicy
	if err := s.decode(w, r, &p); err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := s.Claims.UpdatePolicy(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// timeParam reads an optional RFC 3339 query parameter.
func timeParam(q url.Values, name string) (*time.Time, error) {
	v, ok := q[name]
	if !ok {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v[0])
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "query parameter %s=%q is not an RFC 3339 time such as 2026-03-01T09:00:00Z", name, truncate(v[0], 40))
	}
	return &t, nil
}

func (s *Server) deviceTelemetry(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "metric", "from", "to", "step")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Telemetry == nil {
		s.writeError(w, r, notConfigured("telemetry"))
		return
	}
	tq := cradle.TelemetryQuery{Serial: r.PathValue("serial"), Metric: q.Get("metric")}
	if tq.Metric == "" {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "query parameter metric is required, such as metric=health.cpu_pct"))
		return
	}
	series := TelemetrySeries{Serial: tq.Serial, Metric: tq.Metric}
	if series.From, err = timeParam(q, "from"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if series.To, err = timeParam(q, "to"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if series.From != nil {
		tq.From = *series.From
	}
	if series.To != nil {
		tq.To = *series.To
	}
	if v, ok := q["step"]; ok {
		if tq.Step, err = time.ParseDuration(v[0]); err != nil || tq.Step <= 0 {
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "query parameter step=%q is not a positive duration such as 5m or 1h", truncate(v[0], 40)))
			return
		}
		series.Step = tq.Step.String()
	}
	if series.Samples, err = s.Telemetry.QueryTelemetry(r.Context(), tq); err != nil {
		s.writeError(w, r, err)
		return
	}
	if series.Samples == nil {
		series.Samples = []cradle.TelemetrySample{}
	}
	s.writeJSON(w, r, http.StatusOK, series)
}

// statusOf derives the status of a device from its latest points.
func (s *Server) statusOf(ctx context.Context, d *cradle.Device) (*DeviceStatusReport, error) {
	latest, err := s.Telemetry.LatestTelemetry(ctx, d.Serial)
	if err != nil {
		return nil, err
	}
	if latest == nil {
		latest = map[string]cradle.TelemetryPoint{}
	}
	// Last seen is the newest point the device reported.
	return &DeviceStatusReport{Serial: d.Serial, State: d.State, Labels: d.Labels, Latest: latest,
		Status: cradle.DeriveStatus(latest, time.Time{}, cradle.Now(s.Clock), s.StatusPolicy)}, nil
}

func (s *Server) deviceStatus(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Telemetry == nil {
		s.writeError(w, r, notConfigured("device status"))
		return
	}
	d, err := s.Devices.FindDeviceBySerial(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rep, err := s.statusOf(r.Context(), d)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if rep.Firmware, err = s.factoryFirmware(r.Context(), d.Serial); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, rep)
}

// factoryFirmware returns the firmware version of the unit's newest
// provisioned factory record, "" when it has none (or the server has no
// factory service).
func (s *Server) factoryFirmware(ctx context.Context, serial string) (string, error) {
	if s.Factory == nil {
		return "", nil
	}
	t, err := s.Factory.UnitTrace(ctx, serial)
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return "", nil
	} else if err != nil {
		return "", err
	}
	for i := len(t.Records) - 1; i >= 0; i-- {
		if rec := t.Records[i].Record; rec.Status == cradle.UnitProvisioned {
			return rec.FirmwareVersion, nil
		}
	}
	return "", nil
}

// maxStatusPage bounds a page of the fleet status view: each device costs
// a query of its latest points.
const maxStatusPage = 200

func (s *Server) fleetStatus(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "state", "selector", "cursor", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Telemetry == nil {
		s.writeError(w, r, notConfigured("device status"))
		return
	}
	f, err := deviceFilter(q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if f.Limit == 0 {
		f.Limit = 50
	}
	if f.Limit > maxStatusPage {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "invalid limit %d: the status view takes at most %d devices per page", f.Limit, maxStatusPage))
		return
	}
	devices, next, err := s.Devices.FindDevices(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := DeviceStatusList{Devices: make([]*DeviceStatusReport, 0, len(devices)), NextCursor: next}
	for _, d := range devices {
		rep, err := s.statusOf(r.Context(), d)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out.Devices = append(out.Devices, rep)
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// ClaimDevice implements cradle.ClaimService.
func (c *Client) ClaimDevice(ctx context.Context, serial string, dc cradle.DeviceClaim) (*cradle.Device, error) {
	return sendJSON[cradle.Device](ctx, c, http.MethodPost, devicePath(serial)+"/claim", dc)
}

// FindPolicy implements cradle.ClaimService.
func (c *Client) FindPolicy(ctx context.Context) (*cradle.TenantPolicy, error) {
	return getJSON[cradle.TenantPolicy](ctx, c, "/api/v1/policy")
}

// UpdatePolicy implements cradle.ClaimService.
func (c *Client) UpdatePolicy(ctx context.Context, p cradle.TenantPolicy) (*cradle.TenantPolicy, error) {
	return sendJSON[cradle.TenantPolicy](ctx, c, http.MethodPut, "/api/v1/policy", p)
}

var _ cradle.ClaimService = (*Client)(nil)

// DeviceTelemetry returns the samples of a query.
func (c *Client) DeviceTelemetry(ctx context.Context, tq cradle.TelemetryQuery) (*TelemetrySeries, error) {
	q := url.Values{"metric": {tq.Metric}}
	if !tq.From.IsZero() {
		q.Set("from", tq.From.UTC().Format(time.RFC3339Nano))
	}
	if !tq.To.IsZero() {
		q.Set("to", tq.To.UTC().Format(time.RFC3339Nano))
	}
	if tq.Step != 0 {
		q.Set("step", tq.Step.String())
	}
	return getJSON[TelemetrySeries](ctx, c, withQuery(devicePath(tq.Serial)+"/telemetry", q))
}

// DeviceStatus returns the status report of a device.
func (c *Client) DeviceStatus(ctx context.Context, serial string) (*DeviceStatusReport, error) {
	return getJSON[DeviceStatusReport](ctx, c, devicePath(serial)+"/status")
}

// FleetStatus returns a page of status reports of the devices f selects
// (State, Selector, Cursor and Limit are used).
func (c *Client) FleetStatus(ctx context.Context, f cradle.DeviceFilter) (*DeviceStatusList, error) {
	f.Model, f.SerialPrefix = nil, nil // the status view does not take them
	return getJSON[DeviceStatusList](ctx, c, withQuery("/api/v1/device-status", deviceQuery(f)))
}
