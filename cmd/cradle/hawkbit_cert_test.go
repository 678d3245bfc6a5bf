package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/est"
	"cradle/internal/sqlstore"
)

// TestHawkbitClientCertificate: the DDI API takes a device's LDevID, not
// its IDevID (403, as commands), keeps the listener's statuses (403 for a
// suspended device, not 401) and audits each refusal as the listener does.
func TestHawkbitClientCertificate(t *testing.T) {
	s := startPKIServer(t, nil)
	const serial = "SN-HB-TLS"
	ok(t, append([]string{"device", "create", "--serial", serial, "--model", "swu-gw"}, s.line...)...)
	h, devKey, idevid := newIDevID(t, s.dataDir, serial)
	ok(t, append([]string{"pki", "record", "--device", serial, writeFile(t, t.TempDir(), "idevid.crt", string(certsPEM(idevid)))}, s.line...)...)
	ok(t, append([]string{"device", "transition", serial, "provisioned"}, s.line...)...)
	pool := x509.NewCertPool()
	pool.AddCert(h.Root)
	client := func(cert tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	}
	url := s.m.device.Addr() + "/default/controller/v1/" + serial
	ctx := t.Context()
	var tenant int64
	tenants, err := sqlstore.NewTenantService(s.m.db).FindTenants(cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test")))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range tenants {
		if tn.Name == "default" {
			tenant = tn.ID
		}
	}
	refusals := func() []*cradle.AuditEntry {
		action := "device.auth.refused"
		entries, err := sqlstore.NewAuditService(s.m.db).FindAuditEntries(cradle.NewContextWithActor(ctx, cradle.SystemActor(tenant, "test")),
			cradle.AuditFilter{Action: &action, Limit: cradle.MaxPageSize})
		if err != nil {
			t.Fatal(err)
		}
		return entries
	}

	// The IDevID enrolls; it does not speak DDI.
	idClient := client(tls.Certificate{Certificate: [][]byte{idevid.Raw}, PrivateKey: devKey})
	resp, body := fetch(t, idClient, "GET", url, nil)
	wantStatus(t, "DDI poll with the IDevID", resp, body, http.StatusForbidden)
	if !strings.Contains(string(body), "LDevID") {
		t.Errorf("the IDevID refusal does not say what to use: %s", body)
	}
	if n := len(refusals()); n != 1 {
		t.Errorf("%d refusals audited after the IDevID poll, want 1", n)
	}

	estClient, err := est.NewClient(s.m.device.Addr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{idevid.Raw}, PrivateKey: devKey}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	opKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial, SerialNumber: serial}}, opKey)
	ldevid, err := estClient.SimpleEnroll(ctx, csr)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	ldClient := client(tls.Certificate{Certificate: [][]byte{ldevid.Raw, h.DeviceCA().Raw}, PrivateKey: opKey})
	resp, body = fetch(t, ldClient, "GET", url, nil)
	wantStatus(t, "DDI poll with the LDevID", resp, body, http.StatusOK)

	// Suspended: the listener's check refuses with 403, kept as such.
	ok(t, append([]string{"device", "transition", serial, "suspended", "--reason", "test"}, s.api...)...)
	resp, body = fetch(t, ldClient, "GET", url, nil)
	wantStatus(t, "DDI poll of a suspended device", resp, body, http.StatusForbidden)
	if !strings.Contains(string(body), "suspended") {
		t.Errorf("the refusal does not say the device is suspended: %s", body)
	}
	if got := refusals(); len(got) != 2 || !strings.Contains(string(got[0].Details)+string(got[1].Details), "is suspended") {
		t.Errorf("refusals audited: %+v", got)
	}
}
