// Package pki is Cradle's certificate authority: the hierarchy of CAs, the
// issuance policy that shapes every certificate, certificate revocation
// lists, and the checks a server runs on a device's chain.
//
// # Parties and keys
//
// One root CA (offline) signs three kinds of certificates directly: the
// manufacturing CA (issues IDevIDs in the factory), the device CA (issues
// the short-lived LDevIDs through enrollment, online in the server), and
// three leaves: the TLS certificate of the device-facing listener, the
// command signer and the release signer (signs Mender artifacts and
// SWUpdate images, whose clients check it against the root). Each CA that issues device certificates has its own
// delegated OCSP signer. Keys are crypto.Signer values; this package never
// sees key material and never chooses a key store: Init asks the caller's
// KeyFunc for each key by a documented name (see Init), so the file and
// PKCS#11 back ends are wired outside.
//
//	root                      self-signed, 25 years, pathLen 1
//	├─ manufacturing-ca       20 years, pathLen 0 ── IDevIDs (notAfter 99991231235959Z)
//	│   └─ ocsp-manufacturing-ca  OCSP signer, id-pkix-ocsp-nocheck
//	├─ device-ca[-N]          5 years, pathLen 0  ── LDevIDs (90 days by default)
//	│   └─ ocsp-device-ca[-N]     OCSP signer, id-pkix-ocsp-nocheck
//	├─ server                 397 days, serverAuth, the listener's DNS names / IPs
//	├─ command-signer         2 years, digitalSignature, EKU OIDCommandSigning
//	└─ release-signer         5 years, digitalSignature, EKU emailProtection + codeSigning
//
// OCSP signers live OCSPSignerLifetime (180 days) and are re-issued with
// Issue and the OCSPSigner profile by their CA. Certificates signed by the
// root carry only a caIssuers URL (root.crt): the root is offline and
// publishes no CRL and has no OCSP responder. Device certificates carry
// OCSP, caIssuers and CRL URLs of their CA (Distribution).
//
// # Issuance
//
// Issue signs one certificate from a template under a list of Options in
// the step-ca model: KeyValidators look at the subject public key,
// CertificateModifiers shape the template, CertificateValidators judge the
// result. The order is fixed and documented on Issue. Profiles are
// bundles of options: KeyPolicy, IDevID, LDevID, Distribution. A refusal
// is a *PolicyError naming the rule that failed; it unwraps to a
// *cradle.Error with code EINVALID, so a transport shows its message.
//
// # Test and production
//
// A test hierarchy marks every certificate it contains, from the root
// down, with the certificate policy OIDTestPolicy. Issue adds the mark to
// everything issued by a marked issuer, so it cannot be forgotten. A
// production server calls VerifyDeviceChain (or CheckProfile on chains
// verified elsewhere), which refuses any chain that carries the mark.
//
// # Formats
//
// Certificates are DER, written to disk as PEM by WriteHierarchy in the
// layout documented there. The IDevID's hardwareModuleName (RFC 4108) is
// an otherName in the subjectAltName, which crypto/x509 cannot write, so
// the SAN extension is encoded here (see ParseHardwareModuleName). The
// LDevID names its device with the URI SAN urn:cradle:device:<tenant>:<serial>
// (see DeviceURI). CRLs are RFC 5280 v2 CRLs with CRL numbers that the
// caller keeps strictly increasing (see CreateCRL).
//
// # Failure modes
//
// A weak or unknown key, a lifetime outside the configured bounds, an
// issuer that is not a CA or does not match its signer, a template the
// profile cannot express: Issue refuses before signing and nothing is
// issued. A signer that fails (an HSM that is gone) returns its error
// wrapped. Chains under a test root on a production server are refused
// with a sentence saying so.
package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"cradle"
)

// Object identifiers under Cradle's private arc. The arc
// 1.3.6.1.4.1.99999 is a PLACEHOLDER, not a registered IANA Private
// Enterprise Number: the project must register a PEN and replace it before
// production certificates are issued (a production hierarchy carries
// OIDCommandSigning in the command signer; test certificates carry
// OIDTestPolicy).
var (
	// OIDTestPolicy is the certificate policy that marks every certificate
	// of a test hierarchy (1.3.6.1.4.1.99999.1.1).
	OIDTestPolicy = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1, 1}
	// OIDCommandSigning is the extended key usage of the command signer,
	// the key that signs lifecycle commands to devices
	// (1.3.6.1.4.1.99999.2.1).
	OIDCommandSigning = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 2, 1}
)

// Standard object identifiers used here.
var (
	// OIDHardwareModuleName is id-on-hardwareModuleName (RFC 4108).
	OIDHardwareModuleName = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 4}
	// OIDOCSPNoCheck is id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1).
	OIDOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// Option is one rule of an issuance policy: a KeyValidator, a
// CertificateValidator or a CertificateModifier. Name identifies the rule
// in refusals.
type Option interface {
	Name() string
}

// KeyValidator judges the subject public key before anything else runs.
type KeyValidator interface {
	Option
	ValidateKey(pub crypto.PublicKey) error
}

// CertificateValidator judges the finished template (after every
// modifier, serial and key identifiers set). issuer is nil for a
// self-signed certificate.
type CertificateValidator interface {
	Option
	ValidateCertificate(tmpl, issuer *x509.Certificate) error
}

// CertificateModifier changes the template. issuer is nil for a
// self-signed certificate.
type CertificateModifier interface {
	Option
	ModifyCertificate(tmpl, issuer *x509.Certificate) error
}

type keyValidatorFunc struct {
	name string
	f    func(crypto.PublicKey) error
}

func (v keyValidatorFunc) Name() string                           { return v.name }
func (v keyValidatorFunc) ValidateKey(pub crypto.PublicKey) error { return v.f(pub) }

type certValidatorFunc struct {
	name string
	f    func(tmpl, issuer *x509.Certificate) error
}

func (v certValidatorFunc) Name() string { return v.name }
func (v certValidatorFunc) ValidateCertificate(tmpl, issuer *x509.Certificate) error {
	return v.f(tmpl, issuer)
}

type modifierFunc struct {
	name string
	f    func(tmpl, issuer *x509.Certificate) error
}

func (m modifierFunc) Name() string { return m.name }
func (m modifierFunc) ModifyCertificate(tmpl, issuer *x509.Certificate) error {
	return m.f(tmpl, issuer)
}

// ValidateKeyFunc makes a KeyValidator named name from f.
func ValidateKeyFunc(name string, f func(pub crypto.PublicKey) error) KeyValidator {
	return keyValidatorFunc{name, f}
}

// ValidateCertificateFunc makes a CertificateValidator named name from f.
func ValidateCertificateFunc(name string, f func(tmpl, issuer *x509.Certificate) error) CertificateValidator {
	return certValidatorFunc{name, f}
}

// ModifyCertificateFunc makes a CertificateModifier named name from f.
func ModifyCertificateFunc(name string, f func(tmpl, issuer *x509.Certificate) error) CertificateModifier {
	return modifierFunc{name, f}
}

// PolicyError is a refusal by an issuance rule. It unwraps to a
// *cradle.Error with code EINVALID carrying the same text.
type PolicyError struct {
	Rule   string // the Name of the option that refused, or a built-in rule ("issuer", "template")
	Reason string // what was wrong, for a person
}

// Error implements error.
func (e *PolicyError) Error() string {
	return "pki: refused by rule " + e.Rule + ": " + e.Reason
}

// Unwrap returns the client-visible form of the refusal.
func (e *PolicyError) Unwrap() error {
	return cradle.Errorf(cradle.EINVALID, "certificate refused by rule %s: %s", e.Rule, e.Reason)
}

func refuse(rule, format string, args ...any) *PolicyError {
	return &PolicyError{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// asPolicyError names the rule of an option's error unless it already is
// a PolicyError.
func asPolicyError(rule string, err error) error {
	var pe *PolicyError
	if errors.As(err, &pe) {
		return err
	}
	return &PolicyError{Rule: rule, Reason: err.Error()}
}

// Issue signs a certificate for pub from tmpl, issued by issuer with
// signer, under the given policy. issuer nil makes a self-signed
// certificate (a root): pub must then be signer's public key.
//
// tmpl is not changed; Issue works on a copy. The steps, in order:
//
//  1. built-in checks: the issuer is a CA allowed to sign certificates
//     (basicConstraints CA, keyUsage certSign) and its public key is the
//     signer's;
//  2. every KeyValidator in opts, in order, on pub;
//  3. every CertificateModifier in opts, in order;
//  4. built-in settings that no modifier can override: a random positive
//     128-bit serial number, the subject key identifier (the first 160
//     bits of the SHA-256 of the subject public key, RFC 7093 method 1),
//     the signature algorithm matching the signer's key (ECDSA P-256 →
//     SHA-256, P-384 → SHA-384, P-521 → SHA-512, Ed25519, RSA → SHA-256
//     with PKCS #1 v1.5), and OIDTestPolicy when the issuer carries it;
//  5. built-in template checks: notBefore before notAfter, a subject or a
//     SAN, no SAN fields beside a hand-made SAN extension (they would be
//     lost);
//  6. every CertificateValidator in opts, in order;
//  7. ctx is checked, then the certificate is signed (x509 checks the
//     signature against the issuer's key) and parsed back.
//
// The first refusal stops issuance and is returned as a *PolicyError
// naming its rule. Errors from the signer are wrapped and returned as
// they are (not a PolicyError).
func Issue(ctx context.Context, issuer *x509.Certificate, signer crypto.Signer, pub crypto.PublicKey, tmpl *x509.Certificate, opts ...Option) (*x509.Certificate, error) {
	if signer == nil || pub == nil || tmpl == nil {
		return nil, errors.New("pki: issue: signer, public key and template are required")
	}
	sigAlg, err := SignatureAlgorithm(signer.Public())
	if err != nil {
		return nil, refuse("issuer", "%v", err)
	}
	if issuer != nil {
		if !issuer.IsCA || !issuer.BasicConstraintsValid {
			return nil, refuse("issuer", "issuer %q is not a CA", issuer.Subject.CommonName)
		}
		if issuer.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, refuse("issuer", "issuer %q may not sign certificates (no keyCertSign key usage)", issuer.Subject.CommonName)
		}
		if !publicKeysEqual(issuer.PublicKey, signer.Public()) {
			return nil, refuse("issuer", "the signer's key is not the key of issuer %q", issuer.Subject.CommonName)
		}
	} else if !publicKeysEqual(pub, signer.Public()) {
		return nil, refuse("issuer", "a self-signed certificate must be for the signer's own key")
	}

	for _, o := range opts {
		if v, ok := o.(KeyValidator); ok {
			if err := v.ValidateKey(pub); err != nil {
				return nil, asPolicyError(v.Name(), err)
			}
		}
	}

	t := cloneTemplate(tmpl)
	for _, o := range opts {
		if m, ok := o.(CertificateModifier); ok {
			if err := m.ModifyCertificate(t, issuer); err != nil {
				return nil, asPolicyError(m.Name(), err)
			}
		}
	}

	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	t.SerialNumber = serial
	ski, err := SubjectKeyID(pub)
	if err != nil {
		return nil, refuse("template", "%v", err)
	}
	t.SubjectKeyId = ski
	t.SignatureAlgorithm = sigAlg
	if issuer != nil && IsTestCertificate(issuer) {
		addTestPolicy(t)
	}

	if !t.NotBefore.Before(t.NotAfter) {
		return nil, refuse("template", "notBefore %s is not before notAfter %s", t.NotBefore.UTC().Format("2006-01-02T15:04:05Z"), t.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
	if len(t.Subject.ToRDNSequence()) == 0 && len(t.DNSNames)+len(t.IPAddresses)+len(t.URIs)+len(t.EmailAddresses) == 0 && !hasExtension(t.ExtraExtensions, oidSubjectAltName) {
		return nil, refuse("template", "the certificate names nothing: no subject and no subject alternative name")
	}

	if hasExtension(t.ExtraExtensions, oidSubjectAltName) && len(t.DNSNames)+len(t.IPAddresses)+len(t.URIs)+len(t.EmailAddresses) > 0 {
		return nil, refuse("template", "the template has a hand-made subjectAltName extension and SAN fields, which crypto/x509 would drop")
	}

	for _, o := range opts {
		if v, ok := o.(CertificateValidator); ok {
			if err := v.ValidateCertificate(t, issuer); err != nil {
				return nil, asPolicyError(v.Name(), err)
			}
		}
	}

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pki: issue: %w", err)
	}
	parent := issuer
	if parent == nil {
		parent = t
	}
	der, err := x509.CreateCertificate(rand.Reader, t, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate for %q: %w", t.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse issued certificate: %w", err)
	}
	return cert, nil
}

// NewSerial returns a random positive serial number of 128 bits, which
// encodes in at most 17 octets (RFC 5280 allows 20).
func NewSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("pki: random serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n, nil
		}
	}
}

// SubjectKeyID returns the key identifier of pub: the leftmost 160 bits of
// the SHA-256 hash of its subjectPublicKey bits (RFC 7093 §2 method 1).
func SubjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("pki: subject key id: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("pki: subject key id: %w", err)
	}
	h := sha256.Sum256(spki.PublicKey.Bytes)
	return h[:20], nil
}

// SignatureAlgorithm returns the signature algorithm Cradle uses with a
// key: ECDSA P-256 → ECDSAWithSHA256, P-384 → ECDSAWithSHA384, P-521 →
// ECDSAWithSHA512, Ed25519 → PureEd25519, RSA → SHA256WithRSA (PKCS #1
// v1.5). Any other key is an error.
func SignatureAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return x509.ECDSAWithSHA256, nil
		case elliptic.P384():
			return x509.ECDSAWithSHA384, nil
		case elliptic.P521():
			return x509.ECDSAWithSHA512, nil
		}
		return 0, fmt.Errorf("pki: no signature algorithm for ECDSA curve %s", curveName(k.Curve))
	case ed25519.PublicKey:
		return x509.PureEd25519, nil
	case *rsa.PublicKey:
		return x509.SHA256WithRSA, nil
	}
	return 0, fmt.Errorf("pki: no signature algorithm for key type %T", pub)
}

func curveName(c elliptic.Curve) string {
	if c == nil || c.Params() == nil {
		return "unknown"
	}
	return c.Params().Name
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func hasExtension(exts []pkix.Extension, id asn1.ObjectIdentifier) bool {
	for _, e := range exts {
		if e.Id.Equal(id) {
			return true
		}
	}
	return false
}

// cloneTemplate copies the fields that modifiers append to, so that the
// caller's template never changes.
func cloneTemplate(tmpl *x509.Certificate) *x509.Certificate {
	t := *tmpl
	t.Subject.Organization = slices.Clone(t.Subject.Organization)
	t.Subject.ExtraNames = slices.Clone(t.Subject.ExtraNames)
	t.ExtraExtensions = slices.Clone(t.ExtraExtensions)
	t.ExtKeyUsage = slices.Clone(t.ExtKeyUsage)
	t.UnknownExtKeyUsage = slices.Clone(t.UnknownExtKeyUsage)
	t.DNSNames = slices.Clone(t.DNSNames)
	t.IPAddresses = slices.Clone(t.IPAddresses)
	t.URIs = slices.Clone(t.URIs)
	t.EmailAddresses = slices.Clone(t.EmailAddresses)
	t.OCSPServer = slices.Clone(t.OCSPServer)
	t.IssuingCertificateURL = slices.Clone(t.IssuingCertificateURL)
	t.CRLDistributionPoints = slices.Clone(t.CRLDistributionPoints)
	t.PolicyIdentifiers = slices.Clone(t.PolicyIdentifiers)
	t.Policies = slices.Clone(t.Policies)
	t.SubjectKeyId = bytes.Clone(t.SubjectKeyId)
	return &t
}
