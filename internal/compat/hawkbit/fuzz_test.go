package hawkbit_test

import (
	"testing"

	"cradle"
	"cradle/internal/compat/hawkbit"
)

// Each parser either returns a value within its limits or a client error
// (EINVALID, ETOOLARGE, ENOTFOUND for a path), never anything else.

func FuzzParseFeedback(f *testing.F) {
	f.Add([]byte(suricattaFeedback))
	f.Add([]byte(`{"id":1,"time":"20260101T000000","status":{"result":{"finished":"success"},"execution":"closed","details":["cancellation acknowledged."]}}`))
	f.Add([]byte(`{"status":{"execution":"closed","result":{"finished":"failure"},"details":["ERROR a","ERROR b"],"code":3}}`))
	f.Add([]byte(`{"status":{"execution":"x"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fb, err := hawkbit.ParseFeedback(b)
		if err != nil {
			if c := cradle.ErrorCode(err); c != cradle.EINVALID && c != cradle.ETOOLARGE {
				t.Fatalf("code %q: %v", c, err)
			}
			return
		}
		if fb.Execution == "" || fb.Finished == "" || fb.ProgressCnt < 0 || fb.ProgressOf < 0 {
			t.Fatalf("accepted %+v", fb)
		}
	})
}

func FuzzParseConfigData(f *testing.F) {
	f.Add([]byte(suricattaConfigData))
	f.Add([]byte(`{"mode":"remove","data":{"a":""}}`))
	f.Add([]byte(`{"mode":"replace","data":{"a":"b","c":"d"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := hawkbit.ParseConfigData(b)
		if err != nil {
			if code := cradle.ErrorCode(err); code != cradle.EINVALID && code != cradle.ETOOLARGE {
				t.Fatalf("code %q: %v", code, err)
			}
			return
		}
		if len(c.Data) > cradle.MaxDeviceAttributes {
			t.Fatalf("%d attributes", len(c.Data))
		}
		for i, a := range c.Data {
			if a.Name == "" || len(a.Name) > cradle.MaxAttributeNameLen || len(a.Value) > cradle.MaxAttributeValueLen || i > 0 && c.Data[i-1].Name >= a.Name {
				t.Fatalf("attribute %d: %+v", i, a)
			}
		}
	})
}

func FuzzParseInstalledBase(f *testing.F) {
	f.Add([]byte(`{"name":"gw","version":"1.2.0"}`))
	f.Add([]byte(`{"name":"","version":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ib, err := hawkbit.ParseInstalledBase(b)
		if err != nil {
			if code := cradle.ErrorCode(err); code != cradle.EINVALID && code != cradle.ETOOLARGE {
				t.Fatalf("code %q: %v", code, err)
			}
			return
		}
		if ib.Name == "" || ib.Version == "" {
			t.Fatalf("accepted %+v", ib)
		}
	})
}

func FuzzParsePath(f *testing.F) {
	for _, p := range []string{"/DEFAULT/controller/v1/dev-1", "/t/controller/v1/d/deploymentBase/12/feedback",
		"/t/controller/v1/d/softwaremodules/3/artifacts/a.swu.MD5SUM", "/t/controller/v1/d/installedBase/1", "/pki/ca", "//controller/v1/x"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rt, ok, err := hawkbit.ParsePath(p)
		if !ok {
			if err != nil {
				t.Fatalf("not ours, yet an error: %v", err)
			}
			return
		}
		if err != nil {
			if cradle.ErrorCode(err) != cradle.ENOTFOUND {
				t.Fatalf("code %q: %v", cradle.ErrorCode(err), err)
			}
			return
		}
		if cradle.ValidateSerial(rt.ControllerID) != nil || rt.Tenant == "" || rt.ActionID < 0 || rt.ActionID > cradle.MaxDDIActionID {
			t.Fatalf("accepted %+v", rt)
		}
		if rt.Resource == "softwaremodules" && (rt.FileName == "" || rt.ActionID == 0) {
			t.Fatalf("accepted %+v", rt)
		}
	})
}
