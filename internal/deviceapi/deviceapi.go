// Package deviceapi is the device-facing HTTPS listener (default :8443).
//
// Devices authenticate with TLS client certificates: an IDevID issued by
// the manufacturing CA (for enrollment) or an LDevID issued by the device
// CA (for everything after). The TLS handshake only asks for a
// certificate; the checks run on every request, in this order, so that a
// refusal can say in words what was wrong:
//
//  1. the chain verifies against the configured roots and issuing CAs, for
//     client authentication, at the injected clock's time;
//  2. CheckChain, when set, accepts it (the PKI refuses a chain under a
//     test root on a production server there);
//  3. the leaf is on record in the store (an LDevID always is; an IDevID is
//     recorded by the factory station) and not revoked;
//  4. its device is not suspended, in RMA or at end of life.
//
// One narrow exception, for routes mounted with HandleDecommissioning
// only: a device at end of life whose decommissioning is wiping may still
// present its LDevID revoked for cessationOfOperation (decommissioning
// revoked it), so that it can fetch its wipe command and send its
// tombstone. Wiping must accept that very certificate (the store accepts
// only the LDevIDs valid when the decommissioning was executed, and none
// once a certificate of it was revoked again for keyCompromise). The
// certificate may have expired since (a device offline for months must
// still be wiped): its chain must otherwise verify, at the moment it
// expired. Every other route refuses it as above.
//
// A request that passes carries the device as the actor of its context
// (role device), and its verified chain in r.TLS.VerifiedChains, for the
// handlers mounted behind it (EST, and later the native device API).
// Failures of 1 to 3 answer 401, of 4 answer 403, as text/plain, and each
// is logged. Routes marked public (CA certificates, CRLs, OCSP) serve
// anyone, with or without a certificate.
//
// Quarantine: a suspended device passes check 4 only on the routes mounted
// with HandleRemediation, one by one (the native update routes); their
// handlers see the device's state and hand such a device remediation
// updates only. Every other route, and CheckPeer (the MQTT broker), still
// refuses it.
package deviceapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"cradle"
)

// Server is the device-facing listener. Set the fields, mount handlers
// with Handle, then serve Handler() with TLSConfig().
type Server struct {
	// Certificate is the listener's own TLS certificate (the server TLS
	// certificate of the PKI), with its chain.
	Certificate tls.Certificate
	// Roots are the trust anchors of client certificates; Intermediates
	// the issuing CAs (manufacturing and device CAs, old and new during a
	// rotation), so that devices may send their leaf alone.
	Roots, Intermediates *x509.CertPool
	// CheckChain is called with each verified chain (leaf first); an error
	// refuses the request. Nil accepts every verified chain.
	CheckChain func(chain []*x509.Certificate) error
	// Certs finds certificates by serial across tenants (system role).
	Certs cradle.CertificateAuthorityStore
	// Devices finds the device of a certificate (system role).
	Devices cradle.DeviceService
	// Clock is the time for chain verification; nil means the system
	// clock.
	Clock cradle.Clock
	// Logger receives one line per refusal; nil discards.
	Logger *slog.Logger
	// Audit, when set, records each refusal: in the tenant of the
	// certificate when it is on record, else in tenant 0.
	Audit func(ctx context.Context, tenantID int64, actor string, ev cradle.AuditEvent)
	// Wiping reports whether an eol device's decommissioning waits for
	// its wipe (state wiping) and takes the certificate presented as the
	// device's (one of the LDevIDs the decommissioning revoked); routes
	// mounted with HandleDecommissioning let such a device in. Nil lets
	// none in.
	Wiping func(ctx context.Context, d *cradle.Device, cert *cradle.Certificate) (bool, error)

	mux *http.ServeMux
}

// Handle mounts h at a ServeMux pattern. Unless public, a request must
// pass every check of the package doc first.
func (s *Server) Handle(pattern string, h http.Handler, public bool) {
	if s.mux == nil {
		s.mux = http.NewServeMux()
	}
	if !public {
		h = s.authenticate(h, routePlain)
	}
	s.mux.Handle(pattern, h)
}

// HandleDecommissioning mounts h like Handle (not public), and also lets
// in a device being decommissioned: at eol, its decommissioning wiping
// (Wiping), presenting its LDevID revoked for cessationOfOperation.
// Handlers tell such a request by Decommissioning. Only the routes that
// hand out the wipe command and take the tombstone are mounted so.
func (s *Server) HandleDecommissioning(pattern string, h http.Handler) {
	if s.mux == nil {
		s.mux = http.NewServeMux()
	}
	s.mux.Handle(pattern, s.authenticate(h, routeDecommissioning))
}

type decommissioningKey struct{}

// Decommissioning reports whether the request's device was let in by the
// exception of HandleDecommissioning: it is being decommissioned.
func Decommissioning(ctx context.Context) bool {
	v, _ := ctx.Value(decommissioningKey{}).(bool)
	return v
}

// HandleRemediation mounts h at a ServeMux pattern for devices that pass
// every check, and for suspended devices too: the narrow door of
// quarantine, through which a suspended device fetches and reports a
// remediation update. h must itself limit a device whose State is
// suspended to remediation releases. Devices in RMA or at end of life are
// refused as on every route.
func (s *Server) HandleRemediation(pattern string, h http.Handler) {
	if s.mux == nil {
		s.mux = http.NewServeMux()
	}
	s.mux.Handle(pattern, s.authenticate(h, routeRemediation))
}

// Handler returns the listener's handler.
func (s *Server) Handler() http.Handler {
	if s.mux == nil {
		s.mux = http.NewServeMux()
	}
	return s.mux
}

// TLSConfig returns the listener's TLS configuration: TLS 1.2 or newer,
// the server certificate, and a request (not a demand) for a client
// certificate, which the handlers check.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{s.Certificate},
		ClientAuth:   tls.RequestClientCert,
	}
}

type deviceKey struct{}

// DeviceFromContext returns the device and certificate record of a request
// that passed the checks.
func DeviceFromContext(ctx context.Context) (*cradle.Device, *cradle.Certificate, bool) {
	v, ok := ctx.Value(deviceKey{}).(authenticated)
	return v.device, v.cert, ok
}

type authenticated struct {
	device *cradle.Device
	cert   *cradle.Certificate
}

// refusal is a failed check: the status, what to tell the device, and the
// certificate's record when it is known.
type refusal struct {
	status int
	msg    string
	cert   *cradle.Certificate
}

func (r *refusal) Error() string { return r.msg }

// routeKind is what a route lets in beyond devices that pass every check.
type routeKind int

const (
	routePlain           routeKind = iota
	routeDecommissioning           // also a device being wiped (HandleDecommissioning)
	routeRemediation               // also a suspended device (HandleRemediation)
)

func (s *Server) authenticate(next http.Handler, kind routeKind) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chains, dev, rec, err := s.check(r, kind == routeRemediation)
		wiping := false
		if kind == routeDecommissioning && err != nil {
			var ok bool
			if ok, chains, dev, rec = s.checkWiping(r); ok {
				err, wiping = nil, true
			}
		}
		if err != nil {
			var rf *refusal
			if !errors.As(err, &rf) {
				s.logger().Error("device authentication failed", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
				http.Error(w, "internal error", http.StatusInternalServerError)
				return
			}
			s.logger().Warn("device refused", "path", r.URL.Path, "remote", r.RemoteAddr, "status", rf.status, "reason", rf.msg)
			http.Error(w, rf.msg, rf.status)
			s.AuditRefusal(r, rf)
			return
		}
		cs := *r.TLS
		cs.VerifiedChains = chains
		ctx := cradle.NewContextWithActor(r.Context(), cradle.Actor{TenantID: dev.TenantID, Role: cradle.RoleDevice, Kind: "device", ID: dev.Serial})
		ctx = context.WithValue(ctx, deviceKey{}, authenticated{device: dev, cert: rec})
		if wiping {
			ctx = context.WithValue(ctx, decommissioningKey{}, true)
		}
		r2 := r.WithContext(ctx)
		r2.TLS = &cs
		next.ServeHTTP(w, r2)
	})
}

// Refuse makes a refusal of a device that passed CheckPeer, for a rule of
// the caller's own (an IDevID where an LDevID is required): status is 401
// or 403, and cert names the device's tenant for AuditRefusal.
func Refuse(status int, msg string, cert *cradle.Certificate) error {
	return &refusal{status: status, msg: msg, cert: cert}
}

// RefusalStatus returns the status of a refusal by CheckPeer or Refuse
// (401 for the certificate, 403 for the device's state); false for any
// other error, such as a failure of the store, which is not the device's
// fault (500).
func RefusalStatus(err error) (int, bool) {
	var rf *refusal
	if errors.As(err, &rf) {
		return rf.status, true
	}
	return 0, false
}

// AuditRefusal records a refusal of the request's client certificate
// (an error of CheckPeer or Refuse) as the listener does for its own
// routes: device.auth.refused, in the certificate's tenant when it is on
// record, else in tenant 0. Other errors and a nil Audit record nothing.
func (s *Server) AuditRefusal(r *http.Request, err error) {
	var rf *refusal
	if s.Audit == nil || !errors.As(err, &rf) {
		return
	}
	tenant, actor, subject := int64(0), "anonymous", "certificate:none"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		subject = "certificate:" + cradle.SerialHex(r.TLS.PeerCertificates[0].SerialNumber)
	}
	if rf.cert != nil {
		tenant, actor = rf.cert.TenantID, "device:"+rf.cert.DeviceSerial+"(device)"
	}
	s.Audit(r.Context(), tenant, actor, cradle.AuditEvent{Action: "device.auth.refused", Subject: subject,
		Details: map[string]string{"reason": rf.msg, "path": r.URL.Path, "remote": r.RemoteAddr}})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// checkWiping runs the checks of the package doc with the exception of
// HandleDecommissioning: the chain verifies (at the leaf's expiry, when
// it expired since), the leaf is an LDevID on record revoked for
// cessationOfOperation, and its device is at eol with its
// decommissioning wiping, which accepts this certificate. Any failure is false; the caller answers
// with the refusal of the ordinary checks.
func (s *Server) checkWiping(r *http.Request) (bool, [][]*x509.Certificate, *cradle.Device, *cradle.Certificate) {
	if s.Wiping == nil || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false, nil, nil, nil
	}
	chains, err := s.verifyChain(r.TLS.PeerCertificates)
	if leaf := r.TLS.PeerCertificates[0]; err != nil && cradle.Now(s.Clock).After(leaf.NotAfter) {
		// Expired since: the rest of the chain must verify at the
		// moment it expired.
		chains, err = s.verifyChainAt(r.TLS.PeerCertificates, leaf.NotAfter)
	}
	if err != nil {
		return false, nil, nil, nil
	}
	ctx := r.Context()
	rec, err := s.Certs.LookupCertificate(cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "device-listener")), r.TLS.PeerCertificates[0].SerialNumber)
	if err != nil || rec.Kind != cradle.CertLDevID || rec.Status != cradle.CertRevoked || rec.Reason == nil || *rec.Reason != cradle.ReasonCessationOfOperation {
		return false, nil, nil, nil
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(rec.TenantID, "device-listener"))
	dev, err := s.Devices.FindDeviceBySerial(sys, rec.DeviceSerial)
	if err != nil || dev.State != cradle.StateEOL {
		return false, nil, nil, nil
	}
	if ok, err := s.Wiping(sys, dev, rec); err != nil || !ok {
		if err != nil {
			s.logger().Error("device listener: decommissioning state", "device", dev.Serial, "err", err)
		}
		return false, nil, nil, nil
	}
	return true, chains, dev, rec
}

// check runs the checks of the package doc.
func (s *Server) check(r *http.Request, suspended bool) ([][]*x509.Certificate, *cradle.Device, *cradle.Certificate, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil, nil, &refusal{status: http.StatusUnauthorized, msg: "no client certificate: present the device's IDevID (to enroll) or its LDevID"}
	}
	return s.checkPeer(r.Context(), r.TLS.PeerCertificates, suspended)
}

// CheckPeer runs the checks of the package doc on a client certificate
// chain (leaf first) presented on another transport (the MQTT broker): it
// returns the verified chains, the device and the certificate's record,
// or an error saying why the device is refused.
func (s *Server) CheckPeer(ctx context.Context, peer []*x509.Certificate) ([][]*x509.Certificate, *cradle.Device, *cradle.Certificate, error) {
	return s.checkPeer(ctx, peer, false)
}

// checkPeer is CheckPeer; suspended lets a suspended device pass.
func (s *Server) checkPeer(ctx context.Context, peer []*x509.Certificate, suspended bool) ([][]*x509.Certificate, *cradle.Device, *cradle.Certificate, error) {
	if len(peer) == 0 {
		return nil, nil, nil, &refusal{status: http.StatusUnauthorized, msg: "no client certificate"}
	}
	leaf := peer[0]
	chains, err := s.verifyChain(peer)
	if err != nil {
		return nil, nil, nil, err
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "device-listener"))
	rec, err := s.Certs.LookupCertificate(sys, leaf.SerialNumber)
	switch {
	case cradle.ErrorCode(err) == cradle.ENOTFOUND:
		return nil, nil, nil, &refusal{status: http.StatusUnauthorized, msg: fmt.Sprintf("client certificate %s is not on record here: an IDevID must be recorded by the factory station before the device enrolls", cradle.SerialHex(leaf.SerialNumber))}
	case err != nil:
		return nil, nil, nil, err
	case rec.Status == cradle.CertRevoked:
		return nil, nil, nil, &refusal{http.StatusUnauthorized, fmt.Sprintf("client certificate %s was revoked at %s (%s)", rec.Serial, rec.RevokedAt.Format(time.RFC3339), reasonOf(rec)), rec}
	}
	dev, err := s.Devices.FindDeviceBySerial(cradle.NewContextWithActor(ctx, cradle.SystemActor(rec.TenantID, "device-listener")), rec.DeviceSerial)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("deviceapi: device of certificate %s: %w", rec.Serial, err)
	}
	switch dev.State {
	case cradle.StateSuspended:
		if !suspended {
			return nil, nil, nil, &refusal{http.StatusForbidden, fmt.Sprintf("device %q is suspended: it may only fetch remediation updates; an operator must move it back to deployed first", dev.Serial), rec}
		}
	case cradle.StateRMA, cradle.StateEOL:
		return nil, nil, nil, &refusal{http.StatusForbidden, fmt.Sprintf("device %q is %s: it may not use the device API; an operator must move it back to deployed first", dev.Serial, dev.State), rec}
	}
	return chains, dev, rec, nil
}

// verifyChain runs checks 1 and 2 of the package doc.
func (s *Server) verifyChain(peer []*x509.Certificate) ([][]*x509.Certificate, error) {
	return s.verifyChainAt(peer, cradle.Now(s.Clock))
}

// verifyChainAt runs checks 1 and 2 of the package doc at the time now.
func (s *Server) verifyChainAt(peer []*x509.Certificate, now time.Time) ([][]*x509.Certificate, error) {
	leaf := peer[0]
	inter := x509.NewCertPool()
	if s.Intermediates != nil {
		inter = s.Intermediates.Clone()
	}
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: s.Roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, &refusal{status: http.StatusUnauthorized, msg: fmt.Sprintf("client certificate %s (%s) is not accepted: %v", cradle.SerialHex(leaf.SerialNumber), leaf.Subject, verifyReason(err, leaf, now))}
	}
	if s.CheckChain != nil {
		var last error
		ok := false
		for _, c := range chains {
			if last = s.CheckChain(c); last == nil {
				ok = true
				break
			}
		}
		if !ok {
			return nil, &refusal{status: http.StatusUnauthorized, msg: fmt.Sprintf("client certificate %s is not accepted: %v", cradle.SerialHex(leaf.SerialNumber), last)}
		}
	}
	return chains, nil
}

func reasonOf(c *cradle.Certificate) string {
	if c.Reason == nil {
		return cradle.ReasonUnspecified.String()
	}
	return c.Reason.String()
}

// verifyReason words a verification error for a device's operator.
func verifyReason(err error, leaf *x509.Certificate, now time.Time) string {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired {
		if now.After(leaf.NotAfter) {
			return fmt.Sprintf("it expired at %s; enroll again with the IDevID", leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		return fmt.Sprintf("it is not valid before %s; check the device's clock", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return "it was not issued by this server's manufacturing or device CA"
	}
	return err.Error()
}
