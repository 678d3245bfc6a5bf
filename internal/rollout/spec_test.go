package rollout_test

import (
	"strings"
	"testing"

	"cradle"
	"cradle/internal/rollout"
)

func TestParseSpecRefusals(t *testing.T) {
	const head = `{"release_id":"r","target":{"selector":"env=prod"},"phases":[{"percent":100}],`
	for _, tc := range []struct {
		name, json, substr string
	}{
		{"invalid cron", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"61 * * * *","duration":"1h"}]}`, "windows[0]: invalid window cron"},
		{"six fields", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"0 0 2 * * *","duration":"1h"}]}`, "invalid window cron"},
		{"cron names a zone", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"CRON_TZ=Asia/Tokyo 0 1 * * *","duration":"1h"}]}`, "put it in time_zone"},
		{"interval", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"@every 1h","duration":"1h"}]}`, "repeats by interval"},
		{"never matches", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"0 0 30 2 *","duration":"1h"}]}`, "never matches"},
		{"unknown zone", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"0 1 * * *","duration":"1h","time_zone":"Europe/Atlantis"}]}`, `unknown time zone "Europe/Atlantis"`},
		{"bad duration", head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"0 1 * * *","duration":"soon"}]}`, `invalid duration "soon"`},
		{"failure percent out of range", head + `"failure_threshold":{"percent":120,"action":"pause"}}`, "failure_threshold.percent 120"},
		{"success out of range", head + `"success_threshold":-1,"failure_threshold":{"count":1,"action":"pause"}}`, "success_threshold -1"},
		{"unknown field", head + `"failure_threshold":{"count":1,"action":"pause"},"rate":5}`, `unknown field "rate"`},
		{"trailing data", head + `"failure_threshold":{"count":1,"action":"pause"}} {}`, "data after the JSON object"},
		{"empty target", `{"release_id":"r","target":{},"phases":[{"percent":100}],"failure_threshold":{"count":1,"action":"pause"}}`, "target is empty"},
		{"not JSON", `release: r`, "invalid rollout spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rollout.ParseSpec([]byte(tc.json))
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tc.substr) {
				t.Fatalf("got %v, want EINVALID containing %q", err, tc.substr)
			}
		})
	}
	ok := head + `"failure_threshold":{"count":1,"action":"pause"},"windows":[{"cron":"0 1 * * 1-5","duration":"4h","device_local":true}]}`
	if _, err := rollout.ParseSpec([]byte(ok)); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
}
