package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"

	"cradle"
)

// Reason is a CRLReason of RFC 5280 §5.3.1; it is cradle.RevocationReason,
// whose constants (cradle.ReasonKeyCompromise …) are repeated here.
type Reason = cradle.RevocationReason

// Revocation reasons (RFC 5280 §5.3.1; 7 is unused).
const (
	ReasonUnspecified          = cradle.ReasonUnspecified
	ReasonKeyCompromise        = cradle.ReasonKeyCompromise
	ReasonCACompromise         = cradle.ReasonCACompromise
	ReasonAffiliationChanged   = cradle.ReasonAffiliationChanged
	ReasonSuperseded           = cradle.ReasonSuperseded
	ReasonCessationOfOperation = cradle.ReasonCessationOfOperation
	ReasonCertificateHold      = cradle.ReasonCertificateHold
	ReasonRemoveFromCRL        = cradle.ReasonRemoveFromCRL
	ReasonPrivilegeWithdrawn   = cradle.ReasonPrivilegeWithdrawn
	ReasonAACompromise         = cradle.ReasonAACompromise
)

// ParseReason returns the reason named s by its RFC 5280 name
// ("keyCompromise"), in any case. removeFromCRL and unknown names are a
// *cradle.Error with code EINVALID.
func ParseReason(s string) (Reason, error) { return cradle.ParseRevocationReason(s) }

// RevokedCert is one entry of a CRL (cradle.RevokedEntry: Serial,
// RevokedAt, Reason).
type RevokedCert = cradle.RevokedEntry

// CreateCRL signs a v2 CRL (RFC 5280 §5) of issuer with signer, listing
// entries, and returns its DER.
//
// number is the cRLNumber. It must be positive, at most 20 octets in
// DER (below 2^159), and
// strictly greater than the number of every CRL this issuer published
// before: this package keeps no state, so the caller (the store's
// NextCRLNumber) keeps the counter. thisUpdate must be before nextUpdate.
// Every entry needs a positive serial; reason unspecified is written
// without a reasonCode (as RFC 5280 recommends); removeFromCRL and
// unknown reasons are refused (Cradle publishes no delta CRLs). The
// issuer must carry keyUsage cRLSign and a subject key identifier, and
// its key must be the signer's.
//
// Refusals of the arguments are *cradle.Error with code EINVALID.
func CreateCRL(issuer *x509.Certificate, signer crypto.Signer, entries []RevokedCert, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	switch {
	case issuer == nil || signer == nil:
		return nil, errors.New("pki: create CRL: issuer and signer are required")
	case number == nil || number.Sign() <= 0:
		return nil, cradle.Errorf(cradle.EINVALID, "pki: CRL number must be positive, got %v", number)
	case number.BitLen() > 159: // DER INTEGER with its sign bit: 20 octets hold 159 bits
		return nil, cradle.Errorf(cradle.EINVALID, "pki: CRL number %v is longer than 20 octets", number)
	case !thisUpdate.Before(nextUpdate):
		return nil, cradle.Errorf(cradle.EINVALID, "pki: CRL thisUpdate %s is not before nextUpdate %s", thisUpdate.UTC().Format(time.RFC3339), nextUpdate.UTC().Format(time.RFC3339))
	case issuer.KeyUsage&x509.KeyUsageCRLSign == 0:
		return nil, cradle.Errorf(cradle.EINVALID, "pki: issuer %q may not sign CRLs (no cRLSign key usage)", issuer.Subject.CommonName)
	case !publicKeysEqual(issuer.PublicKey, signer.Public()):
		return nil, cradle.Errorf(cradle.EINVALID, "pki: the signer's key is not the key of issuer %q", issuer.Subject.CommonName)
	}
	sigAlg, err := SignatureAlgorithm(signer.Public())
	if err != nil {
		return nil, err
	}
	list := make([]x509.RevocationListEntry, len(entries))
	for i, e := range entries {
		if e.Serial == nil || e.Serial.Sign() <= 0 {
			return nil, cradle.Errorf(cradle.EINVALID, "pki: CRL entry %d: serial must be positive", i)
		}
		if e.Reason < 0 || e.Reason > ReasonAACompromise || e.Reason == 7 || e.Reason == ReasonRemoveFromCRL {
			return nil, cradle.Errorf(cradle.EINVALID, "pki: CRL entry %d (serial %s): reason %s cannot be published", i, cradle.SerialHex(e.Serial), e.Reason)
		}
		list[i] = x509.RevocationListEntry{
			SerialNumber:   e.Serial,
			RevocationTime: e.RevokedAt.UTC(),
			ReasonCode:     int(e.Reason),
		}
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		SignatureAlgorithm:        sigAlg,
		RevokedCertificateEntries: list,
		Number:                    number,
		ThisUpdate:                thisUpdate.UTC(),
		NextUpdate:                nextUpdate.UTC(),
	}, issuer, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: sign CRL of %q: %w", issuer.Subject.CommonName, err)
	}
	return der, nil
}
