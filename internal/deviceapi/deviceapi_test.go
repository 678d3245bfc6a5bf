package deviceapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"
)

// node is a certificate with its key.
type node struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var epoch = storetest.Epoch

func newNode(t *testing.T, parent *node, tmpl *x509.Certificate) *node {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl.SerialNumber = n.Add(n, big.NewInt(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = epoch.Add(-time.Hour), epoch.Add(365*24*time.Hour)
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &node{cert: cert, key: key}
}

func ca(name string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
}

func leaf(name string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

type env struct {
	t       *testing.T
	url     string
	root    *node
	devCA   *node
	clock   *storetest.Clock
	certs   *sqlstore.CertificateService
	devices *sqlstore.DeviceService
	admin   context.Context
	audit   *sqlstore.AuditService
	decom   *sqlstore.DecommissionService
	cmds    *sqlstore.CommandService
	srv     *deviceapi.Server
}

// refusals counts the device.auth.refused entries of a tenant.
func (e *env) refusals(tenant int64) int {
	e.t.Helper()
	action := "device.auth.refused"
	entries, err := e.audit.FindAuditEntries(cradle.NewContextWithActor(e.t.Context(), cradle.SystemActor(tenant, "test")), cradle.AuditFilter{Action: &action, Limit: cradle.MaxPageSize})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(entries)
}

func newEnv(t *testing.T, checkChain func([]*x509.Certificate) error) *env {
	t.Helper()
	ctx := t.Context()
	e := &env{t: t, clock: storetest.NewClock(epoch)}
	_, key, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: key, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.certs, e.devices = sqlstore.NewCertificateService(db), sqlstore.NewDeviceService(db)
	e.decom, e.cmds = sqlstore.NewDecommissionService(db, storetest.CommandSigner()), sqlstore.NewCommandService(db, nil)
	e.admin = cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	if _, err := sqlstore.NewTokenService(db).Bootstrap(ctx); err != nil { // creates tenant 1
		t.Fatal(err)
	}
	e.root = newNode(t, nil, ca("test root"))
	e.devCA = newNode(t, e.root, ca("device CA"))
	server := newNode(t, e.root, &x509.Certificate{Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(e.root.cert)
	inter.AddCert(e.devCA.cert)
	s := &deviceapi.Server{
		Certificate: tls.Certificate{Certificate: [][]byte{server.cert.Raw}, PrivateKey: server.key},
		Roots:       roots, Intermediates: inter, CheckChain: checkChain,
		Certs: e.certs, Devices: e.devices, Clock: e.clock,
		Audit: sqlstore.NewAuditService(db).RecordRefusal,
		// As the server wires it: the decommissioning store decides.
		Wiping: func(ctx context.Context, d *cradle.Device, c *cradle.Certificate) (bool, error) {
			err := e.decom.WipeCredential(ctx, d.Serial, c.Serial)
			switch cradle.ErrorCode(err) {
			case "":
				return true, nil
			case cradle.ENOTFOUND, cradle.ECONFLICT, cradle.EINVALID:
				return false, nil
			}
			return false, err
		},
	}
	e.audit, e.srv = sqlstore.NewAuditService(db), s
	s.HandleDecommissioning("GET /wipe", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _, _ := deviceapi.DeviceFromContext(r.Context())
		fmt.Fprintf(w, "%s %s decommissioning=%v", d.Serial, d.State, deviceapi.Decommissioning(r.Context()))
	}))
	s.Handle("GET /who", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := cradle.ActorFromContext(r.Context())
		d, c, _ := deviceapi.DeviceFromContext(r.Context())
		fmt.Fprintf(w, "%s %s %s %d", a, d.State, c.Serial, len(r.TLS.VerifiedChains))
	}), false)
	s.Handle("GET /public", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "public") }), true)
	// The quarantine's narrow door: an update route a suspended device may
	// reach, beside a route it may not.
	s.HandleRemediation("GET /device/v1/update", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _, _ := deviceapi.DeviceFromContext(r.Context())
		fmt.Fprintf(w, "update for %s %s", d.Serial, d.State)
	}))
	s.Handle("GET /device/v1/telemetry", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "telemetry") }), false)
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.TLS = s.TLSConfig()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

// device registers a device and issues it an LDevID through the store.
func (e *env) device(serial string, state cradle.State) *node {
	e.t.Helper()
	if _, err := e.devices.CreateDevice(e.admin, cradle.DeviceCreate{Serial: serial, Model: "m", State: cradle.StateProvisioned}); err != nil {
		e.t.Fatal(err)
	}
	var n *node
	self := cradle.NewContextWithActor(e.t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: serial})
	if _, err := e.certs.IssueCertificate(self, cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Deploy: true,
		States: []cradle.State{cradle.StateProvisioned},
		Issue: func(context.Context, *cradle.Device) (*x509.Certificate, error) {
			n = newNode(e.t, e.devCA, leaf(serial))
			return n.cert, nil
		}}); err != nil {
		e.t.Fatal(err)
	}
	if state != cradle.StateDeployed {
		op := cradle.NewContextWithActor(e.t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleOperator, Kind: "test", ID: "op"})
		if _, err := e.devices.TransitionDevice(op, serial, cradle.DeviceTransition{To: state}); err != nil {
			e.t.Fatal(err)
		}
	}
	return n
}

// get requests path presenting the client certificate (nil: none).
func (e *env) get(path string, client *node) (int, string) {
	e.t.Helper()
	cfg := &tls.Config{RootCAs: x509.NewCertPool()}
	cfg.RootCAs.AddCert(e.root.cert)
	if client != nil {
		cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{client.cert.Raw}, PrivateKey: client.key}}
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(e.url + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestChecks(t *testing.T) {
	e := newEnv(t, nil)
	good := e.device("SN-GOOD", cradle.StateDeployed)
	suspended := e.device("SN-SUSP", cradle.StateSuspended)
	revoked := e.device("SN-REV", cradle.StateDeployed)
	rec, err := e.certs.LookupCertificate(cradle.NewContextWithActor(t.Context(), cradle.SystemActor(0, "t")), revoked.cert.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.certs.RevokeCertificate(e.admin, rec.Serial, cradle.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	unrecorded := newNode(t, e.devCA, leaf("SN-GHOST"))
	stranger := newNode(t, newNode(t, nil, ca("other root")), leaf("SN-X"))
	serverOnly := newNode(t, e.devCA, &x509.Certificate{Subject: pkix.Name{CommonName: "SN-GOOD"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})

	for _, tc := range []struct {
		name   string
		path   string
		client *node
		status int
		body   string
	}{
		{"public without a certificate", "/public", nil, 200, "public"},
		{"public with one", "/public", good, 200, "public"},
		{"a deployed device", "/who", good, 200, "device:SN-GOOD(device) deployed " + cradle.SerialHex(good.cert.SerialNumber) + " 1"},
		{"no certificate", "/who", nil, 401, "no client certificate"},
		{"another CA", "/who", stranger, 401, "not issued by this server's manufacturing or device CA"},
		{"not for client authentication", "/who", serverOnly, 401, "is not accepted"},
		{"not on record", "/who", unrecorded, 401, "is not on record here"},
		{"revoked", "/who", revoked, 401, "was revoked at 2026-03-01T09:00:00Z (keyCompromise)"},
		{"suspended", "/who", suspended, 403, `device "SN-SUSP" is suspended`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.get(tc.path, tc.client)
			if status != tc.status || !strings.Contains(body, tc.body) {
				t.Errorf("%d %q; want %d containing %q", status, body, tc.status, tc.body)
			}
		})
	}

	// Every refusal is audited: revoked and suspended in the device's
	// tenant; the rest (no or unknown certificates) in tenant 0.
	if n := e.refusals(1); n != 2 {
		t.Errorf("%d refusals audited in tenant 1, want 2 (revoked, suspended)", n)
	}
	if n := e.refusals(0); n != 4 {
		t.Errorf("%d refusals audited in tenant 0, want 4 (no certificate, another CA, wrong key usage, not on record)", n)
	}

	// At the injected clock's time: a year on, the certificate expired.
	e.clock.Add(400 * 24 * time.Hour)
	if status, body := e.get("/who", good); status != 401 || !strings.Contains(body, "expired at") {
		t.Errorf("an expired certificate: %d %q", status, body)
	}
}

// TestRemediationRoutes: a suspended device reaches the routes mounted
// with HandleRemediation, and those alone; the other checks hold there.
func TestRemediationRoutes(t *testing.T) {
	e := newEnv(t, nil)
	good := e.device("SN-GOOD", cradle.StateDeployed)
	suspended := e.device("SN-SUSP", cradle.StateSuspended)
	rma := e.device("SN-RMA", cradle.StateRMA)
	revoked := e.device("SN-REV", cradle.StateSuspended)
	rec, err := e.certs.LookupCertificate(cradle.NewContextWithActor(t.Context(), cradle.SystemActor(0, "t")), revoked.cert.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.certs.RevokeCertificate(e.admin, rec.Serial, cradle.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		path   string
		client *node
		status int
		body   string
	}{
		{"deployed: update", "/device/v1/update", good, 200, "update for SN-GOOD deployed"},
		{"deployed: telemetry", "/device/v1/telemetry", good, 200, "telemetry"},
		{"suspended: update", "/device/v1/update", suspended, 200, "update for SN-SUSP suspended"},
		{"suspended: telemetry", "/device/v1/telemetry", suspended, 403, `device "SN-SUSP" is suspended: it may only fetch remediation updates`},
		{"suspended: another route", "/who", suspended, 403, `device "SN-SUSP" is suspended`},
		// An RMA device is refused: 403 for its state, or 401 where the
		// move to rma revoked its certificate.
		{"rma: update", "/device/v1/update", rma, 0, ""},
		{"suspended and revoked: update", "/device/v1/update", revoked, 401, "was revoked"},
		{"no certificate: update", "/device/v1/update", nil, 401, "no client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.get(tc.path, tc.client)
			if tc.status == 0 {
				if status != 401 && status != 403 {
					t.Errorf("%d %q; want a refusal (401 or 403)", status, body)
				}
				return
			}
			if status != tc.status || !strings.Contains(body, tc.body) {
				t.Errorf("%d %q; want %d containing %q", status, body, tc.status, tc.body)
			}
		})
	}
	// The broker's check (CheckPeer) refuses a suspended device: MQTT is
	// not an update route.
	if _, _, _, err := e.srv.CheckPeer(t.Context(), []*x509.Certificate{suspended.cert}); err == nil || !strings.Contains(err.Error(), "suspended") {
		t.Fatalf("CheckPeer of a suspended device: %v", err)
	}
	if _, d, _, err := e.srv.CheckPeer(t.Context(), []*x509.Certificate{good.cert}); err != nil || d.Serial != "SN-GOOD" {
		t.Fatalf("CheckPeer of a deployed device: %v", err)
	}
}

func TestCheckChain(t *testing.T) {
	e := newEnv(t, func(chain []*x509.Certificate) error {
		if chain[len(chain)-1].Subject.CommonName == "test root" {
			return errors.New("certificate chains to a test root; this server runs the production profile")
		}
		return nil
	})
	d := e.device("SN-1", cradle.StateDeployed)
	if status, body := e.get("/who", d); status != 401 || !strings.Contains(body, "chains to a test root") {
		t.Errorf("%d %q", status, body)
	}
}

// TestDecommissioningException: only routes mounted with
// HandleDecommissioning let in an eol device whose wipe is pending, only
// with an LDevID valid when the decommissioning was executed (not one
// superseded or revoked before), not once a certificate of it was
// revoked again for keyCompromise, and still once that LDevID expired.
func TestDecommissioningException(t *testing.T) {
	e := newEnv(t, nil)
	admin := cradle.NewContextWithActor(t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "test", ID: "admin"})
	decommission := func(serial string) *cradle.Decommission {
		t.Helper()
		x, err := e.decom.RequestDecommission(admin, serial, "end of life")
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	good := e.device("SN-GOOD", cradle.StateDeployed)
	wiping := e.device("SN-WIPE", cradle.StateDeployed)
	decommission("SN-WIPE")
	done := e.device("SN-DONE", cradle.StateDeployed)
	x := decommission("SN-DONE")
	e.confirm("SN-DONE", x, done)
	compromised := e.device("SN-COMP", cradle.StateDeployed)
	decommission("SN-COMP")
	if _, err := e.certs.RevokeCertificate(e.admin, cradle.SerialHex(compromised.cert.SerialNumber), cradle.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	old := e.device("SN-OLD", cradle.StateDeployed)
	renewed := e.renew("SN-OLD", old)
	decommission("SN-OLD")
	suspended := e.device("SN-SUSP", cradle.StateSuspended)

	cases := []struct {
		name   string
		path   string
		client *node
		status int
		body   string
	}{
		{"a deployed device", "/wipe", good, 200, "SN-GOOD deployed decommissioning=false"},
		{"being wiped", "/wipe", wiping, 200, "SN-WIPE eol decommissioning=true"},
		{"being wiped, another route", "/who", wiping, 401, "cessationOfOperation"},
		{"wipe confirmed", "/wipe", done, 401, "was revoked"},
		{"revoked again for key compromise", "/wipe", compromised, 401, "keyCompromise"},
		{"an LDevID superseded before the decommissioning", "/wipe", old, 401, "was revoked"},
		{"the LDevID valid at the decommissioning", "/wipe", renewed, 200, "SN-OLD eol decommissioning=true"},
		{"suspended", "/wipe", suspended, 403, "is suspended"},
		{"no certificate", "/wipe", nil, 401, "no client certificate"},
	}
	run := func() {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				status, body := e.get(tc.path, tc.client)
				if status != tc.status || !strings.Contains(body, tc.body) {
					t.Errorf("%d %q; want %d containing %q", status, body, tc.status, tc.body)
				}
			})
		}
	}
	run()
	// Months later the device comes back, its LDevID expired: the wipe
	// route still takes it, nothing else does.
	e.clock.Add(wiping.cert.NotAfter.Add(24 * time.Hour).Sub(e.clock.Now()))
	cases = cases[1:3]
	cases[1].body = "expired"
	run()
}

// renew issues serial a new LDevID replacing n's (superseded).
func (e *env) renew(serial string, n *node) *node {
	e.t.Helper()
	var out *node
	self := cradle.NewContextWithActor(e.t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: serial})
	if _, err := e.certs.IssueCertificate(self, cradle.CertificateIssue{DeviceSerial: serial, Kind: cradle.CertLDevID, Renews: cradle.SerialHex(n.cert.SerialNumber),
		States: []cradle.State{cradle.StateDeployed},
		Issue: func(context.Context, *cradle.Device) (*x509.Certificate, error) {
			out = newNode(e.t, e.devCA, leaf(serial))
			return out.cert, nil
		}}); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// confirm records serial's signed tombstone for its wipe command.
func (e *env) confirm(serial string, x *cradle.Decommission, n *node) {
	e.t.Helper()
	self := cradle.NewContextWithActor(e.t.Context(), cradle.Actor{TenantID: 1, Role: cradle.RoleDevice, Kind: "device", ID: serial})
	c, err := e.cmds.FindDeviceCommand(e.admin, serial, x.CommandID)
	if err != nil {
		e.t.Fatal(err)
	}
	payload, _ := json.Marshal(cradle.Tombstone{Serial: serial, CommandID: c.ID, Sequence: c.Sequence, Lifecycle: "eol", At: e.clock.Now(),
		Erased: []cradle.ErasedObject{{Store: "file", Kind: "key", Name: "ldevid.key"}}})
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, n.key, sum[:])
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.decom.RecordTombstone(self, serial, cradle.SignedTombstone{Payload: payload, Signature: sig, Certificate: n.cert.Raw}); err != nil {
		e.t.Fatal(err)
	}
}
