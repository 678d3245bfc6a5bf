package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"cradle"
)

// The configuration twin routes: a device's twin and its own document,
// config groups, per-model config schemas and the drift listing.

// TwinList is a page of the drift listing, by serial.
type TwinList struct {
	Twins      []*cradle.TwinStatus `json:"twins"`
	NextCursor string               `json:"next_cursor,omitempty"` // "" after the last page
}

// ConfigGroupList lists config groups in merge order.
type ConfigGroupList struct {
	Groups []*cradle.ConfigGroup `json:"groups"`
}

// readDocument reads a JSON body of at most limit bytes as it is, for the
// service to parse strictly.
func (s *Server) readDocument(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if err := noQuery(r); err != nil {
		return nil, err
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return nil, cradle.Errorf(cradle.EINVALID, "the body must be JSON, sent with Content-Type application/json, not %q", truncate(ct, 100))
		}
	}
	if r.ContentLength > limit {
		return nil, tooLarge(limit)
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge(mbe.Limit)
		}
		return nil, cradle.Errorf(cradle.EINVALID, "reading the request body: %v", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "the request needs a JSON body")
	}
	return data, nil
}

func (s *Server) getTwin(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.Twins.FindTwin(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, t)
}

func (s *Server) setDeviceConfig(w http.ResponseWriter, r *http.Request) {
	doc, err := s.readDocument(w, r, cradle.MaxConfigBytes)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.Twins.SetDeviceConfig(r.Context(), r.PathValue("serial"), doc)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, t)
}

func (s *Server) deleteDeviceConfig(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.Twins.DeleteDeviceConfig(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, t)
}

func (s *Server) listTwins(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "drift", "cursor", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := cradle.TwinFilter{Cursor: q.Get("cursor")}
	if v, ok := q["drift"]; ok {
		st, err := cradle.ParseDriftState(v[0])
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.Drift = &st
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	ts, next, err := s.Twins.FindTwins(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ts == nil {
		ts = []*cradle.TwinStatus{}
	}
	s.writeJSON(w, r, http.StatusOK, TwinList{Twins: ts, NextCursor: next})
}

func (s *Server) listConfigGroups(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	gs, err := s.Twins.FindConfigGroups(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if gs == nil {
		gs = []*cradle.ConfigGroup{}
	}
	s.writeJSON(w, r, http.StatusOK, ConfigGroupList{Groups: gs})
}

func (s *Server) getConfigGroup(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	g, err := s.Twins.FindConfigGroup(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, g)
}

func (s *Server) putConfigGroup(w http.ResponseWriter, r *http.Request) {
	var p cradle.ConfigGroupPut
	if err := s.decodeLimit(w, r, &p, cradle.MaxConfigBytes+cradle.MaxSelectorLen+1024); err != nil {
		s.writeError(w, r, err)
		return
	}
	g, err := s.Twins.PutConfigGroup(r.Context(), r.PathValue("name"), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, g)
}

func (s *Server) deleteConfigGroup(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.Twins.DeleteConfigGroup(r.Context(), r.PathValue("name")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) putConfigSchema(w http.ResponseWriter, r *http.Request) {
	doc, err := s.readDocument(w, r, cradle.MaxSchemaBytes)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cs, err := s.Twins.PutConfigSchema(r.Context(), r.PathValue("model"), doc)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, cs)
}

func (s *Server) getConfigSchema(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	cs, err := s.Twins.FindConfigSchema(r.Context(), r.PathValue("model"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, cs)
}

// Client methods.

func twinPath(serial string) string { return devicePath(serial) + "/twin" }

// FindTwin returns a device's configuration twin.
func (c *Client) FindTwin(ctx context.Context, serial string) (*cradle.Twin, error) {
	return getJSON[cradle.Twin](ctx, c, twinPath(serial))
}

// SetDeviceConfig replaces a device's own configuration document (a JSON
// object, sent as it is).
func (c *Client) SetDeviceConfig(ctx context.Context, serial string, config []byte) (*cradle.Twin, error) {
	return sendJSON[cradle.Twin](ctx, c, http.MethodPut, twinPath(serial)+"/desired", json.RawMessage(config))
}

// DeleteDeviceConfig removes a device's own configuration document.
func (c *Client) DeleteDeviceConfig(ctx context.Context, serial string) (*cradle.Twin, error) {
	var t cradle.Twin
	if err := c.do(ctx, http.MethodDelete, twinPath(serial)+"/desired", nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// FindTwins returns a page of the drift listing and the next page's cursor.
func (c *Client) FindTwins(ctx context.Context, f cradle.TwinFilter) ([]*cradle.TwinStatus, string, error) {
	q := url.Values{}
	if f.Drift != nil {
		q.Set("drift", string(*f.Drift))
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l TwinList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/twins", q), nil, nil, &l); err != nil {
		return nil, "", err
	}
	return l.Twins, l.NextCursor, nil
}

func groupPath(name string) string { return "/api/v1/config-groups/" + url.PathEscape(name) }

// PutConfigGroup creates or replaces a config group.
func (c *Client) PutConfigGroup(ctx context.Context, name string, p cradle.ConfigGroupPut) (*cradle.ConfigGroup, error) {
	return sendJSON[cradle.ConfigGroup](ctx, c, http.MethodPut, groupPath(name), p)
}

// FindConfigGroups lists config groups in merge order.
func (c *Client) FindConfigGroups(ctx context.Context) ([]*cradle.ConfigGroup, error) {
	var l ConfigGroupList
	if err := c.do(ctx, http.MethodGet, "/api/v1/config-groups", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Groups, nil
}

// FindConfigGroup returns a config group.
func (c *Client) FindConfigGroup(ctx context.Context, name string) (*cradle.ConfigGroup, error) {
	return getJSON[cradle.ConfigGroup](ctx, c, groupPath(name))
}

// DeleteConfigGroup deletes a config group.
func (c *Client) DeleteConfigGroup(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, groupPath(name), nil, nil, nil)
}

func schemaPath(model string) string { return "/api/v1/config-schemas/" + url.PathEscape(model) }

// PutConfigSchema registers a model's JSON Schema (sent as it is).
func (c *Client) PutConfigSchema(ctx context.Context, model string, schema []byte) (*cradle.ConfigSchema, error) {
	return sendJSON[cradle.ConfigSchema](ctx, c, http.MethodPut, schemaPath(model), json.RawMessage(schema))
}

// FindConfigSchema returns a model's JSON Schema.
func (c *Client) FindConfigSchema(ctx context.Context, model string) (*cradle.ConfigSchema, error) {
	return getJSON[cradle.ConfigSchema](ctx, c, schemaPath(model))
}
