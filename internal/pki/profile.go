package pki

import (
	"crypto"
	"crypto/dsa" //nolint:staticcheck // only to name DSA keys in a refusal
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"cradle"
)

// Rule names used in refusals.
const (
	RuleKeyPolicy      = "key-policy"
	RuleIDevID         = "idevid"
	RuleLDevID         = "ldevid"
	RuleLDevIDLifetime = "ldevid-lifetime"
	RuleDistribution   = "distribution"
	RuleReleaseSigner  = "release-signer"
)

// Key policy bounds.
const (
	MinRSABits = 2048
	MaxRSABits = 8192
)

// KeyPolicy refuses weak and unknown subject keys: RSA under MinRSABits
// (or over MaxRSABits), ECDSA on any curve but P-256, P-384 and P-521,
// DSA, and any other key type. Ed25519 is allowed. Its rule name is
// RuleKeyPolicy.
func KeyPolicy() KeyValidator {
	return ValidateKeyFunc(RuleKeyPolicy, checkKey)
}

func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits {
			return fmt.Errorf("RSA key of %d bits is below the %d-bit minimum; use RSA-3072 or ECDSA P-256", n, MinRSABits)
		} else if n > MaxRSABits {
			return fmt.Errorf("RSA key of %d bits is above the %d-bit maximum", n, MaxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("ECDSA curve %s is not allowed; use P-256, P-384 or P-521", curveName(k.Curve))
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("Ed25519 key of %d bytes is malformed", len(k))
		}
		return nil
	case *dsa.PublicKey:
		return fmt.Errorf("DSA keys are not allowed; use ECDSA P-256")
	case nil:
		return fmt.Errorf("no public key")
	}
	return fmt.Errorf("key type %T is not allowed; use ECDSA P-256, P-384, P-521, Ed25519 or RSA of at least %d bits", pub, MinRSABits)
}

// NoWellDefinedExpiration is the notAfter of an IDevID:
// 99991231235959Z, "no well-defined expiration date" (RFC 5280 §4.1.2.5).
var NoWellDefinedExpiration = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// OIDDefaultHardwareType is the hwType written in an IDevID when
// IDevIDConfig.HardwareType is empty (1.3.6.1.4.1.99999.3.1, under the
// placeholder arc; see OIDTestPolicy). A product line should use an OID
// of its own.
var OIDDefaultHardwareType = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 3, 1}

// IDevIDConfig shapes the IDevIDs of a manufacturing CA.
type IDevIDConfig struct {
	// Organization is the subject's O; empty leaves it out.
	Organization string
	// CommonName is the subject's CN; empty means the device serial.
	CommonName string
	// HardwareType is hwType of the hardwareModuleName; empty means
	// OIDDefaultHardwareType.
	HardwareType asn1.ObjectIdentifier
}

// IDevID is the IEEE 802.1AR factory identity profile for the device
// serial. hwSerial is hwSerialNum of the hardwareModuleName; nil means the
// serial's bytes. It sets:
//
//   - subject serialNumber (2.5.4.5) = serial, CN, O as configured;
//   - subjectAltName with the otherName hardwareModuleName (RFC 4108:
//     SEQUENCE { hwType OID, hwSerialNum OCTET STRING }) and any DNS
//     names, URIs, e-mail addresses and IP addresses of the template;
//   - notBefore now, notAfter NoWellDefinedExpiration;
//   - keyUsage digitalSignature, extKeyUsage clientAuth, not a CA.
//
// A serial that cradle.ValidateSerial refuses is refused under RuleIDevID.
func IDevID(cfg IDevIDConfig, serial string, hwSerial []byte, now time.Time) []Option {
	hwType := cfg.HardwareType
	if len(hwType) == 0 {
		hwType = OIDDefaultHardwareType
	}
	if hwSerial == nil {
		hwSerial = []byte(serial)
	}
	return []Option{ModifyCertificateFunc(RuleIDevID, func(t, _ *x509.Certificate) error {
		if err := cradle.ValidateSerial(serial); err != nil {
			return fmt.Errorf("%s", cradle.ErrorMessage(err))
		}
		if len(hwSerial) == 0 {
			return fmt.Errorf("empty hardware serial number")
		}
		cn := cfg.CommonName
		if cn == "" {
			cn = serial
		}
		t.Subject = pkix.Name{CommonName: cn, SerialNumber: serial}
		if cfg.Organization != "" {
			t.Subject.Organization = []string{cfg.Organization}
		}
		san, err := marshalSAN(t, &hardwareModuleName{Type: hwType, SerialNum: hwSerial})
		if err != nil {
			return err
		}
		t.ExtraExtensions = append(t.ExtraExtensions, san)
		t.DNSNames, t.URIs, t.EmailAddresses, t.IPAddresses = nil, nil, nil, nil
		t.NotBefore = now.UTC().Truncate(time.Second)
		t.NotAfter = NoWellDefinedExpiration
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		t.IsCA, t.BasicConstraintsValid = false, true
		return nil
	})}
}

// LDevID lifetime bounds.
const (
	DefaultLDevIDLifetime    = 90 * 24 * time.Hour
	MinLDevIDLifetime        = time.Hour
	DefaultLDevIDMaxLifetime = 397 * 24 * time.Hour
)

// LDevIDPolicy bounds the lifetime of operational certificates. The zero
// value is the default policy.
type LDevIDPolicy struct {
	// Lifetime of a new certificate; 0 means DefaultLDevIDLifetime.
	Lifetime time.Duration
	// MinLifetime is the shortest lifetime allowed; 0 means
	// MinLDevIDLifetime, which is also the floor.
	MinLifetime time.Duration
	// MaxLifetime is the longest lifetime allowed; 0 means
	// DefaultLDevIDMaxLifetime.
	MaxLifetime time.Duration
}

func (p LDevIDPolicy) bounds() (life, lo, hi time.Duration) {
	life, lo, hi = p.Lifetime, p.MinLifetime, p.MaxLifetime
	if life == 0 {
		life = DefaultLDevIDLifetime
	}
	if lo == 0 {
		lo = MinLDevIDLifetime
	}
	if hi == 0 {
		hi = DefaultLDevIDMaxLifetime
	}
	return life, lo, hi
}

// Validate checks the policy itself: MinLifetime at least an hour,
// MaxLifetime not below it, Lifetime between them. The error is a
// *cradle.Error with code EINVALID naming the field.
func (p LDevIDPolicy) Validate() error {
	life, lo, hi := p.bounds()
	switch {
	case lo < MinLDevIDLifetime:
		return cradle.Errorf(cradle.EINVALID, "invalid LDevID min lifetime %s: must be at least %s", lo, MinLDevIDLifetime)
	case hi < lo:
		return cradle.Errorf(cradle.EINVALID, "invalid LDevID max lifetime %s: below the min lifetime %s", hi, lo)
	case life < lo || life > hi:
		return cradle.Errorf(cradle.EINVALID, "invalid LDevID lifetime %s: must be between %s and %s", life, lo, hi)
	}
	return nil
}

// LDevID is the operational certificate profile for device serial of
// tenant, issued at now. It sets:
//
//   - subject CN and serialNumber = serial, O = tenant;
//   - the URI SAN DeviceURI(tenant, serial), replacing any device URI of
//     the template (its other SANs are kept);
//   - notBefore now, notAfter now + the policy's lifetime, but never
//     after the issuer's notAfter;
//   - keyUsage digitalSignature, extKeyUsage clientAuth, not a CA.
//
// Its validator (RuleLDevIDLifetime) refuses a policy that Validate
// refuses, a lifetime outside [MinLifetime, MaxLifetime] (also when the
// issuer's expiry cut it short: rotate the device CA then), and a
// notAfter after the issuer's. A bad tenant or serial is refused under
// RuleLDevID.
func LDevID(p LDevIDPolicy, tenant, serial string, now time.Time) []Option {
	life, lo, hi := p.bounds()
	mod := ModifyCertificateFunc(RuleLDevID, func(t, issuer *x509.Certificate) error {
		u, err := DeviceURI(tenant, serial)
		if err != nil {
			return err
		}
		t.Subject = pkix.Name{CommonName: serial, SerialNumber: serial, Organization: []string{tenant}}
		t.URIs = slices.DeleteFunc(t.URIs, func(x *url.URL) bool { return strings.HasPrefix(x.String(), DeviceURIPrefix) })
		t.URIs = append(t.URIs, u)
		t.NotBefore = now.UTC().Truncate(time.Second)
		t.NotAfter = t.NotBefore.Add(life)
		if issuer != nil && t.NotAfter.After(issuer.NotAfter) {
			t.NotAfter = issuer.NotAfter
		}
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		t.IsCA, t.BasicConstraintsValid = false, true
		return nil
	})
	val := ValidateCertificateFunc(RuleLDevIDLifetime, func(t, issuer *x509.Certificate) error {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("%s", cradle.ErrorMessage(err))
		}
		got := t.NotAfter.Sub(t.NotBefore)
		if issuer != nil && t.NotAfter.After(issuer.NotAfter) {
			return fmt.Errorf("notAfter %s is after the issuer's notAfter %s", t.NotAfter.Format(time.RFC3339), issuer.NotAfter.UTC().Format(time.RFC3339))
		}
		if got < lo {
			if issuer != nil && t.NotAfter.Equal(issuer.NotAfter) {
				return fmt.Errorf("lifetime %s is below the minimum %s because the issuing CA expires at %s; rotate the device CA", got, lo, issuer.NotAfter.UTC().Format(time.RFC3339))
			}
			return fmt.Errorf("lifetime %s is below the minimum %s", got, lo)
		}
		if got > hi {
			return fmt.Errorf("lifetime %s is above the maximum %s", got, hi)
		}
		return nil
	})
	return []Option{mod, val}
}

// RenewAt returns when a device should renew cert: two thirds into its
// lifetime, notBefore + 2/3 (notAfter − notBefore).
func RenewAt(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 3 * 2)
}

// Distribution is the modifier that writes where relying parties find
// revocation status and the issuer: the authorityInfoAccess OCSP and
// caIssuers URLs and the CRL distribution point. Empty fields are left
// out; a set field must be an absolute http or https URL.
type Distribution struct {
	OCSP               string // e.g. https://HOST/pki/ocsp
	IssuingCertificate string // e.g. https://HOST/pki/ca/device-ca.crt
	CRL                string // e.g. https://HOST/pki/crl/device-ca.crl
}

// URLs returns the Distribution of CA caName (its file name in the
// WriteHierarchy layout, e.g. "device-ca") served by the device-facing
// listener at host (a host name with an optional port):
//
//	https://HOST/pki/ocsp
//	https://HOST/pki/ca/<caName>.crt
//	https://HOST/pki/crl/<caName>.crl
func URLs(host, caName string) Distribution {
	base := "https://" + host + "/pki/"
	return Distribution{
		OCSP:               base + "ocsp",
		IssuingCertificate: base + "ca/" + url.PathEscape(caName) + ".crt",
		CRL:                base + "crl/" + url.PathEscape(caName) + ".crl",
	}
}

// Name implements Option.
func (d Distribution) Name() string { return RuleDistribution }

// ModifyCertificate implements CertificateModifier.
func (d Distribution) ModifyCertificate(t, _ *x509.Certificate) error {
	for _, s := range []string{d.OCSP, d.IssuingCertificate, d.CRL} {
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("URL %q is not an absolute http or https URL", s)
		}
	}
	if d.OCSP != "" {
		t.OCSPServer = []string{d.OCSP}
	}
	if d.IssuingCertificate != "" {
		t.IssuingCertificateURL = []string{d.IssuingCertificate}
	}
	if d.CRL != "" {
		t.CRLDistributionPoints = []string{d.CRL}
	}
	return nil
}
