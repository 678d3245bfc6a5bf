// Package storetest is the conformance suite every store back end must
// pass. The sqlstore tests run it on SQLite always and on PostgreSQL when
// CRADLE_TEST_POSTGRES names a server; each run gets a fresh database or
// schema, so runs never see each other's rows.
//
// The suite drives the store through the domain service interfaces only,
// except for the audit tamper tests, which edit rows directly in the
// database, as an attacker with database access would.
package storetest

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// Clock is a settable clock for tests.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock set to t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock forward.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Backend opens stores of one kind.
type Backend struct {
	// Name is "sqlite" or "postgres".
	Name string
	// New prepares a fresh, empty database for one test and returns its DSN
	// and a direct connection to it (for tampering). Both are cleaned up by
	// the backend with t.Cleanup.
	New func(t *testing.T) (dsn string, raw *sql.DB)
	// Rebind turns '?' placeholders into the dialect's.
	Rebind func(string) string
}

// Env is one test's store.
type Env struct {
	t       *testing.T
	Backend Backend
	DSN     string
	Raw     *sql.DB
	Key     ed25519.PrivateKey
	Clock   *Clock
	Witness string
	DB      *sqlstore.DB

	Tenants *sqlstore.TenantService
	Tokens  *sqlstore.TokenService
	Devices *sqlstore.DeviceService
	Audit   *sqlstore.AuditService
}

// Epoch is the time every test clock starts at.
var Epoch = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func newEnv(t *testing.T, b Backend) *Env {
	t.Helper()
	dsn, raw := b.New(t)
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{t: t, Backend: b, DSN: dsn, Raw: raw, Key: key, Clock: NewClock(Epoch), Witness: t.TempDir() + "/audit-witness.json"}
	e.Reopen()
	t.Cleanup(func() { e.DB.Close() })
	return e
}

// Reopen closes the store (flushing its witness) and opens it again.
func (e *Env) Reopen() {
	e.t.Helper()
	if e.DB != nil {
		if err := e.DB.Close(); err != nil {
			e.t.Fatalf("close: %v", err)
		}
	}
	db, err := sqlstore.Open(context.Background(), e.DSN, sqlstore.Options{AuditKey: e.Key, WitnessPath: e.Witness, Clock: e.Clock})
	if err != nil {
		e.t.Fatalf("open %s: %v", e.Backend.Name, err)
	}
	e.DB = db
	e.Tenants, e.Tokens = sqlstore.NewTenantService(db), sqlstore.NewTokenService(db)
	e.Devices, e.Audit = sqlstore.NewDeviceService(db), sqlstore.NewAuditService(db)
}

// Exec runs SQL directly on the database, bypassing the store.
func (e *Env) Exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.Raw.Exec(e.Backend.Rebind(q), args...); err != nil {
		e.t.Fatalf("exec %q: %v", q, err)
	}
}

// Tenant creates a tenant and returns a context acting in it with role.
func (e *Env) Tenant(name string, role cradle.Role) (*cradle.Tenant, context.Context) {
	e.t.Helper()
	tn, err := e.Tenants.CreateTenant(context.Background(), name)
	if err != nil {
		e.t.Fatalf("create tenant %s: %v", name, err)
	}
	return tn, e.As(tn.ID, role)
}

// As returns a context whose actor has the role in the tenant.
func (e *Env) As(tenantID int64, role cradle.Role) context.Context {
	return cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: tenantID, Role: role, Kind: "test", ID: string(role)})
}

// Run runs the whole suite on b.
func Run(t *testing.T, b Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, *Env)
	}{
		{"Tenants", testTenants},
		{"Bootstrap", testBootstrap},
		{"Tokens", testTokens},
		{"TokenExpiryAndRevocation", testTokenExpiry},
		{"DeviceCreate", testDeviceCreate},
		{"DeviceTenantIsolation", testDeviceIsolation},
		{"DeviceListFilters", testDeviceFilters},
		{"DevicePagination", testDevicePagination},
		{"DeviceLabels", testDeviceLabels},
		{"Transitions", testTransitions},
		{"Authorization", testAuthorization},
		{"Import", testImport},
		{"ImportRejects", testImportRejects},
		{"AuditEntries", testAuditEntries},
		{"AuditTamper", testAuditTamper},
		{"AuditWitness", testAuditWitness},
		{"AuditWrongKey", testAuditWrongKey},
		{"Certificates", testCertificates}, {"CertificateDependents", testCertificateDependents},
		{"FactoryBatches", testFactoryBatches}, {"FactoryMACRanges", testFactoryMACRanges}, {"FactoryStations", testFactoryStations}, {"FactoryPermissions", testFactoryPermissions}, {"FactoryAllocate", testFactoryAllocate}, {"FactoryTraces", testFactoryTraces}, {"FactoryRMA", testFactoryRMA}, {"FactoryConcurrentAllocation", testFactoryConcurrentAllocation}, {"FactoryOutbox", testFactoryOutbox},
		{"TelemetryRecordQuery", testTelemetryRecordQuery}, {"TelemetryRefusals", testTelemetryRefusals}, {"TelemetryRetention", testTelemetryRetention},
		{"Claims", testClaims},
		{"CommandsIssueDeliverResult", testCommandsIssueDeliverResult}, {"CommandsRefusals", testCommandsRefusals}, {"CommandsExpiry", testCommandsExpiry}, {"CommandsLogs", testCommandsLogs}, {"CommandsConcurrentSequence", testCommandsConcurrentSequence},
		{"TwinPrecedence", testTwinPrecedence}, {"TwinInvalid", testTwinInvalid}, {"TwinDrift", testTwinDrift}, {"TwinPermissions", testTwinPermissions}, {"TwinFactoryUnits", testTwinFactoryUnits}, {"TwinClaimedDevices", testTwinClaimedDevices},
		{"ConcurrentWrites", testConcurrentWrites},
		{"ReleaseLifecycle", testReleaseLifecycle}, {"ReleaseValidation", testReleaseValidation}, {"ReleaseConflicts", testReleaseConflicts}, {"ReleaseDowngrade", testReleaseDowngrade}, {"ImageKeys", testImageKeys}, {"ReleasePermissions", testReleasePermissions}, {"ReleaseConcurrent", testReleaseConcurrent},
		{"UpdatePending", testUpdatePending}, {"UpdateReports", testUpdateReports}, {"UpdateSoftware", testUpdateSoftware}, {"UpdateDownloads", testUpdateDownloads}, {"UpdateAbortedReports", testUpdateAbortedReports},
		{"RolloutCreate", testRolloutCreate}, {"RolloutRefusals", testRolloutRefusals}, {"RolloutDecisions", testRolloutDecisions}, {"Leases", testLeases}, {"RolloutFencing", testRolloutFencing}, {"RolloutEvents", testRolloutEvents}, {"RolloutJoiners", testRolloutJoiners}, {"RolloutConcurrentCreate", testRolloutConcurrentCreate},
		{"RolloutAbortInFlight", testRolloutAbortInFlight},
		{"ReleaseRemediation", testReleaseRemediation}, {"RolloutQuarantine", testRolloutQuarantine}, {"UpdateQuarantine", testUpdateQuarantine},
		{"MenderAuth", testMenderAuth}, {"MenderAcceptRefusals", testMenderAcceptRefusals}, {"MenderSessionCleanup", testMenderSessionCleanup}, {"MenderConcurrent", testMenderConcurrent}, {"DeviceTokens", testDeviceTokens},
		{"DecommissionExecute", testDecommissionExecute}, {"DecommissionApprovers", testDecommissionApprovers},
		{"DecommissionEOLOnly", testDecommissionEOLOnly}, {"DecommissionSecondApprover", testDecommissionSecondApprover}, {"DecommissionWipeCertificates", testDecommissionWipeCertificates},
		{"DecommissionWipeReissue", testDecommissionWipeReissue}, {"DecommissionKeyCompromise", testDecommissionKeyCompromise}, {"RevokeOutOfService", testRevokeOutOfService}, {"DeviceMayDownload", testDeviceMayDownload},
		{"AdmitDevice", testAdmitDevice}, {"DeviceAttributes", testDeviceAttributes}, {"DDIActions", testDDIActions}, {"UpdateLogs", testUpdateLogs}, {"CompatFields", testCompatFields},
		{"RevokeDevice", testRevokeDevice}, {"RevokeDevicesBulk", testRevokeDevicesBulk}, {"RevokeOnRMA", testRevokeOnRMA},
		{"MenderAutoAdmitProvisionedOnly", testMenderAutoAdmitProvisionedOnly}, {"MenderTenantTokens", testMenderTenantTokens}, {"ProtocolSwitch", testProtocolSwitch},
		{"MenderPendingCap", testMenderPendingCap}, {"RefusalAuditLimit", testRefusalAuditLimit}, {"RevokeTokensRejectsSets", testRevokeTokensRejectsSets},
		{"DeviceTokenCleanup", testDeviceTokenCleanup},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newEnv(t, b)) })
	}
}

// wantCode fails unless err carries the code; msgParts must appear in the
// message.
func wantCode(t *testing.T, err error, code string, msgParts ...string) {
	t.Helper()
	if got := cradle.ErrorCode(err); got != code {
		t.Fatalf("error code = %q (%v), want %q", got, err, code)
	}
	for _, p := range msgParts {
		if !strings.Contains(cradle.ErrorMessage(err), p) {
			t.Fatalf("error %q does not mention %q", cradle.ErrorMessage(err), p)
		}
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
