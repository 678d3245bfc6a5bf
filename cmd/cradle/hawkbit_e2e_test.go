package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/compat/hawkbit"
	"cradle/internal/compat/swu"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// TestHawkbitSuricatta drives Debian's swupdate 2022.12 in suricatta mode
// against the real server: a device with a target token installs a signed
// .swu rolled out by a Cradle rollout (downloaded from the DDI artifact
// route over HTTPS, installed by the rawfile handler, confirmed after a
// simulated reboot with -c 2), and a second device acknowledges the cancel
// of an aborted rollout.
func TestHawkbitSuricatta(t *testing.T) {
	bin := testkit.NeedProgram(t, "swupdate")
	start := time.Now()
	s := startPKIServer(t, func(c *Config) {
		c.OTA.SchedulerInterval = 50 * time.Millisecond
		c.Hawkbit.PollingSleep = time.Second
	})
	api := httpapi.NewClient(s.m.Addr(), s.api[3], nil)
	ctx := t.Context()
	ok(t, "release", "repo", "init", "--data-dir", s.dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")

	// Two devices of model swu-gw, each with a target token made with the
	// operator CLI.
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
	protocols := sqlstore.NewProtocolService(s.m.db)
	admin := cradle.NewContextWithActor(ctx, cradle.SystemActor(tenant, "test"))
	tokens := map[string]string{}
	for serial, group := range map[string]string{"SN-HB-1": "install", "SN-HB-2": "cancel"} {
		ok(t, append([]string{"device", "create", "--serial", serial, "--model", "swu-gw", "--label", "hb=" + group}, s.line...)...)
		ok(t, append([]string{"device", "transition", serial, "provisioned"}, s.line...)...)
		tok := decodeJSON[cradle.IssuedToken](t, ok(t, append([]string{"device", "token", "create", "--serial", serial, "--name", "suricatta", "--json"}, s.api...)...))
		tokens[serial] = tok.Secret
	}

	// A .swu (made with a throwaway signer) signed again by the PKI's
	// release signer, whose CA the devices trust (-k).
	dir := t.TempDir()
	_, signer := newSWUSigner(t)
	caFile := writeFile(t, dir, "swu-ca.pem", ok(t, "pki", "release-signer", "show", "--data-dir", s.dataDir, "--ca"))
	dest := filepath.Join(dir, "installed.conf")
	payload := "hello from a cradle rollout\n"
	var img bytes.Buffer
	if err := swu.Write(&img, swu.Spec{Version: "2.0.0", Description: "cradle hawkbit e2e", HardwareCompatibility: []string{"1.0"}},
		[]swu.Source{{Entry: swu.Entry{Section: "files", Filename: "app.conf", Type: "rawfile", Dest: dest}, Data: strings.NewReader(payload), Size: int64(len(payload))}},
		signer); err != nil {
		t.Fatal(err)
	}
	unsigned := writeFile(t, dir, "unsigned.swu", img.String())
	file := filepath.Join(dir, "update.swu")
	ok(t, "release", "sign-artifact", unsigned, "-o", file, "--data-dir", s.dataDir)
	rel := decodeJSON[cradle.Release](t, ok(t, append([]string{"release", "upload", file, "--model", "swu-gw", "--version", "2.0.0",
		"--kind", "swupdate", "--file-name", "update.swu", "--sign", "--json"}, s.api...)...))
	if rel.Kind != cradle.ReleaseSWUpdate || rel.State != cradle.ReleaseSigned {
		t.Fatalf("release %+v", rel)
	}

	rootCA := filepath.Join(pkiDirOf(s.dataDir), "root.crt")
	base := s.m.device.Addr()
	// The cancel device polls once (with Go), so it is deployed and in
	// the rollout's target.
	poll := func(serial string) map[string]any {
		pool := x509.NewCertPool()
		rootPEM, _ := os.ReadFile(rootCA)
		pool.AppendCertsFromPEM(rootPEM)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		req, _ := http.NewRequest("GET", base+"/DEFAULT/controller/v1/"+serial, nil)
		req.Header.Set("Authorization", "TargetToken "+tokens[serial])
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var doc map[string]any
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&doc) != nil {
			t.Fatalf("poll of %s: %s", serial, resp.Status)
		}
		return doc
	}
	poll("SN-HB-2")

	// 1. Install: suricatta polls (which admits the device: deployed,
	// protocol hawkbit) and sends its configData; then it finds the
	// rollout's deployment, downloads and installs it, and after the
	// "reboot" (-c 2) reports success.
	devices := sqlstore.NewDeviceService(s.m.db)
	first := startSuricatta(t, bin, s, rootCA, caFile, "SN-HB-1", tokens["SN-HB-1"])
	waitUntil(t, 10*time.Second, "suricatta's first poll", func() bool {
		d, err := devices.FindDeviceBySerial(admin, "SN-HB-1")
		return err == nil && d.State == cradle.StateDeployed && d.Protocol == cradle.ProtocolHawkbit
	})
	ro, err := api.CreateRollout(ctx, cradle.RolloutSpec{ReleaseID: rel.ID, Target: cradle.RolloutTarget{Selector: "hb=install"},
		Phases: []cradle.RolloutPhase{{Percent: 100}}, FailureThreshold: cradle.FailureThreshold{Count: 10, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	dev1 := func() *cradle.RolloutDevice { return rolloutDevice(t, api, ro.ID, "SN-HB-1") }
	waitUntil(t, 30*time.Second, "suricatta to install the update", func() bool {
		got, _ := os.ReadFile(dest)
		return string(got) == payload && dev1().State == cradle.DeviceInstalling
	})
	first.stop()
	if out := first.output(); !strings.Contains(out, "SWUPDATE successful") {
		t.Fatalf("swupdate did not report a successful install:\n%s", out)
	}
	second := startSuricatta(t, bin, s, rootCA, caFile, "SN-HB-1", tokens["SN-HB-1"], "-c", "2")
	waitUntil(t, 20*time.Second, "the action to be closed with success", func() bool { return dev1().State == cradle.DeviceSucceeded })
	second.stop()
	if out := second.output(); !strings.Contains(out, "Got state=2 from command line") || !regexp.MustCompile(`deploymentBase/\d+/feedback`).MatchString(out) {
		t.Errorf("the restarted suricatta did not report the final state:\n%s", out)
	}
	if sw, err := api.FindSoftware(ctx, "SN-HB-1"); err != nil || sw.ReleaseID != rel.ID || sw.SHA256 != rel.SHA256 {
		t.Errorf("software of SN-HB-1: %+v, %v", sw, err)
	}
	attrs, err := protocols.FindDeviceAttributes(cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: tenant, Role: cradle.RoleDevice, Kind: "device", ID: "SN-HB-1"}), "SN-HB-1")
	if err != nil || len(attrs) != 1 || attrs[0].Name != "board" || attrs[0].Value != "cradle-board" {
		t.Errorf("configData of SN-HB-1: %+v, %v\n%s", attrs, err, first.output())
	}
	if doc := poll("SN-HB-1"); doc["_links"].(map[string]any)["installedBase"] == nil {
		t.Errorf("no installedBase link after the install: %v", doc)
	}
	t.Logf("install done after %v", time.Since(start).Round(time.Millisecond))

	// 2. Cancel: the rollout is aborted while the device's attempt is
	// started; suricatta gets cancelAction and acknowledges it.
	ro2, err := api.CreateRollout(ctx, cradle.RolloutSpec{ReleaseID: rel.ID, Target: cradle.RolloutTarget{Selector: "hb=cancel"},
		Phases: []cradle.RolloutPhase{{Percent: 100}}, FailureThreshold: cradle.FailureThreshold{Count: 10, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	dev2 := func() *cradle.RolloutDevice { return rolloutDevice(t, api, ro2.ID, "SN-HB-2") }
	waitUntil(t, 10*time.Second, "SN-HB-2 started", func() bool { return dev2().State == cradle.DeviceStarted })
	if _, err := api.AbortRollout(ctx, ro2.ID, "test: cancel before the device polls"); err != nil {
		t.Fatal(err)
	}
	// The base poll trusts its last reading for hawkbit.DefaultPollCache.
	waitUntil(t, hawkbit.DefaultPollCache+5*time.Second, "a cancelAction link for the aborted rollout", func() bool {
		_, ok := poll("SN-HB-2")["_links"].(map[string]any)["cancelAction"]
		return ok
	})
	third := startSuricatta(t, bin, s, rootCA, caFile, "SN-HB-2", tokens["SN-HB-2"])
	waitUntil(t, 20*time.Second, "the canceled attempt to fail", func() bool { return dev2().State == cradle.DeviceFailed })
	third.stop()
	if d := dev2(); !strings.Contains(d.Reason, hawkbit.CanceledReason) {
		t.Errorf("canceled device: %+v", d)
	}
	if out := third.output(); !strings.Contains(out, "/DEFAULT/controller/v1/SN-HB-2/cancelAction/") || !regexp.MustCompile(`cancelAction/\d+/feedback`).MatchString(out) {
		t.Errorf("suricatta did not fetch and acknowledge the cancel:\n%s", out)
	}

	// 3. A device with an LDevID polls with its client certificate alone;
	// the certificate does not speak for another controller.
	enrolled := enrollDevice(t, s, "SN-HB-CERT")
	for path, want := range map[string]int{"/default/controller/v1/SN-HB-CERT": 200, "/default/controller/v1/SN-HB-1": 401} {
		resp, err := enrolled.client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s with a client certificate: %s, want %d", path, resp.Status, want)
		}
	}
	t.Logf("done after %v", time.Since(start).Round(time.Millisecond))
}

func rolloutDevice(t *testing.T, api *httpapi.Client, rolloutID, serial string) *cradle.RolloutDevice {
	t.Helper()
	devs, err := api.FindRolloutDevices(t.Context(), rolloutID, cradle.RolloutDeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Serial == serial {
			return d
		}
	}
	t.Fatalf("%s is not in rollout %s", serial, rolloutID)
	return nil
}

// newSWUSigner makes a CA and an update signer certificate (extended key
// usage emailProtection, as SWUpdate checks).
func newSWUSigner(t *testing.T) (*x509.Certificate, swu.Signer) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hawkbit e2e update CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "hawkbit e2e signer"},
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
	der, err = x509.CreateCertificate(rand.Reader, leaf, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return ca, swu.Signer{Cert: cert, Key: key}
}

// suricatta is one running swupdate in suricatta mode.
type suricatta struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	once sync.Once
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startSuricatta runs swupdate polling the server as serial with a
// target token, trusting the server's root (cafile in its config file, as
// swupdate wants) and the update CA (-k); extra are more suricatta
// arguments. It is killed when the test ends.
func startSuricatta(t *testing.T, bin string, s *pkiServer, rootCA, updateCA, serial, token string, extra ...string) *suricatta {
	t.Helper()
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`globals :
{
	verbose = true;
	loglevel = 6;
};
suricatta :
{
	tenant = "DEFAULT";
	id = %q;
	url = %q;
	polldelay = 1;
	targettoken = %q;
	cafile = %q;
	retry = 2;
	retrywait = 1;
};
identify : (
	{ name = "board"; value = "cradle-board"; }
);
`, serial, s.m.device.Addr(), token, rootCA)
	cfgFile := writeFile(t, dir, "swupdate.cfg", cfg)
	args := []string{"-v", "-f", cfgFile, "-k", updateCA, "-H", "cradle-board:1.0", "-u", strings.Join(append([]string{"-t", "DEFAULT"}, extra...), " ")}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sc := &suricatta{cmd: cmd, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = sc.out, sc.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting swupdate: %v", err)
	}
	t.Cleanup(func() {
		sc.stop()
		if t.Failed() {
			t.Logf("swupdate (%s) output:\n%s", serial, sc.output())
		}
	})
	return sc
}

// stop kills swupdate and its helper processes (its process group).
func (s *suricatta) stop() {
	s.once.Do(func() {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		s.cmd.Wait()
	})
}

func (s *suricatta) output() string { return s.out.String() }
