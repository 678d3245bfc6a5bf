package httpapi

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"cradle"
)

// CommandList is a device's commands, newest first.
type CommandList struct {
	Commands []*cradle.DeviceCommand `json:"commands"`
}

func (s *Server) commands() (cradle.CommandService, error) {
	if s.Commands == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "commands are not available: the server has no command signer (run cradle pki init)")
	}
	return s.Commands, nil
}

// commandsNoQuery is s.commands for a route that takes no query
// parameters; on either refusal it answers the request itself.
func (s *Server) commandsNoQuery(w http.ResponseWriter, r *http.Request) (cradle.CommandService, bool) {
	svc, err := s.commands()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return nil, false
	}
	return svc, true
}

func (s *Server) issueCommand(w http.ResponseWriter, r *http.Request) {
	svc, err := s.commands()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req cradle.CommandRequest
	if err := s.decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	serial := r.PathValue("serial")
	c, err := svc.IssueCommand(r.Context(), serial, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", devicePath(serial)+"/commands/"+url.PathEscape(c.ID))
	s.writeJSON(w, r, http.StatusCreated, c)
}

func (s *Server) listCommands(w http.ResponseWriter, r *http.Request) {
	svc, err := s.commands()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "state", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var f cradle.CommandFilter
	if v, ok := q["state"]; ok {
		st := cradle.CommandState(v[0])
		if !slices.Contains(cradle.CommandStates, st) {
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown command state %q; use pending, delivered, done, refused, failed or expired", truncate(v[0], 40)))
			return
		}
		f.State = &st
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	cs, err := svc.FindDeviceCommands(r.Context(), r.PathValue("serial"), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if cs == nil {
		cs = []*cradle.DeviceCommand{}
	}
	s.writeJSON(w, r, http.StatusOK, CommandList{Commands: cs})
}

func (s *Server) getCommand(w http.ResponseWriter, r *http.Request) {
	svc, ok := s.commandsNoQuery(w, r)
	if !ok {
		return
	}
	c, err := svc.FindDeviceCommand(r.Context(), r.PathValue("serial"), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, c)
}

func (s *Server) getCommandLogs(w http.ResponseWriter, r *http.Request) {
	svc, ok := s.commandsNoQuery(w, r)
	if !ok {
		return
	}
	logs, err := svc.FindCommandLogs(r.Context(), r.PathValue("serial"), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(logs)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(logs)
	}
}

// IssueCommand implements cradle.CommandService.
func (c *Client) IssueCommand(ctx context.Context, serial string, req cradle.CommandRequest) (*cradle.DeviceCommand, error) {
	return sendJSON[cradle.DeviceCommand](ctx, c, http.MethodPost, devicePath(serial)+"/commands", req)
}

// FindDeviceCommand implements cradle.CommandService.
func (c *Client) FindDeviceCommand(ctx context.Context, serial, id string) (*cradle.DeviceCommand, error) {
	return getJSON[cradle.DeviceCommand](ctx, c, devicePath(serial)+"/commands/"+url.PathEscape(id))
}

// FindDeviceCommands implements cradle.CommandService.
func (c *Client) FindDeviceCommands(ctx context.Context, serial string, f cradle.CommandFilter) ([]*cradle.DeviceCommand, error) {
	q := url.Values{}
	if f.State != nil {
		q.Set("state", string(*f.State))
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l CommandList
	if err := c.do(ctx, http.MethodGet, withQuery(devicePath(serial)+"/commands", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Commands, nil
}

// FindCommandLogs implements cradle.CommandService.
func (c *Client) FindCommandLogs(ctx context.Context, serial, id string) ([]byte, error) {
	var buf bytes.Buffer
	if err := c.do(ctx, http.MethodGet, devicePath(serial)+"/commands/"+url.PathEscape(id)+"/logs", nil, nil, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
