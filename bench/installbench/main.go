// Command installbench measures the agent's install of a large update: its
// throughput against a shell pipeline doing the least an installer must
// (download, hash, write), and the agent's peak resident memory.
//
//	go run ./bench/installbench -size 256
//
// It signs an MCUboot image of -size MiB, publishes it in a TUF
// repository, and serves the repository, the image and a device update
// API (offer, status, software reports) over HTTPS on 127.0.0.1. Then, on
// the same image in the same run:
//
//   - baseline: `curl URL | tee FIFO | dd of=FILE bs=1M` with
//     `sha256sum <FIFO`, that is curl | tee >(sha256sum) | dd: the
//     download hashed and written to a file in the same directory;
//   - agent: this program re-run as a child process (-agent) holding the
//     real updater (internal/agent/update) on a simulated unit
//     (hw.SimDevice, slot files in the same directory) with the bootloader
//     simulator: TUF refresh, download into the inactive slot through
//     hw.SlotWriter (each write synced, as flash is), verification of the
//     TUF digest and the MCUboot signature in place, install, the
//     simulated reboot (the bootloader verifies the slot again), the
//     health check and the commit.
//
// Install throughput is the image size over the time from the update
// check to the reboot (download + verify + install); the reboot and
// commit are reported apart. Peak memory is VmHWM from
// /proc/<child>/status, read by this process when the child has finished
// and waits on its stdin (not ru_maxrss, which on Linux also counts the
// parent's memory the child shared before its exec). -rounds repeats both and reports the median. Linux only;
// needs curl, tee, sha256sum and dd.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"cradle"
	"cradle/internal/agent/bootsim"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
	"cradle/internal/mcuboot"
	"cradle/internal/tuf"
)

const model = "gw-100"

func main() {
	agent := flag.Bool("agent", false, "run as the agent child (internal)")
	size := flag.Int("size", 256, "image size in MiB")
	rounds := flag.Int("rounds", 3, "rounds of baseline and agent; the median is reported")
	dir := flag.String("dir", "", "work directory (default: a temporary one under $TMPDIR, removed after)")
	flag.Parse()
	var err error
	if *agent {
		err = runAgent(*dir)
	} else {
		err = run(*size, *rounds, *dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "installbench:", err)
		os.Exit(1)
	}
}

// agentConfig is what the parent hands the child, as config.json in its
// directory.
type agentConfig struct {
	Server    string `json:"server"`
	CAFile    string `json:"ca_file"`
	RootFile  string `json:"root_file"`
	ImageKey  string `json:"image_key"` // PEM public key
	DeviceDir string `json:"device_dir"`
	StateDir  string `json:"state_dir"`
}

// agentResult is what the child prints when it is done.
type agentResult struct {
	Install time.Duration            `json:"install"` // check to reboot
	Boot    time.Duration            `json:"boot"`    // the simulated bootloader
	Total   time.Duration            `json:"total"`   // check to idle
	Phases  map[string]time.Duration `json:"phases"`  // time spent in each phase
	Outcome string                   `json:"outcome"`
	Reason  string                   `json:"reason"`
	Running string                   `json:"running"` // digest of the booted slot

	// Filled by the parent: the child's resident memory at the end.
	RssAnon, RssFile int64 `json:"-"`
}

func run(sizeMiB, rounds int, dir string) error {
	for _, p := range []string{"curl", "tee", "sha256sum", "dd", "bash"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s is needed for the baseline: %w", p, err)
		}
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "installbench-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ctx := context.Background()
	fmt.Fprintf(os.Stderr, "installbench: signing a %d MiB image in %s\n", sizeMiB, dir)
	w, err := newWorld(ctx, dir, sizeMiB<<20)
	if err != nil {
		return err
	}
	defer w.srv.Close()

	var base, inst []float64 // seconds
	var results []agentResult
	var hwm []int64
	for i := range rounds {
		d, err := w.baseline(ctx, filepath.Join(dir, fmt.Sprintf("baseline-%d.img", i)))
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		base = append(base, d.Seconds())
		res, peak, err := w.agent(ctx, filepath.Join(dir, fmt.Sprintf("agent-%d", i)))
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		inst = append(inst, res.Install.Seconds())
		hwm = append(hwm, peak)
		results = append(results, res)
		fmt.Fprintf(os.Stderr, "round %d: baseline %.2fs, agent install %.2fs (boot %.2fs), VmHWM %.1f MiB\n",
			i+1, d.Seconds(), res.Install.Seconds(), res.Boot.Seconds(), float64(peak)/(1<<20))
	}
	mib := float64(w.size) / (1 << 20)
	b, a := median(base), median(inst)
	// The breakdown is the median round's.
	last := results[slices.Index(inst, a)]
	fmt.Printf("image: %d bytes (%.0f MiB), MCUboot ECDSA P-256, served over HTTPS from 127.0.0.1; %d rounds, medians\n", w.size, mib, rounds)
	fmt.Printf("%-58s %9s %10s\n", "", "seconds", "MiB/s")
	fmt.Printf("%-58s %9.2f %10.1f\n", "baseline: curl | tee >(sha256sum) | dd of=FILE bs=1M", b, mib/b)
	fmt.Printf("%-58s %9.2f %10.1f\n", "agent: check→download→verify(TUF+MCUboot)→install", a, mib/a)
	fmt.Printf("%-58s %9.2f\n", "  of which downloading (hash + synced slot writes)", last.Phases[string(update.PhaseDownloading)].Seconds())
	fmt.Printf("%-58s %9.2f\n", "  of which verifying (digest + MCUboot, in place)", last.Phases[string(update.PhaseVerifying)].Seconds())
	fmt.Printf("%-58s %9.2f\n", "then: simulated boot (secure-boot check of the slot)", last.Boot.Seconds())
	fmt.Printf("install throughput ratio (agent / baseline): %.2f (goal ≥ 0.80)\n", b/a)
	fmt.Printf("agent peak resident memory: VmHWM %.1f MiB (max over rounds; goal ≤ 20 MiB); at the end RssAnon %.1f MiB, RssFile %.1f MiB\n",
		float64(slices.Max(hwm))/(1<<20), float64(last.RssAnon)/(1<<20), float64(last.RssFile)/(1<<20))
	fmt.Printf("agent outcome: %s %s\n", last.Outcome, last.Reason)
	return nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// world is the repository, the image and the HTTPS server.
type world struct {
	dir      string
	imgPath  string
	size     int64
	digest   string
	counter  uint32
	imageKey crypto.PublicKey
	root     []byte
	srv      *httptest.Server
	caFile   string
}

func newWorld(ctx context.Context, dir string, size int) (*world, error) {
	gen := func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	var keys [5]crypto.Signer
	for i := range keys {
		k, err := gen()
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	imageKey := keys[4]
	w := &world{dir: dir, counter: 2, imageKey: imageKey.Public()}

	// The image: a pseudo-random body (incompressible, like firmware on
	// the wire), signed with the slot padding imgtool --pad would add.
	body := make([]byte, size-64<<10)
	if _, err := rand.Read(body); err != nil {
		return nil, err
	}
	v, _ := mcuboot.ParseVersion("2.0.0")
	img, err := mcuboot.Sign(body, mcuboot.Options{Version: v, SecurityCounter: &w.counter, PadHeader: true, Key: imageKey, SlotSize: size, Align: 8})
	body = nil
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(img)
	w.size, w.digest = int64(len(img)), hex.EncodeToString(sum[:])
	w.imgPath = filepath.Join(dir, "release.img")
	if err := os.WriteFile(w.imgPath, img, 0o600); err != nil {
		return nil, err
	}
	img = nil

	repoDir := filepath.Join(dir, "tuf")
	signers := tuf.Signers{Root: []crypto.Signer{keys[0]}, Targets: keys[1], Snapshot: keys[2], Timestamp: keys[3]}
	repo, err := tuf.Init(ctx, tuf.Options{Store: tuf.DirStore{Dir: repoDir}}, tuf.RootSpec{Keys: []crypto.PublicKey{keys[0].Public()}, Threshold: 1}, signers)
	if err != nil {
		return nil, err
	}
	if w.root, err = repo.Root(); err != nil {
		return nil, err
	}
	custom := tuf.Custom{Model: model, HardwareRevisions: []string{"*"}, Version: "2.0.0", SecurityCounter: w.counter}
	if err := repo.AddTarget(w.targetPath(), tuf.Target{Length: w.size, SHA256: sum[:], Custom: custom}); err != nil {
		return nil, err
	}
	if err := repo.Publish(ctx, signers); err != nil {
		return nil, err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /device/v1/update", func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("running") == w.digest {
			rw.WriteHeader(http.StatusNoContent) // the device runs the release
			return
		}
		json.NewEncoder(rw).Encode(w.offer())
	})
	mux.HandleFunc("POST /device/v1/update/status", func(rw http.ResponseWriter, r *http.Request) {
		var rep cradle.UpdateReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		rw.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /device/v1/software", func(rw http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		rw.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("GET /device/v1/tuf/", http.StripPrefix("/device/v1/tuf/", http.FileServer(http.Dir(repoDir))))
	mux.HandleFunc("GET /artifacts/{hex}", func(rw http.ResponseWriter, r *http.Request) {
		if r.PathValue("hex") != w.digest {
			http.NotFound(rw, r)
			return
		}
		http.ServeFile(rw, r, w.imgPath)
	})
	w.srv = httptest.NewUnstartedServer(mux)
	w.srv.StartTLS()
	w.caFile = filepath.Join(dir, "ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.srv.Certificate().Raw})
	if err := os.WriteFile(w.caFile, ca, 0o600); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *world) targetPath() string { return model + "/2.0.0/app.bin" }

func (w *world) artifactURL() string { return w.srv.URL + "/artifacts/" + w.digest }

func (w *world) offer() *update.Offer {
	o := &update.Offer{RolloutID: "ro_bench", Attempt: 1}
	o.Release.ID, o.Release.Model, o.Release.Version, o.Release.Kind = "rel_bench", model, "2.0.0", "mcuboot"
	o.Release.SecurityCounter, o.Release.SHA256, o.Release.Size, o.Release.TargetPath = w.counter, w.digest, w.size, w.targetPath()
	o.Artifact.URL, o.Artifact.SHA256, o.Artifact.Size = w.artifactURL(), w.digest, w.size
	o.TUF.MetadataURL = w.srv.URL + "/device/v1/tuf/"
	return o
}

// baseline runs curl | tee >(sha256sum) | dd into file and checks the
// digest it printed.
func (w *world) baseline(ctx context.Context, file string) (time.Duration, error) {
	sumFile := file + ".sha256"
	// tee feeds sha256sum through a FIFO (a process substitution would
	// not be waited for), and the time includes both ends.
	script := `set -eo pipefail
rm -f "$FIFO"; mkfifo "$FIFO"
sha256sum <"$FIFO" >"$SUM" &
curl -sS --fail --cacert "$CA" "$URL" | tee "$FIFO" | dd of="$OUT" bs=1M status=none
wait $!`
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), "CA="+w.caFile, "URL="+w.artifactURL(), "SUM="+sumFile, "OUT="+file, "FIFO="+file+".fifo")
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	got, err := os.ReadFile(sumFile)
	if err != nil {
		return 0, err
	}
	if f := strings.Fields(string(got)); len(f) == 0 || f[0] != w.digest {
		return 0, fmt.Errorf("sha256sum printed %q, want %s", got, w.digest)
	}
	os.Remove(file)
	return d, nil
}

// agent prepares a unit running an old image in slot A, runs the child
// on it and returns its result and its VmHWM in bytes.
func (w *world) agent(ctx context.Context, dir string) (agentResult, int64, error) {
	var res agentResult
	cfg := agentConfig{Server: w.srv.URL, CAFile: w.caFile, RootFile: filepath.Join(dir, "root.json"),
		DeviceDir: filepath.Join(dir, "device"), StateDir: filepath.Join(dir, "state")}
	der, err := x509.MarshalPKIXPublicKey(w.imageKey)
	if err != nil {
		return res, 0, err
	}
	cfg.ImageKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err := os.MkdirAll(cfg.DeviceDir, 0o700); err != nil {
		return res, 0, err
	}
	if err := os.WriteFile(cfg.RootFile, w.root, 0o600); err != nil {
		return res, 0, err
	}
	if err := w.provision(ctx, cfg.DeviceDir); err != nil {
		return res, 0, err
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return res, 0, err
	}
	defer os.RemoveAll(dir)

	exe, err := os.Executable()
	if err != nil {
		return res, 0, err
	}
	cmd := exec.CommandContext(ctx, exe, "-agent", "-dir", dir)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return res, 0, err
	}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		cmd.Wait()
		return res, 0, fmt.Errorf("the agent printed no result: %w", err)
	}
	// The child has finished and waits for its stdin to close: its
	// /proc status still holds its peak.
	mem, perr := procStatus(cmd.Process.Pid, "VmHWM", "RssAnon", "RssFile")
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return res, 0, err
	}
	if perr != nil {
		return res, 0, perr
	}
	res.RssAnon, res.RssFile = mem["RssAnon"], mem["RssFile"]
	if err := json.Unmarshal(line, &res); err != nil {
		return res, 0, fmt.Errorf("agent result %q: %w", line, err)
	}
	if res.Outcome != string(cradle.UpdateSucceeded) || res.Running != w.digest {
		return res, 0, fmt.Errorf("the update did not succeed: %s %s (running %s)", res.Outcome, res.Reason, res.Running)
	}
	return res, mem["VmHWM"], nil
}

// provision makes a unit with secure boot on, the image key fused and a
// small old image (counter 1) in slot A, booted.
func (w *world) provision(ctx context.Context, devDir string) error {
	dev, err := hw.CreateSimDevice(devDir, "uid-bench")
	if err != nil {
		return err
	}
	kh, err := mcuboot.KeyHash(w.imageKey)
	if err != nil {
		return err
	}
	for f, v := range map[string][]byte{hw.FuseImageKeyHash: kh, hw.FuseSecureBoot: {1}} {
		if err := dev.Fuses.Program(ctx, f, v); err != nil {
			return err
		}
	}
	// The old image is signed by a key that is not the image key: the
	// bench never boots it, and this keeps the image key's private half
	// out of the child and this function.
	old := bytes.Repeat([]byte("old firmware "), 1000)
	one := uint32(1)
	oldKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	oldImg, err := mcuboot.Sign(old, mcuboot.Options{SecurityCounter: &one, PadHeader: true, Key: oldKey})
	if err != nil {
		return err
	}
	if _, err := dev.Slots.Write(ctx, hw.SlotA, bytes.NewReader(oldImg)); err != nil {
		return err
	}
	return dev.BootEnv.Set(ctx, map[string]string{hw.EnvBootSlot: "a"})
}

// procStatus reads the given fields of /proc/<pid>/status, in bytes.
func procStatus(pid int, fields ...string) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if !ok || !slices.Contains(fields, name) {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc status %s: %w", name, err)
		}
		out[name] = kb << 10
	}
	if len(out) != len(fields) {
		return nil, fmt.Errorf("/proc status has %d of the fields %v", len(out), fields)
	}
	return out, nil
}

// runAgent is the child: the real updater on the simulated unit in dir.
func runAgent(dir string) error {
	// The agent's default soft memory limit (cmd/cradle-agent memory.go:
	// 10 MiB), so that throughput is measured as the agent runs.
	debug.SetMemoryLimit(10 << 20)
	var cfg agentConfig
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return errors.New("no CA certificate")
	}
	root, err := os.ReadFile(cfg.RootFile)
	if err != nil {
		return err
	}
	blk, _ := pem.Decode([]byte(cfg.ImageKey))
	if blk == nil {
		return errors.New("no image key")
	}
	key, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return err
	}
	dev, err := hw.OpenSimDevice(cfg.DeviceDir)
	if err != nil {
		return err
	}
	httpc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Minute}

	var (
		res       agentResult
		start     = time.Now()
		phaseFrom = start
		phase     = string(update.PhaseIdle)
	)
	res.Phases = map[string]time.Duration{}
	keys := []crypto.PublicKey{key}
	up, err := update.New(update.Options{
		Device: dev, Writer: dev.Sim, StateDir: cfg.StateDir,
		Server:   &update.Client{ServerURL: cfg.Server, HTTP: httpc},
		Metadata: &update.TUF{Dir: filepath.Join(cfg.StateDir, "tuf"), TrustedRoot: root, HTTP: httpc},
		Model:    model, HardwareRevision: "B", ImageKeys: keys,
		Reboot: func(ctx context.Context) error {
			res.Install = time.Since(start)
			t0 := time.Now()
			r, err := bootsim.Boot(ctx, dev, bootsim.Options{Keys: keys})
			res.Boot = time.Since(t0)
			if err == nil && r.Bricked {
				err = fmt.Errorf("bricked: %s", r.Reason)
			}
			return err
		},
		HealthRetry: 10 * time.Millisecond, HealthTimeout: time.Minute,
		Observe: func(s update.State) {
			now := time.Now()
			res.Phases[phase] += now.Sub(phaseFrom)
			phase, phaseFrom = string(s.Phase), now
			if s.Outcome != "" {
				res.Outcome, res.Reason = string(s.Outcome), s.Reason
			}
		},
	})
	if err != nil {
		return err
	}
	ctx := context.Background()
	took, err := up.Check(ctx)
	if err != nil {
		return err
	}
	if !took {
		return errors.New("no update offered")
	}
	res.Total = time.Since(start)
	env, err := dev.BootEnv.Get(ctx)
	if err != nil {
		return err
	}
	d, err := dev.Slots.Digest(ctx, hw.Slot(env[hw.EnvBootSlot]))
	if err != nil {
		return err
	}
	res.Running = hex.EncodeToString(d[:])
	out, _ := json.Marshal(res)
	fmt.Printf("%s\n", out)
	// Wait until the parent has read /proc/<pid>/status.
	io.Copy(io.Discard, os.Stdin)
	return nil
}
