package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"cradle"
	"cradle/internal/pki/ocsp"
)

// DefaultCRLValidity is how long a CRL is valid (nextUpdate − thisUpdate).
// A CRL is regenerated at half its validity, and at once on a revocation.
const DefaultCRLValidity = 24 * time.Hour

// Authority is the online part of the PKI. It enrolls and re-enrolls
// devices (it is the CA behind EST: CACerts, Enroll, Reenroll, CSRAttrs),
// publishes the CRLs of the device CAs, answers the OCSP responder's
// questions from the store, and, through WrapCertificates, makes every
// revocation reach the CRL and the OCSP cache at once.
//
// Enrollment: the client authenticated with its IDevID (issued by the
// manufacturing CA) on the device listener, which put the device into the
// context as the actor. The CSR must name that device (subject
// serialNumber, or common name). The store then checks, in one
// transaction with the signature, that the device is provisioned or
// deployed, records the LDevID, moves a provisioned device to deployed and
// audits it. Re-enrollment needs the current LDevID (issued by a device
// CA, old or new during a rotation); the new certificate comes from the
// current device CA, and the old one becomes superseded. Key policy and
// lifetime come from the LDevID profile.
type Authority struct {
	Hierarchy *Hierarchy
	// Signers holds the keys the server uses, by key name: every device
	// CA's (DeviceCAName) and each issuing CA's OCSP signer's
	// (OCSPNamePrefix + the CA's name).
	Signers      map[string]crypto.Signer
	Certificates cradle.CertificateService
	CAStore      cradle.CertificateAuthorityStore
	// TenantName names a tenant for the LDevID's device URI.
	TenantName func(ctx context.Context, id int64) (string, error)
	Policy     LDevIDPolicy
	// URLHost is host[:port] of the device listener, for the AIA and CRL
	// distribution URLs of issued certificates.
	URLHost string
	// CRLValidity: 0 means DefaultCRLValidity.
	CRLValidity time.Duration
	// OnRevoke is called for each certificate revoked through
	// WrapCertificates, after its CRL was regenerated (the OCSP responder's
	// Invalidate).
	OnRevoke func(issuer *x509.Certificate, serial *big.Int)
	Clock    cradle.Clock
	Logger   *slog.Logger

	mu   sync.Mutex
	crls map[string]*crl // by CA name
}

type crl struct {
	der        []byte
	thisUpdate time.Time
	nextUpdate time.Time
}

func (a *Authority) now() time.Time { return cradle.Now(a.Clock) }

func (a *Authority) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

// CACerts returns what EST cacerts serves: the device CAs, the
// manufacturing CA and the root.
func (a *Authority) CACerts(context.Context) ([]*x509.Certificate, error) {
	return a.Hierarchy.CACerts(), nil
}

// CSRAttrs asks for nothing in particular: any key the key policy allows.
func (a *Authority) CSRAttrs(context.Context) ([]byte, error) { return nil, nil }

// Enroll issues a device's first LDevID; see the type's doc.
func (a *Authority) Enroll(ctx context.Context, chain []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if len(chain) < 2 || !bytes.Equal(chain[1].Raw, a.Hierarchy.ManufacturingCA.Raw) {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "simpleenroll needs the device's IDevID, issued by the manufacturing CA; to renew an LDevID use simplereenroll")
	}
	return a.issue(ctx, csr, cradle.CertificateIssue{Kind: cradle.CertLDevID, Deploy: true,
		States: []cradle.State{cradle.StateProvisioned, cradle.StateDeployed}})
}

// Reenroll renews an LDevID; see the type's doc.
func (a *Authority) Reenroll(ctx context.Context, chain []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if len(chain) < 2 || a.deviceCAName(chain[1]) == "" {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "simplereenroll needs the device's current LDevID, issued by a device CA; a device without one enrolls with its IDevID through simpleenroll")
	}
	return a.issue(ctx, csr, cradle.CertificateIssue{Kind: cradle.CertLDevID, Renews: cradle.SerialHex(chain[0].SerialNumber),
		States: []cradle.State{cradle.StateDeployed}})
}

func (a *Authority) issue(ctx context.Context, csr *x509.CertificateRequest, req cradle.CertificateIssue) (*x509.Certificate, error) {
	actor, ok := cradle.ActorFromContext(ctx)
	if !ok || actor.Role != cradle.RoleDevice {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "enrollment is for devices that authenticated with their certificate")
	}
	if named := csrDevice(csr); named != actor.ID {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "the CSR names device %q, but the client certificate is device %q's: a device asks only for its own certificate", named, actor.ID)
	}
	tenant, err := a.TenantName(ctx, actor.TenantID)
	if err != nil {
		return nil, fmt.Errorf("pki: enroll: tenant %d: %w", actor.TenantID, err)
	}
	caName := a.Hierarchy.DeviceCAName()
	ca, key := a.Hierarchy.DeviceCA(), a.Signers[caName]
	if key == nil {
		return nil, fmt.Errorf("pki: enroll: the key of %s is not loaded", caName)
	}
	var issued *x509.Certificate
	req.DeviceSerial = actor.ID
	req.Issue = func(ctx context.Context, d *cradle.Device) (*x509.Certificate, error) {
		opts := append(LDevID(a.Policy, tenant, d.Serial, a.now()), KeyPolicy(), URLs(a.URLHost, caName))
		c, err := Issue(ctx, ca, key, csr.PublicKey, &x509.Certificate{}, opts...)
		issued = c
		return c, err
	}
	if _, err := a.Certificates.IssueCertificate(ctx, req); err != nil {
		return nil, err
	}
	return issued, nil
}

// csrDevice is the device a CSR names: its subject serialNumber, else its
// common name.
func csrDevice(csr *x509.CertificateRequest) string {
	if csr.Subject.SerialNumber != "" {
		return csr.Subject.SerialNumber
	}
	return csr.Subject.CommonName
}

// deviceCAName returns the name of the device CA c is, or "" (also for
// a retired one: its certificates renew nothing).
func (a *Authority) deviceCAName(c *x509.Certificate) string {
	for i, ca := range a.Hierarchy.DeviceCAs {
		if bytes.Equal(ca.Raw, c.Raw) && !a.Hierarchy.IsRetired(DeviceCAName(i)) {
			return DeviceCAName(i)
		}
	}
	return ""
}

// issuerKeyID is how the store names an issuer: its subject key id, hex.
func issuerKeyID(ca *x509.Certificate) string { return hex.EncodeToString(ca.SubjectKeyId) }

func systemContext(ctx context.Context) context.Context {
	return cradle.NewContextWithActor(context.WithoutCancel(ctx), cradle.SystemActor(0, "pki"))
}

// CRL returns the current CRL (DER) of the device CA named name,
// generating a new one when there is none yet or half its validity has
// passed.
func (a *Authority) CRL(ctx context.Context, name string) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.crls[name]
	if c != nil {
		if now := a.now(); now.Before(c.thisUpdate.Add(c.nextUpdate.Sub(c.thisUpdate) / 2)) {
			return c.der, nil
		}
	}
	if err := a.regenerateLocked(ctx, name); err != nil {
		return nil, err
	}
	return a.crls[name].der, nil
}

func (a *Authority) regenerateLocked(ctx context.Context, name string) error {
	var ca *x509.Certificate
	for i, c := range a.Hierarchy.DeviceCAs {
		if DeviceCAName(i) == name {
			ca = c
		}
	}
	key := a.Signers[name]
	if ca == nil || key == nil {
		return cradle.Errorf(cradle.ENOTFOUND, "no CRL named %q: this server publishes the CRLs of its device CAs", name)
	}
	sys := systemContext(ctx)
	now := a.now()
	if !now.Before(ca.NotAfter) {
		// A retired CA's CRL is published until the CA itself expires.
		return cradle.Errorf(cradle.ENOTFOUND, "no CRL named %q: the CA expired at %s", name, ca.NotAfter.UTC().Format(time.RFC3339))
	}
	entries, err := a.CAStore.RevokedCertificates(sys, issuerKeyID(ca), now)
	if err != nil {
		return fmt.Errorf("pki: CRL %s: %w", name, err)
	}
	number, err := a.CAStore.NextCRLNumber(sys, issuerKeyID(ca))
	if err != nil {
		return fmt.Errorf("pki: CRL %s: %w", name, err)
	}
	validity := a.CRLValidity
	if validity <= 0 {
		validity = DefaultCRLValidity
	}
	der, err := CreateCRL(ca, key, entries, number, now, now.Add(validity))
	if err != nil {
		return fmt.Errorf("pki: CRL %s: %w", name, err)
	}
	if a.crls == nil {
		a.crls = map[string]*crl{}
	}
	a.crls[name] = &crl{der: der, thisUpdate: now, nextUpdate: now.Add(validity)}
	a.logger().Info("CRL published", "ca", name, "number", number, "entries", len(entries))
	return nil
}

// Revoked brings the CRLs and the OCSP cache up to date after certs were
// revoked by the store directly (the store's revocation notifier): each
// device CA's CRL is regenerated once, and OnRevoke told of each
// certificate.
func (a *Authority) Revoked(ctx context.Context, certs []*cradle.Certificate) { a.revoked(ctx, certs) }

// revoked brings the CRLs and the OCSP cache up to date after certs were
// revoked.
func (a *Authority) revoked(ctx context.Context, certs []*cradle.Certificate) {
	regenerated := map[string]bool{}
	for _, c := range certs {
		for i, ca := range a.Hierarchy.DeviceCAs {
			if issuerKeyID(ca) != c.Issuer {
				continue
			}
			name := DeviceCAName(i)
			if !regenerated[name] {
				a.mu.Lock()
				err := a.regenerateLocked(ctx, name)
				a.mu.Unlock()
				if err != nil {
					// The CRL is regenerated on the next fetch; OCSP
					// answers revoked at once below.
					a.logger().Error("regenerating a CRL after a revocation", "ca", name, "err", err)
				}
				regenerated[name] = true
			}
			if a.OnRevoke != nil {
				if n, err := cradle.ParseSerialHex(c.Serial); err == nil {
					a.OnRevoke(ca, n)
				}
			}
		}
		if a.OnRevoke != nil && c.Issuer == issuerKeyID(a.Hierarchy.ManufacturingCA) {
			if n, err := cradle.ParseSerialHex(c.Serial); err == nil {
				a.OnRevoke(a.Hierarchy.ManufacturingCA, n)
			}
		}
	}
}

// WrapCertificates returns s with revocations that also reach the CRLs
// and the OCSP cache: give it to every transport that can revoke.
func (a *Authority) WrapCertificates(s cradle.CertificateService) cradle.CertificateService {
	return &revokingService{CertificateService: s, a: a}
}

type revokingService struct {
	cradle.CertificateService
	a *Authority
}

func (s *revokingService) RevokeCertificate(ctx context.Context, serial string, reason cradle.RevocationReason) (*cradle.Certificate, error) {
	c, err := s.CertificateService.RevokeCertificate(ctx, serial, reason)
	if err == nil {
		s.a.revoked(ctx, []*cradle.Certificate{c})
	}
	return c, err
}

func (s *revokingService) RevokeDeviceCertificates(ctx context.Context, device string, reason cradle.RevocationReason) ([]*cradle.Certificate, error) {
	cs, err := s.CertificateService.RevokeDeviceCertificates(ctx, device, reason)
	if err == nil {
		s.a.revoked(ctx, cs)
	}
	return cs, err
}

// Status implements ocsp.Source from the store: a certificate the store
// does not know, or knows under another issuer, is unknown.
func (a *Authority) Status(ctx context.Context, issuer *x509.Certificate, serial *big.Int) (ocsp.Status, error) {
	c, err := a.CAStore.LookupCertificate(systemContext(ctx), serial)
	switch {
	case cradle.ErrorCode(err) == cradle.ENOTFOUND:
		return ocsp.Status{State: ocsp.Unknown}, nil
	case err != nil:
		return ocsp.Status{}, err
	case c.Issuer != issuerKeyID(issuer):
		return ocsp.Status{State: ocsp.Unknown}, nil
	case c.Status == cradle.CertRevoked:
		return ocsp.Status{State: ocsp.Revoked, RevokedAt: *c.RevokedAt, Reason: c.Reason}, nil
	}
	return ocsp.Status{State: ocsp.Good}, nil
}

// OCSPIssuers lists the CAs the OCSP responder answers for, each with its
// delegated signer, for ocsp.NewResponder: every issuing CA (device CAs
// and the manufacturing CA) whose OCSP signer key is loaded.
func (a *Authority) OCSPIssuers() []ocsp.Issuer {
	var out []ocsp.Issuer
	for name, ca := range a.Hierarchy.IssuingCAs() {
		cert, key := a.Hierarchy.OCSPSigners[name], a.Signers[OCSPNamePrefix+name]
		if cert != nil && key != nil {
			out = append(out, ocsp.Issuer{Cert: ca, ResponderCert: cert, Signer: key})
		}
	}
	return out
}

// PublicHandler serves the CRLs at /pki/crl/<ca>.crl and the CA
// certificates at /pki/ca/<name>.crt (DER), the URLs issued certificates
// carry. Mount it at /pki/ without a client certificate requirement.
func (a *Authority) PublicHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pki/crl/{file}", func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutSuffix(r.PathValue("file"), ".crl")
		if !ok {
			http.NotFound(w, r)
			return
		}
		der, err := a.CRL(r.Context(), name)
		if cradle.ErrorCode(err) == cradle.ENOTFOUND {
			http.Error(w, cradle.ErrorMessage(err), http.StatusNotFound)
			return
		} else if err != nil {
			a.logger().Error("serving a CRL", "ca", name, "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
	mux.HandleFunc("GET /pki/ca/{file}", func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutSuffix(r.PathValue("file"), ".crt")
		cert := a.Hierarchy.files()[name]
		if !ok || cert == nil || !cert.IsCA {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-cert")
		w.Write(cert.Raw)
	})
	return mux
}
