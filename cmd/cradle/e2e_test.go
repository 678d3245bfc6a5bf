package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"cradle"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// testWriter sends log output to t.Log, so a failing test shows the server's
// side of the story.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startServer runs the real server wiring on 127.0.0.1:0 over dataDir and
// returns it with what it printed on stdout. The server is closed when the
// test ends (closing it earlier is fine).
func startServer(t *testing.T, dataDir string) (*Main, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = dataDir
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTP.ShutdownTimeout = 10 * time.Second
	var stdout bytes.Buffer
	m := &Main{Config: cfg, Stdout: &stdout, Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatalf("starting the server: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("closing the server: %v", err)
		}
	})
	return m, stdout.String()
}

// cliResult is what one run of the program did.
type cliResult struct {
	code           int
	stdout, stderr string
}

// cradleCLI runs the program in-process with args and stdin.
func cradleCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &stdout, &stderr)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// ok runs the program and fails the test unless it exits 0 with nothing on
// stderr; it returns stdout.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	r := cradleCLI(t, "", args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("cradle %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs the program and fails the test unless it exits 1 with an
// "error: " line on stderr that contains want.
func fails(t *testing.T, want string, args ...string) cliResult {
	t.Helper()
	r := cradleCLI(t, "", args...)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "error: ") || !strings.Contains(r.stderr, want) {
		t.Fatalf("cradle %s: exit %d, stderr %q; want exit 1 and an error containing %q", strings.Join(args, " "), r.code, r.stderr, want)
	}
	return r
}

func decodeJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %T from %q: %v", v, s, err)
	}
	return v
}

// tableRows splits table output into rows of fields. Fields are separated
// by two or more spaces, so single spaces inside a value survive.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1))
	}
	return rows
}

// column returns column i of every row after the header.
func column(rows [][]string, i int) []string {
	var out []string
	for _, r := range rows[1:] {
		out = append(out, r[i])
	}
	return out
}

// isolateCLI gives the test its own CLI configuration directory and clears
// the variables that would point the CLI elsewhere.
func isolateCLI(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "config")
	t.Setenv("XDG_CONFIG_HOME", dir)
	for _, k := range []string{"CRADLE_SERVER", "CRADLE_TOKEN", "CRADLE_CONFIG"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	return dir
}

var tokenRE = regexp.MustCompile(`export CRADLE_TOKEN=(\S+)`)

var ignoreDeviceTimes = cmpopts.IgnoreFields(cradle.Device{}, "CreatedAt", "UpdatedAt", "StateChangedAt")

func TestEndToEnd(t *testing.T) {
	configDir := isolateCLI(t)
	dataDir := t.TempDir()

	// The first start creates the tenant and prints an admin token once.
	first, out := startServer(t, dataDir)
	m := tokenRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the first start printed no admin token:\n%s", out)
	}
	admin := m[1]
	for _, want := range []string{`Created tenant "default"`, "cradle login --server " + first.Addr() + " --token " + admin} {
		if !strings.Contains(out, want) {
			t.Errorf("the first start's output lacks %q:\n%s", want, out)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatalf("closing the first server: %v", err)
	}
	srv, out := startServer(t, dataDir)
	if out != "" {
		t.Fatalf("the second start printed %q, want nothing", out)
	}
	addr := srv.Addr()

	t.Run("health", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			resp, err := http.Get(addr + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s: %s, want 200", path, resp.Status)
			}
		}
	})

	// login checks the token and saves it; later commands need no flags.
	fails(t, "unknown", "login", "--server", addr, "--token", "cradle_0123456789abcdef_"+strings.Repeat("A", 43))
	if _, err := os.Stat(filepath.Join(configDir, "cradle", "cli.yaml")); err == nil {
		t.Fatalf("a refused login saved its token")
	}
	login := cradleCLI(t, "", "login", "--server", addr, "--token", admin)
	if login.code != 0 || login.stderr != "saved to "+filepath.Join(configDir, "cradle", "cli.yaml")+"\n" {
		t.Fatalf("cradle login: exit %d, stderr %q", login.code, login.stderr)
	}
	got := login.stdout
	if want := "Logged in to " + addr + " as token:tok_"; !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "(admin) (tenant 1, role admin).\n") {
		t.Errorf("login printed %q", got)
	}
	fi, err := os.Stat(filepath.Join(configDir, "cradle", "cli.yaml"))
	if err != nil {
		t.Fatalf("login saved nothing: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("cli.yaml has mode %04o, want 0600", fi.Mode().Perm())
	}

	t.Run("device create", func(t *testing.T) {
		got := ok(t, "device", "create", "--serial", "SN-0001", "--model", "gw-100", "--mac", "02:00:5E:10:00:01",
			"--label", "site=berlin", "--label", "tier=edge")
		rows := tableRows(got)
		want := [][]string{
			{"serial:", "SN-0001"}, {"model:", "gw-100"}, {"hardware revision:", "-"}, {"hardware uid:", "-"},
			{"macs:", "02:00:5e:10:00:01"}, {"labels:", "site=berlin,tier=edge"}, {"state:", "factory"},
		}
		if diff := cmp.Diff(want, rows[:len(want)]); diff != "" {
			t.Errorf("device create output (-want +got):\n%s\n%s", diff, got)
		}

		d := decodeJSON[cradle.Device](t, ok(t, "device", "create", "--serial", "SN-0002", "--model", "gw-100",
			"--hardware-revision", "B", "--hardware-uid", "uid-2", "--state", "provisioned", "--json"))
		wantD := cradle.Device{Serial: "SN-0002", Model: "gw-100", HardwareRevision: "B", HardwareUID: "uid-2",
			MACs: []string{}, Labels: map[string]string{}, State: cradle.StateProvisioned, Protocol: cradle.ProtocolCradle}
		if diff := cmp.Diff(wantD, d, ignoreDeviceTimes, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("device create --json (-want +got):\n%s", diff)
		}
		fails(t, `device "SN-0001"`, "device", "create", "--serial", "SN-0001", "--model", "gw-100")
		fails(t, `required flag(s) "model" not set`, "device", "create", "--serial", "SN-0003")
	})

	t.Run("device import", func(t *testing.T) {
		dir := t.TempDir()
		csvFile := writeFile(t, dir, "units.csv", "serial,model,macs,labels\nSN-0101,gw-200,02:00:5e:10:01:01,site=hamburg;tier=core\nSN-0102,gw-200,,site=hamburg\n")
		if got := ok(t, "device", "import", csvFile); got != "imported 2 devices\n" {
			t.Errorf("CSV import printed %q", got)
		}
		jsonlFile := writeFile(t, dir, "units.jsonl", `{"serial":"SN-0201","model":"gw-300","labels":{"site":"berlin"}}`+"\n"+`{"serial":"SN-0202","model":"gw-300","state":"provisioned"}`+"\n")
		rep := decodeJSON[cradle.ImportReport](t, ok(t, "device", "import", "--json", jsonlFile))
		if diff := cmp.Diff(cradle.ImportReport{Committed: true, Accepted: 2}, rep, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("JSONL import report (-want +got):\n%s", diff)
		}
		r := cradleCLI(t, `{"serial":"SN-0301","model":"gw-300"}`+"\n", "device", "import", "--format", "jsonl", "-")
		if r.code != 0 || r.stdout != "imported 1 device\n" {
			t.Errorf("import from stdin: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}

		// One bad row rejects the whole file.
		bad := writeFile(t, dir, "bad.csv", "serial,model,macs\nSN-0401,gw-200,\nSN-0001,gw-200,\nSN-0402,gw-200,not-a-mac\n")
		r = fails(t, "import rejected: 2 of 3 rows are invalid; nothing was stored", "device", "import", bad)
		rows := tableRows(r.stdout)
		if len(rows) != 4 || rows[0][0] != "rejected 2 rows (1 valid row was not stored either):" {
			t.Fatalf("rejected import printed:\n%s", r.stdout)
		}
		if diff := cmp.Diff([]string{"LINE", "SERIAL", "REASON"}, rows[1]); diff != "" {
			t.Errorf("rejection table header (-want +got):\n%s", diff)
		}
		if got := [][]string{rows[2][:2], rows[3][:2]}; !cmp.Equal(got, [][]string{{"3", "SN-0001"}, {"4", "SN-0402"}}) {
			t.Errorf("rejected rows %v, want lines 3 (SN-0001) and 4 (SN-0402):\n%s", got, r.stdout)
		}
		if !strings.Contains(r.stdout, `invalid MAC address "not-a-mac"`) {
			t.Errorf("the rejection does not say what is wrong with SN-0402:\n%s", r.stdout)
		}
		list := decodeJSON[deviceList](t, ok(t, "device", "list", "--serial-prefix", "SN-04", "--json"))
		if len(list.Devices) != 0 {
			t.Errorf("a rejected import stored %d devices", len(list.Devices))
		}
		fails(t, "cannot tell the format of", "device", "import", writeFile(t, dir, "units.txt", ""))
	})

	allSerials := []string{"SN-0001", "SN-0002", "SN-0101", "SN-0102", "SN-0201", "SN-0202", "SN-0301"}
	t.Run("device list", func(t *testing.T) {
		rows := tableRows(ok(t, "device", "list"))
		if diff := cmp.Diff([]string{"SERIAL", "MODEL", "STATE", "PROTOCOL", "LABELS", "UPDATED"}, rows[0]); diff != "" {
			t.Errorf("device list header (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(allSerials, column(rows, 0)); diff != "" {
			t.Errorf("device list serials (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"gw-200", "core", "site=hamburg,tier=core"}, []string{rows[3][1], "core", rows[3][4]}); diff != "" {
			t.Errorf("device list row of SN-0101 (-want +got):\n%s", diff)
		}

		page := decodeJSON[deviceList](t, ok(t, "device", "list", "--limit", "3", "--json"))
		if len(page.Devices) != 3 || page.NextCursor == "" {
			t.Fatalf("first page: %d devices, next cursor %q; want 3 and a cursor", len(page.Devices), page.NextCursor)
		}
		next := decodeJSON[deviceList](t, ok(t, "device", "list", "--limit", "3", "--cursor", page.NextCursor, "--json"))
		if next.Devices[0].Serial != "SN-0102" {
			t.Errorf("second page starts at %s, want SN-0102", next.Devices[0].Serial)
		}
		all := decodeJSON[deviceList](t, ok(t, "device", "list", "--limit", "2", "--all", "--json"))
		var serials []string
		for _, d := range all.Devices {
			serials = append(serials, d.Serial)
		}
		if diff := cmp.Diff(allSerials, serials); diff != "" || all.NextCursor != "" {
			t.Errorf("device list --all (-want +got):\n%s\nnext cursor %q", diff, all.NextCursor)
		}

		for _, tc := range []struct {
			name string
			args []string
			want []string
		}{
			{"selector", []string{"--selector", "site=berlin"}, []string{"SN-0001", "SN-0201"}},
			{"selector set", []string{"--selector", "site in (hamburg),!tier"}, []string{"SN-0102"}},
			{"state", []string{"--state", "provisioned"}, []string{"SN-0002", "SN-0202"}},
			{"model", []string{"--model", "gw-300"}, []string{"SN-0201", "SN-0202", "SN-0301"}},
			{"serial prefix", []string{"--serial-prefix", "SN-01"}, []string{"SN-0101", "SN-0102"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got := decodeJSON[deviceList](t, ok(t, append([]string{"device", "list", "--json"}, tc.args...)...))
				var serials []string
				for _, d := range got.Devices {
					serials = append(serials, d.Serial)
				}
				if diff := cmp.Diff(tc.want, serials); diff != "" {
					t.Errorf("device list %s (-want +got):\n%s", strings.Join(tc.args, " "), diff)
				}
			})
		}
		fails(t, `unknown lifecycle state "broken"`, "device", "list", "--state", "broken")
		fails(t, "invalid label selector", "device", "list", "--selector", "site=(")
		fails(t, "invalid --limit -1: use 1 to 1000", "device", "list", "--limit", "-1")
	})

	t.Run("device label", func(t *testing.T) {
		d := decodeJSON[cradle.Device](t, ok(t, "device", "label", "SN-0001", "env=prod", "site-", "--json"))
		if diff := cmp.Diff(map[string]string{"env": "prod", "tier": "edge"}, d.Labels); diff != "" {
			t.Errorf("labels after label (-want +got):\n%s", diff)
		}
		fails(t, `label change "site": use key=value to set a label or key- to remove it`, "device", "label", "SN-0001", "site")
		fails(t, `"SN-9999"`, "device", "label", "SN-9999", "a=b")
	})

	t.Run("device transition", func(t *testing.T) {
		d := decodeJSON[cradle.Device](t, ok(t, "device", "transition", "SN-0001", "provisioned", "--reason", "passed end-of-line test", "--json"))
		if d.State != cradle.StateProvisioned {
			t.Errorf("state after transition: %s, want provisioned", d.State)
		}
		// The refusal is the lifecycle table's own message: it names the
		// moves that are allowed.
		want := cradle.CheckTransition("SN-0001", cradle.StateProvisioned, cradle.StateFactory, cradle.RoleAdmin).(*cradle.Error).Message
		r := fails(t, "allowed from provisioned for role admin: deployed, rma, eol", "device", "transition", "SN-0001", "factory")
		if r.stderr != "error: "+want+"\n" {
			t.Errorf("illegal transition printed %q, want %q", r.stderr, "error: "+want+"\n")
		}
		if r.stdout != "" {
			t.Errorf("illegal transition printed %q on stdout", r.stdout)
		}
	})

	t.Run("device show", func(t *testing.T) {
		out := ok(t, "device", "show", "SN-0001")
		head, hist, found := strings.Cut(out, "\n\n")
		if !found {
			t.Fatalf("device show has no history table:\n%s", out)
		}
		if !strings.Contains(head, "state:") || !strings.Contains(head, "provisioned") {
			t.Errorf("device show lacks the state:\n%s", head)
		}
		rows := tableRows(hist)
		if diff := cmp.Diff([]string{"SEQ", "AT", "FROM", "TO", "ACTOR", "REASON"}, rows[0]); diff != "" {
			t.Errorf("history header (-want +got):\n%s", diff)
		}
		if len(rows) != 3 || rows[2][2] != "factory" || rows[2][3] != "provisioned" || rows[2][5] != "passed end-of-line test" {
			t.Errorf("history rows:\n%s", hist)
		}
		det := decodeJSON[deviceDetail](t, ok(t, "device", "show", "SN-0001", "--json"))
		var moves []string
		for _, h := range det.Transitions {
			moves = append(moves, string(h.From)+">"+string(h.To))
		}
		if det.Device.Serial != "SN-0001" || !cmp.Equal(moves, []string{">factory", "factory>provisioned"}) {
			t.Errorf("device show --json: serial %s, moves %v", det.Device.Serial, moves)
		}
		fails(t, `"SN-9999"`, "device", "show", "SN-9999")
	})

	t.Run("audit", func(t *testing.T) {
		rows := tableRows(ok(t, "audit", "list"))
		if diff := cmp.Diff([]string{"SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT"}, rows[0]); diff != "" {
			t.Errorf("audit list header (-want +got):\n%s", diff)
		}
		actions := column(rows, 3)
		for _, want := range []string{"token.create", "device.create", "device.import", "device.update", "device.transition", "device.transition.refused"} {
			if !strings.Contains(strings.Join(actions, " "), want) {
				t.Errorf("the audit log has no %s entry; actions: %v", want, actions)
			}
		}
		refused := decodeJSON[auditList](t, ok(t, "audit", "list", "--action", "device.transition.refused", "--json"))
		if len(refused.Entries) != 1 || refused.Entries[0].Subject != "device:SN-0001" {
			t.Errorf("refused transitions in the audit log: %+v", refused.Entries)
		}
		page := decodeJSON[auditList](t, ok(t, "audit", "list", "--limit", "2", "--json"))
		if len(page.Entries) != 2 || page.NextAfter != page.Entries[1].Seq {
			t.Fatalf("audit page: %d entries, next_after %d", len(page.Entries), page.NextAfter)
		}
		next := decodeJSON[auditList](t, ok(t, "audit", "list", "--after", "2", "--limit", "2", "--json"))
		if next.Entries[0].Seq != 3 {
			t.Errorf("audit list --after 2 starts at %d, want 3", next.Entries[0].Seq)
		}

		fails(t, "invalid --limit -5: use 1 to 1000", "audit", "list", "--limit", "-5")
		fails(t, "invalid --after -3: use a sequence number ≥ 0", "audit", "list", "--after", "-3")

		out := ok(t, "audit", "verify")
		rows = tableRows(out)
		if len(rows) != 2 || rows[1][0] != "1" || rows[1][1] != "ok" {
			t.Errorf("audit verify printed:\n%s", out)
		}
		v := decodeJSON[cradle.AuditVerification](t, ok(t, "audit", "verify", "--json"))
		if !v.OK || v.TenantID != 1 || v.Entries < 10 || v.Checkpoint == nil || v.Checkpoint.Seq != v.HeadSeq {
			t.Errorf("audit verify --json: %+v", v)
		}
	})

	var ci tokenCreated
	t.Run("tokens", func(t *testing.T) {
		ci = decodeJSON[tokenCreated](t, ok(t, "token", "create", "--name", "ci", "--role", "operator", "--expires-in", "720h", "--json"))
		if ci.Token.Role != cradle.RoleOperator || ci.Token.ExpiresAt == nil || !strings.HasPrefix(ci.Secret, "cradle_") {
			t.Fatalf("token create --json: %+v", ci)
		}
		if d := time.Until(*ci.Token.ExpiresAt); d < 719*time.Hour || d > 721*time.Hour {
			t.Errorf("the token expires in %s, want 720h", d)
		}
		rows := tableRows(ok(t, "token", "list"))
		if diff := cmp.Diff([]string{"ID", "NAME", "ROLE", "STATUS", "CREATED", "EXPIRES", "LAST USED", "CREATED BY"}, rows[0]); diff != "" {
			t.Errorf("token list header (-want +got):\n%s", diff)
		}
		if len(rows) != 3 || !cmp.Equal(rows[1][:4], []string{ci.Token.ID, "ci", "operator", "active"}) || rows[2][1] != "bootstrap" {
			t.Errorf("token list rows: %v", rows[1:])
		}
		list := decodeJSON[tokenList](t, ok(t, "token", "list", "--json"))
		if len(list.Tokens) != 2 || list.Tokens[0].ID != ci.Token.ID {
			t.Errorf("token list --json: %+v", list.Tokens)
		}

		// The new token works, within its role.
		ok(t, "device", "list", "--token", ci.Secret)
		fails(t, "role operator may not list API tokens", "token", "list", "--token", ci.Secret)

		if got := ok(t, "token", "revoke", ci.Token.ID); got != "revoked "+ci.Token.ID+"\n" {
			t.Errorf("token revoke printed %q", got)
		}
		fails(t, "revoked", "device", "list", "--token", ci.Secret)
		list = decodeJSON[tokenList](t, ok(t, "token", "list", "--json"))
		if list.Tokens[0].RevokedAt == nil {
			t.Errorf("token list shows the revoked token without revoked_at: %+v", list.Tokens[0])
		}
		fails(t, `unknown role "root"`, "token", "create", "--name", "x", "--role", "root")
		fails(t, "--tenant needs --data-dir", "token", "create", "--name", "x", "--role", "admin", "--tenant", "default")
	})

	// With the server stopped, the data directory itself is enough to get a
	// new admin token and to verify every chain.
	if err := srv.Close(); err != nil {
		t.Fatalf("stopping the server: %v", err)
	}
	fails(t, "connection refused", "device", "list")

	rescue := decodeJSON[tokenCreated](t, ok(t, "token", "create", "--data-dir", dataDir, "--tenant", "default", "--role", "admin", "--name", "rescue", "--json"))
	if rescue.Token.TenantID != 1 || rescue.Token.Role != cradle.RoleAdmin || rescue.Token.CreatedBy != localActor(1).String() {
		t.Errorf("token create --data-dir: %+v", rescue.Token)
	}
	chains := decodeJSON[auditChains](t, ok(t, "audit", "verify", "--data-dir", dataDir, "--json"))
	var tenants []int64
	for _, c := range chains.Chains {
		tenants = append(tenants, c.TenantID)
		if !c.OK {
			t.Errorf("chain of tenant %d is broken: %+v", c.TenantID, c.Broken)
		}
	}
	if !cmp.Equal(tenants, []int64{0, 1}) {
		t.Errorf("audit verify --data-dir checked tenants %v, want 0 and 1", tenants)
	}
	rows := tableRows(ok(t, "audit", "verify", "--data-dir", dataDir))
	if len(rows) != 3 || rows[1][1] != "ok" || rows[2][1] != "ok" {
		t.Errorf("audit verify --data-dir printed %v", rows)
	}
	fails(t, "has no audit key", "token", "create", "--data-dir", t.TempDir(), "--role", "admin", "--name", "x")
	fails(t, "--store needs --data-dir", "audit", "verify", "--store", "sqlite:/x.db")
	fails(t, `tenant "nope"`, "token", "create", "--data-dir", dataDir, "--tenant", "nope", "--role", "admin", "--name", "x")

	// The rescue token works once the server is back, and its creation is in
	// the audit log under the local administrator.
	srv, _ = startServer(t, dataDir)
	entries := decodeJSON[auditList](t, ok(t, "audit", "list", "--server", srv.Addr(), "--token", rescue.Secret,
		"--subject", "token:"+rescue.Token.ID, "--json"))
	if len(entries.Entries) != 1 || entries.Entries[0].Action != "token.create" || entries.Entries[0].Actor != rescue.Token.CreatedBy {
		t.Errorf("audit entries for the rescue token: %+v", entries.Entries)
	}
}

// TestClientSettings checks where the CLI finds its server and token:
// flags, else the environment, else the saved login, else the default.
func TestClientSettings(t *testing.T) {
	configDir := isolateCLI(t)
	path := filepath.Join(configDir, "cradle", "cli.yaml")
	if err := writeCLIConfig(path, cliConfig{Server: "http://saved:1", Token: "saved-token"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                     string
		flagServer, flagToken    string
		env                      map[string]string
		wantServer, wantToken    string
		removeSaved, wantDefault bool
	}{
		{name: "saved login", wantServer: "http://saved:1", wantToken: "saved-token"},
		{name: "environment over saved", env: map[string]string{"CRADLE_SERVER": "http://env:2", "CRADLE_TOKEN": "env-token"}, wantServer: "http://env:2", wantToken: "env-token"},
		{name: "flags over environment", flagServer: "http://flag:3/", flagToken: "flag-token", env: map[string]string{"CRADLE_SERVER": "http://env:2", "CRADLE_TOKEN": "env-token"}, wantServer: "http://flag:3", wantToken: "flag-token"},
		{name: "mixed", env: map[string]string{"CRADLE_TOKEN": "env-token"}, wantServer: "http://saved:1", wantToken: "env-token"},
		{name: "default", removeSaved: true, wantServer: defaultServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if tc.removeSaved {
				os.Remove(path)
			}
			a := &app{server: tc.flagServer, token: tc.flagToken}
			server, token, err := a.endpoint()
			if err != nil {
				t.Fatal(err)
			}
			if server != tc.wantServer || token != tc.wantToken {
				t.Errorf("endpoint() = %q, %q; want %q, %q", server, token, tc.wantServer, tc.wantToken)
			}
		})
	}
	fails(t, "no API token: pass --token, set CRADLE_TOKEN, or run cradle login", "device", "list")
	fails(t, `"ftp://x" is not a server URL`, "device", "list", "--server", "ftp://x", "--token", "t")
	writeFile(t, filepath.Dir(path), "cli.yaml", "server: http://x:1\ntokn: typo\n")
	fails(t, "field tokn not found", "device", "list")
}

func TestParseLabelChanges(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		wantSet    map[string]string
		wantRemove []string
		wantErr    string
	}{
		{name: "set and remove", args: []string{"env=prod", "site-", "note=a=b"}, wantSet: map[string]string{"env": "prod", "note": "a=b"}, wantRemove: []string{"site"}},
		{name: "empty value", args: []string{"env="}, wantSet: map[string]string{"env": ""}},
		{name: "bare key", args: []string{"env"}, wantErr: `label change "env"`},
		{name: "no key", args: []string{"=x"}, wantErr: `label "=x" has no key`},
		{name: "only a dash", args: []string{"-"}, wantErr: `label change "-"`},
		{name: "twice", args: []string{"a=1", "a=2"}, wantErr: `label "a" is given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, remove, err := parseLabelChanges(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantSet, set); diff != "" {
				t.Errorf("set (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantRemove, remove); diff != "" {
				t.Errorf("remove (-want +got):\n%s", diff)
			}
		})
	}
}

// TestListFlagChecks: bad --limit and --after values are refused in the
// flags' own words before anything is sent (no server runs here).
func TestListFlagChecks(t *testing.T) {
	isolateCLI(t)
	t.Setenv("CRADLE_SERVER", "http://127.0.0.1:1")
	t.Setenv("CRADLE_TOKEN", "t")
	for _, tc := range []struct {
		want string
		args []string
	}{
		{"invalid --limit -1: use 1 to 1000", []string{"device", "list", "--limit", "-1"}},
		{"invalid --limit 0: use 1 to 1000", []string{"device", "list", "--limit", "0"}},
		{"invalid --limit 5000: use 1 to 1000", []string{"device", "list", "--limit", "5000", "--all"}},
		{"invalid --limit -5: use 1 to 1000", []string{"audit", "list", "--limit", "-5"}},
		{"invalid --limit 1001: use 1 to 1000", []string{"audit", "list", "--limit", "1001"}},
		{"invalid --after -3: use a sequence number ≥ 0", []string{"audit", "list", "--after", "-3"}},
	} {
		r := fails(t, tc.want, tc.args...)
		if r.stderr != "error: "+tc.want+"\n" {
			t.Errorf("cradle %s: stderr %q, want only %q", strings.Join(tc.args, " "), r.stderr, "error: "+tc.want)
		}
	}
	// Good values get as far as the (absent) server.
	fails(t, "connection refused", "device", "list", "--limit", "1000")
	fails(t, "connection refused", "audit", "list", "--limit", "1", "--after", "0")
}

// TestImportHelp: the help of device import names every field a JSON line
// takes (those of cradle.DeviceCreate) and every CSV column.
func TestImportHelp(t *testing.T) {
	isolateCLI(t)
	help := ok(t, "device", "import", "--help")
	csvPart, jsonPart, found := strings.Cut(help, "JSON lines:")
	if !found {
		t.Fatalf("device import --help says nothing of JSON lines:\n%s", help)
	}
	typ := reflect.TypeFor[cradle.DeviceCreate]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if !regexp.MustCompile(`\b` + name + `\b`).MatchString(jsonPart) {
			t.Errorf("device import --help does not name the JSON field %q:\n%s", name, help)
		}
	}
	for _, col := range []string{"serial", "model", "hardware_uid", "hardware_revision", "macs", "labels", "state"} {
		if !regexp.MustCompile(`\b` + col + `\b`).MatchString(csvPart) {
			t.Errorf("device import --help does not name the CSV column %q:\n%s", col, help)
		}
	}
	for _, want := range []string{"serial and model (required)", "separated by ';' or spaces", "k=v separated by ';'", "factory (the default) or provisioned"} {
		if !strings.Contains(help, want) {
			t.Errorf("device import --help lacks %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, `as for "device create --json"`) {
		t.Errorf("device import --help still says JSON lines are as for device create --json:\n%s", help)
	}
}

func TestImportReportWording(t *testing.T) {
	for _, tc := range []struct {
		accepted, rejected int
		wantReport         string
		wantErr            string
	}{
		{accepted: 1, wantReport: "imported 1 device"},
		{accepted: 2, wantReport: "imported 2 devices"},
		{accepted: 0, wantReport: "imported 0 devices"},
		{rejected: 1, wantReport: "rejected 1 row:", wantErr: "import rejected: its only row is invalid; nothing was stored"},
		{rejected: 2, wantReport: "rejected 2 rows:", wantErr: "import rejected: all 2 rows are invalid; nothing was stored"},
		{accepted: 1, rejected: 1, wantReport: "rejected 1 row (1 valid row was not stored either):", wantErr: "import rejected: 1 of 2 rows is invalid; nothing was stored"},
		{accepted: 3, rejected: 2, wantReport: "rejected 2 rows (3 valid rows were not stored either):", wantErr: "import rejected: 2 of 5 rows are invalid; nothing was stored"},
	} {
		rep := &cradle.ImportReport{Committed: tc.wantErr == "", Accepted: tc.accepted, RejectedCount: tc.rejected}
		var b strings.Builder
		if err := writeImportReport(&b, rep); err != nil {
			t.Fatal(err)
		}
		if first, _, _ := strings.Cut(b.String(), "\n"); first != tc.wantReport {
			t.Errorf("report of %d accepted, %d rejected: %q, want %q", tc.accepted, tc.rejected, first, tc.wantReport)
		}
		if tc.wantErr != "" {
			if got := importRejected(rep).Error(); got != tc.wantErr {
				t.Errorf("error of %d accepted, %d rejected: %q, want %q", tc.accepted, tc.rejected, got, tc.wantErr)
			}
		}
	}
}

func TestImportFormatOf(t *testing.T) {
	for _, tc := range []struct {
		flag, name string
		want       cradle.ImportFormat
		wantErr    string
	}{
		{"", "units.csv", cradle.ImportCSV, ""},
		{"", "UNITS.CSV", cradle.ImportCSV, ""},
		{"", "units.jsonl", cradle.ImportJSONL, ""},
		{"", "units.ndjson", cradle.ImportJSONL, ""},
		{"csv", "units.jsonl", cradle.ImportCSV, ""},
		{"jsonl", "-", cradle.ImportJSONL, ""},
		{"", "-", "", "reading from stdin: say the format with --format"},
		{"", "units.xlsx", "", "cannot tell the format of units.xlsx"},
		{"xml", "units.csv", "", `unknown import format "xml"`},
	} {
		t.Run(tc.flag+" "+tc.name, func(t *testing.T) {
			got, err := importFormatOf(tc.flag, tc.name)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("importFormatOf(%q, %q) = %q, %v; want %q", tc.flag, tc.name, got, err, tc.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	isolateCLI(t)
	a := ok(t, "version")
	b := ok(t, "--version")
	if !strings.HasPrefix(a, "cradle "+cradle.Version+" (") || a != b {
		t.Errorf("cradle version printed %q and --version %q; want the same, starting with the version", a, b)
	}
	script := ok(t, "completion", "bash")
	if !strings.Contains(script, "__start_cradle") {
		t.Errorf("cradle completion bash printed no bash completion script")
	}
	fails(t, `unknown command "frobnicate"`, "frobnicate")
}
