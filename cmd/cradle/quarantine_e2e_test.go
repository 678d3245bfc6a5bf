package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/artifact"
	"cradle/internal/sqlstore"
)

// TestQuarantineEndToEnd: a suspended device receives only remediation
// updates (issue 9), with the real server and the real cradle-agent on a
// simulated unit running v1.
//
// The unit enrolls and is suspended. A rollout of v2, a normal release,
// does not reach it: the rollout records it as skipped ("suspended: only
// remediation updates") and the agent, which polls every second, is
// offered nothing and keeps running v1. v3 is uploaded flagged as a
// remediation and rolled out to the still suspended unit: the agent
// fetches the offer, the TUF metadata and the image through the device
// listener's update routes, installs, reboots, commits and reports; the
// rollout completes and the server's software record is v3. Other routes
// (telemetry) stay refused to it throughout.
func TestQuarantineEndToEnd(t *testing.T) {
	u := newUpdateUnit(t, 96<<10)
	l, ctx, dev, serial, v1Hex := u.l, u.ctx, u.dev, u.serial, u.v1Hex
	cli := func(args ...string) string { t.Helper(); return u.cli(t, args...) }
	v2, _ := u.image(t, "2.0.0", 2)
	v3, v3Hex := u.image(t, "2.0.1", 3)

	// The agent polls every second: a suspended device is refused by the
	// broker, so it learns of its remediation by polling.
	a := u.startAgent(t, "poll_interval: 1s, health_timeout: 2s")
	a.waitFor(t, "the agent to enroll and connect over MQTT", func() bool { return l.m.device.mqtt.Sessions(inDefaultTenant(serial)) == 1 })

	// Quarantine.
	cli("device", "transition", serial, "suspended", "--reason", "runs a firmware with a known flaw")

	cli("release", "key", "add", "--model", "sensor-x", u.pubFile, "--name", "build")

	// A normal release does not reach the suspended unit.
	rel2 := u.upload(t, v2, "2.0.0")
	if rel2.Remediation {
		t.Fatalf("release v2 uploaded without --remediation: %+v", rel2)
	}
	ro2 := u.rollOut(t, rel2)
	if d := u.rolloutDevice(t, ro2); d.State != cradle.DeviceSkipped || d.Reason != cradle.RolloutSkipSuspended {
		t.Fatalf("the suspended unit in rollout %s of a normal release: %+v", ro2, d)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	updates := sqlstore.NewUpdateService(l.m.db)
	if _, err := updates.PendingUpdate(sys, serial, ""); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Fatalf("pending update of the suspended unit during rollout %s: %v", ro2, err)
	}
	// Polls come and go (2 s, two polls) and the unit still runs v1.
	time.Sleep(2 * time.Second)
	if strings.Contains(a.logs.String(), `"msg":"update offered"`) {
		t.Fatalf("the suspended unit was offered an update:\n%s", lastLines(a.logs.String(), 20))
	}
	if s, d := u.running(t); s != hw.SlotA || d != v1Hex {
		t.Fatalf("the suspended unit runs slot %s %s, want a %s (v1)", s, d, v1Hex)
	}

	// Its other routes stay closed.
	hc := agentHTTPClient(t, ctx, dev, a.state, filepath.Join(pkiDirOf(l.dataDir), "root.crt"))
	resp, body := fetch(t, hc, "POST", l.m.device.Addr()+"/device/v1/telemetry", []byte(`{"metrics":{"t":1}}`), "Content-Type", "application/json")
	wantStatus(t, "telemetry of a suspended device", resp, body, 403)
	resp, body = fetch(t, hc, "GET", l.m.device.Addr()+"/device/v1/tuf/timestamp.json", nil)
	wantStatus(t, "TUF metadata with no remediation pending", resp, body, 403)
	resp, body = fetch(t, hc, "GET", l.m.device.Addr()+"/device/v1/update", nil)
	wantStatus(t, "the update route of a suspended device", resp, body, 204)

	// The flag can be set and cleared on a release later.
	if r := decodeJSON[*cradle.Release](t, cli("release", "flag", rel2.ID, "--remediation", "--json")); !r.Remediation {
		t.Fatalf("release flag --remediation: %+v", r)
	}
	if r := decodeJSON[*cradle.Release](t, cli("release", "flag", rel2.ID, "--remediation=false", "--json")); r.Remediation {
		t.Fatalf("release flag --remediation=false: %+v", r)
	}

	// A remediation installs on it, suspended as it is.
	rel3 := u.upload(t, v3, "2.0.1", "--remediation")
	if !rel3.Remediation || rel3.SHA256 != v3Hex {
		t.Fatalf("release v3 %+v", rel3)
	}
	start := time.Now()
	ro3 := u.rollOut(t, rel3)
	a.waitFor(t, "remediation rollout "+ro3+" to complete", func() bool { return u.rolloutState(t, ro3) == cradle.RolloutCompleted })
	t.Logf("remediation: rollout created to rollout completed in %v", time.Since(start).Round(time.Millisecond))
	if d := u.rolloutDevice(t, ro3); d.State != cradle.DeviceSucceeded {
		t.Fatalf("rollout %s device %+v, want succeeded", ro3, d)
	}
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})
	a.waitFor(t, "the software report of the remediation", func() bool {
		sw, err := updates.FindSoftware(admin, serial)
		return err == nil && sw.SHA256 == v3Hex && sw.ReleaseID == rel3.ID
	})
	if s, d := u.running(t); s != hw.SlotB || d != v3Hex {
		t.Fatalf("after the remediation the unit runs slot %s %s, want b %s", s, d, v3Hex)
	}
	if env, _ := dev.BootEnv.Get(ctx); env[hw.EnvUpgradeAvailable] == "1" {
		t.Fatalf("the remediation was not committed: boot environment %v", env)
	}
	if d := decodeJSON[struct {
		Device      cradle.Device
		Transitions []json.RawMessage
	}](t, cli("device", "show", serial, "--json")).Device; d.State != cradle.StateSuspended {
		t.Fatalf("the unit is %q after its remediation; it stays suspended until an operator moves it", d.State)
	}
	resp, body = fetch(t, hc, "POST", l.m.device.Addr()+"/device/v1/telemetry", []byte(`{"metrics":{"t":1}}`), "Content-Type", "application/json")
	wantStatus(t, "telemetry after the remediation", resp, body, 403)

	a.stop(t)
}

// agentHTTPClient is an HTTPS client that presents the LDevID the agent
// keeps in stateDir, with its key from the unit's key store, and trusts the
// PKI root in rootFile.
func agentHTTPClient(t *testing.T, ctx context.Context, dev *hw.Device, stateDir, rootFile string) *http.Client {
	t.Helper()
	st, err := agent.LoadState(stateDir)
	if err != nil || st.Current == nil {
		t.Fatalf("agent state: %+v, %v", st, err)
	}
	signer, err := dev.Keys.Key(ctx, st.Current.KeyName)
	if err != nil {
		t.Fatal(err)
	}
	var chain [][]byte
	for rest := []byte(st.Current.Chain); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		chain = append(chain, b.Bytes)
	}
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: signer}}}}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// TestQuarantineRoutes: what a suspended device reaches on the device
// listener, request by request. With a remediation pending it gets the
// offer, the TUF metadata, the remediation's target (not another
// release's), and may report on it; telemetry, twin and commands stay
// refused. When the release is no longer a remediation, the door closes.
func TestQuarantineRoutes(t *testing.T) {
	s := startPKIServer(t, nil)
	m, ctx := s.m, t.Context()
	dev := enrollDevice(t, s, "SN-Q1")
	base := m.device.Addr()
	admin := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "test"})

	store := openArtifactStore(Config{DataDir: s.dataDir})
	releases := sqlstore.NewReleaseService(m.db)
	blobs := map[string][]byte{}
	release := func(version string, remediation bool) *cradle.Release {
		t.Helper()
		image := make([]byte, 4096)
		rand.Read(image)
		sum := sha256.Sum256(image)
		if _, err := store.Put(ctx, bytes.NewReader(image), artifact.Expect{Digest: sum, Size: int64(len(image))}); err != nil {
			t.Fatal(err)
		}
		rel, err := releases.CreateRelease(admin, cradle.ReleaseCreate{Model: "gw-100", Version: version, Kind: cradle.ReleaseFile,
			SHA256: hex.EncodeToString(sum[:]), Size: int64(len(image)), FileName: "app.bin", SecurityCounter: 1, Remediation: remediation})
		if err != nil {
			t.Fatal(err)
		}
		path := "gw-100/" + version + "/app.bin"
		blobs[path] = image
		if rel, err = releases.MarkReleaseSigned(admin, rel.ID, path, nil); err != nil {
			t.Fatal(err)
		}
		return rel
	}
	normal, fix := release("1.1.0", false), release("1.1.1", true)
	publishTUF(t, s.dataDir, cradle.DefaultTenantName, blobs)
	targetURL := func(r *cradle.Release) string {
		return base + "/device/v1/tuf/targets/gw-100/" + r.Version + "/" + r.SHA256 + ".app.bin"
	}
	if _, err := sqlstore.NewDeviceService(m.db).TransitionDevice(admin, "SN-Q1", cradle.DeviceTransition{To: cradle.StateSuspended, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	get := func(what, url string, want int) []byte {
		t.Helper()
		resp, body := fetch(t, dev.client, "GET", url, nil)
		wantStatus(t, what, resp, body, want)
		return body
	}
	post := func(what, path, body string, want int) {
		t.Helper()
		resp, got := fetch(t, dev.client, "POST", base+path, []byte(body), "Content-Type", "application/json")
		wantStatus(t, what, resp, got, want)
	}

	// Nothing pending: no offer, no metadata; the rest refused.
	get("offer with nothing pending", base+"/device/v1/update", http.StatusNoContent)
	get("TUF metadata with nothing pending", base+"/device/v1/tuf/timestamp.json", http.StatusForbidden)
	get("twin", base+"/device/v1/twin", http.StatusForbidden)
	get("commands", base+"/device/v1/commands", http.StatusForbidden)
	post("telemetry", "/device/v1/telemetry", `{"metrics":{"t":1}}`, http.StatusForbidden)

	ro, err := sqlstore.NewRolloutService(m.db).CreateRollout(admin, cradle.RolloutSpec{ReleaseID: fix.ID,
		Target: cradle.RolloutTarget{Serials: []string{"SN-Q1"}}, Phases: []cradle.RolloutPhase{{Percent: 100}},
		FailureThreshold: cradle.FailureThreshold{Count: 1, Action: cradle.FailurePause}})
	if err != nil {
		t.Fatal(err)
	}
	var doc updateDocument
	if err := json.Unmarshal(get("offer of the remediation", base+"/device/v1/update", http.StatusOK), &doc); err != nil || doc.Release.ID != fix.ID || doc.RolloutID != ro.ID {
		t.Fatalf("offer %+v, %v; want release %s of rollout %s", doc, err, fix.ID, ro.ID)
	}
	get("TUF metadata", base+"/device/v1/tuf/timestamp.json", http.StatusOK)
	get("TUF root", base+"/device/v1/tuf/root.json", http.StatusOK)
	if got := get("the remediation's target", targetURL(fix), http.StatusOK); !bytes.Equal(got, blobs["gw-100/1.1.1/app.bin"]) {
		t.Fatal("the remediation's target differs from its image")
	}
	get("another release's target", targetURL(normal), http.StatusForbidden)
	if resp, body := fetch(t, dev.anonymous, "GET", doc.Artifact.URL, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, blobs["gw-100/1.1.1/app.bin"]) {
		t.Fatalf("the signed download of the remediation: %d", resp.StatusCode)
	}
	post("a report on the remediation", "/device/v1/update/status", fmt.Sprintf(`{"rollout_id":%q,"attempt":1,"state":"downloading"}`, ro.ID), http.StatusNoContent)
	post("software: another release's image", "/device/v1/software", fmt.Sprintf(`{"sha256":%q}`, normal.SHA256), http.StatusForbidden)
	post("software: the remediation's image", "/device/v1/software", fmt.Sprintf(`{"sha256":%q}`, fix.SHA256), http.StatusNoContent)
	post("telemetry with a remediation pending", "/device/v1/telemetry", `{"metrics":{"t":1}}`, http.StatusForbidden)

	// No longer a remediation: the attempt is no longer offered.
	if _, err := releases.SetReleaseRemediation(admin, fix.ID, false); err != nil {
		t.Fatal(err)
	}
	get("offer of a release no longer a remediation", base+"/device/v1/update", http.StatusNoContent)
	get("TUF metadata without a remediation", base+"/device/v1/tuf/timestamp.json", http.StatusForbidden)
	get("the former remediation's target", targetURL(fix), http.StatusForbidden)
	post("a report on it", "/device/v1/update/status", fmt.Sprintf(`{"rollout_id":%q,"attempt":1,"state":"installing"}`, ro.ID), http.StatusForbidden)
}
