package mender

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"cradle"
)

// systemActor is who the handlers act as where no device is known yet
// (auth requests, token checks) or where the store reads on the device's
// behalf what a device may not read itself (its stored log).
const systemActor = "mender-api"

func systemContext(ctx context.Context, tenantID int64) context.Context {
	return cradle.NewContextWithActor(ctx, cradle.SystemActor(tenantID, systemActor))
}

// authRequest serves POST v1/authentication/auth_requests: 200 with the
// session token as the body (application/jwt, though it is opaque), 401
// while the device is not admitted.
func (s *Server) authRequest(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, MaxAuthRequestBytes, "auth request")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := ParseAuthRequest(body, r.Header.Get("X-MEN-Signature"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	tenant, err := s.tenant(r.Context(), req.TenantToken)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	tok, dev, err := s.Protocols.MenderAuthenticate(systemContext(r.Context(), tenant), req.Request, s.ttl())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.logger().Debug("mender device logged in", "device", dev.Serial, "tenant", tenant, "token", tok.Token.ID)
	w.Header().Set("Content-Type", "application/jwt")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(tok.Secret))
}

// tenant is the tenant of an auth request: the default one without a
// tenant token, else the tenant of the Mender tenant token (kind tenant)
// it must be. No other kind is taken: a gateway token would grant the
// hawkBit API too, and a device's config is no place for it.
func (s *Server) tenant(ctx context.Context, token string) (int64, error) {
	if token == "" {
		if s.DefaultTenant == nil {
			return 0, cradle.Errorf(cradle.EUNAUTHORIZED, "this server has no default tenant: configure the device with a tenant token (cradle device token create --mender-tenant)")
		}
		return s.DefaultTenant(ctx)
	}
	auth, err := s.Protocols.AuthenticateDeviceToken(systemContext(ctx, 0), token)
	if err != nil {
		if cradle.ErrorCode(err) == cradle.EUNAUTHORIZED {
			return 0, cradle.Errorf(cradle.EUNAUTHORIZED, "tenant_token: %s", cradle.ErrorMessage(err))
		}
		return 0, err
	}
	if auth.Token.Kind != cradle.TokenMenderTenant {
		return 0, cradle.Errorf(cradle.EUNAUTHORIZED, "tenant_token is a %s token, not a Mender tenant token (cradle device token create --mender-tenant)", auth.Token.Kind)
	}
	return auth.TenantID, nil
}

// deviceHandler serves an authenticated device.
type deviceHandler func(w http.ResponseWriter, r *http.Request, dev *cradle.Device)

// device authenticates a request by its session token and serves it as
// the device. A missing, unknown, expired or revoked token is 401 (the
// client logs in again); a suspended device 403.
func (s *Server) device(h deviceHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			s.fail(w, r, cradle.Errorf(cradle.EUNAUTHORIZED, "no Authorization: Bearer token: log in with an auth request first"))
			return
		}
		auth, err := s.Protocols.AuthenticateDeviceToken(systemContext(r.Context(), 0), tok)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if auth.Token.Kind != cradle.TokenMenderSession || auth.Device == nil {
			s.fail(w, r, cradle.Errorf(cradle.EUNAUTHORIZED, "a %s token is not a Mender session token: log in with an auth request", auth.Token.Kind))
			return
		}
		if auth.Device.Protocol != cradle.ProtocolMender {
			s.fail(w, r, cradle.Errorf(cradle.EUNAUTHORIZED, "device %q talks %s, not the Mender protocol", auth.Device.Serial, auth.Device.Protocol))
			return
		}
		ctx := cradle.NewContextWithActor(r.Context(), cradle.Actor{TenantID: auth.TenantID, Role: cradle.RoleDevice, Kind: "device", ID: auth.Device.Serial})
		h(w, r.WithContext(ctx), auth.Device)
	})
}

func (s *Server) putAttributes(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	s.attributes(w, r, dev, true)
}

func (s *Server) patchAttributes(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	s.attributes(w, r, dev, false)
}

// attributes stores an inventory: replace (PUT) or merge (PATCH). The
// client wants exactly 200.
func (s *Server) attributes(w http.ResponseWriter, r *http.Request, dev *cradle.Device, replace bool) {
	body, err := readBody(w, r, MaxInventoryBytes, "inventory")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	attrs, err := ParseInventory(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.Protocols.SetDeviceAttributes(r.Context(), dev.Serial, attrs, replace); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) nextV2(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	body, err := readBody(w, r, MaxNextBytes, "update check")
	if err == nil {
		var p Provides
		if p, err = s.checksV2.parse(body, ParseNextV2); err == nil {
			s.next(w, r, dev, p)
			return
		}
	}
	s.fail(w, r, err)
}

func (s *Server) nextV1Post(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	body, err := readBody(w, r, MaxNextBytes, "update check")
	if err == nil {
		var p Provides
		if p, err = s.checksV1.parse(body, ParseNextV1); err == nil {
			s.next(w, r, dev, p)
			return
		}
	}
	s.fail(w, r, err)
}

func (s *Server) nextV1Get(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	p, err := ParseNextQuery(r.URL.Query())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.next(w, r, dev, p)
}

// parsedChecks remembers what update-check bodies said: a device sends the
// same body at every check until it installs something (and a fleet on one
// version sends the same one), and decoding it strictly costs a cached check
// more than anything but the token. Only valid bodies of at most
// maxParsedCheckBytes are kept, at most maxParsedChecks of them: when full,
// it starts over.
type parsedChecks struct {
	mu sync.RWMutex
	m  map[string]Provides
}

const (
	maxParsedChecks     = 4096
	maxParsedCheckBytes = 1024
)

// parse returns what parse makes of body, once per distinct body.
func (c *parsedChecks) parse(body []byte, parse func([]byte) (Provides, error)) (Provides, error) {
	if len(body) > maxParsedCheckBytes {
		return parse(body)
	}
	c.mu.RLock()
	p, ok := c.m[string(body)]
	c.mu.RUnlock()
	if ok {
		return p, nil
	}
	p, err := parse(body)
	if err != nil {
		return p, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxParsedChecks {
		c.m = make(map[string]Provides)
	}
	c.m[string(body)] = p
	c.mu.Unlock()
	return p, nil
}

// deployment is the answer of an update check.
type deployment struct {
	ID       string           `json:"id"`
	Artifact deployedArtifact `json:"artifact"`
}

type deployedArtifact struct {
	ID                    string   `json:"id"`
	ArtifactName          string   `json:"artifact_name"`
	Source                source   `json:"source"`
	DeviceTypesCompatible []string `json:"device_types_compatible"`
}

type source struct {
	URI    string `json:"uri"`
	Expire string `json:"expire"`
}

// next answers an update check: the device's attempt in progress, as a
// deployment, or 204. An attempt the client cannot install (not a Mender
// artifact, or for another device type) is reported failed, saying why,
// and not offered.
func (s *Server) next(w http.ResponseWriter, r *http.Request, dev *cradle.Device, p Provides) {
	pu, err := s.polls.Fill(dev.TenantID, dev.Serial, s.pollCache(), func() (*cradle.PendingUpdate, error) {
		pu, err := s.Updates.PendingUpdate(r.Context(), dev.Serial, "")
		if cradle.ErrorCode(err) == cradle.ENOTFOUND {
			return nil, nil
		}
		return pu, err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if pu == nil || pu.RolloutState == cradle.RolloutAborted {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	rel := &pu.Release
	var refuse string
	switch {
	case rel.Kind != cradle.ReleaseMender:
		refuse = "release " + rel.Model + " " + rel.Version + " is a " + string(rel.Kind) + " artifact; the Mender client installs only Mender artifacts"
	case p.DeviceType != rel.Model:
		refuse = "the device's Mender device_type is " + clip(p.DeviceType, 64) + ", but release " + rel.Version + " is for model " + rel.Model
	}
	if refuse != "" {
		err := s.Updates.ReportUpdate(r.Context(), dev.Serial, cradle.UpdateReport{RolloutID: pu.RolloutID, Attempt: pu.Attempt, State: cradle.UpdateFailed, Reason: refuse})
		s.polls.Delete(dev.TenantID, dev.Serial)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.logger().Warn("mender update not offered", "device", dev.Serial, "rollout", pu.RolloutID, "attempt", pu.Attempt, "reason", refuse)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	uri, expires, err := s.SignURL(r, dev, rel)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	name := rel.ArtifactName
	if name == "" {
		name = rel.Version // a release recorded before artifact names were kept
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, deployment{ID: DeploymentID(pu.RolloutID, pu.Attempt), Artifact: deployedArtifact{
		ID: rel.ID, ArtifactName: name, DeviceTypesCompatible: []string{rel.Model},
		Source: source{URI: uri, Expire: expires.UTC().Format(time.RFC3339)},
	}})
}

// putStatus takes a status report on a deployment: 204, or 409 when its
// rollout was aborted while the attempt is in flight.
func (s *Server) putStatus(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	rolloutID, attempt, err := ParseDeploymentID(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	body, err := readBody(w, r, MaxStatusBytes, "status report")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	st, err := ParseStatus(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	pu, err := s.Updates.PendingUpdate(r.Context(), dev.Serial, "")
	if err != nil && cradle.ErrorCode(err) != cradle.ENOTFOUND {
		s.fail(w, r, err)
		return
	}
	current := err == nil && pu.RolloutID == rolloutID && pu.Attempt == attempt
	if current && pu.RolloutState == cradle.RolloutAborted {
		s.polls.Delete(dev.TenantID, dev.Serial) // update checks see the abort too
		s.fail(w, r, cradle.Errorf(cradle.ECONFLICT, "deployment %s was aborted: rollout %s is aborted", DeploymentID(rolloutID, attempt), rolloutID))
		return
	}
	rep := cradle.UpdateReport{RolloutID: rolloutID, Attempt: attempt, State: st.UpdateState()}
	if rep.State == cradle.UpdateFailed {
		rep.Reason = s.failureReason(r.Context(), dev, rolloutID, attempt, st, current)
	}
	// An ended attempt's report is taken and changes nothing (the store
	// audits it as stale); one of a rollout the device is not in is 404.
	// The update checks' reading is dropped once the report is stored,
	// before the device hears of it.
	err = s.Updates.ReportUpdate(r.Context(), dev.Serial, rep)
	if err == nil && current && rep.State == cradle.UpdateSucceeded {
		err = s.Updates.ReportSoftware(r.Context(), dev.Serial, pu.Release.SHA256)
	}
	s.polls.Delete(dev.TenantID, dev.Serial)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// failureReason says why a deployment failed: the last error line of the
// log stored for it, when there is one (the client uploads the log right
// after the failure status, so it is there when the report is repeated),
// else the status and substate.
func (s *Server) failureReason(ctx context.Context, dev *cradle.Device, rolloutID string, attempt int, st Status, current bool) string {
	reason := "the Mender client reported failure"
	if st.SubState != "" {
		reason += " (" + st.SubState + ")"
	}
	if !current {
		return reason
	}
	logs, err := s.Protocols.FindUpdateLogs(systemContext(ctx, dev.TenantID), dev.Serial, rolloutID)
	if err != nil {
		s.logger().Warn("reading a deployment log", "device", dev.Serial, "rollout", rolloutID, "err", err)
		return reason
	}
	for _, l := range logs {
		if l.Attempt != attempt {
			continue
		}
		if last, err := ParseLog([]byte(l.Log)); err == nil && last != "" {
			return clip(reason+": "+last, cradle.MaxUpdateReason-8)
		}
		break
	}
	return reason
}

// putLog stores a deployment's log: 204.
func (s *Server) putLog(w http.ResponseWriter, r *http.Request, dev *cradle.Device) {
	rolloutID, attempt, err := ParseDeploymentID(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	body, err := readBody(w, r, MaxLogBytes, "deployment log")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := ParseLog(body); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.Protocols.StoreUpdateLog(r.Context(), dev.Serial, rolloutID, attempt, string(body)); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
