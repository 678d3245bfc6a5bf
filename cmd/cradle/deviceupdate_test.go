package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cradle"
	"cradle/internal/artifact"
)

const hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func TestParseTargetURLPath(t *testing.T) {
	tests := []struct {
		name, in, path string
		ok             bool
	}{
		{"release", "gw-100/1.2.0/" + hexA + ".app.bin", "gw-100/1.2.0/app.bin", true},
		{"no directory", hexA + ".app.bin", "app.bin", true},
		{"name with dots", "m/" + hexA + ".app.tar.gz", "m/app.tar.gz", true},
		{"no name", "m/" + hexA, "", false},
		{"empty name", "m/" + hexA + ".", "", false},
		{"dot-dot name", "m/" + hexA + "..", "", false},
		{"short digest", "m/abc.app.bin", "", false},
		{"upper-case digest", "m/" + strings.ToUpper(hexA) + ".app.bin", "", false},
		{"dot-dot directory", "../" + hexA + ".app.bin", "", false},
		{"empty directory level", "m//" + hexA + ".app.bin", "", false},
		{"leading slash", "/" + hexA + ".app.bin", "", false},
		{"empty", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, d, ok := parseTargetURLPath(tt.in)
			if ok != tt.ok || path != tt.path {
				t.Fatalf("parseTargetURLPath(%q) = %q, %v; want %q, %v", tt.in, path, ok, tt.path, tt.ok)
			}
			if ok && d.String() != hexA {
				t.Fatalf("digest %s", d)
			}
		})
	}
}

func TestTUFMetadataName(t *testing.T) {
	for name, want := range map[string]bool{
		"root.json": true, "1.root.json": true, "12.root.json": true, "targets.json": true, "3.targets.json": true,
		"snapshot.json": true, "7.snapshot.json": true, "timestamp.json": true,
		"0.root.json": false, "01.root.json": false, "1.timestamp.json": false, "keys.json": false, "root.json.tmp": false,
		"../keys.json": false, ".root.json": false, "-1.root.json": false, "root": false, "": false,
		"12345678901234567890.root.json": false,
	} {
		if got := tufMetadataName.MatchString(name); got != want {
			t.Errorf("%q: %v, want %v", name, got, want)
		}
	}
}

func TestParseUpdateReport(t *testing.T) {
	tests := []struct {
		name, in, err string
	}{
		{"ok", `{"rollout_id":"ro_1","attempt":1,"state":"downloading"}`, ""},
		{"with reason", `{"rollout_id":"ro_1","attempt":2,"state":"failed","reason":"flash write failed"}`, ""},
		{"unknown field", `{"rollout_id":"ro_1","attempt":1,"state":"failed","extra":1}`, "unknown field"},
		{"trailing data", `{"rollout_id":"ro_1","attempt":1,"state":"failed"} {}`, "data after"},
		{"no rollout", `{"attempt":1,"state":"failed"}`, "rollout_id is required"},
		{"attempt 0", `{"rollout_id":"ro_1","state":"failed"}`, "attempt 0"},
		{"no state", `{"rollout_id":"ro_1","attempt":1}`, "state is required"},
		{"long reason", `{"rollout_id":"ro_1","attempt":1,"state":"failed","reason":"` + strings.Repeat("x", maxUpdateReason+1) + `"}`, "reason is longer"},
		{"not an object", `[]`, "not valid"},
		{"empty", ``, "not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseUpdateReport([]byte(tt.in))
			checkParseErr(t, err, tt.err)
		})
	}
}

func TestParseSoftwareReport(t *testing.T) {
	tests := []struct {
		name, in, err string
	}{
		{"ok", `{"sha256":"` + hexA + `"}`, ""},
		{"upper case", `{"sha256":"` + strings.ToUpper(hexA) + `"}`, "not a SHA-256"},
		{"short", `{"sha256":"abc"}`, "not a SHA-256"},
		{"missing", `{}`, "not a SHA-256"},
		{"unknown field", `{"sha256":"` + hexA + `","version":"1"}`, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sha, err := parseSoftwareReport([]byte(tt.in))
			checkParseErr(t, err, tt.err)
			if err == nil && sha != hexA {
				t.Fatalf("sha256 %q", sha)
			}
		})
	}
}

// checkParseErr fails unless err is nil (want "") or an EINVALID whose
// message contains want.
func checkParseErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("error %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && (cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), want)):
		t.Fatalf("error %v (%s), want EINVALID containing %q", err, cradle.ErrorCode(err), want)
	}
}

func TestParseTargetsMetadata(t *testing.T) {
	good := `{"signed":{"_type":"targets","version":2,"targets":{"m/1/app.bin":{"length":3,"hashes":{"sha256":"` + strings.ToUpper(hexA) + `"}}}},"signatures":[]}`
	got, err := parseTargetsMetadata([]byte(good))
	if err != nil || len(got) != 1 || got["m/1/app.bin"] != hexA {
		t.Fatalf("got %v, %v", got, err)
	}
	for name, in := range map[string]string{
		"wrong type":  `{"signed":{"_type":"snapshot","targets":{}}}`,
		"no sha256":   `{"signed":{"_type":"targets","targets":{"a":{"hashes":{"sha512":"00"}}}}}`,
		"bad sha256":  `{"signed":{"_type":"targets","targets":{"a":{"hashes":{"sha256":"xyz"}}}}}`,
		"not json":    `{`,
		"wrong shape": `{"signed":[]}`,
	} {
		if _, err := parseTargetsMetadata([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseDownloadDevice(t *testing.T) {
	if id, serial, ok := parseDownloadDevice(downloadDevice(42, "SN-1")); !ok || id != 42 || serial != "SN-1" {
		t.Fatalf("round trip: %d %q %v", id, serial, ok)
	}
	for _, in := range []string{"", "42", "/SN-1", "0/SN-1", "-1/SN-1", "042/SN-1", "x/SN-1", "42/", "42/SN 1", "42/a/b"} {
		if _, _, ok := parseDownloadDevice(in); ok {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestURLSignerKey: the first start makes a 0600 key of 32 random bytes;
// the next reads the same one; a previous key still verifies its URLs; a
// key others may read, or a short one, is refused.
func TestURLSignerKey(t *testing.T) {
	dir := t.TempDir()
	s1, created, err := loadOrCreateURLSigner(dir)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	path := filepath.Join(dir, artifactURLKeyFile)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != artifact.MinKeySize {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	ticket := artifact.Ticket{Digest: artifact.Digest{1}, Device: "1/SN-1", Expires: time.Now().Add(time.Hour)}
	u := s1.Sign(ticket)
	p, q, _ := strings.Cut(u, "?")
	s2, created, err := loadOrCreateURLSigner(dir)
	if err != nil || created {
		t.Fatalf("second start: created %v, %v", created, err)
	}
	if _, err := s2.Verify(p, q, time.Now()); err != nil {
		t.Fatalf("a URL signed before a restart: %v", err)
	}

	// Rotation: the old key becomes .previous, a new key is made.
	if err := os.Rename(path, path+".previous"); err != nil {
		t.Fatal(err)
	}
	s3, created, err := loadOrCreateURLSigner(dir)
	if err != nil || !created {
		t.Fatalf("rotation: created %v, %v", created, err)
	}
	if _, err := s3.Verify(p, q, time.Now()); err != nil {
		t.Fatalf("a URL of the previous key: %v", err)
	}
	if u3 := s3.Sign(ticket); u3 == u {
		t.Fatal("the new key signs like the old one")
	}

	os.Chmod(path, 0o644)
	if _, _, err := loadOrCreateURLSigner(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a readable key: %v", err)
	}
	os.Chmod(path, 0o600)
	os.WriteFile(path+".previous", []byte("short"), 0o600)
	if _, _, err := loadOrCreateURLSigner(dir); err == nil || !strings.Contains(err.Error(), "holds 5 bytes") {
		t.Fatalf("a short previous key: %v", err)
	}
}

// TestDownloadAccountingNeverBlocks: with the queue full, Account drops
// and counts instead of waiting for the store.
func TestDownloadAccountingNeverBlocks(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := newDownloadAccounting(nil, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d := artifact.Download{Device: downloadDevice(1, "SN-1"), Sent: 10, Complete: true}
	done := make(chan struct{})
	go func() {
		for range accountQueue + 5 {
			a.Account(d)
		}
		a.Account(artifact.Download{Device: "not a device"}) // logged, not queued
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Account blocked on a full queue")
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "cradle_artifact_download_records_dropped_total" {
		t.Fatalf("metrics %v, %v", mfs, err)
	}
	if n := mfs[0].GetMetric()[0].GetCounter().GetValue(); n != 5 {
		t.Fatalf("dropped %v, want 5", n)
	}
	if len(a.queue) != accountQueue {
		t.Fatalf("queued %d", len(a.queue))
	}
	rec := <-a.queue
	if rec.TenantID != 1 || rec.Serial != "SN-1" || rec.Bytes != 10 || !rec.Complete {
		t.Fatalf("record %+v", rec)
	}
}

func FuzzParseUpdateReport(f *testing.F) {
	f.Add([]byte(`{"rollout_id":"ro_1","attempt":1,"state":"downloading"}`))
	f.Add([]byte(`{"rollout_id":"ro_1","attempt":2,"state":"failed","reason":"x"}`))
	f.Add([]byte(`{"rollout_id":"","attempt":-1}`))
	f.Add([]byte(`{"sha256":"` + hexA + `"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := parseUpdateReport(data)
		if err == nil {
			if rep.RolloutID == "" || rep.Attempt < 1 || rep.State == "" || len(rep.Reason) > maxUpdateReason {
				t.Fatalf("accepted %+v", rep)
			}
			// What is accepted survives a round trip.
			b, _ := json.Marshal(rep)
			if again, err := parseUpdateReport(b); err != nil || again != rep {
				t.Fatalf("round trip of %s: %+v, %v", b, again, err)
			}
		} else if cradle.ErrorCode(err) != cradle.EINVALID {
			t.Fatalf("error code %s", cradle.ErrorCode(err))
		}
		if sha, err := parseSoftwareReport(data); err == nil {
			if _, perr := artifact.ParseDigest(sha); perr != nil {
				t.Fatalf("software report accepted %q", sha)
			}
		}
	})
}

func FuzzParseTargetURLPath(f *testing.F) {
	f.Add("gw-100/1.2.0/" + hexA + ".app.bin")
	f.Add(hexA + ".x")
	f.Add("../" + hexA + ".x")
	f.Add("a//" + hexA + ".x")
	f.Fuzz(func(t *testing.T, in string) {
		path, d, ok := parseTargetURLPath(in)
		if !ok {
			return
		}
		if !strings.Contains(in, d.String()+".") {
			t.Fatalf("digest %s not in %q", d, in)
		}
		for _, seg := range strings.Split(path, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("path %q from %q has segment %q", path, in, seg)
			}
		}
	})
}

func FuzzParseTargetsMetadata(f *testing.F) {
	f.Add([]byte(`{"signed":{"_type":"targets","targets":{"m/1/a":{"length":3,"hashes":{"sha256":"` + hexA + `"}}}}}`))
	f.Add([]byte(`{"signed":{"_type":"targets","targets":{}}}`))
	f.Add([]byte(`{"signed":{"_type":"root"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseTargetsMetadata(data)
		if err != nil {
			return
		}
		for p, h := range m {
			if _, err := artifact.ParseDigest(h); err != nil {
				t.Fatalf("target %q digest %q", p, h)
			}
		}
	})
}
