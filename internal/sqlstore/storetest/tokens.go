package storetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"cradle"
)

func testTenants(t *testing.T, e *Env) {
	ctx := context.Background()
	tn := must[*cradle.Tenant](t)(e.Tenants.CreateTenant(ctx, "acme"))
	if tn.ID == 0 || tn.Name != "acme" {
		t.Fatalf("tenant = %+v", tn)
	}
	_, err := e.Tenants.CreateTenant(ctx, "acme")
	wantCode(t, err, cradle.ECONFLICT, "already exists")
	_, err = e.Tenants.CreateTenant(ctx, "Bad Name")
	wantCode(t, err, cradle.EINVALID, "invalid tenant name")
	got := must[*cradle.Tenant](t)(e.Tenants.FindTenantByName(ctx, "acme"))
	if got.ID != tn.ID {
		t.Fatalf("found tenant %d, want %d", got.ID, tn.ID)
	}
	_, err = e.Tenants.FindTenantByName(ctx, "nope")
	wantCode(t, err, cradle.ENOTFOUND)
}

func testBootstrap(t *testing.T, e *Env) {
	ctx := context.Background()
	secret := must[string](t)(e.Tokens.Bootstrap(ctx))
	if !strings.HasPrefix(secret, "cradle_") {
		t.Fatalf("bootstrap token = %q", secret)
	}
	a, err := e.Tokens.Authenticate(ctx, secret)
	if err != nil || a.Role != cradle.RoleAdmin {
		t.Fatalf("bootstrap token authenticates as %+v, %v", a, err)
	}
	tn := must[*cradle.Tenant](t)(e.Tenants.FindTenantByName(ctx, cradle.DefaultTenantName))
	if a.TenantID != tn.ID {
		t.Fatalf("bootstrap token is in tenant %d, want the default tenant %d", a.TenantID, tn.ID)
	}
	e.Reopen()
	if again := must[string](t)(e.Tokens.Bootstrap(ctx)); again != "" {
		t.Fatalf("second bootstrap created another token %q", again)
	}
}

func testTokens(t *testing.T, e *Env) {
	tn, admin := e.Tenant("acme", cradle.RoleAdmin)
	tok, secret, err := e.Tokens.CreateToken(admin, cradle.TokenCreate{Name: "ci", Role: cradle.RoleOperator})
	if err != nil {
		t.Fatal(err)
	}
	if tok.TenantID != tn.ID || tok.Role != cradle.RoleOperator || tok.CreatedBy == "" {
		t.Fatalf("token = %+v", tok)
	}
	a, err := e.Tokens.Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatal(err)
	}
	if a.TenantID != tn.ID || a.Role != cradle.RoleOperator || a.ID != tok.ID {
		t.Fatalf("actor = %+v", a)
	}
	e.Reopen() // waits for the last-used write
	for _, l := range must[[]*cradle.Token](t)(e.Tokens.FindTokens(admin)) {
		if l.ID == tok.ID && (l.LastUsed == nil || !l.LastUsed.Equal(Epoch)) {
			t.Fatalf("last use of the token not recorded: %+v", l)
		}
	}
	// The stored row never holds the secret.
	var stored string
	if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT secret_hash FROM tokens WHERE id = ?`), tok.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(secret, stored) || strings.Contains(stored, secret[len(secret)-20:]) {
		t.Fatal("the token secret is stored in the clear")
	}

	for _, tc := range []struct {
		name, token, msg string
	}{
		{"missing", "", "no API token"},
		{"malformed", "hello", "malformed"},
		{"unknown", "cradle_0123456789abcdef_" + strings.Repeat("A", 43), "unknown API token"},
		{"wrong secret", secret[:len(secret)-4] + "AAAA", "does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Tokens.Authenticate(context.Background(), tc.token)
			wantCode(t, err, cradle.EUNAUTHORIZED, tc.msg)
		})
	}

	for _, bad := range []cradle.TokenCreate{
		{Name: "", Role: cradle.RoleAdmin},
		{Name: "x", Role: "root"},
		{Name: "x", Role: cradle.RoleDevice},
		{Name: "x", Role: cradle.RoleAdmin, ExpiresAt: ptr(Epoch.Add(-time.Hour))},
	} {
		_, _, err := e.Tokens.CreateToken(admin, bad)
		wantCode(t, err, cradle.EINVALID)
	}

	e.Clock.Add(time.Second)
	_, _, err = e.Tokens.CreateToken(admin, cradle.TokenCreate{Name: "later", Role: cradle.RoleAuditor})
	if err != nil {
		t.Fatal(err)
	}
	list := must[[]*cradle.Token](t)(e.Tokens.FindTokens(admin))
	if len(list) != 2 || list[0].Name != "later" || list[1].Name != "ci" {
		t.Fatalf("tokens = %v, want newest first [later ci]", names(list))
	}
	// Other tenants' tokens are invisible and cannot be revoked.
	_, other := e.Tenant("globex", cradle.RoleAdmin)
	if l := must[[]*cradle.Token](t)(e.Tokens.FindTokens(other)); len(l) != 0 {
		t.Fatalf("tenant globex sees tokens %v", names(l))
	}
	wantCode(t, e.Tokens.RevokeToken(other, tok.ID), cradle.ENOTFOUND)
	if _, err := e.Tokens.Authenticate(context.Background(), secret); err != nil {
		t.Fatalf("token stopped working after another tenant's revoke attempt: %v", err)
	}
}

func testTokenExpiry(t *testing.T, e *Env) {
	_, admin := e.Tenant("acme", cradle.RoleAdmin)
	exp := Epoch.Add(time.Hour)
	_, short, err := e.Tokens.CreateToken(admin, cradle.TokenCreate{Name: "short", Role: cradle.RoleOperator, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	tok, long, err := e.Tokens.CreateToken(admin, cradle.TokenCreate{Name: "long", Role: cradle.RoleOperator})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Tokens.Authenticate(context.Background(), short); err != nil {
		t.Fatal(err)
	}
	e.Clock.Add(time.Hour)
	_, err = e.Tokens.Authenticate(context.Background(), short)
	wantCode(t, err, cradle.EUNAUTHORIZED, "expired at")

	if _, err := e.Tokens.Authenticate(context.Background(), long); err != nil {
		t.Fatal(err)
	}
	// Revocation takes effect at once, cached or not.
	if err := e.Tokens.RevokeToken(admin, tok.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.Tokens.Authenticate(context.Background(), long)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
	if err := e.Tokens.RevokeToken(admin, tok.ID); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	wantCode(t, e.Tokens.RevokeToken(admin, "0000000000000000"), cradle.ENOTFOUND)
	// Another store instance (a replica) sees the revocation too.
	e.Reopen()
	_, err = e.Tokens.Authenticate(context.Background(), long)
	wantCode(t, err, cradle.EUNAUTHORIZED, "revoked")
}

func names(ts []*cradle.Token) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}

func ptr[T any](v T) *T { return &v }
