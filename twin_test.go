package cradle_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"cradle"
)

func TestMergeConfig(t *testing.T) {
	parse := func(s string) map[string]any {
		t.Helper()
		m, err := cradle.ParseConfig([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct{ name, base, over, want string }{
		{"objects merge", `{"a":{"x":1,"y":2}}`, `{"a":{"y":3,"z":4}}`, `{"a":{"x":1,"y":3,"z":4}}`},
		{"arrays replace", `{"a":[1,2,3]}`, `{"a":[4]}`, `{"a":[4]}`},
		{"scalar replaces object", `{"a":{"x":1}}`, `{"a":"s"}`, `{"a":"s"}`},
		{"object replaces scalar", `{"a":1}`, `{"a":{"x":1}}`, `{"a":{"x":1}}`},
		{"null replaces", `{"a":{"x":1}}`, `{"a":null}`, `{"a":null}`},
		{"numbers kept as written", `{"a":1.50}`, `{"b":12345678901234567890}`, `{"a":1.50,"b":12345678901234567890}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := parse(tt.base)
			got := string(cradle.CanonicalConfig(cradle.MergeConfig(base, parse(tt.over))))
			if got != tt.want {
				t.Errorf("merge = %s, want %s", got, tt.want)
			}
			if string(cradle.CanonicalConfig(base)) != string(cradle.CanonicalConfig(parse(tt.base))) {
				t.Error("merge modified its base")
			}
		})
	}
}

func TestComposeConfigPrecedence(t *testing.T) {
	groups := []*cradle.ConfigGroup{
		{Name: "b", Selector: "env=prod", Priority: 5, Config: json.RawMessage(`{"v":"b","b":1}`)},
		{Name: "a", Selector: "env=prod", Priority: 5, Config: json.RawMessage(`{"v":"a","a":1}`)},
		{Name: "low", Selector: "env", Priority: -1, Config: json.RawMessage(`{"v":"low","low":1}`)},
		{Name: "dev", Selector: "env=dev", Priority: 100, Config: json.RawMessage(`{"v":"dev"}`)},
	}
	cradle.SortConfigGroups(groups)
	cfg, matched, ok, err := cradle.ComposeConfig(groups, map[string]string{"env": "prod"}, nil)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if got := string(cradle.CanonicalConfig(cfg)); got != `{"a":1,"b":1,"low":1,"v":"b"}` {
		t.Errorf("composed = %s", got)
	}
	if strings.Join(matched, ",") != "low,a,b" {
		t.Errorf("matched = %v", matched)
	}
	cfg, _, _, _ = cradle.ComposeConfig(groups, map[string]string{"env": "prod"}, map[string]any{"v": "device"})
	if cfg["v"] != "device" {
		t.Errorf("the device's document does not win: %v", cfg["v"])
	}
	if _, _, ok, _ := cradle.ComposeConfig(groups, map[string]string{}, nil); ok {
		t.Error("no group and no document composed something")
	}
}

func TestDrift(t *testing.T) {
	d := &cradle.TwinDesired{Version: 3, Config: json.RawMessage(`{"a":1}`)}
	rep := func(v int64, st cradle.ReportStatus, cfg string) *cradle.TwinReported {
		return &cradle.TwinReported{Version: v, Status: st, Config: json.RawMessage(cfg)}
	}
	tests := []struct {
		name string
		d    *cradle.TwinDesired
		r    *cradle.TwinReported
		want cradle.DriftState
	}{
		{"nothing", nil, nil, cradle.DriftNone},
		{"nothing desired, nothing claimed", nil, rep(0, cradle.ReportApplied, `{}`), cradle.DriftNone},
		{"claims a version never issued", nil, rep(2, cradle.ReportApplied, `{}`), cradle.DriftDrifted},
		{"no report", d, nil, cradle.DriftPending},
		{"older version", d, rep(2, cradle.ReportApplied, `{"a":1}`), cradle.DriftPending},
		{"in sync", d, rep(3, cradle.ReportApplied, `{"a":1}`), cradle.DriftInSync},
		{"other config", d, rep(3, cradle.ReportApplied, `{"a":2}`), cradle.DriftDrifted},
		{"newer version", d, rep(4, cradle.ReportApplied, `{"a":1}`), cradle.DriftDrifted},
		{"rejected", d, rep(3, cradle.ReportRejected, `{}`), cradle.DriftRejected},
		{"failed", d, rep(3, cradle.ReportFailed, `{}`), cradle.DriftFailed},
	}
	for _, tt := range tests {
		if got := cradle.Drift(tt.d, tt.r); got != tt.want {
			t.Errorf("%s: drift = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestParseReported(t *testing.T) {
	r, err := cradle.ParseReported([]byte(`{"version":2,"status":"failed","error":"hook exited 1","config":{ "b":1, "a":2 },"at":"2026-03-01T09:00:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Config) != `{"a":2,"b":1}` || !r.At.Equal(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("parsed = %+v", r)
	}
	for doc, msg := range map[string]string{
		`{"version":2,"status":"applied","config":{}}`:                                         "at (an RFC 3339 time) is missing",
		`{"version":2,"status":"applied","error":"x","config":{},"at":"2026-03-01T09:00:00Z"}`: "status applied with an error",
		`{"version":2,"status":"rejected","config":{},"at":"2026-03-01T09:00:00Z"}`:            "needs an error",
		`{"version":-1,"status":"applied","config":{},"at":"2026-03-01T09:00:00Z"}`:            "negative",
		`{"version":1,"status":"applied","at":"2026-03-01T09:00:00Z"}`:                         "config is missing",
		`{"version":1,"status":"applied","config":{},"at":"2026-03-01T09:00:00Z","x":1}`:       "unknown field",
	} {
		_, err := cradle.ParseReported([]byte(doc))
		if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), msg) {
			t.Errorf("ParseReported(%s) = %v, want EINVALID saying %q", doc, err, msg)
		}
	}
}

// FuzzParseConfig: ParseConfig never panics, and what it accepts encodes
// canonically to a document it accepts again and encodes the same.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":{"b":[1,"x",null,true]}}`, `[]`, `{"a":1,"a":2}`, `{"a":1e400}`, `{"\u00e9":"\ud800"}`, `{"a":1}x`, strings.Repeat("[", 100)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := cradle.ParseConfig(data)
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID && cradle.ErrorCode(err) != cradle.ETOOLARGE {
				t.Fatalf("error %v has code %q", err, cradle.ErrorCode(err))
			}
			return
		}
		canon := cradle.CanonicalConfig(cfg)
		again, err := cradle.ParseConfig(canon)
		if err != nil {
			t.Fatalf("canonical form %s does not parse: %v", canon, err)
		}
		if string(cradle.CanonicalConfig(again)) != string(canon) {
			t.Fatalf("canonical form is not stable: %s", canon)
		}
	})
}

// FuzzParseDesired: the desired document parser never panics and accepts
// only documents with a version and an object config.
func FuzzParseDesired(f *testing.F) {
	for _, s := range []string{`{"version":1,"config":{}}`, `{"version":0,"config":{}}`, `{"version":1}`, `{"version":1,"config":[]}`, `{"version":"1","config":{}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, cfg, err := cradle.ParseDesired(data)
		if err != nil {
			return
		}
		if d.Version < 1 || cfg == nil || string(cradle.CanonicalConfig(cfg)) != string(d.Config) {
			t.Fatalf("accepted %s as %+v", data, d)
		}
	})
}

// FuzzParseReported: the reported document parser never panics, and what
// it accepts passes Validate again unchanged.
func FuzzParseReported(f *testing.F) {
	for _, s := range []string{
		`{"version":2,"status":"applied","config":{},"at":"2026-03-01T09:00:00Z"}`,
		`{"version":2,"status":"failed","error":"x","config":{"a":[1]},"at":"2026-03-01T09:00:00Z"}`,
		`{"version":2,"status":"applied","config":{},"at":"yesterday"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := cradle.ParseReported(data)
		if err != nil {
			return
		}
		before := string(r.Config)
		if err := r.Validate(); err != nil || string(r.Config) != before {
			t.Fatalf("accepted report does not validate again: %v", err)
		}
	})
}

func TestValidateModelName(t *testing.T) {
	tests := []struct {
		name, model string
		ok          bool
	}{
		{"device model", "gw-100", true},
		{"longest", strings.Repeat("m", cradle.MaxModelLen), true},
		{"empty", "", false},
		{"too long", strings.Repeat("m", cradle.MaxModelLen+1), false},
		{"space", "gw 100", false},
		{"leading sign", "+gw", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cradle.ValidateModelName(tt.model)
			// A schema key is a model some device may have.
			devErr := (&cradle.DeviceCreate{Serial: "SN-1", Model: tt.model}).Normalize()
			if (err == nil) != tt.ok || (err == nil) != (devErr == nil) {
				t.Errorf("ValidateModelName(%q) = %v, device model check %v, want ok %v", tt.model, err, devErr, tt.ok)
			}
			if err != nil && cradle.ErrorCode(err) != cradle.EINVALID {
				t.Errorf("code = %s, want EINVALID", cradle.ErrorCode(err))
			}
		})
	}
}

func TestConfigComposerReuse(t *testing.T) {
	groups := []*cradle.ConfigGroup{
		{Name: "all", Selector: "env", Priority: 0, Config: json.RawMessage(`{"log":{"level":"info"},"ntp":["a"]}`)},
		{Name: "prod", Selector: "env=prod", Priority: 1, Config: json.RawMessage(`{"log":{"level":"warn"}}`)},
		{Name: "bad", Selector: "site=x", Priority: 2, Config: json.RawMessage(`not json`)},
	}
	c := cradle.NewConfigComposer(groups)
	tests := []struct {
		name   string
		labels map[string]string
		device map[string]any
	}{
		{"prod", map[string]string{"env": "prod"}, nil},
		{"dev with own", map[string]string{"env": "dev"}, map[string]any{"log": map[string]any{"file": "x"}}},
		{"prod again", map[string]string{"env": "prod"}, map[string]any{"ntp": []any{"b"}}},
		{"no match", map[string]string{}, nil},
		{"bad group", map[string]string{"env": "dev", "site": "x"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, matched, ok, err := c.Compose(tt.labels, tt.device)
			wcfg, wmatched, wok, werr := cradle.ComposeConfig(groups, tt.labels, tt.device)
			if (err == nil) != (werr == nil) || ok != wok || strings.Join(matched, ",") != strings.Join(wmatched, ",") ||
				string(cradle.CanonicalConfig(cfg)) != string(cradle.CanonicalConfig(wcfg)) {
				t.Errorf("composer = %s %v %v %v, ComposeConfig = %s %v %v %v",
					cradle.CanonicalConfig(cfg), matched, ok, err, cradle.CanonicalConfig(wcfg), wmatched, wok, werr)
			}
		})
	}
}
