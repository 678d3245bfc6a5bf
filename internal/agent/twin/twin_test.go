package twin_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/twin"
)

var epoch = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

const schema = `{"type":"object","properties":{"mtu":{"type":"integer","minimum":576,"maximum":9000},"app":{"type":"object"}},"required":["mtu"]}`

type kit struct {
	t      *testing.T
	dir    string
	schema string
}

func newKit(t *testing.T) *kit {
	t.Helper()
	k := &kit{t: t, dir: t.TempDir()}
	k.schema = filepath.Join(k.dir, "schema.json")
	if err := os.WriteFile(k.schema, []byte(schema), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *kit) applier(handlers ...twin.Handler) *twin.Applier {
	k.t.Helper()
	a, err := twin.New(twin.Options{StateDir: filepath.Join(k.dir, "state"), SchemaFile: k.schema, Handlers: handlers, Now: func() time.Time { return epoch }})
	if err != nil {
		k.t.Fatal(err)
	}
	return a
}

// script writes an executable shell script and returns its path.
func (k *kit) script(name, body string) string {
	k.t.Helper()
	p := filepath.Join(k.dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		k.t.Fatal(err)
	}
	return p
}

func report(t *testing.T, b []byte) cradle.TwinReported {
	t.Helper()
	r, err := cradle.ParseReported(b)
	if err != nil {
		t.Fatalf("the Applier's report %s does not parse: %v", b, err)
	}
	return *r
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApplyFileHandler(t *testing.T) {
	k := newKit(t)
	whole := filepath.Join(k.dir, "etc", "whole.json")
	os.MkdirAll(filepath.Dir(whole), 0o755)
	app := filepath.Join(k.dir, "etc", "app.json")
	a := k.applier(&twin.File{Path: whole}, &twin.File{Path: app, Key: "app", Mode: 0o644})
	r := report(t, a.Apply(context.Background(), []byte(`{"version":3,"config":{"mtu":1500,"app":{"name":"x"}}}`)))
	if r.Version != 3 || r.Status != cradle.ReportApplied || r.Error != "" || string(r.Config) != `{"app":{"name":"x"},"mtu":1500}` || !r.At.Equal(epoch) {
		t.Fatalf("report = %+v", r)
	}
	if got := read(t, whole); got != "{\"app\":{\"name\":\"x\"},\"mtu\":1500}\n" {
		t.Errorf("whole file = %q", got)
	}
	if got := read(t, app); got != "{\"name\":\"x\"}\n" {
		t.Errorf("app file = %q", got)
	}
	for p, mode := range map[string]os.FileMode{whole: 0o600, app: 0o644} {
		if fi, _ := os.Stat(p); fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", p, fi.Mode().Perm(), mode)
		}
	}
	// A new Applier on the same state directory knows what runs.
	b := k.applier()
	if v, cfg := b.Running(); v != 3 || string(cfg) != `{"app":{"name":"x"},"mtu":1500}` {
		t.Errorf("running after reload = %d %s", v, cfg)
	}
	if r2 := report(t, b.Reported()); r2.Version != 3 || r2.Status != cradle.ReportApplied {
		t.Errorf("reported after reload = %+v", r2)
	}
}

func TestApplyRejectKeepsRunningConfig(t *testing.T) {
	k := newKit(t)
	out := filepath.Join(k.dir, "out.json")
	ran := filepath.Join(k.dir, "ran")
	hook := k.script("hook", "echo $CRADLE_CONFIG_VERSION >> "+ran+"\n")
	a := k.applier(&twin.File{Path: out}, &twin.Hook{Path: hook})
	report(t, a.Apply(context.Background(), []byte(`{"version":1,"config":{"mtu":1500}}`)))
	tests := []struct {
		name, doc string
		version   int64
		msg       string
	}{
		{"schema", `{"version":2,"config":{"mtu":100}}`, 2, "at /mtu: "},
		{"schema required", `{"version":3,"config":{"app":{}}}`, 3, "at /: missing property 'mtu'"},
		{"not JSON", `{"version":4,"config":`, 3, "invalid JSON"}, // no version to name: the last one handled
		{"config not object", `{"version":5,"config":[1]}`, 5, "must be a JSON object"},
		{"duplicate key", `{"version":6,"config":{"mtu":1500,"mtu":1400}}`, 6, "duplicate key at /mtu"},
		{"unknown field", `{"version":7,"config":{"mtu":1500},"extra":1}`, 7, "unknown field"},
		{"version zero", `{"version":0,"config":{"mtu":1500}}`, 7, "version 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := report(t, a.Apply(context.Background(), []byte(tt.doc)))
			if r.Status != cradle.ReportRejected || !strings.Contains(r.Error, tt.msg) || r.Version != tt.version {
				t.Errorf("report = %+v, want rejected version %d with %q", r, tt.version, tt.msg)
			}
			if string(r.Config) != `{"mtu":1500}` {
				t.Errorf("reported config = %s, want the running one", r.Config)
			}
			if v, cfg := a.Running(); v != 1 || string(cfg) != `{"mtu":1500}` {
				t.Errorf("running = %d %s, want version 1 untouched", v, cfg)
			}
		})
	}
	if got := read(t, out); got != "{\"mtu\":1500}\n" {
		t.Errorf("file after rejections = %q", got)
	}
	if got := read(t, ran); got != "1\n" {
		t.Errorf("hook runs = %q; rejected documents must run no handler", got)
	}
}

func TestApplyVersions(t *testing.T) {
	k := newKit(t)
	ran := filepath.Join(k.dir, "ran")
	a := k.applier(&twin.Hook{Path: k.script("hook", "echo $CRADLE_CONFIG_VERSION >> "+ran+"\n")})
	first := a.Apply(context.Background(), []byte(`{"version":5,"config":{"mtu":1500}}`))
	again := a.Apply(context.Background(), []byte(`{"version":5,"config":{"mtu":1500}}`))
	if string(first) != string(again) {
		t.Errorf("the same version twice: %s then %s", first, again)
	}
	stale := a.Apply(context.Background(), []byte(`{"version":4,"config":{"mtu":1400}}`))
	if string(stale) != string(first) {
		t.Errorf("a lower version changed the report: %s", stale)
	}
	if got := read(t, ran); got != "5\n" {
		t.Errorf("hook runs = %q, want once for version 5", got)
	}
	if v, cfg := a.Running(); v != 5 || string(cfg) != `{"mtu":1500}` {
		t.Errorf("running = %d %s", v, cfg)
	}
}

func TestApplyHook(t *testing.T) {
	k := newKit(t)
	got := filepath.Join(k.dir, "stdin")
	ok := k.script("ok", "cat > "+got+"\necho v$CRADLE_CONFIG_VERSION >> "+got+"\n")
	a := k.applier(&twin.Hook{Path: ok})
	r := report(t, a.Apply(context.Background(), []byte(`{"version":2,"config":{"mtu":1500}}`)))
	if r.Status != cradle.ReportApplied {
		t.Fatalf("report = %+v", r)
	}
	if s := read(t, got); s != `{"mtu":1500}v2`+"\n" {
		t.Errorf("hook saw %q", s)
	}
}

func TestApplyHookFailureRollsBack(t *testing.T) {
	k := newKit(t)
	out := filepath.Join(k.dir, "out.json")
	log := filepath.Join(k.dir, "log")
	// The hook fails for MTU 9000 only, after logging each call.
	hook := k.script("hook", "cfg=$(cat)\necho \"$CRADLE_CONFIG_VERSION $cfg\" >> "+log+"\ncase \"$cfg\" in *9000*) echo 'line one' >&2; echo 'mtu 9000 is not supported by eth0' >&2; exit 3;; esac\n")
	a := k.applier(&twin.File{Path: out}, &twin.Hook{Path: hook})
	report(t, a.Apply(context.Background(), []byte(`{"version":1,"config":{"mtu":1500}}`)))
	r := report(t, a.Apply(context.Background(), []byte(`{"version":2,"config":{"mtu":9000}}`)))
	if r.Status != cradle.ReportFailed || r.Version != 2 || string(r.Config) != `{"mtu":1500}` {
		t.Fatalf("report = %+v", r)
	}
	for _, want := range []string{"hook " + hook, "exited with status 3: line one / mtu 9000 is not supported by eth0", "rolled back to version 1"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not say %q", r.Error, want)
		}
	}
	if got := read(t, out); got != "{\"mtu\":1500}\n" {
		t.Errorf("file after rollback = %q, want the previous config", got)
	}
	if got := read(t, log); got != "1 {\"mtu\":1500}\n2 {\"mtu\":9000}\n1 {\"mtu\":1500}\n" {
		t.Errorf("hook calls = %q, want apply 1, fail 2, roll back to 1", got)
	}
	if v, cfg := a.Running(); v != 1 || string(cfg) != `{"mtu":1500}` {
		t.Errorf("running = %d %s", v, cfg)
	}
	// The first version failing has nothing to roll back to.
	k2 := newKit(t)
	b := k2.applier(&twin.Hook{Path: k2.script("fail", "exit 1\n")})
	r = report(t, b.Apply(context.Background(), []byte(`{"version":1,"config":{"mtu":1500}}`)))
	if r.Status != cradle.ReportFailed || !strings.Contains(r.Error, "nothing to roll back to") || string(r.Config) != `{}` {
		t.Errorf("report = %+v", r)
	}
}

func TestApplyHookTimeout(t *testing.T) {
	k := newKit(t)
	a := k.applier(&twin.Hook{Path: k.script("slow", "echo starting >&2\nsleep 10\n"), Timeout: 200 * time.Millisecond})
	start := time.Now()
	r := report(t, a.Apply(context.Background(), []byte(`{"version":1,"config":{"mtu":1500}}`)))
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a hook past its timeout held Apply for %v", took)
	}
	if r.Status != cradle.ReportFailed || !strings.Contains(r.Error, "timed out after 200ms") {
		t.Errorf("report = %+v", r)
	}
}

func TestApplyFileMissingKey(t *testing.T) {
	k := newKit(t)
	a := k.applier(&twin.File{Path: filepath.Join(k.dir, "x.json"), Key: "app"})
	r := report(t, a.Apply(context.Background(), []byte(`{"version":1,"config":{"mtu":1500}}`)))
	if r.Status != cradle.ReportFailed || !strings.Contains(r.Error, `no key "app"`) {
		t.Errorf("report = %+v", r)
	}
}

func TestNewRefusesBadInput(t *testing.T) {
	k := newKit(t)
	os.WriteFile(k.schema, []byte(`{"type":12}`), 0o644)
	if _, err := twin.New(twin.Options{StateDir: k.dir, SchemaFile: k.schema}); err == nil || !strings.Contains(err.Error(), "config schema") {
		t.Errorf("bad schema: %v", err)
	}
	os.WriteFile(filepath.Join(k.dir, twin.StateFile), []byte(`{"version":1,"config":[`), 0o600)
	if _, err := twin.New(twin.Options{StateDir: k.dir}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt state: %v", err)
	}
}

func TestReportedBeforeAnyDocument(t *testing.T) {
	a := newKit(t).applier()
	var r map[string]any
	if err := json.Unmarshal(a.Reported(), &r); err != nil {
		t.Fatal(err)
	}
	if r["version"] != float64(0) || r["status"] != "applied" {
		t.Errorf("reported = %v", r)
	}
}

// FuzzApply feeds arbitrary desired documents to an Applier: it must
// never panic, always answer a report that parses, and never change the
// running config unless it reports applied.
func FuzzApply(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"config":{"mtu":1500}}`, `{"version":2,"config":{"mtu":1}}`, `{"version":3,"config":[]}`,
		`{"version":-1}`, `{}`, `null`, `{"version":9,"config":{"a":{"b":[1,2,{"c":null}]}}}`, `{"version":1e3,"config":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		k := newKit(t)
		a := k.applier()
		_, before := a.Running()
		r := report(t, a.Apply(context.Background(), doc))
		if _, after := a.Running(); r.Status != cradle.ReportApplied && string(after) != string(before) {
			t.Fatalf("running config changed on %s", r.Status)
		}
	})
}
