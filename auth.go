package cradle

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Role is what an actor may do. Operator tokens carry one of the four token
// roles; RoleDevice and RoleSystem are for actors that are not people: a
// device acting on its own record (enrollment) and the server itself
// (security rules, start-up, local administration through the data
// directory).
type Role string

// Roles.
const (
	RoleAdmin    Role = "admin"    // everything in its tenant, tokens included
	RoleOperator Role = "operator" // runs the fleet: devices, transitions, imports
	RoleFactory  Role = "factory"  // the factory line: creates and provisions units
	RoleAuditor  Role = "auditor"  // reads everything, changes nothing
	RoleDevice   Role = "device"   // a device acting on itself (not a token role)
	RoleSystem   Role = "system"   // the server itself (not a token role)
)

// TokenRoles lists the roles an API token may carry, in a stable order.
var TokenRoles = []Role{RoleAdmin, RoleOperator, RoleFactory, RoleAuditor}

// ParseTokenRole returns the token role named s, or an EINVALID error that
// lists the valid ones.
func ParseTokenRole(s string) (Role, error) {
	r := Role(strings.TrimSpace(s))
	if slices.Contains(TokenRoles, r) {
		return r, nil
	}
	return "", Errorf(EINVALID, "unknown role %q; valid roles: admin, operator, factory, auditor", s)
}

// Permission names one kind of operation. Services check the acting role's
// permissions before they touch storage.
type Permission string

// Permissions.
const (
	PermDeviceRead       Permission = "device.read"
	PermDeviceCreate     Permission = "device.create" // create and import
	PermDeviceUpdate     Permission = "device.update" // labels and attributes
	PermDeviceTransition Permission = "device.transition"
	PermAuditRead        Permission = "audit.read" // list and verify
	PermTokenRead        Permission = "token.read"
	PermTokenWrite       Permission = "token.write" // create and revoke
	PermCertRead         Permission = "certificate.read"
	PermCertIssue        Permission = "certificate.issue" // a device for itself; the factory records IDevIDs
	PermCertRevoke       Permission = "certificate.revoke"
	PermFactoryRead      Permission = "factory.read"      // batches, stations, trace records, exports
	PermBatchWrite       Permission = "factory.batch"     // create batches, add MAC ranges
	PermStationEnroll    Permission = "factory.station"   // enroll a factory station
	PermFactoryProvision Permission = "factory.provision" // allocate units, upload trace records
	PermTelemetryRead    Permission = "telemetry.read"    // query time series, latest values, status
	PermTelemetryWrite   Permission = "telemetry.write"   // a device for itself; the system also prunes
	PermDeviceClaim      Permission = "device.claim"      // bind a device to a site or owner with its claim code
	PermPolicyWrite      Permission = "policy.write"      // change the tenant's policy (quarantine of unclaimed devices)
	PermCommandRead      Permission = "command.read"      // a device's commands and their results
	PermCommandIssue     Permission = "command.issue"     // send signed commands to devices
	PermCommandDevice    Permission = "command.device"    // a device for itself: pending commands, results, logs
	PermTwinRead         Permission = "twin.read"         // twins, config groups, config schemas; a device its own desired document
	PermTwinWrite        Permission = "twin.write"        // device configs, config groups, config schemas
	PermTwinReport       Permission = "twin.report"       // a device reports its own configuration
	PermReleaseRead      Permission = "release.read"      // releases and image keys
	PermReleaseWrite     Permission = "release.write"     // upload, sign, deprecate, yank releases; trust image keys
	PermRolloutRead      Permission = "rollout.read"      // rollouts, their status and devices
	PermRolloutWrite     Permission = "rollout.write"     // create, pause, resume, abort, approve rollouts
	PermUpdateDevice     Permission = "update.device"     // a device for itself: its pending update, its reports
)

// Permissions lists every permission, in a stable order.
var Permissions = []Permission{
	PermDeviceRead, PermDeviceCreate, PermDeviceUpdate, PermDeviceTransition,
	PermAuditRead, PermTokenRead, PermTokenWrite, PermCertRead, PermCertIssue, PermCertRevoke,
	PermFactoryRead, PermBatchWrite, PermStationEnroll, PermFactoryProvision,
	PermTelemetryRead, PermTelemetryWrite, PermDeviceClaim, PermPolicyWrite,
	PermCommandRead, PermCommandIssue, PermCommandDevice,
	PermTwinRead, PermTwinWrite, PermTwinReport,
	PermReleaseRead, PermReleaseWrite, PermRolloutRead, PermRolloutWrite, PermUpdateDevice,
}

// rolePermissions is the authorization table. A transition permission only
// lets the actor ask; the lifecycle table decides which moves its role may
// make.
var rolePermissions = map[Role][]Permission{
	RoleAdmin: {PermDeviceRead, PermDeviceCreate, PermDeviceUpdate, PermDeviceTransition,
		PermAuditRead, PermTokenRead, PermTokenWrite, PermCertRead, PermCertRevoke,
		PermFactoryRead, PermBatchWrite, PermStationEnroll, PermTelemetryRead, PermDeviceClaim, PermPolicyWrite,
		PermCommandRead, PermCommandIssue, PermTwinRead, PermTwinWrite,
		PermReleaseRead, PermReleaseWrite, PermRolloutRead, PermRolloutWrite},
	RoleOperator: {PermDeviceRead, PermDeviceCreate, PermDeviceUpdate, PermDeviceTransition, PermAuditRead,
		PermCertRead, PermCertRevoke, PermFactoryRead, PermBatchWrite, PermTelemetryRead, PermDeviceClaim,
		PermCommandRead, PermCommandIssue, PermTwinRead, PermTwinWrite,
		PermReleaseRead, PermReleaseWrite, PermRolloutRead, PermRolloutWrite},
	RoleFactory: {PermDeviceRead, PermDeviceCreate, PermDeviceTransition, PermCertIssue,
		PermFactoryRead, PermFactoryProvision, PermTelemetryRead},
	RoleAuditor: {PermDeviceRead, PermAuditRead, PermTokenRead, PermCertRead, PermFactoryRead, PermTelemetryRead, PermCommandRead,
		PermTwinRead, PermReleaseRead, PermRolloutRead},
	RoleSystem: {PermDeviceRead, PermDeviceCreate, PermDeviceUpdate, PermDeviceTransition,
		PermAuditRead, PermTokenRead, PermTokenWrite, PermCertRead, PermCertIssue, PermCertRevoke,
		PermFactoryRead, PermBatchWrite, PermStationEnroll, PermFactoryProvision,
		PermTelemetryRead, PermTelemetryWrite, PermDeviceClaim, PermPolicyWrite, PermCommandRead, PermCommandIssue, PermCommandDevice,
		PermTwinRead, PermTwinWrite, PermTwinReport,
		PermReleaseRead, PermReleaseWrite, PermRolloutRead, PermRolloutWrite, PermUpdateDevice},
	RoleDevice: {PermDeviceTransition, PermCertIssue, PermTelemetryWrite, PermCommandDevice, PermTwinRead, PermTwinReport,
		PermUpdateDevice},
}

// Allowed reports whether role r holds permission p.
func (r Role) Allowed(p Permission) bool {
	return slices.Contains(rolePermissions[r], p)
}

// Actor is the party a service call acts for.
type Actor struct {
	TenantID int64  // the tenant the actor belongs to; every record it reaches is in this tenant
	Role     Role   // what it may do
	Kind     string // "token", "device" or "system"
	ID       string // the token id, device serial, or a name for system actors
}

// String returns the actor as recorded in the audit log, e.g.
// "token:tok_3f9a…(admin)".
func (a Actor) String() string {
	return fmt.Sprintf("%s:%s(%s)", a.Kind, a.ID, a.Role)
}

// SystemActor returns the actor for work the server (or a local
// administrator with access to the data directory) does in tenant t.
func SystemActor(tenantID int64, name string) Actor {
	return Actor{TenantID: tenantID, Role: RoleSystem, Kind: "system", ID: name}
}

type actorKey struct{}

// NewContextWithActor returns a context that carries a.
func NewContextWithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFromContext returns the actor ctx carries, if any.
func ActorFromContext(ctx context.Context) (Actor, bool) {
	a, ok := ctx.Value(actorKey{}).(Actor)
	return a, ok
}

// Authorize returns the actor in ctx if its role holds p. Otherwise it
// returns EUNAUTHORIZED (no actor) or EFORBIDDEN naming the role and the
// operation.
func Authorize(ctx context.Context, p Permission) (Actor, error) {
	a, ok := ActorFromContext(ctx)
	if !ok {
		return Actor{}, Errorf(EUNAUTHORIZED, "no credentials: send an API token as \"Authorization: Bearer <token>\"")
	}
	if !a.Role.Allowed(p) {
		return a, Errorf(EFORBIDDEN, "role %s may not %s; ask an admin for a token with a role that may", a.Role, permissionVerbs[p])
	}
	return a, nil
}

var permissionVerbs = map[Permission]string{
	PermDeviceRead:       "read devices",
	PermDeviceCreate:     "create or import devices",
	PermDeviceUpdate:     "update devices",
	PermDeviceTransition: "change a device's lifecycle state",
	PermAuditRead:        "read the audit log",
	PermTokenRead:        "list API tokens",
	PermTokenWrite:       "create or revoke API tokens",
	PermCertRead:         "read certificates",
	PermCertIssue:        "issue or record certificates",
	PermCertRevoke:       "revoke certificates",
	PermFactoryRead:      "read batches, stations and trace records",
	PermBatchWrite:       "create batches or add MAC ranges",
	PermStationEnroll:    "enroll factory stations",
	PermFactoryProvision: "allocate units or upload trace records",
	PermTelemetryRead:    "read telemetry",
	PermTelemetryWrite:   "record or prune telemetry",
	PermDeviceClaim:      "claim devices",
	PermPolicyWrite:      "change the tenant policy",
	PermCommandRead:      "read device commands",
	PermCommandIssue:     "send commands to devices",
	PermCommandDevice:    "fetch commands or report their results as a device",
	PermTwinRead:         "read configuration twins",
	PermTwinWrite:        "change desired configurations, config groups or config schemas",
	PermTwinReport:       "report a device's configuration",
	PermReleaseRead:      "read releases and image keys",
	PermReleaseWrite:     "upload, sign, deprecate or yank releases, or change image keys",
	PermRolloutRead:      "read rollouts",
	PermRolloutWrite:     "create, pause, resume, abort or approve rollouts",
	PermUpdateDevice:     "fetch updates or report their progress as a device",
}

// Tenant is an isolated customer or organisation. Every record belongs to
// exactly one tenant.
type Tenant struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// DefaultTenantName is the tenant the first start creates.
const DefaultTenantName = "default"

// ValidateTenantName checks a tenant name: 1 to 63 lower-case letters,
// digits and '-', starting with a letter.
func ValidateTenantName(name string) error {
	if len(name) == 0 || len(name) > 63 || !isLower(name[0]) {
		return Errorf(EINVALID, "invalid tenant name %q: use 1 to 63 lower-case letters, digits and '-', starting with a letter", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isLower(c) && !isDigit(c) && c != '-' {
			return Errorf(EINVALID, "invalid tenant name %q: use 1 to 63 lower-case letters, digits and '-', starting with a letter", name)
		}
	}
	return nil
}

// TenantService manages tenants. It is used at start-up and by local
// administration; tenants are not reachable through the operator API.
type TenantService interface {
	// CreateTenant creates a tenant. EINVALID for a bad name, ECONFLICT when
	// the name is taken.
	CreateTenant(ctx context.Context, name string) (*Tenant, error)
	// FindTenantByName returns the tenant, or ENOTFOUND.
	FindTenantByName(ctx context.Context, name string) (*Tenant, error)
}

// Token is an API token as stored: its secret is kept only as a hash.
type Token struct {
	ID        string     `json:"id"` // public id, "tok_" + 16 hex digits; part of the token string
	TenantID  int64      `json:"tenant_id"`
	Name      string     `json:"name"`
	Role      Role       `json:"role"`
	CreatedAt time.Time  `json:"created_at"`
	CreatedBy string     `json:"created_by"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // nil: never expires
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	LastUsed  *time.Time `json:"last_used_at,omitempty"`
}

// TokenCreate asks for a new token in the actor's tenant.
type TokenCreate struct {
	Name      string     `json:"name"`                 // a label for people; 1 to 128 printable characters
	Role      Role       `json:"role"`                 // one of TokenRoles
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // nil: never expires; must be in the future
}

// Validate checks the request against the current time now.
func (c TokenCreate) Validate(now time.Time) error {
	if c.Name == "" || len(c.Name) > 128 || !isPrintable(c.Name) {
		return Errorf(EINVALID, "invalid token name %q: use 1 to 128 printable characters", c.Name)
	}
	if _, err := ParseTokenRole(string(c.Role)); err != nil {
		return err
	}
	if c.ExpiresAt != nil && !c.ExpiresAt.After(now) {
		return Errorf(EINVALID, "token expiry %s is not in the future", c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// TokenService issues, lists, revokes and checks API tokens.
type TokenService interface {
	// CreateToken creates a token in the actor's tenant and returns it with
	// its secret string, which is shown once and never stored. Needs
	// PermTokenWrite. EINVALID for a bad request.
	CreateToken(ctx context.Context, c TokenCreate) (*Token, string, error)
	// FindTokens lists the tenant's tokens, newest first. Needs PermTokenRead.
	FindTokens(ctx context.Context) ([]*Token, error)
	// RevokeToken revokes a token of the tenant. Needs PermTokenWrite.
	// ENOTFOUND for an unknown id; revoking twice is a no-op.
	RevokeToken(ctx context.Context, id string) error
	// Authenticate checks a token string and returns the actor it stands
	// for. EUNAUTHORIZED when the token is malformed, unknown, expired or
	// revoked; the message says which. Failures are audited.
	Authenticate(ctx context.Context, token string) (Actor, error)
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isPrintable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}
