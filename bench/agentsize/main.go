// Command agentsize measures cradle-agent's stripped binary size and idle
// resident memory next to the Debian mender client's (the goal:
// ≤ 8 MB and ≤ 12 MB). Run it from the module root:
//
//	go run ./bench/agentsize
//
// It builds cmd/cradle-agent twice with the toolchain in PATH: as released,
// what a device gets (go build -trimpath -tags=nethttpomithttp2
// -ldflags='-s -w'; -tags changes the tags, -gcflags adds compiler
// settings, CGO_ENABLED=0 in the environment builds without cgo, hence
// without the PKCS#11 key store), and with symbols (for the
// per-module breakdown), and reports their sizes next to -mender's
// (/usr/bin/mender by default, Debian's mender-client 3.4) and that
// binary stripped with strip(1). The breakdown sums the sizes of the
// symbols each Go module puts in the binary (go tool nm, text, read-only
// data and data; not bss), so the figures can be re-measured after a
// dependency is added.
//
// Then it starts each program idle -runs times and reads VmRSS, VmHWM and
// the anonymous and file-backed parts of VmRSS from /proc/PID/status after
// -settle. The file-backed part is the mapped binary and its shared
// libraries. On the machine measured (Linux 6.18, ext4) a started binary
// is nearly all resident whatever code runs (a program that links
// net/http and only sleeps: 5.3 MB file-backed for a 5.8 MB binary), so
// the binary's size is most of the RSS. The programs: cradle-agent run on
// a simulated unit provisioned here as the factory leaves it (IDevID key,
// IDevID from a throwaway manufacturing CA, factory data locked, lifecycle
// fuse at provisioned), and mender daemon with a minimal configuration; both point
// at a local port that accepts connections and closes them, so each tries
// its server, fails and waits to retry. Mender reads its artifact name from
// /etc/mender/artifact_info and runs
// /usr/share/mender/identity/mender-device-identity, fixed paths; when
// they are missing the program writes them for the run and removes them
// afterwards. Linux only.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
)

func main() {
	mender := flag.String("mender", "/usr/bin/mender", "the mender client to compare with (empty: none)")
	settle := flag.Duration("settle", 15*time.Second, "how long each program runs before its memory is read")
	top := flag.Int("top", 25, "modules and packages to list in the size breakdown")
	runs := flag.Int("runs", 3, "how many times each program is started and measured (the figures vary from run to run)")
	gcflags := flag.String("gcflags", "", "go build -gcflags for cradle-agent (to see what a compiler setting saves; the release build sets none)")
	tags := flag.String("tags", releaseTags, "build tags for cradle-agent: the release build's by default (-tags= shows what they save)")
	flag.Parse()
	if *runs < 1 {
		fmt.Fprintln(os.Stderr, "agentsize: -runs must be at least 1")
		os.Exit(2)
	}
	if err := run(*mender, *settle, *runs, *top, *tags, *gcflags); err != nil {
		fmt.Fprintln(os.Stderr, "agentsize:", err)
		os.Exit(1)
	}
}

// releaseTags are the build tags of the release build of cradle-agent.
// nethttpomithttp2 leaves HTTP/2 out of net/http (383 KB of the stripped
// binary): the agent's HTTPS requests (EST, the device API) are few and
// short, and HTTP/1.1 serves them.
const releaseTags = "nethttpomithttp2"

func run(mender string, settle time.Duration, runs, top int, tags, gcflags string) error {
	dir, err := os.MkdirTemp("", "agentsize-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	stripped, full := filepath.Join(dir, "cradle-agent"), filepath.Join(dir, "cradle-agent.sym")
	if err := goBuild(stripped, tags, gcflags, "-s -w"); err != nil {
		return err
	}
	if err := goBuild(full, tags, gcflags, ""); err != nil {
		return err
	}
	fmt.Printf("binary sizes (bytes); cradle-agent built with go build -trimpath -tags=%q -gcflags=%q -ldflags='-s -w' (the release build: -tags=%s, no -gcflags)\n", tags, gcflags, releaseTags)
	if err := printSize("cradle-agent stripped", stripped, true); err != nil {
		return err
	}
	if err := printSize("cradle-agent with symbols", full, false); err != nil {
		return err
	}
	if mender != "" {
		ms := filepath.Join(dir, "mender.stripped")
		if out, err := exec.Command("strip", "-o", ms, mender).CombinedOutput(); err != nil {
			return fmt.Errorf("strip %s: %v: %s", mender, err, out)
		}
		if err := printSize(mender+" as packaged", mender, true); err != nil {
			return err
		}
		if err := printSize(mender+" stripped (strip -o)", ms, true); err != nil {
			return err
		}
	}
	if err := breakdown(full, tags, top); err != nil {
		return err
	}

	srv, err := closingServer()
	if err != nil {
		return err
	}
	defer srv.Close()
	addr := srv.Addr().String()

	fmt.Printf("\nidle resident memory after %s, %d runs each (kB, from /proc/PID/status)\n", settle, runs)
	for i := range runs {
		// A fresh unit and state each run: a restarted agent's state
		// (failure count, restart guard) would change what it does.
		d := filepath.Join(dir, fmt.Sprintf("run%d", i))
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
		cmd, err := agentCommand(d, stripped, addr)
		if err != nil {
			return err
		}
		if err := measure("cradle-agent run", cmd, settle); err != nil {
			return err
		}
	}
	if mender != "" {
		for i := range runs {
			d := filepath.Join(dir, fmt.Sprintf("mender%d", i))
			if err := os.Mkdir(d, 0o700); err != nil {
				return err
			}
			cmd, cleanup, err := menderCommand(d, mender, addr)
			if err != nil {
				return err
			}
			err = measure("mender daemon", cmd, settle)
			cleanup()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func goBuild(out, tags, gcflags, ldflags string) error {
	args := []string{"build", "-trimpath", "-o", out}
	if gcflags != "" {
		args = append(args, "-gcflags="+gcflags)
	}
	if ldflags != "" {
		args = append(args, "-ldflags="+ldflags)
	}
	if tags != "" {
		args = append(args, "-tags="+tags)
	}
	cmd := exec.Command("go", append(args, "./cmd/cradle-agent")...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build (run from the module root): %w", err)
	}
	return nil
}

// printSize prints a line of the size table: the file's size in bytes
// and, when withMiB, in MiB.
func printSize(label, path string, withMiB bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if withMiB {
		fmt.Printf("  %-44s %10d  (%.2f MiB)\n", label, fi.Size(), mib(fi.Size()))
	} else {
		fmt.Printf("  %-44s %10d\n", label, fi.Size())
	}
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// breakdown prints the bytes each module and each package put in the
// binary, from its symbol table.
func breakdown(bin, tags string, top int) error {
	f, err := elf.Open(bin)
	if err != nil {
		return err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	args := []string{"list", "-deps", "-f", "{{.ImportPath}} {{with .Module}}{{.Path}}{{else}}std{{end}}"}
	if tags != "" {
		args = append(args, "-tags="+tags)
	}
	list, err := exec.Command("go", append(args, "./cmd/cradle-agent")...).Output()
	if err != nil {
		return fmt.Errorf("go list: %w", err)
	}
	module := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		if p, m, ok := strings.Cut(l, " "); ok {
			module[p] = m
		}
	}
	pkgs := map[string]int64{}
	var total int64
	for _, s := range syms {
		// Only what the file holds: not bss, not undefined symbols.
		if s.Section == elf.SHN_UNDEF || int(s.Section) >= len(f.Sections) || f.Sections[s.Section].Type == elf.SHT_NOBITS {
			continue
		}
		pkgs[symbolPackage(s.Name)] += int64(s.Size)
		total += int64(s.Size)
	}
	mods := map[string]int64{}
	for p, n := range pkgs {
		m, ok := module[p]
		switch {
		case ok:
		case strings.HasPrefix(p, "vendor/") || p == "runtime" || !strings.Contains(p, "."):
			m = "std"
		default:
			m = "(other: " + p + ")"
		}
		mods[m] += n
	}
	fmt.Printf("\ncradle-agent symbol bytes by module (text+rodata+data, total %d; the rest of the file is tables and headers)\n", total)
	printTop(mods, top, total)
	fmt.Printf("\nby package (top %d)\n", top)
	printTop(pkgs, top, total)
	return nil
}

// symbolPackage returns the import path of a Go symbol's package:
// "github.com/a/b.(*T).M" is github.com/a/b, "type:*net/http.Request" is
// net/http; symbols of no package (go:…, runtime tables) are "(runtime
// tables)".
func symbolPackage(s string) string {
	for _, p := range []string{"go:itab.", "type:", ".eq.", ".hash.", "*"} {
		s = strings.TrimPrefix(s, p)
	}
	if i := strings.IndexAny(s, "[,"); i >= 0 {
		s = s[:i] // a generic instantiation or an itab's interface: the first type's package
	}
	if s == "" || strings.HasPrefix(s, "go:") || strings.HasPrefix(s, "go.shape") {
		return "(runtime tables)"
	}
	for _, p := range []string{"struct {", "interface {", "func(", "map[", "chan ", "<-chan", "noalg."} {
		if strings.HasPrefix(s, p) {
			return "(runtime tables)"
		}
	}
	slash := strings.LastIndex(s, "/")
	dot := strings.Index(s[slash+1:], ".")
	if dot < 0 {
		return "(runtime tables)"
	}
	// The linker escapes the dots in a path's last element (yaml%2ev3).
	return strings.ReplaceAll(s[:slash+1+dot], "%2e", ".")
}

func printTop(m map[string]int64, top int, total int64) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	for i, k := range keys {
		if i == top {
			break
		}
		fmt.Printf("  %10d %5.1f%%  %s\n", m[k], 100*float64(m[k])/float64(total), k)
	}
}

// closingServer accepts TCP connections on a local port and closes them at
// once: a server that is down in the way that keeps a client retrying.
func closingServer() (net.Listener, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, nil
}

// agentCommand provisions a simulated unit in dir and returns cradle-agent
// run for it, pointed at addr.
func agentCommand(dir, bin, addr string) (*exec.Cmd, error) {
	ctx := context.Background()
	unit := filepath.Join(dir, "unit")
	dev, err := hw.CreateSimDevice(unit, "uid-BENCH-1")
	if err != nil {
		return nil, err
	}
	key, err := dev.Keys.CreateKey(ctx, agent.DefaultKeyName, hw.ECDSAP256)
	if err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agentsize manufacturing CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject:   pkix.Name{CommonName: "BENCH-1", SerialNumber: "BENCH-1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	info, _ := json.Marshal(map[string]string{"serial": "BENCH-1", "model": "bench"})
	files := map[string][]byte{
		agent.FactoryFileIDevID:     append(pemCert(leafDER), pemCert(caDER)...),
		agent.FactoryFileRoot:       pemCert(caDER),
		agent.FactoryFileDeviceInfo: info,
	}
	if err := dev.FactoryData.Write(ctx, files); err != nil {
		return nil, err
	}
	if err := dev.FactoryData.Lock(ctx); err != nil {
		return nil, err
	}
	w, err := hw.LifecycleWord(hw.LifecycleProvisioned)
	if err != nil {
		return nil, err
	}
	if err := dev.Fuses.Program(ctx, hw.FuseLifecycle, w); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("device: %s\nstate_dir: %s\nserver: https://%s\nlog:\n  level: warn\n", unit, filepath.Join(dir, "state"), addr)
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return exec.Command(bin, "run", "--config", cfgPath), nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// menderCommand returns mender daemon with a minimal configuration in dir
// pointed at addr, and a cleanup that removes the files it wrote outside
// dir.
func menderCommand(dir, bin, addr string) (*exec.Cmd, func(), error) {
	data := filepath.Join(dir, "mender")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(data, "device_type"), []byte("device_type=bench\n"), 0o600); err != nil {
		return nil, nil, err
	}
	conf, _ := json.Marshal(map[string]any{"ServerURL": "https://" + addr, "DeviceTypeFile": filepath.Join(data, "device_type"),
		"UpdatePollIntervalSeconds": 1800, "InventoryPollIntervalSeconds": 28800, "RetryPollIntervalSeconds": 300})
	confPath := filepath.Join(dir, "mender.conf")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		return nil, nil, err
	}
	// Mender reads these at fixed paths only; Debian's package ships
	// neither (the identity script is an example under /usr/share/doc).
	var written []string
	cleanup := func() {
		for _, p := range written {
			os.Remove(p)
		}
	}
	for _, f := range []struct {
		path, text string
		mode       os.FileMode
	}{
		{"/etc/mender/artifact_info", "artifact_name=agentsize-bench\n", 0o644},
		{"/usr/share/mender/identity/mender-device-identity", "#!/bin/sh\necho serial=BENCH-1\n", 0o755},
	} {
		if _, err := os.Stat(f.path); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			cleanup()
			return nil, nil, err
		}
		if err := os.WriteFile(f.path, []byte(f.text), f.mode); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("mender needs %s: %w", f.path, err)
		}
		written = append(written, f.path)
	}
	cmd := exec.Command(bin, "--config", confPath, "--fallback-config", filepath.Join(dir, "none.conf"),
		"--data", data, "--no-syslog", "--log-level", "warning", "daemon")
	return cmd, cleanup, nil
}

// measure starts cmd, waits settle, prints its VmRSS and VmHWM and stops
// it with SIGTERM. A program that exits before settle is an error (with
// its output).
func measure(name string, cmd *exec.Cmd, settle time.Duration) error {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return fmt.Errorf("%s exited before it settled (%v):\n%s", name, err, out.Bytes())
	case <-time.After(settle):
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	fmt.Printf("  %-20s VmRSS %10s  VmHWM %10s  (anonymous %s, file %s)  threads %s\n", name, fields["VmRSS"], fields["VmHWM"],
		strings.TrimSuffix(fields["RssAnon"], " kB"), strings.TrimSuffix(fields["RssFile"], " kB"), fields["Threads"])
	if os.Getenv("AGENTSIZE_LOG") != "" {
		fmt.Printf("%s output:\n%s\n", name, out.Bytes())
	}
	return nil
}
