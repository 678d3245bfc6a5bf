package storetest

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strings"
	"sync"
	"testing"

	"cradle"
	"cradle/internal/sqlstore"
)

// seedChain makes a tenant whose chain holds several entries and returns
// the context of its admin.
func seedChain(t *testing.T, e *Env) (*cradle.Tenant, context.Context) {
	t.Helper()
	tn, ctx := e.Tenant("acme", cradle.RoleAdmin)
	for i := range 6 {
		create(t, e, ctx, fmt.Sprintf("A-%d", i), "m", nil)
	}
	return tn, ctx
}

func verify(t *testing.T, e *Env, ctx context.Context) *cradle.AuditVerification {
	t.Helper()
	v, err := e.Audit.VerifyAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testAuditEntries(t *testing.T, e *Env) {
	tn, ctx := seedChain(t, e)
	if _, err := e.Devices.TransitionDevice(ctx, "A-1", cradle.DeviceTransition{To: cradle.StateDeployed}); err == nil {
		t.Fatal("factory → deployed allowed")
	}
	all := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(ctx, cradle.AuditFilter{}))
	var actions []string
	for i, en := range all {
		if en.Seq != int64(i+1) || en.TenantID != tn.ID {
			t.Fatalf("entry %d = %+v", i, en)
		}
		actions = append(actions, en.Action)
	}
	want := "tenant.create device.create device.create device.create device.create device.create device.create device.transition.refused"
	if got := strings.Join(actions, " "); got != want {
		t.Fatalf("actions = %s\nwant %s", got, want)
	}
	last := all[len(all)-1]
	if last.Subject != "device:A-1" || !strings.Contains(last.Actor, "admin") || !strings.Contains(string(last.Details), `"to":"deployed"`) {
		t.Fatalf("refusal entry = %+v", last)
	}
	page := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(ctx, cradle.AuditFilter{AfterSeq: 2, Limit: 3}))
	if len(page) != 3 || page[0].Seq != 3 {
		t.Fatalf("page after 2 = %d entries from %d", len(page), page[0].Seq)
	}
	bySubject := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(ctx, cradle.AuditFilter{Subject: ptr("device:A-1")}))
	if len(bySubject) != 2 {
		t.Fatalf("%d entries for device:A-1, want 2", len(bySubject))
	}
	prefix := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(ctx, cradle.AuditFilter{Action: ptr("device.")}))
	if len(prefix) != 7 {
		t.Fatalf("%d entries for prefix device., want 7", len(prefix))
	}
	_, err := e.Audit.FindAuditEntries(ctx, cradle.AuditFilter{AfterSeq: -1})
	wantCode(t, err, cradle.EINVALID)

	// A request with an unknown token is recorded in the chain of tenant 0.
	if _, err := e.Tokens.Authenticate(context.Background(), "nonsense"); err == nil {
		t.Fatal("nonsense token accepted")
	}
	chains := must[[]*cradle.AuditVerification](t)(e.Audit.VerifyAll(context.Background()))
	if len(chains) != 2 || chains[0].TenantID != 0 || chains[0].Entries != 1 || !chains[0].OK || !chains[1].OK {
		t.Fatalf("chains = %+v", chains)
	}
	if v := verify(t, e, ctx); !v.OK || v.Entries != int64(len(all)) || v.HeadSeq != int64(len(all)) {
		t.Fatalf("verification = %+v", v)
	}
}

// testAuditTamper edits the database directly, as someone with database
// access would, and checks that verification names the first broken link.
func testAuditTamper(t *testing.T, e *Env) {
	tests := []struct {
		name    string
		tamper  func(e *Env, tenant int64)
		seq     int64
		message string
	}{
		{"edited row", func(e *Env, tn int64) {
			e.Exec(`UPDATE audit_entries SET subject = 'device:B-9' WHERE tenant_id = ? AND seq = 4`, tn)
		}, 4, "altered"},
		{"edited details", func(e *Env, tn int64) {
			e.Exec(`UPDATE audit_entries SET details = '{}' WHERE tenant_id = ? AND seq = 3`, tn)
		}, 3, "altered"},
		{"deleted row", func(e *Env, tn int64) {
			e.Exec(`DELETE FROM audit_entries WHERE tenant_id = ? AND seq = 3`, tn)
		}, 3, "missing"},
		{"inserted row", func(e *Env, tn int64) {
			// Make room at 4 and insert a forged entry there.
			e.Exec(`UPDATE audit_entries SET seq = seq + 1000 WHERE tenant_id = ? AND seq >= 4`, tn)
			e.Exec(`UPDATE audit_entries SET seq = seq - 999 WHERE tenant_id = ? AND seq >= 1004`, tn)
			e.Exec(`INSERT INTO audit_entries (tenant_id, seq, time, actor, action, subject, details, prev_hash, hash)
				SELECT tenant_id, 4, time, actor, 'device.create', 'device:FORGED', details, hash, hash FROM audit_entries WHERE tenant_id = ? AND seq = 3`, tn)
		}, 4, "altered"},
		{"reordered rows", func(e *Env, tn int64) {
			e.Exec(`UPDATE audit_entries SET seq = -1 WHERE tenant_id = ? AND seq = 3`, tn)
			e.Exec(`UPDATE audit_entries SET seq = 3 WHERE tenant_id = ? AND seq = 4`, tn)
			e.Exec(`UPDATE audit_entries SET seq = 4 WHERE tenant_id = ? AND seq = -1`, tn)
		}, 3, ""},
		{"truncated tail", func(e *Env, tn int64) {
			e.Exec(`DELETE FROM audit_entries WHERE tenant_id = ? AND seq > 5`, tn)
		}, 6, "truncated"},
		{"forged tail", func(e *Env, tn int64) {
			// A well-formed entry past the signed head: hashes link, but the
			// server never signed it.
			var en cradle.AuditEntry
			var tm int64
			var details string
			err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT seq, time, hash FROM audit_entries WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1`), tn).Scan(&en.Seq, &tm, &en.PrevHash)
			if err != nil {
				e.t.Fatal(err)
			}
			en = cradle.AuditEntry{TenantID: tn, Seq: en.Seq + 1, Time: Epoch, Actor: "token:x(admin)", Action: "device.create",
				Subject: "device:FORGED", Details: []byte(`{}`), PrevHash: en.PrevHash}
			en.Hash = en.ComputeHash()
			details = string(en.Details)
			e.Exec(`INSERT INTO audit_entries (tenant_id, seq, time, actor, action, subject, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				en.TenantID, en.Seq, en.Time.UnixMicro(), en.Actor, en.Action, en.Subject, details, en.PrevHash, en.Hash)
		}, 8, "not written by this server"},
		{"deleted checkpoint", func(e *Env, tn int64) {
			e.Exec(`DELETE FROM audit_heads WHERE tenant_id = ?`, tn)
		}, 1, "no signed checkpoint"},
		{"forged checkpoint", func(e *Env, tn int64) {
			e.Exec(`DELETE FROM audit_entries WHERE tenant_id = ? AND seq > 5`, tn)
			e.Exec(`UPDATE audit_heads SET seq = 5, hash = (SELECT hash FROM audit_entries WHERE tenant_id = ? AND seq = 5) WHERE tenant_id = ?`, tn, tn)
		}, 5, "signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, e.Backend)
			tn, ctx := seedChain(t, e)
			if v := verify(t, e, ctx); !v.OK || v.HeadSeq != 7 {
				t.Fatalf("before tampering: %+v", v)
			}
			tt.tamper(e, tn.ID)
			v := verify(t, e, ctx)
			if v.OK || v.Broken == nil {
				t.Fatalf("tampering not detected: %+v", v)
			}
			if v.Broken.Seq != tt.seq || !strings.Contains(v.Broken.Reason, tt.message) {
				t.Fatalf("first broken link = %+v, want seq %d and %q", v.Broken, tt.seq, tt.message)
			}
			// Other tenants' chains are untouched.
			for _, c := range must[[]*cradle.AuditVerification](t)(e.Audit.VerifyAll(context.Background())) {
				if c.TenantID != tn.ID && !c.OK {
					t.Fatalf("chain of tenant %d broken too: %+v", c.TenantID, c.Broken)
				}
			}
		})
	}
}

// testAuditWitness rolls the chain back to an earlier, validly signed head,
// which only the witness file outside the database can reveal.
func testAuditWitness(t *testing.T, e *Env) {
	tn, ctx := seedChain(t, e)
	var seq, tm int64
	var hash, sig string
	if err := e.Raw.QueryRow(e.Backend.Rebind(`SELECT seq, hash, time, signature FROM audit_heads WHERE tenant_id = ?`), tn.ID).Scan(&seq, &hash, &tm, &sig); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		create(t, e, ctx, fmt.Sprintf("W-%d", i), "m", nil)
	}
	e.Reopen() // flushes the witness
	e.Exec(`DELETE FROM audit_entries WHERE tenant_id = ? AND seq > ?`, tn.ID, seq)
	e.Exec(`UPDATE audit_heads SET seq = ?, hash = ?, time = ?, signature = ? WHERE tenant_id = ?`, seq, hash, tm, sig, tn.ID)
	v := verify(t, e, e.As(tn.ID, cradle.RoleAuditor))
	if v.OK || v.Broken == nil || v.Broken.Seq != seq+1 || !strings.Contains(v.Broken.Reason, "witness") {
		t.Fatalf("rollback to an older signed head not detected: %+v", v)
	}
}

func testConcurrentWrites(t *testing.T, e *Env) {
	tn, ctx := e.Tenant("acme", cradle.RoleAdmin)
	_, other := e.Tenant("globex", cradle.RoleAdmin)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ctx
			if w%2 == 1 {
				c = other
			}
			for i := range 10 {
				s := fmt.Sprintf("CW-%d-%d", w, i)
				if _, err := e.Devices.CreateDevice(c, cradle.DeviceCreate{Serial: s, Model: "m"}); err != nil {
					errs <- err
					return
				}
				if _, err := e.Devices.TransitionDevice(c, s, cradle.DeviceTransition{To: cradle.StateProvisioned}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, c := range must[[]*cradle.AuditVerification](t)(e.Audit.VerifyAll(context.Background())) {
		if !c.OK {
			t.Fatalf("chain %d broken after concurrent writes: %+v", c.TenantID, c.Broken)
		}
		if c.TenantID == tn.ID && c.Entries != 1+80 {
			t.Fatalf("acme chain has %d entries, want 81", c.Entries)
		}
	}
}

// testAuditWrongKey opens a store with a key other than the one that
// signed its log: refused with an error that says so, and nothing written.
func testAuditWrongKey(t *testing.T, e *Env) {
	_, ctx := e.Tenant("acme", cradle.RoleAdmin)
	if _, err := e.Devices.CreateDevice(ctx, cradle.DeviceCreate{Serial: "SN-1", Model: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	var before int
	if err := e.Raw.QueryRow(`SELECT COUNT(*) FROM audit_entries`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	_, other, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(context.Background(), e.DSN, sqlstore.Options{AuditKey: other, Clock: e.Clock})
	if err == nil {
		db.Close()
		t.Fatal("a store opened with another audit key than the one that signed its log")
	}
	if !strings.Contains(err.Error(), "audit key does not match") {
		t.Errorf("error %q; want one saying the audit key does not match", err)
	}
	var after int
	if err := e.Raw.QueryRow(`SELECT COUNT(*) FROM audit_entries`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("the refused open wrote %d audit entries", after-before)
	}
	// The right key still opens it, and the log verifies.
	e.Reopen()
	all, err := e.Audit.VerifyAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range all {
		if !v.OK {
			t.Errorf("tenant %d chain broken after a refused open: %+v", v.TenantID, v.Broken)
		}
	}
}
