package main

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"cradle"
	"cradle/internal/delta"
	"cradle/internal/httpapi"
	"cradle/internal/mcuboot"
	"cradle/internal/ota"
	"cradle/internal/testkit"
	"cradle/internal/tuf"
)

// otaFlow is TestOTAFullFlow's world: the server, an API client with the
// admin token, the image key and the devices with the image each runs.
type otaFlow struct {
	t       *testing.T
	s       *pkiServer
	api     *httpapi.Client
	base    string // the device listener
	pub     crypto.PublicKey
	devices map[string]*otaDevice
}

// otaDevice is an enrolled device acting as an update client.
type otaDevice struct {
	*enrolledDevice
	running []byte // the image it runs
}

// TestOTAFullFlow runs the whole of issue 6 through the real cradle serve
// (PKI, MQTT broker, rollout scheduler every 50 ms): a TUF repository made
// by the real `release repo init`, an image key added through the API, two
// MCUboot images uploaded and signed with the CLI (the second gets a
// delta), twelve devices enrolled over EST of which a selector targets
// ten. A rollout with a canary of 2, then 50%, then 100% runs with the
// devices as real mTLS clients that take the delta at its signed URL in
// two Range requests, rebuild and verify the image and report; it
// completes with every targeted device on 1.1.0 and one complete download
// each. A second rollout (1.2.0) pauses exactly at its failure threshold,
// is resumed and then aborted with the CLI. A device outside the target
// gets 204 throughout, and go-tuf's updater, trusting root v1, verifies
// the 1.1.0 target through the device listener.
// It runs on SQLite, and on PostgreSQL too when CRADLE_TEST_POSTGRES is
// set.
func TestOTAFullFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the server with a PKI and twelve devices")
	}
	t.Run("sqlite", func(t *testing.T) { otaFullFlow(t, "") })
	if base := os.Getenv("CRADLE_TEST_POSTGRES"); base != "" {
		t.Run("postgres", func(t *testing.T) { otaFullFlow(t, postgresSchema(t, base)) })
	}
}

func otaFullFlow(t *testing.T, storeDSN string) {
	start := time.Now()
	s := startPKIServer(t, func(c *Config) { c.OTA.SchedulerInterval, c.Store = 50*time.Millisecond, storeDSN })
	f := &otaFlow{t: t, s: s, api: httpapi.NewClient(s.m.Addr(), s.api[3], nil), base: s.m.device.Addr(), devices: map[string]*otaDevice{}}
	ctx := t.Context()

	// 1. The repository, the image key, two signed releases.
	repoOut := ok(t, "release", "repo", "init", "--data-dir", s.dataDir, "--root-key-dir", filepath.Join(t.TempDir(), "offline"),
		"--key-algorithm", "ed25519", "--insecure-plaintext-keys")
	if !strings.Contains(repoOut, "Created the TUF repository of tenant default") {
		t.Fatalf("repo init:\n%s", repoOut)
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.pub = pub
	der, _ := x509.MarshalPKIXPublicKey(pub)
	ik, err := f.api.AddImageKey(ctx, cradle.ImageKey{Model: "gw-100", Name: "build", PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))})
	if err != nil {
		t.Fatal(err)
	}
	if kh, _ := mcuboot.KeyHash(pub); ik.Fingerprint != hex.EncodeToString(kh) {
		t.Fatalf("image key fingerprint %s, want its KEYHASH %x", ik.Fingerprint, kh)
	}
	body := otaFirmware()
	v10 := otaImage(t, key, body, mcuboot.Version{Major: 1}, 1)
	body[1000] ^= 0x5a
	copy(body[30_000:], "cradle 1.1.0")
	v11 := otaImage(t, key, body, mcuboot.Version{Major: 1, Minor: 1}, 2)
	copy(body[50_000:], "cradle 1.2.0")
	v12 := otaImage(t, key, body, mcuboot.Version{Major: 1, Minor: 2}, 3)
	rel10 := f.upload("1.0.0", v10)
	rel11 := f.upload("1.1.0", v11)
	if rel10.Kind != cradle.ReleaseMCUboot || rel10.SecurityCounter != 1 || rel11.SecurityCounter != 2 || len(rel10.Deltas) != 0 {
		t.Fatalf("releases %+v and %+v", rel10, rel11)
	}
	if len(rel11.Deltas) != 1 || rel11.Deltas[0].FromRelease != rel10.ID || rel11.Deltas[0].FromSHA256 != hexSum(v10) ||
		rel11.Deltas[0].Size*10 > rel11.Size*7 {
		t.Fatalf("1.1.0 deltas %+v (image %d bytes), want one from 1.0.0 of at most 70%%", rel11.Deltas, rel11.Size)
	}
	t.Logf("images %d bytes, delta 1.0.0→1.1.0 %d bytes", rel11.Size, rel11.Deltas[0].Size)

	// 2. Twelve deployed devices running 1.0.0; ten are ring=fleet.
	var fleet, lab []string
	for i := 1; i <= 12; i++ {
		serial := fmt.Sprintf("SN-OTA-%02d", i)
		d := &otaDevice{enrolledDevice: enrollDevice(t, s, serial), running: v10}
		f.devices[serial] = d
		ring := "fleet"
		if i > 10 {
			ring, lab = "lab", append(lab, serial)
		} else {
			fleet = append(fleet, serial)
		}
		if _, err := f.api.UpdateDevice(ctx, serial, cradle.DeviceUpdate{SetLabels: map[string]string{"ring": ring}}); err != nil {
			t.Fatal(err)
		}
		f.reportSoftware(d)
	}
	if sw, err := f.api.FindSoftware(ctx, "SN-OTA-01"); err != nil || sw.Version != "1.0.0" || sw.ReleaseID != rel10.ID {
		t.Fatalf("software of SN-OTA-01 before the rollout: %+v, %v", sw, err)
	}
	t.Logf("server, repository, releases and 12 devices ready after %v", time.Since(start).Round(time.Millisecond))

	// 3. The rollout of 1.1.0: canary 2, then 50%, then 100%.
	ro, err := f.api.CreateRollout(ctx, cradle.RolloutSpec{ReleaseID: rel11.ID, Target: cradle.RolloutTarget{Selector: "ring=fleet"},
		Phases:    []cradle.RolloutPhase{{Name: "canary", Count: 2}, {Percent: 50}, {Percent: 100}},
		RateLimit: 1000, FailureThreshold: cradle.FailureThreshold{Count: 2, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	if ro.Status.State != cradle.RolloutRunning || ro.Status.Devices != 10 {
		t.Fatalf("rollout created %+v", ro.Status)
	}
	canary := f.offered(fleet, ro.ID, 2)
	f.noUpdate(lab, "devices outside the target")
	// The canaries download and install; until they succeed nobody else
	// gets the update.
	for _, serial := range canary {
		f.install(serial, f.poll(serial), false)
	}
	f.waitRollout(ro.ID, "the canaries installing", func(r *cradle.Rollout) bool { return r.Status.Phases[0].Installing == 2 })
	time.Sleep(200 * time.Millisecond) // several scheduler steps
	rest := without(fleet, canary)
	f.noUpdate(rest, "devices after the canary before it succeeded")
	if r := f.rollout(ro.ID); r.Status.Phase != 0 || r.Status.Phases[1].Pending != 3 || r.Status.Phases[2].Pending != 5 {
		t.Fatalf("before the canary succeeded: phase %d, phases %+v", r.Status.Phase, r.Status.Phases)
	}
	for _, serial := range canary {
		f.report(serial, ro.ID, cradle.UpdateSucceeded, "")
		f.reportSoftware(f.devices[serial])
	}
	// Phase 2 (50%) starts three more, phase 3 the last five.
	for _, step := range []struct{ phase, want int }{{1, 3}, {2, 5}} {
		f.waitRollout(ro.ID, fmt.Sprintf("phase %d", step.phase+1), func(r *cradle.Rollout) bool {
			return r.Status.Phase == step.phase && r.Status.Phases[step.phase].Downloading == step.want
		})
		wave := f.offered(rest, ro.ID, step.want)
		for _, serial := range wave {
			f.install(serial, f.poll(serial), true)
		}
		rest = without(rest, wave)
	}
	done := f.waitRollout(ro.ID, "the rollout to complete", func(r *cradle.Rollout) bool { return r.Status.State == cradle.RolloutCompleted })
	for i, want := range []int{2, 3, 5} {
		if p := done.Status.Phases[i]; p.State != cradle.PhaseCompleted || p.Succeeded != want || p.Failed != 0 || p.Devices != want {
			t.Errorf("completed rollout phase %d: %+v, want %d succeeded", i, p, want)
		}
	}
	if text := ok(t, append([]string{"rollout", "show", ro.ID}, s.api...)...); !strings.HasPrefix(text, "Rollout "+ro.ID+" of release "+rel11.ID+": completed\n") ||
		!strings.Contains(text, "10/10 done, 0 failed") {
		t.Errorf("rollout show:\n%s", text)
	}
	patch := rel11.Deltas[0]
	for _, serial := range fleet {
		if sw, err := f.api.FindSoftware(ctx, serial); err != nil || sw.Version != "1.1.0" || sw.SHA256 != hexSum(v11) || sw.ReleaseID != rel11.ID {
			t.Errorf("software of %s: %+v, %v", serial, sw, err)
		}
		var dls []*cradle.DeviceDownload
		waitUntil(t, 10*time.Second, "download accounting of "+serial, func() bool {
			if dls, err = f.api.FindDownloads(ctx, serial); err != nil {
				t.Fatal(err)
			}
			return len(dls) > 0 && dls[0].Completes > 0
		})
		if len(dls) != 1 || dls[0].SHA256 != patch.SHA256 || dls[0].Completes != 1 || dls[0].Requests != 2 || dls[0].Bytes != patch.Size {
			t.Errorf("downloads of %s: %s, want the delta %s once: 2 requests, %d bytes, 1 complete", serial, jsonText(dls), patch.SHA256, patch.Size)
		}
	}
	f.noUpdate(fleet, "devices that succeeded")
	f.noUpdate(lab, "devices outside the target")
	for _, serial := range lab {
		if sw, err := f.api.FindSoftware(ctx, serial); err != nil || sw.Version != "1.0.0" {
			t.Errorf("software of %s outside the target: %+v, %v", serial, sw, err)
		}
	}

	// The TUF metadata on the device listener: go-tuf's updater trusting
	// root v1 verifies the 1.1.0 target and its custom metadata.
	f.checkTUF(f.devices[lab[0]], rel11, v11)

	// 4. A rollout of 1.2.0 in which two devices fail: it pauses exactly at
	// the threshold, is resumed, then aborted.
	rel12 := f.upload("1.2.0", v12)
	ro2, err := f.api.CreateRollout(ctx, cradle.RolloutSpec{ReleaseID: rel12.ID, Target: cradle.RolloutTarget{Selector: "ring=fleet"},
		Phases:    []cradle.RolloutPhase{{Count: 3}, {Percent: 60}, {Percent: 100}},
		RateLimit: 1000, SuccessThreshold: 30, FailureThreshold: cradle.FailureThreshold{Count: 2, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	canary = f.offered(fleet, ro2.ID, 3)
	rest = without(fleet, canary)
	f.report(canary[0], ro2.ID, cradle.UpdateDownloading, "")
	f.report(canary[0], ro2.ID, cradle.UpdateFailed, "flash write error at 0x8000")
	r := f.waitRollout(ro2.ID, "the first failure", func(r *cradle.Rollout) bool { return r.Status.Failures == 1 })
	if r.Status.State != cradle.RolloutRunning {
		t.Fatalf("after one failure of two allowed: %s (%s)", r.Status.State, r.Status.Reason)
	}
	f.report(canary[1], ro2.ID, cradle.UpdateFailed, "image does not boot")
	r = f.waitRollout(ro2.ID, "the pause at the threshold", func(r *cradle.Rollout) bool { return r.Status.State != cradle.RolloutRunning })
	if r.Status.State != cradle.RolloutPaused || r.Status.Failures != 2 || !strings.Contains(r.Status.Reason, "failure threshold reached: 2 devices failed") {
		t.Fatalf("at the failure threshold: %s, %d failures (%s)", r.Status.State, r.Status.Failures, r.Status.Reason)
	}
	// The third canary finishes its update while paused; nobody starts.
	f.install(canary[2], f.poll(canary[2]), true)
	f.waitRollout(ro2.ID, "the third canary's success", func(r *cradle.Rollout) bool { return r.Status.Phases[0].Succeeded == 1 })
	time.Sleep(200 * time.Millisecond)
	f.noUpdate(rest, "devices of a paused rollout")
	f.noUpdate(canary[:2], "failed devices")
	if r = f.rollout(ro2.ID); r.Status.State != cradle.RolloutPaused || r.Status.Phase != 0 || r.Status.Phases[1].Pending != 3 || r.Status.Phases[2].Pending != 4 {
		t.Fatalf("paused rollout: %s phase %d, phases %+v", r.Status.State, r.Status.Phase, r.Status.Phases)
	}
	// The second phase's devices, still pending; the first of them waits
	// for its update notice over MQTT (when mosquitto_sub is there).
	one := 1
	second, err := f.api.FindRolloutDevices(ctx, ro2.ID, cradle.RolloutDeviceFilter{Phase: &one})
	if err != nil {
		t.Fatal(err)
	}
	var phase2 []string
	for _, d := range second {
		if d.State != cradle.DevicePending {
			t.Fatalf("device %s of the second phase of a paused rollout is %s", d.Serial, d.State)
		}
		phase2 = append(phase2, d.Serial)
	}
	var notice <-chan string
	if _, err := exec.LookPath("mosquitto_sub"); err == nil || os.Getenv("CI") != "" {
		notice = subscribeNotice(t, s, f.devices[phase2[0]].enrolledDevice, testkit.NeedProgram(t, "mosquitto_sub"))
	} else {
		t.Log("mosquitto_sub is not installed: the MQTT update notice is not checked")
	}
	ok(t, append([]string{"rollout", "resume", ro2.ID}, s.api...)...)
	f.waitRollout(ro2.ID, "the resumed rollout's second phase", func(r *cradle.Rollout) bool {
		return r.Status.State == cradle.RolloutRunning && r.Status.Phase == 1 && r.Status.Phases[1].Downloading == 3
	})
	if notice != nil {
		select {
		case msg := <-notice:
			checkNotice(t, msg, ro2.ID)
		case <-time.After(10 * time.Second):
			t.Fatalf("no MQTT update notice for %s after the resume started it", phase2[0])
		}
	}
	wave := f.offered(rest, ro2.ID, 3)
	if slices.Sort(phase2); !slices.Equal(wave, phase2) {
		t.Fatalf("offered %v in the second phase, the rollout lists %v", wave, phase2)
	}
	f.install(wave[0], f.poll(wave[0]), true)
	f.install(wave[1], f.poll(wave[1]), true)
	f.waitRollout(ro2.ID, "two successes in the second phase", func(r *cradle.Rollout) bool { return r.Status.Phases[1].Succeeded == 2 })
	aborted := ok(t, append([]string{"rollout", "abort", ro2.ID, "--reason", "enough for today"}, s.api...)...)
	if !strings.Contains(aborted, "aborted") {
		t.Errorf("rollout abort printed %q", aborted)
	}
	time.Sleep(200 * time.Millisecond)
	r = f.rollout(ro2.ID)
	if r.Status.State != cradle.RolloutAborted || r.Status.Reason != "enough for today" || r.Status.Phase != 1 || r.Status.Phases[2].Pending != 4 {
		t.Fatalf("aborted rollout: %s (%s) phase %d, phases %+v", r.Status.State, r.Status.Reason, r.Status.Phase, r.Status.Phases)
	}
	f.noUpdate(without(rest, wave), "devices of the last phase of an aborted rollout")
	// An update started before the abort is not interrupted: the device
	// finishes it, the rollout records it, and the device is done.
	f.install(wave[2], f.poll(wave[2]), true)
	r = f.waitRollout(ro2.ID, "the success of an update started before the abort", func(r *cradle.Rollout) bool { return r.Status.Phases[1].Succeeded == 3 })
	if r.Status.State != cradle.RolloutAborted || r.Status.Reason != "enough for today" || r.Status.Phases[2].Pending != 4 {
		t.Fatalf("aborted rollout after a late success: %s", summaryLine(r))
	}
	f.noUpdate(wave, "devices that finished the aborted rollout's update")
	if text := ok(t, append([]string{"rollout", "show", ro2.ID}, s.api...)...); !strings.HasPrefix(text, "Rollout "+ro2.ID+" of release "+rel12.ID+": aborted\n") {
		t.Errorf("rollout show of the aborted rollout:\n%s", text)
	}
	// The last phase's devices were never started: which ones they are
	// depends on the rollout's ID (the selector's order is a hash of it).
	lastPhase := without(rest, wave)
	for serial, want := range map[string]string{canary[0]: "1.1.0", canary[2]: "1.2.0", wave[0]: "1.2.0", wave[2]: "1.2.0", lastPhase[len(lastPhase)-1]: "1.1.0"} {
		if sw, err := f.api.FindSoftware(ctx, serial); err != nil || sw.Version != want {
			t.Errorf("software of %s after the second rollout: %+v, %v; want %s", serial, sw, err, want)
		}
	}

	// 5. A device outside the target still gets nothing.
	f.noUpdate(lab, "devices outside the target")
	t.Logf("whole flow: %v", time.Since(start).Round(time.Millisecond))
}

// otaFirmware is a 64 KiB body that starts with the zero bytes the
// MCUboot header replaces.
func otaFirmware() []byte {
	b := make([]byte, 64<<10)
	seed := sha256.Sum256([]byte("cradle ota e2e"))
	for i := mcuboot.DefaultHeaderSize; i < len(b); i += 32 {
		seed = sha256.Sum256(seed[:])
		copy(b[i:], seed[:])
	}
	return b
}

// otaImage signs body as an MCUboot image of version v and security
// counter counter.
func otaImage(t *testing.T, key crypto.Signer, body []byte, v mcuboot.Version, counter uint32) []byte {
	t.Helper()
	img, err := mcuboot.Sign(slices.Clone(body), mcuboot.Options{Key: key, Version: v, SecurityCounter: &counter})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// without returns the serials of all that are not in some, in order.
func without(all, some []string) []string {
	var out []string
	for _, s := range all {
		if !slices.Contains(some, s) {
			out = append(out, s)
		}
	}
	return out
}

// upload writes img to a file and uploads and signs it with the CLI as
// release version of gw-100.
func (f *otaFlow) upload(version string, img []byte) *cradle.Release {
	f.t.Helper()
	file := writeFile(f.t, f.t.TempDir(), "zephyr-"+version+".signed.bin", string(img))
	rel := decodeJSON[cradle.Release](f.t, ok(f.t, append([]string{"release", "upload", file, "--model", "gw-100", "--version", version,
		"--file-name", "zephyr.signed.bin", "--sign", "--json"}, f.s.api...)...))
	if rel.State != cradle.ReleaseSigned || rel.SHA256 != hexSum(img) || rel.Size != int64(len(img)) || rel.TargetPath != "gw-100/"+version+"/zephyr.signed.bin" {
		f.t.Fatalf("release %s: %+v", version, rel)
	}
	return &rel
}

// poll is the device's GET /device/v1/update with the digest of the image
// it runs; nil for 204.
func (f *otaFlow) poll(serial string) *updateDocument {
	f.t.Helper()
	d := f.devices[serial]
	resp, body := fetch(f.t, d.client, "GET", f.base+"/device/v1/update?running="+hexSum(d.running), nil)
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil
	case http.StatusOK:
		var doc updateDocument
		if err := json.Unmarshal(body, &doc); err != nil {
			f.t.Fatalf("update document of %s: %v", serial, err)
		}
		return &doc
	}
	f.t.Fatalf("GET /device/v1/update as %s: status %d: %s", serial, resp.StatusCode, body)
	return nil
}

// offered polls every device of serials and fails unless exactly n of
// them get an update of rollout id; it returns those.
func (f *otaFlow) offered(serials []string, id string, n int) []string {
	f.t.Helper()
	var got []string
	for _, serial := range serials {
		if doc := f.poll(serial); doc != nil {
			if doc.RolloutID != id || doc.Attempt != 1 {
				f.t.Fatalf("%s was offered %s attempt %d, want %s attempt 1", serial, doc.RolloutID, doc.Attempt, id)
			}
			got = append(got, serial)
		}
	}
	if len(got) != n {
		f.t.Fatalf("%d devices of %d offered an update of %s (%v), want %d", len(got), len(serials), id, got, n)
	}
	return got
}

// noUpdate fails unless every device of serials gets 204.
func (f *otaFlow) noUpdate(serials []string, what string) {
	f.t.Helper()
	for _, serial := range serials {
		if doc := f.poll(serial); doc != nil {
			f.t.Fatalf("%s: %s was offered %s of release %s", what, serial, doc.RolloutID, doc.Release.Version)
		}
	}
}

// report posts a status report of serial.
func (f *otaFlow) report(serial, rolloutID, state, reason string) {
	f.t.Helper()
	body, _ := json.Marshal(cradle.UpdateReport{RolloutID: rolloutID, Attempt: 1, State: state, Reason: reason})
	resp, got := fetch(f.t, f.devices[serial].client, "POST", f.base+"/device/v1/update/status", body)
	wantStatus(f.t, serial+" reporting "+state, resp, got, http.StatusNoContent)
}

// reportSoftware posts the digest of the image d runs.
func (f *otaFlow) reportSoftware(d *otaDevice) {
	f.t.Helper()
	resp, got := fetch(f.t, d.client, "POST", f.base+"/device/v1/software", []byte(`{"sha256":"`+hexSum(d.running)+`"}`))
	wantStatus(f.t, d.serial+" reporting its software", resp, got, http.StatusNoContent)
}

// install is the device's update from doc: it reports downloading, takes
// the delta (which must be offered) in two Range requests at its signed
// URL without a client certificate, reports installing, rebuilds the
// image against the one it runs, checks its digest and its MCUboot
// signature, and with finish reports succeeded and its new software.
func (f *otaFlow) install(serial string, doc *updateDocument, finish bool) {
	t := f.t
	t.Helper()
	d := f.devices[serial]
	if doc == nil {
		t.Fatalf("%s has no update to install", serial)
	}
	if doc.Delta == nil || doc.Delta.FromSHA256 != hexSum(d.running) {
		t.Fatalf("%s running %s was offered no delta from it: %+v", serial, hexSum(d.running), doc.Delta)
	}
	f.report(serial, doc.RolloutID, cradle.UpdateDownloading, "")
	half := doc.Delta.Size / 2
	resp, first := fetch(t, d.anonymous, "GET", doc.Delta.URL, nil, "Range", fmt.Sprintf("bytes=0-%d", half-1))
	wantStatus(t, serial+" downloading the delta's first half", resp, first, http.StatusPartialContent)
	resp, rest := fetch(t, d.anonymous, "GET", doc.Delta.URL, nil, "Range", fmt.Sprintf("bytes=%d-", half), "If-Range", resp.Header.Get("ETag"))
	wantStatus(t, serial+" downloading the delta's rest", resp, rest, http.StatusPartialContent)
	patch := append(first, rest...)
	if int64(len(patch)) != doc.Delta.Size || hexSum(patch) != doc.Delta.SHA256 {
		t.Fatalf("%s: the delta downloaded is %d bytes with digest %s, the document says %d and %s", serial, len(patch), hexSum(patch), doc.Delta.Size, doc.Delta.SHA256)
	}
	f.report(serial, doc.RolloutID, cradle.UpdateInstalling, "")
	target, err := delta.ParseDigest(doc.Release.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	if _, err := delta.Apply(&img, d.running, bytes.NewReader(patch), delta.Expect{BaseSHA256: delta.Sum(d.running), TargetSHA256: target,
		Limit: doc.Release.Size, TargetSize: doc.Release.Size}); err != nil {
		t.Fatalf("%s applying the delta: %v", serial, err)
	}
	parsed, err := mcuboot.Verify(img.Bytes(), []crypto.PublicKey{f.pub})
	if err != nil {
		t.Fatalf("%s: the rebuilt image does not verify: %v", serial, err)
	}
	if v := parsed.Header.Version; fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Revision) != doc.Release.Version ||
		parsed.SecurityCounter != doc.Release.SecurityCounter {
		t.Fatalf("%s: the rebuilt image is version %+v counter %d, the release %s counter %d", serial, v, parsed.SecurityCounter, doc.Release.Version, doc.Release.SecurityCounter)
	}
	d.running = img.Bytes()
	if finish {
		f.report(serial, doc.RolloutID, cradle.UpdateSucceeded, "")
		f.reportSoftware(d)
	}
}

// rollout reads a rollout through the API.
func (f *otaFlow) rollout(id string) *cradle.Rollout {
	f.t.Helper()
	r, err := f.api.FindRollout(f.t.Context(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// waitRollout polls rollout id until cond holds (10 s at most) and
// returns it.
func (f *otaFlow) waitRollout(id, what string, cond func(*cradle.Rollout) bool) *cradle.Rollout {
	f.t.Helper()
	var r *cradle.Rollout
	deadline := time.Now().Add(20 * time.Second)
	for r = f.rollout(id); !cond(r); r = f.rollout(id) {
		if time.Now().After(deadline) {
			f.t.Fatalf("waiting for %s: rollout %s", what, summaryLine(r))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

// checkTUF runs go-tuf's updater as d over the device listener, trusting
// version 1 of the repository's root, and fails unless it verifies and
// downloads rel's target, which must be img.
func (f *otaFlow) checkTUF(d *otaDevice, rel *cradle.Release, img []byte) {
	t := f.t
	t.Helper()
	rootV1, err := os.ReadFile(filepath.Join(ota.RepositoryDir(f.s.dataDir, cradle.DefaultTenantName), "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.New(f.base+"/device/v1/tuf", rootV1)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = f.base + "/device/v1/tuf/targets"
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = t.TempDir(), t.TempDir()
	if err := cfg.SetDefaultFetcherHTTPClient(d.client); err != nil {
		t.Fatal(err)
	}
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Refresh(); err != nil {
		t.Fatalf("TUF refresh over the device listener: %v", err)
	}
	info, err := up.GetTargetInfo(rel.TargetPath)
	if err != nil {
		t.Fatalf("TUF target %s: %v", rel.TargetPath, err)
	}
	_, data, err := up.DownloadTarget(info, filepath.Join(t.TempDir(), "target"), "")
	if err != nil {
		t.Fatalf("TUF download of %s: %v", rel.TargetPath, err)
	}
	if !bytes.Equal(data, img) {
		t.Fatalf("the TUF target %s differs from the image", rel.TargetPath)
	}
	c, err := tuf.ParseCustom(*info.Custom)
	if err != nil || c.Model != "gw-100" || c.Version != rel.Version || c.SecurityCounter != rel.SecurityCounter {
		t.Fatalf("TUF custom metadata of %s: %+v, %v", rel.TargetPath, c, err)
	}
	if len(c.DeltaBases) != 1 || c.DeltaBases[0].From != rel.Deltas[0].FromSHA256 || c.DeltaBases[0].Patch != rel.Deltas[0].TargetPath ||
		c.DeltaBases[0].Length != rel.Deltas[0].Size {
		t.Fatalf("TUF custom delta bases of %s: %+v, want the delta %+v", rel.TargetPath, c.DeltaBases, rel.Deltas[0])
	}
}
