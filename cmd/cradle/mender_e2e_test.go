package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/compat/menderartifact"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
	"cradle/internal/testkit"
)

// menderClient is one real mender-client 3.4 daemon, in a private mount
// namespace where its hard-coded paths (identity and inventory scripts,
// update modules, /etc/mender) are bind mounts of the test's own files.
type menderClient struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	dir  string
	out  *lockedBuffer
}

// needMender finds the mender client and what runs it in a private mount
// namespace (root, unshare, mount), skipping or, in CI, failing without.
func needMender(t *testing.T) string {
	t.Helper()
	bin := testkit.NeedProgram(t, "mender")
	testkit.NeedProgram(t, "unshare")
	testkit.NeedProgram(t, "mount")
	testkit.NeedFile(t, "/usr/share/mender/modules/v3/single-file", "the single-file update module")
	for _, dir := range []string{"/usr/share/mender/identity", "/usr/share/mender/inventory", "/etc/mender"} {
		testkit.NeedFile(t, dir, "the mount point")
	}
	if os.Geteuid() != 0 {
		testkit.Missing(t, "the Mender client test bind-mounts over /etc/mender in a private mount namespace, which needs root")
	}
	return bin
}

// startMender runs a daemon with identity mac, device type, an inventory
// script and, when ecKey, a P-256 key made here (else the client makes
// its RSA key), against the device listener of s.
// verifyKey, when set, is the ArtifactVerifyKey file: the client then
// installs only artifacts signed by that key.
func startMender(t *testing.T, bin string, s *pkiServer, name, mac, deviceType string, ecKey bool, verifyKey string) *menderClient {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"data", "identity", "inventory", "etc", "modules"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := func(path, body string) {
		if err := os.WriteFile(filepath.Join(dir, path), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script("identity/mender-device-identity", "echo mac="+mac+"\n")
	script("inventory/mender-inventory-test", "echo os=cradle-test\necho ipv4=10.0.0.2/24\necho ipv4=10.0.0.3/24\n")
	single, err := os.ReadFile("/usr/share/mender/modules/v3/single-file")
	if err != nil {
		t.Fatal(err)
	}
	script("modules/single-file", strings.TrimPrefix(string(single), "#!/bin/sh\n"))
	// An update module that fails to install, for the failing deployment.
	script("modules/cradle-fail", `case "$1" in
ArtifactInstall) echo "cradle-fail: the device refuses this update" >&2; exit 1 ;;
NeedsArtifactReboot|SupportsRollback) echo No ;;
esac
exit 0
`)
	writeFile(t, dir, "etc/artifact_info", "artifact_name=release-0\n")
	writeFile(t, dir, "data/device_type", "device_type="+deviceType+"\n")
	if ecKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		writeFile(t, dir, "data/mender-agent.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	}
	cfg := map[string]any{
		"ServerURL": s.m.device.Addr(), "ServerCertificate": filepath.Join(pkiDirOf(s.dataDir), "root.crt"),
		"UpdatePollIntervalSeconds": 1, "InventoryPollIntervalSeconds": 1, "RetryPollIntervalSeconds": 1,
	}
	if verifyKey != "" {
		cfg["ArtifactVerifyKey"] = verifyKey
	}
	conf, _ := json.Marshal(cfg)
	writeFile(t, dir, "etc/mender.conf", string(conf))
	writeFile(t, dir, "fallback.conf", "{}") // the client refuses an empty one (/dev/null)
	mounts := ""
	for _, m := range [][2]string{{"identity", "/usr/share/mender/identity"}, {"inventory", "/usr/share/mender/inventory"},
		{"modules", "/usr/share/mender/modules/v3"}, {"etc", "/etc/mender"}} {
		mounts += fmt.Sprintf("mount --bind %s %s && ", filepath.Join(dir, m[0]), m[1])
	}
	c := &menderClient{t: t, name: name, dir: dir, out: &lockedBuffer{}}
	c.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		mounts+`exec "$0" --config /etc/mender/mender.conf --fallback-config "$1/../fallback.conf" --data "$1" --no-syslog -l info daemon`,
		bin, filepath.Join(dir, "data"))
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting mender %s: %v", name, err)
	}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("mender %s output:\n%s", name, clipTail(c.out.String(), 6000))
		}
	})
	return c
}

// stop ends the daemon with SIGTERM (SIGKILL after 5 s).
func (c *menderClient) stop() {
	if c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// poke asks the daemon to check for an update and send its inventory now.
func (c *menderClient) poke() {
	c.cmd.Process.Signal(syscall.SIGUSR1)
	c.cmd.Process.Signal(syscall.SIGUSR2)
}

func clipTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// menderArtifact writes a single-file module artifact (payload type
// module) that puts content at dir/name.
func menderArtifact(t *testing.T, name, module, deviceType, dir, file string, content []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	files := []menderartifact.Source{
		{Name: "dest_dir", Size: int64(len(dir)), R: strings.NewReader(dir)},
		{Name: "filename", Size: int64(len(file)), R: strings.NewReader(file)},
		{Name: file, Size: int64(len(content)), R: bytes.NewReader(content)},
	}
	spec := menderartifact.Spec{Name: name, DeviceTypes: []string{deviceType}, PayloadType: module, TempDir: t.TempDir(),
		Provides: map[string]string{"rootfs-image." + module + ".version": name}}
	if err := menderartifact.Write(&b, spec, files, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestMenderClient drives real mender-client 3.4 daemons against the
// server: admission (an operator accepts a pending device; a device whose
// MAC is a provisioned device's is admitted at once), inventory, a
// single-file deployment by a Cradle rollout, and a failing one with its
// log.
func TestMenderClient(t *testing.T) {
	bin := needMender(t)
	start := time.Now()
	s := startPKIServer(t, func(c *Config) { c.OTA.SchedulerInterval = 50 * time.Millisecond })
	ctx := t.Context()
	api := httpapi.NewClient(s.m.Addr(), s.api[3], nil)
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "mender-e2e"})
	protocols := sqlstore.NewProtocolService(s.m.db)
	ok(t, "release", "repo", "init", "--data-dir", s.dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")

	// 1. Device B is provisioned with its MAC: admitted at its first
	// request. Device A is unknown: pending until accepted.
	const macA, macB = "02:00:00:00:aa:01", "02:00:00:00:bb:02"
	if _, err := api.CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-MENDER-B", MACs: []string{macB}, Model: "gw-mender", State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	// A trusts only artifacts signed by the PKI's release signer.
	verifyKey := filepath.Join(t.TempDir(), "release-signer.pub")
	if err := os.WriteFile(verifyKey, []byte(ok(t, "pki", "release-signer", "show", "--data-dir", s.dataDir, "--pubkey")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startMender(t, bin, s, "a", macA, "gw-mender", false, verifyKey)
	b := startMender(t, bin, s, "b", macB, "gw-mender", true, "")

	var pending *cradle.MenderAuthSet
	waitUntil(t, 20*time.Second, "device A's pending auth set", func() bool {
		sets, err := protocols.FindMenderAuthSets(admin, cradle.MenderAuthFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, set := range sets {
			if strings.Contains(set.IDData, macA) && set.Status == cradle.MenderPending {
				pending = set
			}
		}
		return pending != nil
	})
	if _, err := protocols.AcceptMenderAuthSet(admin, pending.ID, cradle.MenderAccept{Serial: "SN-MENDER-A", Model: "gw-mender"}); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{"SN-MENDER-A", "SN-MENDER-B"} {
		waitUntil(t, 20*time.Second, serial+" deployed, talking Mender", func() bool {
			d, err := api.FindDeviceBySerial(ctx, serial)
			return err == nil && d.State == cradle.StateDeployed && d.Protocol == cradle.ProtocolMender
		})
	}
	t.Logf("both devices admitted after %v", time.Since(start).Round(time.Millisecond))

	// 2. Inventory.
	for _, serial := range []string{"SN-MENDER-A", "SN-MENDER-B"} {
		waitUntil(t, 20*time.Second, serial+"'s inventory", func() bool {
			a.poke()
			b.poke()
			attrs, err := protocols.FindDeviceAttributes(admin, serial)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, at := range attrs {
				got[at.Name] = at.Value
			}
			return got["device_type"] == "gw-mender" && got["artifact_name"] == "release-0" && got["os"] == "cradle-test" &&
				got["ipv4"] == `["10.0.0.2/24","10.0.0.3/24"]` && got["mender_client_version"] != ""
		})
	}

	// 3. A single-file deployment to A by a Cradle rollout. A refuses
	// the artifact unsigned, and installs it signed by Cradle's release
	// signer (cradle release sign-artifact).
	dest := t.TempDir()
	content := bytes.Repeat([]byte("cradle mender payload\n"), 600) // the client wants ≥ 4096 bytes
	rand.Read(content[:2048])
	unsignedRel := uploadMender(t, s, "1.9.0", menderArtifact(t, "app-1.9.0", "single-file", "gw-mender", dest, "app.conf", content))
	roUnsigned := menderRollout(t, api, unsignedRel.ID, "SN-MENDER-A")
	waitUntil(t, 30*time.Second, "A refusing the unsigned artifact", func() bool {
		a.poke()
		r, err := api.FindRollout(ctx, roUnsigned)
		if err != nil {
			t.Fatal(err)
		}
		return r.Status.Phases[0].Failed == 1
	})
	if _, err := os.Stat(filepath.Join(dest, "app.conf")); err == nil {
		t.Fatalf("A installed an unsigned artifact despite its ArtifactVerifyKey")
	}
	waitUntil(t, 20*time.Second, "A's log of the refused artifact", func() bool {
		logs, err := protocols.FindUpdateLogs(admin, "SN-MENDER-A", roUnsigned)
		if err != nil {
			t.Fatal(err)
		}
		if len(logs) > 0 && !strings.Contains(strings.ToLower(logs[0].Log), "signature") {
			t.Fatalf("A's log of the unsigned artifact does not speak of its signature:\n%s", clipText(logs[0].Log, 2000))
		}
		return len(logs) > 0
	})
	if _, err := api.AbortRollout(ctx, roUnsigned, "unsigned"); err != nil {
		t.Fatal(err)
	}
	artDir := t.TempDir()
	unsigned, signed := filepath.Join(artDir, "app.mender"), filepath.Join(artDir, "app.signed.mender")
	if err := os.WriteFile(unsigned, menderArtifact(t, "app-2.0.0", "single-file", "gw-mender", dest, "app.conf", content), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, "release", "sign-artifact", unsigned, "-o", signed, "--data-dir", s.dataDir)
	signedBytes, err := os.ReadFile(signed)
	if err != nil {
		t.Fatal(err)
	}
	okRel := uploadMender(t, s, "2.0.0", signedBytes)
	if okRel.Kind != cradle.ReleaseMender {
		t.Fatalf("release %+v, want a mender release", okRel)
	}
	roA := menderRollout(t, api, okRel.ID, "SN-MENDER-A")
	waitUntil(t, 30*time.Second, "the file installed on A and the rollout completed", func() bool {
		a.poke()
		r, err := api.FindRollout(ctx, roA)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(filepath.Join(dest, "app.conf"))
		return bytes.Equal(got, content) && r.Status.State == cradle.RolloutCompleted
	})
	if sw, err := api.FindSoftware(ctx, "SN-MENDER-A"); err != nil || sw.ReleaseID != okRel.ID || sw.SHA256 != okRel.SHA256 {
		t.Fatalf("software of A: %+v, %v; want release %s", sw, err, okRel.ID)
	}
	t.Logf("deployment to A done after %v", time.Since(start).Round(time.Millisecond))

	// 4. A deployment to B whose update module fails: the rollout shows
	// the failure, and the log the client sent is stored.
	badRel := uploadMender(t, s, "2.0.1", menderArtifact(t, "app-2.0.1", "cradle-fail", "gw-mender", dest, "bad.conf", content))
	roB := menderRollout(t, api, badRel.ID, "SN-MENDER-B")
	var logs []*cradle.UpdateLog
	waitUntil(t, 30*time.Second, "B's failure and its log", func() bool {
		b.poke()
		r, err := api.FindRollout(ctx, roB)
		if err != nil {
			t.Fatal(err)
		}
		if logs, err = protocols.FindUpdateLogs(admin, "SN-MENDER-B", roB); err != nil {
			t.Fatal(err)
		}
		return r.Status.Phases[0].Failed == 1 && len(logs) > 0
	})
	if !strings.Contains(logs[0].Log, "cradle-fail: the device refuses this update") {
		t.Errorf("B's deployment log does not hold the module's error:\n%s", clipText(logs[0].Log, 2000))
	}
	if _, err := os.Stat(filepath.Join(dest, "bad.conf")); err == nil {
		t.Errorf("the failing module's file was installed")
	}
	if text := ok(t, append([]string{"rollout", "show", roB}, s.api...)...); !strings.Contains(text, "1 failed") {
		t.Errorf("rollout show of the failed deployment:\n%s", text)
	}
	a.stop()
	b.stop()
	for _, c := range []*menderClient{a, b} {
		if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !(ws.Exited() || ws.Signal() == syscall.SIGTERM) {
			t.Errorf("mender %s ended with %v", c.name, c.cmd.ProcessState)
		}
	}
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

// uploadMender uploads and signs a Mender artifact as release version of
// gw-mender.
func uploadMender(t *testing.T, s *pkiServer, version string, art []byte) *cradle.Release {
	t.Helper()
	file := writeFile(t, t.TempDir(), "app-"+version+".mender", string(art))
	rel := decodeJSON[cradle.Release](t, ok(t, append([]string{"release", "upload", file, "--model", "gw-mender", "--version", version,
		"--file-name", "app.mender", "--sign", "--json"}, s.api...)...))
	if rel.State != cradle.ReleaseSigned || rel.ArtifactName != "app-"+version {
		t.Fatalf("release %s: %+v", version, rel)
	}
	return &rel
}

// menderRollout starts a rollout of release to one device.
func menderRollout(t *testing.T, api *httpapi.Client, release, serial string) string {
	t.Helper()
	ro, err := api.CreateRollout(context.Background(), cradle.RolloutSpec{ReleaseID: release, Target: cradle.RolloutTarget{Serials: []string{serial}},
		Phases: []cradle.RolloutPhase{{Percent: 100}}, RateLimit: 1000,
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains([]cradle.RolloutState{cradle.RolloutRunning}, ro.Status.State) {
		t.Fatalf("rollout %+v", ro.Status)
	}
	return ro.ID
}
