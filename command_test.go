package cradle_test

import (
	"encoding/json"
	"strings"
	"testing"

	"cradle"
)

func TestCommandRequestNormalize(t *testing.T) {
	tests := []struct {
		name     string
		req      cradle.CommandRequest
		wantErr  string // part of the message; "" for success
		wantTTL  int64
		wantArgs string
	}{
		{"ping default ttl", cradle.CommandRequest{Kind: "ping"}, "", 3600, ""},
		{"args compacted", cradle.CommandRequest{Kind: "reboot", Args: []byte(` { "a" : 1 } `), TTLSeconds: 60}, "", 60, `{"a":1}`},
		{"set-config desired", cradle.CommandRequest{Kind: "set-config", Args: []byte(`{"version": 3, "config": {"a": 1}}`)}, "", 3600, `{"version":3,"config":{"a":1}}`},
		{"set-config not a desired document", cradle.CommandRequest{Kind: "set-config", Args: []byte(`{"a":1}`)}, "set-config args must be a desired document", 0, ""},
		{"null args", cradle.CommandRequest{Kind: "reboot", Args: []byte("null")}, "", 3600, ""},
		{"max ttl", cradle.CommandRequest{Kind: "ping", TTLSeconds: 30 * 24 * 3600}, "", 30 * 24 * 3600, ""},
		{"unknown kind", cradle.CommandRequest{Kind: "format"}, `unknown command kind "format"`, 0, ""},
		{"wipe", cradle.CommandRequest{Kind: "wipe"}, "issued only by decommissioning", 0, ""},
		{"args not object", cradle.CommandRequest{Kind: "ping", Args: []byte(`[1]`)}, "must be a JSON object", 0, ""},
		{"args broken", cradle.CommandRequest{Kind: "ping", Args: []byte(`{"a":`)}, "must be a JSON object", 0, ""},
		{"ttl too short", cradle.CommandRequest{Kind: "ping", TTLSeconds: 59}, "invalid command ttl of 59 seconds", 0, ""},
		{"ttl too long", cradle.CommandRequest{Kind: "ping", TTLSeconds: 30*24*3600 + 1}, "invalid command ttl", 0, ""},
		{"ttl negative", cradle.CommandRequest{Kind: "ping", TTLSeconds: -5}, "invalid command ttl", 0, ""},
		{"ttl overflowing a duration", cradle.CommandRequest{Kind: "ping", TTLSeconds: 18446744134}, "invalid command ttl", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.req
			err := r.Normalize()
			if tt.wantErr != "" {
				if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tt.wantErr) {
					t.Fatalf("Normalize() = %v, want EINVALID mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Normalize() = %v", err)
			}
			if r.TTLSeconds != tt.wantTTL || string(r.Args) != tt.wantArgs {
				t.Fatalf("got ttl %d args %q, want %d %q", r.TTLSeconds, r.Args, tt.wantTTL, tt.wantArgs)
			}
		})
	}
}

// FuzzCommandRequestNormalize: whatever an operator sends, Normalize
// either refuses it with EINVALID or leaves a request in bounds whose args
// are a compact JSON object.
func FuzzCommandRequestNormalize(f *testing.F) {
	f.Add("ping", []byte(nil), int64(0))
	f.Add("set-config", []byte(`{"a":{"b":[1,2]}}`), int64(600))
	f.Add("reboot", []byte(`[]`), int64(-1))
	f.Add("wipe", []byte(`{}`), int64(2592001))
	f.Add("upload-logs", []byte(` null `), int64(60))
	f.Add("ping", []byte(nil), int64(18446744134))
	f.Fuzz(func(t *testing.T, kind string, args []byte, ttl int64) {
		r := cradle.CommandRequest{Kind: cradle.CommandKind(kind), Args: args, TTLSeconds: ttl}
		if err := r.Normalize(); err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("error %v is not EINVALID", err)
			}
			return
		}
		if r.TTLSeconds < 60 || r.TTLSeconds > 30*24*3600 {
			t.Fatalf("ttl %d out of bounds", r.TTLSeconds)
		}
		if len(r.Args) > 0 {
			var obj map[string]any
			if r.Args[0] != '{' || json.Unmarshal(r.Args, &obj) != nil {
				t.Fatalf("args %q are not a JSON object", r.Args)
			}
		}
	})
}
