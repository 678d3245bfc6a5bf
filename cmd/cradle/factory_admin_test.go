package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/hex"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// TestFactoryCommands runs the factory commands and device trace against
// the API over a SQLite store and a test PKI, with units provisioned
// through the API as a station does.
func TestFactoryCommands(t *testing.T) {
	isolateCLI(t)
	ctx := t.Context()
	_, auditKey, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: auditKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tokens := sqlstore.NewTokenService(db)
	admin, err := tokens.Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]crypto.Signer{}
	h, err := pki.Init(ctx, pki.InitOptions{Profile: pki.ProfileTest, Org: "Acme", Hostnames: []string{"127.0.0.1"},
		Keys: func(name string) (crypto.Signer, error) {
			if k, ok := keys[name]; ok {
				return k, nil
			}
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			keys[name] = k
			return k, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	d := &deviceListener{authority: &pki.Authority{Hierarchy: h, Signers: keys, URLHost: "127.0.0.1"}}
	srv := httptest.NewServer((&httpapi.Server{Devices: sqlstore.NewDeviceService(db), Tokens: tokens, Audit: sqlstore.NewAuditService(db),
		Certificates: sqlstore.NewCertificateService(db), Factory: sqlstore.NewFactoryService(db),
		StationIssuer: d.issueStation, Profile: cradle.Profile(h.Profile())}).Handler())
	t.Cleanup(srv.Close)
	flags := []string{"--server", srv.URL, "--token", admin}
	cli := func(args ...string) string {
		t.Helper()
		return ok(t, append(args, flags...)...)
	}

	// Batches.
	out := cli("factory", "batch", "create", "--id", "B-2648", "--model", "gw-100", "--hw-rev", "c", "--quantity", "3",
		"--firmware", "2.1.0", "--profile", "test", "--serial-pattern", "CR-2648-{seq:05}")
	for _, want := range []string{"id:", "B-2648", "serial pattern:", "CR-2648-{seq:05}", "open:"} {
		if !strings.Contains(out, want) {
			t.Errorf("batch create printed:\n%s\nwithout %q", out, want)
		}
	}
	fails(t, "this server's PKI is test; production batches belong on a production deployment", append([]string{"factory", "batch", "create", "--id", "B-P",
		"--model", "gw-100", "--hw-rev", "c", "--quantity", "3", "--firmware", "2.1.0", "--profile", "production", "--serial-pattern", "P-{seq}"}, flags...)...)
	fails(t, `unknown profile "prod"`, append([]string{"factory", "batch", "create", "--id", "B-P",
		"--model", "gw-100", "--hw-rev", "c", "--quantity", "3", "--firmware", "2.1.0", "--profile", "prod", "--serial-pattern", "P-{seq}"}, flags...)...)
	fails(t, `required flag(s) "firmware"`, append([]string{"factory", "batch", "create", "--id", "B-P", "--model", "gw-100", "--hw-rev", "c",
		"--quantity", "3", "--profile", "test", "--serial-pattern", "P-{seq}"}, flags...)...)
	b := decodeJSON[cradle.Batch](t, cli("factory", "batch", "create", "--id", "B-2649", "--model", "gw-100", "--hw-rev", "d", "--quantity", "10",
		"--firmware", "2.2.0", "--profile", "test", "--serial-pattern", "CR-2649-{seq:05}", "--json"))
	if b.ID != "B-2649" || b.Quantity != 10 || b.Profile != cradle.ProfileTest {
		t.Errorf("batch create --json: %+v", b)
	}
	rows := tableRows(cli("factory", "batch", "list"))
	if got := column(rows, 0); !slices.Equal(got, []string{"B-2649", "B-2648"}) || rows[0][0] != "ID" {
		t.Errorf("batch list ids %v (header %v)", got, rows[0])
	}
	if l := decodeJSON[batchList](t, cli("factory", "batch", "list", "--all", "--limit", "1", "--json")); len(l.Batches) != 2 || l.NextCursor != "" {
		t.Errorf("batch list --all --limit 1: %d batches, cursor %q", len(l.Batches), l.NextCursor)
	}
	fails(t, `batch "B-NONE" not found`, append([]string{"factory", "batch", "show", "B-NONE"}, flags...)...)

	// The MAC pool.
	out = cli("factory", "mac-range", "add", "02-00-5E-10-00-00-02-00-5E-10-00-FF")
	if out != "added 02:00:5e:10:00:00-02:00:5e:10:00:ff (256 addresses)\n" {
		t.Errorf("mac-range add printed %q", out)
	}
	fails(t, "overlaps", append([]string{"factory", "mac-range", "add", "02:00:5e:10:00:80-02:00:5e:10:01:00"}, flags...)...)
	fails(t, "invalid MAC range", append([]string{"factory", "mac-range", "add", "02:00:5e:10:00:80"}, flags...)...)

	// A station, enrolled through the API as `factory station enroll`
	// does, provisions two units and fails one.
	stationKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "line-1"}}, stationKey)
	enrolled, err := httpapi.NewClient(srv.URL, admin, nil).EnrollStation(ctx, "line-1", cradle.ProfileTest,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	if err != nil {
		t.Fatal(err)
	}
	line := httpapi.NewClient(srv.URL, enrolled.Token, nil)
	units, err := line.AllocateUnits(ctx, "B-2648", "line-1", 2)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 2, 9, 30, 0, 0, time.UTC)
	idevKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idevid, err := pki.Issue(ctx, h.ManufacturingCA, keys[pki.NameManufacturingCA], idevKey.Public(), &x509.Certificate{},
		append(pki.IDevID(pki.IDevIDConfig{}, units[0].Serial, nil, start), pki.KeyPolicy())...)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(idevid.Raw)
	good := &cradle.TraceRecord{ID: "rec-1", Batch: "B-2648", Station: "line-1", Operator: "ann", Profile: cradle.ProfileTest,
		Serial: units[0].Serial, MAC: units[0].MAC, HardwareUID: "uid-0001", Model: "gw-100", HardwareRevision: "c", Status: cradle.UnitProvisioned,
		StartedAt: start, FinishedAt: start.Add(95 * time.Second), FirmwareVersion: "2.1.0", FirmwareDigest: strings.Repeat("ab", 32),
		BootloaderDigest: strings.Repeat("cd", 32), IDevIDSerial: cradle.SerialHex(idevid.SerialNumber), IDevIDFingerprint: hex.EncodeToString(sum[:]),
		IDevID: idevid.Raw, Fuses: map[string]string{"secure_boot": "01", "debug_lock": "01", "image_key_hash": "9f86d081", "lifecycle": "02", "anti_rollback": "00"},
		Tests: []cradle.TestResult{{Name: "flash", Passed: true}, {Name: "radio", Passed: true}}}
	bad := &cradle.TraceRecord{ID: "rec-2", Batch: "B-2648", Station: "line-1", Operator: "bob", Profile: cradle.ProfileTest,
		Serial: units[1].Serial, MAC: units[1].MAC, Model: "gw-100", HardwareRevision: "c", Status: cradle.UnitFailed,
		StartedAt: start.Add(2 * time.Minute), FinishedAt: start.Add(3 * time.Minute), FailedStep: "fuses", Reason: "=debug_lock read back 00",
		Tests: []cradle.TestResult{{Name: "flash", Passed: false, Detail: "verify mismatch"}}}
	for _, r := range []*cradle.TraceRecord{good, bad} {
		signed, err := cradle.SignTrace(r, stationKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := line.UploadTrace(ctx, signed); err != nil {
			t.Fatal(err)
		}
	}

	// Stations.
	rows = tableRows(cli("factory", "station", "list"))
	if len(rows) != 2 || rows[1][0] != "line-1" || rows[1][1] != "test" || rows[1][2] != enrolled.Station.CertSerial {
		t.Errorf("station list rows %v", rows)
	}
	if s := decodeJSON[cradle.Station](t, cli("factory", "station", "show", "line-1", "--json")); s.Fingerprint != enrolled.Station.Fingerprint {
		t.Errorf("station show --json: %+v", s)
	}
	if out := cli("factory", "station", "show", "line-1"); !strings.Contains(out, enrolled.Station.Fingerprint) || !strings.Contains(out, enrolled.Station.TokenID) {
		t.Errorf("station show:\n%s", out)
	}
	fails(t, `station "line-9" not found`, append([]string{"factory", "station", "show", "line-9"}, flags...)...)

	// The batch's counts and exports.
	if b := decodeJSON[cradle.Batch](t, cli("factory", "batch", "show", "B-2648", "--json")); b.Allocated != 2 || b.Provisioned != 1 || b.Failed != 1 || b.Open() != 2 {
		t.Errorf("batch show --json: %+v", b)
	}
	file := filepath.Join(t.TempDir(), "B-2648.csv")
	if out := cli("factory", "batch", "export", "B-2648", "--format", "csv", "-o", file); out != "" {
		t.Errorf("export -o printed %q", out)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	records, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(records) != 3 {
		t.Fatalf("CSV export: %d rows, %v", len(records), err)
	}
	header := records[0]
	cell := func(row int, col string) string { return records[row][slices.Index(header, col)] }
	if cell(1, "serial") != units[0].Serial || cell(1, "idevid_fingerprint") != good.IDevIDFingerprint || cell(1, "fuse_image_key_hash") != "9f86d081" ||
		cell(2, "status") != "failed" || cell(2, "reason") != "'=debug_lock read back 00" || cell(2, "tests") != "flash=fail" {
		t.Errorf("CSV export rows %q", records[1:])
	}
	js := decodeJSON[[]cradle.TraceRecord](t, cli("factory", "batch", "export", "B-2648", "--format", "json"))
	if len(js) != 2 || js[0].ID != "rec-1" || js[1].Reason != bad.Reason {
		t.Errorf("JSON export: %+v", js)
	}
	fails(t, `invalid --format "xml"`, append([]string{"factory", "batch", "export", "B-2648", "--format", "xml"}, flags...)...)
	missing := filepath.Join(t.TempDir(), "none.csv")
	fails(t, `batch "B-NONE" not found`, append([]string{"factory", "batch", "export", "B-NONE", "-o", missing}, flags...)...)
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("a failed export left %s behind: %v", missing, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(missing), ".*")); len(left) != 0 {
		t.Errorf("a failed export left temporary files: %v", left)
	}

	// The unit's chain, for people and as JSON.
	out = cli("device", "trace", units[0].Serial)
	for _, want := range []string{
		"unit " + units[0].Serial + ": model gw-100, hardware revision c, state provisioned",
		"batch B-2648: model gw-100, hardware revision c, firmware 2.1.0, profile test",
		"factory attempts: 1",
		"1. provisioned",
		"station line-1 (test, certificate " + enrolled.Station.CertSerial + "), operator ann",
		"2026-11-02T09:30:00Z to 2026-11-02T09:31:35Z",
		"firmware 2.1.0 sha256 " + good.FirmwareDigest + ", bootloader sha256 " + good.BootloaderDigest,
		"IDevID serial " + good.IDevIDSerial + ", fingerprint " + good.IDevIDFingerprint,
		"fuses: secure_boot=01 debug_lock=01 image_key_hash=9f86d081 lifecycle=02 anti_rollback=00",
		"tests: flash=pass radio=pass",
		"certificates: 1",
		"idevid  " + good.IDevIDSerial,
		"no expiry",
		"created -> factory",
		"factory -> provisioned by token:",
		"now provisioned",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("device trace lacks %q:\n%s", want, out)
		}
	}
	out = cli("device", "trace", units[1].Serial)
	if !strings.Contains(out, "1. failed at fuses: =debug_lock read back 00") || !strings.Contains(out, "tests: flash=fail (verify mismatch)") ||
		!strings.Contains(out, "certificates: 0") || !strings.Contains(out, "now factory") {
		t.Errorf("device trace of the failed unit:\n%s", out)
	}
	ut := decodeJSON[cradle.UnitTrace](t, cli("device", "trace", units[0].Serial, "--json"))
	if ut.Device.Serial != units[0].Serial || ut.Batch.ID != "B-2648" || len(ut.Records) != 1 || ut.Records[0].Record.ID != "rec-1" ||
		len(ut.Certificates) != 1 || len(ut.Stations) != 1 || len(ut.History) != 2 {
		t.Errorf("device trace --json: %+v", ut)
	}
	fails(t, `device "SN-NONE" not found`, append([]string{"device", "trace", "SN-NONE"}, flags...)...)

	// A device registered by hand has no factory chain.
	if _, err := httpapi.NewClient(srv.URL, admin, nil).CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-HAND", Model: "gw-100"}); err != nil {
		t.Fatal(err)
	}
	if out := cli("device", "trace", "SN-HAND"); !strings.Contains(out, "batch: none") || !strings.Contains(out, "factory attempts: 0") {
		t.Errorf("device trace of a hand-registered device:\n%s", out)
	}
}

func TestParseMACRange(t *testing.T) {
	for in, want := range map[string][2]string{
		"02:00:5e:10:00:00-02:00:5e:10:ff:ff": {"02:00:5e:10:00:00", "02:00:5e:10:ff:ff"},
		"02-00-5E-10-00-00-02-00-5E-10-FF-FF": {"02-00-5E-10-00-00", "02-00-5E-10-FF-FF"},
		"02:00:5e:10:00:00":                   {},
		"02:00:5e:10:00:00-":                  {},
		"-02:00:5e:10:00:00":                  {},
		"x-y":                                 {},
	} {
		first, last, err := parseMACRange(in)
		if want == ([2]string{}) {
			if err == nil {
				t.Errorf("parseMACRange(%q) = %q, %q; want an error", in, first, last)
			}
			continue
		}
		if err != nil || first != want[0] || last != want[1] {
			t.Errorf("parseMACRange(%q) = %q, %q, %v; want %q", in, first, last, err, want)
		}
	}
}

// TestServeWiresFactory checks what cradle serve gives the factory
// routes: the store, station certificates from the data directory's PKI
// and its profile; and without a PKI, refusals that say what to do.
func TestServeWiresFactory(t *testing.T) {
	isolateCLI(t)
	ctx := t.Context()

	// Without a PKI.
	m0, out0 := startServer(t, t.TempDir())
	cl := httpapi.NewClient(m0.Addr(), tokenRE.FindStringSubmatch(out0)[1], nil)
	_, err := cl.CreateBatch(ctx, cradle.BatchCreate{ID: "B-1", Model: "gw", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1",
		Profile: cradle.ProfileTest, SerialPattern: "T-{seq}"})
	if cradle.ErrorCode(err) != cradle.ECONFLICT || !strings.Contains(cradle.ErrorMessage(err), "cradle pki init") {
		t.Errorf("batch on a server without a PKI: %v", err)
	}

	// With a production PKI.
	setPassphrase(t, pkiTestPassphrase)
	dataDir := t.TempDir()
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "production", "--org", "Acme", "--hostname", "127.0.0.1")
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.Device.Listen = dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.Device.MQTTListen = "127.0.0.1:0"
	var boot strings.Builder
	m := &Main{Config: cfg, Stdout: &boot}
	if err := m.Run(ctx); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	cl = httpapi.NewClient(m.Addr(), tokenRE.FindStringSubmatch(boot.String())[1], nil)
	_, err = cl.CreateBatch(ctx, cradle.BatchCreate{ID: "B-1", Model: "gw", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1",
		Profile: cradle.ProfileTest, SerialPattern: "T-{seq}"})
	if cradle.ErrorMessage(err) != "this server's PKI is production; test batches belong on a test deployment" {
		t.Errorf("test batch on a production server: %v", err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	got, err := cl.EnrollStation(ctx, "line-1", cradle.ProfileProduction, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	if err != nil {
		t.Fatal(err)
	}
	h, err := pki.LoadHierarchy(pkiDirOf(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(got.Certificate))
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(h.Root)
	inter.AppendCertsFromPEM([]byte(got.Chain))
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the station certificate does not verify to the data directory's root: %v", err)
	}
	if pki.IsTestCertificate(cert) || cert.Issuer.String() != h.DeviceCA().Subject.String() {
		t.Errorf("station certificate issued by %s, test mark %v", cert.Issuer, pki.IsTestCertificate(cert))
	}
}
