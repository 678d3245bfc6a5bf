package hawkbit_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/compat/hawkbit"
	"cradle/internal/ota"
	"cradle/internal/sqlstore"
)

// env is a real SQLite store with a tenant "default", a signed release of
// model swu-gw, an artifact store holding it, and the DDI handler over
// them on a TLS test server.
type env struct {
	tb       testing.TB
	db       *sqlstore.DB
	tenant   int64
	admin    context.Context
	protocol cradle.ProtocolService
	rollouts cradle.RolloutService
	release  *cradle.Release
	payload  []byte
	handler  *hawkbit.Handler
	srv      *httptest.Server
	sched    *ota.Scheduler
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	dir := tb.TempDir()
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, filepath.Join(dir, "cradle.db"), sqlstore.Options{AuditKey: key})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	tn, err := sqlstore.NewTenantService(db).CreateTenant(ctx, "default")
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{tb: tb, db: db, tenant: tn.ID, protocol: sqlstore.NewProtocolService(db), rollouts: sqlstore.NewRolloutService(db)}
	e.admin = cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: tn.ID, Role: cradle.RoleAdmin, Kind: "test", ID: "admin"})

	store := artifact.NewDir(filepath.Join(dir, "artifacts"))
	e.payload = bytes.Repeat([]byte("cradle swu payload "), 1000)
	sum := sha256.Sum256(e.payload)
	d, _ := artifact.ParseDigest(hex.EncodeToString(sum[:]))
	if _, err := store.Put(ctx, bytes.NewReader(e.payload), artifact.Expect{Digest: d, Size: int64(len(e.payload))}); err != nil {
		tb.Fatal(err)
	}
	releases := sqlstore.NewReleaseService(db)
	rel, err := releases.CreateRelease(e.admin, cradle.ReleaseCreate{Model: "swu-gw", Version: "2.0.0", Kind: cradle.ReleaseSWUpdate,
		SHA256: d.String(), Size: int64(len(e.payload)), FileName: "update.swu", SecurityCounter: 1, ArtifactName: "gw 2.0.0"})
	if err != nil {
		tb.Fatal(err)
	}
	if e.release, err = releases.MarkReleaseSigned(e.admin, rel.ID, "swu-gw/2.0.0/update.swu", nil); err != nil {
		tb.Fatal(err)
	}
	signer, err := artifact.NewURLSigner(bytes.Repeat([]byte{7}, artifact.MinKeySize), nil)
	if err != nil {
		tb.Fatal(err)
	}
	e.handler = &hawkbit.Handler{
		Protocol: e.protocol, Updates: sqlstore.NewUpdateService(db), Devices: sqlstore.NewDeviceService(db),
		Rollouts: e.rollouts, Releases: releases, Artifacts: store, Blobs: &artifact.Handler{Store: store, Signer: signer},
		TenantName: func(_ context.Context, id int64) (string, error) {
			if id == tn.ID {
				return "default", nil
			}
			return "", cradle.Errorf(cradle.ENOTFOUND, "tenant %d", id)
		},
		PollingSleep: 30 * time.Second,
	}
	mux := http.NewServeMux()
	mux.Handle("/", e.handler)
	e.srv = httptest.NewTLSServer(mux)
	tb.Cleanup(e.srv.Close)
	// As the server wires it: the scheduler's Notify ends the handler's
	// belief that a started device has nothing pending.
	e.sched = &ota.Scheduler{Store: sqlstore.NewRolloutStore(db), Holder: "test", LeaseTTL: 15 * time.Second, JoinInterval: time.Minute,
		Notify: func(_ context.Context, tenantID int64, serials []string) { e.handler.Invalidate(tenantID, serials) }}
	return e
}

// device makes a provisioned device with a target token and returns the
// token.
func (e *env) device(serial string, labels map[string]string) string {
	e.tb.Helper()
	if _, err := sqlstore.NewDeviceService(e.db).CreateDevice(e.admin, cradle.DeviceCreate{Serial: serial, Model: "swu-gw", Labels: labels, State: cradle.StateProvisioned}); err != nil {
		e.tb.Fatal(err)
	}
	tok, err := e.protocol.CreateDeviceToken(e.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial})
	if err != nil {
		e.tb.Fatal(err)
	}
	return tok.Secret
}

// rollout rolls the release out to the devices with label hb=group and
// steps the scheduler until they are started.
func (e *env) rollout(group string) *cradle.Rollout {
	e.tb.Helper()
	return e.rolloutOf(e.release.ID, group)
}

// rolloutOf is rollout with another release.
func (e *env) rolloutOf(releaseID, group string) *cradle.Rollout {
	e.tb.Helper()
	ro, err := e.rollouts.CreateRollout(e.admin, cradle.RolloutSpec{ReleaseID: releaseID, Target: cradle.RolloutTarget{Selector: "hb=" + group},
		Phases: []cradle.RolloutPhase{{Percent: 100}}, FailureThreshold: cradle.FailureThreshold{Count: 10, Action: cradle.FailurePause}})
	if err != nil {
		e.tb.Fatal(err)
	}
	e.step()
	return ro
}

func (e *env) step() {
	e.tb.Helper()
	for range 3 {
		if _, err := e.sched.Step(context.Background()); err != nil {
			e.tb.Fatal(err)
		}
	}
}

func (e *env) state(rolloutID, serial string) *cradle.RolloutDevice {
	e.tb.Helper()
	devs, err := e.rollouts.FindRolloutDevices(e.admin, rolloutID, cradle.RolloutDeviceFilter{})
	if err != nil {
		e.tb.Fatal(err)
	}
	for _, d := range devs {
		if d.Serial == serial {
			return d
		}
	}
	e.tb.Fatalf("%s not in rollout %s", serial, rolloutID)
	return nil
}

// do makes a request with a target token ("" for none).
func (e *env) do(method, path, token, body string) *http.Response {
	e.tb.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "TargetToken "+token)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.tb.Fatal(err)
	}
	return resp
}
