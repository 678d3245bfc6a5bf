package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"cradle"
	"cradle/internal/kms"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// TestPKIRetireCA: after rotate-device-ca, retire-ca refuses the current
// CA and, with the count, the old one while one of its LDevIDs is valid;
// ca-status says when it can be retired. Once that certificate is
// revoked, and device-ca-2 has issued a certificate after the last of
// device-ca's (before, a server not restarted after the rotation might
// still issue from it), retire-ca retires it: the PKI directory records it, EST
// cacerts and the listener's accepted issuers leave it out, ca-status
// shows it retired, and retiring it again is refused.
func TestPKIRetireCA(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, "")
	dataDir := t.TempDir()
	m, _ := startServer(t, dataDir) // the store and audit key
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme", "--hostname", "devices.test", "--insecure-plaintext-keys")
	if r := cradleCLI(t, "", "pki", "rotate-device-ca", "--data-dir", dataDir, "--insecure-plaintext-keys"); r.code != 0 {
		t.Fatalf("rotate-device-ca: %d %s", r.code, r.stderr)
	}
	dir := pkiDirOf(dataDir)
	h, err := pki.LoadHierarchy(dir)
	if err != nil {
		t.Fatal(err)
	}

	// One device holds an LDevID of the old CA.
	ctx := context.Background()
	oldKey, err := kms.Open(ctx, filepath.Join(dir, "keys", "device-ca.key"), kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ldevid, err := pki.Issue(ctx, h.DeviceCAs[0], oldKey, devKey.Public(), &x509.Certificate{},
		append(pki.LDevID(pki.LDevIDPolicy{}, "default", "SN-1", time.Now()), pki.KeyPolicy())...)
	if err != nil {
		t.Fatal(err)
	}
	factory := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleFactory, Kind: "test", ID: "line-1"})
	if _, err := sqlstore.NewDeviceService(m.db).CreateDevice(factory, cradle.DeviceCreate{Serial: "SN-1", Model: "gw-100", State: cradle.StateFactory}); err != nil {
		t.Fatal(err)
	}
	certs := sqlstore.NewCertificateService(m.db)
	rec, err := certs.RecordCertificate(factory, "SN-1", cradle.CertLDevID, ldevid)
	if err != nil {
		t.Fatal(err)
	}

	fails(t, "device-ca-2 is the current device CA", "pki", "retire-ca", "device-ca-2", "--data-dir", dataDir)
	fails(t, `"device-ca-9" is not a device CA`, "pki", "retire-ca", "device-ca-9", "--data-dir", dataDir)
	fails(t, "device-ca cannot be retired: 1 unexpired, unrevoked certificate(s) chain to it, the last expiring at "+ldevid.NotAfter.UTC().Format(time.RFC3339),
		"pki", "retire-ca", "device-ca", "--data-dir", dataDir)
	fails(t, "--data-dir is required", "pki", "retire-ca", "device-ca")
	st := decodeJSON[struct {
		DeviceCAs []pki.RetirementStatus `json:"device_cas"`
	}](t, ok(t, "pki", "ca-status", "--data-dir", dataDir, "--json")).DeviceCAs
	if len(st) != 2 || st[0].Live != 1 || st[0].Retirable || st[0].RetirableAt == nil || !st[0].RetirableAt.Equal(ldevid.NotAfter) || !st[1].Current {
		t.Fatalf("ca-status before: %+v", st)
	}

	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	if _, err := certs.RevokeCertificate(admin, rec.Serial, cradle.ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if rows := tableRows(ok(t, "pki", "ca-status", "--data-dir", dataDir)); len(rows) != 3 || rows[1][0] != "device-ca" || rows[1][len(rows[1])-1] != "now" {
		t.Fatalf("ca-status after the revocation: %q", rows)
	}
	// That certificate was recorded after the rotation and device-ca-2
	// has issued none since: a server started before the rotation still
	// issues from device-ca. Once device-ca-2 issues one, it does not.
	fails(t, "device-ca cannot be retired: it issued 1 certificate(s) after device-ca-2 replaced it at "+h.DeviceCAs[1].NotBefore.UTC().Format(time.RFC3339),
		"pki", "retire-ca", "device-ca", "--data-dir", dataDir)
	newKey, err := kms.Open(ctx, filepath.Join(dir, "keys", "device-ca-2.key"), kms.Options{})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := pki.Issue(ctx, h.DeviceCAs[1], newKey, devKey.Public(), &x509.Certificate{},
		append(pki.LDevID(pki.LDevIDPolicy{}, "default", "SN-2", time.Now()), pki.KeyPolicy())...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqlstore.NewDeviceService(m.db).CreateDevice(factory, cradle.DeviceCreate{Serial: "SN-2", Model: "gw-100", State: cradle.StateFactory}); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.RecordCertificate(factory, "SN-2", cradle.CertLDevID, renewed); err != nil {
		t.Fatal(err)
	}
	r := cradleCLI(t, "", "pki", "retire-ca", "device-ca", "--data-dir", dataDir)
	if r.code != 0 || r.stdout != "device-ca\n" {
		t.Fatalf("retire-ca: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	fails(t, "device-ca was retired at", "pki", "retire-ca", "device-ca", "--data-dir", dataDir)

	h, err = pki.LoadHierarchy(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !h.IsRetired("device-ca") || h.IsRetired("device-ca-2") {
		t.Fatalf("retired after reload: %v", h.Retired)
	}
	if _, ok := h.AcceptedCAs()["device-ca"]; ok {
		t.Error("the retired CA is still accepted")
	}
	for _, c := range h.CACerts() {
		if c.Equal(h.DeviceCAs[0]) {
			t.Error("cacerts still serves the retired CA")
		}
	}
	// A chain through it is refused; one through the current CA is not.
	if err := h.CheckNotRetired([]*x509.Certificate{ldevid, h.DeviceCAs[0], h.Root}); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("a chain through the retired CA: %v", err)
	}
	if err := h.CheckNotRetired([]*x509.Certificate{h.OCSPSigners["device-ca-2"], h.DeviceCAs[1], h.Root}); err != nil {
		t.Errorf("a chain through the current CA: %v", err)
	}
	st = decodeJSON[struct {
		DeviceCAs []pki.RetirementStatus `json:"device_cas"`
	}](t, ok(t, "pki", "ca-status", "--data-dir", dataDir, "--json")).DeviceCAs
	if st[0].RetiredAt == nil || st[0].Retirable {
		t.Fatalf("ca-status after retirement: %+v", st[0])
	}
}
