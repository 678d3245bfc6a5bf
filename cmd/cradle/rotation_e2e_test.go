package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
	"cradle/internal/agent/tufclient"
	"cradle/internal/agent/update"
	"cradle/internal/kms"
	"cradle/internal/ota"
	"cradle/internal/tuf"
)

// TestImageKeyRotationUpload: the image key of a model is rotated through
// the real server: the new key is added, the old one removed (cradle
// release key remove). An MCUboot image signed by the retired key is
// refused at upload, naming the key; the same firmware signed by the new
// key is taken and signed into the TUF repository. (The device's own
// refusal of the retired key is internal/agent/update's
// TestRetiredImageKeyRefused.)
func TestImageKeyRotationUpload(t *testing.T) {
	_, api := startRepoServer(t)
	cli := func(args ...string) string { t.Helper(); return ok(t, append(args, api...)...) }

	dir := t.TempDir()
	newKey := func(name string) (priv, pub string) {
		t.Helper()
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		spki, _ := x509.MarshalPKIXPublicKey(k.Public())
		return writeFile(t, dir, name+".pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))),
			writeFile(t, dir, name+".pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})))
	}
	image := func(key, version string, counter int) string {
		t.Helper()
		in := writeFile(t, dir, version+".bin", fmt.Sprintf("firmware %s\n", version))
		out := filepath.Join(dir, key[len(dir)+1:]+"-"+version+".img")
		ok(t, "release", "sign-image", "--key", key, "--version", version, "--security-counter", fmt.Sprint(counter), "--pad-header", in, out)
		return out
	}
	upload := func(file, version string) *cradle.Release {
		t.Helper()
		return decodeJSON[*cradle.Release](t, cli("release", "upload", file, "--model", "sensor-x", "--version", version, "--sign", "--json"))
	}
	oldPriv, oldPub := newKey("old")
	newPriv, newPub := newKey("new")
	old := decodeJSON[cradle.ImageKey](t, cli("release", "key", "add", "--model", "sensor-x", oldPub, "--name", "2025", "--json"))
	if rel := upload(image(oldPriv, "1.0.0", 1), "1.0.0"); rel.State != cradle.ReleaseSigned || rel.ImageKey != old.Fingerprint {
		t.Fatalf("release signed by the old key before the rotation: %+v", rel)
	}

	// The rotation: the new key first, so that builds never stop.
	cur := decodeJSON[cradle.ImageKey](t, cli("release", "key", "add", "--model", "sensor-x", newPub, "--name", "2026", "--json"))
	if r := cradleCLI(t, "", append([]string{"release", "key", "remove", old.Fingerprint}, api...)...); r.code != 0 {
		t.Fatalf("key remove: exit %d, stderr %q", r.code, r.stderr)
	}

	fails(t, "image signed by an unknown key (KEYHASH "+old.Fingerprint+"), not by one of the 1 image keys of model sensor-x", append([]string{"release", "upload", image(oldPriv, "1.1.0", 2),
		"--model", "sensor-x", "--version", "1.1.0", "--sign"}, api...)...)
	rel := upload(image(newPriv, "1.1.0", 2), "1.1.0")
	if rel.State != cradle.ReleaseSigned || rel.ImageKey != cur.Fingerprint {
		t.Fatalf("release signed by the new key: %+v", rel)
	}
	rels := decodeJSON[struct{ Releases []cradle.Release }](t, cli("release", "list", "--model", "sensor-x", "--json")).Releases
	if len(rels) != 2 {
		t.Fatalf("releases after the refused upload: %+v, want the two accepted", rels)
	}
}

// TestReleaseRepoTwoRotationsAgentClient: the operator's commands rotate
// the targets key (root v2), the root keys to a new key (v3), the targets
// key again (v4) and the root keys to 2 of 3 new keys (v5); a target is
// then signed as the server signs one. The agent's own TUF client
// (update.TUF over tufclient), trusting only root v1 from the factory,
// follows the chain to v5 and finds the target. Targets metadata forged
// with either retired targets key (its file is still on disk) is then
// refused with the typed arbitrary-software refusal of the targets role.
func TestReleaseRepoTwoRotationsAgentClient(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, "")
	ctx := context.Background()
	dataDir := t.TempDir()
	rootDir := filepath.Join(t.TempDir(), "offline")
	ok(t, "release", "repo", "init", "--data-dir", dataDir, "--root-key-dir", rootDir, "--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	repoDir := ota.RepositoryDir(dataDir, "default")
	tenantDir := ota.TenantDir(dataDir, "default")
	rootV1, err := os.ReadFile(filepath.Join(repoDir, "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	var retired []string
	rotateTargets := func(rootKeys ...string) {
		t.Helper()
		keys, err := ota.ReadOnlineKeys(dataDir, "default")
		if err != nil {
			t.Fatal(err)
		}
		retired = append(retired, filepath.Join(tenantDir, keys["targets"]))
		args := []string{"release", "repo", "rotate-key", "--data-dir", dataDir, "--role", "targets", "--insecure-plaintext-keys"}
		for _, k := range rootKeys {
			args = append(args, "--root-key", k)
		}
		ok(t, args...)
	}
	rotateRoot := func(dir string, n, threshold int, rootKeys ...string) {
		t.Helper()
		args := []string{"release", "repo", "rotate-root", "--data-dir", dataDir, "--new-root-keys", fmt.Sprint(n), "--threshold", fmt.Sprint(threshold),
			"--new-root-key-dir", dir, "--insecure-plaintext-keys"}
		for _, k := range rootKeys {
			args = append(args, "--root-key", k)
		}
		if r := cradleCLI(t, "", args...); r.code != 0 {
			t.Fatalf("rotate-root: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	}
	v1Root := filepath.Join(rootDir, "root-1.key")
	rotateTargets(v1Root)
	dir3 := filepath.Join(t.TempDir(), "offline-3")
	rotateRoot(dir3, 1, 1, v1Root)
	v3Root := filepath.Join(dir3, "root-v3-1.key")
	rotateTargets(v3Root)
	dir5 := filepath.Join(t.TempDir(), "offline-5")
	rotateRoot(dir5, 3, 2, v3Root)
	st := decodeJSON[cradle.RepositoryStatus](t, ok(t, "release", "repo", "status", "--data-dir", dataDir, "--json"))
	if r := st.Roles["root"]; r.Version != 5 || r.Threshold != 2 || len(r.KeyIDs) != 3 {
		t.Fatalf("root after two rotations of each kind: %+v, want version 5, 2 of 3", r)
	}

	content := []byte("firmware 3")
	sum := sha256.Sum256(content)
	repos := &ota.Repos{DataDir: dataDir}
	defer repos.Close()
	if err := repos.Do(ctx, "default", func(r *tuf.Repository, s tuf.Signers) error {
		c := tuf.Custom{Model: "gw", HardwareRevisions: []string{"*"}, Version: "3", SecurityCounter: 3}
		if err := r.AddTarget("gw/3/fw.bin", tuf.Target{Length: int64(len(content)), SHA256: sum[:], Custom: c}); err != nil {
			return err
		}
		return r.Publish(ctx, s)
	}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	overlay := map[string][]byte{}
	files := http.StripPrefix("/device/v1/tuf/", http.FileServer(http.Dir(repoDir)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		b, ok := overlay[strings.TrimPrefix(r.URL.Path, "/device/v1/tuf/")]
		mu.Unlock()
		if ok {
			w.Write(b)
			return
		}
		files.ServeHTTP(w, r)
	}))
	defer srv.Close()
	agentDir := t.TempDir()
	client := &update.TUF{Dir: agentDir, TrustedRoot: rootV1, HTTP: srv.Client()}
	if err := client.Refresh(ctx, srv.URL+"/device/v1/tuf/"); err != nil {
		t.Fatalf("the agent's client trusting root v1: %v", err)
	}
	if tg, err := client.Target("gw/3/fw.bin"); err != nil || tg.SHA256 != sum || tg.Custom.SecurityCounter != 3 {
		t.Fatalf("target after the rotations: %+v, %v", tg, err)
	}
	b, _ := os.ReadFile(filepath.Join(agentDir, "root.json"))
	if md, err := metadata.Root().FromBytes(b); err != nil || md.Signed.Version != 5 {
		t.Fatalf("the agent trusts %v (%v), want root v5", md, err)
	}

	// Forgeries by a thief of a retired targets key and of the online
	// snapshot and timestamp keys.
	online, err := ota.ReadOnlineKeys(dataDir, "default")
	if err != nil {
		t.Fatal(err)
	}
	openKey := func(path string) crypto.Signer {
		t.Helper()
		k, err := kms.Open(ctx, path, kms.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	snapKey, tsKey := openKey(filepath.Join(tenantDir, online["snapshot"])), openKey(filepath.Join(tenantDir, online["timestamp"]))
	sign := func(md interface {
		ClearSignatures()
		ToBytes(bool) ([]byte, error)
	}, signFn func() error) []byte {
		t.Helper()
		if err := signFn(); err != nil {
			t.Fatal(err)
		}
		b, err := md.ToBytes(true)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for i, path := range retired {
		key := openKey(path)
		tb, _ := os.ReadFile(filepath.Join(repoDir, "targets.json"))
		targets, err := metadata.Targets().FromBytes(tb)
		if err != nil {
			t.Fatal(err)
		}
		targets.Signed.Version += int64(10 * (i + 1))
		targets.Signed.Targets["gw/3/fw.bin"].Length++
		targets.ClearSignatures()
		tBytes := sign(targets, func() error { _, err := targets.Sign(tuf.MetadataSigner(key)); return err })
		sb, _ := os.ReadFile(filepath.Join(repoDir, "snapshot.json"))
		snap, err := metadata.Snapshot().FromBytes(sb)
		if err != nil {
			t.Fatal(err)
		}
		snap.Signed.Version += int64(10 * (i + 1))
		tsum := sha256.Sum256(tBytes)
		snap.Signed.Meta["targets.json"] = &metadata.MetaFiles{Version: targets.Signed.Version, Length: int64(len(tBytes)), Hashes: metadata.Hashes{"sha256": tsum[:]}}
		snap.ClearSignatures()
		sBytes := sign(snap, func() error { _, err := snap.Sign(tuf.MetadataSigner(snapKey)); return err })
		tsb, _ := os.ReadFile(filepath.Join(repoDir, "timestamp.json"))
		ts, err := metadata.Timestamp().FromBytes(tsb)
		if err != nil {
			t.Fatal(err)
		}
		ts.Signed.Version += int64(10 * (i + 1))
		ssum := sha256.Sum256(sBytes)
		ts.Signed.Meta["snapshot.json"] = &metadata.MetaFiles{Version: snap.Signed.Version, Length: int64(len(sBytes)), Hashes: metadata.Hashes{"sha256": ssum[:]}}
		ts.ClearSignatures()
		tsBytes := sign(ts, func() error { _, err := ts.Sign(tuf.MetadataSigner(tsKey)); return err })
		mu.Lock()
		overlay[fmt.Sprintf("%d.targets.json", targets.Signed.Version)] = tBytes
		overlay[fmt.Sprintf("%d.snapshot.json", snap.Signed.Version)] = sBytes
		overlay["timestamp.json"] = tsBytes
		mu.Unlock()

		err = client.Refresh(ctx, srv.URL+"/device/v1/tuf/")
		var refusal *tufclient.Error
		if !errors.As(err, &refusal) || refusal.Attack != tufclient.ArbitrarySoftware || refusal.Role != "targets" {
			t.Fatalf("targets signed by retired key %d: %v, want an arbitrary-software refusal of targets", i+1, err)
		}
		if _, err := client.Target("gw/3/fw.bin"); err == nil {
			t.Fatal("a target is answered after a refused refresh")
		}
	}
}
