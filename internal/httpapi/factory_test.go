package httpapi_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
)

// testHierarchy is a test-profile PKI shared by the factory tests: it
// issues station certificates (device CA) and IDevIDs (manufacturing CA).
type testHierarchy struct {
	h         *pki.Hierarchy
	keys      map[string]crypto.Signer
	authority *pki.Authority
}

var (
	hierarchyOnce sync.Once
	hierarchy     *testHierarchy
	hierarchyErr  error
)

func sharedHierarchy(t testing.TB) *testHierarchy {
	t.Helper()
	hierarchyOnce.Do(func() {
		keys := map[string]crypto.Signer{}
		h, err := pki.Init(context.Background(), pki.InitOptions{Profile: pki.ProfileTest, Org: "Acme", Hostnames: []string{"127.0.0.1"},
			Keys: func(name string) (crypto.Signer, error) {
				if k, ok := keys[name]; ok {
					return k, nil
				}
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				keys[name] = k
				return k, err
			}})
		if err != nil {
			hierarchyErr = err
			return
		}
		hierarchy = &testHierarchy{h: h, keys: keys, authority: &pki.Authority{Hierarchy: h, Signers: keys, URLHost: "127.0.0.1"}}
	})
	if hierarchyErr != nil {
		t.Fatal(hierarchyErr)
	}
	return hierarchy
}

// stationIssuer is what cmd/cradle wires as Server.StationIssuer.
func (th *testHierarchy) stationIssuer(ctx context.Context, name string, csr *x509.CertificateRequest) (*x509.Certificate, []*x509.Certificate, error) {
	c, err := th.authority.IssueStation(ctx, name, csr)
	if err != nil {
		return nil, nil, err
	}
	return c, []*x509.Certificate{th.h.DeviceCA(), th.h.Root}, nil
}

// idevid issues an IDevID for serial from the manufacturing CA.
func (th *testHierarchy) idevid(t testing.TB, serial string) *x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := pki.Issue(context.Background(), th.h.ManufacturingCA, th.keys[pki.NameManufacturingCA], k.Public(), &x509.Certificate{},
		append(pki.IDevID(pki.IDevIDConfig{}, serial, nil, time.Now()), pki.KeyPolicy())...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "station"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// factoryFixture is a tenant's factory floor set up through the store:
// a batch, a MAC pool and an enrolled station with its key.
type factoryFixture struct {
	factory *sqlstore.FactoryService
	sys     context.Context // system actor of the tenant
	line    context.Context // a factory-role actor of the tenant
	batch   string
	station string
	key     crypto.Signer
	th      *testHierarchy
	units   atomic.Int64
}

const fixtureBatch, fixtureStation = "B-FIX", "line-fix"

func newFactoryFixture(t testing.TB, db *sqlstore.DB, tenant int64) *factoryFixture {
	t.Helper()
	fx := &factoryFixture{factory: sqlstore.NewFactoryService(db), sys: cradle.NewContextWithActor(context.Background(), cradle.SystemActor(tenant, "test")),
		batch: fixtureBatch, station: fixtureStation, th: sharedHierarchy(t)}
	fx.line = cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: tenant, Role: cradle.RoleFactory, Kind: "token", ID: "tok_fixture"})
	fx.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := fx.factory.CreateBatch(fx.sys, cradle.BatchCreate{ID: fx.batch, Model: "gw-100", HardwareRevision: "b", Quantity: 500,
		FirmwareVersion: "1.0.0", Profile: cradle.ProfileTest, SerialPattern: "FX-{seq:04}"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.factory.AddMACRange(fx.sys, fmt.Sprintf("02:%02x:00:00:00:00", tenant), fmt.Sprintf("02:%02x:00:00:ff:ff", tenant)); err != nil {
		t.Fatal(err)
	}
	csr, err := httpapi.ParseCSR(string(csrPEM(t, fx.key)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.factory.EnrollStation(fx.sys, cradle.StationEnroll{Name: fx.station, Profile: cradle.ProfileTest,
		Issue: func(ctx context.Context) (*x509.Certificate, error) {
			return fx.th.authority.IssueStation(ctx, fx.station, csr)
		}}); err != nil {
		t.Fatal(err)
	}
	return fx
}

// allocate hands the fixture's station one new unit.
func (fx *factoryFixture) allocate(t testing.TB) cradle.UnitAllocation {
	t.Helper()
	units, err := fx.factory.AllocateUnits(fx.sys, fx.batch, fx.station, 1)
	if err != nil {
		t.Fatal(err)
	}
	return units[0]
}

// record returns a trace record of unit u by the fixture's station:
// provisioned (with an IDevID) or failed.
func (fx *factoryFixture) record(t testing.TB, u cradle.UnitAllocation, status cradle.UnitStatus) *cradle.TraceRecord {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	r := &cradle.TraceRecord{ID: fmt.Sprintf("rec-%s-%d", u.Serial, fx.units.Add(1)), Batch: u.Batch, Station: fx.station, Operator: "ann",
		Profile: cradle.ProfileTest, Serial: u.Serial, MAC: u.MAC, Model: "gw-100", HardwareRevision: "b", RMA: u.RMA, Status: status,
		StartedAt: now.Add(-time.Minute), FinishedAt: now, FirmwareVersion: "1.0.0",
		Fuses: map[string]string{"secure_boot": "01", "debug_lock": "01", "image_key_hash": "ab12", "lifecycle": "02", "anti_rollback": "00"},
		Tests: []cradle.TestResult{{Name: "flash", Passed: true}, {Name: "radio", Passed: status == cradle.UnitProvisioned}}}
	if status == cradle.UnitProvisioned {
		c := fx.th.idevid(t, u.Serial)
		sum := sha256.Sum256(c.Raw)
		r.IDevID, r.IDevIDSerial, r.IDevIDFingerprint = c.Raw, cradle.SerialHex(c.SerialNumber), hex.EncodeToString(sum[:])
		r.FirmwareDigest, r.BootloaderDigest, r.HardwareUID = strings.Repeat("a", 64), strings.Repeat("b", 64), "uid-"+u.Serial
	} else {
		r.FailedStep, r.Reason = "fuses", "write of debug_lock did not read back"
	}
	return r
}

func (fx *factoryFixture) sign(t testing.TB, r *cradle.TraceRecord) cradle.SignedTrace {
	t.Helper()
	s, err := cradle.SignTrace(r, fx.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fixture returns tenant 1's factory fixture, made on first use.
func (e *env) fixture() *factoryFixture {
	e.t.Helper()
	if e.fx == nil {
		e.fx = newFactoryFixture(e.t, e.db, 1)
	}
	return e.fx
}

// withFactory is the factory part of every test server: the real store,
// a test PKI, and a count of factory events.
func withFactory(e *env) func(*httpapi.Server) {
	return func(s *httpapi.Server) {
		th := sharedHierarchy(e.t)
		s.Factory = sqlstore.NewFactoryService(e.db)
		s.StationIssuer = th.stationIssuer
		s.Profile = cradle.ProfileTest
		s.OnFactoryEvent = func() { e.events.Add(1) }
	}
}

// factoryMatrix are the factory routes' rows of the authorization
// matrix, from the permission table: factory.read for every role,
// factory.batch for admin and operator, factory.station for admin,
// factory.provision for the factory role.
var factoryMatrix = []call{
	{"POST", "/api/v1/factory/batches", func(_ *env, r cradle.Role) (string, string, string) {
		return "/api/v1/factory/batches", "application/json", fmt.Sprintf(`{"id":"B-%s","model":"gw-100","hardware_revision":"a","quantity":10,"firmware_version":"1.0","profile":"test","serial_pattern":"%s-{seq:03}"}`, r, strings.ToUpper(string(r)))
	}, [4]int{201, 201, 403, 403}},
	{"GET", "/api/v1/factory/batches", jsonCall("/api/v1/factory/batches?limit=5", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/factory/batches/{id}", func(e *env, _ cradle.Role) (string, string, string) {
		return "/api/v1/factory/batches/" + e.fixture().batch, "", ""
	}, [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/factory/batches/{id}/export", func(e *env, _ cradle.Role) (string, string, string) {
		return "/api/v1/factory/batches/" + e.fixture().batch + "/export?format=csv", "", ""
	}, [4]int{200, 200, 200, 200}},
	{"POST", "/api/v1/factory/batches/{id}/allocations", func(e *env, _ cradle.Role) (string, string, string) {
		fx := e.fixture()
		return "/api/v1/factory/batches/" + fx.batch + "/allocations", "application/json", `{"station":"` + fx.station + `","count":2}`
	}, [4]int{403, 403, 201, 403}},
	{"POST", "/api/v1/factory/mac-ranges", func(_ *env, r cradle.Role) (string, string, string) {
		i := slices.Index(roles, r) + 1 // 0 for the tokenless calls, whose ranges are never added
		return "/api/v1/factory/mac-ranges", "application/json", fmt.Sprintf(`{"first":"0a:00:00:00:%02x:00","last":"0a:00:00:00:%02x:ff"}`, i, i)
	}, [4]int{201, 201, 403, 403}},
	{"GET", "/api/v1/factory/mac-ranges", jsonCall("/api/v1/factory/mac-ranges", ""), [4]int{200, 200, 200, 200}},
	{"POST", "/api/v1/factory/stations", func(e *env, r cradle.Role) (string, string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		body, _ := json.Marshal(httpapi.StationEnrollment{Name: "st-" + string(r), Profile: cradle.ProfileTest, CSR: string(csrPEM(e.t, k))})
		return "/api/v1/factory/stations", "application/json", string(body)
	}, [4]int{201, 403, 403, 403}},
	{"GET", "/api/v1/factory/stations", jsonCall("/api/v1/factory/stations", ""), [4]int{200, 200, 200, 200}},
	{"GET", "/api/v1/factory/stations/{name}", func(e *env, _ cradle.Role) (string, string, string) {
		return "/api/v1/factory/stations/" + e.fixture().station, "", ""
	}, [4]int{200, 200, 200, 200}},
	{"POST", "/api/v1/factory/rma/{serial}", func(e *env, r cradle.Role) (string, string, string) {
		fx := e.fixture()
		u := fx.allocate(e.t)
		rec := fx.record(e.t, u, cradle.UnitProvisioned)
		if _, _, err := fx.factory.RecordTrace(fx.line, rec, fx.sign(e.t, rec)); err != nil {
			e.t.Fatal(err)
		}
		opCtx := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: 1, Role: cradle.RoleOperator, Kind: "token", ID: "tok_op"})
		if _, err := sqlstore.NewDeviceService(e.db).TransitionDevice(opCtx, u.Serial, cradle.DeviceTransition{To: cradle.StateRMA, Reason: "returned"}); err != nil {
			e.t.Fatal(err)
		}
		return "/api/v1/factory/rma/" + u.Serial, "application/json", `{"station":"` + fx.station + `"}`
	}, [4]int{403, 403, 200, 403}},
	{"POST", "/api/v1/factory/traces", func(e *env, _ cradle.Role) (string, string, string) {
		fx := e.fixture()
		body, _ := json.Marshal(fx.sign(e.t, fx.record(e.t, fx.allocate(e.t), cradle.UnitFailed)))
		return "/api/v1/factory/traces", "application/json", string(body)
	}, [4]int{403, 403, 201, 403}},
	{"GET", "/api/v1/devices/{serial}/trace", jsonCall("/api/v1/devices/SN-READ/trace", ""), [4]int{200, 200, 200, 200}},
}

// TestFactoryBatches covers creating, listing, reading and exporting
// batches, and the profile rules.
func TestFactoryBatches(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	op := e.client(cradle.RoleOperator)
	bc := cradle.BatchCreate{ID: "B-2648", Model: "gw-100", HardwareRevision: "c", Quantity: 100, FirmwareVersion: "2.1.0",
		Profile: cradle.ProfileTest, SerialPattern: "CR-2648-{seq:05}"}
	b, err := op.CreateBatch(ctx, bc)
	if err != nil {
		t.Fatal(err)
	}
	if b.ID != bc.ID || b.Quantity != 100 || b.Allocated != 0 || !strings.Contains(b.CreatedBy, "operator") {
		t.Errorf("created %+v", b)
	}
	if _, err := op.CreateBatch(ctx, bc); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("the same id again: %v, want conflict", err)
	}
	if got, err := e.client(cradle.RoleAuditor).Batch(ctx, "B-2648"); err != nil || !cmp.Equal(got, b) {
		t.Errorf("Batch: %+v, %v; want %+v", got, err, b)
	}
	if _, err := op.Batch(ctx, "B-NONE"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("unknown batch: %v", err)
	}

	// A production batch on a test server is refused, and not stored.
	prod := bc
	prod.ID, prod.Profile = "B-PROD", cradle.ProfileProduction
	_, err = op.CreateBatch(ctx, prod)
	if cradle.ErrorCode(err) != cradle.EINVALID || cradle.ErrorMessage(err) != "this server's PKI is test; production batches belong on a production deployment" {
		t.Errorf("production batch on a test server: %v", err)
	}
	resp := e.doJSON("POST", "/api/v1/factory/batches", e.tokens[cradle.RoleAdmin], `{"id":"B-X","model":"gw","hardware_revision":"a","quantity":1,"firmware_version":"1","profile":"staging","serial_pattern":"X{seq}"}`)
	if resp.status != 400 || !strings.Contains(resp.errorBody(t).Message, `unknown profile "staging"`) {
		t.Errorf("unknown profile: %d %s", resp.status, resp.body)
	}
	if _, err := op.Batch(ctx, "B-PROD"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("the refused batch: %v, want not found", err)
	}

	// Pages, newest first.
	for i := range 3 {
		c := bc
		c.ID = fmt.Sprintf("B-%d", i)
		if _, err := op.CreateBatch(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	cursor := ""
	for pages := 0; ; pages++ {
		page, next, err := op.Batches(ctx, cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page {
			ids = append(ids, b.ID)
		}
		if next == "" {
			break
		}
		if pages > 3 {
			t.Fatal("paging does not end")
		}
		cursor = next
	}
	if want := []string{"B-2", "B-1", "B-0", "B-2648"}; !slices.Equal(ids, want) {
		t.Errorf("batches %v, want %v", ids, want)
	}
	if resp := e.doJSON("GET", "/api/v1/factory/batches?limit=x", e.tokens[cradle.RoleAdmin], ""); resp.status != 400 {
		t.Errorf("limit=x: %d", resp.status)
	}
}

// TestFactoryProfileRefusals checks the servers of the other profile and
// without a PKI.
func TestFactoryProfileRefusals(t *testing.T) {
	var e *env
	e = newEnv(t, func(s *httpapi.Server) { s.Profile = cradle.ProfileProduction })
	ctx := t.Context()
	admin := e.client(cradle.RoleAdmin)
	_, err := admin.CreateBatch(ctx, cradle.BatchCreate{ID: "B-1", Model: "gw", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1",
		Profile: cradle.ProfileTest, SerialPattern: "T-{seq}"})
	if cradle.ErrorCode(err) != cradle.EINVALID || cradle.ErrorMessage(err) != "this server's PKI is production; test batches belong on a test deployment" {
		t.Errorf("test batch on a production server: %v", err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	before, _ := admin.FindTokens(ctx)
	_, err = admin.EnrollStation(ctx, "line-1", cradle.ProfileTest, csrPEM(t, k))
	if cradle.ErrorCode(err) != cradle.EINVALID || cradle.ErrorMessage(err) != "this server's PKI is production; test stations belong on a test deployment" {
		t.Errorf("test station on a production server: %v", err)
	}
	if after, _ := admin.FindTokens(ctx); len(after) != len(before) {
		t.Errorf("a refused enrollment made a token: %d tokens, before %d", len(after), len(before))
	}

	// Without a PKI there is nothing to match a batch against.
	e = newEnv(t, func(s *httpapi.Server) { s.Profile, s.StationIssuer = "", nil })
	admin = e.client(cradle.RoleAdmin)
	_, err = admin.CreateBatch(ctx, cradle.BatchCreate{ID: "B-1", Model: "gw", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1",
		Profile: cradle.ProfileTest, SerialPattern: "T-{seq}"})
	if cradle.ErrorCode(err) != cradle.ECONFLICT || !strings.Contains(cradle.ErrorMessage(err), "cradle pki init") {
		t.Errorf("batch on a server without a PKI: %v", err)
	}
	if _, err = admin.EnrollStation(ctx, "line-1", cradle.ProfileTest, csrPEM(t, k)); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("station on a server without a PKI: %v", err)
	}
}

// TestFactoryStations enrolls stations and checks what they get, and
// that a failed enrollment leaves no token behind.
func TestFactoryStations(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	admin := e.client(cradle.RoleAdmin)
	th := sharedHierarchy(t)
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	got, err := admin.EnrollStation(ctx, "line-1", cradle.ProfileTest, csrPEM(t, key))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(got.Certificate))
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	inter, roots := x509.NewCertPool(), x509.NewCertPool()
	var chain []*x509.Certificate
	for rest := []byte(got.Chain); ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) != 2 || !chain[0].Equal(th.h.DeviceCA()) || !chain[1].Equal(th.h.Root) {
		t.Fatalf("chain of %d certificates; want the device CA and the root", len(chain))
	}
	inter.AddCert(chain[0])
	roots.AddCert(th.h.Root)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the station certificate does not verify with its chain: %v", err)
	}
	if cert.Subject.CommonName != "line-1" || !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Errorf("certificate for %q", cert.Subject.CommonName)
	}
	st := got.Station
	sum := sha256.Sum256(cert.Raw)
	if st.Name != "line-1" || st.Profile != cradle.ProfileTest || st.CertSerial != cradle.SerialHex(cert.SerialNumber) ||
		st.Fingerprint != hex.EncodeToString(sum[:]) || st.TokenID == "" {
		t.Errorf("station %+v", st)
	}
	// The token is a factory token of the tenant, named for the station.
	id, err := httpapi.NewClient(e.url, got.Token, nil).WhoAmI(ctx)
	if err != nil || id.Role != cradle.RoleFactory || id.ID != st.TokenID || id.TenantID != 1 {
		t.Errorf("the station's token: %+v, %v", id, err)
	}
	if show, err := e.client(cradle.RoleFactory).Station(ctx, "line-1"); err != nil || !cmp.Equal(show, st) {
		t.Errorf("Station: %+v, %v; want %+v", show, err, st)
	}
	if _, err := admin.Station(ctx, "line-9"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("unknown station: %v", err)
	}

	tokensBefore, _ := admin.FindTokens(ctx)
	// A taken name is refused before a token is made.
	if _, err := admin.EnrollStation(ctx, "line-1", cradle.ProfileTest, csrPEM(t, key)); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("the same name again: %v, want conflict", err)
	}
	// Refusals of the request itself.
	for name, tc := range map[string]struct {
		name, csr, want string
	}{
		"bad name":      {"line 2", string(csrPEM(t, key)), "station name"},
		"no CSR":        {"line-2", "", "exactly one PEM block"},
		"not a CSR":     {"line-2", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "exactly one PEM block"},
		"garbage DER":   {"line-2", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "does not parse"},
		"two CSRs":      {"line-2", string(csrPEM(t, key)) + string(csrPEM(t, key)), "exactly one PEM block"},
		"tampered CSR":  {"line-2", tamperedCSR(t, key), "signature does not verify"},
		"RSA-1024 key":  {"line-2", string(csrPEM(t, weakRSA(t))), "below the 2048-bit minimum"},
		"empty profile": {"line-2", "", "unknown profile"},
	} {
		profile := cradle.ProfileTest
		if name == "empty profile" {
			profile = ""
		}
		_, err := admin.EnrollStation(ctx, tc.name, profile, []byte(tc.csr))
		if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tc.want) {
			t.Errorf("%s: %v; want invalid saying %q", name, err, tc.want)
		}
	}
	// The weak key was refused by the issuer, after the station's token
	// was made: the token was revoked again, and no station exists.
	tokensAfter, _ := admin.FindTokens(ctx)
	var extra []string
	for _, tok := range tokensAfter {
		if !slices.ContainsFunc(tokensBefore, func(b *cradle.Token) bool { return b.ID == tok.ID }) {
			extra = append(extra, tok.Name)
			if tok.RevokedAt == nil {
				t.Errorf("token %q of a failed enrollment is not revoked", tok.Name)
			}
		}
	}
	if !slices.Equal(extra, []string{"factory station line-2"}) {
		t.Errorf("tokens made by the refused enrollments: %q; want only the revoked one of the RSA-1024 attempt", extra)
	}
	if list, err := e.client(cradle.RoleAuditor).Stations(ctx); err != nil || len(list) != 1 || list[0].Name != "line-1" {
		t.Errorf("stations after the refusals: %v, %v", list, err)
	}

	// Only an admin enrolls, with a clear message for the others.
	_, err = e.client(cradle.RoleOperator).EnrollStation(ctx, "line-3", cradle.ProfileTest, csrPEM(t, key))
	if cradle.ErrorCode(err) != cradle.EFORBIDDEN || !strings.Contains(cradle.ErrorMessage(err), "may not enroll factory stations") {
		t.Errorf("operator: %v", err)
	}
}

func tamperedCSR(t *testing.T, key crypto.Signer) string {
	t.Helper()
	b, _ := pem.Decode(csrPEM(t, key))
	b.Bytes[len(b.Bytes)-5] ^= 0x40 // inside the signature
	return string(pem.EncodeToMemory(b))
}

func weakRSA(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestFactoryProvisioning runs units through the API as a station does:
// MAC pool, allocation, trace uploads (new, retried, tampered, failed),
// the unit's trace, RMA and the batch exports.
func TestFactoryProvisioning(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	fx := e.fixture()
	st := e.client(cradle.RoleFactory)
	op := e.client(cradle.RoleOperator)

	m, err := op.AddMACRange(ctx, "0E-00-00-00-00-00", "0e:00:00:00:00:0f")
	if err != nil || m.First != "0e:00:00:00:00:00" || m.Last != "0e:00:00:00:00:0f" || m.Used != 0 {
		t.Errorf("AddMACRange: %+v, %v", m, err)
	}
	if _, err := op.AddMACRange(ctx, "0e:00:00:00:00:08", "0e:00:00:00:00:20"); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("an overlapping range: %v", err)
	}
	if _, err := op.AddMACRange(ctx, "0e:00:00:00:01:08", "0e:00:00:00:00:20"); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Errorf("first after last: %v", err)
	}
	if ranges, err := st.MACRanges(ctx); err != nil || len(ranges) != 2 {
		t.Errorf("MACRanges: %v, %v; want the fixture's and this one", ranges, err)
	}

	units, err := st.AllocateUnits(ctx, fx.batch, fx.station, 3)
	if err != nil || len(units) != 3 {
		t.Fatalf("AllocateUnits: %v, %v", units, err)
	}
	if units[0].Serial != "FX-0001" || units[0].Batch != fx.batch || units[0].MAC == units[1].MAC {
		t.Errorf("units %+v", units)
	}
	for _, n := range []int{0, cradle.MaxAllocation + 1} {
		if _, err := st.AllocateUnits(ctx, fx.batch, fx.station, n); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("count %d: %v", n, err)
		}
	}
	if _, err := st.AllocateUnits(ctx, "B-NONE", fx.station, 1); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("unknown batch: %v", err)
	}

	// A provisioned unit, uploaded twice: created, then found.
	good := fx.record(t, units[0], cradle.UnitProvisioned)
	signed := fx.sign(t, good)
	if created, err := st.UploadTrace(ctx, signed); err != nil || !created {
		t.Fatalf("upload: %v, %v", created, err)
	}
	if created, err := st.UploadTrace(ctx, signed); err != nil || created {
		t.Fatalf("the same upload again: created %v, %v; want false, nil", created, err)
	}
	if n := e.events.Load(); n != 1 {
		t.Errorf("OnFactoryEvent called %d times, want once", n)
	}
	if d, err := st.FindDeviceBySerial(ctx, units[0].Serial); err != nil || d.State != cradle.StateProvisioned {
		t.Errorf("device after its record: %+v, %v", d, err)
	}

	// Tampered records are refused, and nothing is stored.
	second := fx.record(t, units[1], cradle.UnitProvisioned)
	s2 := fx.sign(t, second)
	tampered := s2
	tampered.Payload = bytes.Replace(s2.Payload, []byte(`"operator":"ann"`), []byte(`"operator":"bob"`), 1)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	foreign, _ := cradle.SignTrace(second, otherKey)
	for name, bad := range map[string]cradle.SignedTrace{"changed payload": tampered, "another key": foreign,
		"no signature": {Payload: s2.Payload}, "signature of another record": {Payload: s2.Payload, Signature: signed.Signature}} {
		_, err := st.UploadTrace(ctx, bad)
		if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), "signature") {
			t.Errorf("%s: %v; want invalid about the signature", name, err)
		}
	}
	if ut, err := st.UnitTrace(ctx, units[1].Serial); err != nil || len(ut.Records) != 0 || ut.Device.State != cradle.StateFactory {
		t.Errorf("unit after tampered uploads: %+v, %v; want no record, still in factory", ut, err)
	}
	// Raw bodies: not JSON, not a record, too large.
	for name, tc := range map[string]struct {
		body   string
		status int
		want   string
	}{
		"not JSON":        {`{"payload":`, 400, ""},
		"unknown field":   {`{"payload":"e30=","signature":"AA==","x":1}`, 400, "unknown field"},
		"not a record":    {`{"payload":"e30=","signature":"AA=="}`, 400, "record id"},
		"payload not b64": {`{"payload":"***","signature":"AA=="}`, 400, ""},
		"too large":       {`{"payload":"` + strings.Repeat("A", httpapi.MaxTraceBytes) + `","signature":"AA=="}`, 413, ""},
	} {
		resp := e.doJSON("POST", "/api/v1/factory/traces", e.tokens[cradle.RoleFactory], tc.body)
		if resp.status != tc.status || !strings.Contains(resp.errorBody(t).Message, tc.want) {
			t.Errorf("%s: %d %s; want %d saying %q", name, resp.status, resp.body, tc.status, tc.want)
		}
	}
	// A record of a station that is not enrolled.
	ghost := fx.record(t, units[1], cradle.UnitFailed)
	ghost.Station = "line-ghost"
	if _, err := st.UploadTrace(ctx, fx.sign(t, ghost)); cradle.ErrorCode(err) != cradle.ENOTFOUND || !strings.Contains(cradle.ErrorMessage(err), "not enrolled") {
		t.Errorf("unknown station: %v", err)
	}
	if n := e.events.Load(); n != 1 {
		t.Errorf("OnFactoryEvent called %d times after refusals, want still once", n)
	}

	// The second unit fails, with a formula in its reason; the third
	// unit's record then comes in properly.
	failed := fx.record(t, units[1], cradle.UnitFailed)
	failed.FailedStep, failed.Reason = "@fuses", `=HYPERLINK("http://evil.example","x")`
	if created, err := st.UploadTrace(ctx, fx.sign(t, failed)); err != nil || !created {
		t.Fatalf("failed unit: %v, %v", created, err)
	}
	third := fx.record(t, units[2], cradle.UnitProvisioned)
	if _, err := st.UploadTrace(ctx, fx.sign(t, third)); err != nil {
		t.Fatal(err)
	}
	if b, err := op.Batch(ctx, fx.batch); err != nil || b.Allocated != 3 || b.Provisioned != 2 || b.Failed != 1 {
		t.Errorf("batch counts: %+v, %v", b, err)
	}

	// The unit's chain.
	ut, err := e.client(cradle.RoleAuditor).UnitTrace(ctx, units[0].Serial)
	if err != nil {
		t.Fatal(err)
	}
	if ut.Batch == nil || ut.Batch.ID != fx.batch || len(ut.Records) != 1 || ut.Records[0].Record.ID != good.ID ||
		!bytes.Equal(ut.Records[0].Signed.Payload, signed.Payload) || len(ut.Stations) != 1 || ut.Stations[0].Name != fx.station ||
		len(ut.Certificates) != 1 || ut.Certificates[0].Kind != cradle.CertIDevID || ut.Certificates[0].Serial != good.IDevIDSerial ||
		len(ut.History) != 2 || ut.History[1].To != cradle.StateProvisioned {
		t.Errorf("unit trace: %+v", ut)
	}
	if _, err := op.UnitTrace(ctx, "SN-NONE"); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("unknown unit: %v", err)
	}

	// RMA: the unit comes back and is re-provisioned.
	if _, err := op.TransitionDevice(ctx, units[0].Serial, cradle.DeviceTransition{To: cradle.StateRMA, Reason: "returned"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReprovisionUnit(ctx, units[2].Serial, fx.station); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("re-provisioning a unit not in rma: %v", err)
	}
	u, err := st.ReprovisionUnit(ctx, units[0].Serial, fx.station)
	if err != nil || !u.RMA || u.Serial != units[0].Serial || u.MAC != units[0].MAC {
		t.Fatalf("ReprovisionUnit: %+v, %v", u, err)
	}
	again := fx.record(t, *u, cradle.UnitProvisioned)
	if created, err := st.UploadTrace(ctx, fx.sign(t, again)); err != nil || !created {
		t.Fatalf("RMA record: %v, %v", created, err)
	}

	// Exports, in the order received.
	var buf bytes.Buffer
	if err := op.ExportBatch(ctx, fx.batch, httpapi.ExportJSON, &buf); err != nil {
		t.Fatal(err)
	}
	var records []cradle.TraceRecord
	if err := json.Unmarshal(buf.Bytes(), &records); err != nil {
		t.Fatalf("JSON export: %v\n%s", err, buf.Bytes())
	}
	var ids []string
	for _, r := range records {
		ids = append(ids, r.ID)
	}
	if want := []string{good.ID, failed.ID, third.ID, again.ID}; !slices.Equal(ids, want) {
		t.Errorf("JSON export records %v, want %v", ids, want)
	}
	if !cmp.Equal(records[1], *failed) {
		t.Errorf("JSON export of the failed record (-want +got):\n%s", cmp.Diff(*failed, records[1]))
	}

	buf.Reset()
	if err := op.ExportBatch(ctx, fx.batch, httpapi.ExportCSV, &buf); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatalf("CSV export: %v", err)
	}
	header := rows[0]
	if want := []string{"batch", "serial", "mac", "hardware_uid", "status", "failed_step", "reason", "station", "operator", "profile", "model",
		"hardware_revision", "started_at", "finished_at", "firmware_version", "firmware_digest", "bootloader_digest", "idevid_serial",
		"idevid_fingerprint", "fuse_secure_boot", "fuse_debug_lock", "fuse_image_key_hash", "fuse_lifecycle", "fuse_anti_rollback", "tests"}; !slices.Equal(header, want) {
		t.Fatalf("CSV header %q", header)
	}
	if len(rows) != 5 {
		t.Fatalf("CSV export has %d rows, want a header and 4 records", len(rows))
	}
	cell := func(row int, col string) string { return rows[row][slices.Index(header, col)] }
	for col, want := range map[string]string{
		"batch": fx.batch, "serial": units[0].Serial, "mac": units[0].MAC, "hardware_uid": good.HardwareUID, "status": "provisioned",
		"failed_step": "", "station": fx.station, "operator": "ann", "profile": "test", "model": "gw-100", "hardware_revision": "b",
		"started_at": good.StartedAt.Format(time.RFC3339), "finished_at": good.FinishedAt.Format(time.RFC3339), "firmware_version": "1.0.0",
		"firmware_digest": good.FirmwareDigest, "bootloader_digest": good.BootloaderDigest, "idevid_serial": good.IDevIDSerial,
		"idevid_fingerprint": good.IDevIDFingerprint, "fuse_secure_boot": "01", "fuse_image_key_hash": "ab12", "fuse_lifecycle": "02",
		"tests": "flash=pass;radio=pass",
	} {
		if got := cell(1, col); got != want {
			t.Errorf("CSV row 1 %s = %q, want %q", col, got, want)
		}
	}
	// Formula injection: the cells are text to a spreadsheet.
	if got := cell(2, "reason"); got != `'=HYPERLINK("http://evil.example","x")` {
		t.Errorf("CSV reason %q, want it prefixed with a quote", got)
	}
	if got := cell(2, "failed_step"); got != "'@fuses" {
		t.Errorf("CSV failed_step %q, want '@fuses", got)
	}
	if got := cell(2, "tests"); got != "flash=pass;radio=fail" {
		t.Errorf("CSV tests %q", got)
	}

	// Export requests the server refuses.
	if err := op.ExportBatch(ctx, fx.batch, "xml", &buf); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Errorf("format xml: %v", err)
	}
	if err := op.ExportBatch(ctx, "B-NONE", httpapi.ExportCSV, &buf); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("export of an unknown batch: %v", err)
	}
	resp := e.do("GET", "/api/v1/factory/batches/"+fx.batch+"/export", e.tokens[cradle.RoleAuditor], "", nil)
	if resp.status != 200 || resp.header.Get("Content-Type") != "application/json" || !json.Valid(resp.body) {
		t.Errorf("export without a format: %d %s %q", resp.status, resp.header.Get("Content-Type"), resp.body)
	}
	resp = e.do("GET", "/api/v1/factory/batches/"+fx.batch+"/export?format=csv", e.tokens[cradle.RoleAuditor], "", nil)
	if !strings.HasPrefix(resp.header.Get("Content-Type"), "text/csv") || resp.header.Get("Content-Disposition") != `attachment; filename="B-FIX.csv"` {
		t.Errorf("CSV export headers %v", resp.header)
	}
}

func TestSafeCell(t *testing.T) {
	for in, want := range map[string]string{
		"": "", "plain": "plain", "=1+2": "'=1+2", "+49": "'+49", "-x": "'-x", "@SUM(A1)": "'@SUM(A1)", "\tx": "'\tx", "\rx": "'\rx",
		"a=b": "a=b", "'quoted": "'quoted",
	} {
		if got := httpapi.SafeCell(in); got != want {
			t.Errorf("SafeCell(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestFactoryTenantIsolation checks that another tenant sees none of the
// factory records, and that its stations cannot upload this tenant's.
func TestFactoryTenantIsolation(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	fx := e.fixture()
	u := fx.allocate(t)
	rec := fx.record(t, u, cradle.UnitProvisioned)
	signed := fx.sign(t, rec)
	if _, err := e.client(cradle.RoleFactory).UploadTrace(ctx, signed); err != nil {
		t.Fatal(err)
	}
	other := httpapi.NewClient(e.url, e.other, nil)
	notFound := func(what string, err error) {
		t.Helper()
		if cradle.ErrorCode(err) != cradle.ENOTFOUND {
			t.Errorf("%s from the other tenant: %v, want not found", what, err)
		}
	}
	_, err := other.Batch(ctx, fx.batch)
	notFound("batch", err)
	notFound("export", other.ExportBatch(ctx, fx.batch, httpapi.ExportCSV, &bytes.Buffer{}))
	_, err = other.Station(ctx, fx.station)
	notFound("station", err)
	_, err = other.UnitTrace(ctx, u.Serial)
	notFound("unit trace", err)
	if l, _, err := other.Batches(ctx, "", 0); err != nil || len(l) != 0 {
		t.Errorf("the other tenant lists batches %v, %v", l, err)
	}
	if l, err := other.Stations(ctx); err != nil || len(l) != 0 {
		t.Errorf("the other tenant lists stations %v, %v", l, err)
	}
	if l, err := other.MACRanges(ctx); err != nil || len(l) != 0 {
		t.Errorf("the other tenant lists MAC ranges %v, %v", l, err)
	}
	// The other tenant's factory token cannot upload tenant 1's record
	// (its tenant has no such station), nor allocate from its batch.
	osys := cradle.NewContextWithActor(ctx, cradle.SystemActor(2, "test"))
	_, secret, err := sqlstore.NewTokenService(e.db).CreateToken(osys, cradle.TokenCreate{Name: "other-line", Role: cradle.RoleFactory})
	if err != nil {
		t.Fatal(err)
	}
	oline := httpapi.NewClient(e.url, secret, nil)
	second := fx.record(t, fx.allocate(t), cradle.UnitFailed)
	_, err = oline.UploadTrace(ctx, fx.sign(t, second))
	notFound("upload", err)
	_, err = oline.AllocateUnits(ctx, fx.batch, fx.station, 1)
	notFound("allocate", err)
	if ut, err := e.client(cradle.RoleAdmin).UnitTrace(ctx, second.Serial); err != nil || len(ut.Records) != 0 {
		t.Errorf("tenant 1's unit after the other tenant's upload: %+v, %v", ut, err)
	}
}

// TestFactoryOpenAPISchemas holds the factory schemas of the document
// equal to the Go types, like TestOpenAPISchemasMatchTypes does for the
// others.
func TestFactoryOpenAPISchemas(t *testing.T) {
	doc := loadDoc(t)
	types := map[string]any{
		"Batch": cradle.Batch{}, "BatchCreate": cradle.BatchCreate{}, "BatchList": httpapi.BatchList{},
		"MACRange": cradle.MACRange{}, "MACRangeCreate": httpapi.MACRangeCreate{}, "MACRangeList": httpapi.MACRangeList{},
		"Station": cradle.Station{}, "StationEnrollment": httpapi.StationEnrollment{}, "StationEnrolled": httpapi.StationEnrolled{},
		"StationList": httpapi.StationList{}, "AllocationRequest": httpapi.AllocationRequest{}, "AllocationList": httpapi.AllocationList{},
		"UnitAllocation": cradle.UnitAllocation{}, "ReprovisionRequest": httpapi.ReprovisionRequest{}, "TestResult": cradle.TestResult{},
		"TraceRecord": cradle.TraceRecord{}, "SignedTrace": cradle.SignedTrace{}, "StoredTrace": cradle.StoredTrace{}, "UnitTrace": cradle.UnitTrace{},
	}
	checkSchemas(t, doc, types, nil)
}

// FuzzUploadTrace sends arbitrary bodies to the trace upload as the
// factory role, over a store with an enrolled station and allocated
// units: the answer is 201/200 only for a record that station signed, a
// JSON error of the client's making otherwise, never a 500.
func FuzzUploadTrace(f *testing.F) {
	_, auditKey, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(context.Background(), filepath.Join(f.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: auditKey})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	tokens := sqlstore.NewTokenService(db)
	if _, err := tokens.Bootstrap(context.Background()); err != nil {
		f.Fatal(err)
	}
	fx := newFactoryFixture(f, db, 1)
	_, secret, err := tokens.CreateToken(fx.sys, cradle.TokenCreate{Name: "line", Role: cradle.RoleFactory})
	if err != nil {
		f.Fatal(err)
	}
	api := &httpapi.Server{Devices: sqlstore.NewDeviceService(db), Tokens: tokens, Audit: sqlstore.NewAuditService(db),
		Certificates: sqlstore.NewCertificateService(db), Factory: fx.factory, Profile: cradle.ProfileTest, Registerer: prometheus.NewRegistry()}
	h := api.Handler()
	good, _ := json.Marshal(fx.sign(f, fx.record(f, fx.allocate(f), cradle.UnitProvisioned)))
	failed, _ := json.Marshal(fx.sign(f, fx.record(f, fx.allocate(f), cradle.UnitFailed)))
	for _, s := range [][]byte{good, failed, bytes.Replace(good, []byte(`"signature":"`), []byte(`"signature":"AA`), 1),
		[]byte(`{"payload":"e30=","signature":""}`), []byte(`{"payload":null}`), []byte(`[]`), []byte(`{"payload":"eyJpZCI6IngifQ==","signature":"AA=="}`),
		[]byte("\xff"), []byte(`{"payload":"` + strings.Repeat("QUFB", 100) + `","signature":"AA=="}`)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/api/v1/factory/traces", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == 200 || rec.Code == 201:
			var st cradle.StoredTrace
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
				t.Fatalf("%q: %d with %q", body, rec.Code, rec.Body)
			}
			var sent cradle.SignedTrace
			if json.Unmarshal(body, &sent) != nil || !bytes.Equal(sent.Payload, st.Signed.Payload) {
				t.Fatalf("%q: stored a record that was not sent", body)
			}
		case rec.Code >= 400 && rec.Code < 500:
			var got cradle.Error
			if json.Unmarshal(rec.Body.Bytes(), &got) != nil || got.Message == "" {
				t.Fatalf("%q: %d with %q", body, rec.Code, rec.Body)
			}
		default:
			t.Fatalf("%q: status %d %s", body, rec.Code, rec.Body)
		}
	})
}
