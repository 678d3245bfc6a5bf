package httpapi_test

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// withCommands serves the command routes, signing with the shared test
// hierarchy's command signer.
func withCommands(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) {
		th := sharedHierarchy(e.t)
		s.Commands = sqlstore.NewCommandService(e.db, func(c command.Command) ([]byte, error) {
			return command.Sign(c, th.keys[pki.NameCommandSigner], []*x509.Certificate{th.h.CommandSigner})
		})
	}
}

// deployDevice registers a deployed device in tenant 1.
func (e *env) deployDevice(serial string) {
	e.t.Helper()
	e.createDevice(serial, cradle.StateProvisioned)
	if _, err := e.client(cradle.RoleAdmin).TransitionDevice(e.t.Context(), serial, cradle.DeviceTransition{To: cradle.StateDeployed}); err != nil {
		e.t.Fatal(err)
	}
}

// commandFixture is a deployed device with an upload-logs command whose
// logs were uploaded, made once per env.
func (e *env) commandFixture() (serial, id string) {
	e.t.Helper()
	serial = "CMD-READ"
	sys := cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(1, "test"))
	if cs, err := e.api.Commands.FindDeviceCommands(sys, serial, cradle.CommandFilter{}); err == nil && len(cs) > 0 {
		return serial, cs[len(cs)-1].ID
	}
	e.deployDevice(serial)
	c, err := e.api.Commands.IssueCommand(sys, serial, cradle.CommandRequest{Kind: cradle.CommandUploadLogs})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.api.Commands.StoreCommandLogs(sys, serial, c.ID, []byte("boot ok\n")); err != nil {
		e.t.Fatal(err)
	}
	return serial, c.ID
}

// commandMatrix are the command routes' rows of the authorization matrix:
// command.issue for admin and operator, command.read for them and the
// auditor.
var commandMatrix = []call{
	{"POST", "/api/v1/devices/{serial}/commands", func(e *env, r cradle.Role) (string, string, string) {
		serial := "CMD-" + string(r)
		e.deployDevice(serial)
		return "/api/v1/devices/" + serial + "/commands", "application/json", `{"kind":"ping"}`
	}, [4]int{201, 201, 403, 403}},
	{"GET", "/api/v1/devices/{serial}/commands", func(e *env, _ cradle.Role) (string, string, string) {
		serial, _ := e.commandFixture()
		return "/api/v1/devices/" + serial + "/commands", "", ""
	}, [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/devices/{serial}/commands/{id}", func(e *env, _ cradle.Role) (string, string, string) {
		serial, id := e.commandFixture()
		return "/api/v1/devices/" + serial + "/commands/" + id, "", ""
	}, [4]int{200, 200, 403, 200}},
	{"GET", "/api/v1/devices/{serial}/commands/{id}/logs", func(e *env, _ cradle.Role) (string, string, string) {
		serial, id := e.commandFixture()
		return "/api/v1/devices/" + serial + "/commands/" + id + "/logs", "", ""
	}, [4]int{200, 200, 403, 200}},
}

func TestCommands(t *testing.T) {
	e := newEnv(t)
	e.deployDevice("GW-1")
	e.createDevice("GW-NEW", cradle.StateFactory)
	op := e.client(cradle.RoleOperator)
	ctx := t.Context()

	c, err := op.IssueCommand(ctx, "GW-1", cradle.CommandRequest{Kind: cradle.CommandSetConfig, Args: json.RawMessage(`{"version": 2, "config": {"interval": 30}}`), TTLSeconds: 120})
	if err != nil {
		t.Fatal(err)
	}
	if c.Sequence != 1 || c.State != cradle.CommandPending || string(c.Args) != `{"version":2,"config":{"interval":30}}` || c.ExpiresAt.Sub(c.IssuedAt).Seconds() != 120 {
		t.Fatalf("issued %+v", c)
	}
	got, err := op.FindDeviceCommand(ctx, "GW-1", c.ID)
	if err != nil || got.ID != c.ID || got.Results == nil {
		t.Fatalf("get = %+v, %v", got, err)
	}
	if _, err := op.IssueCommand(ctx, "GW-1", cradle.CommandRequest{Kind: cradle.CommandPing}); err != nil {
		t.Fatal(err)
	}
	list, err := e.client(cradle.RoleAuditor).FindDeviceCommands(ctx, "GW-1", cradle.CommandFilter{})
	if err != nil || len(list) != 2 || list[0].Sequence != 2 {
		t.Fatalf("list = %v, %v", list, err)
	}
	st := cradle.CommandPending
	if l, err := op.FindDeviceCommands(ctx, "GW-1", cradle.CommandFilter{State: &st, Limit: 1}); err != nil || len(l) != 1 {
		t.Fatalf("pending, limit 1 = %v, %v", l, err)
	}

	tests := []struct {
		name, method, path, body string
		status                   int
		code, msg                string
	}{
		{"not deployed", "POST", "/api/v1/devices/GW-NEW/commands", `{"kind":"ping"}`, 409, cradle.ECONFLICT, "deployed"},
		{"unknown device", "POST", "/api/v1/devices/NOPE/commands", `{"kind":"ping"}`, 404, cradle.ENOTFOUND, "NOPE"},
		{"unknown kind", "POST", "/api/v1/devices/GW-1/commands", `{"kind":"explode"}`, 400, cradle.EINVALID, "explode"},
		{"wipe", "POST", "/api/v1/devices/GW-1/commands", `{"kind":"wipe"}`, 400, cradle.EINVALID, "issued only by decommissioning"},
		{"ttl", "POST", "/api/v1/devices/GW-1/commands", `{"kind":"ping","ttl_seconds":5}`, 400, cradle.EINVALID, "ttl"},
		{"args", "POST", "/api/v1/devices/GW-1/commands", `{"kind":"ping","args":[1]}`, 400, cradle.EINVALID, "JSON object"},
		{"unknown field", "POST", "/api/v1/devices/GW-1/commands", `{"kind":"ping","sequence":9}`, 400, cradle.EINVALID, "sequence"},
		{"bad state", "GET", "/api/v1/devices/GW-1/commands?state=lost", "", 400, cradle.EINVALID, "lost"},
		{"unknown command", "GET", "/api/v1/devices/GW-1/commands/cmd_nope", "", 404, cradle.ENOTFOUND, "cmd_nope"},
		{"no logs", "GET", "/api/v1/devices/GW-1/commands/" + c.ID + "/logs", "", 404, cradle.ENOTFOUND, "no uploaded logs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.doJSON(tt.method, tt.path, e.tokens[cradle.RoleOperator], tt.body)
			if resp.status != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.status, tt.status, resp.body)
			}
			if got := resp.errorBody(t); got.Code != tt.code || !strings.Contains(got.Message, tt.msg) {
				t.Fatalf("error %+v, want %s mentioning %q", got, tt.code, tt.msg)
			}
		})
	}
	// Another tenant sees nothing.
	resp := e.doJSON("GET", "/api/v1/devices/GW-1/commands", e.other, "")
	if resp.status != http.StatusNotFound {
		t.Fatalf("other tenant: %d %s", resp.status, resp.body)
	}
	// Without a command signer the routes say so.
	bare := newEnv(t, func(s *httpapi.Server) { s.Commands = nil })
	resp = bare.doJSON("GET", "/api/v1/devices/GW-1/commands", bare.tokens[cradle.RoleAdmin], "")
	if resp.status != http.StatusNotImplemented || !strings.Contains(resp.errorBody(t).Message, "command signer") {
		t.Fatalf("no signer: %d %s", resp.status, resp.body)
	}
}
