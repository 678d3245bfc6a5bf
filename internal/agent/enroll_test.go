package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/deviceapi"
	"cradle/internal/est"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"
)

// estStack is the server side in-process: a test PKI, the SQLite store,
// the PKI's Authority behind the EST server behind the device listener,
// on a real TLS port, all on one settable clock.
type estStack struct {
	t       testing.TB
	h       *pki.Hierarchy
	keys    map[string]crypto.Signer
	clock   *storetest.Clock
	devices *sqlstore.DeviceService
	certs   cradle.CertificateService
	auth    *pki.Authority
	url     string
	// down makes every connection fail, in the TLS handshake or, for one
	// already open, by dropping the request without an answer.
	down atomic.Bool
	// requests counts requests that reached the listener.
	requests atomic.Int64

	mu         sync.Mutex
	serverCert *tls.Certificate
}

func newESTStack(t testing.TB, policy pki.LDevIDPolicy) *estStack {
	t.Helper()
	ctx := context.Background()
	s := &estStack{t: t, keys: map[string]crypto.Signer{}, clock: storetest.NewClock(storetest.Epoch)}
	var err error
	s.h, err = pki.Init(ctx, pki.InitOptions{Profile: pki.ProfileTest, Org: "Acme", Hostnames: []string{"127.0.0.1"}, Keys: s.key, Now: s.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	_, auditKey, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: auditKey, Clock: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := sqlstore.NewTokenService(db).Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	s.devices = sqlstore.NewDeviceService(db)
	store := sqlstore.NewCertificateService(db)
	auth := &pki.Authority{
		Hierarchy: s.h, Signers: s.keys, Certificates: store, CAStore: store,
		TenantName: func(context.Context, int64) (string, error) { return "default", nil },
		Policy:     policy, URLHost: "127.0.0.1", Clock: s.clock,
	}
	s.certs, s.auth = auth.WrapCertificates(store), auth
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(s.h.Root)
	for _, c := range s.h.IssuingCAs() {
		inter.AddCert(c)
	}
	// The listener's intermediates are those of the start: after a
	// rotation, devices must present their issuing CA themselves.
	listener := &deviceapi.Server{
		Certificate: tls.Certificate{Certificate: [][]byte{s.h.Server.Raw}, PrivateKey: s.keys[pki.NameServer]},
		Roots:       roots, Intermediates: inter,
		CheckChain: func(c []*x509.Certificate) error {
			if err := pki.CheckProfile(c, false); err != nil {
				return err
			}
			return s.h.CheckNotRetired(c)
		},
		Certs: store, Devices: s.devices, Clock: s.clock,
	}
	estServer := &est.Server{CA: auth, Now: s.clock.Now}
	listener.Handle("GET /.well-known/est/cacerts", estServer, true)
	listener.Handle("/.well-known/est/", estServer, false)
	inner := listener.Handler()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			panic(http.ErrAbortHandler)
		}
		s.requests.Add(1)
		inner.ServeHTTP(w, r)
	})
	// Not httptest: its own certificate would win over GetCertificate for
	// clients that send no SNI (an IP address).
	cfg := listener.TLSConfig()
	cfg.Certificates = nil
	cfg.GetCertificate = s.getServerCert
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, TLSConfig: cfg, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	s.url = "https://" + ln.Addr().String()
	return s
}

// key is the hierarchy's KeyFunc: it makes keys on demand.
func (s *estStack) key(name string) (crypto.Signer, error) {
	if k, ok := s.keys[name]; ok {
		return k, nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s.keys[name] = k
	return k, err
}

// getServerCert serves the server TLS certificate, renewing it at two
// thirds of its life on the virtual clock, as an operator would: the
// devices check it at their own (virtual) time.
func (s *estStack) getServerCert(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.down.Load() {
		return nil, errors.New("server down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if s.serverCert == nil || !now.Before(pki.RenewAt(s.serverCert.Leaf)) {
		c := s.h.Server
		if s.serverCert != nil {
			var err error
			c, err = pki.Issue(context.Background(), s.h.Root, s.keys[pki.NameRoot], s.keys[pki.NameServer].Public(), &x509.Certificate{},
				append(pki.ServerTLS("Acme", []string{"127.0.0.1"}, now, pki.ServerLifetime), pki.KeyPolicy())...)
			if err != nil {
				return nil, err
			}
		}
		s.serverCert = &tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: s.keys[pki.NameServer], Leaf: c}
	}
	return s.serverCert, nil
}

// setClock moves the server's clock to now (never back).
func (s *estStack) setClock(now time.Time) {
	if d := now.Sub(s.clock.Now()); d > 0 {
		s.clock.Add(d)
	}
}

// provision makes a simulated unit in dir as the factory station leaves
// it: its IDevID key, the IDevID from the manufacturing CA, the factory
// data written and locked, the lifecycle fuse at provisioned, and the
// device on record as provisioned with its IDevID.
func (s *estStack) provision(dir, serial string) *hw.Device {
	s.t.Helper()
	ctx := context.Background()
	dev, err := hw.CreateSimDevice(dir, "uid-"+serial)
	if err != nil {
		s.t.Fatal(err)
	}
	key, err := dev.Keys.CreateKey(ctx, agent.DefaultKeyName, hw.ECDSAP256)
	if err != nil {
		s.t.Fatal(err)
	}
	idevid, err := pki.Issue(ctx, s.h.ManufacturingCA, s.keys[pki.NameManufacturingCA], key.Public(), &x509.Certificate{},
		append(pki.IDevID(pki.IDevIDConfig{Organization: "Acme"}, serial, nil, s.clock.Now()), pki.KeyPolicy())...)
	if err != nil {
		s.t.Fatal(err)
	}
	info, _ := json.Marshal(map[string]string{"serial": serial, "model": "gw-100"})
	files := map[string][]byte{
		agent.FactoryFileIDevID:     pemOf(idevid, s.h.ManufacturingCA),
		agent.FactoryFileRoot:       pemOf(s.h.Root),
		agent.FactoryFileDeviceInfo: info,
	}
	if err := dev.FactoryData.Write(ctx, files); err != nil {
		s.t.Fatal(err)
	}
	if err := dev.FactoryData.Lock(ctx); err != nil {
		s.t.Fatal(err)
	}
	w, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	if err := dev.Fuses.Program(ctx, hw.FuseLifecycle, w); err != nil {
		s.t.Fatal(err)
	}
	factory := cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: 1, Role: cradle.RoleFactory, Kind: "test", ID: "line-1"})
	if _, err := s.devices.CreateDevice(factory, cradle.DeviceCreate{Serial: serial, Model: "gw-100", State: cradle.StateFactory}); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.certs.RecordCertificate(factory, serial, cradle.CertIDevID, idevid); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.devices.TransitionDevice(factory, serial, cradle.DeviceTransition{To: cradle.StateProvisioned}); err != nil {
		s.t.Fatal(err)
	}
	return dev
}

func (s *estStack) deviceState(serial string) cradle.State {
	s.t.Helper()
	sys := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(1, "test"))
	d, err := s.devices.FindDeviceBySerial(sys, serial)
	if err != nil {
		s.t.Fatal(err)
	}
	return d.State
}

func (s *estStack) rotate() string {
	s.t.Helper()
	name, err := s.h.RotateDeviceCA(context.Background(), s.keys[pki.NameRoot], s.key, "127.0.0.1", s.clock.Now())
	if err != nil {
		s.t.Fatal(err)
	}
	return name
}

func pemOf(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// leaf returns the current LDevID of st.
func leaf(t testing.TB, st agent.State) *x509.Certificate {
	t.Helper()
	if st.Current == nil {
		t.Fatalf("no current LDevID (status %s, last error %q)", st.Status, st.LastError)
	}
	blk, _ := pem.Decode([]byte(st.Current.Chain))
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// maxRand draws the largest value, so backoff delays are their bound.
type maxRand struct{}

func (maxRand) Int64N(n int64) int64 { return n - 1 }

type unitUnderTest struct {
	dev  *hw.Device
	dir  string
	opts agent.IdentityOptions
}

func (s *estStack) unit(t *testing.T, serial string) *unitUnderTest {
	t.Helper()
	dir := t.TempDir()
	dev := s.provision(filepath.Join(dir, "unit"), serial)
	return &unitUnderTest{dev: dev, dir: dir, opts: agent.IdentityOptions{Device: dev, StateDir: filepath.Join(dir, "state"), ServerURL: s.url}}
}

func (u *unitUnderTest) open(t *testing.T, now time.Time) *agent.Identity {
	t.Helper()
	id, err := agent.OpenIdentity(u.opts, now)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func keyExists(t *testing.T, dev *hw.Device, name string) bool {
	t.Helper()
	_, err := dev.Keys.Key(context.Background(), name)
	if err != nil && !errors.Is(err, hw.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func lifecycle(t *testing.T, dev *hw.Device) hw.Lifecycle {
	t.Helper()
	f, err := dev.Fuses.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	l, err := hw.ParseLifecycle(f[hw.FuseLifecycle])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestEnrollThenRenew: a provisioned unit enrolls with its IDevID and
// gets an LDevID naming its serial from the device CA; the server and the
// fuses say deployed. Nothing happens before two thirds of the lifetime;
// then it renews with a new key, and the old key is destroyed.
func TestEnrollThenRenew(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	ctx := t.Context()
	u := s.unit(t, "SN-1")
	now := s.clock.Now()
	id := u.open(t, now)

	next, err := id.Step(ctx, now)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	st := id.State()
	first := leaf(t, st)
	if st.Status != agent.StatusEnrolled || st.Current.KeyName != "ldevid-1" || st.Previous != nil {
		t.Fatalf("after enrollment: status %s, current key %s, previous %v; want enrolled, ldevid-1, none", st.Status, st.Current.KeyName, st.Previous)
	}
	if first.Subject.SerialNumber != "SN-1" || first.Subject.CommonName != "SN-1" {
		t.Errorf("LDevID subject %s, want CN and serialNumber SN-1", first.Subject)
	}
	if err := first.CheckSignatureFrom(s.h.DeviceCA()); err != nil {
		t.Errorf("LDevID not from the device CA: %v", err)
	}
	if got := s.deviceState("SN-1"); got != cradle.StateDeployed {
		t.Errorf("server says the device is %s, want deployed", got)
	}
	if got := lifecycle(t, u.dev); got != hw.LifecycleDeployed {
		t.Errorf("lifecycle fuse says %s, want deployed", got)
	}
	if !keyExists(t, u.dev, agent.DefaultKeyName) || !keyExists(t, u.dev, "ldevid-1") {
		t.Error("the IDevID key or the LDevID key is missing")
	}
	if want := pki.RenewAt(first); !next.Equal(want) || !st.RenewAt.Equal(want) || !agent.RenewAt(first).Equal(want) {
		t.Fatalf("next step %s, renew at %s; want pki.RenewAt %s", next, st.RenewAt, want)
	}
	if tc, err := id.Certificate(ctx); err != nil || len(tc.Certificate) != 2 || !tc.Leaf.Equal(first) {
		t.Errorf("Certificate() = %d certs, %v; want the LDevID and its issuer", len(tc.Certificate), err)
	}

	// Before RenewAt, a step does nothing and touches no server.
	before := s.requests.Load()
	if n, err := id.Step(ctx, next.Add(-time.Minute)); err != nil || !n.Equal(next) || s.requests.Load() != before {
		t.Fatalf("early step: next %s, %v, %d requests; want %s, nil, none", n, err, s.requests.Load()-before, next)
	}

	// A restarted agent reads the same state.
	id = u.open(t, next.Add(-time.Minute))
	if leaf(t, id.State()).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("a reopened identity lost the LDevID")
	}

	s.setClock(next)
	n2, err := id.Step(ctx, next)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	st = id.State()
	second := leaf(t, st)
	if st.Status != agent.StatusEnrolled || st.Current.KeyName != "ldevid-2" || second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatalf("after renewal: status %s, key %s; want enrolled with a new certificate and key ldevid-2", st.Status, st.Current.KeyName)
	}
	if second.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
		t.Error("the renewal kept the old key")
	}
	if keyExists(t, u.dev, "ldevid-1") || !keyExists(t, u.dev, "ldevid-2") {
		t.Error("after confirmation the old key must be destroyed and the new one kept")
	}
	if !n2.Equal(pki.RenewAt(second)) || !second.NotAfter.After(first.NotAfter) {
		t.Errorf("next renewal %s, want %s", n2, pki.RenewAt(second))
	}
}

// TestRenewalFailureKeepsIdentity: with the server down, a renewal fails,
// the working LDevID and its key stay, and retries back off exponentially
// (full jitter, bounded by Base·2^(n−1) and Max); when the server is back
// the renewal succeeds.
func TestRenewalFailureKeepsIdentity(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	ctx := t.Context()
	u := s.unit(t, "SN-2")
	u.opts.Rand = maxRand{}
	u.opts.Backoff = agent.Backoff{Base: time.Minute, Max: time.Hour}
	now := s.clock.Now()
	id := u.open(t, now)
	next, err := id.Step(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	working := leaf(t, id.State())

	s.down.Store(true)
	now = next
	s.setClock(now)
	for i, want := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour} {
		n, err := id.Step(ctx, now)
		if err == nil {
			t.Fatalf("attempt %d succeeded with the server down", i+1)
		}
		st := id.State()
		if got := n.Sub(now); got != want {
			t.Errorf("attempt %d: retry after %s, want %s", i+1, got, want)
		}
		if st.Failures != i+1 || st.LastError == "" || st.Status != agent.StatusEnrolled {
			t.Errorf("attempt %d: failures %d, status %s, last error %q", i+1, st.Failures, st.Status, st.LastError)
		}
		if c := leaf(t, st); !c.Equal(working) || st.Current.KeyName != "ldevid-1" || !keyExists(t, u.dev, "ldevid-1") {
			t.Fatalf("attempt %d: the working identity changed or lost its key", i+1)
		}
		if keyExists(t, u.dev, fmt.Sprintf("ldevid-%d", 2)) {
			t.Errorf("attempt %d: a failed attempt left its new key behind", i+1)
		}
		// A step before the retry time does nothing.
		if n2, err := id.Step(ctx, n.Add(-time.Second)); err != nil || !n2.Equal(n) {
			t.Errorf("attempt %d: early step: %s, %v", i+1, n2, err)
		}
		now = n
		s.setClock(now)
	}
	// The state on disk says the same after a restart.
	id = u.open(t, now)
	if st := id.State(); st.Failures != 8 || !leaf(t, st).Equal(working) {
		t.Fatalf("reopened: failures %d", st.Failures)
	}

	s.down.Store(false)
	if _, err := id.Step(ctx, now); err != nil {
		t.Fatalf("renewal once the server is back: %v", err)
	}
	st := id.State()
	if st.Failures != 0 || leaf(t, st).Equal(working) || keyExists(t, u.dev, "ldevid-1") {
		t.Fatalf("after recovery: failures %d, renewed %v", st.Failures, !leaf(t, st).Equal(working))
	}
}

// TestBackoffFullJitter: delays are drawn in (0, bound] with the bound
// doubling up to Max.
func TestBackoffFullJitter(t *testing.T) {
	b := agent.Backoff{Base: time.Second, Max: time.Minute}
	var lo zeroRand
	for n, bound := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 6: 32 * time.Second, 7: time.Minute, 100: time.Minute} {
		if got := b.Delay(n, maxRand{}); got != bound {
			t.Errorf("Delay(%d) at most %s, want %s", n, got, bound)
		}
		if got := b.Delay(n, lo); got <= 0 || got > time.Millisecond {
			t.Errorf("Delay(%d) at least %s, want just above 0", n, got)
		}
	}
}

type zeroRand struct{}

func (zeroRand) Int64N(int64) int64 { return 0 }

// TestDeviceCARotation: after the server rotates its device CA, the unit
// renews its old-CA LDevID into one from the new CA, learns the new CA
// from /cacerts, and renews again with the new one, which the listener
// only knows through the chain the unit presents.
func TestDeviceCARotation(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	ctx := t.Context()
	u := s.unit(t, "SN-3")
	now := s.clock.Now()
	id := u.open(t, now)
	next, err := id.Step(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	oldCA := s.h.DeviceCA()
	s.setClock(now.Add(24 * time.Hour))
	name := s.rotate()

	for round := 1; round <= 2; round++ {
		s.setClock(next)
		if next, err = id.Step(ctx, next); err != nil {
			t.Fatalf("renewal %d after the rotation: %v", round, err)
		}
		st := id.State()
		c := leaf(t, st)
		if err := c.CheckSignatureFrom(s.h.DeviceCA()); err != nil {
			t.Fatalf("renewal %d: LDevID not from the new device CA %s: %v", round, name, err)
		}
		tc, err := id.Certificate(ctx)
		if err != nil || len(tc.Certificate) != 2 || string(tc.Certificate[1]) != string(s.h.DeviceCA().Raw) {
			t.Fatalf("renewal %d: the presented chain is not the LDevID and the new CA (%v)", round, err)
		}
		cas, _ := pem.Decode([]byte(st.CACerts))
		if cas == nil || string(cas.Bytes) != string(s.h.DeviceCA().Raw) {
			t.Errorf("renewal %d: the stored CA certificates do not start with the new device CA", round)
		}
	}
	if s.h.DeviceCA().Equal(oldCA) {
		t.Fatal("the rotation did not happen")
	}
}

// TestExpiredLDevIDEnrollsAgain: a unit that was off past its LDevID's
// expiry enrolls again with its IDevID and keeps going.
func TestExpiredLDevIDEnrollsAgain(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour})
	ctx := t.Context()
	u := s.unit(t, "SN-4")
	now := s.clock.Now()
	id := u.open(t, now)
	if _, err := id.Step(ctx, now); err != nil {
		t.Fatal(err)
	}
	first := leaf(t, id.State())
	now = first.NotAfter.Add(time.Hour)
	s.setClock(now)
	if _, err := id.Step(ctx, now); err != nil {
		t.Fatalf("re-enroll after expiry: %v", err)
	}
	st := id.State()
	if c := leaf(t, st); !c.NotAfter.After(now) || st.Status != agent.StatusEnrolled || keyExists(t, u.dev, first.Subject.CommonName) || keyExists(t, u.dev, "ldevid-1") {
		t.Fatalf("after re-enrolling: status %s, not after %s", st.Status, c.NotAfter)
	}
}

// TestRestartGuard: more than MaxStarts starts within Window trip the
// guard: the unit holds off, says why, touches no server, and enrolls once
// the hold is over.
func TestRestartGuard(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{})
	ctx := t.Context()
	u := s.unit(t, "SN-5")
	u.opts.Guard = agent.RestartGuard{Window: 10 * time.Minute, MaxStarts: 5, Hold: time.Hour}
	now := s.clock.Now()
	// Starts spread wider than the window never trip it.
	for i := range 12 {
		id := u.open(t, now.Add(time.Duration(i)*3*time.Minute))
		if st := id.State(); !st.HoldUntil.IsZero() {
			t.Fatalf("start %d, 3 minutes apart, tripped the guard", i+1)
		}
	}
	now = now.Add(time.Hour)
	var id *agent.Identity
	for i := range 6 {
		id = u.open(t, now.Add(time.Duration(i)*time.Second))
	}
	now = now.Add(5 * time.Second)
	before := s.requests.Load()
	next, err := id.Step(ctx, now)
	if !errors.Is(err, agent.ErrRestartLoop) || !next.Equal(now.Add(time.Hour)) {
		t.Fatalf("step after 6 starts in 5 s: %s, %v; want a hold of an hour wrapping ErrRestartLoop", next.Sub(now), err)
	}
	t.Logf("the guard says: %v", err)
	if s.requests.Load() != before || id.State().Status != agent.StatusUnenrolled {
		t.Fatal("the agent acted during the hold")
	}
	// A restart during the hold does not end it.
	id = u.open(t, now.Add(time.Minute))
	if _, err := id.Step(ctx, now.Add(2*time.Minute)); !errors.Is(err, agent.ErrRestartLoop) {
		t.Fatalf("a restart ended the hold: %v", err)
	}
	s.setClock(next)
	if _, err := id.Step(ctx, next); err != nil {
		t.Fatalf("after the hold: %v", err)
	}
	if id.State().Status != agent.StatusEnrolled {
		t.Fatal("the unit did not enroll after the hold")
	}
}

// TestNotProvisioned: a unit still in the factory stage, or without
// factory data, is refused before any network traffic.
func TestNotProvisioned(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{})
	ctx := t.Context()
	dir := t.TempDir()
	dev, err := hw.CreateSimDevice(filepath.Join(dir, "unit"), "uid-x")
	if err != nil {
		t.Fatal(err)
	}
	id, err := agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: filepath.Join(dir, "state"), ServerURL: s.url}, s.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.Step(ctx, s.clock.Now()); !errors.Is(err, agent.ErrNotProvisioned) {
		t.Fatalf("factory-stage unit: %v, want ErrNotProvisioned", err)
	}
	w, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	dev.Fuses.Program(ctx, hw.FuseLifecycle, w)
	if _, err := id.Step(ctx, id.State().NextAttempt); !errors.Is(err, agent.ErrNotProvisioned) {
		t.Fatalf("unit without factory data: %v, want ErrNotProvisioned", err)
	}
	if s.requests.Load() != 0 {
		t.Fatal("a unit that cannot enroll talked to the server")
	}
}

// TestInterruptedSteps: a key left by a crash before its certificate was
// stored is replaced, not reused; a confirmation cut short (here the fuse
// write fails) leaves the new LDevID stored and is finished by the next
// step, after a restart too.
func TestInterruptedSteps(t *testing.T) {
	s := newESTStack(t, pki.LDevIDPolicy{})
	ctx := t.Context()
	u := s.unit(t, "SN-6")
	leftover, err := u.dev.Keys.CreateKey(ctx, "ldevid-1", hw.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	now := s.clock.Now()
	id := u.open(t, now)
	u.dev.Sim.FailNext(hw.OpProgram, errors.New("power cut"))
	next, err := id.Step(ctx, now)
	if err == nil || !strings.Contains(err.Error(), "power cut") {
		t.Fatalf("step with a failing fuse write: %v", err)
	}
	st := id.State()
	if st.Status != agent.StatusConfirming || st.Current == nil || st.Current.KeyName != "ldevid-1" {
		t.Fatalf("after the cut: status %s; want confirming with ldevid-1 stored", st.Status)
	}
	if leaf(t, st).PublicKey.(*ecdsa.PublicKey).Equal(leftover.Public()) {
		t.Fatal("the key a crash left behind was reused")
	}
	if got := lifecycle(t, u.dev); got != hw.LifecycleProvisioned {
		t.Fatalf("lifecycle %s after the failed fuse write", got)
	}
	id = u.open(t, next)
	if _, err := id.Step(ctx, next); err != nil {
		t.Fatalf("finishing the confirmation: %v", err)
	}
	if st := id.State(); st.Status != agent.StatusEnrolled || st.Failures != 0 || lifecycle(t, u.dev) != hw.LifecycleDeployed {
		t.Fatalf("after the retry: status %s, failures %d", st.Status, st.Failures)
	}
}
