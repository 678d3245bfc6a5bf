package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"cradle"
)

// The operator's side of the foreign device protocols (compat.go): Mender
// auth sets to accept, reject or preauthorize, hawkBit device tokens, and
// what such devices report (inventory attributes, update logs).

// MenderAuthSetList lists Mender auth sets, newest first.
type MenderAuthSetList struct {
	AuthSets []*cradle.MenderAuthSet `json:"auth_sets"`
}

// DeviceTokenList lists device tokens (never their secrets), newest first.
type DeviceTokenList struct {
	Tokens []*cradle.DeviceToken `json:"tokens"`
}

// TokensRevoked says how many live tokens a revocation of all of a
// device's tokens revoked.
type TokensRevoked struct {
	Revoked int `json:"revoked"`
}

// AttributeList is a device's inventory attributes by name.
type AttributeList struct {
	Attributes []cradle.DeviceAttribute `json:"attributes"`
}

// UpdateLogList is a device's update logs, newest first.
type UpdateLogList struct {
	Logs []*cradle.UpdateLog `json:"logs"`
}

func (s *Server) protocols() (cradle.ProtocolService, error) {
	if s.Protocols == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "the Mender and hawkBit device APIs are not available on this server")
	}
	return s.Protocols, nil
}

// protocolsNoQuery is s.protocols for a route that takes no query
// parameters; on either refusal it answers the request itself.
func (s *Server) protocolsNoQuery(w http.ResponseWriter, r *http.Request) (cradle.ProtocolService, bool) {
	svc, err := s.protocols()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return nil, false
	}
	return svc, true
}

// parseMenderStatus reads an auth set status of a query or flag.
func parseMenderStatus(v string) (cradle.MenderAuthStatus, error) {
	st := cradle.MenderAuthStatus(v)
	switch st {
	case cradle.MenderPending, cradle.MenderAccepted, cradle.MenderRejected, cradle.MenderPreauthorized:
		return st, nil
	}
	return "", cradle.Errorf(cradle.EINVALID, "unknown auth set status %q; use pending, accepted, rejected or preauthorized", truncate(v, 40))
}

// parseProtocol reads a device protocol of a query.
func parseProtocol(v string) (cradle.Protocol, error) {
	p := cradle.Protocol(v)
	if !slices.Contains(cradle.Protocols, p) {
		return "", cradle.Errorf(cradle.EINVALID, "unknown protocol %q; use cradle, mender or hawkbit", truncate(v, 40))
	}
	return p, nil
}

func (s *Server) listMenderAuthSets(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "status", "serial", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := cradle.MenderAuthFilter{Serial: q.Get("serial")}
	if v, ok := q["status"]; ok {
		st, err := parseMenderStatus(v[0])
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.Status = &st
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	sets, err := svc.FindMenderAuthSets(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if sets == nil {
		sets = []*cradle.MenderAuthSet{}
	}
	s.writeJSON(w, r, http.StatusOK, MenderAuthSetList{AuthSets: sets})
}

func (s *Server) getMenderAuthSet(w http.ResponseWriter, r *http.Request) {
	svc, ok := s.protocolsNoQuery(w, r)
	if !ok {
		return
	}
	set, err := svc.FindMenderAuthSet(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, set)
}

func (s *Server) acceptMenderAuthSet(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var a cradle.MenderAccept
	if err := s.decode(w, r, &a); err != nil {
		s.writeError(w, r, err)
		return
	}
	set, err := svc.AcceptMenderAuthSet(r.Context(), r.PathValue("id"), a)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, set)
}

func (s *Server) rejectMenderAuthSet(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req ReasonRequest
	if err := s.decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	set, err := svc.RejectMenderAuthSet(r.Context(), r.PathValue("id"), req.Reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, set)
}

func (s *Server) preauthorizeMender(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var p cradle.MenderPreauth
	if err := s.decode(w, r, &p); err != nil {
		s.writeError(w, r, err)
		return
	}
	set, err := svc.PreauthorizeMender(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", menderAuthSetPath(set.ID))
	s.writeJSON(w, r, http.StatusCreated, set)
}

func (s *Server) listDeviceTokens(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "serial")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ts, err := svc.FindDeviceTokens(r.Context(), q.Get("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ts == nil {
		ts = []*cradle.DeviceToken{}
	}
	s.writeJSON(w, r, http.StatusOK, DeviceTokenList{Tokens: ts})
}

func (s *Server) createDeviceToken(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var c cradle.DeviceTokenCreate
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := svc.CreateDeviceToken(r.Context(), c)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusCreated, t)
}

func (s *Server) revokeDeviceToken(w http.ResponseWriter, r *http.Request) {
	svc, ok := s.protocolsNoQuery(w, r)
	if !ok {
		return
	}
	if err := svc.RevokeDeviceToken(r.Context(), r.PathValue("id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) revokeDeviceTokens(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err == nil {
		err = s.decodeOptional(w, r, &struct{}{})
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	n, err := svc.RevokeDeviceTokens(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, TokensRevoked{Revoked: n})
}

func (s *Server) deviceAttributes(w http.ResponseWriter, r *http.Request) {
	svc, ok := s.protocolsNoQuery(w, r)
	if !ok {
		return
	}
	attrs, err := svc.FindDeviceAttributes(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if attrs == nil {
		attrs = []cradle.DeviceAttribute{}
	}
	s.writeJSON(w, r, http.StatusOK, AttributeList{Attributes: attrs})
}

func (s *Server) deviceUpdateLogs(w http.ResponseWriter, r *http.Request) {
	svc, err := s.protocols()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "rollout")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	logs, err := svc.FindUpdateLogs(r.Context(), r.PathValue("serial"), q.Get("rollout"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if logs == nil {
		logs = []*cradle.UpdateLog{}
	}
	s.writeJSON(w, r, http.StatusOK, UpdateLogList{Logs: logs})
}

func menderAuthSetPath(id string) string { return "/api/v1/mender/auth-sets/" + url.PathEscape(id) }

// FindMenderAuthSets lists Mender auth sets, as cradle.ProtocolService.
func (c *Client) FindMenderAuthSets(ctx context.Context, f cradle.MenderAuthFilter) ([]*cradle.MenderAuthSet, error) {
	q := url.Values{}
	if f.Status != nil {
		q.Set("status", string(*f.Status))
	}
	if f.Serial != "" {
		q.Set("serial", f.Serial)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l MenderAuthSetList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/mender/auth-sets", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.AuthSets, nil
}

// FindMenderAuthSet returns one Mender auth set, as cradle.ProtocolService.
func (c *Client) FindMenderAuthSet(ctx context.Context, id string) (*cradle.MenderAuthSet, error) {
	return getJSON[cradle.MenderAuthSet](ctx, c, menderAuthSetPath(id))
}

// AcceptMenderAuthSet accepts an auth set for a device, as
// cradle.ProtocolService.
func (c *Client) AcceptMenderAuthSet(ctx context.Context, id string, a cradle.MenderAccept) (*cradle.MenderAuthSet, error) {
	return sendJSON[cradle.MenderAuthSet](ctx, c, http.MethodPost, menderAuthSetPath(id)+"/accept", a)
}

// RejectMenderAuthSet rejects an auth set, as cradle.ProtocolService.
func (c *Client) RejectMenderAuthSet(ctx context.Context, id, reason string) (*cradle.MenderAuthSet, error) {
	return sendJSON[cradle.MenderAuthSet](ctx, c, http.MethodPost, menderAuthSetPath(id)+"/reject", ReasonRequest{Reason: reason})
}

// PreauthorizeMender admits a device's identity and key ahead of its
// first request, as cradle.ProtocolService.
func (c *Client) PreauthorizeMender(ctx context.Context, p cradle.MenderPreauth) (*cradle.MenderAuthSet, error) {
	return sendJSON[cradle.MenderAuthSet](ctx, c, http.MethodPost, "/api/v1/mender/preauthorizations", p)
}

// CreateDeviceToken makes a hawkBit target or gateway token or a Mender
// tenant token, as
// cradle.ProtocolService; the answer holds its secret, which the server
// shows only this once.
func (c *Client) CreateDeviceToken(ctx context.Context, dc cradle.DeviceTokenCreate) (*cradle.IssuedToken, error) {
	return sendJSON[cradle.IssuedToken](ctx, c, http.MethodPost, "/api/v1/device-tokens", dc)
}

// FindDeviceTokens lists a device's tokens (serial "": the tenant's
// gateway and Mender tenant tokens), as cradle.ProtocolService.
func (c *Client) FindDeviceTokens(ctx context.Context, serial string) ([]*cradle.DeviceToken, error) {
	q := url.Values{}
	if serial != "" {
		q.Set("serial", serial)
	}
	var l DeviceTokenList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/device-tokens", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Tokens, nil
}

// RevokeDeviceToken revokes one device token, as cradle.ProtocolService.
func (c *Client) RevokeDeviceToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/device-tokens/"+url.PathEscape(id), nil, nil, nil)
}

// RevokeDeviceTokens revokes every live token of a device and returns how
// many, and rejects its accepted and preauthorized Mender auth sets, as
// cradle.ProtocolService.
func (c *Client) RevokeDeviceTokens(ctx context.Context, serial string) (int, error) {
	var out TokensRevoked
	if err := c.do(ctx, http.MethodPost, devicePath(serial)+"/tokens/revoke", nil, nil, &out); err != nil {
		return 0, err
	}
	return out.Revoked, nil
}

// FindDeviceAttributes returns a device's inventory attributes, as
// cradle.ProtocolService.
func (c *Client) FindDeviceAttributes(ctx context.Context, serial string) ([]cradle.DeviceAttribute, error) {
	var l AttributeList
	if err := c.do(ctx, http.MethodGet, devicePath(serial)+"/attributes", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Attributes, nil
}

// FindUpdateLogs returns a device's update logs, newest first (rolloutID
// "" for every rollout), as cradle.ProtocolService.
func (c *Client) FindUpdateLogs(ctx context.Context, serial, rolloutID string) ([]*cradle.UpdateLog, error) {
	q := url.Values{}
	if rolloutID != "" {
		q.Set("rollout", rolloutID)
	}
	var l UpdateLogList
	if err := c.do(ctx, http.MethodGet, withQuery(devicePath(serial)+"/update-logs", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Logs, nil
}
