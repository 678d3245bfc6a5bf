package main

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"cradle"
	"cradle/internal/ota"
	"cradle/internal/tuf"
)

// TestReleaseRepoRoundTrip: init with 2-of-3 root keys, status, a targets
// key rotation and a root rotation to new keys; a go-tuf client that
// trusted root v1 follows both and downloads a target signed with the new
// targets key that keys.json names.
func TestReleaseRepoRoundTrip(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, "")
	dataDir := t.TempDir()
	rootDir := filepath.Join(t.TempDir(), "offline")
	out := ok(t, "release", "repo", "init", "--data-dir", dataDir, "--root-keys", "3", "--threshold", "2",
		"--root-key-dir", rootDir, "--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	if !strings.Contains(out, "Move the root keys offline") {
		t.Errorf("init output gives no advice on the root keys:\n%s", out)
	}
	repoDir := ota.RepositoryDir(dataDir, "default")
	rootV1, err := os.ReadFile(filepath.Join(repoDir, "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, ota.KeysPath(dataDir, "default")); m != 0o600 {
		t.Errorf("keys.json mode %o, want 600", m)
	}
	fails(t, "has a TUF repository already", "release", "repo", "init", "--data-dir", dataDir, "--insecure-plaintext-keys")

	st := decodeJSON[cradle.RepositoryStatus](t, ok(t, "release", "repo", "status", "--data-dir", dataDir, "--json"))
	if r := st.Roles["root"]; r.Version != 1 || r.Threshold != 2 || len(r.KeyIDs) != 3 {
		t.Fatalf("root status %+v, want version 1, 2 of 3 keys", r)
	}
	oldTargetsID := st.Roles["targets"].KeyIDs[0]
	text := ok(t, "release", "repo", "status", "--data-dir", dataDir)
	if !strings.Contains(text, "timestamp") || !strings.Contains(text, "0 targets") {
		t.Errorf("status text:\n%s", text)
	}

	root := func(i string) string { return filepath.Join(rootDir, "root-"+i+".key") }
	// One root key is below the threshold: refused, nothing changed.
	fails(t, "signature", "release", "repo", "rotate-key", "--data-dir", dataDir, "--role", "targets", "--root-key", root("1"), "--insecure-plaintext-keys")
	keys, err := ota.ReadOnlineKeys(dataDir, "default")
	if err != nil || keys["targets"] != "keys/targets.key" {
		t.Fatalf("keys.json after a refused rotation: %v %v", keys, err)
	}
	if _, err := os.Stat(filepath.Join(ota.TenantDir(dataDir, "default"), "keys", "targets-2.key")); !os.IsNotExist(err) {
		t.Fatalf("a refused rotation left its new key: %v", err)
	}

	ok(t, "release", "repo", "rotate-key", "--data-dir", dataDir, "--role", "targets", "--root-key", root("1"), "--root-key", root("3"), "--insecure-plaintext-keys")
	keys, err = ota.ReadOnlineKeys(dataDir, "default")
	if err != nil || keys["targets"] != "keys/targets-2.key" {
		t.Fatalf("keys.json after rotation: %v %v", keys, err)
	}
	newRootDir := filepath.Join(t.TempDir(), "offline-2")
	out = ok(t, "release", "repo", "rotate-root", "--data-dir", dataDir, "--root-key", root("2"), "--root-key", root("3"),
		"--new-root-keys", "1", "--new-root-key-dir", newRootDir, "--insecure-plaintext-keys")
	if !strings.Contains(out, "root version 3") {
		t.Errorf("rotate-root output:\n%s", out)
	}
	// Renewal with the same (new) key.
	ok(t, "release", "repo", "rotate-root", "--data-dir", dataDir, "--root-key", filepath.Join(newRootDir, "root-v3-1.key"))
	ok(t, "release", "repo", "refresh", "--data-dir", dataDir)

	st = decodeJSON[cradle.RepositoryStatus](t, ok(t, "release", "repo", "status", "--data-dir", dataDir, "--json"))
	if r := st.Roles["root"]; r.Version != 4 || r.Threshold != 1 || len(r.KeyIDs) != 1 {
		t.Fatalf("root status %+v, want version 4, 1 of 1", r)
	}
	if st.Roles["targets"].KeyIDs[0] == oldTargetsID {
		t.Fatal("the targets key was not replaced")
	}

	// Sign a target the way the server does (keys from keys.json).
	content := []byte("firmware 2")
	sum := sha256.Sum256(content)
	repos := &ota.Repos{DataDir: dataDir}
	defer repos.Close()
	err = repos.Do(context.Background(), "default", func(r *tuf.Repository, s tuf.Signers) error {
		c := tuf.Custom{Model: "gw", HardwareRevisions: []string{"*"}, Version: "2", SecurityCounter: 2}
		if err := r.AddTarget("gw/2/fw.bin", tuf.Target{Length: int64(len(content)), SHA256: sum[:], Custom: c}); err != nil {
			return err
		}
		return r.Publish(context.Background(), s)
	})
	if err != nil {
		t.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.Handle("/metadata/", http.StripPrefix("/metadata/", http.FileServer(http.Dir(repoDir))))
	mux.HandleFunc("/targets/"+tuf.TargetURLPath("gw/2/fw.bin", sum[:]), func(w http.ResponseWriter, r *http.Request) { w.Write(content) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cfg, err := config.New(srv.URL+"/metadata", rootV1)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = srv.URL + "/targets"
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = t.TempDir(), t.TempDir()
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Refresh(); err != nil {
		t.Fatalf("a client trusting root v1 does not follow the rotations: %v", err)
	}
	info, err := up.GetTargetInfo("gw/2/fw.bin")
	if err != nil {
		t.Fatal(err)
	}
	_, data, err := up.DownloadTarget(info, filepath.Join(t.TempDir(), "fw.bin"), "")
	if err != nil || string(data) != string(content) {
		t.Fatalf("download: %q %v", data, err)
	}
	if v := up.GetTrustedMetadataSet().Root.Signed.Version; v != 4 {
		t.Fatalf("client trusts root v%d, want 4", v)
	}
}

func TestReleaseRepoRefusals(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, "")
	dataDir := t.TempDir()
	fails(t, "--data-dir is required", "release", "repo", "init")
	fails(t, "--threshold 3", "release", "repo", "init", "--data-dir", dataDir, "--root-keys", "2", "--threshold", "3")
	fails(t, "invalid tenant name", "release", "repo", "init", "--data-dir", dataDir, "--tenant", "../x")
	fails(t, "need a passphrase", "release", "repo", "init", "--data-dir", dataDir)
	fails(t, "has no TUF repository", "release", "repo", "status", "--data-dir", dataDir)
	fails(t, "--role", "release", "repo", "rotate-key", "--data-dir", dataDir, "--role", "root", "--root-key", "x")
	if _, err := os.Stat(filepath.Join(dataDir, "tuf", "default", "keys.json")); !os.IsNotExist(err) {
		t.Fatalf("a refused init left keys.json: %v", err)
	}
}
