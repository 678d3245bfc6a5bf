package httpapi_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"cradle"
)

// TestReleaseRemediation: the remediation flag at upload (remediation=true)
// and later (POST /api/v1/releases/{id}/remediation), through the client
// and raw, with the body's mistakes refused.
func TestReleaseRemediation(t *testing.T) {
	e := newEnv(t)
	admin := e.client(cradle.RoleAdmin)
	body := []byte("firmware fix")
	sum := sha256.Sum256(body)
	fix, err := admin.UploadRelease(t.Context(), cradle.ReleaseUpload{Model: "gw-100", Version: "9.9.1", Kind: cradle.ReleaseFile,
		FileName: "fw.bin", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body)), SecurityCounter: 1, Remediation: true}, bytes.NewReader(body))
	if err != nil || !fix.Remediation {
		t.Fatalf("upload with remediation: %+v, %v", fix, err)
	}
	plain := e.uploaded("9.9.2", true)
	if plain.Remediation {
		t.Fatalf("an upload without the flag is a remediation: %+v", plain)
	}
	got, err := admin.SetReleaseRemediation(t.Context(), plain.ID, true)
	if err != nil || !got.Remediation || got.ID != plain.ID {
		t.Fatalf("flag: %+v, %v", got, err)
	}
	if got, err = admin.FindRelease(t.Context(), plain.ID); err != nil || !got.Remediation {
		t.Fatalf("flag not kept: %+v, %v", got, err)
	}
	res := e.do("POST", "/api/v1/releases/"+plain.ID+"/remediation", e.tokens[cradle.RoleAdmin], "application/json", strings.NewReader(`{"remediation":false}`))
	var raw map[string]any
	if err := json.Unmarshal(res.body, &raw); res.status != 200 || err != nil {
		t.Fatalf("clear: %d %s", res.status, res.body)
	}
	if _, ok := raw["remediation"]; ok {
		t.Fatalf("a cleared flag is still in the JSON: %s", res.body)
	}
	for _, tc := range []struct{ name, path, body, want string }{
		{"no field", "/api/v1/releases/" + plain.ID + "/remediation", `{}`, "remediation is required"},
		{"not a bool", "/api/v1/releases/" + plain.ID + "/remediation", `{"remediation":"yes"}`, "remediation"},
		{"unknown field", "/api/v1/releases/" + plain.ID + "/remediation", `{"remediation":true,"reason":"x"}`, "reason"},
	} {
		res := e.do("POST", tc.path, e.tokens[cradle.RoleAdmin], "application/json", strings.NewReader(tc.body))
		if res.status != 400 || !strings.Contains(string(res.body), tc.want) {
			t.Errorf("%s: %d %s; want 400 naming %q", tc.name, res.status, res.body, tc.want)
		}
	}
	if res := e.do("POST", uploadPath("9.9.3", []byte("x"), "&remediation=maybe"), e.tokens[cradle.RoleAdmin], "application/octet-stream", strings.NewReader("x")); res.status != 400 || !strings.Contains(string(res.body), "remediation=") {
		t.Errorf("remediation=maybe: %d %s", res.status, res.body)
	}
	if res := e.do("POST", "/api/v1/releases/rel_00000000000000000000/remediation", e.tokens[cradle.RoleAdmin], "application/json", strings.NewReader(`{"remediation":true}`)); res.status != 404 {
		t.Errorf("unknown release: %d %s", res.status, res.body)
	}
}
