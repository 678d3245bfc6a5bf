// Package est implements Enrollment over Secure Transport (EST, RFC 7030,
// with the RFC 8951 clarifications): the wire formats, an http.Handler for
// the server side and a Go client for the agent.
//
// # Parties and trust
//
// A device (the EST client) talks HTTPS to the device-facing listener and
// authenticates with a TLS client certificate: its factory identity
// (IDevID) to enroll, its current operational certificate (LDevID) to
// re-enroll. The listener's tls.Config (or the listener's own checks, see
// internal/deviceapi) verifies the chain, its revocation and the device's
// state, and leaves the verified chain in r.TLS.VerifiedChains. This
// package only insists that such a chain is present; it never verifies
// chains itself and never issues certificates. It decodes and checks the
// request (size, media type, base64, CSR syntax, CSR signature as proof of
// possession, and for re-enrollment the RFC 7030 §3.3.2 name rule), then
// calls the CA interface, which the integrator implements with the PKI and
// the store: it decides policy (is this device allowed, does the CSR name
// it, is the key strong enough) and issues.
//
// # Operations and formats
//
//	GET  /.well-known/est/cacerts         application/pkcs7-mime (certs-only CMS, base64)
//	POST /.well-known/est/simpleenroll    application/pkcs10 in (base64 DER CSR),
//	POST /.well-known/est/simplereenroll  application/pkcs7-mime; smime-type=certs-only out
//	GET  /.well-known/est/csrattrs        application/csrattrs (base64 DER), or 204 when none
//
// Every body is base64 ("Content-Transfer-Encoding: base64" is sent, and
// per RFC 8951 base64 is expected whatever that header says); line breaks
// and other white space in base64 are accepted. A certs-only message is a
// degenerate CMS SignedData (RFC 5652): version 1, no digest algorithms,
// encapsulated content of type id-data with no content, the certificates,
// no signer infos, all in DER; EncodeCertsOnly and ParseCertsOnly make and
// read it. Request bodies are bounded (MaxBodyBytes, 64 KiB by default).
//
// An optional label segment (RFC 7030 §3.2.2), /.well-known/est/<label>/op,
// selects another CA from Server.Labels; an unknown label answers 404.
// The optional operations fullcmc and serverkeygen answer 501; any other
// unknown operation 404. tls-unique channel binding (§3.5) is not supported:
// it does not exist in TLS 1.3, and client authentication here is by
// certificate, never by HTTP credentials, so there is nothing to bind.
// Deferred enrollment (202 + Retry-After) is not offered by the server; the
// client understands 202 and 503 and reports their Retry-After.
//
// # Failures
//
// Refusals are text/plain with a sentence a person can act on, and map as
// RFC 7030 §4.2.3 and HTTP prescribe:
//
//	malformed body, CSR that does not parse or whose signature fails,
//	cradle.EINVALID                                  → 400 Bad Request
//	no verified client certificate, EUNAUTHORIZED   → 401 Unauthorized
//	    (no WWW-Authenticate header: we offer no HTTP authentication)
//	re-enrollment CSR whose subject or SAN differ from the current
//	certificate (§3.3.2, checked here: same subject attributes and values
//	in any RDN order and string type, same set of general names),
//	EFORBIDDEN, ECONFLICT, ENOTFOUND                  → 403 Forbidden
//	    (ENOTFOUND is a policy refusal of an authenticated client, e.g. a
//	    device not on record: 404 would read as "no such EST resource")
//	wrong method → 405, wrong media type → 415, body over the limit or
//	ETOOLARGE → 413, ENOTIMPLEMENTED → 501,
//	EUNAVAILABLE or more than MaxInFlight enrollments → 503 + Retry-After,
//	any other error → 500 with a generic text (the error is logged).
//
// The CA is never called for a request that fails the handler's own
// checks; such refusals are reported to Server.Refused so that the
// integrator can audit them like the CA's own.
package est

import (
	"context"
	"crypto/x509"
	"time"
)

// Media types of EST bodies.
const (
	MediaPKCS10    = "application/pkcs10"
	MediaPKCS7     = "application/pkcs7-mime"
	MediaCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	MediaCSRAttrs  = "application/csrattrs"
)

// WellKnown is the path prefix under which Server answers.
const WellKnown = "/.well-known/est/"

// DefaultMaxBodyBytes bounds request bodies when Server.MaxBodyBytes is 0.
const DefaultMaxBodyBytes = 64 << 10

// CA is what the EST server calls once a request has passed its own
// checks. The integrator implements it with the PKI and the store. Errors
// a client may see are *cradle.Error; their codes map to HTTP statuses as
// the package documentation says. An error that also has a method
// RetryAfter() time.Duration sets the Retry-After of a 503.
type CA interface {
	// CACerts returns the certificates a client should trust for the
	// server's issuing CAs (the device CA, old and new during a rotation,
	// and what chains them to the root). It must return at least one
	// certificate.
	CACerts(ctx context.Context) ([]*x509.Certificate, error)

	// Enroll issues a first operational certificate. client is the
	// verified chain the client authenticated with (leaf first: its
	// IDevID); csr has parsed and its signature verified (proof of
	// possession). Enroll decides the rest: the chain is an IDevID (the
	// handler does not know which CA is which), the device exists and
	// may enroll (EFORBIDDEN or ENOTFOUND otherwise), the CSR names it
	// (EFORBIDDEN), its key is acceptable (EFORBIDDEN or EINVALID). The
	// certificate returned must hold the CSR's public key (the handler
	// answers 500 otherwise).
	Enroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error)

	// Reenroll renews: client is the verified chain of the current
	// certificate (leaf first: its LDevID); csr has passed the same
	// checks as for Enroll and carries the same subject and subject
	// alternative names as the leaf (RFC 7030 §3.3.2), possibly a new key.
	// Reenroll must refuse a chain that is not a current LDevID, e.g. an
	// IDevID (EFORBIDDEN). Errors as for Enroll.
	Reenroll(ctx context.Context, client []*x509.Certificate, csr *x509.CertificateRequest) (*x509.Certificate, error)

	// CSRAttrs returns the DER of the CSR attributes the CA wants
	// (a CsrAttrs SEQUENCE, see MarshalCSRAttrs), or nil when it has no
	// wish (the server then answers 204).
	CSRAttrs(ctx context.Context) ([]byte, error)
}

// Refusal describes a request the server refused, for an audit log.
type Refusal struct {
	Op     string              // "simpleenroll", "simplereenroll", "cacerts", "csrattrs", or the unknown op
	Label  string              // the §3.2.2 label, "" when none
	Status int                 // HTTP status sent
	Reason string              // text sent to the client
	Client []*x509.Certificate // verified client chain, nil when none
	Err    error               // the cause (the CA's error, or the handler's check)
	Time   time.Time
}
