package pki_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki"
	"cradle/internal/sqlstore/storetest"
)

// stationAuthority is an Authority over p that can issue station
// certificates at now.
func stationAuthority(t *testing.T, p *testPKI, now time.Time) *pki.Authority {
	t.Helper()
	return &pki.Authority{
		Hierarchy: p.h,
		Signers:   map[string]crypto.Signer{p.h.DeviceCAName(): p.key(t, p.h.DeviceCAName())},
		URLHost:   hostname,
		Clock:     storetest.NewClock(now),
	}
}

func stationCSR(t *testing.T, key crypto.Signer, cn string) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func admin() context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "tok_test"})
}

func TestIssueStation(t *testing.T) {
	for _, profile := range []string{pki.ProfileTest, pki.ProfileProduction} {
		t.Run(profile, func(t *testing.T) {
			p := sharedPKI(t, profile)
			now := t0.Add(24 * time.Hour)
			a := stationAuthority(t, p, now)
			key := mustKey(t, "p256")
			// The CSR's own subject is ignored: the name is the caller's.
			cert, err := a.IssueStation(admin(), "line-1", stationCSR(t, key, "something else"))
			if err != nil {
				t.Fatal(err)
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(p.h.Root)
			inter.AddCert(p.h.DeviceCA())
			chains, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now.Add(time.Hour),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if err != nil {
				t.Fatalf("the station certificate does not verify to the root: %v", err)
			}
			if got := chains[0][1]; !got.Equal(p.h.DeviceCA()) {
				t.Errorf("issued by %q, want the current device CA", got.Subject.CommonName)
			}
			if cert.Subject.CommonName != "line-1" || !slices.Equal(cert.Subject.OrganizationalUnit, []string{pki.StationOU}) ||
				!slices.Equal(cert.Subject.Organization, []string{"Acme Devices"}) {
				t.Errorf("subject %v", cert.Subject)
			}
			if cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage != x509.KeyUsageDigitalSignature ||
				!slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("IsCA %v, keyUsage %v, extKeyUsage %v", cert.IsCA, cert.KeyUsage, cert.ExtKeyUsage)
			}
			if !cert.NotBefore.Equal(now) || !cert.NotAfter.Equal(now.Add(pki.StationLifetime)) {
				t.Errorf("valid %s to %s, want two years from %s", cert.NotBefore, cert.NotAfter, now)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Error("the certificate is not for the CSR's key")
			}
			if got := pki.IsTestCertificate(cert); got != (profile == pki.ProfileTest) {
				t.Errorf("test mark %v on a %s station certificate", got, profile)
			}
			if len(cert.IssuingCertificateURL) != 1 || !strings.HasSuffix(cert.IssuingCertificateURL[0], "/pki/ca/device-ca.crt") {
				t.Errorf("caIssuers %v", cert.IssuingCertificateURL)
			}
			// The trace record it signs verifies with it.
			rec := &cradle.TraceRecord{ID: "r-1", Batch: "b-1", Station: "line-1", Operator: "ann", Profile: cradle.Profile(profile),
				Serial: "SN-1", MAC: "02:00:00:00:00:01", Model: "gw", HardwareRevision: "a", Status: cradle.UnitFailed,
				FailedStep: "fuses", Reason: "write failed", StartedAt: now, FinishedAt: now}
			signed, err := cradle.SignTrace(rec, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := signed.Verify(cert); err != nil {
				t.Errorf("a record the station signed: %v", err)
			}
		})
	}
}

// TestIssueStationOpenssl checks the profile as openssl reads it.
func TestIssueStationOpenssl(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	a := stationAuthority(t, p, t0)
	cert, err := a.IssueStation(admin(), "line-2", stationCSR(t, mustKey(t, "p384"), "line-2"))
	if err != nil {
		t.Fatal(err)
	}
	text := opensslText(t, cert)
	for _, want := range []string{"OU = Cradle factory station, CN = line-2", "CA:FALSE", "Digital Signature", "TLS Web Client Authentication"} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	out, ok := openssl(t, "verify", "-purpose", "sslclient", "-CAfile", writePEM(t, "root.pem", p.h.Root),
		"-untrusted", writePEM(t, "ca.pem", p.h.DeviceCA()), writePEM(t, "station.pem", cert))
	if !ok {
		t.Errorf("openssl verify: %s", out)
	}
}

func TestIssueStationRefusals(t *testing.T) {
	p := sharedPKI(t, pki.ProfileTest)
	a := stationAuthority(t, p, t0)
	good := stationCSR(t, mustKey(t, "p256"), "line-1")

	t.Run("tampered CSR", func(t *testing.T) {
		csr := stationCSR(t, mustKey(t, "p256"), "line-1")
		other := stationCSR(t, mustKey(t, "p256"), "line-1")
		csr.PublicKey = other.PublicKey // the signature no longer matches the key
		_, err := a.IssueStation(admin(), "line-1", csr)
		if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), "signature does not verify") {
			t.Errorf("error %v, want EINVALID saying the CSR signature does not verify", err)
		}
	})
	t.Run("weak key", func(t *testing.T) {
		_, err := a.IssueStation(admin(), "line-1", stationCSR(t, mustKey(t, "rsa1024"), "line-1"))
		wantRefusal(t, err, pki.RuleKeyPolicy, "below the 2048-bit minimum")
	})
	t.Run("bad name", func(t *testing.T) {
		_, err := a.IssueStation(admin(), "line 1/../x", good)
		wantRefusal(t, err, pki.RuleStation, "station name")
	})
	t.Run("no CSR", func(t *testing.T) {
		if _, err := a.IssueStation(admin(), "line-1", nil); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("error %v, want EINVALID", err)
		}
	})
	t.Run("role without the permission", func(t *testing.T) {
		for _, role := range []cradle.Role{cradle.RoleOperator, cradle.RoleFactory, cradle.RoleAuditor, cradle.RoleDevice} {
			ctx := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: 1, Role: role, Kind: "token", ID: "x"})
			if _, err := a.IssueStation(ctx, "line-1", good); cradle.ErrorCode(err) != cradle.EFORBIDDEN {
				t.Errorf("%s: error %v, want EFORBIDDEN", role, err)
			}
		}
		if _, err := a.IssueStation(context.Background(), "line-1", good); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
			t.Errorf("no actor: error %v, want EUNAUTHORIZED", err)
		}
	})
	t.Run("device CA key not loaded", func(t *testing.T) {
		b := &pki.Authority{Hierarchy: p.h, Signers: map[string]crypto.Signer{}, Clock: storetest.NewClock(t0)}
		if _, err := b.IssueStation(admin(), "line-1", good); err == nil || !strings.Contains(err.Error(), "not loaded") {
			t.Errorf("error %v, want the key not loaded", err)
		}
	})
	t.Run("lifetime capped by the issuer", func(t *testing.T) {
		late := p.h.DeviceCA().NotAfter.Add(-24 * time.Hour)
		c, err := stationAuthority(t, p, late).IssueStation(admin(), "line-1", good)
		if err != nil {
			t.Fatal(err)
		}
		if !c.NotAfter.Equal(p.h.DeviceCA().NotAfter) {
			t.Errorf("notAfter %s, want the device CA's %s", c.NotAfter, p.h.DeviceCA().NotAfter)
		}
	})
}
