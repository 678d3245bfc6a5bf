package httpapi

import (
	_ "embed"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"cradle"
)

// route is one entry of the API: a method and a ServeMux path pattern.
type route struct {
	method  string
	pattern string
	public  bool // served without a token
	handle  http.HandlerFunc
}

// Route names one route of the API, for tests and documentation.
type Route struct {
	Method  string // GET, POST, PUT, PATCH, DELETE
	Pattern string // a ServeMux path pattern, e.g. /api/v1/devices/{serial}
	Public  bool   // served without a token
}

// Routes lists the routes the API serves, in the order of the route
// table. /metrics and the fall-back 404 are not in it.
func (s *Server) Routes() []Route {
	var out []Route
	for _, r := range s.routes() {
		out = append(out, Route{Method: r.method, Pattern: r.pattern, Public: r.public})
	}
	return out
}

// routes is the route table.
func (s *Server) routes() []route {
	return []route{
		{method: "GET", pattern: "/healthz", public: true, handle: s.healthz},
		{method: "GET", pattern: "/readyz", public: true, handle: s.readyz},
		{method: "GET", pattern: "/api/v1/openapi.json", public: true, handle: s.openAPI},
		{method: "GET", pattern: "/api/v1/whoami", handle: s.whoAmI},

		{method: "GET", pattern: "/api/v1/devices", handle: s.listDevices},
		{method: "POST", pattern: "/api/v1/devices", handle: s.createDevice},
		{method: "GET", pattern: "/api/v1/devices/{serial}", handle: s.getDevice},
		{method: "PATCH", pattern: "/api/v1/devices/{serial}", handle: s.updateDevice},
		{method: "GET", pattern: "/api/v1/devices/{serial}/transitions", handle: s.deviceHistory},
		{method: "POST", pattern: "/api/v1/devices/{serial}/transitions", handle: s.transitionDevice},
		{method: "POST", pattern: "/api/v1/device-imports", handle: s.importDevices},
		{method: "POST", pattern: "/api/v1/devices/{serial}/revoke", handle: s.revokeDevice},
		{method: "POST", pattern: "/api/v1/device-revocations", handle: s.revokeDevices},

		{method: "GET", pattern: "/api/v1/audit", handle: s.listAudit},
		{method: "GET", pattern: "/api/v1/audit/verify", handle: s.verifyAudit},

		{method: "GET", pattern: "/api/v1/certificates", handle: s.listCertificates},
		{method: "GET", pattern: "/api/v1/certificates/{serial}", handle: s.getCertificate},
		{method: "POST", pattern: "/api/v1/certificates/{serial}/revoke", handle: s.revokeCertificate},
		{method: "POST", pattern: "/api/v1/devices/{serial}/certificates/revoke", handle: s.revokeDeviceCertificates},
		{method: "POST", pattern: "/api/v1/devices/{serial}/certificates", handle: s.recordCertificate},

		{method: "GET", pattern: "/api/v1/tokens", handle: s.listTokens},
		{method: "POST", pattern: "/api/v1/tokens", handle: s.createToken},
		{method: "DELETE", pattern: "/api/v1/tokens/{id}", handle: s.revokeToken},

		{method: "POST", pattern: "/api/v1/factory/batches", handle: s.createBatch},
		{method: "GET", pattern: "/api/v1/factory/batches", handle: s.listBatches},
		{method: "GET", pattern: "/api/v1/factory/batches/{id}", handle: s.getBatch},
		{method: "GET", pattern: "/api/v1/factory/batches/{id}/export", handle: s.exportBatch},
		{method: "POST", pattern: "/api/v1/factory/batches/{id}/allocations", handle: s.allocateUnits},
		{method: "POST", pattern: "/api/v1/factory/mac-ranges", handle: s.addMACRange},
		{method: "GET", pattern: "/api/v1/factory/mac-ranges", handle: s.listMACRanges},
		{method: "POST", pattern: "/api/v1/factory/stations", handle: s.enrollStation},
		{method: "GET", pattern: "/api/v1/factory/stations", handle: s.listStations},
		{method: "GET", pattern: "/api/v1/factory/stations/{name}", handle: s.getStation},
		{method: "POST", pattern: "/api/v1/factory/rma/{serial}", handle: s.reprovisionUnit},
		{method: "POST", pattern: "/api/v1/factory/traces", handle: s.uploadTrace},
		{method: "GET", pattern: "/api/v1/devices/{serial}/trace", handle: s.unitTrace},

		{method: "POST", pattern: "/api/v1/devices/{serial}/claim", handle: s.claimDevice},
		{method: "GET", pattern: "/api/v1/policy", handle: s.getPolicy},
		{method: "PUT", pattern: "/api/v1/policy", handle: s.putPolicy},
		{method: "GET", pattern: "/api/v1/devices/{serial}/telemetry", handle: s.deviceTelemetry},
		{method: "GET", pattern: "/api/v1/devices/{serial}/status", handle: s.deviceStatus},
		{method: "GET", pattern: "/api/v1/device-status", handle: s.fleetStatus},
		{method: "POST", pattern: "/api/v1/devices/{serial}/commands", handle: s.issueCommand},
		{method: "GET", pattern: "/api/v1/devices/{serial}/commands", handle: s.listCommands},
		{method: "GET", pattern: "/api/v1/devices/{serial}/commands/{id}", handle: s.getCommand},
		{method: "GET", pattern: "/api/v1/devices/{serial}/commands/{id}/logs", handle: s.getCommandLogs},
		{method: "POST", pattern: "/api/v1/devices/{serial}/decommission", handle: s.requestDecommission},
		{method: "POST", pattern: "/api/v1/devices/{serial}/decommission/approve", handle: s.approveDecommission},
		{method: "GET", pattern: "/api/v1/devices/{serial}/decommission", handle: s.getDecommission},
		{method: "GET", pattern: "/api/v1/devices/{serial}/decommission/certificate", handle: s.decommissionCertificate},
		{method: "GET", pattern: "/api/v1/devices/{serial}/twin", handle: s.getTwin},
		{method: "PUT", pattern: "/api/v1/devices/{serial}/twin/desired", handle: s.setDeviceConfig},
		{method: "DELETE", pattern: "/api/v1/devices/{serial}/twin/desired", handle: s.deleteDeviceConfig},
		{method: "GET", pattern: "/api/v1/twins", handle: s.listTwins},
		{method: "GET", pattern: "/api/v1/config-groups", handle: s.listConfigGroups},
		{method: "GET", pattern: "/api/v1/config-groups/{name}", handle: s.getConfigGroup},
		{method: "PUT", pattern: "/api/v1/config-groups/{name}", handle: s.putConfigGroup},
		{method: "DELETE", pattern: "/api/v1/config-groups/{name}", handle: s.deleteConfigGroup},
		{method: "GET", pattern: "/api/v1/config-schemas/{model}", handle: s.getConfigSchema},
		{method: "PUT", pattern: "/api/v1/config-schemas/{model}", handle: s.putConfigSchema},

		{method: "POST", pattern: "/api/v1/releases", handle: s.uploadRelease},
		{method: "GET", pattern: "/api/v1/releases", handle: s.listReleases},
		{method: "GET", pattern: "/api/v1/releases/{id}", handle: s.getRelease},
		{method: "POST", pattern: "/api/v1/releases/{id}/sign", handle: s.signRelease},
		{method: "POST", pattern: "/api/v1/releases/{id}/deprecate", handle: s.deprecateRelease},
		{method: "POST", pattern: "/api/v1/releases/{id}/yank", handle: s.yankRelease},
		{method: "GET", pattern: "/api/v1/tuf", handle: s.repositoryStatus},
		{method: "GET", pattern: "/api/v1/image-keys", handle: s.listImageKeys},
		{method: "POST", pattern: "/api/v1/image-keys", handle: s.addImageKey},
		{method: "DELETE", pattern: "/api/v1/image-keys/{fingerprint}", handle: s.removeImageKey},
		{method: "POST", pattern: "/api/v1/rollouts", handle: s.createRollout},
		{method: "GET", pattern: "/api/v1/rollouts", handle: s.listRollouts},
		{method: "GET", pattern: "/api/v1/rollouts/{id}", handle: s.getRollout},
		{method: "GET", pattern: "/api/v1/rollouts/{id}/devices", handle: s.listRolloutDevices},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/pause", handle: s.pauseRollout},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/resume", handle: s.resumeRollout},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/abort", handle: s.abortRollout},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/approve", handle: s.approveRollout},
		{method: "GET", pattern: "/api/v1/devices/{serial}/software", handle: s.deviceSoftware},
		{method: "GET", pattern: "/api/v1/devices/{serial}/downloads", handle: s.deviceDownloads},

		{method: "GET", pattern: "/api/v1/mender/auth-sets", handle: s.listMenderAuthSets},
		{method: "GET", pattern: "/api/v1/mender/auth-sets/{id}", handle: s.getMenderAuthSet},
		{method: "POST", pattern: "/api/v1/mender/auth-sets/{id}/accept", handle: s.acceptMenderAuthSet},
		{method: "POST", pattern: "/api/v1/mender/auth-sets/{id}/reject", handle: s.rejectMenderAuthSet},
		{method: "POST", pattern: "/api/v1/mender/preauthorizations", handle: s.preauthorizeMender},
		{method: "GET", pattern: "/api/v1/device-tokens", handle: s.listDeviceTokens},
		{method: "POST", pattern: "/api/v1/device-tokens", handle: s.createDeviceToken},
		{method: "DELETE", pattern: "/api/v1/device-tokens/{id}", handle: s.revokeDeviceToken},
		{method: "POST", pattern: "/api/v1/devices/{serial}/tokens/revoke", handle: s.revokeDeviceTokens},
		{method: "GET", pattern: "/api/v1/devices/{serial}/attributes", handle: s.deviceAttributes},
		{method: "GET", pattern: "/api/v1/devices/{serial}/update-logs", handle: s.deviceUpdateLogs},
	}
}

//go:embed openapi.json
var openAPIDocument []byte

// OpenAPIDocument returns the OpenAPI 3 document served at
// /api/v1/openapi.json.
func OpenAPIDocument() []byte { return slices.Clone(openAPIDocument) }

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	if r.Method != http.MethodHead {
		w.Write(openAPIDocument)
	}
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		s.writeError(w, r, cradle.Errorf(cradle.EUNAVAILABLE, "shutting down"))
		return
	}
	if s.Ready != nil {
		if err := s.Ready(r.Context()); err != nil {
			s.Logger.Warn("not ready", "err", err)
			s.writeError(w, r, cradle.Errorf(cradle.EUNAVAILABLE, "not ready: the store does not answer"))
			return
		}
	}
	s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ready"})
}

// Identity is what /api/v1/whoami says about the caller.
type Identity struct {
	Actor    string      `json:"actor"` // as recorded in the audit log
	TenantID int64       `json:"tenant_id"`
	Role     cradle.Role `json:"role"`
	Kind     string      `json:"kind"`
	ID       string      `json:"id"`
}

func (s *Server) whoAmI(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	a, _ := cradle.ActorFromContext(r.Context())
	s.writeJSON(w, r, http.StatusOK, Identity{Actor: a.String(), TenantID: a.TenantID, Role: a.Role, Kind: a.Kind, ID: a.ID})
}

// DeviceList is a page of devices.
type DeviceList struct {
	Devices    []*cradle.Device `json:"devices"`
	NextCursor string           `json:"next_cursor,omitempty"` // "" after the last page
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "state", "model", "protocol", "serial_prefix", "selector", "cursor", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f, err := deviceFilter(q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	devices, next, err := s.Devices.FindDevices(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if devices == nil {
		devices = []*cradle.Device{}
	}
	s.writeJSON(w, r, http.StatusOK, DeviceList{Devices: devices, NextCursor: next})
}

// deviceFilter reads the device list parameters of q: state, model,
// protocol, serial_prefix, selector, cursor and limit, each optional.
func deviceFilter(q url.Values) (cradle.DeviceFilter, error) {
	f := cradle.DeviceFilter{Cursor: q.Get("cursor")}
	if v, ok := q["state"]; ok {
		st, err := cradle.ParseState(v[0])
		if err != nil {
			return f, err
		}
		f.State = &st
	}
	if v, ok := q["model"]; ok {
		f.Model = &v[0]
	}
	if v, ok := q["protocol"]; ok {
		p, err := parseProtocol(v[0])
		if err != nil {
			return f, err
		}
		f.Protocol = &p
	}
	if v, ok := q["serial_prefix"]; ok {
		f.SerialPrefix = &v[0]
	}
	if v, ok := q["selector"]; ok {
		sel, err := cradle.ParseLabelSelector(v[0])
		if err != nil {
			return f, err
		}
		f.Selector = sel
	}
	var err error
	f.Limit, err = intParam(q, "limit")
	return f, err
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request) {
	var c cradle.DeviceCreate
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.Devices.CreateDevice(r.Context(), c)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/devices/"+url.PathEscape(d.Serial))
	s.writeJSON(w, r, http.StatusCreated, d)
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.Devices.FindDeviceBySerial(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, d)
}

func (s *Server) updateDevice(w http.ResponseWriter, r *http.Request) {
	var u cradle.DeviceUpdate
	if err := s.decode(w, r, &u); err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.Devices.UpdateDevice(r.Context(), r.PathValue("serial"), u)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, d)
}

// TransitionList is a device's lifecycle history.
type TransitionList struct {
	Transitions []*cradle.StateChange `json:"transitions"`
}

func (s *Server) deviceHistory(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	h, err := s.Devices.FindDeviceHistory(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if h == nil {
		h = []*cradle.StateChange{}
	}
	s.writeJSON(w, r, http.StatusOK, TransitionList{Transitions: h})
}

func (s *Server) transitionDevice(w http.ResponseWriter, r *http.Request) {
	var t cradle.DeviceTransition
	if err := s.decode(w, r, &t); err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.Devices.TransitionDevice(r.Context(), r.PathValue("serial"), t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, d)
}

// importFormats maps the media types an import may be sent as to formats.
var importFormats = map[string]cradle.ImportFormat{
	"text/csv":             cradle.ImportCSV,
	"application/jsonl":    cradle.ImportJSONL,
	"application/x-ndjson": cradle.ImportJSONL,
	"application/x-jsonl":  cradle.ImportJSONL,
}

// importDevices streams the body to the device service. The format comes
// from ?format= or, without it, the Content-Type. 200 with the report when
// the import was committed, 422 with the report when rows were rejected
// (and nothing was stored).
func (s *Server) importDevices(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "format")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var format cradle.ImportFormat
	if v, ok := q["format"]; ok {
		format = cradle.ImportFormat(v[0])
	} else if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, _ := mime.ParseMediaType(ct)
		format = importFormats[mt]
	}
	if format == "" {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "say the import format with ?format=csv or ?format=jsonl (or Content-Type text/csv or application/jsonl)"))
		return
	}
	if r.ContentLength > s.MaxImportBytes {
		s.writeError(w, r, tooLarge(s.MaxImportBytes))
		return
	}
	body := &limitedBody{r: http.MaxBytesReader(w, r.Body, s.MaxImportBytes)}
	rep, err := s.Devices.ImportDevices(r.Context(), format, body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if !rep.Committed {
		status = http.StatusUnprocessableEntity
	}
	s.writeJSON(w, r, status, rep)
}

// limitedBody turns the error of an http.MaxBytesReader into ETOOLARGE,
// which the services pass on.
type limitedBody struct{ r io.Reader }

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = tooLarge(mbe.Limit)
	}
	return n, err
}

func tooLarge(limit int64) error {
	return cradle.Errorf(cradle.ETOOLARGE, "request body is larger than the limit of %d bytes", limit)
}

// AuditList is a page of audit entries.
type AuditList struct {
	Entries []*cradle.AuditEntry `json:"entries"`
	// NextAfter is the value of ?after= for the next page; 0 when this
	// page was not full.
	NextAfter int64 `json:"next_after,omitempty"`
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "after", "action", "subject", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var f cradle.AuditFilter
	if v, ok := q["action"]; ok {
		f.Action = &v[0]
	}
	if v, ok := q["subject"]; ok {
		f.Subject = &v[0]
	}
	after, err := intParam(q, "after")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f.AfterSeq = int64(after)
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	entries, err := s.Audit.FindAuditEntries(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := AuditList{Entries: entries}
	if out.Entries == nil {
		out.Entries = []*cradle.AuditEntry{}
	}
	limit := f.Limit
	if limit == 0 {
		limit = cradle.DefaultPageSize
	}
	if len(entries) >= limit {
		out.NextAfter = entries[len(entries)-1].Seq
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) verifyAudit(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.Audit.VerifyAudit(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, v)
}

// TokenList lists a tenant's API tokens (never their secrets).
type TokenList struct {
	Tokens []*cradle.Token `json:"tokens"`
}

// TokenCreated is the answer to creating a token: the token's record and
// the secret token string, shown only this once.
type TokenCreated struct {
	Token  *cradle.Token `json:"token"`
	Secret string        `json:"secret"`
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	ts, err := s.Tokens.FindTokens(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ts == nil {
		ts = []*cradle.Token{}
	}
	s.writeJSON(w, r, http.StatusOK, TokenList{Tokens: ts})
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var c cradle.TokenCreate
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, secret, err := s.Tokens.CreateToken(r.Context(), c)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusCreated, TokenCreated{Token: t, Secret: secret})
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.Tokens.RevokeToken(r.Context(), r.PathValue("id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// decode reads a JSON request body of at most MaxBodyBytes into v,
// refusing unknown fields, trailing data and other media types.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return s.decodeLimit(w, r, v, s.MaxBodyBytes)
}

// decodeLimit is decode with a body limit of its own.
func (s *Server) decodeLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	data, err := s.readDocument(w, r, limit)
	if err != nil {
		return err
	}
	return cradle.DecodeStrictJSON(data, v)
}

// query returns the request's query parameters after checking that each is
// one of allowed and given at most once.
func query(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "malformed query string: %v", err)
	}
	for k, v := range q {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return nil, cradle.Errorf(cradle.EINVALID, "unknown query parameter %q: this route takes none", truncate(k, 100))
			}
			return nil, cradle.Errorf(cradle.EINVALID, "unknown query parameter %q; this route takes %s", truncate(k, 100), strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return nil, cradle.Errorf(cradle.EINVALID, "query parameter %q is given %d times; give it once", k, len(v))
		}
	}
	return q, nil
}

func noQuery(r *http.Request) error {
	if r.URL.RawQuery == "" {
		return nil
	}
	_, err := query(r)
	return err
}

// intParam returns a non-negative integer parameter, 0 when absent.
func intParam(q url.Values, name string) (int, error) {
	v, ok := q[name]
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 0 {
		return 0, cradle.Errorf(cradle.EINVALID, "query parameter %s=%q is not a non-negative integer", name, truncate(v[0], 40))
	}
	return n, nil
}
