package pki_test

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki"
)

func TestCreateCRL(t *testing.T) {
	p := sharedPKI(t, pki.ProfileTest)
	ca, caKey := p.h.DeviceCA(), p.key(t, pki.NameDeviceCA)
	revoked, good := p.issueLDevID(t, "SN-BAD", t0), p.issueLDevID(t, "SN-GOOD", t0)
	entries := []pki.RevokedCert{
		{Serial: revoked.SerialNumber, RevokedAt: t0.Add(time.Hour), Reason: pki.ReasonKeyCompromise},
		{Serial: big.NewInt(12345), RevokedAt: t0.Add(2 * time.Hour), Reason: pki.ReasonUnspecified},
		{Serial: big.NewInt(777), RevokedAt: t0.Add(3 * time.Hour), Reason: pki.ReasonSuperseded},
	}
	thisUpdate := t0.Add(4 * time.Hour)
	der, err := pki.CreateCRL(ca, caKey, entries, big.NewInt(7), thisUpdate, thisUpdate.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if crl.Number.Int64() != 7 || !crl.ThisUpdate.Equal(thisUpdate) || !crl.NextUpdate.Equal(thisUpdate.Add(24*time.Hour)) {
		t.Errorf("number %v, thisUpdate %v, nextUpdate %v", crl.Number, crl.ThisUpdate, crl.NextUpdate)
	}
	if len(crl.RevokedCertificateEntries) != 3 {
		t.Fatalf("%d entries", len(crl.RevokedCertificateEntries))
	}
	for i, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(entries[i].Serial) != 0 || !e.RevocationTime.Equal(entries[i].RevokedAt) || e.ReasonCode != int(entries[i].Reason) {
			t.Errorf("entry %d = %v %v %d, want %+v", i, e.SerialNumber, e.RevocationTime, e.ReasonCode, entries[i])
		}
	}

	dir := t.TempDir()
	crlPath := filepath.Join(dir, "crl.pem")
	if err := os.WriteFile(crlPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	text, ok := openssl(t, "crl", "-in", crlPath, "-noout", "-text")
	if !ok {
		t.Fatalf("openssl crl: %s", text)
	}
	for _, want := range []string{"X509v3 CRL Number: \n                7", "Key Compromise", "Superseded", strings.ToUpper(revoked.SerialNumber.Text(16))} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl crl -text lacks %q:\n%s", want, text)
		}
	}
	at := "-attime=" + itoa(thisUpdate.Add(time.Hour).Unix())
	root, inter := writePEM(t, "root.pem", p.h.Root), writePEM(t, "int.pem", ca)
	out, ok := openssl(t, "verify", at, "-crl_check", "-CRLfile", crlPath, "-CAfile", root, "-untrusted", inter, writePEM(t, "revoked.pem", revoked))
	if ok || !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check accepted the revoked certificate or said something else (ok %v): %s", ok, out)
	}
	if out, ok := openssl(t, "verify", at, "-crl_check", "-CRLfile", crlPath, "-CAfile", root, "-untrusted", inter, writePEM(t, "good.pem", good)); !ok {
		t.Errorf("openssl verify -crl_check refused the good certificate: %s", out)
	}
}

func itoa(n int64) string { return big.NewInt(n).String() }

func TestCreateCRLRefusals(t *testing.T) {
	p := sharedPKI(t, pki.ProfileProduction)
	ca, caKey := p.h.DeviceCA(), p.key(t, pki.NameDeviceCA)
	huge := new(big.Int).Lsh(big.NewInt(1), 159) // 21 octets in DER (sign octet)
	one := big.NewInt(1)
	ok := []pki.RevokedCert{{Serial: big.NewInt(5), RevokedAt: t0}}
	tests := []struct {
		name    string
		issuer  *x509.Certificate
		entries []pki.RevokedCert
		number  *big.Int
		this    time.Time
		next    time.Time
		want    string
	}{
		{"nil number", ca, ok, nil, t0, t0.Add(time.Hour), "CRL number must be positive"},
		{"zero number", ca, ok, big.NewInt(0), t0, t0.Add(time.Hour), "CRL number must be positive"},
		{"negative number", ca, ok, big.NewInt(-3), t0, t0.Add(time.Hour), "CRL number must be positive"},
		{"number over 20 octets", ca, ok, huge, t0, t0.Add(time.Hour), "longer than 20 octets"},
		{"nextUpdate not after thisUpdate", ca, ok, one, t0, t0, "is not before nextUpdate"},
		{"issuer without cRLSign", p.h.Server, ok, one, t0, t0.Add(time.Hour), "may not sign CRLs"},
		{"signer is not the issuer", p.h.ManufacturingCA, ok, one, t0, t0.Add(time.Hour), "signer's key is not the key"},
		{"entry without serial", ca, []pki.RevokedCert{{RevokedAt: t0}}, one, t0, t0.Add(time.Hour), "serial must be positive"},
		{"removeFromCRL", ca, []pki.RevokedCert{{Serial: one, RevokedAt: t0, Reason: pki.ReasonRemoveFromCRL}}, one, t0, t0.Add(time.Hour), "cannot be published"},
		{"reason 7", ca, []pki.RevokedCert{{Serial: one, RevokedAt: t0, Reason: 7}}, one, t0, t0.Add(time.Hour), "cannot be published"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pki.CreateCRL(tt.issuer, caKey, tt.entries, tt.number, tt.this, tt.next)
			if err == nil || !strings.Contains(err.Error(), tt.want) || cradle.ErrorCode(err) != cradle.EINVALID {
				t.Errorf("CreateCRL: %v, want %s %q", err, cradle.EINVALID, tt.want)
			}
		})
	}
	// The largest 20-octet number is accepted, and an empty CRL is fine.
	max := new(big.Int).Sub(huge, one)
	if _, err := pki.CreateCRL(ca, caKey, nil, max, t0, t0.Add(time.Hour)); err != nil {
		t.Errorf("20-octet CRL number: %v", err)
	}
}

func TestParseReason(t *testing.T) {
	tests := []struct {
		in   string
		want pki.Reason
		bad  bool
	}{
		{"keyCompromise", pki.ReasonKeyCompromise, false},
		{"KEYCOMPROMISE", pki.ReasonKeyCompromise, false},
		{"cACompromise", pki.ReasonCACompromise, false},
		{"superseded", pki.ReasonSuperseded, false},
		{"cessationOfOperation", pki.ReasonCessationOfOperation, false},
		{"unspecified", pki.ReasonUnspecified, false},
		{"privilegeWithdrawn", pki.ReasonPrivilegeWithdrawn, false},
		{"removeFromCRL", 0, true},
		{"stolen", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := pki.ParseReason(tt.in)
			if tt.bad {
				if err == nil || cradle.ErrorCode(err) != cradle.EINVALID {
					t.Errorf("ParseReason(%q) = %v, %v; want EINVALID", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseReason(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
	if int(pki.ReasonKeyCompromise) != 1 || int(pki.ReasonAACompromise) != 10 || pki.ReasonCertificateHold.String() != "certificateHold" {
		t.Error("reason codes are not RFC 5280's")
	}
}

// BenchmarkCreateCRL100k signs a CRL of 100,000 revoked certificates
// (random 128-bit serials, reasons set) with an ECDSA P-256 device CA and
// reports the DER size.
func BenchmarkCreateCRL100k(b *testing.B) {
	p := sharedPKI(b, pki.ProfileProduction)
	ca, caKey := p.h.DeviceCA(), p.key(b, pki.NameDeviceCA)
	entries := make([]pki.RevokedCert, 100_000)
	for i := range entries {
		s, err := pki.NewSerial()
		if err != nil {
			b.Fatal(err)
		}
		entries[i] = pki.RevokedCert{Serial: s, RevokedAt: t0.Add(time.Duration(i) * time.Second), Reason: pki.Reason(i % 6)}
	}
	var size int
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		der, err := pki.CreateCRL(ca, caKey, entries, big.NewInt(int64(i+1)), t0, t0.Add(24*time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		size = len(der)
	}
	b.ReportMetric(float64(size), "DER-bytes")
}
