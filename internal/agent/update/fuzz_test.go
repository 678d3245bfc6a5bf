package update_test

import (
	"testing"

	"cradle/internal/agent/update"
)

// FuzzParseOffer: the offer parser never panics and what it accepts names
// a rollout attempt, a target and absolute URLs.
func FuzzParseOffer(f *testing.F) {
	f.Add([]byte(`{"rollout_id":"ro_1","attempt":1,"release":{"target_path":"gw/1/app.bin","sha256":"00","size":3},"artifact":{"url":"https://h/artifacts/00"},"tuf":{"metadata_url":"https://h/device/v1/tuf/"}}`))
	f.Add([]byte(`{"rollout_id":"ro_1","attempt":1,"release":{"target_path":"p"},"artifact":{"url":"https://h/a"},"delta":{"url":"ftp://x"},"tuf":{"metadata_url":"https://h/"}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := update.ParseOffer(b)
		if err != nil {
			return
		}
		if o.RolloutID == "" || o.Attempt < 1 || o.Release.TargetPath == "" || o.Artifact.URL == "" || o.TUF.MetadataURL == "" {
			t.Fatalf("accepted an incomplete offer: %+v", o)
		}
	})
}
