package storetest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// commandPKI is one test hierarchy, made once for the whole suite: its
// command signer signs the commands of every store test.
var commandPKI = sync.OnceValues(func() (*pki.Hierarchy, map[string]crypto.Signer) {
	keys := map[string]crypto.Signer{}
	h, err := pki.Init(context.Background(), pki.InitOptions{Profile: pki.ProfileTest, Org: "Store Test", Hostnames: []string{"cradle.test"},
		Keys: func(name string) (crypto.Signer, error) {
			if k, ok := keys[name]; ok {
				return k, nil
			}
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			keys[name] = k
			return k, err
		}, Now: func() time.Time { return Epoch.Add(-time.Hour) }})
	if err != nil {
		panic(fmt.Sprintf("storetest: pki init: %v", err))
	}
	return h, keys
})

// commandKit is one tenant with deployed devices and a command store.
type commandKit struct {
	t      *testing.T
	e      *Env
	svc    *sqlstore.CommandService
	tenant *cradle.Tenant
	admin  context.Context
	h      *pki.Hierarchy
}

func newCommandKit(t *testing.T, e *Env, tenant string, deployed ...string) *commandKit {
	t.Helper()
	h, keys := commandPKI()
	sign := func(c command.Command) ([]byte, error) {
		return command.Sign(c, keys[pki.NameCommandSigner], []*x509.Certificate{h.CommandSigner})
	}
	tn, admin := e.Tenant(tenant, cradle.RoleAdmin)
	k := &commandKit{t: t, e: e, svc: sqlstore.NewCommandService(e.DB, sign), tenant: tn, admin: admin, h: h}
	for _, s := range deployed {
		if _, err := e.Devices.CreateDevice(admin, cradle.DeviceCreate{Serial: s, Model: "gw-1", State: cradle.StateProvisioned}); err != nil {
			t.Fatalf("create device %s: %v", s, err)
		}
		if _, err := e.Devices.TransitionDevice(admin, s, cradle.DeviceTransition{To: cradle.StateDeployed}); err != nil {
			t.Fatalf("deploy %s: %v", s, err)
		}
	}
	return k
}

func (k *commandKit) device(serial string) context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: k.tenant.ID, Role: cradle.RoleDevice, Kind: "device", ID: serial})
}

func (k *commandKit) issue(serial string, r cradle.CommandRequest) *cradle.DeviceCommand {
	k.t.Helper()
	c, err := k.svc.IssueCommand(k.admin, serial, r)
	if err != nil {
		k.t.Fatalf("issue %s to %s: %v", r.Kind, serial, err)
	}
	return c
}

func (k *commandKit) pending(serial string) []*cradle.DeviceCommand {
	k.t.Helper()
	p, err := k.svc.PendingCommands(k.device(serial), serial)
	if err != nil {
		k.t.Fatalf("pending of %s: %v", serial, err)
	}
	return p
}

func testCommandsIssueDeliverResult(t *testing.T, e *Env) {
	k := newCommandKit(t, e, "acme", "GW-1", "GW-2")
	ping := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandPing})
	if ping.Sequence != 1 || ping.State != cradle.CommandPending || !ping.ExpiresAt.Equal(ping.IssuedAt.Add(time.Hour)) {
		t.Fatalf("issued %+v; want sequence 1, pending, 1 h TTL", ping)
	}
	cfg := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandSetConfig, Args: []byte(`{"version": 4, "config": {"log_level": "debug"}}`), TTLSeconds: 600})
	other := k.issue("GW-2", cradle.CommandRequest{Kind: cradle.CommandReboot})
	if cfg.Sequence != 2 || other.Sequence != 1 {
		t.Fatalf("sequences %d (GW-1) and %d (GW-2); want 2 and 1: per device", cfg.Sequence, other.Sequence)
	}

	// The device verifies what it receives against the root.
	p := k.pending("GW-1")
	if len(p) != 2 || p[0].ID != ping.ID || p[1].ID != cfg.ID {
		t.Fatalf("pending = %v; want ping then set-config", ids(p))
	}
	v := &command.Verifier{Root: k.h.Root, Serial: "GW-1", Sequence: &command.MemorySequence{}, Now: func() time.Time { return k.e.Clock.Now() }}
	for _, c := range p {
		got, err := v.Verify(c.Envelope)
		if err != nil {
			t.Fatalf("verify %s: %v", c.ID, err)
		}
		if got.ID != c.ID || got.Sequence != c.Sequence || string(got.Args) != string(c.Args) {
			t.Fatalf("signed %+v; stored %+v", got, c)
		}
	}
	if string(cfg.Args) != `{"version":4,"config":{"log_level":"debug"}}` {
		t.Fatalf("args = %s", cfg.Args)
	}

	if err := k.svc.MarkCommandsDelivered(k.device("GW-1"), "GW-1", []string{ping.ID}); err != nil {
		t.Fatal(err)
	}
	res := cradle.CommandResult{CommandID: ping.ID, Sequence: 1, Status: cradle.CommandDone, At: k.e.Clock.Now()}
	done, err := k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", res)
	if err != nil {
		t.Fatal(err)
	}
	if done.State != cradle.CommandDone || done.DeliveredAt == nil || done.FinishedAt == nil || len(done.Results) != 1 {
		t.Fatalf("after result: %+v", done)
	}
	// The same envelope sent again is refused by the device as a replay:
	// stored with the command, its state kept.
	replay := cradle.CommandResult{CommandID: ping.ID, Sequence: 1, Status: cradle.CommandRefused, Error: "command: replayed or out-of-order sequence", At: k.e.Clock.Now()}
	again, err := k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", replay)
	if err != nil {
		t.Fatal(err)
	}
	if again.State != cradle.CommandDone || len(again.Results) != 2 || again.Results[1].Status != cradle.CommandRefused {
		t.Fatalf("after replay refusal: %+v", again)
	}
	// Done twice is a conflict; unknown commands and wrong sequences are refused.
	_, err = k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", res)
	wantCode(t, err, cradle.ECONFLICT, "already done")
	_, err = k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", cradle.CommandResult{CommandID: "cmd_nope", Sequence: 1, Status: cradle.CommandDone, At: k.e.Clock.Now()})
	wantCode(t, err, cradle.ENOTFOUND, "cmd_nope")
	_, err = k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", cradle.CommandResult{CommandID: cfg.ID, Sequence: 7, Status: cradle.CommandDone, At: k.e.Clock.Now()})
	wantCode(t, err, cradle.EINVALID, "sequence 7")
	_, err = k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", cradle.CommandResult{CommandID: cfg.ID, Sequence: 2, Status: cradle.CommandFailed, At: k.e.Clock.Now()})
	wantCode(t, err, cradle.EINVALID, "error message")
	// A device reports only for itself and sees only its own commands.
	_, err = k.svc.RecordCommandResult(k.device("GW-2"), "GW-1", cradle.CommandResult{CommandID: cfg.ID, Sequence: 2, Status: cradle.CommandDone, At: k.e.Clock.Now()})
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.RecordCommandResult(k.device("GW-2"), "GW-2", cradle.CommandResult{CommandID: cfg.ID, Sequence: 2, Status: cradle.CommandDone, At: k.e.Clock.Now()})
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.svc.PendingCommands(k.device("GW-2"), "GW-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	// A refusal without an ID (a forged envelope) is audited only.
	if c, err := k.svc.RecordCommandResult(k.device("GW-1"), "GW-1", cradle.CommandResult{Status: cradle.CommandRefused, Error: "command: bad signature", At: k.e.Clock.Now()}); err != nil || c != nil {
		t.Fatalf("unattributed refusal: %v, %v", c, err)
	}

	if p := k.pending("GW-1"); len(p) != 1 || p[0].ID != cfg.ID {
		t.Fatalf("pending after ping done = %v; want the set-config", ids(p))
	}
	list, err := k.svc.FindDeviceCommands(k.admin, "GW-1", cradle.CommandFilter{})
	if err != nil || len(list) != 2 || list[0].ID != cfg.ID || list[1].State != cradle.CommandDone {
		t.Fatalf("list = %v, %v; want newest first", ids(list), err)
	}
	st := cradle.CommandDone
	if list, err := k.svc.FindDeviceCommands(k.admin, "GW-1", cradle.CommandFilter{State: &st}); err != nil || len(list) != 1 || list[0].ID != ping.ID {
		t.Fatalf("done = %v, %v", ids(list), err)
	}
	entries, err := e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, en := range entries {
		seen[en.Action] = true
	}
	for _, a := range []string{"command.issue", "command.deliver", "command.result", "command.result.replay", "command.result.refused", "command.result.unattributed"} {
		if !seen[a] {
			t.Errorf("no %s audit entry", a)
		}
	}
}

func testCommandsRefusals(t *testing.T, e *Env) {
	k := newCommandKit(t, e, "acme", "GW-1")
	if _, err := e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: "NEW-1", Model: "gw-1"}); err != nil {
		t.Fatal(err)
	}
	_, err := k.svc.IssueCommand(k.admin, "NEW-1", cradle.CommandRequest{Kind: cradle.CommandPing})
	wantCode(t, err, cradle.ECONFLICT, "factory", "deployed")
	_, err = k.svc.IssueCommand(k.admin, "NOPE", cradle.CommandRequest{Kind: cradle.CommandPing})
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k.svc.IssueCommand(k.admin, "GW-1", cradle.CommandRequest{Kind: "format-disk"})
	wantCode(t, err, cradle.EINVALID, "format-disk")
	_, err = k.svc.IssueCommand(k.admin, "GW-1", cradle.CommandRequest{Kind: cradle.CommandPing, TTLSeconds: 31 * 24 * 3600})
	wantCode(t, err, cradle.EINVALID, "ttl")
	for _, role := range []cradle.Role{cradle.RoleAuditor, cradle.RoleFactory, cradle.RoleDevice} {
		_, err = k.svc.IssueCommand(e.As(k.tenant.ID, role), "GW-1", cradle.CommandRequest{Kind: cradle.CommandPing})
		wantCode(t, err, cradle.EFORBIDDEN)
	}
	if _, err := k.svc.FindDeviceCommands(e.As(k.tenant.ID, cradle.RoleAuditor), "GW-1", cradle.CommandFilter{}); err != nil {
		t.Fatalf("auditor list: %v", err)
	}
	_, err = k.svc.PendingCommands(e.As(k.tenant.ID, cradle.RoleOperator), "GW-1")
	wantCode(t, err, cradle.EFORBIDDEN)
	// Another tenant sees nothing.
	_, other := e.Tenant("other", cradle.RoleAdmin)
	_, err = k.svc.IssueCommand(other, "GW-1", cradle.CommandRequest{Kind: cradle.CommandPing})
	wantCode(t, err, cradle.ENOTFOUND)
	// A failed signer stores nothing and allocates no sequence.
	broken := sqlstore.NewCommandService(e.DB, func(command.Command) ([]byte, error) { return nil, errors.New("hsm unplugged") })
	if _, err := broken.IssueCommand(k.admin, "GW-1", cradle.CommandRequest{Kind: cradle.CommandPing}); err == nil {
		t.Fatal("issue with a failing signer succeeded")
	}
	if c := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandPing}); c.Sequence != 1 {
		t.Fatalf("sequence after a failed issue = %d, want 1", c.Sequence)
	}
}

func testCommandsExpiry(t *testing.T, e *Env) {
	k := newCommandKit(t, e, "acme", "GW-1")
	short := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandReboot, TTLSeconds: 60})
	long := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandPing, TTLSeconds: 3600})
	e.Clock.Add(61 * time.Second)
	if p := k.pending("GW-1"); len(p) != 1 || p[0].ID != long.ID {
		t.Fatalf("pending after expiry = %v; want only the unexpired ping", ids(p))
	}
	c, err := k.svc.FindDeviceCommand(k.admin, "GW-1", short.ID)
	if err != nil || c.State != cradle.CommandExpired {
		t.Fatalf("expired command: %+v, %v", c, err)
	}
	st := cradle.CommandExpired
	if list, err := k.svc.FindDeviceCommands(k.admin, "GW-1", cradle.CommandFilter{State: &st}); err != nil || len(list) != 1 || list[0].ID != short.ID {
		t.Fatalf("expired list = %v, %v", ids(list), err)
	}
	bad := cradle.CommandState("lost")
	_, err = k.svc.FindDeviceCommands(k.admin, "GW-1", cradle.CommandFilter{State: &bad})
	wantCode(t, err, cradle.EINVALID, "lost")
}

func testCommandsLogs(t *testing.T, e *Env) {
	k := newCommandKit(t, e, "acme", "GW-1")
	up := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandUploadLogs})
	ping := k.issue("GW-1", cradle.CommandRequest{Kind: cradle.CommandPing})
	_, err := k.svc.FindCommandLogs(k.admin, "GW-1", up.ID)
	wantCode(t, err, cradle.ENOTFOUND, "no uploaded logs")
	if err := k.svc.StoreCommandLogs(k.device("GW-1"), "GW-1", up.ID, []byte("line 1\nline 2\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := k.svc.FindCommandLogs(k.admin, "GW-1", up.ID); err != nil || string(got) != "line 1\nline 2\n" {
		t.Fatalf("logs = %q, %v", got, err)
	}
	if c := must[*cradle.DeviceCommand](k.t)(k.svc.FindDeviceCommand(k.admin, "GW-1", up.ID)); c.LogsSize != 14 {
		t.Fatalf("logs size = %d", c.LogsSize)
	}
	wantCode(t, k.svc.StoreCommandLogs(k.device("GW-1"), "GW-1", ping.ID, []byte("x")), cradle.EINVALID, "upload-logs")
	wantCode(t, k.svc.StoreCommandLogs(k.device("GW-1"), "GW-1", up.ID, make([]byte, cradle.MaxCommandLogsSize+1)), cradle.ETOOLARGE)
}

// testCommandsConcurrentSequence issues from many goroutines (and, on
// PostgreSQL, many connections): every sequence from 1 to n exactly once.
func testCommandsConcurrentSequence(t *testing.T, e *Env) {
	k := newCommandKit(t, e, "acme", "GW-1")
	const n = 24
	seqs := make(chan uint64, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, err := k.svc.IssueCommand(k.admin, "GW-1", cradle.CommandRequest{Kind: cradle.CommandPing})
			if err != nil {
				t.Error(err)
				return
			}
			seqs <- c.Sequence
		})
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] || s < 1 || s > n {
			t.Fatalf("sequence %d duplicated or out of 1..%d", s, n)
		}
		seen[s] = true
	}
	if len(seen) != n {
		t.Fatalf("%d sequences, want %d", len(seen), n)
	}
}

func ids(cs []*cradle.DeviceCommand) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = fmt.Sprintf("%s#%d(%s)", c.Kind, c.Sequence, c.State)
	}
	return out
}
