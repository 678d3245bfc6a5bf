package cradle_test

import (
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
		{"args compacted", cradle.CommandRequest{Kind: "set-config", Args: []byte(` { "a" : 1 } `), TTLSeconds: 60}, "", 60, `{"a":1}`},
		{"null args", cradle.CommandRequest{Kind: "reboot", Args: []byte("null")}, "", 3600, ""},
		{"max ttl", cradle.CommandRequest{Kind: "ping", TTLSeconds: 30 * 24 * 3600}, "", 30 * 24 * 3600, ""},
		{"unknown kind", cradle.CommandRequest{Kind: "format"}, `unknown command kind "format"`, 0, ""},
		{"wipe", cradle.CommandRequest{Kind: "wipe"}, "not supported yet", 0, ""},
		{"args not object", cradle.CommandRequest{Kind: "ping", Args: []byte(`[1]`)}, "must be a JSON object", 0, ""},
		{"args broken", cradle.CommandRequest{Kind: "ping", Args: []byte(`{"a":`)}, "must be a JSON object", 0, ""},
		{"ttl too short", cradle.CommandRequest{Kind: "ping", TTLSeconds: 59}, "invalid command ttl of 59 seconds", 0, ""},
		{"ttl too long", cradle.CommandRequest{Kind: "ping", TTLSeconds: 30*24*3600 + 1}, "invalid command ttl", 0, ""},
		{"ttl negative", cradle.CommandRequest{Kind: "ping", TTLSeconds: -5}, "invalid command ttl", 0, ""},
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
