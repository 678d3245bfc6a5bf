// Package mender serves the Mender device API, as mender-client 3.4 uses
// it, over Cradle's services: a Mender device is an ordinary Cradle device
// (protocol mender) whose updates come from Cradle rollouts.
//
// Routes, under /api/devices/ on the device listener (no client
// certificate: the Mender client has none):
//
//	POST      v1/authentication/auth_requests                 log in: a signed auth request → a session token
//	PUT|PATCH v1/inventory/device/attributes                  inventory: replace | merge the device's attributes
//	POST      v2/deployments/device/deployments/next          what to install (v1: POST, and GET with a query)
//	PUT       v1/deployments/device/deployments/{id}/status   progress of a deployment
//	PUT       v1/deployments/device/deployments/{id}/log      the deployment log, after a failure
//
// Trust. The auth request carries the device's identity data and public
// key, signed with the key (X-MEN-Signature): the signature is checked
// before anything is stored, so a request nobody holds the key of leaves
// nothing in the store and no audit row, only a line in the server's log
// (401). The store decides admission
// (cradle.ProtocolService.MenderAuthenticate: pending, accepted at once
// when the identity's MAC is a provisioned device's and the server
// admits by MAC, preauthorized, rejected) and issues an opaque session
// token; every other route needs it as "Authorization: Bearer", and acts
// as the device (role device) on the device's own records only. A tenant
// token in the auth request must be a Mender tenant token (kind tenant)
// of the tenant, which grants nothing but asking to be admitted; without
// one the configured default tenant is used. Artifacts are downloaded at signed, expiring URLs
// (SignURL): the client fetches them without its token.
//
// Deployments. A deployment id is "<rollout id>-<attempt>": the device's
// attempt in a Cradle rollout. Status reports map onto update reports
// (downloading; installing, rebooting, pause_* → installing; success,
// already-installed → succeeded; failure → failed). A report on the
// attempt of an aborted rollout answers 409, which the client takes as
// "aborted by the server"; a report on an attempt that has ended is
// accepted and changes nothing (the client repeats them).
//
// Update checks. What deployments/next reads of the device's update
// (cradle.UpdateService.PendingUpdate) is kept per device for PollCache
// (DefaultPollCache, 5 s): the device's own status report drops it, after
// storing, and Invalidate drops it when the rollout scheduler starts the
// device, so a started device sees its deployment at its next check; an
// abort, a timeout or another replica's start shows up to PollCache late.
// The token is checked on every request, and status reports, logs,
// inventory and logins always go to the store.
//
// Errors are Mender's JSON, {"error": "...", "request_id": "..."}, with
// one status per cradle error code (httpStatus). Bodies are bounded (413)
// and decoded strictly (400 saying what was wrong).
package mender

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"cradle"
	"cradle/internal/compat/pollcache"
)

// Server is the Mender device API. Set the fields, then mount Routes (or
// serve Handler()).
type Server struct {
	// Protocols admits devices and checks their tokens.
	Protocols cradle.ProtocolService
	// Updates gives a device its pending update and takes its reports.
	Updates cradle.UpdateService
	// DefaultTenant is the tenant of an auth request without a tenant
	// token.
	DefaultTenant func(ctx context.Context) (int64, error)
	// SignURL returns a download URL of a release's artifact for the
	// device, valid without credentials until expires. r is the request
	// that asked (for the host the device reached).
	SignURL func(r *http.Request, dev *cradle.Device, rel *cradle.Release) (uri string, expires time.Time, err error)
	// TokenTTL is the lifetime of a session token; 0 means
	// cradle.DefaultMenderTokenTTL.
	TokenTTL time.Duration
	// PollCache is how long an update check trusts what it read of the
	// device's pending update: 0 means DefaultPollCache, a negative value
	// reads the store on every check.
	PollCache time.Duration
	// Logger receives refusals and internal errors; nil discards.
	Logger *slog.Logger

	// polls holds update checks' readings: the pending update, nil
	// for none.
	polls pollcache.Cache[*cradle.PendingUpdate]
	// checksV1 and checksV2 remember parsed update-check bodies.
	checksV1, checksV2 parsedChecks
}

// DefaultPollCache is the default of Server.PollCache.
const DefaultPollCache = 5 * time.Second

// Invalidate forgets what update checks read of the devices' updates: the
// rollout scheduler has just started them (its Notify).
func (s *Server) Invalidate(tenantID int64, serials []string) {
	s.polls.Invalidate(tenantID, serials)
}

// pollCache is the TTL of an update check's reading; ≤ 0 when disabled.
func (s *Server) pollCache() time.Duration {
	if s.PollCache == 0 {
		return DefaultPollCache
	}
	return s.PollCache
}

// Request body limits.
const (
	MaxAuthRequestBytes = 16 << 10
	MaxInventoryBytes   = 1 << 20
	MaxNextBytes        = 64 << 10
	MaxStatusBytes      = 4 << 10
	// MaxLogBytes is what a log upload may be: the stored log's limit.
	MaxLogBytes = cradle.MaxUpdateLogBytes
)

// Prefix is where the routes live.
const Prefix = "/api/devices/"

// Routes mounts every route with mount (a ServeMux pattern each, method
// included), plus a catch-all under Prefix that answers 404 in Mender's
// format.
func (s *Server) Routes(mount func(pattern string, h http.Handler)) {
	mount("POST "+Prefix+"v1/authentication/auth_requests", http.HandlerFunc(s.authRequest))
	mount("PUT "+Prefix+"v1/inventory/device/attributes", s.device(s.putAttributes))
	mount("PATCH "+Prefix+"v1/inventory/device/attributes", s.device(s.patchAttributes))
	mount("POST "+Prefix+"v2/deployments/device/deployments/next", s.device(s.nextV2))
	mount("POST "+Prefix+"v1/deployments/device/deployments/next", s.device(s.nextV1Post))
	mount("GET "+Prefix+"v1/deployments/device/deployments/next", s.device(s.nextV1Get))
	mount("PUT "+Prefix+"v1/deployments/device/deployments/{id}/status", s.device(s.putStatus))
	mount("PUT "+Prefix+"v1/deployments/device/deployments/{id}/log", s.device(s.putLog))
	mount(Prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, cradle.Errorf(cradle.ENOTFOUND, "%s %s is not a route of the Mender device API", r.Method, clip(r.URL.Path, 120)))
	}))
}

// Handler returns the routes on a ServeMux of their own.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.Routes(func(p string, h http.Handler) { mux.Handle(p, h) })
	return mux
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) ttl() time.Duration {
	if s.TokenTTL <= 0 {
		return cradle.DefaultMenderTokenTTL
	}
	return s.TokenTTL
}

// httpStatus is the one table from cradle error code to HTTP status of
// this transport.
func httpStatus(code string) int {
	switch code {
	case cradle.EINVALID:
		return http.StatusBadRequest
	case cradle.EUNAUTHORIZED:
		return http.StatusUnauthorized
	case cradle.EFORBIDDEN:
		return http.StatusForbidden
	case cradle.ENOTFOUND:
		return http.StatusNotFound
	case cradle.ECONFLICT:
		return http.StatusConflict
	case cradle.ETOOLARGE:
		return http.StatusRequestEntityTooLarge
	case cradle.ENOTIMPLEMENTED:
		return http.StatusNotImplemented
	case cradle.EUNAVAILABLE:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// apiError is Mender's error body.
type apiError struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id"`
}

// requestID names a request in its error answer and in the log.
func requestID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// fail answers err in Mender's format; an internal error is logged and
// shown as "internal error".
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := cradle.ErrorCode(err), cradle.ErrorMessage(err)
	status := httpStatus(code)
	id := requestID()
	serial := ""
	if a, ok := cradle.ActorFromContext(r.Context()); ok && a.Kind == "device" {
		serial = a.ID
	}
	if status == http.StatusInternalServerError {
		s.logger().Error("mender device API", "method", r.Method, "path", r.URL.Path, "device", serial, "request_id", id, "err", err)
		msg = "internal error"
	} else if status != http.StatusNotFound {
		s.logger().Warn("mender device API request refused", "method", r.Method, "path", r.URL.Path, "device", serial, "request_id", id, "status", status, "reason", msg)
	}
	w.Header().Set("X-MEN-RequestID", id)
	writeJSON(w, status, apiError{Error: msg, RequestID: id})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// readBody reads a request body of at most limit bytes (chunked or not).
func readBody(w http.ResponseWriter, r *http.Request, limit int64, what string) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, cradle.Errorf(cradle.ETOOLARGE, "the %s is larger than %d bytes", what, limit)
		}
		return nil, cradle.Errorf(cradle.EINVALID, "reading the %s: %v", what, err)
	}
	return body, nil
}

// clip shortens s for a message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
