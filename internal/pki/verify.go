package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"slices"
	"time"

	"cradle"
)

// Profiles of a hierarchy.
const (
	ProfileTest       = "test"
	ProfileProduction = "production"
)

// RuleTestPolicy names the MarkTest modifier.
const RuleTestPolicy = "test-policy"

// ErrTestRoot is the message of the refusal of a test chain by a
// production server.
const ErrTestRoot = "certificate chains to a test root; this server runs the production profile"

// IsTestCertificate reports whether cert carries OIDTestPolicy.
func IsTestCertificate(cert *x509.Certificate) bool {
	if slices.ContainsFunc(cert.PolicyIdentifiers, func(o asn1.ObjectIdentifier) bool { return o.Equal(OIDTestPolicy) }) {
		return true
	}
	want, err := x509.OIDFromInts(oidUint64(OIDTestPolicy))
	if err != nil {
		return false
	}
	return slices.ContainsFunc(cert.Policies, want.Equal)
}

func oidUint64(o asn1.ObjectIdentifier) []uint64 {
	u := make([]uint64, len(o))
	for i, v := range o {
		u[i] = uint64(v)
	}
	return u
}

// MarkTest is the modifier that marks a certificate as test
// (certificatePolicies with OIDTestPolicy). Init puts it on a test root;
// Issue adds the mark by itself to everything a marked issuer signs.
func MarkTest() CertificateModifier {
	return ModifyCertificateFunc(RuleTestPolicy, func(t, _ *x509.Certificate) error {
		addTestPolicy(t)
		return nil
	})
}

func addTestPolicy(t *x509.Certificate) {
	if !slices.ContainsFunc(t.PolicyIdentifiers, func(o asn1.ObjectIdentifier) bool { return o.Equal(OIDTestPolicy) }) {
		t.PolicyIdentifiers = append(t.PolicyIdentifiers, OIDTestPolicy)
	}
	oid, err := x509.OIDFromInts(oidUint64(OIDTestPolicy))
	if err == nil && !slices.ContainsFunc(t.Policies, oid.Equal) {
		t.Policies = append(t.Policies, oid)
	}
}

// CheckProfile judges a verified chain (leaf first, root last) for a
// server running the production profile (production true) or the test
// profile. A production server refuses any chain in which a certificate
// carries OIDTestPolicy with EUNAUTHORIZED and the message ErrTestRoot. A
// test server accepts both. Its signature fits
// deviceapi.Server.CheckChain: func(c []*x509.Certificate) error {
// return pki.CheckProfile(c, production) }.
func CheckProfile(chain []*x509.Certificate, production bool) error {
	if !production {
		return nil
	}
	for _, c := range chain {
		if IsTestCertificate(c) {
			return cradle.Errorf(cradle.EUNAUTHORIZED, "%s", ErrTestRoot)
		}
	}
	return nil
}

// VerifyDeviceChain verifies a device's certificate leaf for client
// authentication at now against roots, with intermediates (nil pools are
// empty), and then applies CheckProfile to every chain found: any chain
// under a test root fails on a production server. It returns the
// verified chains. Errors are *cradle.Error with code EUNAUTHORIZED: a
// chain that does not verify (unknown issuer, expired, wrong key usage)
// says why; a test chain on a production server says ErrTestRoot.
func VerifyDeviceChain(leaf *x509.Certificate, intermediates, roots *x509.CertPool, production bool, now time.Time) ([][]*x509.Certificate, error) {
	if roots == nil {
		roots = x509.NewCertPool()
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "device certificate %q does not verify: %v", clip(leaf.Subject.CommonName), err)
	}
	for _, c := range chains {
		if err := CheckProfile(c, production); err != nil {
			return nil, err
		}
	}
	return chains, nil
}

// Profile returns ProfileTest when cert (normally a root) carries
// OIDTestPolicy, else ProfileProduction.
func Profile(cert *x509.Certificate) string {
	if IsTestCertificate(cert) {
		return ProfileTest
	}
	return ProfileProduction
}

func checkProfileName(p string) error {
	if p != ProfileTest && p != ProfileProduction {
		return cradle.Errorf(cradle.EINVALID, "invalid profile %q: use %q or %q", p, ProfileTest, ProfileProduction)
	}
	return nil
}
