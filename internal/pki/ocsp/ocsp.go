// Package ocsp is Cradle's OCSP responder (RFC 6960, with the RFC 5019
// profile for GET and HTTP caching and the RFC 8954 nonce rules), written
// on encoding/asn1 and crypto/x509.
//
// # Parties and keys
//
// A relying party (a device checking the server, a gateway checking a
// device, `openssl ocsp`) asks about one or more certificates, each named by
// a CertID: a hash of its issuer's name, a hash of its issuer's public key
// and its serial number. The responder answers for one or more issuers
// (Issuer): a CA certificate, the certificate whose key signs the answers
// (a delegated responder certificate issued by that CA with the extended
// key usage id-kp-OCSPSigning, or the CA certificate itself) and that key as
// a crypto.Signer (a file or PKCS#11 key, see internal/kms). Several issuers
// make CA rotation work: the old and the new device CA are answered side by
// side. Whether a certificate is good, revoked or unknown is not this
// package's knowledge: it asks a Source, which the integrator implements
// with the certificate store.
//
// # Formats
//
// Requests (ParseRequest) are DER OCSPRequests of at most MaxRequestBytes
// with at most MaxRequestCerts CertIDs hashed with SHA-1, SHA-256, SHA-384
// or SHA-512; a request signature is accepted and ignored (the responder
// gives the same answers to anyone). The only request extension acted on is
// the nonce (id-pkix-ocsp-nonce): its extnValue, as openssl and RFC 8954
// write it the DER of an OCTET STRING that holds the nonce octets, is copied
// byte for byte into the response's responseExtensions, which is where
// `openssl ocsp` compares it. An unknown critical extension makes the
// request malformed.
//
// Answers are BasicOCSPResponses (id-pkix-ocsp-basic), version 1, with the
// responder named by key (the SHA-1 of its subjectPublicKey BIT STRING),
// one SingleResponse per requested CertID in request order (the CertID
// echoed as sent): good, revoked (revocationTime, and the CRLReason when
// the Source knows it) or unknown, each with thisUpdate and nextUpdate
// (thisUpdate + Options.Validity). The responder certificate is included
// when it is a delegated one. Signatures: ECDSA P-256, P-384 and P-521 with
// SHA-256/384/512, Ed25519, RSA PKCS #1 v1.5 with SHA-256.
//
// Over HTTP (Responder.ServeHTTP, RFC 6960 Appendix A, RFC 5019):
//
//	POST <any path>                 body: DER OCSPRequest (application/ocsp-request)
//	GET  <Prefix><base64(DER)>      base64 std or URL alphabet, padded or not,
//	                                percent-escaped or not ('/' may split the path)
//
// and the answer is always 200 with application/ocsp-response, errors
// included, except for a wrong method (405). Pre-signed answers to GET
// requests (one CertID, no nonce) carry RFC 5019 caching headers
// (Last-Modified: thisUpdate, Expires: nextUpdate, ETag, Cache-Control:
// max-age up to nextUpdate, public, no-transform, must-revalidate), so an
// HTTP cache in between may serve a good answer until nextUpdate even
// after a revocation: keep Options.Validity short. The Content-Type of a
// POST is not checked; the body is read as DER whatever it says. A GET path whose base64
// holds "//" is redirected by an http.ServeMux in front of the responder
// (it cleans unescaped paths): mount the responder ahead of a ServeMux, or
// rely on clients that percent-escape '/' as RFC 5019 asks.
//
// # Which issuer answers
//
// One response has one signature, and a relying party accepts a delegated
// responder only for certificates of the CA that issued it (openssl checks
// that every CertID in the response names that CA). So the responder picks
// the issuer of the first CertID it serves and answers every CertID of
// another issuer — ours or a stranger's — as unknown, which RFC 6960 §2.2
// defines as "the responder doesn't know about the certificate" (clients
// ask once per issuer; openssl does when given one -issuer). A request in
// which no CertID names any of our issuers is answered unauthorized (RFC
// 5019 §2.2.3), unsigned.
//
// # Pre-signing and the cache
//
// The status of each (issuer, serial) is fetched from the Source once and
// kept with its thisUpdate and nextUpdate; the signed response to the usual
// RFC 5019 request (one CertID, no nonce) is signed once, on first use, and
// served from memory without signing until half of the validity has
// passed, when the next request refreshes it (asks the Source again and
// signs anew). Concurrent requests for the same certificate wait for one
// Source call. Requests with a nonce or with several CertIDs use the same
// cached statuses but are signed on each request: the nonce is part of the
// signed data. Revocation must call Invalidate(issuer, serial) after the
// store has recorded it: the next request asks the Source again. A request
// already in flight when Invalidate is called may still answer with what
// it read before. The cache holds at most Options.MaxEntries statuses;
// beyond that an arbitrary entry is dropped.
//
// # Failures
//
// Outcomes a client sees are OCSP response statuses, never HTTP errors:
// malformedRequest for anything ParseRequest refuses (its *cradle.Error
// says why, and is logged at debug level), unauthorized as above, tryLater
// when the Source returns a cradle.EUNAVAILABLE error, internalError for
// any other Source or signing failure (logged). Error responses carry the
// status only.
package ocsp

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"time"

	"cradle"
)

// Limits on requests.
const (
	MaxRequestBytes = 64 << 10 // the largest OCSPRequest accepted, in octets
	MaxRequestCerts = 100      // the most CertIDs in one request
	MaxNonceBytes   = 64       // the largest nonce extnValue echoed, in octets
)

// Media types of OCSP over HTTP.
const (
	MediaRequest  = "application/ocsp-request"
	MediaResponse = "application/ocsp-response"
)

// Object identifiers of OCSP.
var (
	OIDNonce         = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}
	OIDBasicResponse = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
	OIDNoCheck       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}
)

// ResponseStatus is the OCSPResponseStatus of RFC 6960 §4.2.1.
type ResponseStatus int

// Response statuses (4 is not used).
const (
	Successful       ResponseStatus = 0
	MalformedRequest ResponseStatus = 1
	InternalError    ResponseStatus = 2
	TryLater         ResponseStatus = 3
	SigRequired      ResponseStatus = 5
	Unauthorized     ResponseStatus = 6
)

// String returns the status's RFC 6960 name.
func (s ResponseStatus) String() string {
	switch s {
	case Successful:
		return "successful"
	case MalformedRequest:
		return "malformedRequest"
	case InternalError:
		return "internalError"
	case TryLater:
		return "tryLater"
	case SigRequired:
		return "sigRequired"
	case Unauthorized:
		return "unauthorized"
	}
	return "status(" + itoa(int(s)) + ")"
}

// State is a certificate's status in an OCSP answer.
type State int

// States. The zero value is Good.
const (
	Good State = iota
	Revoked
	Unknown
)

// String returns "good", "revoked" or "unknown".
func (s State) String() string {
	switch s {
	case Good:
		return "good"
	case Revoked:
		return "revoked"
	case Unknown:
		return "unknown"
	}
	return "state(" + itoa(int(s)) + ")"
}

// Status is what a Source knows of one certificate.
type Status struct {
	State State
	// RevokedAt is when a Revoked certificate was revoked (required for
	// Revoked; ignored otherwise).
	RevokedAt time.Time
	// Reason is the CRLReason of a Revoked certificate, or nil when it is
	// not known (the answer then has no revocationReason).
	Reason *cradle.RevocationReason
}

// Source tells the responder the status of certificates. The integrator
// implements it with the certificate store.
type Source interface {
	// Status returns the status of the certificate with the serial issued
	// by issuer (one of the issuers the Responder serves). A certificate
	// the issuer never issued, or one that has expired and been forgotten,
	// is Unknown with a nil error; a revoked one is Revoked with its time
	// and, when known, its reason. An error with code cradle.EUNAVAILABLE
	// makes the answer tryLater; any other error internalError. Status is
	// called once per (issuer, serial) per cache period, not per request,
	// and must be safe for concurrent use.
	Status(ctx context.Context, issuer *x509.Certificate, serial *big.Int) (Status, error)
}

// SourceFunc adapts a function to a Source.
type SourceFunc func(ctx context.Context, issuer *x509.Certificate, serial *big.Int) (Status, error)

// Status calls f.
func (f SourceFunc) Status(ctx context.Context, issuer *x509.Certificate, serial *big.Int) (Status, error) {
	return f(ctx, issuer, serial)
}

func itoa(i int) string { return big.NewInt(int64(i)).String() }
