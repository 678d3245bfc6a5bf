package sqlstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"cradle"
)

// Tokens are strings "cradle_<id>_<secret>": id is 16 hex digits (8 random
// bytes), secret 43 base64url characters (32 random bytes). Only the SHA-256
// of the secret is stored; a secret of 256 random bits needs no slow hash.

const (
	tokenPrefix    = "cradle_"
	tokenIDLen     = 16     // hex digits of the id in a token string
	tokenIDPrefix  = "tok_" // a token's public id is tokenIDPrefix and those digits
	tokenSecretLen = 43
	// tokenCacheTTL bounds how long a replica trusts a cached token row; a
	// revocation on the same replica takes effect at once.
	tokenCacheTTL = time.Second
	// lastUsedEvery bounds how often a token's last-used time is written.
	lastUsedEvery = time.Minute
)

// TokenService implements cradle.TokenService.
type TokenService struct{ db *DB }

var _ cradle.TokenService = (*TokenService)(nil)

// NewTokenService returns the token service of db.
func NewTokenService(db *DB) *TokenService { return &TokenService{db: db} }

type tokenCache struct {
	mu      sync.Mutex
	entries map[string]tokenCacheEntry
}

type tokenCacheEntry struct {
	tok        cradle.Token
	secretHash []byte
	fetched    time.Time
	lastUsed   time.Time // last time last_used_at was written
}

func (c *tokenCache) forget(id string) {
	c.mu.Lock()
	delete(c.entries, id)
	c.mu.Unlock()
}

func newToken() (id, secret string, err error) {
	var b [8 + 32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("sqlstore: token: %w", err)
	}
	return tokenIDPrefix + hex.EncodeToString(b[:8]), base64.RawURLEncoding.EncodeToString(b[8:]), nil
}

func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// CreateToken creates a token in the actor's tenant.
func (s *TokenService) CreateToken(ctx context.Context, c cradle.TokenCreate) (*cradle.Token, string, error) {
	a, err := s.db.authorize(ctx, cradle.PermTokenWrite, "token.create", "token:new")
	if err != nil {
		return nil, "", err
	}
	var tok *cradle.Token
	var secret string
	err = s.db.write(ctx, func(tx *Tx) error {
		var err error
		tok, secret, err = tx.createToken(ctx, a, c)
		return err
	})
	return tok, secret, err
}

func (tx *Tx) createToken(ctx context.Context, a cradle.Actor, c cradle.TokenCreate) (*cradle.Token, string, error) {
	if err := c.Validate(tx.now); err != nil {
		return nil, "", err
	}
	id, secret, err := newToken()
	if err != nil {
		return nil, "", err
	}
	tok := &cradle.Token{ID: id, TenantID: a.TenantID, Name: c.Name, Role: c.Role, CreatedAt: tx.now, CreatedBy: a.String()}
	if c.ExpiresAt != nil {
		e := c.ExpiresAt.UTC().Truncate(time.Microsecond)
		tok.ExpiresAt = &e
	}
	if _, err := tx.exec(ctx, `INSERT INTO tokens (id, tenant_id, name, role, secret_hash, created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		tok.ID, tok.TenantID, tok.Name, string(tok.Role), hex.EncodeToString(hashSecret(secret)), micros(tok.CreatedAt), tok.CreatedBy, nullMicros(tok.ExpiresAt)); err != nil {
		return nil, "", fmt.Errorf("sqlstore: create token: %w", err)
	}
	details := map[string]any{"name": tok.Name, "role": tok.Role}
	if tok.ExpiresAt != nil {
		details["expires_at"] = tok.ExpiresAt.Format(time.RFC3339)
	}
	if err := tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "token.create", Subject: "token:" + tok.ID, Details: details}); err != nil {
		return nil, "", err
	}
	return tok, tokenPrefix + strings.TrimPrefix(id, tokenIDPrefix) + "_" + secret, nil
}

// Bootstrap creates the default tenant and an admin token when the store
// has no tenant yet, and returns the token; otherwise it returns "".
func (s *TokenService) Bootstrap(ctx context.Context) (string, error) {
	var secret string
	err := s.db.write(ctx, func(tx *Tx) error {
		var n int
		if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM tenants`).Scan(&n); err != nil {
			return fmt.Errorf("sqlstore: bootstrap: %w", err)
		}
		if n > 0 {
			return nil
		}
		sys := cradle.SystemActor(0, "bootstrap")
		t, err := tx.createTenant(ctx, cradle.DefaultTenantName, sys.String())
		if err != nil {
			return err
		}
		sys.TenantID = t.ID
		_, secret, err = tx.createToken(ctx, sys, cradle.TokenCreate{Name: "bootstrap", Role: cradle.RoleAdmin})
		return err
	})
	if cradle.ErrorCode(err) == cradle.ECONFLICT {
		return "", nil // another replica bootstrapped at the same moment
	}
	return secret, err
}

const tokenCols = `id, tenant_id, name, role, created_at, created_by, expires_at, revoked_at, last_used_at`

func scanToken(sc interface{ Scan(...any) error }, extra ...any) (*cradle.Token, error) {
	t := &cradle.Token{}
	var role string
	var created int64
	var expires, revoked, used sql.NullInt64
	dest := append([]any{&t.ID, &t.TenantID, &t.Name, &role, &created, &t.CreatedBy, &expires, &revoked, &used}, extra...)
	if err := sc.Scan(dest...); err != nil {
		return nil, err
	}
	t.Role = cradle.Role(role)
	t.CreatedAt = fromMicros(created)
	t.ExpiresAt, t.RevokedAt, t.LastUsed = fromNullMicros(expires), fromNullMicros(revoked), fromNullMicros(used)
	return t, nil
}

// FindTokens lists the tenant's tokens, newest first.
func (s *TokenService) FindTokens(ctx context.Context) ([]*cradle.Token, error) {
	a, err := s.db.authorize(ctx, cradle.PermTokenRead, "token.list", "tokens")
	if err != nil {
		return nil, err
	}
	rows, err := s.db.query(ctx, `SELECT `+tokenCols+` FROM tokens WHERE tenant_id = ? ORDER BY created_at DESC, id`, a.TenantID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find tokens: %w", err)
	}
	defer rows.Close()
	out := []*cradle.Token{}
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: find tokens: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken revokes a token of the tenant.
func (s *TokenService) RevokeToken(ctx context.Context, id string) error {
	a, err := s.db.authorize(ctx, cradle.PermTokenWrite, "token.revoke", "token:"+id)
	if err != nil {
		return err
	}
	err = s.db.write(ctx, func(tx *Tx) error {
		var revoked sql.NullInt64
		err := tx.queryRow(ctx, `SELECT revoked_at FROM tokens WHERE id = ? AND tenant_id = ?`, id, a.TenantID).Scan(&revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return cradle.Errorf(cradle.ENOTFOUND, "token %q not found", id)
		} else if err != nil {
			return fmt.Errorf("sqlstore: revoke token: %w", err)
		}
		if revoked.Valid {
			return nil
		}
		if _, err := tx.exec(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ?`, micros(tx.now), id); err != nil {
			return fmt.Errorf("sqlstore: revoke token: %w", err)
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "token.revoke", Subject: "token:" + id})
	})
	s.db.tokens.forget(id)
	return err
}

// Authenticate checks a token string. Unknown and malformed tokens are
// audited in tenant 0's chain; expired and revoked ones in their tenant's.
func (s *TokenService) Authenticate(ctx context.Context, token string) (cradle.Actor, error) {
	db := s.db
	refuse := func(tenant int64, subject, why string, err error) (cradle.Actor, error) {
		return cradle.Actor{}, db.refuse(ctx, tenant, "anonymous", cradle.AuditEvent{Action: "auth.refused", Subject: subject,
			Details: map[string]string{"reason": why}}, err)
	}
	if token == "" {
		return refuse(0, "token:none", "missing", cradle.Errorf(cradle.EUNAUTHORIZED, "no API token: send one as \"Authorization: Bearer <token>\""))
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok || len(rest) != tokenIDLen+1+tokenSecretLen || rest[tokenIDLen] != '_' || !isHex(rest[:tokenIDLen]) {
		return refuse(0, "token:malformed", "malformed", cradle.Errorf(cradle.EUNAUTHORIZED, "malformed API token: expected cradle_<id>_<secret> as printed by 'cradle token create'"))
	}
	id, secret := tokenIDPrefix+rest[:tokenIDLen], rest[tokenIDLen+1:]
	now := cradle.Now(db.clock)

	db.tokens.mu.Lock()
	ent, cached := db.tokens.entries[id]
	db.tokens.mu.Unlock()
	if !cached || now.Sub(ent.fetched) > tokenCacheTTL || now.Before(ent.fetched) {
		var hashHex string
		t, err := scanToken(db.queryRowPrepared(ctx, `SELECT `+tokenCols+`, secret_hash FROM tokens WHERE id = ?`, id), &hashHex)
		if errors.Is(err, sql.ErrNoRows) {
			return refuse(0, "token:"+id, "unknown", cradle.Errorf(cradle.EUNAUTHORIZED, "unknown API token %s: it does not exist here; check the server URL or create a token", id))
		} else if err != nil {
			return cradle.Actor{}, fmt.Errorf("sqlstore: authenticate: %w", err)
		}
		h, _ := hex.DecodeString(hashHex)
		ent = tokenCacheEntry{tok: *t, secretHash: h, fetched: now, lastUsed: ent.lastUsed}
		db.tokens.mu.Lock()
		db.tokens.entries[id] = ent
		db.tokens.mu.Unlock()
	}
	t := &ent.tok
	if subtle.ConstantTimeCompare(hashSecret(secret), ent.secretHash) != 1 {
		return refuse(0, "token:"+id, "wrong secret", cradle.Errorf(cradle.EUNAUTHORIZED, "unknown API token %s: the secret does not match", id))
	}
	if t.RevokedAt != nil {
		return refuse(t.TenantID, "token:"+id, "revoked", cradle.Errorf(cradle.EUNAUTHORIZED, "API token %s was revoked at %s; ask an admin for a new one", id, t.RevokedAt.Format(time.RFC3339)))
	}
	if t.ExpiresAt != nil && !now.Before(*t.ExpiresAt) {
		return refuse(t.TenantID, "token:"+id, "expired", cradle.Errorf(cradle.EUNAUTHORIZED, "API token %s expired at %s; ask an admin for a new one", id, t.ExpiresAt.Format(time.RFC3339)))
	}
	if now.Sub(ent.lastUsed) >= lastUsedEvery {
		db.tokens.mu.Lock()
		if e, ok := db.tokens.entries[id]; ok {
			e.lastUsed = now
			db.tokens.entries[id] = e
		}
		db.tokens.mu.Unlock()
		// Not audited: using a token changes nothing. Written off the
		// request path (on SQLite the single writer may be busy with a long
		// import) and best effort: a failure must not refuse a valid request.
		db.background.Add(1)
		go func() {
			defer db.background.Done()
			bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, err := db.wdb.ExecContext(bctx, db.dialect.rebind(`UPDATE tokens SET last_used_at = ? WHERE id = ?`), now.UnixMicro(), id); err != nil {
				db.logger.Warn("token last-used time not recorded", "token", id, "err", err)
			}
		}()
	}
	return cradle.Actor{TenantID: t.TenantID, Role: t.Role, Kind: "token", ID: id}, nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
