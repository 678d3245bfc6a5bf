package cradle_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

var allPermissions = []cradle.Permission{
	"device.read", "device.create", "device.update", "device.transition",
	"audit.read", "token.read", "token.write", "certificate.read", "certificate.issue", "certificate.revoke",
	"factory.read", "factory.batch", "factory.station", "factory.provision",
	"telemetry.read", "telemetry.write", "device.claim", "policy.write", "command.read", "command.issue", "command.device",
	"twin.read", "twin.write", "twin.report",
	"release.read", "release.write", "rollout.read", "rollout.write", "update.device",
}

// wantPermissions is the authorization table as the role comments in
// auth.go describe it, written out independently of the code.
var wantPermissions = map[cradle.Role][]cradle.Permission{
	// Everything in its tenant, tokens included.
	// Issuing is for devices and the factory, not for people.
	"admin": {"device.read", "device.create", "device.update", "device.transition", "audit.read", "token.read", "token.write",
		"certificate.read", "certificate.revoke", "factory.read", "factory.batch", "factory.station", "telemetry.read",
		"device.claim", "policy.write", "command.read", "command.issue", "twin.read", "twin.write",
		"release.read", "release.write", "rollout.read", "rollout.write"},
	// Runs the fleet: devices, transitions, imports; reads the audit log;
	// revokes certificates (quarantine); no tokens.
	"operator": {"device.read", "device.create", "device.update", "device.transition", "audit.read", "certificate.read", "certificate.revoke",
		"factory.read", "factory.batch", "telemetry.read", "device.claim", "command.read", "command.issue", "twin.read", "twin.write",
		"release.read", "release.write", "rollout.read", "rollout.write"},
	// The factory line: creates and provisions units, records their IDevIDs.
	"factory": {"device.read", "device.create", "device.transition", "certificate.issue",
		"factory.read", "factory.provision", "telemetry.read"},
	// Reads everything, changes nothing.
	"auditor": {"device.read", "audit.read", "token.read", "certificate.read", "factory.read", "telemetry.read", "command.read", "twin.read",
		"release.read", "rollout.read"},
	// A device acting on itself: it may only ask to move, to be issued
	// a certificate (enrollment), report its telemetry, fetch its commands
	// and report their results, read its desired configuration and report
	// its running one, fetch its pending update and report on it.
	"device": {"device.transition", "certificate.issue", "telemetry.write", "command.device", "twin.read", "twin.report",
		"update.device"},
	// The server itself.
	"system": {"device.read", "device.create", "device.update", "device.transition", "audit.read", "token.read", "token.write",
		"certificate.read", "certificate.issue", "certificate.revoke",
		"factory.read", "factory.batch", "factory.station", "factory.provision",
		"telemetry.read", "telemetry.write", "device.claim", "policy.write", "command.read", "command.issue", "command.device",
		"twin.read", "twin.write", "twin.report",
		"release.read", "release.write", "rollout.read", "rollout.write", "update.device"},
}

// TestPermissionsListed fails when a permission is added to the code and
// not to the table above.
func TestPermissionsListed(t *testing.T) {
	if diff := cmp.Diff(allPermissions, cradle.Permissions); diff != "" {
		t.Errorf("permissions in the code vs in this test (-test +code):\n%s", diff)
	}
}

func TestRolePermissionMatrix(t *testing.T) {
	for _, role := range allRoles {
		for _, p := range allPermissions {
			want := false
			for _, q := range wantPermissions[role] {
				want = want || q == p
			}
			if got := role.Allowed(p); got != want {
				t.Errorf("Role(%s).Allowed(%s) = %v, want %v", role, p, got, want)
			}
		}
	}
	for _, role := range []cradle.Role{"", "root", "Admin", "admin "} {
		for _, p := range allPermissions {
			if role.Allowed(p) {
				t.Errorf("unknown role %q holds %s", role, p)
			}
		}
	}
	if cradle.RoleAdmin.Allowed("device.delete") {
		t.Error("admin holds an unknown permission")
	}
}

func TestAuthorize(t *testing.T) {
	ctx := context.Background()
	t.Run("no actor", func(t *testing.T) {
		for _, p := range allPermissions {
			_, err := cradle.Authorize(ctx, p)
			if code := cradle.ErrorCode(err); code != cradle.EUNAUTHORIZED {
				t.Errorf("Authorize(%s) without an actor: code %q, want %q", p, code, cradle.EUNAUTHORIZED)
			}
			if msg := cradle.ErrorMessage(err); !strings.Contains(msg, "Authorization: Bearer") {
				t.Errorf("message %q should say how to send credentials", msg)
			}
		}
	})
	t.Run("every role and permission", func(t *testing.T) {
		for _, role := range allRoles {
			for _, p := range allPermissions {
				actor := cradle.Actor{TenantID: 3, Role: role, Kind: "token", ID: "tok_0123456789abcdef"}
				got, err := cradle.Authorize(cradle.NewContextWithActor(ctx, actor), p)
				if role.Allowed(p) {
					if err != nil || got != actor {
						t.Errorf("Authorize(%s as %s) = %+v, %v; want the actor, nil", p, role, got, err)
					}
					continue
				}
				if code := cradle.ErrorCode(err); code != cradle.EFORBIDDEN {
					t.Errorf("Authorize(%s as %s): code %q, want %q", p, role, code, cradle.EFORBIDDEN)
				}
				if msg := cradle.ErrorMessage(err); !strings.HasPrefix(msg, "role "+string(role)+" may not ") {
					t.Errorf("Authorize(%s as %s) message %q should name the role", p, role, msg)
				}
			}
		}
	})
	t.Run("every permission has a verb", func(t *testing.T) {
		// An unknown role holds nothing, so every permission is refused and
		// its message must say what the operation was.
		ctx := cradle.NewContextWithActor(ctx, cradle.Actor{Role: "guest", Kind: "token", ID: "x"})
		verbs := map[string]cradle.Permission{}
		for _, p := range allPermissions {
			_, err := cradle.Authorize(ctx, p)
			msg := cradle.ErrorMessage(err)
			verb, _, ok := strings.Cut(strings.TrimPrefix(msg, "role guest may not "), ";")
			if !ok || strings.TrimSpace(verb) == "" {
				t.Errorf("Authorize(%s) message %q does not say what the operation is", p, msg)
			}
			if q, dup := verbs[verb]; dup {
				t.Errorf("permissions %s and %s are both described as %q", q, p, verb)
			}
			verbs[verb] = p
		}
	})
}

func TestActorContext(t *testing.T) {
	if _, ok := cradle.ActorFromContext(context.Background()); ok {
		t.Error("ActorFromContext found an actor in an empty context")
	}
	a := cradle.SystemActor(4, "security-rule")
	got, ok := cradle.ActorFromContext(cradle.NewContextWithActor(context.Background(), a))
	if !ok {
		t.Fatal("ActorFromContext lost the actor")
	}
	want := cradle.Actor{TenantID: 4, Role: cradle.RoleSystem, Kind: "system", ID: "security-rule"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("SystemActor (-want +got):\n%s", diff)
	}
	if s := got.String(); s != "system:security-rule(system)" {
		t.Errorf("Actor.String() = %q", s)
	}
	tok := cradle.Actor{TenantID: 1, Role: cradle.RoleAdmin, Kind: "token", ID: "tok_3f9a"}
	if s := tok.String(); s != "token:tok_3f9a(admin)" {
		t.Errorf("Actor.String() = %q", s)
	}
}

func TestParseTokenRole(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want cradle.Role
		ok   bool
	}{
		{"admin", "admin", cradle.RoleAdmin, true},
		{"operator", "operator", cradle.RoleOperator, true},
		{"factory", "factory", cradle.RoleFactory, true},
		{"auditor", "auditor", cradle.RoleAuditor, true},
		{"surrounding spaces", "  auditor\n", cradle.RoleAuditor, true},
		{"device is not a token role", "device", "", false},
		{"system is not a token role", "system", "", false},
		{"upper case", "Admin", "", false},
		{"empty", "", "", false},
		{"unknown", "root", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cradle.ParseTokenRole(tt.in)
			if tt.ok {
				if err != nil || got != tt.want {
					t.Errorf("ParseTokenRole(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				return
			}
			if cradle.ErrorCode(err) != cradle.EINVALID || got != "" {
				t.Fatalf("ParseTokenRole(%q) = %q, %v; want EINVALID", tt.in, got, err)
			}
			if msg := cradle.ErrorMessage(err); !strings.Contains(msg, "admin, operator, factory, auditor") {
				t.Errorf("message %q should list the valid roles", msg)
			}
		})
	}
	if diff := cmp.Diff([]cradle.Role{"admin", "operator", "factory", "auditor"}, cradle.TokenRoles); diff != "" {
		t.Errorf("TokenRoles (-want +got):\n%s", diff)
	}
}

func TestTokenCreateValidate(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Second), now.Add(time.Hour)
	tests := []struct {
		name    string
		c       cradle.TokenCreate
		wantErr string // substring of the message; "" for valid
	}{
		{"valid", cradle.TokenCreate{Name: "ci pipeline", Role: "operator"}, ""},
		{"valid with expiry", cradle.TokenCreate{Name: "x", Role: "auditor", ExpiresAt: &future}, ""},
		{"name of 128", cradle.TokenCreate{Name: strings.Repeat("n", 128), Role: "admin"}, ""},
		{"unicode name", cradle.TokenCreate{Name: "Größe line 3", Role: "factory"}, ""},
		{"empty name", cradle.TokenCreate{Role: "admin"}, "invalid token name"},
		{"name of 129", cradle.TokenCreate{Name: strings.Repeat("n", 129), Role: "admin"}, "1 to 128 printable"},
		{"control character", cradle.TokenCreate{Name: "a\tb", Role: "admin"}, "invalid token name"},
		{"invalid UTF-8", cradle.TokenCreate{Name: "a\xffb", Role: "admin"}, "invalid token name"},
		{"device role", cradle.TokenCreate{Name: "x", Role: "device"}, `unknown role "device"`},
		{"no role", cradle.TokenCreate{Name: "x"}, "unknown role"},
		{"expiry in the past", cradle.TokenCreate{Name: "x", Role: "admin", ExpiresAt: &past}, "token expiry 2026-03-01T11:59:59Z is not in the future"},
		{"expiry now", cradle.TokenCreate{Name: "x", Role: "admin", ExpiresAt: &now}, "not in the future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.c.Validate(now), tt.wantErr)
		})
	}
}

func TestValidateTenantName(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"default", "default", true},
		{"digits and dashes", "acme-2", true},
		{"single letter", "a", true},
		{"63 characters", "a" + strings.Repeat("b", 62), true},
		{"64 characters", "a" + strings.Repeat("b", 63), false},
		{"empty", "", false},
		{"starts with a digit", "1acme", false},
		{"starts with a dash", "-acme", false},
		{"upper case", "Acme", false},
		{"underscore", "ac_me", false},
		{"space", "ac me", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := ""
			if !tt.valid {
				want = "invalid tenant name"
			}
			checkErr(t, cradle.ValidateTenantName(tt.in), want)
		})
	}
}

// checkErr checks that err is nil when want is empty, and otherwise an
// EINVALID error whose message contains want.
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Errorf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Errorf("no error; want one containing %q", want)
		return
	}
	if code := cradle.ErrorCode(err); code != cradle.EINVALID {
		t.Errorf("code %q, want %q (%v)", code, cradle.EINVALID, err)
	}
	if msg := cradle.ErrorMessage(err); !strings.Contains(msg, want) {
		t.Errorf("message %q does not contain %q", msg, want)
	}
}
