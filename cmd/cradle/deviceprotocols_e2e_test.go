package main

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// menderDevice is a simulated Mender device's identity and key, which
// asks to be admitted through the store as the Mender device API does
// once it has checked the request's signature.
type menderDevice struct {
	idData, pem, fingerprint, mac string
}

func newMenderDevice(t *testing.T, idData string) menderDevice {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	_, canonKey, fp, err := cradle.ParseDevicePublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	if err != nil {
		t.Fatal(err)
	}
	canon, mac, err := cradle.CanonicalMenderIDData(idData)
	if err != nil {
		t.Fatal(err)
	}
	return menderDevice{idData: canon, pem: canonKey, fingerprint: fp, mac: mac}
}

// ask sends the device's auth request to m's store in tenant 1.
func (d menderDevice) ask(t *testing.T, m *Main) (*cradle.Device, error) {
	t.Helper()
	ctx := cradle.NewContextWithActor(t.Context(), cradle.SystemActor(1, "mender"))
	_, dev, err := sqlstore.NewProtocolService(m.db).MenderAuthenticate(ctx,
		cradle.MenderAuthRequest{IDData: d.idData, PublicKey: d.pem, KeyFingerprint: d.fingerprint, MAC: d.mac}, time.Hour)
	return dev, err
}

// TestDeviceProtocolCLI drives the Mender and hawkBit operator commands
// against the real server: a pending auth set accepted through the CLI
// becomes a Mender device in the device list, another is rejected, a key
// is preauthorized, and a hawkBit target token is created, listed and
// revoked, each checked against the store's own authentication.
func TestDeviceProtocolCLI(t *testing.T) {
	isolateCLI(t)
	m, out := startServer(t, t.TempDir())
	admin := tokenRE.FindStringSubmatch(out)[1]
	api := []string{"--server", m.Addr(), "--token", admin}
	cli := func(args ...string) string { t.Helper(); return ok(t, append(args, api...)...) }
	cliFails := func(want string, args ...string) { t.Helper(); fails(t, want, append(args, api...)...) }
	ok(t, append([]string{"device", "create", "--serial", "SN-CRADLE", "--model", "gw-100"}, api...)...)

	dev := newMenderDevice(t, `{"mac":"02:00:00:00:bb:01"}`)
	if _, err := dev.ask(t, m); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Fatalf("the first auth request: %v, want unauthorized (pending)", err)
	}
	list := decodeJSON[menderAuthSetList](t, cli("device", "mender", "list", "--status", "pending", "--json"))
	if len(list.AuthSets) != 1 || list.AuthSets[0].KeyFingerprint != dev.fingerprint {
		t.Fatalf("pending sets: %+v", list.AuthSets)
	}
	id := list.AuthSets[0].ID
	rows := tableRows(cli("device", "mender", "list"))
	if diff := cmp.Diff([]string{"ID", "STATUS", "DEVICE", "IDENTITY", "KEY", "UPDATED"}, rows[0]); diff != "" {
		t.Errorf("mender list header (-want +got):\n%s", diff)
	}
	if len(rows) != 2 || rows[1][0] != id || rows[1][1] != "pending" || rows[1][2] != "-" || rows[1][3] != dev.idData {
		t.Errorf("mender list rows: %q", rows)
	}
	if show := cli("device", "mender", "show", id); !strings.Contains(show, dev.pem) || !strings.Contains(show, dev.fingerprint) {
		t.Errorf("mender show lacks the key:\n%s", show)
	}
	cliFails(`unknown --status "waiting"`, "device", "mender", "list", "--status", "waiting")
	cliFails("model", "device", "mender", "accept", id, "--serial", "MN-1")
	cliFails(`required flag(s) "serial" not set`, "device", "mender", "accept", id)

	// Accept it for a new device; its next request is admitted and the
	// device lists as a Mender device.
	if got := cli("device", "mender", "accept", id, "--serial", "MN-1", "--model", "gw-100"); got != "accepted "+id+" for device MN-1\n" {
		t.Errorf("accept printed %q", got)
	}
	if d, err := dev.ask(t, m); err != nil || d.Serial != "MN-1" {
		t.Fatalf("the auth request after the accept: %+v, %v", d, err)
	}
	rows = tableRows(cli("device", "list"))
	if diff := cmp.Diff([]string{"SERIAL", "MODEL", "STATE", "PROTOCOL", "LABELS", "UPDATED"}, rows[0]); diff != "" {
		t.Errorf("device list header (-want +got):\n%s", diff)
	}
	protocols := map[string]string{}
	for _, r := range rows[1:] {
		protocols[r[0]] = r[3]
	}
	if diff := cmp.Diff(map[string]string{"SN-CRADLE": "cradle", "MN-1": "mender"}, protocols); diff != "" {
		t.Errorf("device list protocols (-want +got):\n%s", diff)
	}
	only := decodeJSON[deviceList](t, cli("device", "list", "--protocol", "mender", "--json"))
	if len(only.Devices) != 1 || only.Devices[0].Serial != "MN-1" || only.Devices[0].Protocol != cradle.ProtocolMender || only.Devices[0].State != cradle.StateDeployed {
		t.Errorf("device list --protocol mender: %+v", only.Devices)
	}
	cliFails(`unknown --protocol "mqtt"`, "device", "list", "--protocol", "mqtt")

	// Another device's set is rejected; its requests stay refused.
	stranger := newMenderDevice(t, `{"mac":"02:00:00:00:bb:02"}`)
	stranger.ask(t, m)
	list = decodeJSON[menderAuthSetList](t, cli("device", "mender", "list", "--status", "pending", "--json"))
	if len(list.AuthSets) != 1 {
		t.Fatalf("pending sets: %+v", list.AuthSets)
	}
	cliFails(`required flag(s) "reason" not set`, "device", "mender", "reject", list.AuthSets[0].ID)
	rej := decodeJSON[cradle.MenderAuthSet](t, cli("device", "mender", "reject", list.AuthSets[0].ID, "--reason", "not ours", "--json"))
	if rej.Status != cradle.MenderRejected || rej.Reason != "not ours" {
		t.Errorf("reject --json: %+v", rej)
	}
	if _, err := stranger.ask(t, m); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("a rejected device's request: %v, want unauthorized", err)
	}

	// Preauthorize a known device's key from a file.
	cli("device", "create", "--serial", "MN-2", "--model", "gw-100", "--state", "provisioned")
	pre := newMenderDevice(t, `{"serial":"MN-2"}`)
	keyFile := filepath.Join(t.TempDir(), "mn-2.pub.pem")
	if err := os.WriteFile(keyFile, []byte(pre.pem), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := cli("device", "mender", "preauthorize", "--serial", "MN-2", "--id-data", `{ "serial": "MN-2" }`, "--pubkey", keyFile); !strings.HasPrefix(got, "preauthorized mas_") {
		t.Errorf("preauthorize printed %q", got)
	}
	if d, err := pre.ask(t, m); err != nil || d.Serial != "MN-2" {
		t.Errorf("a preauthorized device's first request: %+v, %v", d, err)
	}
	cliFails("PUBLIC KEY", "device", "mender", "preauthorize", "--serial", "MN-2", "--id-data", `{"a":"b"}`, "--pubkey", writeFile(t, t.TempDir(), "bad.pem", "not a key"))

	// A hawkBit target token: created (its secret shown once), listed,
	// revoked.
	sys := cradle.NewContextWithActor(t.Context(), cradle.SystemActor(0, "test"))
	store := sqlstore.NewProtocolService(m.db)
	cli("device", "create", "--serial", "HB-1", "--model", "gw-100", "--state", "provisioned")
	cli("device", "transition", "HB-1", "deployed")
	created := cli("device", "token", "create", "--serial", "HB-1", "--name", "suricatta")
	var secret string
	for _, r := range tableRows(created) {
		if r[0] == "secret:" {
			secret = r[1]
		}
	}
	if secret == "" || !strings.Contains(created, "shown only this once") || !strings.Contains(created, "Authorization: TargetToken <secret>") {
		t.Fatalf("token create printed:\n%s", created)
	}
	if a, err := store.AuthenticateDeviceToken(sys, secret); err != nil || a.Device == nil || a.Device.Serial != "HB-1" {
		t.Fatalf("the printed secret does not authenticate HB-1: %+v, %v", a, err)
	}
	tokID, _, _ := strings.Cut(secret, ".")
	rows = tableRows(cli("device", "token", "list", "--serial", "HB-1"))
	if diff := cmp.Diff([]string{"ID", "KIND", "DEVICE", "NAME", "STATUS", "CREATED", "EXPIRES", "CREATED BY"}, rows[0]); diff != "" {
		t.Errorf("token list header (-want +got):\n%s", diff)
	}
	if len(rows) != 2 || !slices.Equal(rows[1][:5], []string{tokID, "target", "HB-1", "suricatta", "active"}) {
		t.Errorf("token list rows: %q", rows)
	}
	if got := cli("device", "token", "revoke", tokID); got != "revoked "+tokID+"\n" {
		t.Errorf("token revoke printed %q", got)
	}
	if _, err := store.AuthenticateDeviceToken(sys, secret); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("a revoked token authenticates: %v", err)
	}
	if rows = tableRows(cli("device", "token", "list", "--serial", "HB-1")); rows[1][4] != "revoked" {
		t.Errorf("token list after revoke: %q", rows)
	}

	// --json, a gateway token with an expiry, and revoking all of a device.
	it := decodeJSON[cradle.IssuedToken](t, cli("device", "token", "create", "--serial", "HB-1", "--expires", "24h", "--json"))
	if it.Secret == "" || it.Token.ExpiresAt == nil || time.Until(*it.Token.ExpiresAt) < 23*time.Hour {
		t.Errorf("token create --json: %+v", it)
	}
	gw := decodeJSON[cradle.IssuedToken](t, cli("device", "token", "create", "--gateway", "--name", "line-3", "--json"))
	if gw.Token.Kind != cradle.TokenGateway || gw.Token.DeviceSerial != "" {
		t.Errorf("gateway token: %+v", gw.Token)
	}
	if gws := decodeJSON[deviceTokenList](t, cli("device", "token", "list", "--json")); len(gws.Tokens) != 1 || gws.Tokens[0].ID != gw.Token.ID {
		t.Errorf("gateway tokens: %+v", gws.Tokens)
	}
	cliFails("add --all", "device", "token", "revoke", "--serial", "HB-1")
	cliFails("not both", "device", "token", "revoke", it.Token.ID, "--serial", "HB-1", "--all")
	cliFails("say whose token", "device", "token", "create")
	cliFails("give one of", "device", "token", "create", "--serial", "HB-1", "--gateway")
	cliFails("give one of", "device", "token", "create", "--gateway", "--mender-tenant")
	// A Mender tenant token: for mender.conf, the tenant's, listed with the
	// gateway token.
	tenantOut := cli("device", "token", "create", "--mender-tenant", "--name", "fleet")
	if !strings.Contains(tenantOut, `"TenantToken": "<secret>"`) || !slices.ContainsFunc(tableRows(tenantOut), func(r []string) bool { return r[0] == "kind:" && r[1] == "tenant" }) {
		t.Errorf("tenant token create printed:\n%s", tenantOut)
	}
	if l := decodeJSON[deviceTokenList](t, cli("device", "token", "list", "--json")); len(l.Tokens) != 2 || l.Tokens[0].Kind != cradle.TokenMenderTenant {
		t.Errorf("tenant-wide tokens: %+v", l.Tokens)
	}
	if got := cli("device", "token", "revoke", "--serial", "HB-1", "--all"); got != "revoked 1 token of device HB-1\n" {
		t.Errorf("revoke --all printed %q", got)
	}
	if got := decodeJSON[map[string]int](t, cli("device", "token", "revoke", "--serial", "HB-1", "--all", "--json")); got["revoked"] != 0 {
		t.Errorf("a second revoke --all --json: %v, want 0 revoked", got)
	}
	if _, err := store.AuthenticateDeviceToken(sys, it.Secret); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("a token after revoke --all authenticates: %v", err)
	}

	// Attributes a device reported, and the update logs (none yet).
	dctx := cradle.NewContextWithActor(t.Context(), cradle.SystemActor(1, "test"))
	if err := store.SetDeviceAttributes(dctx, "MN-1", []cradle.DeviceAttribute{{Name: "device_type", Value: "gw-100"}, {Name: "artifact_name", Value: "release-1"}}, true); err != nil {
		t.Fatal(err)
	}
	rows = tableRows(cli("device", "attributes", "MN-1"))
	if diff := cmp.Diff([][]string{{"NAME", "VALUE"}, {"artifact_name", "release-1"}, {"device_type", "gw-100"}}, firstColumns(rows, 2)); diff != "" {
		t.Errorf("device attributes (-want +got):\n%s", diff)
	}
	if got := decodeJSON[updateLogList](t, cli("device", "logs", "MN-1", "--json")); got.Logs == nil || len(got.Logs) != 0 {
		t.Errorf("device logs --json: %+v", got)
	}
	if r := cradleCLI(t, "", append([]string{"device", "logs", "MN-1"}, api...)...); r.code != 0 || r.stdout != "" || r.stderr != "device MN-1 sent no update logs\n" {
		t.Errorf("device logs without logs: %+v", r)
	}
	cliFails(`device "NOPE"`, "device", "attributes", "NOPE")
}

// firstColumns cuts every row to its first n fields.
func firstColumns(rows [][]string, n int) [][]string {
	out := make([][]string, len(rows))
	for i, r := range rows {
		out[i] = r[:min(n, len(r))]
	}
	return out
}

func TestFormatUpdateLog(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"mender messages", `{"messages":[{"timestamp":"2026-11-24T10:00:00Z","level":"info","message":"Installing"},{"timestamp":"2026-11-24T10:00:05Z","level":"error","message":"no space\n"}]}`,
			"2026-11-24T10:00:00Z info  Installing\n2026-11-24T10:00:05Z error no space\n"},
		{"plain text", "line 1\nline 2", "line 1\nline 2\n"},
		{"plain text with a newline", "done\n", "done\n"},
		{"other JSON", `{"status":"ok"}`, `{"status":"ok"}` + "\n"},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatUpdateLog(tc.in); got != tc.want {
				t.Errorf("formatUpdateLog(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
