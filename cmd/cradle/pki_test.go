package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
)

// TestPKICommands runs pki expiring, show and revoke against the API over
// a store that holds certificates issued by a test CA.
func TestPKICommands(t *testing.T) {
	isolateCLI(t)
	ctx := t.Context()
	_, key, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tokens := sqlstore.NewTokenService(db)
	admin, err := tokens.Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	certs := sqlstore.NewCertificateService(db)
	srv := httptest.NewServer((&httpapi.Server{Devices: sqlstore.NewDeviceService(db), Tokens: tokens,
		Audit: sqlstore.NewAuditService(db), Certificates: certs}).Handler())
	t.Cleanup(srv.Close)

	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * 365 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	issue := func(serial string, life time.Duration) *cradle.Certificate {
		t.Helper()
		if _, err := sqlstore.NewDeviceService(db).CreateDevice(sys, cradle.DeviceCreate{Serial: serial, Model: "gw", State: cradle.StateProvisioned}); err != nil {
			t.Fatal(err)
		}
		c, err := certs.IssueCertificate(sys, cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, States: []cradle.State{cradle.StateProvisioned},
			Issue: func(context.Context, *cradle.Device) (*x509.Certificate, error) {
				k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
				tmpl := &x509.Certificate{SerialNumber: n.Add(n, big.NewInt(1)), Subject: pkix.Name{CommonName: serial},
					NotBefore: time.Now(), NotAfter: time.Now().Add(life)}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
				if err != nil {
					return nil, err
				}
				return x509.ParseCertificate(der)
			}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	soon := issue("SN-SOON", 10*24*time.Hour)
	later := issue("SN-LATER", 90*24*time.Hour)
	flags := []string{"--server", srv.URL, "--token", admin}
	pki := func(args ...string) string {
		t.Helper()
		return ok(t, append(append([]string{"pki"}, args...), flags...)...)
	}

	out := pki("expiring", "--within", "30d")
	if !strings.Contains(out, soon.Serial) || strings.Contains(out, later.Serial) {
		t.Errorf("expiring within 30d:\n%s\nwant %s only", out, soon.Serial)
	}
	if all := decodeJSON[certificateList](t, pki("expiring", "--within", "2136h", "--json")); len(all.Certificates) != 1 {
		t.Errorf("expiring within 2136h (89 days): %d certificates, want 1", len(all.Certificates))
	}
	if all := decodeJSON[certificateList](t, pki("expiring", "--within", "91d", "--json")); len(all.Certificates) != 2 {
		t.Errorf("expiring within 91d: %d certificates, want 2", len(all.Certificates))
	}
	fails(t, `invalid --within "soon"`, append([]string{"pki", "expiring", "--within", "soon"}, flags...)...)

	b, _ := pem.Decode([]byte(pki("show", soon.Serial, "--pem")))
	if c, err := x509.ParseCertificate(b.Bytes); err != nil || c.Subject.CommonName != "SN-SOON" {
		t.Errorf("show --pem: %v, %v", c, err)
	}
	if c := decodeJSON[cradle.Certificate](t, pki("show", soon.Serial, "--json")); c.Serial != soon.Serial || c.Status != cradle.CertValid {
		t.Errorf("show --json: %+v", c)
	}

	out = pki("revoke", "--serial", soon.Serial, "--reason", "keyCompromise")
	if !strings.HasPrefix(out, "revoked 1 certificate (keyCompromise)\n") {
		t.Errorf("revoke printed %q", out)
	}
	if !strings.Contains(pki("show", soon.Serial), "keyCompromise") {
		t.Error("show does not say the certificate was revoked for keyCompromise")
	}
	fails(t, "already revoked", append([]string{"pki", "revoke", "--serial", soon.Serial, "--reason", "keyCompromise"}, flags...)...)
	fails(t, `unknown revocation reason "boredom"`, append([]string{"pki", "revoke", "--serial", later.Serial, "--reason", "boredom"}, flags...)...)
	fails(t, "give either --serial or --device", append([]string{"pki", "revoke", "--reason", "superseded"}, flags...)...)
	if got := decodeJSON[certificateList](t, pki("revoke", "--device", "SN-LATER", "--reason", "cessationOfOperation", "--json")); len(got.Certificates) != 1 || got.Certificates[0].Serial != later.Serial {
		t.Errorf("revoke --device: %+v", got)
	}
	if out := pki("expiring", "--within", "100d"); strings.Contains(out, later.Serial) {
		t.Errorf("a revoked certificate is listed as expiring:\n%s", out)
	}

	// The factory records an IDevID.
	_, factory, err := tokens.CreateToken(sys, cradle.TokenCreate{Name: "line", Role: cradle.RoleFactory})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqlstore.NewDeviceService(db).CreateDevice(sys, cradle.DeviceCreate{Serial: "SN-NEW", Model: "gw"}); err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{SerialNumber: "SN-NEW"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}, ca, &k.PublicKey, caKey)
	file := filepath.Join(t.TempDir(), "idevid.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := ok(t, "pki", "record", "--device", "SN-NEW", file, "--server", srv.URL, "--token", factory); out != "recorded IDevID 4d of SN-NEW\n" {
		t.Errorf("pki record printed %q", out)
	}
	fails(t, "may not issue or record certificates", "pki", "record", "--device", "SN-NEW", file, "--server", srv.URL, "--token", admin)
	fails(t, "holds no PEM certificate", "pki", "record", "--device", "SN-NEW", "pki_test.go", "--server", srv.URL, "--token", factory)
}

func TestParseWithin(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute, "0d": 0} {
		if got, err := parseWithin(in); err != nil || got != want {
			t.Errorf("parseWithin(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "1.5d", "soon", "-3h"} {
		if _, err := parseWithin(in); err == nil {
			t.Errorf("parseWithin(%q) accepted", in)
		}
	}
}
