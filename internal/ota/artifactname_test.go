package ota_test

import (
	"bytes"
	"testing"

	"cradle/internal/compat/swu"
	"cradle/internal/ota"
)

// TestUploadArtifactName: the release of a Mender artifact carries the
// artifact's artifact_name, the one of a .swu its software version, and
// an MCUboot image none.
func TestUploadArtifactName(t *testing.T) {
	e := newEnv(t)
	payload := bytes.Repeat([]byte("application "), 4000)
	for _, tt := range []struct {
		name, version string
		body          []byte
		want          string
	}{
		{"mender", "3.0.0", menderFile(t, []string{"gw-a"}, "gzip", payload, nil), "app-1"},
		{"swu", "3.0.1", swuFile(t, swuSigner(t), nil, payload), "1.0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := upload("gw-a", tt.version, tt.body)
			r, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if r.ArtifactName != tt.want {
				t.Fatalf("created release's artifact name %q, want %q", r.ArtifactName, tt.want)
			}
			got, err := e.releases.FindRelease(e.admin, r.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.ArtifactName != tt.want {
				t.Fatalf("stored release's artifact name %q, want %q", got.ArtifactName, tt.want)
			}
		})
	}
}

// TestSWUpdateArtifactName: a sw-description with a software name gives
// "name version"; without one, the version.
func TestSWUpdateArtifactName(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{`software = { name = "gw-os"; version = "2.1.0"; };`, "gw-os 2.1.0"},
		{`software = { version = "2.1.0"; };`, "2.1.0"},
		{`software = { name = "  "; version = "2.1.0"; };`, "2.1.0"},
	} {
		d, err := swu.ParseDescription([]byte(tt.doc))
		if err != nil {
			t.Fatalf("%s: %v", tt.doc, err)
		}
		if got := ota.SWUpdateArtifactName(&swu.Image{Description: *d}); got != tt.want {
			t.Errorf("%s: artifact name %q, want %q", tt.doc, got, tt.want)
		}
	}
}
