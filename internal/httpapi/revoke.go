package httpapi

import (
	"context"
	"net/http"

	"cradle"
)

// BulkRevocationRequest asks to revoke every device a label selector
// matches.
type BulkRevocationRequest struct {
	Selector string `json:"selector"` // a label selector, e.g. batch=B-7,site=lyon
	Reason   string `json:"reason"`   // an RFC 5280 reason name, e.g. keyCompromise
}

func (s *Server) revocations() (cradle.RevocationService, error) {
	if s.Revocations == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "device revocation is not available on this server")
	}
	return s.Revocations, nil
}

// revokeDevice revokes every credential of a device.
func (s *Server) revokeDevice(w http.ResponseWriter, r *http.Request) {
	svc, err := s.revocations()
	var reason cradle.RevocationReason
	if err == nil {
		reason, err = s.decodeRevocation(w, r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := svc.RevokeDevice(r.Context(), r.PathValue("serial"), reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// revokeDevices revokes every device a selector matches.
func (s *Server) revokeDevices(w http.ResponseWriter, r *http.Request) {
	svc, err := s.revocations()
	var req BulkRevocationRequest
	if err == nil {
		err = s.decode(w, r, &req)
	}
	var reason cradle.RevocationReason
	if err == nil {
		if req.Reason == "" {
			err = cradle.Errorf(cradle.EINVALID, "say why: give a reason such as keyCompromise, superseded or cessationOfOperation")
		} else {
			reason, err = cradle.ParseRevocationReason(req.Reason)
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := svc.RevokeDevices(r.Context(), req.Selector, reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// RevokeDevice revokes every credential of a device, as
// cradle.RevocationService.
func (c *Client) RevokeDevice(ctx context.Context, serial string, reason cradle.RevocationReason) (*cradle.DeviceRevocation, error) {
	return sendJSON[cradle.DeviceRevocation](ctx, c, http.MethodPost, devicePath(serial)+"/revoke", Revocation{Reason: reason.String()})
}

// RevokeDevices revokes every device a label selector matches, as
// cradle.RevocationService.
func (c *Client) RevokeDevices(ctx context.Context, selector string, reason cradle.RevocationReason) (*cradle.BulkRevocation, error) {
	return sendJSON[cradle.BulkRevocation](ctx, c, http.MethodPost, "/api/v1/device-revocations", BulkRevocationRequest{Selector: selector, Reason: reason.String()})
}

var _ cradle.RevocationService = (*Client)(nil)
