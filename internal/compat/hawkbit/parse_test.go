package hawkbit_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/compat/hawkbit"
)

// suricattaFeedback is what SWUpdate 2022.12 posts (server_hawkbit.c).
const suricattaFeedback = `{ "id": 12, "time": "20261124T235900", "status": { "result": { "progress": { "cnt" : 1, "of" : 1 }, "finished": "none" }, "execution": "proceeding", "details" : [ "Installed Chunk." ] } }`

// suricattaConfigData is SWUpdate's configData body: no mode, the old
// API's id, time and status.
const suricattaConfigData = `{ "id": "", "time": "20261124T235900", "status": { "result": { "finished": "success" }, "execution": "closed", "details" : [ "" ] }, "data" : { "board": "b1","rev": "1.0" } }`

func TestParsePath(t *testing.T) {
	tests := []struct {
		name string
		path string
		ok   bool
		code string
		want hawkbit.Route
	}{
		{"base", "/DEFAULT/controller/v1/dev-1", true, "", hawkbit.Route{Tenant: "DEFAULT", ControllerID: "dev-1"}},
		{"deployment", "/default/controller/v1/dev-1/deploymentBase/12", true, "", hawkbit.Route{Tenant: "default", ControllerID: "dev-1", Resource: "deploymentBase", ActionID: 12}},
		{"feedback", "/t/controller/v1/d/deploymentBase/7/feedback", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "deploymentBase", ActionID: 7, Feedback: true}},
		{"cancel feedback", "/t/controller/v1/d/cancelAction/7/feedback", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "cancelAction", ActionID: 7, Feedback: true}},
		{"configData", "/t/controller/v1/d/configData", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "configData"}},
		{"installedBase put", "/t/controller/v1/d/installedBase", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "installedBase"}},
		{"installedBase get", "/t/controller/v1/d/installedBase/3", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "installedBase", ActionID: 3}},
		{"artifact", "/t/controller/v1/d/softwaremodules/3/artifacts/a.swu", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "softwaremodules", ActionID: 3, FileName: "a.swu"}},
		{"md5", "/t/controller/v1/d/softwaremodules/3/artifacts/a.swu.MD5SUM", true, "", hawkbit.Route{Tenant: "t", ControllerID: "d", Resource: "softwaremodules", ActionID: 3, FileName: "a.swu", MD5SUM: true}},
		{"other api", "/device/v1/update", false, "", hawkbit.Route{}},
		{"no controller", "/t/controller/v1/", true, cradle.ENOTFOUND, hawkbit.Route{}},
		{"id zero", "/t/controller/v1/d/deploymentBase/0", true, cradle.ENOTFOUND, hawkbit.Route{}},
		{"id not canonical", "/t/controller/v1/d/deploymentBase/012", true, cradle.ENOTFOUND, hawkbit.Route{}},
		{"id too big", "/t/controller/v1/d/deploymentBase/2147483648", true, cradle.ENOTFOUND, hawkbit.Route{}},
		{"unknown resource", "/t/controller/v1/d/confirmationBase", true, cradle.ENOTFOUND, hawkbit.Route{}},
		{"bad serial", "/t/controller/v1/-x", true, cradle.ENOTFOUND, hawkbit.Route{}},
		{"bad feedback", "/t/controller/v1/d/deploymentBase/1/status", true, cradle.ENOTFOUND, hawkbit.Route{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, ok, err := hawkbit.ParsePath(tt.path)
			if ok != tt.ok || cradle.ErrorCode(err) != tt.code {
				t.Fatalf("ParsePath(%q) = ok %v, err %v; want ok %v, code %q", tt.path, ok, err, tt.ok, tt.code)
			}
			if err == nil && ok {
				if d := cmp.Diff(tt.want, rt); d != "" {
					t.Errorf("route (-want +got):\n%s", d)
				}
			}
		})
	}
}

func TestParseFeedback(t *testing.T) {
	fb, err := hawkbit.ParseFeedback([]byte(suricattaFeedback))
	if err != nil {
		t.Fatal(err)
	}
	want := hawkbit.Feedback{Execution: "proceeding", Finished: "none", ProgressCnt: 1, ProgressOf: 1, Details: []string{"Installed Chunk."}}
	if d := cmp.Diff(want, fb); d != "" {
		t.Errorf("feedback (-want +got):\n%s", d)
	}
	bad := map[string]string{
		"no status":        `{"id":"1"}`,
		"no execution":     `{"status":{"result":{"finished":"none"}}}`,
		"bad execution":    `{"status":{"execution":"done","result":{"finished":"none"}}}`,
		"no finished":      `{"status":{"execution":"closed","result":{}}}`,
		"bad finished":     `{"status":{"execution":"closed","result":{"finished":"ok"}}}`,
		"negative":         `{"status":{"execution":"closed","result":{"finished":"none","progress":{"cnt":-1,"of":1}}}}`,
		"detail not text":  `{"status":{"execution":"closed","result":{"finished":"none"},"details":[1]}}`,
		"trailing":         `{"status":{"execution":"closed","result":{"finished":"none"}}} {}`,
		"not json":         `status=closed`,
		"execution number": `{"status":{"execution":1,"result":{"finished":"none"}}}`,
	}
	for name, body := range bad {
		if _, err := hawkbit.ParseFeedback([]byte(body)); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("%s: err = %v, want EINVALID", name, err)
		}
	}
	big := `{"status":{"execution":"closed","result":{"finished":"none"},"details":["` + strings.Repeat("x", hawkbit.MaxFeedbackBody) + `"]}}`
	if _, err := hawkbit.ParseFeedback([]byte(big)); cradle.ErrorCode(err) != cradle.ETOOLARGE {
		t.Errorf("oversize: err = %v, want ETOOLARGE", err)
	}
}

func TestParseConfigData(t *testing.T) {
	c, err := hawkbit.ParseConfigData([]byte(suricattaConfigData))
	if err != nil {
		t.Fatal(err)
	}
	want := hawkbit.ConfigData{Mode: "merge", Data: []cradle.DeviceAttribute{{Name: "board", Value: "b1"}, {Name: "rev", Value: "1.0"}}}
	if d := cmp.Diff(want, c); d != "" {
		t.Errorf("configData (-want +got):\n%s", d)
	}
	if c, err := hawkbit.ParseConfigData([]byte(`{"mode":"REPLACE","data":{}}`)); err != nil || c.Mode != "replace" {
		t.Errorf("replace: %+v, %v", c, err)
	}
	bad := map[string]string{
		"no data":      `{"mode":"merge"}`,
		"bad mode":     `{"mode":"add","data":{"a":"b"}}`,
		"number value": `{"data":{"a":1}}`,
		"empty name":   `{"data":{"":"x"}}`,
		"long name":    `{"data":{"` + strings.Repeat("n", cradle.MaxAttributeNameLen+1) + `":"x"}}`,
		"long value":   `{"data":{"n":"` + strings.Repeat("v", cradle.MaxAttributeValueLen+1) + `"}}`,
		"array":        `[]`,
	}
	for name, body := range bad {
		if _, err := hawkbit.ParseConfigData([]byte(body)); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("%s: err = %v, want EINVALID", name, err)
		}
	}
}

func TestParseInstalledBase(t *testing.T) {
	ib, err := hawkbit.ParseInstalledBase([]byte(`{"name":"gw","version":"1.2.0","extra":1}`))
	if err != nil || ib != (hawkbit.InstalledBase{Name: "gw", Version: "1.2.0"}) {
		t.Fatalf("got %+v, %v", ib, err)
	}
	for _, body := range []string{`{"name":"gw"}`, `{"name":"","version":"1"}`, `{"name":1,"version":"1"}`, `null`, ``} {
		if _, err := hawkbit.ParseInstalledBase([]byte(body)); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("%q: err = %v, want EINVALID", body, err)
		}
	}
}
