package tuf_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"cradle"
	"cradle/internal/tuf"
)

const validCustom = `{"model":"gw-100","hardware_revisions":["a","b"],"version":"1.4.2","security_counter":7,
"delta_bases":[{"from_sha256":"` + hex64 + `","patch":"gw-100/1.4.2-from-1.4.1.zst","length":1234,"hashes":{"sha256":"` + hex64 + `"}}]}`

const hex64 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// TestParseCustom: the required fields, their checks, and refusals of
// unknown fields and trailing data.
func TestParseCustom(t *testing.T) {
	c, err := tuf.ParseCustom([]byte(validCustom))
	if err != nil {
		t.Fatal(err)
	}
	want := tuf.Custom{Model: "gw-100", HardwareRevisions: []string{"a", "b"}, Version: "1.4.2", SecurityCounter: 7,
		DeltaBases: []tuf.DeltaBase{{From: hex64, Patch: "gw-100/1.4.2-from-1.4.1.zst", Length: 1234, Hashes: map[string]string{"sha256": hex64}}}}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	tests := []struct{ name, in, msg string }{
		{"no model", `{"hardware_revisions":["a"],"version":"1","security_counter":1}`, `no "model"`},
		{"no revisions", `{"model":"m","version":"1","security_counter":1}`, `no "hardware_revisions"`},
		{"null version", `{"model":"m","hardware_revisions":["a"],"version":null,"security_counter":1}`, `no "version"`},
		{"no counter", `{"model":"m","hardware_revisions":["a"],"version":"1"}`, `no "security_counter"`},
		{"empty model", `{"model":" ","hardware_revisions":["a"],"version":"1","security_counter":1}`, "no model"},
		{"empty revisions", `{"model":"m","hardware_revisions":[],"version":"1","security_counter":1}`, "no hardware revision"},
		{"negative counter", `{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":-1}`, "security_counter"},
		{"unknown field", `{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":1,"modle":"x"}`, "unknown field"},
		{"trailing data", `{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":1} {}`, "after top-level value"},
		{"not an object", `[1]`, "not a JSON object"},
		{"bad patch path", `{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":1,"delta_bases":[{"from_sha256":"` + hex64 + `","patch":"../x","length":1,"hashes":{"sha256":"` + hex64 + `"}}]}`, "must be relative"},
		{"upper-case digest", `{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":1,"delta_bases":[{"from_sha256":"` + strings.ToUpper(hex64) + `","patch":"x","length":1,"hashes":{"sha256":"` + hex64 + `"}}]}`, "not a hex SHA-256"},
		{"no patch hash", `{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":1,"delta_bases":[{"from_sha256":"` + hex64 + `","patch":"x","length":1,"hashes":{}}]}`, "no hex sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tuf.ParseCustom([]byte(tt.in))
			wantCode(t, err, cradle.EINVALID)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not say %q", err, tt.msg)
			}
		})
	}
}

// FuzzParseCustom: ParseCustom never panics, and what it accepts is valid
// and survives a round trip through JSON unchanged.
func FuzzParseCustom(f *testing.F) {
	f.Add([]byte(validCustom))
	f.Add([]byte(`{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":4294967295}`))
	f.Add([]byte(`{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":4294967296}`))
	f.Add([]byte(`{"model":"m","hardware_revisions":["a"],"version":"1","security_counter":1,"delta_bases":null}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := tuf.ParseCustom(data)
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("error without EINVALID: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted but invalid: %v", err)
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		again, err := tuf.ParseCustom(b)
		if err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
		if diff := cmp.Diff(c, again, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
