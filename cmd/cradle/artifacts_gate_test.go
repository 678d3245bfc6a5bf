package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/sqlstore"
)

// TestArtifactURLOutlivesNothing: a signed download URL is checked
// against its device's state on each download (answers kept at most a
// second): once the device is revoked (which suspends it) the URL of an
// ordinary release is refused, and once it is decommissioned every URL is.
func TestArtifactURLOutlivesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the server with a PKI")
	}
	s := startPKIServer(t, nil)
	m, ctx := s.m, t.Context()
	dev := enrollDevice(t, s, "SN-U1")
	base := m.device.Addr()
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})

	store := openArtifactStore(Config{DataDir: s.dataDir})
	releases := sqlstore.NewReleaseService(m.db)
	image := make([]byte, 4096)
	rand.Read(image)
	sum := sha256.Sum256(image)
	if _, err := store.Put(ctx, bytes.NewReader(image), artifact.Expect{Digest: sum, Size: int64(len(image))}); err != nil {
		t.Fatal(err)
	}
	rel, err := releases.CreateRelease(admin, cradle.ReleaseCreate{Model: "gw-100", Version: "2.0.0", Kind: cradle.ReleaseFile,
		SHA256: hex.EncodeToString(sum[:]), Size: int64(len(image)), FileName: "app.bin", SecurityCounter: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rel, err = releases.MarkReleaseSigned(admin, rel.ID, "gw-100/2.0.0/app.bin", nil); err != nil {
		t.Fatal(err)
	}
	publishTUF(t, s.dataDir, cradle.DefaultTenantName, map[string][]byte{"gw-100/2.0.0/app.bin": image})
	if _, err := sqlstore.NewRolloutService(m.db).CreateRollout(admin, cradle.RolloutSpec{ReleaseID: rel.ID,
		Target: cradle.RolloutTarget{Serials: []string{"SN-U1"}}, Phases: []cradle.RolloutPhase{{Percent: 100}},
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}}); err != nil {
		t.Fatal(err)
	}
	resp, body := fetch(t, dev.client, "GET", base+"/device/v1/update", nil)
	wantStatus(t, "offer", resp, body, http.StatusOK)
	var doc updateDocument
	if err := json.Unmarshal(body, &doc); err != nil || doc.Artifact.URL == "" {
		t.Fatalf("offer %s: %v", body, err)
	}
	download := func(what string, want int, says string) {
		t.Helper()
		resp, body := fetch(t, dev.anonymous, "GET", doc.Artifact.URL, nil)
		wantStatus(t, what, resp, body, want)
		if want == http.StatusOK && !bytes.Equal(body, image) {
			t.Fatalf("%s: the body is not the image", what)
		}
		if !strings.Contains(string(body), says) {
			t.Fatalf("%s: %q does not say %q", what, body, says)
		}
	}
	download("deployed", http.StatusOK, "")

	if _, err := sqlstore.NewRevocationService(m.db).RevokeDevice(admin, "SN-U1", cradle.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	time.Sleep(downloadAccessTTL + 100*time.Millisecond) // the gate's answer about SN-U1 expires
	download("revoked (suspended), an ordinary release", http.StatusForbidden, "suspended")

	if _, err := sqlstore.NewDecommissionService(m.db, m.device.commands.sign).RequestDecommission(admin, "SN-U1", "end of life"); err != nil {
		t.Fatal(err)
	}
	// Even a remediation release is refused at eol.
	if _, err := releases.SetReleaseRemediation(admin, rel.ID, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(downloadAccessTTL + 100*time.Millisecond)
	download("decommissioned", http.StatusForbidden, "eol")
}
