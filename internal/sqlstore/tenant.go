package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"cradle"
)

// TenantService implements cradle.TenantService.
type TenantService struct{ db *DB }

var _ cradle.TenantService = (*TenantService)(nil)

// NewTenantService returns the tenant service of db.
func NewTenantService(db *DB) *TenantService { return &TenantService{db: db} }

// CreateTenant creates a tenant and the signed empty head of its audit
// chain, whose first entry records the creation.
func (s *TenantService) CreateTenant(ctx context.Context, name string) (*cradle.Tenant, error) {
	if err := cradle.ValidateTenantName(name); err != nil {
		return nil, err
	}
	actor := "system:local(system)"
	if a, ok := cradle.ActorFromContext(ctx); ok {
		actor = a.String()
	}
	var t *cradle.Tenant
	err := s.db.write(ctx, func(tx *Tx) error {
		var err error
		t, err = tx.createTenant(ctx, name, actor)
		return err
	})
	return t, err
}

func (tx *Tx) createTenant(ctx context.Context, name, actor string) (*cradle.Tenant, error) {
	t := &cradle.Tenant{Name: name, CreatedAt: tx.now}
	err := tx.queryRow(ctx, `INSERT INTO tenants (name, created_at) VALUES (?, ?) RETURNING id`, name, micros(tx.now)).Scan(&t.ID)
	if tx.db.dialect.uniqueViolation(err) {
		return nil, cradle.Errorf(cradle.ECONFLICT, "tenant %q already exists", name)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: create tenant: %w", err)
	}
	if err := tx.ensureHead(ctx, t.ID); err != nil {
		return nil, err
	}
	if err := tx.audit(ctx, t.ID, actor, cradle.AuditEvent{Action: "tenant.create", Subject: "tenant:" + name,
		Details: map[string]any{"tenant_id": t.ID}}); err != nil {
		return nil, err
	}
	return t, nil
}

// FindTenantByName returns the tenant called name.
func (s *TenantService) FindTenantByName(ctx context.Context, name string) (*cradle.Tenant, error) {
	t := &cradle.Tenant{Name: name}
	var created int64
	err := s.db.queryRow(ctx, `SELECT id, created_at FROM tenants WHERE name = ?`, name).Scan(&t.ID, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "tenant %q not found", name)
	} else if err != nil {
		return nil, fmt.Errorf("sqlstore: find tenant: %w", err)
	}
	t.CreatedAt = fromMicros(created)
	return t, nil
}

// FindTenants lists every tenant, for local administration.
func (s *TenantService) FindTenants(ctx context.Context) ([]*cradle.Tenant, error) {
	rows, err := s.db.query(ctx, `SELECT id, name, created_at FROM tenants ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: find tenants: %w", err)
	}
	defer rows.Close()
	var out []*cradle.Tenant
	for rows.Next() {
		t := &cradle.Tenant{}
		var created int64
		if err := rows.Scan(&t.ID, &t.Name, &created); err != nil {
			return nil, fmt.Errorf("sqlstore: find tenants: %w", err)
		}
		t.CreatedAt = fromMicros(created)
		out = append(out, t)
	}
	return out, rows.Err()
}
