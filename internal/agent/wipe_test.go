package agent_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/command"
	"cradle/internal/kms"
	"cradle/internal/pki"
	"cradle/internal/testkit"
)

// tombstoneInbox is the server side of TombstonePath in these tests: it
// checks what a real listener would (the client certificate is the
// tombstone's, issued by the device CA, and the signature verifies) and
// keeps what it took.
type tombstoneInbox struct {
	t      *testing.T
	s      *estStack
	status atomic.Int32 // answer this instead, when not 0
	tries  atomic.Int32
	mu     sync.Mutex
	got    []cradle.Tombstone
}

func newTombstoneInbox(t *testing.T, s *estStack) *tombstoneInbox {
	in := &tombstoneInbox{t: t, s: s}
	h := http.HandlerFunc(in.serve)
	s.tombstone.Store(&h)
	return in
}

func (in *tombstoneInbox) serve(w http.ResponseWriter, r *http.Request) {
	in.tries.Add(1)
	if st := in.status.Load(); st != 0 {
		http.Error(w, `{"code":"unavailable","message":"try later"}`, int(st))
		return
	}
	var st cradle.SignedTombstone
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cert, err := x509.ParseCertificate(st.Certificate)
	if err != nil || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !r.TLS.PeerCertificates[0].Equal(cert) {
		in.t.Errorf("tombstone certificate is not the client's LDevID (%v)", err)
		http.Error(w, "certificate", http.StatusBadRequest)
		return
	}
	if err := cert.CheckSignatureFrom(in.s.h.DeviceCA()); err != nil {
		in.t.Errorf("tombstone certificate not from the device CA: %v", err)
	}
	ts, _, err := cradle.VerifyTombstone(st)
	if err != nil {
		in.t.Errorf("tombstone: %v", err)
		http.Error(w, "signature", http.StatusBadRequest)
		return
	}
	in.mu.Lock()
	in.got = append(in.got, *ts)
	in.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (in *tombstoneInbox) received() []cradle.Tombstone {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.got)
}

// wipeUnit is an enrolled unit with files in its state directory, a
// config file the agent wrote elsewhere, a key of another program in its
// key store, and an executor that runs wipe commands with Identity.Wipe.
type wipeUnit struct {
	u      *unitUnderTest
	id     *agent.Identity
	kind   string
	extra  string
	p      *cmdPKI
	ex     *agent.Executor
	opts   agent.WipeOptions
	now    time.Time
	serial string
}

func newWipeUnit(t *testing.T, s *estStack, p *cmdPKI, serial, kind string, keys hw.KeyStore, opts agent.WipeOptions) *wipeUnit {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	dev := s.provisionWith(filepath.Join(dir, "unit"), serial, keys)
	u := &unitUnderTest{dev: dev, dir: dir, opts: agent.IdentityOptions{Device: dev, StateDir: filepath.Join(dir, "state"), ServerURL: s.url}}
	now := s.clock.Now()
	id := u.open(t, now)
	if _, err := id.Step(ctx, now); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if _, err := dev.Keys.CreateKey(ctx, "other-app", hw.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"spool/spool.log": "telemetry", "twin/desired.json": `{"version":3}`, "command-sequence": "7"} {
		p := filepath.Join(u.opts.StateDir, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	extra := filepath.Join(dir, "etc", "app.json")
	os.MkdirAll(filepath.Dir(extra), 0o700)
	if err := os.WriteFile(extra, []byte(`{"a":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	opts.KeyStore, opts.Files = kind, []string{extra}
	w := &wipeUnit{u: u, id: id, kind: kind, extra: extra, p: p, now: now, serial: serial, opts: opts}
	ex, err := agent.NewExecutor(agent.ExecutorOptions{Root: p.h.Root, Serial: serial, Sequence: &command.MemorySequence{}, Now: func() time.Time { return cmdT0.Add(time.Hour) },
		Actions: agent.CommandActions{Wipe: func(ctx context.Context, cid string, seq uint64) error {
			return w.id.Wipe(ctx, cid, seq, w.now, w.opts)
		}}})
	if err != nil {
		t.Fatal(err)
	}
	w.ex = ex
	return w
}

func (w *wipeUnit) envelope(t *testing.T, seq uint64) []byte {
	return w.p.sign(t, command.Command{ID: fmt.Sprintf("wipe_%d", seq), Device: w.serial, Kind: command.KindWipe, Sequence: seq,
		IssuedAt: cmdT0, ExpiresAt: cmdT0.Add(2 * time.Hour)})
}

func (w *wipeUnit) wipe(t *testing.T) *command.Result {
	t.Helper()
	res, err := command.ParseResult(w.ex.Handle(t.Context(), w.envelope(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// checkWiped checks that nothing of the agent's is left: its keys (not
// the other program's), its files, and that the fuse word is eol and the
// state directory holds only the marker.
func (w *wipeUnit) checkWiped(t *testing.T, dev *hw.Device) {
	t.Helper()
	names, err := dev.Keys.(hw.KeyLister).ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"other-app"}) {
		t.Errorf("keys after the wipe: %v, want only other-app", names)
	}
	var left []string
	filepath.WalkDir(w.u.opts.StateDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != w.u.opts.StateDir {
			left = append(left, strings.TrimPrefix(p, w.u.opts.StateDir+"/"))
		}
		return nil
	})
	if !slices.Equal(left, []string{agent.DecommissionedFile}) {
		t.Errorf("state directory after the wipe holds %v, want only the marker", left)
	}
	if _, err := os.Stat(w.extra); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the config file outside the state directory survived: %v", err)
	}
	if got := lifecycle(t, dev); got != hw.LifecycleEOL {
		t.Errorf("lifecycle fuse word %s, want eol", got)
	}
	if err := agent.CheckDecommissioned(w.u.opts.StateDir); !errors.Is(err, agent.ErrDecommissioned) || !strings.Contains(err.Error(), "cannot run the agent") {
		t.Errorf("CheckDecommissioned after the wipe: %v", err)
	}
}

func checkTombstone(t *testing.T, ts cradle.Tombstone, serial, store string) {
	t.Helper()
	if ts.Serial != serial || ts.CommandID != "wipe_1" || ts.Sequence != 1 || ts.Lifecycle != "eol" || ts.At.IsZero() {
		t.Errorf("tombstone %+v", ts)
	}
	has := func(o cradle.ErasedObject) bool { return slices.Contains(ts.Erased, o) }
	for _, o := range []cradle.ErasedObject{
		{Store: store, Kind: "key", Name: agent.DefaultKeyName},
		{Store: store, Kind: "key", Name: "ldevid-1"},
		{Store: "state", Kind: "secret", Name: agent.StateFile},
		{Store: "state", Kind: "secret", Name: "command-sequence"},
		{Store: "state", Kind: "config", Name: "twin/desired.json"},
		{Store: "state", Kind: "config", Name: "spool/spool.log"},
	} {
		if !has(o) {
			t.Errorf("tombstone does not list %+v; it lists %+v", o, ts.Erased)
		}
	}
	if has(cradle.ErasedObject{Store: store, Kind: "key", Name: "other-app"}) {
		t.Error("tombstone lists another program's key")
	}
}

// TestWipe: a signed wipe command makes the unit send a tombstone signed
// with its LDevID key, then destroy its keys in each kind of key store
// (as SoftHSM2's pkcs11-tool and swtpm's tpm2_getcap see them), erase its
// files, burn eol into the lifecycle fuse word and refuse to run again.
func TestWipe(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	p := commandPKI(t, "Acme")
	inbox := newTombstoneInbox(t, s)
	for i, kind := range []string{hw.KeyStoreFile, hw.KeyStoreTPM, hw.KeyStorePKCS11} {
		t.Run(kind, func(t *testing.T) {
			var keys hw.KeyStore
			var beforeWipe, after func() // checks with the store's own tools
			switch kind {
			case hw.KeyStoreTPM:
				sw := testkit.StartSWTPM(t)
				tool := testkit.NeedProgram(t, "tpm2_getcap")
				state := filepath.Join(t.TempDir(), "tpm")
				keys = hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)
				beforeWipe = func() {
					b, err := os.ReadFile(filepath.Join(state, "tpm-keys.json"))
					if err != nil {
						t.Fatal(err)
					}
					var idx struct {
						Keys map[string]struct{ Handle uint32 } `json:"keys"`
					}
					if err := json.Unmarshal(b, &idx); err != nil {
						t.Fatal(err)
					}
					after = func() {
						out := testkit.Run(t, tool, "--tcti", sw.TCTI(), "handles-persistent")
						for name, e := range idx.Keys {
							h := fmt.Sprintf("0x%x", e.Handle)
							if listed := strings.Contains(out, h); listed != (name == "other-app") {
								t.Errorf("key %s at %s: listed by tpm2_getcap %v after the wipe:\n%s", name, h, listed, out)
							}
						}
						if len(idx.Keys) != 3 {
							t.Errorf("the TPM index named %d keys before the wipe, want 3", len(idx.Keys))
						}
					}
				}
			case hw.KeyStorePKCS11:
				h := testkit.NewSoftHSM(t, "se")
				ks, err := hw.NewPKCS11KeyStore(h.Module, "se", "file:"+h.PINFile)
				if errors.Is(err, kms.ErrNoPKCS11) {
					t.Skip("this build has no cgo, hence no PKCS#11")
				}
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ks.Close() })
				keys = ks
				after = func() {
					out := h.Objects(t, "se")
					for _, name := range []string{"label:      " + agent.DefaultKeyName, "ldevid-1"} {
						if strings.Contains(out, name) {
							t.Errorf("pkcs11-tool still lists %q:\n%s", name, out)
						}
					}
					if !strings.Contains(out, "other-app") {
						t.Errorf("pkcs11-tool no longer lists the other program's key:\n%s", out)
					}
				}
			}
			w := newWipeUnit(t, s, p, fmt.Sprintf("SN-W%d", i), kind, keys, agent.WipeOptions{})
			if beforeWipe != nil {
				beforeWipe()
			}
			before := len(inbox.received())
			res := w.wipe(t)
			if res.Status != command.StatusDone {
				t.Fatalf("wipe result %+v", res)
			}
			got := inbox.received()[before:]
			if len(got) != 1 {
				t.Fatalf("%d tombstones received, want 1", len(got))
			}
			checkTombstone(t, got[0], w.serial, kind)
			w.checkWiped(t, w.u.dev)
			if after != nil {
				after()
			}
		})
	}
}

// TestWipeTombstoneUndelivered: when the server cannot take the
// tombstone, the unit tries a bounded number of times, says so in its
// log, and wipes anyway.
func TestWipeTombstoneUndelivered(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	inbox := newTombstoneInbox(t, s)
	inbox.status.Store(http.StatusServiceUnavailable)
	var logs bytes.Buffer
	var logMu sync.Mutex
	w := newWipeUnit(t, s, commandPKI(t, "Acme"), "SN-UND", hw.KeyStoreFile, nil, agent.WipeOptions{Attempts: 3, RetryDelay: time.Millisecond})
	w.id = func() *agent.Identity {
		o := w.u.opts
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))
		id, err := agent.OpenIdentity(o, w.now)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}()
	if res := w.wipe(t); res.Status != command.StatusDone {
		t.Fatalf("wipe result %+v", res)
	}
	if n := inbox.tries.Load(); n != 3 {
		t.Errorf("%d deliveries tried, want 3", n)
	}
	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	if !strings.Contains(out, "tombstone not delivered; wiping anyway") {
		t.Errorf("the log does not say the tombstone was not delivered:\n%s", out)
	}
	w.checkWiped(t, w.u.dev)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var errCut = errors.New("power cut (test)")

// TestWipeResumesAfterPowerCut cuts the power before each erase step in
// turn: the next start finds the wipe in the state file, finishes it
// without sending the tombstone again, and leaves the unit as wiped as an
// uninterrupted wipe does.
func TestWipeResumesAfterPowerCut(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	p := commandPKI(t, "Acme")
	inbox := newTombstoneInbox(t, s)
	var steps []string
	w := newWipeUnit(t, s, p, "SN-PC0", hw.KeyStoreFile, nil, agent.WithWipeCrash(agent.WipeOptions{}, func(step string) error {
		steps = append(steps, step)
		return nil
	}))
	if res := w.wipe(t); res.Status != command.StatusDone {
		t.Fatalf("wipe result %+v", res)
	}
	if len(steps) < 8 {
		t.Fatalf("only %d erase steps: %v", len(steps), steps)
	}
	for k := range steps {
		t.Run(fmt.Sprintf("cut-before-%d", k), func(t *testing.T) {
			n := 0
			w := newWipeUnit(t, s, p, fmt.Sprintf("SN-PC%d", k+1), hw.KeyStoreFile, nil, agent.WithWipeCrash(agent.WipeOptions{}, func(step string) error {
				if n++; n > k {
					return fmt.Errorf("before %s: %w", step, errCut)
				}
				return nil
			}))
			before := len(inbox.received())
			if res := w.wipe(t); res.Status != command.StatusFailed || !strings.Contains(res.Error, errCut.Error()) {
				t.Fatalf("cut wipe: %+v", res)
			}
			if k == len(steps)-1 {
				// Cut after the marker: the start refuses, and finishes
				// erasing what the cut left.
				if err := agent.CheckDecommissioned(w.u.opts.StateDir); !errors.Is(err, agent.ErrDecommissioned) {
					t.Fatalf("start after the marker: %v", err)
				}
				w.checkWiped(t, w.u.dev)
				return
			}
			if err := agent.CheckDecommissioned(w.u.opts.StateDir); err != nil {
				t.Fatalf("the marker exists before its step: %v", err)
			}
			// Power on: the unit is opened again from its directories.
			dev, err := hw.OpenSimDevice(filepath.Join(w.u.dir, "unit"))
			if err != nil {
				t.Fatal(err)
			}
			opts := w.u.opts
			opts.Device = dev
			id, err := agent.OpenIdentity(opts, w.now.Add(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if !id.WipeInProgress() {
				t.Fatal("the reopened unit does not know of the wipe")
			}
			if err := id.ResumeWipe(t.Context(), w.now.Add(time.Minute), agent.WipeOptions{KeyStore: hw.KeyStoreFile, Files: w.opts.Files}); err != nil {
				t.Fatalf("resume: %v", err)
			}
			if got := len(inbox.received()) - before; got != 1 {
				t.Errorf("%d tombstones received, want 1 (a resumed erase does not send it again)", got)
			}
			w.checkWiped(t, dev)
		})
	}
}

// TestWipeManyFiles: a state directory with more files than a tombstone
// may list is named by directory in the tombstone, which the server's
// checks (cradle.VerifyTombstone) accept; every file is erased.
func TestWipeManyFiles(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	inbox := newTombstoneInbox(t, s)
	w := newWipeUnit(t, s, commandPKI(t, "Acme"), "SN-MANY", hw.KeyStoreFile, nil, agent.WipeOptions{})
	for i := range cradle.MaxTombstoneObjects + 44 {
		if err := os.WriteFile(filepath.Join(w.u.opts.StateDir, "spool", fmt.Sprintf("seg-%03d", i)), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if res := w.wipe(t); res.Status != command.StatusDone {
		t.Fatalf("wipe result %+v", res)
	}
	got := inbox.received()
	if len(got) != 1 {
		t.Fatalf("%d tombstones received, want 1", len(got))
	}
	if n := len(got[0].Erased); n > cradle.MaxTombstoneObjects || !slices.Contains(got[0].Erased, cradle.ErasedObject{Store: "state", Kind: "config", Name: "spool/…"}) {
		t.Errorf("tombstone of %d objects: %+v", n, got[0].Erased)
	}
	w.checkWiped(t, w.u.dev)
}
