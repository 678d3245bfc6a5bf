package mender_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/compat/mender"
)

// TestParseAuthRequest: a body signed with each kind of key verifies and
// gives the canonical identity, key and MAC; a changed body, another
// key's signature or a malformed body is refused saying why.
func TestParseAuthRequest(t *testing.T) {
	keys := testKeys(t)
	id := map[string]string{"serial": "gw-1", "mac": "02:00:00:00:00:0A"}
	for name, k := range keys {
		t.Run(name, func(t *testing.T) {
			body := authBody(t, id, k, "")
			req, err := mender.ParseAuthRequest(body, sign(t, k, body))
			if err != nil {
				t.Fatal(err)
			}
			want := cradle.MenderAuthRequest{IDData: `{"mac":"02:00:00:00:00:0A","serial":"gw-1"}`, MAC: "02:00:00:00:00:0a"}
			if req.Request.IDData != want.IDData || req.Request.MAC != want.MAC || req.Request.KeyFingerprint == "" || req.Request.PublicKey != k.pem {
				t.Fatalf("parsed %+v, want identity %s, mac %s, the key and its fingerprint", req.Request, want.IDData, want.MAC)
			}
			changed := []byte(strings.Replace(string(body), "gw-1", "gw-2", 1))
			if _, err := mender.ParseAuthRequest(changed, sign(t, k, body)); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
				t.Fatalf("changed body: %v, want unauthorized", err)
			}
		})
	}
	body := authBody(t, id, keys["ecdsa"], "tok")
	for _, tt := range []struct {
		name, body, sig, code, msg string
	}{
		{"signed by another key", string(body), sign(t, keys["ed25519"], body), cradle.EUNAUTHORIZED, "does not verify"},
		{"no signature", string(body), "", cradle.EUNAUTHORIZED, "no X-MEN-Signature"},
		{"signature not base64", string(body), "!!", cradle.EUNAUTHORIZED, "not base64"},
		{"unknown field", `{"id_data":"{}","pubkey":"","extra":1}`, "", cradle.EINVALID, `unknown field "extra"`},
		{"id_data an object", `{"id_data":{"mac":"x"},"pubkey":""}`, "", cradle.EINVALID, "id_data is a JSON object, want string"},
		{"no id_data", `{"pubkey":""}`, "", cradle.EINVALID, "no id_data"},
		{"no pubkey", `{"id_data":"{\"a\":\"b\"}"}`, "", cradle.EINVALID, "no pubkey"},
		{"bad identity", `{"id_data":"[1]","pubkey":"x"}`, "", cradle.EINVALID, "id_data is not a JSON object"},
		{"bad key", `{"id_data":"{\"a\":\"b\"}","pubkey":"x"}`, "", cradle.EINVALID, "PUBLIC KEY"},
		{"trailing data", `{"id_data":"{}","pubkey":""} {}`, "", cradle.EINVALID, "data after"},
		{"not JSON", `id_data=x`, "", cradle.EINVALID, "not valid JSON"},
		{"empty", ``, "", cradle.EINVALID, "is empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mender.ParseAuthRequest([]byte(tt.body), tt.sig)
			if cradle.ErrorCode(err) != tt.code || !strings.Contains(cradle.ErrorMessage(err), tt.msg) {
				t.Fatalf("got %v, want %s saying %q", err, tt.code, tt.msg)
			}
		})
	}
}

// TestParseInventory: strings stay, numbers keep their text, arrays
// become JSON text; anything else is refused naming the attribute.
func TestParseInventory(t *testing.T) {
	got, err := mender.ParseInventory([]byte(`[{"name":"device_type","value":"gw-a"},{"name":"mem_total_kB","value":1024},
		{"name":"ipv4_eth0","value":["10.0.0.2/24", "10.0.0.3/24"]},{"name":"ratio","value":1.5e3}]` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []cradle.DeviceAttribute{{Name: "device_type", Value: "gw-a"}, {Name: "mem_total_kB", Value: "1024"},
		{Name: "ipv4_eth0", Value: `["10.0.0.2/24","10.0.0.3/24"]`}, {Name: "ratio", Value: "1.5e3"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("attributes (-want +got):\n%s", d)
	}
	for _, tt := range []struct{ name, body, msg string }{
		{"object", `{"name":"a","value":"b"}`, "want []mender.inventoryAttribute"},
		{"null", `null`, "not a JSON array"},
		{"no name", `[{"value":"b"}]`, "attribute 0 has no name"},
		{"twice", `[{"name":"a","value":"b"},{"name":"a","value":"c"}]`, `"a" is given twice`},
		{"bool", `[{"name":"a","value":true}]`, `"a": a value is a string`},
		{"nested", `[{"name":"a","value":[["x"]]}]`, "only strings and numbers"},
		{"no value", `[{"name":"a"}]`, "no value"},
		{"extra field", `[{"name":"a","value":"b","scope":"x"}]`, `unknown field "scope"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mender.ParseInventory([]byte(tt.body))
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tt.msg) {
				t.Fatalf("got %v, want invalid saying %q", err, tt.msg)
			}
		})
	}
}

// TestParseNext: the three forms of the update check, as the client
// sends them, and refusals.
func TestParseNext(t *testing.T) {
	want := mender.Provides{DeviceType: "gw-a", ArtifactName: "app-1"}
	v2, err := mender.ParseNextV2([]byte(`{"device_provides":{"artifact_name":"app-1","device_type":"gw-a","rootfs-image.version":"x"},"update_control_map":true}`))
	if err != nil || v2 != want {
		t.Fatalf("v2: %+v, %v", v2, err)
	}
	v1, err := mender.ParseNextV1([]byte(`{"artifact_name":"app-1","device_type":"gw-a"}`))
	if err != nil || v1 != want {
		t.Fatalf("v1: %+v, %v", v1, err)
	}
	q, err := mender.ParseNextQuery(url.Values{"artifact_name": {"app-1"}, "device_type": {"gw-a"}})
	if err != nil || q != want {
		t.Fatalf("v1 GET: %+v, %v", q, err)
	}
	for _, tt := range []struct {
		name string
		err  error
		msg  string
	}{
		{"v2 without provides", second(mender.ParseNextV2([]byte(`{"update_control_map":true}`))), "no device_provides"},
		{"v2 without device type", second(mender.ParseNextV2([]byte(`{"device_provides":{"artifact_name":"a"}}`))), "no device_type"},
		{"v2 number", second(mender.ParseNextV2([]byte(`{"device_provides":{"device_type":1}}`))), "device_provides is a JSON number, want string"},
		{"v2 unknown field", second(mender.ParseNextV2([]byte(`{"device_provides":{"device_type":"a"},"x":1}`))), `unknown field "x"`},
		{"v1 array", second(mender.ParseNextV1([]byte(`[]`))), "is a JSON array"},
		{"query other", second(mender.ParseNextQuery(url.Values{"device_type": {"a"}, "x": {"1"}})), `"x"`},
		{"query twice", second(mender.ParseNextQuery(url.Values{"device_type": {"a", "b"}})), "2 times"},
	} {
		if cradle.ErrorCode(tt.err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(tt.err), tt.msg) {
			t.Errorf("%s: got %v, want invalid saying %q", tt.name, tt.err, tt.msg)
		}
	}
}

func second[T any](_ T, err error) error { return err }

// TestParseStatus: every status maps onto an update report state.
func TestParseStatus(t *testing.T) {
	for status, want := range map[string]string{
		"downloading": cradle.UpdateDownloading, "installing": cradle.UpdateInstalling, "rebooting": cradle.UpdateInstalling,
		"pause_before_installing": cradle.UpdateInstalling, "success": cradle.UpdateSucceeded,
		"already-installed": cradle.UpdateSucceeded, "failure": cradle.UpdateFailed,
	} {
		st, err := mender.ParseStatus([]byte(`{"status":"` + status + `","substate":"x"}` + "\n"))
		if err != nil || st.UpdateState() != want || st.SubState != "x" {
			t.Errorf("%s: %+v (%s), %v; want %s", status, st, st.UpdateState(), err, want)
		}
	}
	for body, msg := range map[string]string{
		`{"status":"done"}`:                  `unknown status "done"`,
		`{"substate":"x"}`:                   "no status",
		`{"status":"success","extra":1}`:     `unknown field "extra"`,
		`{"status":"success","substate":7}`:  "substate is a JSON number",
		`{"status":"success"}{"status":"x"}`: "data after",
	} {
		if _, err := mender.ParseStatus([]byte(body)); cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), msg) {
			t.Errorf("%s: got %v, want invalid saying %q", body, err, msg)
		}
	}
}

// TestParseLog: the last error line of a log; malformed logs refused.
func TestParseLog(t *testing.T) {
	last, err := mender.ParseLog([]byte(`{"messages":[{"timestamp":"2026-01-01T00:00:00Z","level":"error","message":"first"},
		{"level":"info","message":"x"},{"level":"error","message":"Update module terminated abnormally: exit status 1"},{"level":"info","message":"y"}]}`))
	if err != nil || last != "Update module terminated abnormally: exit status 1" {
		t.Fatalf("last error %q, %v", last, err)
	}
	if last, err := mender.ParseLog([]byte(`{"messages":[]}`)); err != nil || last != "" {
		t.Fatalf("empty log: %q, %v", last, err)
	}
	for body, msg := range map[string]string{
		`{}`:                                  "no messages",
		`{"messages":[{"level":"info"}]}`:     "message 0 has no message",
		`{"messages":[null]}`:                 "message 0 is not an object",
		`{"messages":[],"deployment_id":"x"}`: `unknown field "deployment_id"`,
	} {
		if _, err := mender.ParseLog([]byte(body)); cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), msg) {
			t.Errorf("%s: got %v, want invalid saying %q", body, err, msg)
		}
	}
}

// TestParseDeploymentID: "<rollout>-<attempt>" round-trips; anything
// else is not found.
func TestParseDeploymentID(t *testing.T) {
	r, a, err := mender.ParseDeploymentID("ro_0123abcd-12")
	if err != nil || r != "ro_0123abcd" || a != 12 || mender.DeploymentID(r, a) != "ro_0123abcd-12" {
		t.Fatalf("%q %d %v", r, a, err)
	}
	for _, id := range []string{"", "ro_1", "ro_1-", "-1", "ro_1-0", "ro_1-01", "ro_1-+1", "ro/1-1", "ro_1-1-", "ro_1-99999999999", "ro 1-1"} {
		if _, _, err := mender.ParseDeploymentID(id); cradle.ErrorCode(err) != cradle.ENOTFOUND {
			t.Errorf("%q: %v, want not found", id, err)
		}
	}
}
