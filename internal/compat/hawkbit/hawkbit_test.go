package hawkbit_test

import (
	"crypto/md5"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/compat/hawkbit"
	"cradle/internal/sqlstore"
)

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func expect(t testing.TB, resp *http.Response, status int, what string) string {
	t.Helper()
	body := readAll(t, resp)
	if resp.StatusCode != status {
		t.Fatalf("%s: %s %s, want %d", what, resp.Status, body, status)
	}
	return body
}

type baseDoc struct {
	Config struct {
		Polling struct {
			Sleep string `json:"sleep"`
		} `json:"polling"`
	} `json:"config"`
	Links map[string]struct {
		Href string `json:"href"`
	} `json:"_links"`
}

func (e *env) base(t testing.TB, serial, token string) baseDoc {
	t.Helper()
	var doc baseDoc
	if err := json.Unmarshal([]byte(expect(t, e.do("GET", "/DEFAULT/controller/v1/"+serial, token, ""), 200, "base poll")), &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// path strips the server from a link.
func (e *env) path(href string) string { return strings.TrimPrefix(href, e.srv.URL) }

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	tok1 := e.device("SN-1", nil)
	tok2 := e.device("SN-2", nil)
	gw, err := e.protocol.CreateDeviceToken(e.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, Name: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path, authz string) *http.Response {
		req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	tests := []struct {
		name, path, authz string
		status            int
		says              string
	}{
		{"no credentials", "/default/controller/v1/SN-1", "", 401, "no credentials"},
		{"unknown scheme", "/default/controller/v1/SN-1", "Bearer " + tok1, 401, "scheme"},
		{"bad token", "/default/controller/v1/SN-1", "TargetToken dtk_0000000000000000.x", 401, ""},
		{"another device's token", "/default/controller/v1/SN-1", "TargetToken " + tok2, 401, "not controller"},
		{"target token as gateway", "/default/controller/v1/SN-1", "GatewayToken " + tok1, 401, "target token"},
		{"another tenant", "/acme/controller/v1/SN-1", "TargetToken " + tok1, 401, "tenant"},
		{"target token", "/DEFAULT/controller/v1/SN-1", "TargetToken " + tok1, 200, ""},
		{"gateway token", "/default/controller/v1/SN-2", "GatewayToken " + gw.Secret, 200, ""},
		{"gateway token, unknown device", "/default/controller/v1/SN-9", "GatewayToken " + gw.Secret, 404, "register"},
		{"not a DDI path", "/default/controllers/v1/SN-1", "TargetToken " + tok1, 404, ""},
		{"wrong method", "/default/controller/v1/SN-1/configData", "TargetToken " + tok1, 405, "PUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := expect(t, get(tt.path, tt.authz), tt.status, tt.name)
			if !strings.Contains(body, tt.says) {
				t.Errorf("body %q does not say %q", body, tt.says)
			}
		})
	}
	// The first accepted poll admitted the device: deployed, hawkBit.
	d, err := sqlstore.NewDeviceService(e.db).FindDeviceBySerial(e.admin, "SN-1")
	if err != nil || d.State != cradle.StateDeployed || d.Protocol != cradle.ProtocolHawkbit {
		t.Fatalf("SN-1 after its poll: %+v, %v", d, err)
	}
	// A suspended device is refused with 403.
	if _, err := sqlstore.NewDeviceService(e.db).TransitionDevice(e.admin, "SN-1", cradle.DeviceTransition{To: cradle.StateSuspended, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if resp := get("/default/controller/v1/SN-1", "TargetToken "+tok1); resp.StatusCode != 403 {
		t.Errorf("suspended device: %s %s", resp.Status, readAll(t, resp))
	}
}

func TestDeploymentFlow(t *testing.T) {
	e := newEnv(t)
	tok := e.device("SN-1", map[string]string{"hb": "a"})
	doc := e.base(t, "SN-1", tok)
	if doc.Config.Polling.Sleep != "00:00:30" || doc.Links["configData"].Href == "" || len(doc.Links) != 1 {
		t.Fatalf("idle base poll: %+v", doc)
	}
	expect(t, e.do("PUT", "/default/controller/v1/SN-1/configData", tok, `{"data":{"board":"b1","rev":"1.0"}}`), 200, "configData")
	expect(t, e.do("PUT", "/default/controller/v1/SN-1/configData", tok, `{"mode":"remove","data":{"rev":""}}`), 200, "configData remove")
	attrs, err := e.protocol.FindDeviceAttributes(cradle.NewContextWithActor(t.Context(), cradle.Actor{TenantID: e.tenant, Role: cradle.RoleDevice, Kind: "device", ID: "SN-1"}), "SN-1")
	if err != nil || len(attrs) != 1 || attrs[0].Name != "board" {
		t.Fatalf("attributes: %+v, %v", attrs, err)
	}
	expect(t, e.do("PUT", "/default/controller/v1/SN-1/configData", tok, `{"mode":"add","data":{}}`), 400, "bad configData")

	ro := e.rollout("a")
	doc = e.base(t, "SN-1", tok)
	dep := doc.Links["deploymentBase"].Href
	if dep == "" || doc.Links["configData"].Href != "" || doc.Links["cancelAction"].Href != "" || !strings.Contains(dep, "?c=") {
		t.Fatalf("base poll with a deployment: %+v", doc)
	}
	var d struct {
		ID         string `json:"id"`
		Deployment struct {
			Download, Update string
			Chunks           []struct {
				Part, Version, Name string
				Artifacts           []struct {
					Filename string
					Hashes   struct{ SHA1, MD5, SHA256 string }
					Size     int64
					Links    map[string]struct{ Href string } `json:"_links"`
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(expect(t, e.do("GET", e.path(dep), tok, ""), 200, "deploymentBase")), &d); err != nil {
		t.Fatal(err)
	}
	m, s1 := md5.Sum(e.payload), sha1.Sum(e.payload)
	if d.Deployment.Download != "forced" || d.Deployment.Update != "forced" || len(d.Deployment.Chunks) != 1 || len(d.Deployment.Chunks[0].Artifacts) != 1 {
		t.Fatalf("deployment %+v", d)
	}
	c := d.Deployment.Chunks[0]
	a := c.Artifacts[0]
	if c.Part != "os" || c.Version != "2.0.0" || c.Name != "gw 2.0.0" || a.Filename != "update.swu" || a.Size != int64(len(e.payload)) ||
		a.Hashes.MD5 != hex.EncodeToString(m[:]) || a.Hashes.SHA1 != hex.EncodeToString(s1[:]) || a.Hashes.SHA256 != e.release.SHA256 ||
		len(a.Links) != 4 || !strings.HasSuffix(dep, "/deploymentBase/"+d.ID+dep[strings.Index(dep, "?"):]) {
		t.Fatalf("deployment chunk %+v", c)
	}
	if got := expect(t, e.do("GET", e.path(a.Links["download"].Href), tok, ""), 200, "download"); got != string(e.payload) {
		t.Fatalf("download: %d bytes", len(got))
	}
	req, _ := http.NewRequest("GET", a.Links["download-http"].Href, nil)
	req.Header.Set("Authorization", "TargetToken "+tok)
	req.Header.Set("Range", "bytes=100-")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := expect(t, resp, 206, "ranged download"); got != string(e.payload[100:]) {
		t.Fatalf("ranged download: %d bytes", len(got))
	}
	if got := expect(t, e.do("GET", e.path(a.Links["md5sum"].Href), tok, ""), 200, "md5sum"); got != hex.EncodeToString(m[:])+"  update.swu\n" {
		t.Fatalf("MD5SUM %q", got)
	}
	expect(t, e.do("GET", e.path(a.Links["download"].Href)+"x", tok, ""), 404, "download of another file")
	expect(t, e.do("GET", e.path(a.Links["download"].Href), "", ""), 401, "download without a token")

	fb := func(execution, finished string, details ...string) *http.Response {
		body, _ := json.Marshal(map[string]any{"id": d.ID, "time": "20260101T000000", "status": map[string]any{
			"execution": execution, "result": map[string]any{"finished": finished, "progress": map[string]int{"cnt": 0, "of": 1}}, "details": details}})
		return e.do("POST", "/default/controller/v1/SN-1/deploymentBase/"+d.ID+"/feedback", tok, string(body))
	}
	expect(t, fb("proceeding", "none", "Installing Update Chunk Artifacts."), 200, "proceeding")
	e.step()
	if s := e.state(ro.ID, "SN-1"); s.State != cradle.DeviceDownloading {
		t.Fatalf("after proceeding: %+v", s)
	}
	expect(t, e.do("POST", "/default/controller/v1/SN-1/deploymentBase/"+d.ID+"/feedback", tok, `{"status":{"execution":"done"}}`), 400, "bad feedback")
	expect(t, e.do("POST", "/default/controller/v1/SN-1/deploymentBase/"+d.ID+"/feedback", tok, strings.Repeat(" ", hawkbit.MaxFeedbackBody+1)), 413, "oversize feedback")
	expect(t, fb("closed", "success", "Update Installed."), 200, "closed success")
	e.step()
	if s := e.state(ro.ID, "SN-1"); s.State != cradle.DeviceSucceeded {
		t.Fatalf("after closed/success: %+v", s)
	}
	sw, err := sqlstore.NewUpdateService(e.db).FindSoftware(e.admin, "SN-1")
	if err != nil || sw.ReleaseID != e.release.ID {
		t.Fatalf("software: %+v, %v", sw, err)
	}
	// The action is finished: feedback and deployment are gone; the
	// installed base names it.
	expect(t, fb("closed", "success"), 410, "feedback on a finished action")
	expect(t, e.do("GET", "/default/controller/v1/SN-1/deploymentBase/"+d.ID, tok, ""), 410, "finished deployment")
	expect(t, e.do("GET", "/default/controller/v1/SN-1/deploymentBase/999", tok, ""), 404, "unknown action")
	expect(t, e.do("POST", "/default/controller/v1/SN-1/deploymentBase/999/feedback", tok, `{"status":{"execution":"closed","result":{"finished":"success"}}}`), 410, "feedback on an unknown action")
	doc = e.base(t, "SN-1", tok)
	if doc.Links["deploymentBase"].Href != "" || !strings.HasSuffix(doc.Links["installedBase"].Href, "/installedBase/"+d.ID) {
		t.Fatalf("base poll after the install: %+v", doc)
	}
	expect(t, e.do("GET", e.path(doc.Links["installedBase"].Href), tok, ""), 200, "installedBase")
	expect(t, e.do("PUT", "/default/controller/v1/SN-1/installedBase", tok, `{"name":"swu-gw","version":"2.0.0"}`), 200, "installedBase unchanged")
	expect(t, e.do("PUT", "/default/controller/v1/SN-1/installedBase", tok, `{"name":"swu-gw","version":"9.9"}`), 404, "installedBase unknown")
}

func TestFailureAndCancel(t *testing.T) {
	e := newEnv(t)
	tok1 := e.device("SN-1", map[string]string{"hb": "fail"})
	tok2 := e.device("SN-2", map[string]string{"hb": "cancel"})
	e.base(t, "SN-1", tok1)
	e.base(t, "SN-2", tok2)

	ro := e.rollout("fail")
	id := e.path(e.base(t, "SN-1", tok1).Links["deploymentBase"].Href)
	id = id[strings.LastIndex(id, "/")+1 : strings.Index(id, "?")]
	expect(t, e.do("POST", "/default/controller/v1/SN-1/deploymentBase/"+id+"/feedback", tok1,
		`{"id":1,"status":{"execution":"closed","result":{"finished":"failure"},"details":["ERROR : bad hwrev","ERROR : install failed"]}}`), 200, "failure")
	e.step()
	if s := e.state(ro.ID, "SN-1"); s.State != cradle.DeviceFailed || !strings.Contains(s.Reason, "bad hwrev; ERROR : install failed") {
		t.Fatalf("after closed/failure: %+v", s)
	}
	logs, err := e.protocol.FindUpdateLogs(e.admin, "SN-1", ro.ID)
	if err != nil || len(logs) != 1 || logs[0].Log != "ERROR : bad hwrev\nERROR : install failed" {
		t.Fatalf("update logs: %+v, %v", logs, err)
	}

	ro2 := e.rollout("cancel")
	if _, err := e.rollouts.AbortRollout(e.admin, ro2.ID, "test"); err != nil {
		t.Fatal(err)
	}
	doc := e.base(t, "SN-2", tok2)
	cancel := doc.Links["cancelAction"].Href
	if cancel == "" || doc.Links["deploymentBase"].Href != "" {
		t.Fatalf("base poll of an aborted rollout: %+v", doc)
	}
	aid := cancel[strings.LastIndex(cancel, "/")+1:]
	if got := expect(t, e.do("GET", e.path(cancel), tok2, ""), 200, "cancelAction"); got != `{"id":"`+aid+`","cancelAction":{"stopId":"`+aid+`"}}`+"\n" {
		t.Fatalf("cancelAction %q", got)
	}
	expect(t, e.do("GET", "/default/controller/v1/SN-2/deploymentBase/"+aid, tok2, ""), 404, "deployment of a canceled action")
	expect(t, e.do("POST", e.path(cancel)+"/feedback", tok2, `{"id":`+aid+`,"status":{"execution":"rejected","result":{"finished":"none"}}}`), 200, "cancel rejected")
	e.step()
	if s := e.state(ro2.ID, "SN-2"); !s.State.InFlight() {
		t.Fatalf("after a rejected cancel: %+v", s)
	}
	expect(t, e.do("POST", e.path(cancel)+"/feedback", tok2, `{"id":`+aid+`,"status":{"execution":"closed","result":{"finished":"success"},"details":["cancellation acknowledged."]}}`), 200, "cancel closed")
	e.step()
	if s := e.state(ro2.ID, "SN-2"); s.State != cradle.DeviceFailed || !strings.Contains(s.Reason, hawkbit.CanceledReason) {
		t.Fatalf("after the cancel: %+v", s)
	}
	expect(t, e.do("GET", e.path(cancel), tok2, ""), 404, "cancelAction after the cancel")
	// SN-1's action is not SN-2's.
	expect(t, e.do("GET", "/default/controller/v1/SN-2/deploymentBase/"+id, tok2, ""), 404, "another device's action")
}

// A release a DDI client cannot install fails the attempt with a reason,
// and the device is offered nothing.
func TestUninstallableRelease(t *testing.T) {
	e := newEnv(t)
	tok := e.device("SN-1", map[string]string{"hb": "m"})
	e.base(t, "SN-1", tok)
	releases := sqlstore.NewReleaseService(e.db)
	rel, err := releases.CreateRelease(e.admin, cradle.ReleaseCreate{Model: "swu-gw", Version: "3.0.0", Kind: cradle.ReleaseMender,
		SHA256: e.release.SHA256, Size: e.release.Size, FileName: "app.mender", SecurityCounter: 1, ArtifactName: "app-3"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := releases.MarkReleaseSigned(e.admin, rel.ID, "swu-gw/3.0.0/app.mender", nil); err != nil {
		t.Fatal(err)
	}
	ro := e.rolloutOf(rel.ID, "m")
	if doc := e.base(t, "SN-1", tok); doc.Links["deploymentBase"].Href != "" || doc.Links["cancelAction"].Href != "" {
		t.Fatalf("base poll offered a mender release: %+v", doc)
	}
	e.step()
	if s := e.state(ro.ID, "SN-1"); s.State != cradle.DeviceFailed || !strings.Contains(s.Reason, "mender artifact, which a hawkBit DDI client") {
		t.Fatalf("after the poll: %+v", s)
	}
}
