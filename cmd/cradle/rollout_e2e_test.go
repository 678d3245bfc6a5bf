package main

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"regexp"
	"strings"
	"testing"
	"time"

	"cradle"
)

// TestReleaseRolloutCLI runs the release and rollout commands against the
// real server over a data directory with a TUF repository: upload and
// sign a release, show the repository, start a rollout from flags and one
// from a spec file, pause and resume, watch one until it is aborted, and
// yank the release, which aborts the other. Bad input is refused with the
// flag or field named.
func TestReleaseRolloutCLI(t *testing.T) {
	_, api := startRepoServer(t)
	cli := func(args ...string) string { t.Helper(); return ok(t, append(args, api...)...) }
	bad := func(want string, args ...string) { t.Helper(); fails(t, want, append(args, api...)...) }
	for _, s := range []string{"SN-A", "SN-B", "SN-C"} {
		cli("device", "create", "--serial", s, "--model", "gw-100", "--hardware-revision", "B", "--state", "provisioned")
		cli("device", "transition", s, "deployed")
	}

	// A release: uploaded with its digest computed here, signed at once.
	dir := t.TempDir()
	fw := writeFile(t, dir, "gw-100-1.0.0.bin", strings.Repeat("firmware 1.0.0\n", 1000))
	rel := decodeJSON[cradle.Release](t, cli("release", "upload", fw, "--model", "gw-100", "--version", "1.0.0", "--kind", "file",
		"--security-counter", "2", "--hardware-revision", "B", "--notes", "first", "--sign", "--json"))
	if rel.State != cradle.ReleaseSigned || rel.Size != 15000 || rel.FileName != "gw-100-1.0.0.bin" || rel.TargetPath != "gw-100/1.0.0/gw-100-1.0.0.bin" {
		t.Fatalf("uploaded release = %+v", rel)
	}
	if text := cli("release", "show", rel.ID); !regexp.MustCompile(`(?m)^state:\s+signed$`).MatchString(text) || !regexp.MustCompile(`(?m)^notes:\s+first$`).MatchString(text) {
		t.Errorf("release show:\n%s", text)
	}
	if rows := tableRows(cli("release", "list", "--model", "gw-100", "--state", "signed")); len(rows) != 2 || rows[1][0] != rel.ID {
		t.Errorf("release list rows = %q", rows)
	}
	if text := cli("release", "tuf"); !strings.Contains(text, "1 target") || !strings.Contains(text, "timestamp") {
		t.Errorf("release tuf:\n%s", text)
	}
	bad("--reason is required", "release", "deprecate", rel.ID)
	bad("version", "release", "upload", fw, "--model", "gw-100", "--version", "1.0.0", "--kind", "file")
	bad("invalid --kind", "release", "upload", fw, "--model", "gw-100", "--version", "1.0.1", "--kind", "zip")

	// Image keys.
	keyFile := writeFile(t, dir, "image.pub", newImageKeyPEM(t))
	k := decodeJSON[cradle.ImageKey](t, cli("release", "key", "add", "--model", "gw-100", keyFile, "--name", "build", "--json"))
	if rows := tableRows(cli("release", "key", "list", "--model", "gw-100")); len(rows) != 2 || rows[1][0] != k.Fingerprint {
		t.Errorf("key list rows = %q", rows)
	}
	if r := cradleCLI(t, "", append([]string{"release", "key", "remove", k.Fingerprint}, api...)...); r.code != 0 || r.stderr != "removed image key "+k.Fingerprint+"\n" {
		t.Errorf("key remove: exit %d, stderr %q", r.code, r.stderr)
	}
	bad("not found", "release", "key", "remove", k.Fingerprint)

	// A rollout from flags.
	ro := decodeJSON[cradle.Rollout](t, cli("rollout", "create", "--release", rel.ID, "--serials", "SN-A,SN-B", "--phases", "1,100%",
		"--soak", "10m", "--approval-from", "1", "--failure-count", "1", "--window", "0 2 * * *|4h|Europe/Berlin", "--retries", "2", "--json"))
	if ro.Status.State != cradle.RolloutRunning || ro.Status.Devices != 2 || !ro.Phases[1].Approval || time.Duration(ro.Phases[0].Soak) != 10*time.Minute ||
		len(ro.Windows) != 1 || ro.Windows[0].TimeZone != "Europe/Berlin" || ro.Retries != 2 {
		t.Fatalf("rollout = %+v", ro)
	}
	if text := cli("rollout", "show", ro.ID); !strings.Contains(text, "Rollout "+ro.ID+" of release "+rel.ID+": running, phase 1 of 2") {
		t.Errorf("rollout show:\n%s", text)
	}
	if rows := tableRows(cli("rollout", "devices", ro.ID, "--phase", "1")); len(rows) != 2 || rows[1][0] != "SN-B" || rows[1][2] != "pending" {
		t.Errorf("rollout devices rows = %q", rows)
	}
	if rows := tableRows(cli("rollout", "list", "--state", "running")); len(rows) != 2 || rows[1][0] != ro.ID {
		t.Errorf("rollout list rows = %q", rows)
	}
	paused := decodeJSON[cradle.Rollout](t, cli("rollout", "pause", ro.ID, "--reason", "coffee", "--json"))
	if paused.Status.State != cradle.RolloutPaused || paused.Status.Reason != "coffee" {
		t.Errorf("paused = %+v", paused.Status)
	}
	cli("rollout", "resume", ro.ID)
	approved := decodeJSON[cradle.Rollout](t, cli("rollout", "approve", ro.ID, "--phase", "1", "--json"))
	if !approved.Status.Phases[1].Approved {
		t.Errorf("approved = %+v", approved.Status.Phases)
	}
	bad("SN-A", "rollout", "create", "--release", rel.ID, "--serials", "SN-A", "--failure-count", "1")
	bad("--spec and --release are exclusive", "rollout", "create", "--spec", "x.json", "--release", rel.ID)
	bad("exactly one of --failure-count and --failure-percent", "rollout", "create", "--release", rel.ID, "--selector", "a=b")
	bad("exactly one of --selector, --serials and --serials-file", "rollout", "create", "--release", rel.ID, "--failure-count", "1")
	bad("--reason is required", "rollout", "abort", ro.ID)
	bad("--phase is required", "rollout", "approve", ro.ID)
	bad("windows[0]", "rollout", "create", "--release", rel.ID, "--serials", "SN-C", "--failure-count", "1", "--window", "99 * * * *|1h")

	// Watching it: not a terminal, so one line per change; it ends when
	// the rollout is aborted.
	watched := make(chan cliResult, 1)
	go func() {
		watched <- cradleCLI(t, "", append([]string{"rollout", "show", ro.ID, "--watch", "--interval", "20ms"}, api...)...)
	}()
	time.Sleep(300 * time.Millisecond)
	cli("rollout", "abort", ro.ID, "--reason", "watched enough")
	var w cliResult
	select {
	case w = <-watched:
	case <-time.After(20 * time.Second):
		t.Fatal("rollout show --watch did not end after the abort")
	}
	lines := strings.Split(strings.TrimSpace(w.stdout), "\n")
	if w.code != 0 || len(lines) != 2 || !strings.Contains(lines[0], ro.ID+" running phase 1/2") ||
		!strings.Contains(lines[1], ro.ID+" aborted") || !strings.HasSuffix(lines[1], "reason: watched enough") {
		t.Errorf("watch: exit %d, stderr %q, lines:\n%s", w.code, w.stderr, w.stdout)
	}

	// A rollout from a spec file; yanking the release aborts it.
	spec := writeFile(t, dir, "rollout.json", `{"release_id":"`+rel.ID+`","target":{"serials":["SN-C"]},"phases":[{"percent":100}],
		"failure_threshold":{"percent":50,"action":"abort"},"device_timeout":"30m"}`)
	ro2 := decodeJSON[cradle.Rollout](t, cli("rollout", "create", "--spec", spec, "--json"))
	if ro2.Status.State != cradle.RolloutRunning || time.Duration(ro2.DeviceTimeout) != 30*time.Minute {
		t.Errorf("spec rollout = %+v", ro2)
	}
	badSpec := writeFile(t, dir, "bad.json", `{"release_id":"x","colour":"red"}`)
	bad("colour", "rollout", "create", "--spec", badSpec)
	yanked := decodeJSON[cradle.Release](t, cli("release", "yank", rel.ID, "--reason", "bricks rev B", "--json"))
	if yanked.State != cradle.ReleaseYanked {
		t.Errorf("yanked = %+v", yanked)
	}
	if got := decodeJSON[cradle.Rollout](t, cli("rollout", "show", ro2.ID, "--json")); got.Status.State != cradle.RolloutAborted {
		t.Errorf("rollout of a yanked release: %s, want aborted", got.Status.State)
	}
}

// newImageKeyPEM returns a fresh Ed25519 public key as PEM.
func newImageKeyPEM(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}
