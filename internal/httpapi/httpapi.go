// Package httpapi is the operator REST API over HTTP: the server side that
// maps requests under /api/v1 onto the services of package cradle, and a Go
// client of the same API that the CLI uses.
//
// Every route is listed once, in the route table of routes.go; the handler
// is built from it, and a test holds it equal to the OpenAPI 3 document
// served at /api/v1/openapi.json. Requests carry an API token as
// "Authorization: Bearer <token>"; the token service turns it into the
// actor that every service call acts for, and the services decide what the
// actor may do, so authorization and tenant isolation live in one place.
// Errors are JSON {"code","message"} with the status taken from one table
// (statusOf). Bodies are limited in size: JSON requests to MaxBodyBytes,
// factory trace uploads to MaxTraceBytes, imports to MaxImportBytes, which
// stream to the store rather than being held in memory.
//
// The factory routes (factory.go) keep the test and production worlds
// apart: a batch or station of the other profile than the server's PKI is
// refused, and a trace record is stored only when its signature verifies
// with the certificate of the station it names.
package httpapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cradle"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Default body limits.
const (
	DefaultMaxBodyBytes   = 1 << 20 // 1 MiB for JSON requests
	DefaultMaxImportBytes = 1 << 30 // 1 GiB for a bulk import
)

// Server serves the operator API. Set the fields, then call Handler once.
type Server struct {
	Devices cradle.DeviceService
	Tokens  cradle.TokenService
	Audit   cradle.AuditService
	// Certificates serves the certificate routes. Revoking through it must
	// also reach the CRL and OCSP (the server's store notifies the PKI of
	// every revocation).
	Certificates cradle.CertificateService
	// Factory serves the factory routes: batches, MAC ranges, stations,
	// unit allocations and trace records.
	Factory cradle.FactoryService
	// Claims serves claiming and the tenant policy; nil answers those
	// routes with not_implemented.
	Claims cradle.ClaimService
	// Telemetry serves the telemetry and status routes; nil answers them
	// with not_implemented.
	Telemetry cradle.TelemetryService
	// StatusPolicy holds the thresholds of the status routes; the zero
	// value means cradle.DefaultStatusPolicy.
	StatusPolicy cradle.StatusPolicy
	// Clock is the clock of the status routes; nil means the system
	// clock.
	Clock cradle.Clock
	// Commands serves the device command routes; nil when the server has
	// no command signer (the routes answer not_implemented).
	Commands cradle.CommandService
	// Decommissions serves the decommissioning routes; nil when the
	// server has no command signer to sign wipe commands (the routes
	// answer not_implemented).
	Decommissions cradle.DecommissionService
	// Twins serves the configuration twin routes: device twins, config
	// groups, config schemas and the drift listing.
	Twins cradle.TwinService
	// Releases serves the release records and image keys; nil answers
	// those routes with not_implemented.
	Releases cradle.ReleaseService
	// Publisher uploads, signs, deprecates and yanks releases and
	// describes the TUF repository; nil (no repository yet) answers those
	// routes with unavailable.
	Publisher cradle.ReleasePublisher
	// Rollouts serves the rollout routes; nil answers them with
	// not_implemented.
	Rollouts cradle.RolloutService
	// Updates serves a device's reported software and download totals;
	// nil answers those routes with not_implemented.
	Updates cradle.UpdateService
	// Protocols serves the operator routes of the Mender and hawkBit
	// device APIs: auth sets, device tokens, inventory attributes and
	// update logs; nil answers them with not_implemented.
	Protocols cradle.ProtocolService
	// Revocations revokes whole devices (revoke.go); nil answers those
	// routes with not_implemented.
	Revocations cradle.RevocationService
	// StationIssuer issues a factory station's certificate for the key
	// of csr, and returns it with the chain up to the root (issuing CA
	// first). Nil when the server has no PKI: stations cannot enroll.
	StationIssuer func(ctx context.Context, name string, csr *x509.CertificateRequest) (cert *x509.Certificate, chain []*x509.Certificate, err error)
	// Profile is the profile of the server's PKI; batches and stations
	// of the other profile are refused. "" means the server has no PKI.
	Profile cradle.Profile
	// OnFactoryEvent is called after a trace record was stored (and with
	// it a factory event queued), to wake the webhook dispatcher; nil
	// means nobody waits.
	OnFactoryEvent func()
	// Ready reports whether the server can serve (for /readyz); nil means
	// always ready.
	Ready func(context.Context) error
	// Logger receives a line per request at debug level and one per
	// internal error; nil discards.
	Logger *slog.Logger
	// MaxBodyBytes limits JSON request bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxImportBytes limits import bodies; 0 means DefaultMaxImportBytes.
	MaxImportBytes int64
	// Registerer takes the API's metrics, and /metrics serves it when it is
	// also a prometheus.Gatherer (a *prometheus.Registry is both). Nil
	// means a new registry of the server's own.
	Registerer prometheus.Registerer

	draining atomic.Bool
	once     sync.Once
	handler  http.Handler
	metrics  *metrics
}

// SetDraining marks the server as shutting down (true): /readyz then
// answers 503 so that load balancers stop sending new work, while requests
// already accepted are still served.
func (s *Server) SetDraining(v bool) { s.draining.Store(v) }

// Handler returns the server's HTTP handler. It is built once; later calls
// return the same handler.
func (s *Server) Handler() http.Handler {
	s.once.Do(s.build)
	return s.handler
}

func (s *Server) build() {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.MaxBodyBytes <= 0 {
		s.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if s.MaxImportBytes <= 0 {
		s.MaxImportBytes = DefaultMaxImportBytes
	}
	if s.Registerer == nil {
		s.Registerer = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(s.Registerer)
	gatherer, ok := s.Registerer.(prometheus.Gatherer)
	if !ok {
		gatherer = prometheus.DefaultGatherer
	}

	mux := http.NewServeMux()
	// Several methods share a path: one mux entry per path dispatches on
	// the method, so that a known path with an unknown method is a 405
	// with an Allow header, and anything else a 404, both in JSON.
	byPath := map[string][]route{}
	var paths []string
	for _, r := range s.routes() {
		if _, ok := byPath[r.pattern]; !ok {
			paths = append(paths, r.pattern)
		}
		byPath[r.pattern] = append(byPath[r.pattern], r)
	}
	for _, p := range paths {
		mux.Handle(p, s.dispatch(byPath[p]))
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.Logger.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, cradle.Errorf(cradle.ENOTFOUND, "no route for %s %s; see /api/v1/openapi.json", r.Method, truncate(r.URL.Path, 200)))
	})
	s.handler = s.recoverer(mux)
}

// dispatch serves the routes of one path, chosen by method.
func (s *Server) dispatch(rs []route) http.Handler {
	handlers := map[string]http.Handler{}
	var allow []string
	for _, r := range rs {
		handlers[r.method] = s.instrument(r)
		allow = append(allow, r.method)
		if r.method == http.MethodGet {
			handlers[http.MethodHead] = handlers[r.method]
			allow = append(allow, http.MethodHead)
		}
	}
	allowed := strings.Join(allow, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, ok := handlers[r.Method]; ok {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Allow", allowed)
		s.writeErrorStatus(w, r, http.StatusMethodNotAllowed, &cradle.Error{Code: cradle.EINVALID,
			Message: fmt.Sprintf("method %s is not allowed on %s; allowed: %s", r.Method, truncate(r.URL.Path, 200), allowed)})
	})
}

// instrument wraps a route's handler with authentication, metrics and the
// request log.
func (s *Server) instrument(rt route) http.Handler {
	m := s.metrics
	durations := m.duration.WithLabelValues(rt.method, rt.pattern)
	var counts [6]prometheus.Counter // by status class, 1xx … 5xx
	for i := 1; i < len(counts); i++ {
		counts[i] = m.requests.WithLabelValues(rt.method, rt.pattern, fmt.Sprintf("%dxx", i))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		m.inFlight.Inc()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			m.inFlight.Dec()
			d := time.Since(start)
			durations.Observe(d.Seconds())
			if c := rec.status / 100; c > 0 && c < len(counts) {
				counts[c].Inc()
			}
			if s.Logger.Enabled(r.Context(), slog.LevelDebug) {
				s.Logger.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", d, "bytes", rec.bytes)
			}
		}()
		if rt.public {
			rt.handle(rec, r)
			return
		}
		actor, err := s.Tokens.Authenticate(r.Context(), bearerToken(r))
		if err != nil {
			rec.Header().Set("WWW-Authenticate", `Bearer realm="cradle"`)
			s.writeError(rec, r, err)
			return
		}
		rt.handle(rec, r.WithContext(cradle.NewContextWithActor(r.Context(), actor)))
	})
}

// bearerToken returns the token of an "Authorization: Bearer" header, the
// header's whole value for another scheme (which the token service then
// refuses as malformed, and audits), and "" without a header.
func bearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return h
}

// recoverer turns a panic in a handler into a 500 and a log line, rather
// than a dropped connection.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Logger.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				s.writeError(w, r, fmt.Errorf("httpapi: panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// statusOf is the one table from error code to HTTP status.
var statusOf = map[string]int{
	cradle.EINVALID:        http.StatusBadRequest,
	cradle.EUNAUTHORIZED:   http.StatusUnauthorized,
	cradle.EFORBIDDEN:      http.StatusForbidden,
	cradle.ENOTFOUND:       http.StatusNotFound,
	cradle.ECONFLICT:       http.StatusConflict,
	cradle.ETOOLARGE:       http.StatusRequestEntityTooLarge,
	cradle.EINTERNAL:       http.StatusInternalServerError,
	cradle.ENOTIMPLEMENTED: http.StatusNotImplemented,
	cradle.EUNAVAILABLE:    http.StatusServiceUnavailable,
}

// HTTPStatus is the HTTP status of an error code: the one table of the
// HTTP transports, the operator API and the device API alike. An unknown
// code is 500.
func HTTPStatus(code string) int {
	if st, ok := statusOf[code]; ok {
		return st
	}
	return http.StatusInternalServerError
}

// codeOf is statusOf turned around, for the client; a status outside the
// table maps to the code of its class.
func codeOf(status int) string {
	for code, st := range statusOf {
		if st == status {
			return code
		}
	}
	switch {
	case status == http.StatusMethodNotAllowed, status == http.StatusUnprocessableEntity,
		status == http.StatusUnsupportedMediaType:
		return cradle.EINVALID
	case status >= 500:
		return cradle.EINTERNAL
	}
	return cradle.EINVALID
}

// writeError writes err as JSON with the status of its code. Internal
// errors are logged here, once, and shown to the client without detail.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := cradle.ErrorCode(err)
	if code == cradle.EINTERNAL {
		s.Logger.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	s.writeErrorStatus(w, r, status, &cradle.Error{Code: code, Message: cradle.ErrorMessage(err)})
}

func (s *Server) writeErrorStatus(w http.ResponseWriter, r *http.Request, status int, e *cradle.Error) {
	s.writeJSON(w, r, status, e)
}

// writeJSON writes v as the JSON body of a response with the given status.
func (s *Server) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // do not keep a huge listing's buffer
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		s.Logger.Error("encoding a response", "method", r.Method, "path", r.URL.Path, "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"code":"internal","message":"internal error"}` + "\n")
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Cache-Control"] = noStore
	h["X-Content-Type-Options"] = noSniff
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	w.Write(buf.Bytes())
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Header values of every JSON response, assigned rather than Set: the keys
// are already canonical, and net/http never modifies a value slice.
var (
	jsonContentType = []string{"application/json"}
	noStore         = []string{"no-store"}
	noSniff         = []string{"nosniff"}
)

// statusRecorder remembers the status and size of a response for the
// request log and metrics.
type statusRecorder struct {
	http.ResponseWriter
	status      int
	bytes       int
	wroteHeader bool
}

func (r *statusRecorder) WriteHeader(status int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = status, true
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// metrics are the API's Prometheus metrics.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cradle_http_requests_total",
			Help: "API requests served, by method, route pattern and status class.",
		}, []string{"method", "route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cradle_http_request_duration_seconds",
			Help:    "Time to serve an API request, by method and route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
		}, []string{"method", "route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cradle_http_requests_in_flight",
			Help: "API requests being served now.",
		}),
	}
	m.requests = register(reg, m.requests)
	m.duration = register(reg, m.duration)
	m.inFlight = register(reg, m.inFlight)
	register[prometheus.Collector](reg, collectors.NewGoCollector())
	register[prometheus.Collector](reg, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// register registers c, or returns the collector registered before it
// under the same description (a second Server on one registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if prev, ok := are.ExistingCollector.(C); ok {
				return prev
			}
		}
	}
	return c
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
