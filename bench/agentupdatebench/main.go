// Command agentupdatebench measures the real cradle-agent while it
// installs a large update through the real server: its peak resident
// memory and its install time.
//
//	go run ./bench/agentupdatebench -size 256
//
// It builds cmd/cradle and cmd/cradle-agent (the agent as released:
// -trimpath -tags=nethttpomithttp2 -ldflags='-s -w'), then does what an
// operator and a factory do, with the CLI against `cradle serve` on
// 127.0.0.1: a test PKI with file keys, the update repository (release
// repo init), a factory batch and station whose update root goes into
// every unit, and one simulated unit provisioned with a small v1 (its
// image-key hash in the fuses, secure boot on). The agent runs on the unit
// (`cradle-agent run`, reboot and boot environment simulated in-process,
// so its process lives through the whole update). Then v2, an MCUboot
// image of -size MiB signed by the image key, is uploaded, signed into
// the repository and rolled out to the unit; the agent hears of it over
// MQTT, refreshes its TUF metadata, downloads the image through the
// signed URL into the inactive slot, verifies it, reboots through the
// bootloader simulator, passes its health checks and commits.
//
// When the agent has logged the commit and the rollout is completed, the
// program reads VmHWM (the peak), RssAnon and RssFile from
// /proc/<agent pid>/status. Install time is taken from the agent's own
// log: from "update offered" to "update installed; rebooting" (download,
// verification, install), and to "update committed". -memory-limit sets
// the agent's memory.limit. Linux only.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/ota"
)

var (
	smapsFile string
	cold      bool
)

const (
	model  = "sensor-x"
	serial = "SX-2648-00001"
)

func main() {
	size := flag.Int("size", 256, "update image size in MiB")
	dir := flag.String("dir", "", "work directory (default: a temporary one under $TMPDIR, removed after)")
	memLimit := flag.Int64("memory-limit", 0, "the agent's memory.limit in bytes (0: the agent's default)")
	flag.BoolVar(&cold, "cold", false, "drop the agent binary's pages from the page cache before starting it (as after a device's boot, not fresh from the linker)")
	flag.StringVar(&smapsFile, "smaps", "", "copy the agent's /proc/<pid>/smaps after the commit to this file (to see where its resident memory is)")
	flag.Parse()
	if err := run(*size, *dir, *memLimit); err != nil {
		fmt.Fprintln(os.Stderr, "agentupdatebench:", err)
		os.Exit(1)
	}
}

// bench holds the built programs, the work directory and the server.
type bench struct {
	dir       string
	cradle    string // the cradle binary
	agent     string // the cradle-agent binary
	env       []string
	server    string // admin API address
	token     string
	deviceAPI string // host:port of the device listener
	mqtt      string // host:port of the MQTT broker
}

func run(sizeMiB int, dir string, memLimit int64) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "agentupdatebench-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	b := &bench{dir: dir, cradle: filepath.Join(dir, "cradle"), agent: filepath.Join(dir, "cradle-agent")}
	// The CLI's own configuration and environment stay out of the bench.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CRADLE_") || k == "XDG_CONFIG_HOME" {
			continue
		}
		b.env = append(b.env, kv)
	}
	b.env = append(b.env, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))

	logf("building cradle and cradle-agent (release build)")
	if err := b.goBuild(ctx, b.cradle, "./cmd/cradle"); err != nil {
		return err
	}
	if err := b.goBuild(ctx, b.agent, "./cmd/cradle-agent", "-trimpath", "-tags=nethttpomithttp2", "-ldflags=-s -w"); err != nil {
		return err
	}
	agentSize, err := os.Stat(b.agent)
	if err != nil {
		return err
	}

	dataDir := filepath.Join(dir, "data")
	if _, err := b.cli(ctx, "pki", "init", "--data-dir", dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1", "--insecure-plaintext-keys"); err != nil {
		return err
	}
	if _, err := b.cli(ctx, "release", "repo", "init", "--data-dir", dataDir, "--root-key-dir", filepath.Join(dir, "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys"); err != nil {
		return err
	}
	stop, err := b.serve(ctx, dataDir, int64(sizeMiB+16)<<20)
	if err != nil {
		return err
	}
	defer stop()

	// The images, signed by the image key: a small v1 for the factory,
	// the large v2 for the update (pseudo-random, as firmware on the wire).
	imgDir := filepath.Join(dir, "images")
	os.MkdirAll(imgDir, 0o700)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(imgDir, "image-key.pem")
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	pubFile := filepath.Join(imgDir, "image-key.pub")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o644); err != nil {
		return err
	}
	logf("signing v1 (192 KiB) and v2 (%d MiB)", sizeMiB)
	v1, err := b.signImage(ctx, imgDir, keyFile, "1.4.2", 1, 192<<10)
	if err != nil {
		return err
	}
	v2, err := b.signImage(ctx, imgDir, keyFile, "2.0.0", 2, int64(sizeMiB)<<20-4096)
	if err != nil {
		return err
	}
	v2Info, err := os.Stat(v2)
	if err != nil {
		return err
	}

	// The factory: a batch, a station with the update root, one unit.
	srv := []string{"--server", b.server, "--token", b.token}
	if _, err := b.cli(ctx, append([]string{"factory", "mac-range", "add", "02:00:5e:10:00:00-02:00:5e:10:0f:ff"}, srv...)...); err != nil {
		return err
	}
	if _, err := b.cli(ctx, append([]string{"factory", "batch", "create", "--id", "B-2648", "--model", model, "--hw-rev", "C",
		"--quantity", "1", "--firmware", "1.4.2", "--profile", "test", "--serial-pattern", "SX-2648-{seq:05}"}, srv...)...); err != nil {
		return err
	}
	pkiDir := filepath.Join(dataDir, "pki")
	mfgKey, err := keyURI(pkiDir, "manufacturing-ca")
	if err != nil {
		return err
	}
	stationDir := filepath.Join(dir, "station")
	if _, err := b.cli(ctx, append([]string{"factory", "station", "enroll", "--dir", stationDir, "--name", "line-1", "--profile", "test",
		"--station-key", filepath.Join(dir, "station-key.pem"), "--manufacturing-ca-key", mfgKey,
		"--root", filepath.Join(pkiDir, "root.crt"), "--manufacturing-ca", filepath.Join(pkiDir, "manufacturing-ca.crt"),
		"--command-signer", filepath.Join(pkiDir, "command-signer.crt"), "--org", "Acme", "--reserve", "1",
		"--update-root", filepath.Join(ota.RepositoryDir(dataDir, cradle.DefaultTenantName), "root.json")}, srv...)...); err != nil {
		return err
	}
	relDir := filepath.Join(dir, "factory-release")
	os.MkdirAll(relDir, 0o700)
	for name, src := range map[string]string{"firmware.img": v1, "image-key.pem": pubFile} {
		if err := copyFile(src, filepath.Join(relDir, name)); err != nil {
			return err
		}
	}
	os.WriteFile(filepath.Join(relDir, "bootloader.bin"), []byte("simulated bootloader\n"), 0o644)
	os.WriteFile(filepath.Join(relDir, "release.yaml"), []byte("model: "+model+"\nversion: 1.4.2\nprofile: test\nhardware_revisions: [C]\nimage: firmware.img\nbootloader: bootloader.bin\nimage_key: image-key.pem\n"), 0o644)
	unit := filepath.Join(dir, "unit")
	if _, err := hw.CreateSimDevice(unit, "UID-C0DE0000"); err != nil {
		return err
	}
	if _, err := b.cli(ctx, "factory", "provision", "--dir", stationDir, "--batch", "B-2648", "--firmware", relDir, "--operator", "bench", "--device", unit, "--json"); err != nil {
		return err
	}

	// The agent.
	cfg := filepath.Join(dir, "agent.yaml")
	doc := fmt.Sprintf("device: %s\nstate_dir: %s\nserver: %s\nmqtt: {url: \"mqtts://%s\", retry_base: 200ms, retry_max: 1s}\n"+
		"update: {image_keys: [%s], poll_interval: 1h, health_timeout: 1m}\nmemory: {limit: %d}\nlog: {level: info, format: json}\n",
		unit, filepath.Join(dir, "agent-state"), b.deviceAPI, b.mqtt, pubFile, memLimit)
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		return err
	}
	if cold {
		if err := dropCache(b.agent); err != nil {
			return err
		}
	}
	agent := exec.CommandContext(ctx, b.agent, "run", "--config", cfg)
	agent.Env = b.env
	logs := &agentLog{}
	agent.Stderr = logs
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() {
		agent.Process.Kill()
		agent.Wait()
	}()
	if err := waitFor(ctx, "the agent to connect over MQTT", 60*time.Second, logs, func() bool { return logs.find("MQTT connected") != nil }); err != nil {
		return err
	}
	idle, err := procStatus(agent.Process.Pid)
	if err != nil {
		return err
	}

	// The update.
	if _, err := b.cli(ctx, append([]string{"release", "key", "add", "--model", model, pubFile, "--name", "build"}, srv...)...); err != nil {
		return err
	}
	logf("uploading and signing v2")
	out, err := b.cli(ctx, append([]string{"release", "upload", v2, "--model", model, "--version", "2.0.0", "--sign", "--json"}, srv...)...)
	if err != nil {
		return err
	}
	var rel struct{ ID string }
	if err := json.Unmarshal(out, &rel); err != nil || rel.ID == "" {
		return fmt.Errorf("release upload printed %q (%v)", out, err)
	}
	out, err = b.cli(ctx, append([]string{"rollout", "create", "--release", rel.ID, "--serials", serial, "--phases", "100%", "--failure-count", "1", "--json"}, srv...)...)
	if err != nil {
		return err
	}
	var ro struct{ ID string }
	if err := json.Unmarshal(out, &ro); err != nil || ro.ID == "" {
		return fmt.Errorf("rollout create printed %q (%v)", out, err)
	}
	logf("rollout %s created; waiting for the agent to commit", ro.ID)
	if err := waitFor(ctx, "the agent to commit v2", 10*time.Minute, logs, func() bool {
		return logs.find("update committed") != nil || logs.find("update failed") != nil
	}); err != nil {
		return err
	}
	peak, err := procStatus(agent.Process.Pid)
	if err != nil {
		return err
	}
	if smapsFile != "" {
		if err := copyFile(fmt.Sprintf("/proc/%d/smaps", agent.Process.Pid), smapsFile); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, "rollout "+ro.ID+" to complete", time.Minute, logs, func() bool {
		out, err := b.cli(ctx, append([]string{"rollout", "show", ro.ID, "--json"}, srv...)...)
		var r struct{ Status struct{ State string } }
		return err == nil && json.Unmarshal(out, &r) == nil && r.Status.State == "completed"
	}); err != nil {
		return err
	}
	offered, installed, committed := logs.find("update offered"), logs.find("update installed; rebooting"), logs.find("update committed")
	if offered == nil || installed == nil || committed == nil {
		return fmt.Errorf("the agent's log lacks offered/installed/committed:\n%s", logs.tail(30))
	}
	install := installed.Time.Sub(offered.Time)
	mib := float64(v2Info.Size()) / (1 << 20)
	fmt.Printf("cradle-agent (release build, %.1f MiB) updating a unit through cradle serve on 127.0.0.1 (MQTT notice, TUF, signed URL, HTTPS)\n", float64(agentSize.Size())/(1<<20))
	fmt.Printf("image: %d bytes (%.0f MiB), MCUboot ECDSA P-256; memory.limit %d\n", v2Info.Size(), mib, memLimit)
	fmt.Printf("%-52s %9s %10s\n", "", "seconds", "MiB/s")
	fmt.Printf("%-52s %9.2f %10.1f\n", "offered → installed (download, verify, install)", install.Seconds(), mib/install.Seconds())
	fmt.Printf("%-52s %9.2f\n", "offered → committed (with boot and health check)", committed.Time.Sub(offered.Time).Seconds())
	fmt.Printf("%-52s %9s %10s %10s\n", "agent memory (MiB)", "VmHWM", "RssAnon", "RssFile")
	fmt.Printf("%-52s %9.1f %10.1f %10.1f\n", "connected, idle", mib2(idle["VmHWM"]), mib2(idle["RssAnon"]), mib2(idle["RssFile"]))
	fmt.Printf("%-52s %9.1f %10.1f %10.1f\n", "after the commit (VmHWM: peak of the whole run)", mib2(peak["VmHWM"]), mib2(peak["RssAnon"]), mib2(peak["RssFile"]))
	fmt.Printf("agent peak resident memory: VmHWM %.1f MiB (goal ≤ 20 MiB)\n", mib2(peak["VmHWM"]))
	return nil
}

func mib2(n int64) float64 { return float64(n) / (1 << 20) }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "agentupdatebench: "+format+"\n", args...)
}

func (b *bench) goBuild(ctx context.Context, out, pkg string, flags ...string) error {
	args := append([]string{"build", "-o", out}, flags...)
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// cli runs the cradle CLI and returns its stdout.
func (b *bench) cli(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.cradle, args...)
	cmd.Env = b.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("cradle %s: %w\n%s", strings.Join(args[:min(3, len(args))], " "), err, stderr.Bytes())
	}
	return out, nil
}

// signImage writes a pseudo-random body of n bytes and signs it with
// the CLI into an MCUboot image.
func (b *bench) signImage(ctx context.Context, dir, keyFile, version string, counter int, n int64) (string, error) {
	in := filepath.Join(dir, version+".bin")
	f, err := os.Create(in)
	if err != nil {
		return "", err
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	out := filepath.Join(dir, model+"-"+version+".img")
	if _, err := b.cli(ctx, "release", "sign-image", "--key", keyFile, "--version", version, "--security-counter", strconv.Itoa(counter), "--pad-header", in, out); err != nil {
		return "", err
	}
	return out, os.Remove(in)
}

var (
	tokenRE  = regexp.MustCompile(`export CRADLE_TOKEN=(\S+)`)
	serverRE = regexp.MustCompile(`export CRADLE_SERVER=(\S+)`)
)

// serve starts `cradle serve` on 127.0.0.1 and learns its addresses and
// the first admin token.
func (b *bench) serve(ctx context.Context, dataDir string, maxImage int64) (func(), error) {
	cmd := exec.CommandContext(ctx, b.cradle, "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0",
		"--device-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
		"--ota-max-image-size", strconv.FormatInt(maxImage, 10))
	cmd.Env = b.env
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	var mu sync.Mutex
	found := make(chan struct{}, 4)
	set := func(p *string, v string) {
		mu.Lock()
		defer mu.Unlock()
		if *p == "" {
			*p = v
			found <- struct{}{}
		}
	}
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if m := tokenRE.FindStringSubmatch(s.Text()); m != nil {
				set(&b.token, m[1])
			}
			if m := serverRE.FindStringSubmatch(s.Text()); m != nil {
				set(&b.server, m[1])
			}
		}
	}()
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			var l struct{ Msg, Addr string }
			if json.Unmarshal(s.Bytes(), &l) != nil {
				continue
			}
			switch l.Msg {
			case "device listener":
				set(&b.deviceAPI, l.Addr)
			case "MQTT broker":
				set(&b.mqtt, l.Addr)
			}
			if strings.Contains(s.Text(), `"level":"ERROR"`) {
				fmt.Fprintf(os.Stderr, "cradle serve: %s\n", s.Text())
			}
		}
	}()
	for range 4 {
		select {
		case <-found:
		case <-time.After(30 * time.Second):
			stop()
			return nil, errors.New("cradle serve printed no token or addresses within 30 s")
		}
	}
	return stop, nil
}

// keyURI returns the URI of the named CA key from the PKI's keys.yaml.
func keyURI(pkiDir, name string) (string, error) {
	data, err := os.ReadFile(filepath.Join(pkiDir, "keys.yaml"))
	if err != nil {
		return "", err
	}
	var doc struct{ Keys map[string]string }
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return "", fmt.Errorf("keys.yaml: %w", err)
	}
	u, ok := doc.Keys[name]
	if !ok {
		return "", fmt.Errorf("keys.yaml has no %s key", name)
	}
	if !filepath.IsAbs(strings.TrimPrefix(u, "file:")) && !strings.HasPrefix(u, "pkcs11:") {
		u = filepath.Join(pkiDir, strings.TrimPrefix(u, "file:"))
	}
	return u, nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// agentLog keeps the agent's JSON log lines.
type agentLog struct {
	mu    sync.Mutex
	buf   []byte
	lines []logLine
}

type logLine struct {
	Time time.Time
	Msg  string
	raw  string
}

func (l *agentLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		raw := string(l.buf[:i])
		l.buf = l.buf[i+1:]
		var ll logLine
		json.Unmarshal([]byte(raw), &ll)
		ll.raw = raw
		l.lines = append(l.lines, ll)
	}
	return len(p), nil
}

// find returns the first line with the message msg, or nil.
func (l *agentLog) find(msg string) *logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.lines {
		if l.lines[i].Msg == msg {
			return &l.lines[i]
		}
	}
	return nil
}

func (l *agentLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s []string
	for _, ll := range l.lines[max(0, len(l.lines)-n):] {
		s = append(s, ll.raw)
	}
	return strings.Join(s, "\n")
}

func waitFor(ctx context.Context, what string, limit time.Duration, logs *agentLog, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("waited %v for %s; agent log:\n%s", limit, what, logs.tail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// procStatus reads VmHWM, RssAnon and RssFile of pid, in bytes.
func procStatus(pid int) (map[string]int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if name != "VmHWM" && name != "RssAnon" && name != "RssFile" || !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/status %s: %w", pid, name, err)
		}
		out[name] = kb << 10
	}
	if len(out) != 3 {
		return nil, fmt.Errorf("/proc/%d/status lacks VmHWM, RssAnon or RssFile", pid)
	}
	return out, nil
}

// dropCache syncs file and asks the kernel to drop its pages from the
// page cache, so that the next exec reads it as after a boot.
func dropCache(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
