package httpapi

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strings"
	"time"

	"cradle"
)

// CertificateList is a page of certificates, newest first.
type CertificateList struct {
	Certificates []*cradle.Certificate `json:"certificates"`
	NextCursor   string                `json:"next_cursor,omitempty"` // "" after the last page
}

// CertificateView is one certificate with its PEM encoding.
type CertificateView struct {
	*cradle.Certificate
	PEM string `json:"pem"`
}

// CertificateRecord hands Cradle a certificate issued elsewhere: the
// IDevID the factory station gave a device.
type CertificateRecord struct {
	Kind cradle.CertKind `json:"kind"` // idevid
	PEM  string          `json:"pem"`
}

// Revocation asks to revoke certificates.
type Revocation struct {
	Reason string `json:"reason"` // an RFC 5280 reason name, e.g. keyCompromise
}

func (s *Server) listCertificates(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "device", "status", "expiring_before", "cursor", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := cradle.CertificateFilter{Cursor: q.Get("cursor")}
	if v, ok := q["device"]; ok {
		f.DeviceSerial = &v[0]
	}
	if v, ok := q["status"]; ok {
		st := cradle.CertStatus(v[0])
		switch st {
		case cradle.CertValid, cradle.CertSuperseded, cradle.CertRevoked:
		default:
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown certificate status %q; use valid, superseded or revoked", truncate(v[0], 40)))
			return
		}
		f.Status = &st
	}
	if v, ok := q["expiring_before"]; ok {
		t, err := time.Parse(time.RFC3339, v[0])
		if err != nil {
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "query parameter expiring_before=%q is not an RFC 3339 time such as 2027-01-31T00:00:00Z", truncate(v[0], 40)))
			return
		}
		f.ExpiringBefore = &t
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	certs, next, err := s.Certificates.FindCertificates(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if certs == nil {
		certs = []*cradle.Certificate{}
	}
	s.writeJSON(w, r, http.StatusOK, CertificateList{Certificates: certs, NextCursor: next})
}

func (s *Server) getCertificate(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	c, err := s.Certificates.FindCertificateBySerial(r.Context(), r.PathValue("serial"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, CertificateView{Certificate: c, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER}))})
}

func (s *Server) revokeCertificate(w http.ResponseWriter, r *http.Request) {
	reason, err := s.decodeRevocation(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c, err := s.Certificates.RevokeCertificate(r.Context(), r.PathValue("serial"), reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, c)
}

func (s *Server) revokeDeviceCertificates(w http.ResponseWriter, r *http.Request) {
	reason, err := s.decodeRevocation(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	certs, err := s.Certificates.RevokeDeviceCertificates(r.Context(), r.PathValue("serial"), reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if certs == nil {
		certs = []*cradle.Certificate{}
	}
	s.writeJSON(w, r, http.StatusOK, CertificateList{Certificates: certs})
}

func (s *Server) recordCertificate(w http.ResponseWriter, r *http.Request) {
	var rec CertificateRecord
	if err := s.decode(w, r, &rec); err != nil {
		s.writeError(w, r, err)
		return
	}
	if rec.Kind != cradle.CertIDevID {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "kind %q cannot be recorded: only idevid certificates come from outside (LDevIDs are issued through enrollment)", truncate(string(rec.Kind), 40)))
		return
	}
	b, rest := pem.Decode([]byte(rec.PEM))
	if b == nil || b.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "pem must hold exactly one PEM block of type CERTIFICATE"))
		return
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "the certificate does not parse: %v", err))
		return
	}
	c, err := s.Certificates.RecordCertificate(r.Context(), r.PathValue("serial"), rec.Kind, cert)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/certificates/"+c.Serial)
	s.writeJSON(w, r, http.StatusCreated, c)
}

func (s *Server) decodeRevocation(w http.ResponseWriter, r *http.Request) (cradle.RevocationReason, error) {
	var rv Revocation
	if err := s.decode(w, r, &rv); err != nil {
		return 0, err
	}
	if rv.Reason == "" {
		return 0, cradle.Errorf(cradle.EINVALID, "say why: give a reason such as keyCompromise, superseded or cessationOfOperation")
	}
	return cradle.ParseRevocationReason(rv.Reason)
}
