package httpapi

import (
	"context"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"cradle"
)

// MaxTraceBytes bounds the body of a trace record upload: a record with
// its IDevID, fuses and test results is a few KiB.
const MaxTraceBytes = 256 << 10

// BatchList is a page of batches, newest first.
type BatchList struct {
	Batches    []*cradle.Batch `json:"batches"`
	NextCursor string          `json:"next_cursor,omitempty"` // "" after the last page
}

// MACRangeCreate adds a block of MAC addresses to the tenant's pool.
type MACRangeCreate struct {
	First string `json:"first"`
	Last  string `json:"last"`
}

// MACRangeList lists the tenant's MAC address blocks.
type MACRangeList struct {
	MACRanges []*cradle.MACRange `json:"mac_ranges"`
}

// StationEnrollment asks to enroll a factory station: its name, its
// profile (the server's), and a PEM CSR for its signing key.
type StationEnrollment struct {
	Name    string         `json:"name"`
	Profile cradle.Profile `json:"profile"`
	CSR     string         `json:"csr"`
}

// StationEnrolled is the answer to enrolling a station: its record, its
// certificate and the chain up to the root (PEM, issuing CA first), and
// the secret of the factory API token made for it, shown only this once.
type StationEnrolled struct {
	Station     *cradle.Station `json:"station"`
	Certificate string          `json:"certificate"`
	Chain       string          `json:"chain"`
	Token       string          `json:"token"`
}

// StationList lists the tenant's stations.
type StationList struct {
	Stations []*cradle.Station `json:"stations"`
}

// AllocationRequest asks for count new units of a batch for a station.
type AllocationRequest struct {
	Station string `json:"station"`
	Count   int    `json:"count"`
}

// AllocationList is the units handed to a station.
type AllocationList struct {
	Units []cradle.UnitAllocation `json:"units"`
}

// ReprovisionRequest names the station that re-provisions a returned
// unit.
type ReprovisionRequest struct {
	Station string `json:"station"`
}

// Export formats of a batch.
const (
	ExportJSON = "json"
	ExportCSV  = "csv"
)

// FuseFields are the OTP fuse fields a trace record reads back, in the
// order of the CSV export's fuse_* columns (those of the agent's
// hardware interface).
var FuseFields = []string{"secure_boot", "debug_lock", "image_key_hash", "lifecycle", "anti_rollback"}

// ExportColumns returns the header row of a batch's CSV export.
func ExportColumns() []string {
	cols := []string{"batch", "serial", "mac", "hardware_uid", "status", "failed_step", "reason", "station", "operator",
		"profile", "model", "hardware_revision", "started_at", "finished_at", "firmware_version", "firmware_digest",
		"bootloader_digest", "idevid_serial", "idevid_fingerprint"}
	for _, f := range FuseFields {
		cols = append(cols, "fuse_"+f)
	}
	return append(cols, "tests")
}

func (s *Server) createBatch(w http.ResponseWriter, r *http.Request) {
	var c cradle.BatchCreate
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.checkProfile(c.Profile, "batches"); err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.Factory.CreateBatch(r.Context(), c)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", batchPath(b.ID))
	s.writeJSON(w, r, http.StatusCreated, b)
}

// checkProfile refuses a batch or station (what) whose profile is not
// the server's PKI's: its units could never enroll here.
func (s *Server) checkProfile(p cradle.Profile, what string) error {
	if _, err := cradle.ParseProfile(string(p)); err != nil {
		return err
	}
	if s.Profile == "" {
		return cradle.Errorf(cradle.ECONFLICT, "this server has no PKI yet: run cradle pki init (test or production) on its data directory and restart it before adding factory %s", what)
	}
	if p != s.Profile {
		return cradle.Errorf(cradle.EINVALID, "this server's PKI is %s; %s %s belong on a %s deployment", s.Profile, p, what, p)
	}
	return nil
}

func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "cursor", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	limit, err := intParam(q, "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	batches, next, err := s.Factory.FindBatches(r.Context(), q.Get("cursor"), limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if batches == nil {
		batches = []*cradle.Batch{}
	}
	s.writeJSON(w, r, http.StatusOK, BatchList{Batches: batches, NextCursor: next})
}

func (s *Server) getBatch(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.Factory.FindBatch(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, b)
}

// exportBatch writes the trace records of a batch as a JSON array of
// records or as CSV (RFC 4180, header row ExportColumns, one row per
// record, times in RFC 3339). Both are written record by record as they
// are encoded. CSV cells that a spreadsheet would run as a formula
// (starting with =, +, -, @, a tab or a carriage return) are prefixed
// with a single quote, as spreadsheet exports do; a consumer that wants
// the raw value strips one leading quote from such cells.
func (s *Server) exportBatch(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "format")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	format := ExportJSON
	if v, ok := q["format"]; ok {
		format = v[0]
	}
	if format != ExportJSON && format != ExportCSV {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown export format %q; use json or csv", truncate(format, 20)))
		return
	}
	id := r.PathValue("id")
	traces, err := s.Factory.BatchTraces(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	h := w.Header()
	h["Cache-Control"] = noStore
	h["X-Content-Type-Options"] = noSniff
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s.%s"`, id, format)) // a batch id is [A-Za-z0-9._-]
	if format == ExportCSV {
		h.Set("Content-Type", "text/csv; charset=utf-8; header=present")
	} else {
		h["Content-Type"] = jsonContentType
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// The status is sent: a failure from here on can only cut the
	// response short, which the client sees as a truncated body.
	if format == ExportCSV {
		err = writeTraceCSV(w, traces)
	} else {
		err = writeTraceJSON(w, traces)
	}
	if err != nil {
		s.Logger.Warn("batch export cut short", "batch", id, "err", err)
	}
}

func writeTraceJSON(w http.ResponseWriter, traces []*cradle.StoredTrace) error {
	if _, err := w.Write([]byte("[")); err != nil {
		return err
	}
	for i, t := range traces {
		b, err := json.Marshal(&t.Record)
		if err != nil {
			return err
		}
		if i > 0 {
			b = append([]byte(",\n"), b...)
		} else {
			b = append([]byte("\n"), b...)
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	_, err := w.Write([]byte("\n]\n"))
	return err
}

func writeTraceCSV(w http.ResponseWriter, traces []*cradle.StoredTrace) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(ExportColumns()); err != nil {
		return err
	}
	for _, t := range traces {
		if err := cw.Write(exportRow(&t.Record)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// exportRow is one record's CSV row, in the order of ExportColumns.
func exportRow(rec *cradle.TraceRecord) []string {
	row := []string{rec.Batch, rec.Serial, rec.MAC, rec.HardwareUID, string(rec.Status), rec.FailedStep, rec.Reason,
		rec.Station, rec.Operator, string(rec.Profile), rec.Model, rec.HardwareRevision,
		rfc3339(rec.StartedAt), rfc3339(rec.FinishedAt), rec.FirmwareVersion, rec.FirmwareDigest,
		rec.BootloaderDigest, rec.IDevIDSerial, rec.IDevIDFingerprint}
	for _, f := range FuseFields {
		row = append(row, rec.Fuses[f])
	}
	tests := make([]string, len(rec.Tests))
	for i, t := range rec.Tests {
		result := "fail"
		if t.Passed {
			result = "pass"
		}
		tests[i] = t.Name + "=" + result
	}
	row = append(row, strings.Join(tests, ";"))
	for i, c := range row {
		row[i] = SafeCell(c)
	}
	return row
}

// SafeCell returns a CSV cell that spreadsheet programs show as text: a
// cell starting with =, +, -, @, a tab or a carriage return (which they
// would run as a formula) gets a leading single quote.
func SafeCell(c string) string {
	if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
		return "'" + c
	}
	return c
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func (s *Server) addMACRange(w http.ResponseWriter, r *http.Request) {
	var c MACRangeCreate
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	m, err := s.Factory.AddMACRange(r.Context(), c.First, c.Last)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusCreated, m)
}

func (s *Server) listMACRanges(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	ms, err := s.Factory.MACRanges(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ms == nil {
		ms = []*cradle.MACRange{}
	}
	s.writeJSON(w, r, http.StatusOK, MACRangeList{MACRanges: ms})
}

// enrollStation enrolls a factory station: it checks the request, makes
// a factory-role API token for the station, has the PKI issue the
// station's certificate and the store record the station in one
// transaction, and answers with the certificate, its chain and the
// token's secret. When issuing or recording fails, the token is revoked
// again, so that nothing is left half done.
func (s *Server) enrollStation(w http.ResponseWriter, r *http.Request) {
	var e StationEnrollment
	if err := s.decode(w, r, &e); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := cradle.ValidateStationName(e.Name); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.checkProfile(e.Profile, "stations"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.StationIssuer == nil {
		s.writeError(w, r, cradle.Errorf(cradle.ECONFLICT, "this server cannot issue station certificates: its device listener and PKI are not running"))
		return
	}
	csr, err := ParseCSR(e.CSR)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx := r.Context()
	// A taken name is refused before a token is made for it; the store
	// checks again in its transaction.
	if _, err := s.Factory.FindStation(ctx, e.Name); err == nil {
		s.writeError(w, r, cradle.Errorf(cradle.ECONFLICT, "station %q is already enrolled; choose another name", e.Name))
		return
	} else if cradle.ErrorCode(err) != cradle.ENOTFOUND {
		s.writeError(w, r, err)
		return
	}
	tok, secret, err := s.Tokens.CreateToken(ctx, cradle.TokenCreate{Name: "factory station " + e.Name, Role: cradle.RoleFactory})
	if err != nil {
		if cradle.ErrorCode(err) == cradle.EFORBIDDEN {
			a, _ := cradle.ActorFromContext(ctx)
			err = cradle.Errorf(cradle.EFORBIDDEN, "role %s may not enroll factory stations (which makes the station an API token); ask an admin", a.Role)
		}
		s.writeError(w, r, err)
		return
	}
	var cert *x509.Certificate
	var chain []*x509.Certificate
	st, err := s.Factory.EnrollStation(ctx, cradle.StationEnroll{Name: e.Name, Profile: e.Profile, TokenID: tok.ID,
		Issue: func(ctx context.Context) (*x509.Certificate, error) {
			var err error
			cert, chain, err = s.StationIssuer(ctx, e.Name, csr)
			return cert, err
		}})
	if err != nil {
		if rerr := s.Tokens.RevokeToken(context.WithoutCancel(ctx), tok.ID); rerr != nil {
			s.Logger.Error("revoking the token of a station that failed to enroll", "station", e.Name, "token", tok.ID, "err", rerr)
		}
		s.writeError(w, r, err)
		return
	}
	out := StationEnrolled{Station: st, Certificate: pemCert(cert), Token: secret}
	var b strings.Builder
	for _, c := range chain {
		b.WriteString(pemCert(c))
	}
	out.Chain = b.String()
	w.Header().Set("Location", "/api/v1/factory/stations/"+url.PathEscape(st.Name))
	s.writeJSON(w, r, http.StatusCreated, out)
}

// ParseCSR parses a PEM certificate request (type CERTIFICATE REQUEST or
// NEW CERTIFICATE REQUEST, nothing else in the text) and checks its
// signature. Errors are EINVALID.
func ParseCSR(text string) (*x509.CertificateRequest, error) {
	b, rest := pem.Decode([]byte(text))
	if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") || strings.TrimSpace(string(rest)) != "" {
		return nil, cradle.Errorf(cradle.EINVALID, "csr must hold exactly one PEM block of type CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the CSR does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the CSR's signature does not verify (%v): make it with the station's own key", err)
	}
	return csr, nil
}

func pemCert(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

func (s *Server) listStations(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	sts, err := s.Factory.FindStations(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if sts == nil {
		sts = []*cradle.Station{}
	}
	s.writeJSON(w, r, http.StatusOK, StationList{Stations: sts})
}

func (s *Server) getStation(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.Factory.FindStation(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, st)
}

func (s *Server) allocateUnits(w http.ResponseWriter, r *http.Request) {
	var a AllocationRequest
	if err := s.decode(w, r, &a); err != nil {
		s.writeError(w, r, err)
		return
	}
	if a.Count < 1 || a.Count > cradle.MaxAllocation {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "count %d is out of range 1..%d", a.Count, cradle.MaxAllocation))
		return
	}
	units, err := s.Factory.AllocateUnits(r.Context(), r.PathValue("id"), a.Station, a.Count)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if units == nil {
		units = []cradle.UnitAllocation{}
	}
	s.writeJSON(w, r, http.StatusCreated, AllocationList{Units: units})
}

func (s *Server) reprovisionUnit(w http.ResponseWriter, r *http.Request) {
	var rq ReprovisionRequest
	if err := s.decode(w, r, &rq); err != nil {
		s.writeError(w, r, err)
		return
	}
	u, err := s.Factory.ReprovisionUnit(r.Context(), r.PathValue("serial"), rq.Station)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, u)
}

// uploadTrace stores a trace record that a station signed. The record is
// decoded and validated, its signature verified with the certificate of
// the station it names (a tampered or foreign record is refused and
// nothing is stored), and the store acts on it. 201 when it was new, 200
// when the same record was already stored (a retried upload).
func (s *Server) uploadTrace(w http.ResponseWriter, r *http.Request) {
	var signed cradle.SignedTrace
	if err := s.decodeLimit(w, r, &signed, MaxTraceBytes); err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx := r.Context()
	rec, err := VerifyTrace(ctx, s.Factory, signed)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored, created, err := s.Factory.RecordTrace(ctx, rec, signed)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		if s.OnFactoryEvent != nil {
			s.OnFactoryEvent()
		}
	}
	s.writeJSON(w, r, status, stored)
}

// VerifyTrace decodes a signed trace record and checks it against the
// station it names: the station is enrolled in the caller's tenant, the
// signature verifies with its certificate, and the record's profile is
// the station's. Errors are EINVALID, or ENOTFOUND for an unknown
// station.
func VerifyTrace(ctx context.Context, f cradle.FactoryService, signed cradle.SignedTrace) (*cradle.TraceRecord, error) {
	if len(signed.Payload) == 0 || len(signed.Signature) == 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "a signed trace record needs payload and signature")
	}
	rec, err := signed.Record()
	if err != nil {
		return nil, err
	}
	st, err := f.FindStation(ctx, rec.Station)
	if err != nil {
		if cradle.ErrorCode(err) == cradle.ENOTFOUND {
			return nil, cradle.Errorf(cradle.ENOTFOUND, "record %s names station %q, which is not enrolled here", rec.ID, rec.Station)
		}
		return nil, err
	}
	cert, err := x509.ParseCertificate(st.DER)
	if err != nil {
		return nil, fmt.Errorf("httpapi: the stored certificate of station %s: %w", st.Name, err)
	}
	if err := signed.Verify(cert); err != nil {
		return nil, err
	}
	if rec.Profile != st.Profile {
		return nil, cradle.Errorf(cradle.EINVALID, "record %s is %s but station %s is a %s station", rec.ID, rec.Profile, st.Name, st.Profile)
	}
	return rec, nil
}

func (s *Server) unitTrace(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.Factory.UnitTrace(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if t.Records == nil {
		t.Records = []*cradle.StoredTrace{}
	}
	if t.Stations == nil {
		t.Stations = []*cradle.Station{}
	}
	if t.Certificates == nil {
		t.Certificates = []*cradle.Certificate{}
	}
	if t.History == nil {
		t.History = []*cradle.StateChange{}
	}
	s.writeJSON(w, r, http.StatusOK, t)
}

func batchPath(id string) string { return "/api/v1/factory/batches/" + url.PathEscape(id) }
