package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"testing"

	"cradle"
)

// TestImageKeyRotationUpload: the image key of a model is rotated through
// the real server: the new key is added, the old one removed (cradle
// release key remove). An MCUboot image signed by the retired key is
// refused at upload, naming the key; the same firmware signed by the new
// key is taken and signed into the TUF repository. (The device's own
// refusal of the retired key is internal/agent/update's
// TestRetiredImageKeyRefused.)
func TestImageKeyRotationUpload(t *testing.T) {
	isolateCLI(t)
	setPassphrase(t, "")
	dataDir := t.TempDir()
	ok(t, "release", "repo", "init", "--data-dir", dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	m, out := startServer(t, dataDir)
	api := []string{"--server", m.Addr(), "--token", tokenRE.FindStringSubmatch(out)[1]}
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
