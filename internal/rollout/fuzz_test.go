package rollout_test

import (
	"encoding/json"
	"testing"
	"time"

	"cradle"
	"cradle/internal/rollout"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzParseSpec checks that any input is either refused with EINVALID or
// gives a spec that survives a JSON round trip and starts an engine.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		`{"release_id":"r","target":{"selector":"env=prod"},"phases":[{"count":5,"soak":"1h"},{"percent":50,"approval":true},{"percent":100}],"rate_limit":60,"max_concurrent":10,"success_threshold":95,"failure_threshold":{"percent":2,"action":"pause"},"windows":[{"cron":"0 2 * * 1-5","duration":"3h","time_zone":"Europe/Berlin"},{"cron":"@daily","duration":3600,"device_local":true}],"device_timeout":"30m","retries":2}`,
		`{"release_id":"r","target":{"serials":["a","b"]},"phases":[{"percent":100}],"failure_threshold":{"count":1,"action":"abort"}}`,
		`{"release_id":"r","target":{"selector":"x"},"dynamic":true,"phases":[{"percent":100}],"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"61 * * * *","duration":"1h"}]}`,
		`{"release_id":"r","target":{},"phases":[]}`,
		`{"release_id":"r","unknown":1}`,
		`{} {}`,
		`[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := rollout.ParseSpec(data)
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("refusal with code %s: %v", cradle.ErrorCode(err), err)
			}
			return
		}
		b, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		again, err := rollout.ParseSpec(b)
		if err != nil {
			t.Fatalf("a parsed spec does not parse again: %v\n%s", err, b)
		}
		if diff := cmp.Diff(spec, again, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
		if _, err := rollout.New("fuzz", *spec, rollout.Options{}); err != nil {
			t.Fatalf("a parsed spec does not make an engine: %v", err)
		}
	})
}

// FuzzParseWindow checks that window expressions are refused with EINVALID
// or compile into a window that answers OpenAt without panicking, open at
// every instant inside its opening.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []struct {
		cron, zone string
		minutes    int64
	}{
		{"0 2 * * *", "Europe/Berlin", 180},
		{"*/15 * * * 1-5", "", 5},
		{"@weekly", "America/New_York", 60},
		{"0 0 30 2 *", "UTC", 60},
		{"CRON_TZ=Asia/Tokyo 0 1 * * *", "", 60},
		{"@every 5m", "", 1},
		{"0 0 1,15 * SUN", "Australia/Lord_Howe", 30},
		{"a b c d e", "Nowhere", -4},
	} {
		f.Add(s.cron, s.zone, s.minutes, int64(1_780_000_000))
	}
	f.Fuzz(func(t *testing.T, expr, zone string, minutes, unix int64) {
		w, err := rollout.ParseWindow(cradle.MaintenanceWindow{Cron: expr, Duration: cradle.Duration(time.Duration(minutes) * time.Minute), TimeZone: zone})
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("refusal with code %s: %v", cradle.ErrorCode(err), err)
			}
			return
		}
		at := time.Unix(unix%(1<<34), 0)
		open := w.OpenAt(at, nil)
		// A window open at t is open a second earlier unless it opened at t.
		if open && minutes > 1 && !w.OpenAt(at.Add(-time.Second), nil) && !w.OpenAt(at.Add(time.Second), nil) {
			t.Fatalf("window %q open at %v but at neither neighbouring second", expr, at)
		}
		_ = w.OpenAt(at, time.FixedZone("x", 5*3600+1800))
	})
}
