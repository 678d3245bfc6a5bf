package cradle

import (
	"context"
	"crypto/x509"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// CertKind says what a device certificate is for.
type CertKind string

// Certificate kinds.
const (
	// CertIDevID is a device's factory identity (IEEE 802.1AR): issued once
	// by the manufacturing CA, valid for the device's life.
	CertIDevID CertKind = "idevid"
	// CertLDevID is a short-lived operational certificate, issued and
	// renewed by the device CA through enrollment.
	CertLDevID CertKind = "ldevid"
)

// CertStatus is where a certificate stands.
type CertStatus string

// Certificate statuses. A superseded certificate stays valid until it
// expires (a device may still hold it while its renewal is in flight);
// only a revoked one is refused.
const (
	CertValid      CertStatus = "valid"
	CertSuperseded CertStatus = "superseded" // renewed: a newer certificate replaces it
	CertRevoked    CertStatus = "revoked"
)

// RevocationReason is a CRLReason of RFC 5280 §5.3.1.
type RevocationReason int

// Revocation reasons (7 is not used).
const (
	ReasonUnspecified          RevocationReason = 0
	ReasonKeyCompromise        RevocationReason = 1
	ReasonCACompromise         RevocationReason = 2
	ReasonAffiliationChanged   RevocationReason = 3
	ReasonSuperseded           RevocationReason = 4
	ReasonCessationOfOperation RevocationReason = 5
	ReasonCertificateHold      RevocationReason = 6
	ReasonRemoveFromCRL        RevocationReason = 8
	ReasonPrivilegeWithdrawn   RevocationReason = 9
	ReasonAACompromise         RevocationReason = 10
)

var reasonNames = map[RevocationReason]string{
	ReasonUnspecified:          "unspecified",
	ReasonKeyCompromise:        "keyCompromise",
	ReasonCACompromise:         "cACompromise",
	ReasonAffiliationChanged:   "affiliationChanged",
	ReasonSuperseded:           "superseded",
	ReasonCessationOfOperation: "cessationOfOperation",
	ReasonCertificateHold:      "certificateHold",
	ReasonRemoveFromCRL:        "removeFromCRL",
	ReasonPrivilegeWithdrawn:   "privilegeWithdrawn",
	ReasonAACompromise:         "aACompromise",
}

// String returns the reason's RFC 5280 name.
func (r RevocationReason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText writes the reason's RFC 5280 name.
func (r RevocationReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a reason's RFC 5280 name.
func (r *RevocationReason) UnmarshalText(b []byte) error {
	v, err := ParseRevocationReason(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// ParseRevocationReason returns the reason named s (its RFC 5280 name, in
// any case), or EINVALID listing the names. removeFromCRL is refused: it
// only has a meaning in delta CRLs, which Cradle does not publish.
func ParseRevocationReason(s string) (RevocationReason, error) {
	for r, n := range reasonNames {
		if r != ReasonRemoveFromCRL && strings.EqualFold(n, strings.TrimSpace(s)) {
			return r, nil
		}
	}
	return 0, Errorf(EINVALID, "unknown revocation reason %q; use one of unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise", truncate(s, 80))
}

// SerialHex returns the form in which certificate serial numbers are
// stored and shown: lower-case hex without leading zeros.
func SerialHex(n *big.Int) string { return n.Text(16) }

// ParseSerialHex reads a certificate serial in hex (colons, spaces and a
// 0x prefix allowed, as tools print them).
func ParseSerialHex(s string) (*big.Int, error) {
	t := strings.ToLower(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	t = strings.TrimPrefix(t, "0x")
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || t == "" || len(t) > 40 || n.Sign() <= 0 {
		return nil, Errorf(EINVALID, "invalid certificate serial %q: give it in hex, at most 20 octets", truncate(s, 80))
	}
	return n, nil
}

// Certificate is the record of a certificate Cradle issued or learned of.
type Certificate struct {
	Serial       string            `json:"serial"` // SerialHex
	TenantID     int64             `json:"-"`
	DeviceSerial string            `json:"device,omitempty"`
	Kind         CertKind          `json:"kind"`
	Issuer       string            `json:"issuer"` // the issuing CA's subject key id, hex
	Subject      string            `json:"subject"`
	NotBefore    time.Time         `json:"not_before"`
	NotAfter     time.Time         `json:"not_after"`
	Status       CertStatus        `json:"status"`
	RevokedAt    *time.Time        `json:"revoked_at,omitempty"`
	Reason       *RevocationReason `json:"reason,omitempty"` // with RevokedAt
	SupersededBy string            `json:"superseded_by,omitempty"`
	CreatedAt    time.Time         `json:"created_at"`
	DER          []byte            `json:"-"`
}

// CertificateFilter selects certificates of the actor's tenant. Nil fields
// do not filter.
type CertificateFilter struct {
	DeviceSerial   *string
	Status         *CertStatus
	ExpiringBefore *time.Time // valid or superseded certificates whose notAfter is before this
	Cursor         string
	Limit          int // 0 means DefaultPageSize; at most MaxPageSize
}

// CertificateIssue asks the store to issue a device certificate as one
// transaction: check the device, call Issue, record the result, supersede
// the certificate it renews, move the device and audit it all, or do none
// of it.
type CertificateIssue struct {
	DeviceSerial string
	Kind         CertKind
	// States the device must be in; anything else is refused with
	// EFORBIDDEN naming the state.
	States []State
	// Deploy moves a provisioned device to deployed (first enrollment).
	Deploy bool
	// Renews is the serial of the certificate this one replaces, which
	// must be the device's and not revoked; "" for a first certificate.
	Renews string
	// Issue signs the certificate for the locked device. It runs inside
	// the transaction: keep it to the signature.
	Issue func(ctx context.Context, d *Device) (*x509.Certificate, error)
}

// RevokedEntry is one line of a CRL.
type RevokedEntry struct {
	Serial    *big.Int
	RevokedAt time.Time
	Reason    RevocationReason
}

// CertificateService keeps the certificates of devices.
type CertificateService interface {
	// IssueCertificate runs a CertificateIssue. Needs PermCertIssue
	// (a device for itself, or the system). ENOTFOUND for an unknown
	// device, EFORBIDDEN for a device in the wrong state or a renewal of a
	// certificate that is revoked or not the device's; every refusal is
	// audited.
	IssueCertificate(ctx context.Context, req CertificateIssue) (*Certificate, error)
	// RecordCertificate stores a certificate issued elsewhere (an IDevID
	// from the factory station) for a device of the tenant. Needs
	// PermCertIssue. ECONFLICT when the serial is known.
	RecordCertificate(ctx context.Context, deviceSerial string, kind CertKind, cert *x509.Certificate) (*Certificate, error)
	// FindCertificateBySerial returns a certificate of the actor's
	// tenant. Needs PermCertRead. ENOTFOUND.
	FindCertificateBySerial(ctx context.Context, serial string) (*Certificate, error)
	// FindCertificates lists the tenant's certificates, newest first, a
	// page at a time. Needs PermCertRead.
	FindCertificates(ctx context.Context, f CertificateFilter) ([]*Certificate, string, error)
	// RevokeCertificate revokes one certificate of the tenant and returns
	// it. Needs PermCertRevoke. ENOTFOUND; ECONFLICT when it is
	// already revoked, unless the new reason is keyCompromise and the
	// old one was not (RFC 5280 lets the reason become keyCompromise):
	// then the reason changes, the revocation date stays, and a
	// decommissioning of the device can no longer be confirmed by a
	// tombstone.
	RevokeCertificate(ctx context.Context, serial string, reason RevocationReason) (*Certificate, error)
	// RevokeDeviceCertificates revokes every unexpired, unrevoked
	// certificate of a device and returns them. Needs
	// PermCertRevoke. ENOTFOUND for an unknown device.
	RevokeDeviceCertificates(ctx context.Context, deviceSerial string, reason RevocationReason) ([]*Certificate, error)
}

// CertificateAuthorityStore is what the PKI's own services (the CRL
// publisher, the OCSP responder, the device listener) need across tenants:
// certificates are found by serial, which is random and unique. Only the
// system role may call it.
type CertificateAuthorityStore interface {
	// LookupCertificate returns the certificate with the serial, in any
	// tenant, or ENOTFOUND.
	LookupCertificate(ctx context.Context, serial *big.Int) (*Certificate, error)
	// RevokedCertificates lists the revoked, unexpired certificates of an
	// issuer (its subject key id, hex) for its CRL.
	RevokedCertificates(ctx context.Context, issuer string, now time.Time) ([]RevokedEntry, error)
	// NextCRLNumber returns the issuer's next CRL number: 1 for the first
	// CRL, then strictly increasing, also across replicas.
	NextCRLNumber(ctx context.Context, issuer string) (*big.Int, error)
}
