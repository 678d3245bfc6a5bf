package httpapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"cradle"
)

// Client is a client of the operator API. It implements
// cradle.DeviceService and cradle.AuditService over HTTP, and has the token
// operations as methods; errors the server sends come back as *cradle.Error
// with the server's code and message.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

var (
	_ cradle.DeviceService = (*Client)(nil)
	_ cradle.AuditService  = (*Client)(nil)
)

// NewClient returns a client of the server at baseURL (e.g.
// "http://127.0.0.1:8080") that authenticates with token. A nil hc means
// http.DefaultClient. NewClient does no I/O.
func NewClient(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, hc: hc}
}

// WhoAmI returns the identity the client's token stands for.
func (c *Client) WhoAmI(ctx context.Context) (*Identity, error) {
	var id Identity
	return &id, c.do(ctx, http.MethodGet, "/api/v1/whoami", nil, nil, &id)
}

// deviceQuery is the query of the device list for f, the inverse of the
// server's deviceFilter.
func deviceQuery(f cradle.DeviceFilter) url.Values {
	q := url.Values{}
	if f.State != nil {
		q.Set("state", string(*f.State))
	}
	if f.Model != nil {
		q.Set("model", *f.Model)
	}
	if f.Protocol != nil {
		q.Set("protocol", string(*f.Protocol))
	}
	if f.SerialPrefix != nil {
		q.Set("serial_prefix", *f.SerialPrefix)
	}
	if f.Selector != nil {
		q.Set("selector", f.Selector.String())
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

// FindDeviceBySerial implements cradle.DeviceService.
func (c *Client) FindDeviceBySerial(ctx context.Context, serial string) (*cradle.Device, error) {
	return getJSON[cradle.Device](ctx, c, devicePath(serial))
}

// FindDevices implements cradle.DeviceService.
func (c *Client) FindDevices(ctx context.Context, f cradle.DeviceFilter) ([]*cradle.Device, string, error) {
	var page DeviceList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/devices", deviceQuery(f)), nil, nil, &page); err != nil {
		return nil, "", err
	}
	return page.Devices, page.NextCursor, nil
}

// CreateDevice implements cradle.DeviceService.
func (c *Client) CreateDevice(ctx context.Context, dc cradle.DeviceCreate) (*cradle.Device, error) {
	return sendJSON[cradle.Device](ctx, c, http.MethodPost, "/api/v1/devices", dc)
}

// UpdateDevice implements cradle.DeviceService.
func (c *Client) UpdateDevice(ctx context.Context, serial string, u cradle.DeviceUpdate) (*cradle.Device, error) {
	return sendJSON[cradle.Device](ctx, c, http.MethodPatch, devicePath(serial), u)
}

// TransitionDevice implements cradle.DeviceService.
func (c *Client) TransitionDevice(ctx context.Context, serial string, t cradle.DeviceTransition) (*cradle.Device, error) {
	return sendJSON[cradle.Device](ctx, c, http.MethodPost, devicePath(serial)+"/transitions", t)
}

// FindDeviceHistory implements cradle.DeviceService.
func (c *Client) FindDeviceHistory(ctx context.Context, serial string) ([]*cradle.StateChange, error) {
	var l TransitionList
	if err := c.do(ctx, http.MethodGet, devicePath(serial)+"/transitions", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Transitions, nil
}

// ImportDevices implements cradle.DeviceService: it streams r to the
// server. A rejected import (422) returns its report and a nil error, as
// the interface says.
func (c *Client) ImportDevices(ctx context.Context, format cradle.ImportFormat, r io.Reader) (*cradle.ImportReport, error) {
	var rep cradle.ImportReport
	hdr := http.Header{"Content-Type": {importContentType(format)}}
	err := c.do(ctx, http.MethodPost, withQuery("/api/v1/device-imports", url.Values{"format": {string(format)}}), hdr, io.NopCloser(r), &rep)
	var re *responseError
	if errors.As(err, &re) && re.status == http.StatusUnprocessableEntity {
		if jerr := json.Unmarshal(re.body, &rep); jerr == nil {
			return &rep, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return &rep, nil
}

func importContentType(f cradle.ImportFormat) string {
	if f == cradle.ImportCSV {
		return "text/csv"
	}
	return "application/jsonl"
}

// FindAuditEntries implements cradle.AuditService.
func (c *Client) FindAuditEntries(ctx context.Context, f cradle.AuditFilter) ([]*cradle.AuditEntry, error) {
	q := url.Values{}
	if f.AfterSeq != 0 {
		q.Set("after", strconv.FormatInt(f.AfterSeq, 10))
	}
	if f.Action != nil {
		q.Set("action", *f.Action)
	}
	if f.Subject != nil {
		q.Set("subject", *f.Subject)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l AuditList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/audit", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Entries, nil
}

// VerifyAudit implements cradle.AuditService.
func (c *Client) VerifyAudit(ctx context.Context) (*cradle.AuditVerification, error) {
	return getJSON[cradle.AuditVerification](ctx, c, "/api/v1/audit/verify")
}

// CreateToken creates an API token in the caller's tenant and returns it
// with its secret token string.
func (c *Client) CreateToken(ctx context.Context, tc cradle.TokenCreate) (*cradle.Token, string, error) {
	var out TokenCreated
	if err := c.doJSON(ctx, http.MethodPost, "/api/v1/tokens", tc, &out); err != nil {
		return nil, "", err
	}
	return out.Token, out.Secret, nil
}

// FindTokens lists the API tokens of the caller's tenant.
func (c *Client) FindTokens(ctx context.Context) ([]*cradle.Token, error) {
	var l TokenList
	if err := c.do(ctx, http.MethodGet, "/api/v1/tokens", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Tokens, nil
}

// RevokeToken revokes the API token with the given id.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), nil, nil, nil)
}

func devicePath(serial string) string { return "/api/v1/devices/" + url.PathEscape(serial) }

func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// doJSON sends in as a JSON body and decodes the answer into out.
func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var status int
	return c.doStatus(ctx, method, path, in, out, &status)
}

// sendJSON sends in as JSON and returns the answer decoded as a T.
func sendJSON[T any](ctx context.Context, c *Client, method, path string, in any) (*T, error) {
	var out T
	if err := c.doJSON(ctx, method, path, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// getJSON gets path and returns the answer decoded as a T.
func getJSON[T any](ctx context.Context, c *Client, path string) (*T, error) {
	var out T
	if err := c.do(ctx, http.MethodGet, path, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// responseError is a response with an error status. Its *cradle.Error is
// what the server said, or what the client could make of the status.
type responseError struct {
	status int
	body   []byte
	err    *cradle.Error
}

func (e *responseError) Error() string { return e.err.Error() }
func (e *responseError) Unwrap() error { return e.err }

// maxErrorBody bounds how much of an error response the client reads.
const maxErrorBody = 4 << 20

func (c *Client) do(ctx context.Context, method, path string, hdr http.Header, body io.ReadCloser, out any) error {
	_, err := c.roundTrip(ctx, method, path, hdr, body, out)
	return err
}

// doStatus is doJSON that also returns the status of a successful answer.
func (c *Client) doStatus(ctx context.Context, method, path string, in, out any, status *int) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("httpapi: encoding the request: %w", err)
	}
	*status, err = c.roundTrip(ctx, method, path, http.Header{"Content-Type": {"application/json"}}, io.NopCloser(bytes.NewReader(b)), out)
	return err
}

// roundTrip sends a request and decodes a successful answer into out, or
// copies it to out when out is an io.Writer.
func (c *Client) roundTrip(ctx context.Context, method, path string, hdr http.Header, body io.ReadCloser, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, fmt.Errorf("httpapi: %w", err)
	}
	if sb, ok := body.(*sizedBody); ok {
		// A streamed upload of known length: the server needs it.
		req.ContentLength = sb.n
		if sb.n == 0 {
			req.Body = http.NoBody
		}
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		// url.Error repeats the method and URL; say it once, and what to
		// check.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("cannot reach the Cradle server at %s (%w); is it running, and is --server or CRADLE_SERVER right?", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return resp.StatusCode, &responseError{status: resp.StatusCode, body: data, err: errorFrom(resp, data)}
	}
	switch o := out.(type) {
	case nil:
		io.Copy(io.Discard, resp.Body)
	case io.Writer:
		if _, err := io.Copy(o, resp.Body); err != nil {
			return resp.StatusCode, fmt.Errorf("httpapi: %s %s: reading the answer: %w", method, path, err)
		}
	default:
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("httpapi: %s %s: decoding the answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// errorFrom makes a *cradle.Error of an error response: the server's own
// {"code","message"} when the body is one, otherwise a message built from
// the status (a proxy's error page, say).
func errorFrom(resp *http.Response, body []byte) *cradle.Error {
	var e cradle.Error
	if err := json.Unmarshal(body, &e); err == nil && e.Code != "" && e.Message != "" {
		return &e
	}
	snippet := strings.TrimSpace(string(body))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "…"
	}
	msg := fmt.Sprintf("the server answered %s", resp.Status)
	if snippet != "" {
		msg += ": " + snippet
	}
	return &cradle.Error{Code: codeOf(resp.StatusCode), Message: msg}
}

// FindCertificates lists the certificates of the caller's tenant, newest
// first.
func (c *Client) FindCertificates(ctx context.Context, f cradle.CertificateFilter) ([]*cradle.Certificate, string, error) {
	q := url.Values{}
	if f.DeviceSerial != nil {
		q.Set("device", *f.DeviceSerial)
	}
	if f.Status != nil {
		q.Set("status", string(*f.Status))
	}
	if f.ExpiringBefore != nil {
		q.Set("expiring_before", f.ExpiringBefore.UTC().Format(time.RFC3339))
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l CertificateList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/certificates", q), nil, nil, &l); err != nil {
		return nil, "", err
	}
	return l.Certificates, l.NextCursor, nil
}

// FindCertificateBySerial returns one certificate of the caller's tenant,
// its DER included.
func (c *Client) FindCertificateBySerial(ctx context.Context, serial string) (*cradle.Certificate, error) {
	var v CertificateView
	if err := c.do(ctx, http.MethodGet, "/api/v1/certificates/"+url.PathEscape(serial), nil, nil, &v); err != nil {
		return nil, err
	}
	if v.Certificate == nil {
		return nil, fmt.Errorf("httpapi: the server sent no certificate")
	}
	if b, _ := pem.Decode([]byte(v.PEM)); b != nil {
		v.Certificate.DER = b.Bytes
	}
	return v.Certificate, nil
}

// RevokeCertificate revokes one certificate of the caller's tenant.
func (c *Client) RevokeCertificate(ctx context.Context, serial string, reason cradle.RevocationReason) (*cradle.Certificate, error) {
	return sendJSON[cradle.Certificate](ctx, c, http.MethodPost, "/api/v1/certificates/"+url.PathEscape(serial)+"/revoke", Revocation{Reason: reason.String()})
}

// RevokeDeviceCertificates revokes every unexpired, unrevoked certificate
// of a device of the caller's tenant.
func (c *Client) RevokeDeviceCertificates(ctx context.Context, deviceSerial string, reason cradle.RevocationReason) ([]*cradle.Certificate, error) {
	var l CertificateList
	if err := c.doJSON(ctx, http.MethodPost, devicePath(deviceSerial)+"/certificates/revoke", Revocation{Reason: reason.String()}, &l); err != nil {
		return nil, err
	}
	return l.Certificates, nil
}

// RecordCertificate hands the server a certificate issued elsewhere (the
// IDevID the factory gave a device).
func (c *Client) RecordCertificate(ctx context.Context, deviceSerial string, kind cradle.CertKind, cert *x509.Certificate) (*cradle.Certificate, error) {
	body := CertificateRecord{Kind: kind, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))}
	return sendJSON[cradle.Certificate](ctx, c, http.MethodPost, devicePath(deviceSerial)+"/certificates", body)
}

// CreateBatch creates a production batch.
func (c *Client) CreateBatch(ctx context.Context, bc cradle.BatchCreate) (*cradle.Batch, error) {
	return sendJSON[cradle.Batch](ctx, c, http.MethodPost, "/api/v1/factory/batches", bc)
}

// Batch returns one batch with its counts.
func (c *Client) Batch(ctx context.Context, id string) (*cradle.Batch, error) {
	return getJSON[cradle.Batch](ctx, c, batchPath(id))
}

// Batches lists batches, newest first, a page of at most limit (0: the
// server's default) after cursor; it returns the cursor of the next
// page, "" after the last.
func (c *Client) Batches(ctx context.Context, cursor string, limit int) ([]*cradle.Batch, string, error) {
	q := url.Values{}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l BatchList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/factory/batches", q), nil, nil, &l); err != nil {
		return nil, "", err
	}
	return l.Batches, l.NextCursor, nil
}

// ExportBatch copies the export of a batch's trace records in format
// (ExportJSON or ExportCSV) to w, as the server streams it.
func (c *Client) ExportBatch(ctx context.Context, id, format string, w io.Writer) error {
	return c.do(ctx, http.MethodGet, withQuery(batchPath(id)+"/export", url.Values{"format": {format}}), nil, nil, w)
}

// AddMACRange adds the block of MAC addresses first to last to the
// tenant's pool.
func (c *Client) AddMACRange(ctx context.Context, first, last string) (*cradle.MACRange, error) {
	return sendJSON[cradle.MACRange](ctx, c, http.MethodPost, "/api/v1/factory/mac-ranges", MACRangeCreate{First: first, Last: last})
}

// MACRanges lists the tenant's MAC address blocks.
func (c *Client) MACRanges(ctx context.Context) ([]*cradle.MACRange, error) {
	var l MACRangeList
	if err := c.do(ctx, http.MethodGet, "/api/v1/factory/mac-ranges", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.MACRanges, nil
}

// EnrollStation enrolls a factory station with a PEM CSR for its
// signing key, and returns its certificate, chain and API token.
func (c *Client) EnrollStation(ctx context.Context, name string, profile cradle.Profile, csrPEM []byte) (*StationEnrolled, error) {
	return sendJSON[StationEnrolled](ctx, c, http.MethodPost, "/api/v1/factory/stations", StationEnrollment{Name: name, Profile: profile, CSR: string(csrPEM)})
}

// Stations lists the tenant's factory stations.
func (c *Client) Stations(ctx context.Context) ([]*cradle.Station, error) {
	var l StationList
	if err := c.do(ctx, http.MethodGet, "/api/v1/factory/stations", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Stations, nil
}

// Station returns one factory station.
func (c *Client) Station(ctx context.Context, name string) (*cradle.Station, error) {
	return getJSON[cradle.Station](ctx, c, "/api/v1/factory/stations/"+url.PathEscape(name))
}

// AllocateUnits asks for count new units (serial and MAC each) of a
// batch for a station.
func (c *Client) AllocateUnits(ctx context.Context, batch, station string, count int) ([]cradle.UnitAllocation, error) {
	var l AllocationList
	if err := c.doJSON(ctx, http.MethodPost, batchPath(batch)+"/allocations", AllocationRequest{Station: station, Count: count}, &l); err != nil {
		return nil, err
	}
	return l.Units, nil
}

// ReprovisionUnit hands a station the serial and MAC of a unit in rma.
func (c *Client) ReprovisionUnit(ctx context.Context, serial, station string) (*cradle.UnitAllocation, error) {
	return sendJSON[cradle.UnitAllocation](ctx, c, http.MethodPost, "/api/v1/factory/rma/"+url.PathEscape(serial), ReprovisionRequest{Station: station})
}

// UploadTrace uploads a signed trace record. created is false when the
// server already held the same record (a retried upload), which is not
// an error.
func (c *Client) UploadTrace(ctx context.Context, signed cradle.SignedTrace) (created bool, err error) {
	var st cradle.StoredTrace
	var status int
	if err := c.doStatus(ctx, http.MethodPost, "/api/v1/factory/traces", signed, &st, &status); err != nil {
		return false, err
	}
	return status == http.StatusCreated, nil
}

// UnitTrace returns the chain of a unit from its batch to today.
func (c *Client) UnitTrace(ctx context.Context, serial string) (*cradle.UnitTrace, error) {
	return getJSON[cradle.UnitTrace](ctx, c, devicePath(serial)+"/trace")
}
