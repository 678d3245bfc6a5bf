package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/est"
	"cradle/internal/ota"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"
	"cradle/internal/testkit"
	"cradle/internal/tuf"
)

// enrolledDevice is a device enrolled over EST on a pkiServer: an HTTPS
// client with its LDevID, its files for mosquitto, and a client that
// trusts the server but has no certificate (a download client).
type enrolledDevice struct {
	serial            string
	client, anonymous *http.Client
	chainFile         string
	keyFile           string
}

// enrollDevice creates serial (model gw-100), records its IDevID and
// enrolls it over EST, which deploys it.
func enrollDevice(t *testing.T, s *pkiServer, serial string) *enrolledDevice {
	t.Helper()
	return enrollDeviceWith(t, s, s.line, serial)
}

// enrollDeviceWith is enrollDevice with line, the --server and --token of
// a factory token of the device's tenant.
func enrollDeviceWith(t *testing.T, s *pkiServer, line []string, serial string) *enrolledDevice {
	t.Helper()
	ok(t, append([]string{"device", "create", "--serial", serial, "--model", "gw-100", "--label", "env=prod"}, line...)...)
	h, devKey, idevid := newIDevID(t, s.dataDir, serial)
	dir := t.TempDir()
	file := func(name string, data []byte) string { return writeFile(t, dir, name, string(data)) }
	ok(t, append([]string{"pki", "record", "--device", serial, file("idevid.crt", certsPEM(idevid))}, line...)...)
	ok(t, append([]string{"device", "transition", serial, "provisioned"}, line...)...)
	pool := x509.NewCertPool()
	pool.AddCert(h.Root)
	estClient, err := est.NewClient(s.m.device.Addr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{idevid.Raw}, PrivateKey: devKey}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	opKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial, SerialNumber: serial}}, opKey)
	ldevid, err := estClient.SimpleEnroll(t.Context(), csr)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(opKey)
	return &enrolledDevice{
		serial:    serial,
		chainFile: file("ldevid.crt", append(certsPEM(ldevid), certsPEM(h.DeviceCA())...)),
		keyFile:   file("ldevid.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
			Certificates: []tls.Certificate{{Certificate: [][]byte{ldevid.Raw, h.DeviceCA().Raw}, PrivateKey: opKey}}}}},
		anonymous: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
}

// fetch does a request and returns the response with its body read.
func fetch(t *testing.T, c *http.Client, method, url string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// wantStatus fails unless resp has status want.
func wantStatus(t *testing.T, what string, resp *http.Response, body []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("%s: status %d, want %d: %s", what, resp.StatusCode, want, clipText(string(body), 300))
	}
}

// publishTUF makes a TUF repository for tenant in dataDir's layout with
// targets (path → content), signed by fresh keys.
func publishTUF(t *testing.T, dataDir, tenant string, targets map[string][]byte) {
	t.Helper()
	key := func() crypto.Signer { _, k, _ := ed25519.GenerateKey(rand.Reader); return k }
	root := key()
	signers := tuf.Signers{Root: []crypto.Signer{root}, Targets: key(), Snapshot: key(), Timestamp: key()}
	repo, err := tuf.Init(t.Context(), tuf.Options{Store: tuf.DirStore{Dir: ota.RepositoryDir(dataDir, tenant)}},
		tuf.RootSpec{Keys: []crypto.PublicKey{root.Public()}, Threshold: 1}, signers)
	if err != nil {
		t.Fatal(err)
	}
	for path, data := range targets {
		sum := sha256.Sum256(data)
		parts := strings.Split(path, "/")
		if err := repo.AddTarget(path, tuf.Target{Length: int64(len(data)), SHA256: sum[:],
			Custom: tuf.Custom{Model: parts[0], HardwareRevisions: []string{"a"}, Version: parts[1], SecurityCounter: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := repo.Publish(t.Context(), signers); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceUpdateEndToEnd: the real server with its PKI and a plain
// artifact listener; a device enrolled over EST. With nothing pending it
// gets 204. An operator's release (a blob in the artifact store, a
// record, a TUF target) and rollout give the device its update document;
// it downloads the image at the signed URL in two halves (resume with
// Range) and the digest matches; the accounting shows the bytes and one
// complete download; the plain listener serves the same URL; a tampered
// or expired URL is refused (403). The device reads its tenant's TUF
// metadata and targets (Range too) but not another tenant's blob. Its
// status reports land as rollout events, its software report on its
// record. Over MQTT it gets the update notice when it subscribes and when
// the scheduler notifies it.
// It runs on SQLite, and on PostgreSQL too when CRADLE_TEST_POSTGRES is
// set.
func TestDeviceUpdateEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the server with a PKI")
	}
	t.Run("sqlite", func(t *testing.T) { deviceUpdateEndToEnd(t, "") })
	if base := os.Getenv("CRADLE_TEST_POSTGRES"); base != "" {
		t.Run("postgres", func(t *testing.T) { deviceUpdateEndToEnd(t, postgresSchema(t, base)) })
	}
}

// postgresSchema makes a schema of its own on the server base names,
// dropped after the test, and returns the store DSN that uses it.
func postgresSchema(t *testing.T, base string) string {
	t.Helper()
	return storetest.PostgresSchema(t, base, "cradle_e2e_")
}

func deviceUpdateEndToEnd(t *testing.T, storeDSN string) {
	s := startPKIServer(t, func(c *Config) { c.Device.ArtifactListen, c.Store = "127.0.0.1:0", storeDSN })
	m := s.m
	dev := enrollDevice(t, s, "SN-U1")
	base := m.device.Addr()
	ctx := t.Context()

	resp, body := fetch(t, dev.client, "GET", base+"/device/v1/update", nil)
	wantStatus(t, "GET /device/v1/update with nothing pending", resp, body, http.StatusNoContent)
	resp, body = fetch(t, dev.anonymous, "GET", base+"/device/v1/update", nil)
	wantStatus(t, "GET /device/v1/update without a certificate", resp, body, http.StatusUnauthorized)

	// The operator's release: bytes in the artifact store, a signed
	// record, a TUF target.
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test"))
	tenants := sqlstore.NewTenantService(m.db)
	def, err := tenants.FindTenantByName(sys, cradle.DefaultTenantName)
	if err != nil {
		t.Fatal(err)
	}
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: def.ID, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	image := make([]byte, 300_000)
	rand.Read(image)
	sum := sha256.Sum256(image)
	imageHex := hex.EncodeToString(sum[:])
	store := openArtifactStore(Config{DataDir: s.dataDir})
	if _, err := store.Put(ctx, bytes.NewReader(image), artifact.Expect{Digest: sum, Size: int64(len(image))}); err != nil {
		t.Fatal(err)
	}
	const targetPath = "gw-100/1.1.0/app.bin"
	publishTUF(t, s.dataDir, cradle.DefaultTenantName, map[string][]byte{targetPath: image})
	releases := sqlstore.NewReleaseService(m.db)
	rel, err := releases.CreateRelease(admin, cradle.ReleaseCreate{Model: "gw-100", Version: "1.1.0", Kind: cradle.ReleaseFile,
		SHA256: imageHex, Size: int64(len(image)), FileName: "app.bin", SecurityCounter: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rel, err = releases.MarkReleaseSigned(admin, rel.ID, targetPath, nil); err != nil {
		t.Fatal(err)
	}

	// MQTT: the device subscribes to its update topic before the rollout.
	sub := testkit.NeedProgram(t, "mosquitto_sub")
	before := subscribeNotice(t, s, dev, sub)

	ro, err := sqlstore.NewRolloutService(m.db).CreateRollout(admin, cradle.RolloutSpec{ReleaseID: rel.ID,
		Target: cradle.RolloutTarget{Serials: []string{"SN-U1"}}, Phases: []cradle.RolloutPhase{{Percent: 100}},
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	// The scheduler tells the started device, which was subscribed
	// already; a device that subscribes now gets the notice at once.
	m.device.notifyUpdates(ctx, def.ID, []string{"SN-U1", "SN-NOT-CONNECTED"})
	checkNotice(t, <-before, ro.ID)
	checkNotice(t, <-subscribeNotice(t, s, dev, sub), ro.ID)

	// The update document.
	resp, body = fetch(t, dev.client, "GET", base+"/device/v1/update?running="+strings.Repeat("0", 64), nil)
	wantStatus(t, "GET /device/v1/update", resp, body, http.StatusOK)
	var doc updateDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.RolloutID != ro.ID || doc.Attempt != 1 || doc.Release.ID != rel.ID || doc.Release.SHA256 != imageHex ||
		doc.Release.Size != int64(len(image)) || doc.Release.TargetPath != targetPath || doc.Release.Model != "gw-100" ||
		doc.Artifact.SHA256 != imageHex || doc.Artifact.Size != int64(len(image)) || doc.Delta != nil ||
		doc.TUF.MetadataURL != base+"/device/v1/tuf/" || !strings.HasPrefix(doc.Artifact.URL, base+"/artifacts/"+imageHex+"?") {
		t.Fatalf("update document %s", body)
	}
	for _, q := range []string{"?running=xyz", "?running=" + strings.Repeat("A", 64), "?other=1", "?running=" + strings.Repeat("0", 64) + "&running=" + strings.Repeat("0", 64)} {
		resp, body = fetch(t, dev.client, "GET", base+"/device/v1/update"+q, nil)
		wantStatus(t, "GET /device/v1/update"+q, resp, body, http.StatusBadRequest)
	}

	// The download, without a client certificate, in two halves.
	half := len(image) / 2
	resp, first := fetch(t, dev.anonymous, "GET", doc.Artifact.URL, nil, "Range", fmt.Sprintf("bytes=0-%d", half-1))
	wantStatus(t, "first half", resp, first, http.StatusPartialContent)
	resp, rest := fetch(t, dev.anonymous, "GET", doc.Artifact.URL, nil, "Range", fmt.Sprintf("bytes=%d-", half), "If-Range", resp.Header.Get("ETag"))
	wantStatus(t, "second half", resp, rest, http.StatusPartialContent)
	if got := sha256.Sum256(append(first, rest...)); got != sum {
		t.Fatal("the resumed download's digest differs from the image's")
	}
	updates := sqlstore.NewUpdateService(m.db)
	var dl *cradle.DeviceDownload
	waitUntil(t, 10*time.Second, "download accounting", func() bool {
		ds, err := updates.FindDownloads(admin, "SN-U1")
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.SHA256 == imageHex {
				dl = d
			}
		}
		return dl != nil && dl.Bytes == int64(len(image))
	})
	if dl.Requests != 2 || dl.Completes != 1 {
		t.Fatalf("accounting %+v, want 2 requests and 1 complete", dl)
	}

	// The same URL on the plain listener.
	pathQuery := strings.TrimPrefix(doc.Artifact.URL, base)
	resp, got := fetch(t, http.DefaultClient, "GET", m.device.plain.Addr()+pathQuery, nil)
	wantStatus(t, "plain HTTP download", resp, got, http.StatusOK)
	if !bytes.Equal(got, image) {
		t.Fatal("plain HTTP download differs")
	}
	resp, got = fetch(t, http.DefaultClient, "GET", m.device.plain.Addr()+"/device/v1/update", nil)
	wantStatus(t, "the device API on the plain listener", resp, got, http.StatusNotFound)

	// Tampered and expired URLs.
	sig := doc.Artifact.URL[strings.LastIndex(doc.Artifact.URL, "sig=")+4:]
	flipped := "A"
	if sig[0] == 'A' {
		flipped = "B"
	}
	tampered := strings.Replace(doc.Artifact.URL, "sig="+sig, "sig="+flipped+sig[1:], 1)
	resp, got = fetch(t, dev.anonymous, "GET", tampered, nil)
	wantStatus(t, "tampered URL", resp, got, http.StatusForbidden)
	otherDev := strings.Replace(doc.Artifact.URL, "SN-U1", "SN-U2", 1)
	resp, got = fetch(t, dev.anonymous, "GET", otherDev, nil)
	wantStatus(t, "URL with another device", resp, got, http.StatusForbidden)
	signer, _, err := loadOrCreateURLSigner(s.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	expired := base + signer.Sign(artifact.Ticket{Digest: sum, Device: downloadDevice(def.ID, "SN-U1"), Expires: time.Now().Add(-time.Second)})
	resp, got = fetch(t, dev.anonymous, "GET", expired, nil)
	wantStatus(t, "expired URL", resp, got, http.StatusForbidden)
	if !strings.Contains(string(got), "expired") {
		t.Fatalf("expired URL: %s", got)
	}

	// TUF metadata and targets of the device's tenant.
	repoDir := ota.RepositoryDir(s.dataDir, cradle.DefaultTenantName)
	for _, name := range []string{"root.json", "1.root.json", "timestamp.json", "2.targets.json", "snapshot.json"} {
		resp, got = fetch(t, dev.client, "GET", base+"/device/v1/tuf/"+name, nil)
		wantStatus(t, "TUF "+name, resp, got, http.StatusOK)
		want, err := os.ReadFile(filepath.Join(repoDir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("TUF %s differs from the repository's (%v)", name, err)
		}
	}
	for _, name := range []string{"keys.json", "9.root.json", "..%2Fkeys.json", "%2E%2E%2Frepository%2Froot.json"} {
		resp, got = fetch(t, dev.client, "GET", base+"/device/v1/tuf/"+name, nil)
		wantStatus(t, "TUF "+name, resp, got, http.StatusNotFound)
	}
	resp, got = fetch(t, dev.anonymous, "GET", base+"/device/v1/tuf/root.json", nil)
	wantStatus(t, "TUF metadata without a certificate", resp, got, http.StatusUnauthorized)
	targetURL := base + "/device/v1/tuf/targets/gw-100/1.1.0/" + imageHex + ".app.bin"
	resp, got = fetch(t, dev.client, "GET", targetURL, nil, "Range", "bytes=100-199")
	wantStatus(t, "TUF target with Range", resp, got, http.StatusPartialContent)
	if !bytes.Equal(got, image[100:200]) {
		t.Fatal("TUF target range differs")
	}
	resp, got = fetch(t, dev.client, "GET", base+"/device/v1/tuf/targets/gw-100/1.1.0/"+imageHex+".other.bin", nil)
	wantStatus(t, "TUF target at another path", resp, got, http.StatusNotFound)

	// Another tenant's blob is stored and a target of its repository, but
	// not of this device's tenant.
	if _, err := tenants.CreateTenant(sys, "other"); err != nil {
		t.Fatal(err)
	}
	secret := []byte("another tenant's firmware")
	secretSum := sha256.Sum256(secret)
	if _, err := store.Put(ctx, bytes.NewReader(secret), artifact.Expect{Digest: secretSum, Size: int64(len(secret))}); err != nil {
		t.Fatal(err)
	}
	publishTUF(t, s.dataDir, "other", map[string][]byte{"gw-200/9.0.0/secret.bin": secret})
	secretHex := hex.EncodeToString(secretSum[:])
	for _, p := range []string{"gw-200/9.0.0/" + secretHex + ".secret.bin", "gw-100/1.1.0/" + secretHex + ".app.bin"} {
		resp, got = fetch(t, dev.client, "GET", base+"/device/v1/tuf/targets/"+p, nil)
		wantStatus(t, "another tenant's target "+p, resp, got, http.StatusNotFound)
	}

	// Status reports become rollout events; bad ones are refused.
	for _, st := range []string{cradle.UpdateDownloading, cradle.UpdateInstalling, cradle.UpdateSucceeded} {
		rep, _ := json.Marshal(cradle.UpdateReport{RolloutID: ro.ID, Attempt: 1, State: st})
		resp, got = fetch(t, dev.client, "POST", base+"/device/v1/update/status", rep)
		wantStatus(t, "status "+st, resp, got, http.StatusNoContent)
	}
	for what, rep := range map[string]string{
		"unknown field": `{"rollout_id":"` + ro.ID + `","attempt":1,"state":"failed","x":1}`,
		"no state":      `{"rollout_id":"` + ro.ID + `","attempt":1}`,
		"bad state":     `{"rollout_id":"` + ro.ID + `","attempt":1,"state":"exploded"}`,
	} {
		resp, got = fetch(t, dev.client, "POST", base+"/device/v1/update/status", []byte(rep))
		wantStatus(t, "status with "+what, resp, got, http.StatusBadRequest)
	}
	resp, got = fetch(t, dev.client, "POST", base+"/device/v1/update/status", bytes.Repeat([]byte(" "), maxUpdateReportBytes+1))
	wantStatus(t, "oversize status", resp, got, http.StatusRequestEntityTooLarge)
	// The reports wait for the scheduler as rollout events, unless a
	// scheduler running in the server took them already: then the device
	// has succeeded.
	events, err := sqlstore.NewRolloutStore(m.db).RolloutEvents(sys, def.ID, ro.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range events {
		if e.Serial != "SN-U1" || e.Attempt != 1 {
			t.Fatalf("event %+v", e)
		}
		kinds = append(kinds, e.Kind)
	}
	if strings.Join(kinds, ",") != "downloading,installing,succeeded" {
		devs, err := sqlstore.NewRolloutService(m.db).FindRolloutDevices(admin, ro.ID, cradle.RolloutDeviceFilter{})
		if err != nil || len(devs) != 1 || devs[0].State != cradle.DeviceSucceeded {
			t.Fatalf("rollout events %v, and the device is not recorded succeeded either (%+v, %v)", kinds, devs, err)
		}
	}

	// The software report.
	resp, got = fetch(t, dev.client, "POST", base+"/device/v1/software", []byte(`{"sha256":"`+imageHex+`"}`))
	wantStatus(t, "software report", resp, got, http.StatusNoContent)
	sw, err := updates.FindSoftware(admin, "SN-U1")
	if err != nil || sw.SHA256 != imageHex || sw.ReleaseID != rel.ID {
		t.Fatalf("software %+v, %v", sw, err)
	}
	resp, got = fetch(t, dev.client, "POST", base+"/device/v1/software", []byte(`{"sha256":"nope"}`))
	wantStatus(t, "bad software report", resp, got, http.StatusBadRequest)

}

// subscribeNotice runs mosquitto_sub as dev on its update topic until it
// receives one message, which it sends on the channel returned, once the
// subscription is in place.
func subscribeNotice(t *testing.T, s *pkiServer, dev *enrolledDevice, sub string) <-chan string {
	t.Helper()
	waitUntil(t, 10*time.Second, "the device's earlier MQTT session to end", func() bool { return s.m.device.mqtt.Sessions(inDefaultTenant(dev.serial)) == 0 })
	var out bytes.Buffer
	cmd := exec.CommandContext(t.Context(), sub, append(mosquittoArgs(s.m, s.dataDir, dev.chainFile, dev.keyFile),
		"-q", "1", "-t", "cradle/devices/"+dev.serial+"/update", "-C", "1", "-W", "30")...)
	cmd.Stdout, cmd.Stderr = &out, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	var exited atomic.Bool
	go func() {
		defer exited.Store(true)
		if err := cmd.Wait(); err != nil {
			got <- "mosquitto_sub: " + err.Error()
			return
		}
		got <- out.String()
	}()
	// A notice sent on subscription may end the session before a poll
	// sees it.
	waitUntil(t, 10*time.Second, "the device's MQTT session", func() bool { return exited.Load() || s.m.device.mqtt.Sessions(inDefaultTenant(dev.serial)) > 0 })
	time.Sleep(500 * time.Millisecond) // the SUBSCRIBE follows the CONNECT
	return got
}

// checkNotice fails unless msg is an update notice of attempt 1 of
// rollout id.
func checkNotice(t *testing.T, msg, id string) {
	t.Helper()
	var n updateNotice
	if err := json.Unmarshal([]byte(strings.TrimSpace(msg)), &n); err != nil || n.RolloutID != id || n.Attempt != 1 {
		t.Fatalf("update notice %q: %+v, %v", msg, n, err)
	}
}
