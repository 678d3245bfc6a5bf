package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/est"
	"cradle/internal/factory"
	"cradle/internal/pki"
	"cradle/internal/testkit"
	"cradle/internal/webhook"
)

// factoryLine is a server with a test PKI whose keys are in SoftHSM2, a
// batch, and a station enrolled with its key in a second token.
type factoryLine struct {
	hsm        *testkit.SoftHSM
	dataDir    string
	m          *Main
	admin      string
	stationDir string
	release    string
	imageKey   [32]byte
	events     *eventSink
}

// eventSink is the MES: it receives the CloudEvents webhook.
type eventSink struct {
	mu     sync.Mutex
	ids    map[string]int
	types  map[string]int
	srv    *httptest.Server
	failed int // answers 503 to the first requests
}

func newEventSink(t *testing.T, secret string, failFirst int) *eventSink {
	s := &eventSink{ids: map[string]int{}, types: map[string]int{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !webhook.VerifySignature(body, r.Header.Get(webhook.SignatureHeader), secret) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.failed < failFirst {
			s.failed++
			http.Error(w, "MES busy", http.StatusServiceUnavailable)
			return
		}
		var ev struct {
			ID, Type, Subject, Specversion string
			Data                           cradle.TraceRecord
		}
		if err := json.Unmarshal(body, &ev); err != nil || ev.Specversion != "1.0" || ev.Data.Serial != ev.Subject {
			http.Error(w, "not a CloudEvent", http.StatusBadRequest)
			return
		}
		s.ids[ev.ID]++
		s.types[ev.Type]++
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *eventSink) count() (distinct, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.ids {
		distinct++
		total += n
	}
	return
}

// newFactoryLine sets a line up through the CLI, as an operator would.
func newFactoryLine(t *testing.T, quantity, reserve int) *factoryLine {
	t.Helper()
	requirePKCS11Build(t)
	isolateCLI(t)
	l := &factoryLine{hsm: testkit.NewSoftHSM(t, "cradle", "station"), dataDir: t.TempDir()}
	setPassphrase(t, "")
	ok(t, "pki", "init", "--data-dir", l.dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1",
		"--pkcs11-module", l.hsm.Module, "--pkcs11-token", "cradle", "--pkcs11-pin-source", "file:"+l.hsm.PINFile)

	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("mes-secret\n"), 0o600)
	l.events = newEventSink(t, "mes-secret", 3)
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.Device.Listen = l.dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.Device.MQTTListen = "127.0.0.1:0"
	cfg.Factory = FactoryConfig{WebhookURL: l.events.srv.URL, WebhookSecretFile: secretFile}
	var boot strings.Builder
	l.m = &Main{Config: cfg, Stdout: &boot, Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError}))}
	if err := l.m.Run(t.Context()); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { l.m.Close() })
	l.admin = tokenRE.FindStringSubmatch(boot.String())[1]
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}

	ok(t, append([]string{"factory", "mac-range", "add", "02:00:5e:10:00:00-02:00:5e:10:0f:ff"}, srv...)...)
	ok(t, append([]string{"factory", "batch", "create", "--id", "B-2648", "--model", "sensor-x", "--hw-rev", "C",
		"--quantity", fmt.Sprint(quantity), "--firmware", "1.4.2", "--profile", "test", "--serial-pattern", "SX-2648-{seq:05}"}, srv...)...)

	keys, err := readKeyMap(pkiDirOf(l.dataDir))
	if err != nil {
		t.Fatal(err)
	}
	pkiDir := pkiDirOf(l.dataDir)
	l.stationDir = filepath.Join(t.TempDir(), "station")
	// A production station refuses the test root, before asking the
	// server for anything.
	fails(t, "a production station refuses it", append([]string{"factory", "station", "enroll", "--dir", l.stationDir, "--name", "line-1",
		"--profile", "production", "--station-key", l.hsm.URI("station", "station-key"), "--manufacturing-ca-key", keys["manufacturing-ca"],
		"--root", filepath.Join(pkiDir, "root.crt"), "--manufacturing-ca", filepath.Join(pkiDir, "manufacturing-ca.crt")}, srv...)...)
	ok(t, append([]string{"factory", "station", "enroll", "--dir", l.stationDir, "--name", "line-1", "--profile", "test",
		"--station-key", l.hsm.URI("station", "station-key"), "--manufacturing-ca-key", keys["manufacturing-ca"],
		"--root", filepath.Join(pkiDir, "root.crt"), "--manufacturing-ca", filepath.Join(pkiDir, "manufacturing-ca.crt"),
		"--command-signer", filepath.Join(pkiDir, "command-signer.crt"), "--org", "Acme", "--reserve", fmt.Sprint(reserve)}, srv...)...)

	l.release, l.imageKey = writeRelease(t, t.TempDir(), "sensor-x", "1.4.2", "test")
	return l
}

// writeRelease writes a firmware release directory and returns it with
// its image-key hash.
func writeRelease(t *testing.T, dir, model, version, profile string) (string, [32]byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	img := make([]byte, 64<<10)
	rand.Read(img)
	files := map[string][]byte{
		"release.yaml":   []byte(fmt.Sprintf("model: %s\nversion: %s\nprofile: %s\nhardware_revisions: [B, C]\nimage: firmware.bin\nbootloader: bootloader.bin\nimage_key: image-key.pem\n", model, version, profile)),
		"firmware.bin":   img,
		"bootloader.bin": []byte("simulated bootloader\n"),
		"image-key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, sha256.Sum256(spki)
}

// makeUnits creates n simulated units under dir and returns their specs.
func makeUnits(t *testing.T, dir string, n int) []string {
	t.Helper()
	specs := make([]string, n)
	for i := range specs {
		d := filepath.Join(dir, fmt.Sprintf("unit-%03d", i))
		if _, err := hw.CreateSimDevice(d, fmt.Sprintf("UID-%08X", 0xC0DE0000+i)); err != nil {
			t.Fatal(err)
		}
		specs[i] = d
	}
	return specs
}

// TestFactoryBatchEndToEnd: a 100-unit batch through the real server and
// the CLI, the manufacturing CA and station keys in SoftHSM2, one unit's
// device key in swtpm; a unit whose fuse write fails midway and one that
// was provisioned already; the records synced, traced, exported and
// delivered to the MES webhook.
func TestFactoryBatchEndToEnd(t *testing.T) {
	l := newFactoryLine(t, 100, 16)
	tpm := testkit.StartSWTPM(t)
	unitsDir := t.TempDir()
	specs := makeUnits(t, unitsDir, 102)
	tpmUnit := specs[7]
	specs[7] += fmt.Sprintf(" key-store=tpm tpm=%s tpm-state=%s", tpm.Addr, filepath.Join(tpmUnit, "tpm"))

	// Unit 40's image-key-hash fuses hold a stray bit: programming them
	// fails midway through the fuse step.
	bad, err := hw.OpenSimDevice(specs[40])
	if err != nil {
		t.Fatal(err)
	}
	stray := make([]byte, 32)
	for i := range stray {
		if free := ^l.imageKey[i]; free != 0 {
			stray[i] = free & -free // the lowest bit the hash leaves clear
			break
		}
	}
	if err := bad.Fuses.Program(t.Context(), hw.FuseImageKeyHash, stray); err != nil {
		t.Fatal(err)
	}
	// Unit 90 was provisioned already: it is refused untouched.
	done, _ := hw.OpenSimDevice(specs[90])
	word, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	done.Fuses.Program(t.Context(), hw.FuseLifecycle, word)

	unitsFile := filepath.Join(t.TempDir(), "units")
	os.WriteFile(unitsFile, []byte(strings.Join(specs, "\n")+"\n"), 0o644)
	r := cradleCLI(t, "", "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release,
		"--operator", "ada", "--units", unitsFile, "--json")
	if r.code != 1 || !strings.Contains(r.stderr, "2 of 102 units were not provisioned") {
		t.Fatalf("provision: exit %d\nstderr: %s\nstdout: %s", r.code, r.stderr, lastLines(r.stdout, 5))
	}
	events := parseEvents(t, r.stdout)
	if len(events) != 103 {
		t.Fatalf("%d JSON lines, want 102 units and a summary", len(events))
	}
	sum := events[102]
	if sum.Event != "summary" || sum.OK != 100 || sum.Failed != 1 || sum.Skipped != 1 || sum.Synced == nil || sum.Synced.Uploaded+sum.Synced.Known != 101 || sum.Synced.Pending != 0 {
		t.Fatalf("summary: %+v, sync %+v", sum, sum.Synced)
	}
	if e := events[40]; e.Status != cradle.UnitFailed || e.Step != "fuses" || !strings.Contains(e.Error, "OTP bits cannot be cleared") {
		t.Errorf("unit 40: %+v", e)
	}
	if e := events[90]; e.Serial != "" || e.Step != "preflight" || !strings.Contains(e.Error, "provisioned already") {
		t.Errorf("unit 90: %+v", e)
	}
	t.Logf("100-unit batch: %.0f units/min, %.0f%% of the time in the HSM", sum.PerMin, 100*sum.HSMShare)

	// The failed unit: its key destroyed, its serial never provisioned.
	if _, err := bad.Keys.Key(t.Context(), factory.DeviceKeyName); err == nil {
		t.Error("the failed unit still has its device key")
	}
	srv := []string{"--server", l.m.Addr(), "--token", l.admin}
	failedSerial := events[40].Serial
	dev := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", failedSerial, "--json"}, srv...)...))
	if dev.Device.State != cradle.StateFactory {
		t.Errorf("failed unit %s is %s on the server, want factory", failedSerial, dev.Device.State)
	}
	// The refused unit was not touched.
	if _, _, err := done.FactoryData.Read(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := done.Keys.Key(t.Context(), factory.DeviceKeyName); err == nil {
		t.Error("the refused unit got a key")
	}

	// The batch on the server: 100 provisioned, 1 failed; serials and
	// MACs distinct.
	var b cradle.Batch
	json.Unmarshal([]byte(ok(t, append([]string{"factory", "batch", "show", "B-2648", "--json"}, srv...)...)), &b)
	if b.Provisioned != 100 || b.Failed != 1 || b.Allocated < 101 {
		t.Errorf("batch: %+v", b)
	}
	csvOut := ok(t, append([]string{"factory", "batch", "export", "B-2648", "--format", "csv"}, srv...)...)
	rows, err := csv.NewReader(strings.NewReader(csvOut)).ReadAll()
	if err != nil || len(rows) != 102 {
		t.Fatalf("CSV export: %d rows, %v", len(rows), err)
	}
	serials, macs := map[string]bool{}, map[string]bool{}
	for _, row := range rows[1:] {
		serials[row[1]], macs[row[2]] = true, true
	}
	if len(serials) != 101 || len(macs) != 101 {
		t.Errorf("export: %d serials and %d MACs, want 101 distinct of each", len(serials), len(macs))
	}

	// A provisioned unit, read back: fuses, slot A, locked identity.
	u0 := events[0]
	d0, _ := hw.OpenSimDevice(specs[0])
	f, _ := d0.Fuses.Read(t.Context())
	if !f.Bit(hw.FuseSecureBoot) || !f.Bit(hw.FuseDebugLock) || !bytes.Equal(f[hw.FuseImageKeyHash], l.imageKey[:]) {
		t.Errorf("unit 0 fuses: %x", f)
	}
	if lc, _ := hw.ParseLifecycle(f[hw.FuseLifecycle]); lc != hw.LifecycleProvisioned {
		t.Errorf("unit 0 lifecycle %s", lc)
	}
	files, locked, _ := d0.FactoryData.Read(t.Context())
	var info factory.DeviceInfo
	json.Unmarshal(files[factory.FileDeviceInfo], &info)
	if !locked || info.Serial != u0.Serial || info.MAC != u0.MAC || len(files[factory.FileCommandSigner]) == 0 {
		t.Errorf("unit 0 identity: locked %v, %+v", locked, info)
	}

	// The TPM unit's IDevID is for the key inside swtpm.
	tpmKeys := hw.NewTPMKeyStore(hw.TPMTCP(tpm.Addr), filepath.Join(tpmUnit, "tpm"))
	tk, err := tpmKeys.Key(t.Context(), factory.DeviceKeyName)
	if err != nil {
		t.Fatalf("TPM unit: %v", err)
	}
	d7, _ := hw.OpenSimDevice(tpmUnit)
	files7, _, _ := d7.FactoryData.Read(t.Context())
	blk, _ := pem.Decode(files7[factory.FileIDevID])
	idevid7, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !idevid7.PublicKey.(*ecdsa.PublicKey).Equal(tk.Public()) {
		t.Errorf("TPM unit IDevID is not for the TPM key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(tpmUnit, "keys", "idevid.key")); err == nil {
		t.Error("the TPM unit has a file key too")
	}
	if out := testkit.Run(t, testkit.NeedProgram(t, "tpm2_getcap"), "--tcti", tpm.TCTI(), "handles-persistent"); !strings.Contains(out, "0x81") {
		t.Errorf("tpm2_getcap lists no persistent key:\n%s", out)
	}

	// cradle device trace: from batch to today.
	trace := ok(t, append([]string{"device", "trace", u0.Serial}, srv...)...)
	for _, want := range []string{"B-2648", "sensor-x", "line-1", "ada", "provisioned", "1.4.2", u0.MAC} {
		if !strings.Contains(trace, want) {
			t.Errorf("device trace lacks %q:\n%s", want, trace)
		}
	}

	// The MES got every event once (after three 503s), signed.
	deadline := time.Now().Add(30 * time.Second)
	for {
		distinct, total := l.events.count()
		if distinct == 101 {
			if total != 101 {
				t.Errorf("MES got %d deliveries of 101 events", total)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("MES got %d of 101 events", distinct)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l.events.types[cradle.EventUnitFailed] != 1 || l.events.types[cradle.EventUnitProvisioned] != 100 {
		t.Errorf("event types: %v", l.events.types)
	}

	// The provisioned unit enrolls with its factory identity (the key in
	// its own key store) and is deployed; a production server refuses it.
	enroll := func(m *Main, root *x509.Certificate) (*x509.Certificate, error) {
		devKey, err := d0.Keys.Key(t.Context(), factory.DeviceKeyName)
		if err != nil {
			t.Fatal(err)
		}
		var chain [][]byte
		for rest := files[factory.FileIDevID]; ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			chain = append(chain, blk.Bytes)
		}
		pool := x509.NewCertPool()
		pool.AddCert(root)
		c, err := est.NewClient(m.device.Addr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: devKey}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		opKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: u0.Serial, SerialNumber: u0.Serial}}, opKey)
		return c.SimpleEnroll(t.Context(), csr)
	}
	testH, err := pki.LoadHierarchy(pkiDirOf(l.dataDir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enroll(l.m, testH.Root); err != nil {
		t.Fatalf("the provisioned unit cannot enroll with its own server: %v", err)
	}
	dev = decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", u0.Serial, "--json"}, srv...)...))
	if dev.Device.State != cradle.StateDeployed {
		t.Errorf("after enrolling, unit 0 is %s", dev.Device.State)
	}
	setPassphrase(t, pkiTestPassphrase)
	prodDir := t.TempDir()
	ok(t, "pki", "init", "--data-dir", prodDir, "--profile", "production", "--org", "Acme", "--hostname", "127.0.0.1")
	pcfg := DefaultConfig()
	pcfg.DataDir, pcfg.Listen, pcfg.Device.Listen = prodDir, "127.0.0.1:0", "127.0.0.1:0"
	pcfg.Device.MQTTListen = "127.0.0.1:0"
	pm := &Main{Config: pcfg}
	if err := pm.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	prodH, _ := pki.LoadHierarchy(pkiDirOf(prodDir))
	if _, err := enroll(pm, prodH.Root); err == nil {
		t.Error("a production server enrolled a unit provisioned under the test root")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("production server: %v, want the test certificate refused", err)
	} else {
		t.Logf("production server refuses the test unit: %v", err)
	}

	// Production firmware at a test station, and firmware for another
	// model, are refused before any unit is touched.
	prod, _ := writeRelease(t, t.TempDir(), "sensor-x", "1.4.2", "production")
	fails(t, "production firmware refused by a test station", "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648",
		"--firmware", prod, "--operator", "ada", "--device", specs[101])
	other, _ := writeRelease(t, t.TempDir(), "meter-y", "1.4.2", "test")
	fails(t, "firmware is for model meter-y", "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648",
		"--firmware", other, "--operator", "ada", "--device", specs[101])
	if _, err := d0.Keys.Key(t.Context(), factory.DeviceKeyName); err != nil {
		t.Errorf("unit 0 lost its key: %v", err)
	}
}

func parseEvents(t *testing.T, out string) []factory.Event {
	t.Helper()
	var evs []factory.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e factory.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
