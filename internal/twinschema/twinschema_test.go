package twinschema_test

import (
	"strings"
	"testing"

	"cradle"
	"cradle/internal/twinschema"
)

func TestValidateMessages(t *testing.T) {
	s, err := twinschema.Compile([]byte(`{"type":"object","properties":{
		"net":{"type":"object","properties":{"mtu":{"type":"integer","maximum":1500}},"required":["mtu"]},
		"a/b":{"type":"string"},
		"list":{"type":"array","items":{"type":"integer"}}},"additionalProperties":false}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"valid", `{"net":{"mtu":1500}}`, nil},
		{"nested maximum", `{"net":{"mtu":9000}}`, []string{"at /net/mtu: "}},
		{"required", `{"net":{}}`, []string{"at /net: missing property 'mtu'"}},
		{"escaped key", `{"a/b":1}`, []string{"at /a~1b: "}},
		{"array item", `{"list":[1,"x"]}`, []string{"at /list/1: "}},
		{"extra key", `{"zzz":1}`, []string{"at /: ", "zzz"}},
		{"several", `{"net":{"mtu":9000},"list":["x"],"a/b":2}`, []string{"at /net/mtu", "at /list/0", "at /a~1b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := cradle.ParseConfig([]byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Validate(cfg)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("valid document refused: %v", err)
				}
				return
			}
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("error %v, want EINVALID", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(cradle.ErrorMessage(err), w) {
					t.Errorf("message %q does not contain %q", cradle.ErrorMessage(err), w)
				}
			}
		})
	}
}

func TestCompileRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"not JSON":      `{"type":`,
		"not an object": `[1]`,
		"bad keyword":   `{"type":"nope"}`,
		"file ref":      `{"$ref":"file:///etc/passwd"}`,
		"http ref":      `{"$ref":"http://example.com/s.json"}`,
		"too large":     `{"description":"` + strings.Repeat("x", cradle.MaxSchemaBytes) + `"}`,
	} {
		if _, err := twinschema.Compile([]byte(doc)); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
	// References inside the schema work.
	s, err := twinschema.Compile([]byte(`{"$defs":{"port":{"type":"integer","maximum":65535}},"properties":{"p":{"$ref":"#/$defs/port"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := cradle.ParseConfig([]byte(`{"p":70000}`))
	if err := s.Validate(cfg); err == nil || !strings.Contains(err.Error(), "at /p") {
		t.Errorf("internal $ref: %v", err)
	}
}

// FuzzCompile: operators send schemas; compiling never panics, and a
// compiled schema validates a document without panicking.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{`{}`, `{"type":"object"}`, `{"properties":{"a":{"pattern":"(["}}}`, `{"$ref":"#/x"}`, `{"allOf":[{"$ref":"#"}]}`, `true`} {
		f.Add([]byte(s))
	}
	cfg, _ := cradle.ParseConfig([]byte(`{"a":[1,{"b":"c"}],"n":1.5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := twinschema.Compile(data)
		if err != nil {
			if c := cradle.ErrorCode(err); c != cradle.EINVALID && c != cradle.ETOOLARGE {
				t.Fatalf("Compile(%q): error code %s, want EINVALID or ETOOLARGE: %v", data, c, err)
			}
			return
		}
		if err := s.Validate(cfg); err != nil && cradle.ErrorCode(err) != cradle.EINVALID {
			t.Fatalf("Validate with schema %q: error code %s, want EINVALID: %v", data, cradle.ErrorCode(err), err)
		}
	})
}
