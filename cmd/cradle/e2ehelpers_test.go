package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/mqttapi"
	"cradle/internal/ota"
	"cradle/internal/pki"
)

// pkiServer is the real server on 127.0.0.1:0 over a data directory with a
// fresh test PKI (org Acme), its device listener included.
type pkiServer struct {
	m       *Main
	dataDir string
	api     []string // --server and --token of the admin token serve printed
	line    []string // --server and --token of a factory token made with it
}

// startPKIServer runs cradle pki init and the server, with the device API
// and MQTT on 127.0.0.1:0; configure, when not nil, adjusts the config
// first. It makes a factory token "line-1" with the admin token.
func startPKIServer(t *testing.T, configure func(*Config)) *pkiServer {
	t.Helper()
	isolateCLI(t)
	setPassphrase(t, pkiTestPassphrase)
	dataDir := t.TempDir()
	ok(t, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1")
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.Device.Listen, cfg.Device.MQTTListen = dataDir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if configure != nil {
		configure(&cfg)
	}
	var stdout strings.Builder
	m := &Main{Config: cfg, Stdout: &stdout}
	if err := m.Run(t.Context()); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	admin := tokenRE.FindStringSubmatch(stdout.String())[1]
	api := []string{"--server", m.Addr(), "--token", admin}
	factory := decodeJSON[tokenCreated](t, ok(t, append([]string{"token", "create", "--name", "line-1", "--role", "factory", "--json"}, api...)...)).Secret
	return &pkiServer{m: m, dataDir: dataDir, api: api, line: []string{"--server", m.Addr(), "--token", factory}}
}

// newIDevID makes a P-256 device key and signs its IDevID for serial with
// the manufacturing CA of dataDir, as the station does. It returns the
// PKI's certificates too.
func newIDevID(t *testing.T, dataDir, serial string) (*pki.Hierarchy, *ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	h, keys, closeKeys, err := openPKI(t.Context(), dataDir, noPrompt(), pki.NameManufacturingCA)
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idevid, err := pki.Issue(t.Context(), h.ManufacturingCA, keys[pki.NameManufacturingCA], devKey.Public(), &x509.Certificate{},
		pki.IDevID(pki.IDevIDConfig{Organization: "Acme"}, serial, nil, time.Now())...)
	if err != nil {
		t.Fatal(err)
	}
	return h, devKey, idevid
}

// certsPEM is the PEM encoding of certs, one after the other.
func certsPEM(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// provisionUnit makes one simulated unit and provisions it on l's station
// (batch B-2648, so its serial is SX-2648-00001); it returns the unit's
// directory.
func provisionUnit(t *testing.T, l *factoryLine) string {
	t.Helper()
	unit := makeUnits(t, t.TempDir(), 1)[0]
	ok(t, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release, "--operator", "ada", "--device", unit, "--json")
	return unit
}

// mosquittoArgs are the mosquitto_pub/mosquitto_sub flags that connect to
// m's broker over MQTT 5 as a device, with its certificate chain and key
// files, trusting the root of the PKI in dataDir.
func mosquittoArgs(m *Main, dataDir, certFile, keyFile string) []string {
	host, port, _ := net.SplitHostPort(m.device.mqtt.Addr().String())
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	return []string{"-h", host, "-p", port, "--cafile", filepath.Join(pkiDirOf(dataDir), "root.crt"), "--cert", certFile, "--key", keyFile, "-V", "mqttv5"}
}

// checkSessionClosed runs mosquitto_sub (sub) with args as serial's live
// MQTT session, waits until l's broker holds it, then runs act (what
// names it) and fails unless the session closes within a second.
func checkSessionClosed(ctx context.Context, t *testing.T, l *factoryLine, sub, serial string, args []string, what string, act func()) {
	t.Helper()
	live := exec.CommandContext(ctx, sub, args...)
	live.Stderr = testWriter{t}
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan time.Time, 1)
	go func() { live.Wait(); exited <- time.Now() }()
	for l.m.device.mqtt.Sessions(inDefaultTenant(serial)) == 0 {
		select {
		case <-exited:
			t.Fatalf("mosquitto_sub exited before the %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
	start := time.Now()
	act()
	select {
	case at := <-exited:
		t.Logf("%s to MQTT disconnection: %v (including the CLI's request)", what, at.Sub(start))
		if at.Sub(start) > time.Second {
			t.Errorf("the live MQTT session closed %v after the %s, more than a second", at.Sub(start), what)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the live MQTT session outlived the %s by 5 s", what)
	}
}

// inDefaultTenant names device serial of the tenant "default" (id 1) that
// the first start creates, where the end-to-end tests' devices are.
func inDefaultTenant(serial string) mqttapi.Device {
	return mqttapi.Device{TenantID: 1, Serial: serial}
}

// updateUnit is one simulated unit on a factory line whose server has a
// TUF repository and an image key, with the real cradle-agent built: the
// set-up of the end-to-end update tests. The unit (serial
// SX-2648-00001) is provisioned with v1 1.4.2, an MCUboot image signed by
// the image key, and the repository's root in its factory data.
type updateUnit struct {
	l                *factoryLine
	ctx              context.Context
	bin              string // the cradle-agent binary
	dir              string // where the image key and the images are
	root             []byte // the repository's root.json
	keyFile, pubFile string // the image key's private and public halves
	imageSize        int    // the size of an image's random body
	unit             string // the unit's directory
	dev              *hw.Device
	serial           string
	v1, v1Hex        string // the factory image and its SHA-256
}

// newUpdateUnit builds the line, the repository (its root goes into the
// station directory, as `factory station enroll --update-root` puts it
// there), the image key, the factory release v1 and the unit provisioned
// with it. Images are imageSize random bytes; the test has 3 minutes.
func newUpdateUnit(t *testing.T, imageSize int) *updateUnit {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs cradle-agent")
	}
	u := &updateUnit{l: newFactoryLine(t, 1, 1), dir: t.TempDir(), imageSize: imageSize, serial: "SX-2648-00001"}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	t.Cleanup(cancel)
	u.ctx = ctx
	u.bin = buildAgent(t, ctx)

	ok(t, "release", "repo", "init", "--data-dir", u.l.dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	root, err := os.ReadFile(filepath.Join(ota.RepositoryDir(u.l.dataDir, cradle.DefaultTenantName), "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(u.l.stationDir, "update-root.json"), root, 0o644); err != nil {
		t.Fatal(err)
	}
	u.root = root

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	u.keyFile = writeFile(t, u.dir, "image-key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	u.pubFile = writeFile(t, u.dir, "image-key.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})))
	u.v1, u.v1Hex = u.image(t, "1.4.2", 1)

	relDir := t.TempDir()
	for name, src := range map[string]string{"firmware.img": u.v1, "image-key.pem": u.pubFile} {
		b, _ := os.ReadFile(src)
		writeFile(t, relDir, name, string(b))
	}
	writeFile(t, relDir, "bootloader.bin", "simulated bootloader\n")
	writeFile(t, relDir, "release.yaml", "model: sensor-x\nversion: 1.4.2\nprofile: test\nhardware_revisions: [C]\nimage: firmware.img\nbootloader: bootloader.bin\nimage_key: image-key.pem\n")
	u.unit = makeUnits(t, t.TempDir(), 1)[0]
	ok(t, "factory", "provision", "--dir", u.l.stationDir, "--batch", "B-2648", "--firmware", relDir, "--operator", "ada", "--device", u.unit, "--json")
	if u.dev, err = hw.OpenSimDevice(u.unit); err != nil {
		t.Fatal(err)
	}
	return u
}

// cli runs a cradle command against the line's server as its admin.
func (u *updateUnit) cli(t *testing.T, args ...string) string {
	t.Helper()
	return ok(t, append(args, "--server", u.l.m.Addr(), "--token", u.l.admin)...)
}

// image signs a random body as an MCUboot image of version with the image
// key and returns its file and its SHA-256.
func (u *updateUnit) image(t *testing.T, version string, counter int) (string, string) {
	t.Helper()
	body := make([]byte, u.imageSize)
	rand.Read(body)
	in := writeFile(t, u.dir, version+".bin", string(body))
	out := filepath.Join(u.dir, "sensor-x-"+version+".img")
	ok(t, "release", "sign-image", "--key", u.keyFile, "--version", version, "--security-counter", fmt.Sprint(counter), "--pad-header", in, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return out, hex.EncodeToString(sum[:])
}

// running is the slot the unit boots and the SHA-256 of the image in it.
func (u *updateUnit) running(t *testing.T) (hw.Slot, string) {
	t.Helper()
	env, err := u.dev.BootEnv.Get(u.ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := hw.Slot(env[hw.EnvBootSlot])
	if s == "" {
		s = hw.SlotA
	}
	d, err := u.dev.Slots.Digest(u.ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	return s, hex.EncodeToString(d[:])
}

// upload uploads file as a signed release of sensor-x, with extra flags.
func (u *updateUnit) upload(t *testing.T, file, version string, extra ...string) *cradle.Release {
	t.Helper()
	return decodeJSON[*cradle.Release](t, u.cli(t, append([]string{"release", "upload", file, "--model", "sensor-x", "--version", version, "--sign", "--json"}, extra...)...))
}

// rollOut starts a rollout of rel to the unit alone, one phase, paused at
// the first failure; it returns the rollout's ID.
func (u *updateUnit) rollOut(t *testing.T, rel *cradle.Release) string {
	t.Helper()
	return decodeJSON[cradle.Rollout](t, u.cli(t, "rollout", "create", "--release", rel.ID, "--serials", u.serial, "--phases", "100%", "--failure-count", "1", "--json")).ID
}

// rolloutDevice is the unit's record in rollout id, its only device.
func (u *updateUnit) rolloutDevice(t *testing.T, id string) cradle.RolloutDevice {
	t.Helper()
	devs := decodeJSON[struct{ Devices []cradle.RolloutDevice }](t, u.cli(t, "rollout", "devices", id, "--json")).Devices
	if len(devs) != 1 || devs[0].Serial != u.serial {
		t.Fatalf("rollout %s devices %+v", id, devs)
	}
	return devs[0]
}

// rolloutState is the state of rollout id.
func (u *updateUnit) rolloutState(t *testing.T, id string) cradle.RolloutState {
	t.Helper()
	return decodeJSON[cradle.Rollout](t, u.cli(t, "rollout", "show", id, "--json")).Status.State
}

// updateAgent is the real cradle-agent running on an updateUnit.
type updateAgent struct {
	cmd   *exec.Cmd
	logs  *lockedBuffer
	state string // its state directory
}

// startAgent runs the agent on the unit, connected over HTTPS and MQTT,
// logging JSON at debug level; update is its update settings after
// image_keys (the image key). The agent is killed at the end of the test
// unless stopped.
func (u *updateUnit) startAgent(t *testing.T, update string) *updateAgent {
	t.Helper()
	a := &updateAgent{logs: &lockedBuffer{}, state: t.TempDir()}
	cfg := writeFile(t, t.TempDir(), "agent.yaml", fmt.Sprintf(`device: %s
state_dir: %s
server: %s
mqtt: {url: "mqtts://%s", retry_base: 200ms, retry_max: 1s}
update: {image_keys: [%s], %s}
log: {level: debug, format: json}
`, u.unit, a.state, u.l.m.device.Addr(), u.l.m.device.mqtt.Addr(), u.pubFile, update))
	a.cmd = exec.CommandContext(u.ctx, u.bin, "run", "--config", cfg)
	a.cmd.Stderr = a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			a.cmd.Process.Kill()
			a.cmd.Wait()
		}
	})
	return a
}

// waitFor polls cond every 50 ms and fails, with the end of the agent's
// log, when it does not hold within 45 s; what names what is awaited.
func (a *updateAgent) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 45 s for %s\nagent log:\n%s", what, lastLines(a.logs.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the agent with SIGTERM; it must exit cleanly.
func (a *updateAgent) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("cradle-agent after SIGTERM: %v\n%s", err, lastLines(a.logs.String(), 20))
	}
}

// startRepoServer runs the server over a fresh data directory with a TUF
// repository (ed25519 keys, the root keys in a directory of their own,
// no passphrase); it returns the server and the --server and --token
// flags of the admin token it printed.
func startRepoServer(t *testing.T) (*Main, []string) {
	t.Helper()
	isolateCLI(t)
	setPassphrase(t, "")
	dataDir := t.TempDir()
	ok(t, "release", "repo", "init", "--data-dir", dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	m, out := startServer(t, dataDir)
	return m, []string{"--server", m.Addr(), "--token", tokenRE.FindStringSubmatch(out)[1]}
}
