package pki

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"time"

	"cradle"
)

// RuleStation names the station profile in refusals.
const RuleStation = "station"

// StationLifetime is the default lifetime of a factory station's
// certificate.
const StationLifetime = 2 * 365 * 24 * time.Hour

// StationOU is the organizational unit of every station certificate.
const StationOU = "Cradle factory station"

// Station is the profile of a factory station's certificate: the key, in
// the station's HSM, that signs the trace record of every unit it
// provisions, and with which the station authenticates. It sets:
//
//   - subject CN = name, O = org, OU = StationOU;
//   - notBefore now, notAfter now + life (StationLifetime when life is
//     0), but never after the issuer's notAfter;
//   - keyUsage digitalSignature, extKeyUsage clientAuth, not a CA.
//
// A name that cradle.ValidateStationName refuses is refused under
// RuleStation.
func Station(org, name string, now time.Time, life time.Duration) []Option {
	if life == 0 {
		life = StationLifetime
	}
	return []Option{ModifyCertificateFunc(RuleStation, func(t, issuer *x509.Certificate) error {
		if err := cradle.ValidateStationName(name); err != nil {
			return fmt.Errorf("%s", cradle.ErrorMessage(err))
		}
		t.Subject = pkix.Name{CommonName: name, OrganizationalUnit: []string{StationOU}}
		if org != "" {
			t.Subject.Organization = []string{org}
		}
		t.DNSNames, t.URIs, t.EmailAddresses, t.IPAddresses = nil, nil, nil, nil
		setLeaf(t, now, life, x509.KeyUsageDigitalSignature)
		if issuer != nil && t.NotAfter.After(issuer.NotAfter) {
			t.NotAfter = issuer.NotAfter
		}
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		t.UnknownExtKeyUsage = nil
		return nil
	})}
}

// IssueStation issues the certificate of factory station name for the
// key of csr, from the current device CA, under the Station profile and
// KeyPolicy. The CSR's signature must verify (the station holds the key);
// its subject is ignored, the name comes from the caller. The actor in
// ctx needs cradle.PermStationEnroll. It returns EINVALID for a bad CSR,
// key or name (a *PolicyError for the last two), EFORBIDDEN for an actor
// without the permission.
//
// The certificate is not recorded here: the factory service stores it
// with the station, in the transaction that calls IssueStation.
func (a *Authority) IssueStation(ctx context.Context, name string, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if _, err := cradle.Authorize(ctx, cradle.PermStationEnroll); err != nil {
		return nil, err
	}
	if csr == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "a station enrolls with a CSR for its key")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the station's CSR signature does not verify (%v): make the CSR with the station's own key", err)
	}
	caName := a.Hierarchy.DeviceCAName()
	ca, key := a.Hierarchy.DeviceCA(), a.Signers[caName]
	if key == nil {
		return nil, fmt.Errorf("pki: issue station certificate: the key of %s is not loaded", caName)
	}
	var org string
	if len(ca.Subject.Organization) > 0 {
		org = ca.Subject.Organization[0]
	}
	opts := append(Station(org, name, a.now(), 0), KeyPolicy())
	if a.URLHost != "" {
		opts = append(opts, Distribution{IssuingCertificate: URLs(a.URLHost, caName).IssuingCertificate})
	}
	return Issue(ctx, ca, key, csr.PublicKey, &x509.Certificate{}, opts...)
}
