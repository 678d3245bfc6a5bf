package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"cradle"
	"cradle/internal/rollout"
)

// The rollout routes: create a rollout from a spec (read strictly by
// internal/rollout.ParseSpec, windows' cron syntax included), list and
// show rollouts with their live status, page through a rollout's devices,
// and the operator's decisions (pause, resume, abort, approve). And, of
// the device side of updates, what operators read: the software a device
// reported running and its download totals.

// RolloutList lists rollouts, newest first.
type RolloutList struct {
	Rollouts []*cradle.Rollout `json:"rollouts"`
}

// RolloutDeviceList is a page of a rollout's device records.
type RolloutDeviceList struct {
	Devices []*cradle.RolloutDevice `json:"devices"`
	// NextAfter is the value of ?after= for the next page; "" when this
	// page was not full.
	NextAfter string `json:"next_after,omitempty"`
}

// ApprovalRequest is the body of POST /api/v1/rollouts/{id}/approve: the
// index of the phase that waits for approval.
type ApprovalRequest struct {
	Phase int `json:"phase"`
}

// DownloadList lists a device's download totals, one per artifact.
type DownloadList struct {
	Downloads []*cradle.DeviceDownload `json:"downloads"`
}

func (s *Server) rollouts() (cradle.RolloutService, error) {
	if s.Rollouts == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "rollouts are not available on this server")
	}
	return s.Rollouts, nil
}

func (s *Server) updates() (cradle.UpdateService, error) {
	if s.Updates == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "device software and downloads are not available on this server")
	}
	return s.Updates, nil
}

func rolloutPath(id string) string { return "/api/v1/rollouts/" + url.PathEscape(id) }

var rolloutStates = []cradle.RolloutState{cradle.RolloutDraft, cradle.RolloutRunning, cradle.RolloutPaused, cradle.RolloutAborted, cradle.RolloutCompleted}

var deviceUpdateStates = []cradle.DeviceUpdateState{cradle.DevicePending, cradle.DeviceStarted, cradle.DeviceDownloading,
	cradle.DeviceInstalling, cradle.DeviceSucceeded, cradle.DeviceFailed, cradle.DeviceSkipped}

func (s *Server) createRollout(w http.ResponseWriter, r *http.Request) {
	svc, err := s.rollouts()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	doc, err := s.readDocument(w, r, cradle.MaxRolloutSpecSize)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	spec, err := rollout.ParseSpec(doc)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ro, err := svc.CreateRollout(r.Context(), *spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", rolloutPath(ro.ID))
	s.writeJSON(w, r, http.StatusCreated, ro)
}

func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request) {
	svc, err := s.rollouts()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "state", "release", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := cradle.RolloutFilter{ReleaseID: q.Get("release")}
	if v, ok := q["state"]; ok {
		st := cradle.RolloutState(v[0])
		if !slices.Contains(rolloutStates, st) {
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown rollout state %q; use draft, running, paused, aborted or completed", truncate(v[0], 40)))
			return
		}
		f.State = &st
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	ros, err := svc.FindRollouts(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ros == nil {
		ros = []*cradle.Rollout{}
	}
	s.writeJSON(w, r, http.StatusOK, RolloutList{Rollouts: ros})
}

func (s *Server) getRollout(w http.ResponseWriter, r *http.Request) {
	svc, err := s.rollouts()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ro, err := svc.FindRollout(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ro)
}

func (s *Server) listRolloutDevices(w http.ResponseWriter, r *http.Request) {
	svc, err := s.rollouts()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "state", "phase", "after", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := cradle.RolloutDeviceFilter{After: q.Get("after")}
	if v, ok := q["state"]; ok {
		st := cradle.DeviceUpdateState(v[0])
		if !slices.Contains(deviceUpdateStates, st) {
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown device update state %q; use pending, started, downloading, installing, succeeded, failed or skipped", truncate(v[0], 40)))
			return
		}
		f.State = &st
	}
	if _, ok := q["phase"]; ok {
		p, err := intParam(q, "phase")
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.Phase = &p
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	ds, err := svc.FindRolloutDevices(r.Context(), r.PathValue("id"), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := RolloutDeviceList{Devices: ds}
	if out.Devices == nil {
		out.Devices = []*cradle.RolloutDevice{}
	}
	limit := f.Limit
	if limit == 0 {
		limit = cradle.DefaultPageSize
	}
	if len(ds) >= limit {
		out.NextAfter = ds[len(ds)-1].Serial
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) pauseRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutReason(w, r, false, cradle.RolloutService.PauseRollout)
}

func (s *Server) abortRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutReason(w, r, true, cradle.RolloutService.AbortRollout)
}

// rolloutReason serves pause and abort: a body {"reason"}, required when
// needBody.
func (s *Server) rolloutReason(w http.ResponseWriter, r *http.Request, needBody bool, change func(cradle.RolloutService, context.Context, string, string) (*cradle.Rollout, error)) {
	svc, err := s.rollouts()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req ReasonRequest
	if needBody {
		err = s.decode(w, r, &req)
	} else {
		err = s.decodeOptional(w, r, &req)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ro, err := change(svc, r.Context(), r.PathValue("id"), req.Reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ro)
}

func (s *Server) resumeRollout(w http.ResponseWriter, r *http.Request) {
	svc, err := s.rollouts()
	if err == nil {
		err = s.decodeOptional(w, r, &struct{}{})
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ro, err := svc.ResumeRollout(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ro)
}

func (s *Server) approveRollout(w http.ResponseWriter, r *http.Request) {
	svc, err := s.rollouts()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req ApprovalRequest
	if err := s.decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	ro, err := svc.ApproveRollout(r.Context(), r.PathValue("id"), req.Phase)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ro)
}

func (s *Server) deviceSoftware(w http.ResponseWriter, r *http.Request) {
	svc, err := s.updates()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sw, err := svc.FindSoftware(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, sw)
}

func (s *Server) deviceDownloads(w http.ResponseWriter, r *http.Request) {
	svc, err := s.updates()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ds, err := svc.FindDownloads(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ds == nil {
		ds = []*cradle.DeviceDownload{}
	}
	s.writeJSON(w, r, http.StatusOK, DownloadList{Downloads: ds})
}

// Client methods. The client implements cradle.RolloutService.

var _ cradle.RolloutService = (*Client)(nil)

// CreateRollout implements cradle.RolloutService.
func (c *Client) CreateRollout(ctx context.Context, spec cradle.RolloutSpec) (*cradle.Rollout, error) {
	return sendJSON[cradle.Rollout](ctx, c, http.MethodPost, "/api/v1/rollouts", spec)
}

// FindRollout implements cradle.RolloutService.
func (c *Client) FindRollout(ctx context.Context, id string) (*cradle.Rollout, error) {
	return getJSON[cradle.Rollout](ctx, c, rolloutPath(id))
}

// FindRollouts implements cradle.RolloutService.
func (c *Client) FindRollouts(ctx context.Context, f cradle.RolloutFilter) ([]*cradle.Rollout, error) {
	q := url.Values{}
	if f.State != nil {
		q.Set("state", string(*f.State))
	}
	if f.ReleaseID != "" {
		q.Set("release", f.ReleaseID)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l RolloutList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/rollouts", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Rollouts, nil
}

// FindRolloutDevices implements cradle.RolloutService.
func (c *Client) FindRolloutDevices(ctx context.Context, id string, f cradle.RolloutDeviceFilter) ([]*cradle.RolloutDevice, error) {
	q := url.Values{}
	if f.State != nil {
		q.Set("state", string(*f.State))
	}
	if f.Phase != nil {
		q.Set("phase", strconv.Itoa(*f.Phase))
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l RolloutDeviceList
	if err := c.do(ctx, http.MethodGet, withQuery(rolloutPath(id)+"/devices", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Devices, nil
}

// PauseRollout implements cradle.RolloutService.
func (c *Client) PauseRollout(ctx context.Context, id, reason string) (*cradle.Rollout, error) {
	return sendJSON[cradle.Rollout](ctx, c, http.MethodPost, rolloutPath(id)+"/pause", ReasonRequest{Reason: reason})
}

// ResumeRollout implements cradle.RolloutService.
func (c *Client) ResumeRollout(ctx context.Context, id string) (*cradle.Rollout, error) {
	var ro cradle.Rollout
	if err := c.do(ctx, http.MethodPost, rolloutPath(id)+"/resume", nil, nil, &ro); err != nil {
		return nil, err
	}
	return &ro, nil
}

// AbortRollout implements cradle.RolloutService.
func (c *Client) AbortRollout(ctx context.Context, id, reason string) (*cradle.Rollout, error) {
	return sendJSON[cradle.Rollout](ctx, c, http.MethodPost, rolloutPath(id)+"/abort", ReasonRequest{Reason: reason})
}

// ApproveRollout implements cradle.RolloutService.
func (c *Client) ApproveRollout(ctx context.Context, id string, phase int) (*cradle.Rollout, error) {
	return sendJSON[cradle.Rollout](ctx, c, http.MethodPost, rolloutPath(id)+"/approve", ApprovalRequest{Phase: phase})
}

// FindSoftware returns what a device last reported running.
func (c *Client) FindSoftware(ctx context.Context, serial string) (*cradle.DeviceSoftware, error) {
	return getJSON[cradle.DeviceSoftware](ctx, c, devicePath(serial)+"/software")
}

// FindDownloads lists a device's download totals.
func (c *Client) FindDownloads(ctx context.Context, serial string) ([]*cradle.DeviceDownload, error) {
	var l DownloadList
	if err := c.do(ctx, http.MethodGet, devicePath(serial)+"/downloads", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Downloads, nil
}
