package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/command"
	"cradle/internal/pki"
)

var cmdT0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// cmdPKI is a hierarchy with its in-memory keys.
type cmdPKI struct {
	h    *pki.Hierarchy
	keys map[string]crypto.Signer
}

var (
	cmdPKIMu sync.Mutex
	cmdPKIs  = map[string]*cmdPKI{}
)

func commandPKI(t *testing.T, org string) *cmdPKI {
	t.Helper()
	cmdPKIMu.Lock()
	defer cmdPKIMu.Unlock()
	if p, ok := cmdPKIs[org]; ok {
		return p
	}
	p := &cmdPKI{keys: map[string]crypto.Signer{}}
	var err error
	p.h, err = pki.Init(context.Background(), pki.InitOptions{Profile: pki.ProfileTest, Org: org, Hostnames: []string{"cradle.test"},
		Keys: func(name string) (crypto.Signer, error) {
			if k, ok := p.keys[name]; ok {
				return k, nil
			}
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			p.keys[name] = k
			return k, err
		}, Now: func() time.Time { return cmdT0 }})
	if err != nil {
		t.Fatal(err)
	}
	cmdPKIs[org] = p
	return p
}

func (p *cmdPKI) sign(t *testing.T, c command.Command) []byte {
	t.Helper()
	env, err := command.Sign(c, p.keys[pki.NameCommandSigner], []*x509.Certificate{p.h.CommandSigner})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// signRaw signs payload as it is, bypassing Sign's checks, as a server
// with a newer command set (or a bug) would.
func (p *cmdPKI) signRaw(t *testing.T, payload []byte) []byte {
	t.Helper()
	h := sha256.Sum256(payload)
	sig, err := p.keys[pki.NameCommandSigner].Sign(rand.Reader, h[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	env, _ := json.Marshal(command.Envelope{Payload: payload, Signature: sig, Chain: [][]byte{p.h.CommandSigner.Raw}})
	return env
}

// unitRig is an executor over a sequence file with recording actions.
type unitRig struct {
	t      *testing.T
	p      *cmdPKI
	dir    string
	now    time.Time
	seq    *command.SequenceFile
	ex     *agent.Executor
	ran    []string
	config json.RawMessage
	logs   []byte
	env    hw.BootEnv
	fail   error
}

const unitSerial = "GW-0001"

func newUnitRig(t *testing.T) *unitRig {
	t.Helper()
	dev, err := hw.CreateSimDevice(filepath.Join(t.TempDir(), "sim"), "uid-0001")
	if err != nil {
		t.Fatal(err)
	}
	r := &unitRig{t: t, p: commandPKI(t, "Acme"), dir: t.TempDir(), now: cmdT0.Add(time.Hour), env: dev.BootEnv}
	r.open()
	return r
}

// open (re)opens the executor on the sequence file, as after a restart.
func (r *unitRig) open() {
	r.t.Helper()
	var err error
	if r.seq, err = agent.OpenCommandSequence(r.dir); err != nil {
		r.t.Fatal(err)
	}
	reboot := agent.SimulatedReboot(r.env)
	r.ex, err = agent.NewExecutor(agent.ExecutorOptions{Root: r.p.h.Root, Serial: unitSerial, Sequence: r.seq, Now: func() time.Time { return r.now },
		Actions: agent.CommandActions{
			Reboot: func(ctx context.Context) error { r.ran = append(r.ran, "reboot"); return reboot(ctx) },
			CollectLogs: func(context.Context) ([]byte, error) {
				r.ran = append(r.ran, "collect")
				return []byte(strings.Repeat("an old line\n", 30000) + "the newest line\n"), nil
			},
			UploadLogs: func(_ context.Context, id string, logs []byte) error {
				r.ran = append(r.ran, "upload:"+id)
				r.logs = logs
				return nil
			},
			Rekey: func(context.Context) error { r.ran = append(r.ran, "rekey"); return r.fail },
			SetConfig: func(_ context.Context, args json.RawMessage) error {
				r.ran = append(r.ran, "set-config")
				r.config = args
				return r.fail
			},
		}})
	if err != nil {
		r.t.Fatal(err)
	}
}

func (r *unitRig) cmd(seq uint64, kind command.Kind) command.Command {
	return command.Command{ID: fmt.Sprintf("cmd_%d", seq), Device: unitSerial, Kind: kind, Sequence: seq, IssuedAt: r.now.Add(-time.Minute), ExpiresAt: r.now.Add(time.Hour)}
}

// handle runs envelope and returns the parsed result, which must be a
// valid result document.
func (r *unitRig) handle(env []byte) *command.Result {
	r.t.Helper()
	out := r.ex.Handle(context.Background(), env)
	res, err := command.ParseResult(out)
	if err != nil {
		r.t.Fatalf("result %s does not parse: %v", out, err)
	}
	return res
}

func TestExecutorRunsCommands(t *testing.T) {
	r := newUnitRig(t)
	if res := r.handle(r.p.sign(t, r.cmd(1, command.KindPing))); res.Status != command.StatusDone || res.CommandID != "cmd_1" || res.Sequence != 1 || !res.At.Equal(r.now) {
		t.Fatalf("ping: %+v", res)
	}
	c := r.cmd(2, command.KindSetConfig)
	c.Args = json.RawMessage(`{"interval":30}`)
	if res := r.handle(r.p.sign(t, c)); res.Status != command.StatusDone || string(r.config) != `{"interval":30}` {
		t.Fatalf("set-config: %+v, config %s", res, r.config)
	}
	for i := 0; i < 2; i++ {
		if res := r.handle(r.p.sign(t, r.cmd(uint64(3+i), command.KindReboot))); res.Status != command.StatusDone {
			t.Fatalf("reboot: %+v", res)
		}
	}
	if vars, _ := r.env.Get(context.Background()); vars[agent.BootCountKey] != "2" {
		t.Fatalf("bootcount after two reboots = %q, want 2", vars[agent.BootCountKey])
	}
	if res := r.handle(r.p.sign(t, r.cmd(5, command.KindUploadLogs))); res.Status != command.StatusDone {
		t.Fatalf("upload-logs: %+v", res)
	}
	if len(r.logs) > cradle.MaxCommandLogsSize || !strings.HasSuffix(string(r.logs), "the newest line\n") || !strings.HasPrefix(string(r.logs), "an old line\n") {
		t.Fatalf("uploaded %d bytes starting %.20q; want the newest lines, at most %d bytes, cut at a line", len(r.logs), r.logs, cradle.MaxCommandLogsSize)
	}
	if res := r.handle(r.p.sign(t, r.cmd(6, command.KindRekey))); res.Status != command.StatusDone {
		t.Fatalf("rekey: %+v", res)
	}
	// A failing action is reported as failed, and its sequence is spent:
	// it never runs twice.
	r.fail = errors.New("config rejected: interval must be positive")
	if res := r.handle(r.p.sign(t, r.cmd(7, command.KindSetConfig))); res.Status != command.StatusFailed || !strings.Contains(res.Error, "interval must be positive") || string(r.config) != "{}" {
		t.Fatalf("failing set-config: %+v, args %s", res, r.config)
	}
	// This rig has no wipe action (TestWipe runs real ones).
	if res := r.handle(r.p.sign(t, r.cmd(8, command.KindWipe))); res.Status != command.StatusFailed || !strings.Contains(res.Error, "wipe is not supported by this agent") {
		t.Fatalf("wipe: %+v", res)
	}
	want := "set-config reboot reboot collect upload:cmd_5 rekey set-config"
	if got := strings.Join(r.ran, " "); got != want {
		t.Fatalf("actions ran: %s\nwant:        %s", got, want)
	}
	if r.seq.Last() != 8 {
		t.Fatalf("sequence %d, want 8", r.seq.Last())
	}
}

func TestExecutorRefusals(t *testing.T) {
	other := commandPKI(t, "Other")
	tests := []struct {
		name string
		// envelope returns what the server sends; the unit's last
		// accepted sequence is 5.
		envelope func(r *unitRig) []byte
		reason   error
		// attributed: the result names the command (after its signature
		// verified).
		attributed bool
	}{
		{"replay", func(r *unitRig) []byte { return r.p.sign(t, r.cmd(5, command.KindPing)) }, command.ErrReplay, true},
		{"older sequence", func(r *unitRig) []byte { return r.p.sign(t, r.cmd(3, command.KindReboot)) }, command.ErrReplay, true},
		{"expired", func(r *unitRig) []byte {
			c := r.cmd(6, command.KindReboot)
			c.IssuedAt, c.ExpiresAt = r.now.Add(-2*time.Hour), r.now.Add(-time.Second)
			return r.p.sign(t, c)
		}, command.ErrExpired, true},
		{"foreign device", func(r *unitRig) []byte {
			c := r.cmd(6, command.KindReboot)
			c.Device = "GW-0002"
			return r.p.sign(t, c)
		}, command.ErrForeignDevice, true},
		{"forged signature", func(r *unitRig) []byte {
			var env command.Envelope
			json.Unmarshal(r.p.sign(t, r.cmd(6, command.KindPing)), &env)
			env.Payload = []byte(strings.Replace(string(env.Payload), `"ping"`, `"wipe"`, 1))
			b, _ := json.Marshal(env)
			return b
		}, command.ErrBadSignature, false},
		{"chain to another root", func(r *unitRig) []byte { return other.sign(t, r.cmd(6, command.KindReboot)) }, command.ErrUntrustedChain, false},
		{"unknown kind", func(r *unitRig) []byte {
			c := r.cmd(6, command.KindPing)
			payload, _ := json.Marshal(c)
			return r.p.signRaw(t, []byte(strings.Replace(string(payload), `"ping"`, `"self-destruct"`, 1)))
		}, command.ErrMalformed, false},
		{"not JSON", func(*unitRig) []byte { return []byte("reboot now") }, command.ErrMalformed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newUnitRig(t)
			if res := r.handle(r.p.sign(t, r.cmd(5, command.KindPing))); res.Status != command.StatusDone {
				t.Fatalf("first ping: %+v", res)
			}
			r.ran = nil
			res := r.handle(tt.envelope(r))
			if res.Status != command.StatusRefused || !strings.Contains(res.Error, tt.reason.Error()) {
				t.Fatalf("result %+v; want refused with %q", res, tt.reason)
			}
			if tt.attributed != (res.CommandID != "") {
				t.Errorf("result names command %q; attributed should be %v", res.CommandID, tt.attributed)
			}
			if r.seq.Last() != 5 || len(r.ran) != 0 {
				t.Fatalf("after a refusal: sequence %d, actions %v; want 5 and none", r.seq.Last(), r.ran)
			}
			// The guard survives a restart.
			r.open()
			if r.seq.Last() != 5 {
				t.Fatalf("reopened sequence %d, want 5", r.seq.Last())
			}
			if res := r.handle(r.p.sign(t, r.cmd(5, command.KindPing))); res.Status != command.StatusRefused {
				t.Fatalf("replay after a restart: %+v", res)
			}
		})
	}
}

func TestExecutorUnsupported(t *testing.T) {
	p := commandPKI(t, "Acme")
	ex, err := agent.NewExecutor(agent.ExecutorOptions{Root: p.h.Root, Serial: unitSerial, Sequence: &command.MemorySequence{}, Now: func() time.Time { return cmdT0.Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	c := command.Command{ID: "c1", Device: unitSerial, Kind: command.KindReboot, Sequence: 1, IssuedAt: cmdT0, ExpiresAt: cmdT0.Add(2 * time.Hour)}
	res, err := command.ParseResult(ex.Handle(context.Background(), p.sign(t, c)))
	if err != nil || res.Status != command.StatusFailed || !strings.Contains(res.Error, "reboot is not supported by this agent") {
		t.Fatalf("reboot without an action: %+v, %v", res, err)
	}
	if _, err := agent.NewExecutor(agent.ExecutorOptions{Serial: unitSerial}); err == nil {
		t.Fatal("an executor without a root was made")
	}
}
