package webhook

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

func TestParseRetryAfter(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 120 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"0", 0, true},
		{"99999999999999999999999", maxRetryS * time.Second, true},
		{"Tue, 24 Nov 2026 17:05:00 GMT", 5 * time.Minute, true},
		{"Tuesday, 24-Nov-26 17:00:30 GMT", 30 * time.Second, true}, // RFC 850
		{"Tue Nov 24 17:01:00 2026", time.Minute, true},             // asctime
		{"Tue, 24 Nov 2026 16:00:00 GMT", 0, true},                  // past
		{"", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"12s", 0, false},
		{"+5", 0, false},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"120", "0", "Tue, 24 Nov 2026 17:05:00 GMT", "Tuesday, 24-Nov-26 17:00:30 GMT",
		"Tue Nov 24 17:01:00 2026", "99999999999999999999", "-1", "1e3", " 3 ", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseRetryAfter(s, now)
		if !ok {
			if d != 0 {
				t.Fatalf("parseRetryAfter(%q) = %s with ok false", s, d)
			}
			return
		}
		if d < 0 {
			t.Fatalf("parseRetryAfter(%q) = %s: negative", s, d)
		}
		v := strings.TrimSpace(s)
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 && n <= maxRetryS && d != time.Duration(n)*time.Second {
			t.Fatalf("parseRetryAfter(%q) = %s, want %d s", s, d, n)
		}
		if _, err := http.ParseTime(v); err != nil && (v[0] < '0' || v[0] > '9') {
			t.Fatalf("parseRetryAfter(%q) accepted something that is neither seconds nor an HTTP date", s)
		}
	})
}
