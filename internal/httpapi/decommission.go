package httpapi

import (
	"bytes"
	"context"
	"html/template"
	"net/http"
	"net/url"

	"cradle"
)

// The decommissioning routes.

func (s *Server) decommissions() (cradle.DecommissionService, error) {
	if s.Decommissions == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "decommissioning is not available: the server has no command signer to sign the wipe command (run cradle pki init)")
	}
	return s.Decommissions, nil
}

// requestDecommission answers 200 with the record when it was executed at
// once, 202 when it awaits a second admin's approval.
func (s *Server) requestDecommission(w http.ResponseWriter, r *http.Request) {
	svc, err := s.decommissions()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req ReasonRequest
	if err := s.decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	x, err := svc.RequestDecommission(r.Context(), r.PathValue("serial"), req.Reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if x.State == cradle.DecommissionAwaitingApproval {
		status = http.StatusAccepted
	}
	s.writeJSON(w, r, status, x)
}

func (s *Server) approveDecommission(w http.ResponseWriter, r *http.Request) {
	s.decommissionCall(w, r, func(ctx context.Context, svc cradle.DecommissionService, serial string) (any, error) {
		return svc.ApproveDecommission(ctx, serial)
	})
}

func (s *Server) getDecommission(w http.ResponseWriter, r *http.Request) {
	s.decommissionCall(w, r, func(ctx context.Context, svc cradle.DecommissionService, serial string) (any, error) {
		return svc.FindDecommission(ctx, serial)
	})
}

func (s *Server) decommissionCall(w http.ResponseWriter, r *http.Request, call func(context.Context, cradle.DecommissionService, string) (any, error)) {
	svc, err := s.decommissions()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := call(r.Context(), svc, r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, v)
}

// decommissionCertificate answers the signed certificate as JSON, or with
// ?format=html as a printable page made from it.
func (s *Server) decommissionCertificate(w http.ResponseWriter, r *http.Request) {
	svc, err := s.decommissions()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "format")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	format := "json"
	if v, ok := q["format"]; ok {
		format = v[0]
	}
	if format != "json" && format != "html" {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown format %q: use json or html", truncate(format, 20)))
		return
	}
	c, err := svc.DecommissionCertificate(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if format == "json" {
		s.writeJSON(w, r, http.StatusOK, c)
		return
	}
	page, err := DecommissionCertificateHTML(c)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.WriteHeader(http.StatusOK)
	w.Write(page)
}

// certificateTemplate is the printable decommissioning certificate: one
// self-contained page, no external assets.
var certificateTemplate = template.Must(template.New("certificate").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Decommissioning certificate — {{.Device.Serial}}</title>
<style>
body { font-family: sans-serif; max-width: 52em; margin: 2em auto; color: #111; }
h1 { font-size: 1.5em; border-bottom: 2px solid #111; padding-bottom: .3em; }
h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
th, td { text-align: left; border-bottom: 1px solid #ccc; padding: .25em .5em; vertical-align: top; }
th { width: 14em; }
code, .mono { font-family: monospace; word-break: break-all; }
.state { font-weight: bold; }
@media print { body { margin: 0; } }
</style>
</head>
<body>
<h1>Decommissioning certificate</h1>
<table>
<tr><th>Tenant</th><td>{{.Tenant}}</td></tr>
<tr><th>Device</th><td class="mono">{{.Device.Serial}}</td></tr>
<tr><th>Model</th><td>{{.Device.Model}}{{with .Device.HardwareRevision}} rev. {{.}}{{end}}</td></tr>
<tr><th>Lifecycle state</th><td>{{.Device.State}}</td></tr>
<tr><th>Decommissioning</th><td class="state">{{.Decommission.State}}</td></tr>
<tr><th>Reason</th><td>{{.Decommission.Reason}}</td></tr>
<tr><th>Requested</th><td>{{.Decommission.RequestedAt.Format "2006-01-02 15:04:05 MST"}} by {{.Decommission.RequestedBy}}</td></tr>
{{with .Decommission.ApprovedAt}}<tr><th>Approved</th><td>{{.Format "2006-01-02 15:04:05 MST"}} by {{$.Decommission.ApprovedBy}}</td></tr>{{end}}
{{with .Decommission.ExecutedAt}}<tr><th>Credentials revoked</th><td>{{.Format "2006-01-02 15:04:05 MST"}}</td></tr>{{end}}
<tr><th>Wipe command</th><td class="mono">{{.Decommission.CommandID}}</td></tr>
<tr><th>Device confirmed it is erasing</th><td>{{with .Decommission.ConfirmedAt}}{{.Format "2006-01-02 15:04:05 MST"}}: device confirmed it is erasing (signed tombstone received; the tombstone precedes the erase){{else}}not yet: the device has not sent its tombstone{{end}}</td></tr>
{{with .Decommission.Compromised}}<tr><th>Key compromise</th><td>certificate(s) <span class="mono">{{range $i, $s := .}}{{if $i}}, {{end}}{{$s}}{{end}}</span> revoked again for keyCompromise after the decommissioning: no tombstone can confirm the erase any more</td></tr>{{end}}
</table>

<h2>Revoked credentials</h2>
<table>
<tr><th>Kind</th><th>Identifier</th><th>Revoked at</th></tr>
{{range .Decommission.Revoked}}<tr><td>{{.Kind}}</td><td class="mono">{{.ID}}</td><td>{{.RevokedAt.Format "2006-01-02 15:04:05 MST"}}</td></tr>
{{else}}<tr><td colspan="3">none</td></tr>
{{end}}</table>

{{with .Decommission.Tombstone}}<h2>Erased by the device</h2>
<p>Stated at {{.At.Format "2006-01-02 15:04:05 MST"}} for command <code>{{.CommandID}}</code> (sequence {{.Sequence}}); lifecycle fuse set to <b>{{.Lifecycle}}</b>.</p>
<table>
<tr><th>Store</th><th>Kind</th><th>Name</th></tr>
{{range .Erased}}<tr><td>{{.Store}}</td><td>{{.Kind}}</td><td class="mono">{{.Name}}</td></tr>
{{end}}</table>{{end}}

<h2>Audit trail</h2>
<table>
<tr><th>#</th><th>Time</th><th>Actor</th><th>Action</th><th>Subject</th></tr>
{{range .Audit}}<tr><td>{{.Seq}}</td><td>{{.Time.Format "2006-01-02 15:04:05"}}</td><td>{{.Actor}}</td><td>{{.Action}}</td><td class="mono">{{.Subject}}</td></tr>
{{end}}</table>

<h2>Signature</h2>
<p>Issued {{.IssuedAt.Format "2006-01-02 15:04:05 MST"}}, signed with the server's audit key <code>{{.KeyID}}</code> (Ed25519 over the JSON of the certificate with key_id and signature empty; fetch it as JSON to verify).</p>
<p class="mono">{{.Signature}}</p>
</body>
</html>
`))

// DecommissionCertificateHTML renders the printable page of c.
func DecommissionCertificateHTML(c *cradle.DecommissionCertificate) ([]byte, error) {
	var b bytes.Buffer
	if err := certificateTemplate.Execute(&b, c); err != nil {
		return nil, cradle.Errorf(cradle.EINTERNAL, "rendering the certificate: %v", err)
	}
	return b.Bytes(), nil
}

// RequestDecommission implements cradle.DecommissionService.
func (c *Client) RequestDecommission(ctx context.Context, serial, reason string) (*cradle.Decommission, error) {
	return sendJSON[cradle.Decommission](ctx, c, http.MethodPost, devicePath(serial)+"/decommission", ReasonRequest{Reason: reason})
}

// ApproveDecommission implements cradle.DecommissionService.
func (c *Client) ApproveDecommission(ctx context.Context, serial string) (*cradle.Decommission, error) {
	var x cradle.Decommission
	if err := c.do(ctx, http.MethodPost, devicePath(serial)+"/decommission/approve", nil, nil, &x); err != nil {
		return nil, err
	}
	return &x, nil
}

// RecordTombstone implements cradle.DecommissionService: devices send
// their tombstone to the device listener, never to the operator API.
func (c *Client) RecordTombstone(context.Context, string, cradle.SignedTombstone) (*cradle.Decommission, error) {
	return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "a device sends its tombstone to the device listener (POST /device/v1/tombstone)")
}

// FindDecommission implements cradle.DecommissionService.
func (c *Client) FindDecommission(ctx context.Context, serial string) (*cradle.Decommission, error) {
	return getJSON[cradle.Decommission](ctx, c, devicePath(serial)+"/decommission")
}

// DecommissionCertificate implements cradle.DecommissionService.
func (c *Client) DecommissionCertificate(ctx context.Context, serial string) (*cradle.DecommissionCertificate, error) {
	return getJSON[cradle.DecommissionCertificate](ctx, c, devicePath(serial)+"/decommission/certificate")
}

// DecommissionCertificatePage returns the printable HTML page of a
// device's decommissioning certificate.
func (c *Client) DecommissionCertificatePage(ctx context.Context, serial string) ([]byte, error) {
	var buf bytes.Buffer
	if err := c.do(ctx, http.MethodGet, withQuery(devicePath(serial)+"/decommission/certificate", url.Values{"format": {"html"}}), nil, nil, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var _ cradle.DecommissionService = (*Client)(nil)
