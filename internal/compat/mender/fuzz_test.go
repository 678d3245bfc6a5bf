package mender_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/compat/mender"
)

// mustBeCradleError fails unless err is nil or a *cradle.Error: a parser
// of outside input never fails otherwise.
func mustBeCradleError(t *testing.T, err error) {
	t.Helper()
	var ce *cradle.Error
	if err != nil && !errors.As(err, &ce) {
		t.Fatalf("error %v is not a *cradle.Error", err)
	}
}

// FuzzAuthRequest: bodies signed with each kind of key (and changed),
// signatures of other bodies. What is accepted verified: its identity is
// canonical and its key parses to the same canonical PEM.
func FuzzAuthRequest(f *testing.F) {
	for _, k := range testKeys(f) {
		body := authBody(f, map[string]string{"mac": "02:00:00:00:00:01", "sku": "x"}, k, "")
		sig := sign(f, k, body)
		f.Add(body, sig)
		f.Add(body[:len(body)-2], sig)
		f.Add([]byte(strings.Replace(string(body), "sku", "skv", 1)), sig)
	}
	f.Add([]byte(`{"id_data":"{\"a\":[\"b\"]}","pubkey":"","tenant_token":"t"}`), "AAAA")
	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		req, err := mender.ParseAuthRequest(body, sig)
		mustBeCradleError(t, err)
		if err != nil {
			return
		}
		canon, _, err := cradle.CanonicalMenderIDData(req.Request.IDData)
		if err != nil || canon != req.Request.IDData {
			t.Fatalf("accepted identity %q is not canonical: %q, %v", req.Request.IDData, canon, err)
		}
		if _, pemText, fp, err := cradle.ParseDevicePublicKey(req.Request.PublicKey); err != nil || pemText != req.Request.PublicKey || fp != req.Request.KeyFingerprint {
			t.Fatalf("accepted key does not round-trip: %v", err)
		}
	})
}

// FuzzInventory: accepted inventories have unique, non-empty names.
func FuzzInventory(f *testing.F) {
	f.Add([]byte(`[{"name":"device_type","value":"gw-a"},{"name":"n","value":-1.5e-3},{"name":"l","value":["a",1]}]`))
	f.Add([]byte(`[{"name":"a","value":{"x":1}}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, body []byte) {
		attrs, err := mender.ParseInventory(body)
		mustBeCradleError(t, err)
		seen := map[string]bool{}
		for _, a := range attrs {
			if a.Name == "" || seen[a.Name] {
				t.Fatalf("accepted an empty or repeated name %q", a.Name)
			}
			seen[a.Name] = true
		}
	})
}

// FuzzStatus: an accepted status maps onto a known report state.
func FuzzStatus(f *testing.F) {
	f.Add([]byte(`{"status":"failure","substate":"ArtifactInstall"}`))
	f.Add([]byte(`{"status":"already-installed"}` + "\n"))
	f.Add([]byte(`{"status":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		st, err := mender.ParseStatus(body)
		mustBeCradleError(t, err)
		if err == nil && !slices.Contains([]string{cradle.UpdateDownloading, cradle.UpdateInstalling, cradle.UpdateSucceeded, cradle.UpdateFailed}, st.UpdateState()) {
			t.Fatalf("status %q maps to %q", st.Status, st.UpdateState())
		}
	})
}

// FuzzNext: v2 and v1 update check bodies; an accepted one names a
// device type.
func FuzzNext(f *testing.F) {
	f.Add([]byte(`{"device_provides":{"artifact_name":"a","device_type":"gw"},"update_control_map":true}`), true)
	f.Add([]byte(`{"artifact_name":"a","device_type":"gw"}`), false)
	f.Add([]byte(`{"device_provides":null}`), true)
	f.Fuzz(func(t *testing.T, body []byte, v2 bool) {
		parse := mender.ParseNextV1
		if v2 {
			parse = mender.ParseNextV2
		}
		p, err := parse(body)
		mustBeCradleError(t, err)
		if err == nil && p.DeviceType == "" {
			t.Fatal("accepted an update check without a device type")
		}
	})
}

// FuzzDeploymentID: an accepted id is exactly DeploymentID of its parts.
func FuzzDeploymentID(f *testing.F) {
	for _, s := range []string{"ro_0123abcd-1", "ro_1-01", "a-b-3", "-", "ro_1-1048576", "ro_1-1048577"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		r, a, err := mender.ParseDeploymentID(id)
		mustBeCradleError(t, err)
		if err == nil && mender.DeploymentID(r, a) != id {
			t.Fatalf("%q parsed as %q, %d", id, r, a)
		}
	})
}

// FuzzLog: log bodies never panic the parser.
func FuzzLog(f *testing.F) {
	f.Add([]byte(`{"messages":[{"timestamp":"t","level":"error","message":"m"}]}`))
	f.Add([]byte(`{"messages":[1]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		_, err := mender.ParseLog(body)
		mustBeCradleError(t, err)
	})
}
