package cradle_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

const auditTenant = 7

var (
	auditKey   = ed25519.NewKeyFromSeed(seed(1))
	otherKey   = ed25519.NewKeyFromSeed(seed(2))
	auditStart = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

func seed(b byte) []byte {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = b
	}
	return s
}

// buildChain returns a valid chain of n entries for tenant, as the store
// would write it.
func buildChain(tenant int64, n int) []*cradle.AuditEntry {
	var chain []*cradle.AuditEntry
	prev := cradle.GenesisHash
	for i := 1; i <= n; i++ {
		e := &cradle.AuditEntry{
			TenantID: tenant,
			Seq:      int64(i),
			Time:     auditStart.Add(time.Duration(i) * time.Second),
			Actor:    "token:tok_0123456789abcdef(admin)",
			Action:   "device.create",
			Subject:  fmt.Sprintf("device:SN-%04d", i),
			Details:  json.RawMessage(fmt.Sprintf(`{"serial":"SN-%04d"}`, i)),
			PrevHash: prev,
		}
		e.Hash = e.ComputeHash()
		prev = e.Hash
		chain = append(chain, e)
	}
	return chain
}

// checkpointAt signs the head of chain at entry seq (0: the empty chain).
func checkpointAt(chain []*cradle.AuditEntry, seq int64, key ed25519.PrivateKey) *cradle.AuditCheckpoint {
	cp := &cradle.AuditCheckpoint{TenantID: auditTenant, Seq: seq, Hash: cradle.GenesisHash, Time: auditStart.Add(time.Hour)}
	if seq > 0 {
		cp.Hash = chain[seq-1].Hash
	}
	cp.Sign(key)
	return cp
}

// clone deep-copies a chain so that a test may tamper with it.
func clone(chain []*cradle.AuditEntry) []*cradle.AuditEntry {
	out := make([]*cradle.AuditEntry, len(chain))
	for i, e := range chain {
		c := *e
		c.Details = append(json.RawMessage(nil), e.Details...)
		out[i] = &c
	}
	return out
}

func verify(chain []*cradle.AuditEntry, cp, witness *cradle.AuditCheckpoint) *cradle.AuditVerification {
	v := cradle.NewAuditVerifier(auditTenant, auditKey.Public().(ed25519.PublicKey), cp, witness)
	for _, e := range chain {
		v.Add(e)
	}
	return v.Finish()
}

func TestAuditVerifierAcceptsValidChains(t *testing.T) {
	chain := buildChain(auditTenant, 5)
	tests := []struct {
		name    string
		chain   []*cradle.AuditEntry
		cp      *cradle.AuditCheckpoint
		witness *cradle.AuditCheckpoint
	}{
		{"empty chain without checkpoint", nil, nil, nil},
		{"empty chain with checkpoint at 0", nil, checkpointAt(nil, 0, auditKey), nil},
		{"one entry", chain[:1], checkpointAt(chain, 1, auditKey), nil},
		{"five entries", chain, checkpointAt(chain, 5, auditKey), nil},
		{"witness at the head", chain, checkpointAt(chain, 5, auditKey), checkpointAt(chain, 5, auditKey)},
		{"witness behind the head", chain, checkpointAt(chain, 5, auditKey), checkpointAt(chain, 2, auditKey)},
		{"witness of the empty chain", chain, checkpointAt(chain, 5, auditKey), checkpointAt(chain, 0, auditKey)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := verify(tt.chain, tt.cp, tt.witness)
			n := int64(len(tt.chain))
			want := &cradle.AuditVerification{TenantID: auditTenant, OK: true, Entries: n, HeadSeq: n, Checkpoint: tt.cp}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("verification (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAuditVerifierDetectsTampering(t *testing.T) {
	const n = 5
	chain := buildChain(auditTenant, n)
	head := checkpointAt(chain, n, auditKey)

	rehash := func(c []*cradle.AuditEntry, from int) {
		for i := from; i < len(c); i++ {
			if i > 0 {
				c[i].PrevHash = c[i-1].Hash
			}
			c[i].Hash = c[i].ComputeHash()
		}
	}
	rewritten := clone(chain)
	rewritten[1].Subject = "device:SN-EVIL"
	rehash(rewritten, 1)

	tests := []struct {
		name       string
		tamper     func(c []*cradle.AuditEntry) []*cradle.AuditEntry
		cp         *cradle.AuditCheckpoint // nil: the genuine head checkpoint
		noCP       bool
		witness    *cradle.AuditCheckpoint
		wantSeq    int64
		wantReason string
		wantCount  int64 // entries walked; 0 means n
	}{
		{
			name: "edit a field",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[2].Actor = "token:tok_ffffffffffffffff(admin)"
				return c
			},
			wantSeq:    3,
			wantReason: "entry 3 has been altered: its content does not match its hash",
		},
		{
			name: "edit details",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[1].Details = json.RawMessage(`{"serial":"SN-9999"}`)
				return c
			},
			wantSeq:    2,
			wantReason: "entry 2 has been altered: its content does not match its hash",
		},
		{
			name: "edit the time",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[3].Time = c[3].Time.Add(time.Microsecond)
				return c
			},
			wantSeq:    4,
			wantReason: "entry 4 has been altered: its content does not match its hash",
		},
		{
			name: "edit a field and recompute its hash",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[2].Action = "device.update"
				c[2].Hash = c[2].ComputeHash()
				return c
			},
			wantSeq:    4,
			wantReason: "entry 4 does not link to entry 3: its prev_hash differs from that entry's hash (inserted, deleted or reordered rows)",
		},
		{
			name: "edit a field and rehash the rest of the chain",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[2].Action = "device.update"
				rehash(c, 2)
				return c
			},
			wantSeq:    5,
			wantReason: "entry 5 differs from the signed checkpoint",
		},
		{
			name:       "delete a middle row",
			tamper:     func(c []*cradle.AuditEntry) []*cradle.AuditEntry { return append(c[:2], c[3:]...) },
			wantSeq:    3,
			wantReason: "entry 3 is missing: the chain jumps from 2 to 4 (deleted rows)",
			wantCount:  n - 1,
		},
		{
			name: "delete a middle row and renumber",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c = append(c[:2], c[3:]...)
				for i := 2; i < len(c); i++ {
					c[i].Seq--
				}
				return c
			},
			wantSeq:    3,
			wantReason: "entry 3 does not link to entry 2: its prev_hash differs from that entry's hash (inserted, deleted or reordered rows)",
			wantCount:  n - 1,
		},
		{
			name: "insert a linked row and renumber",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				forged := &cradle.AuditEntry{TenantID: auditTenant, Seq: 3, Time: c[1].Time, Actor: "system:x(system)",
					Action: "device.create", Subject: "device:SN-EVIL", Details: json.RawMessage(`{}`), PrevHash: c[1].Hash}
				forged.Hash = forged.ComputeHash()
				out := append(append(append([]*cradle.AuditEntry{}, c[:2]...), forged), c[2:]...)
				for i := 3; i < len(out); i++ {
					out[i].Seq++
				}
				return out
			},
			wantSeq:    4,
			wantReason: "entry 4 does not link to entry 3: its prev_hash differs from that entry's hash (inserted, deleted or reordered rows)",
			wantCount:  n + 1,
		},
		{
			name: "insert a row with a duplicate sequence",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				dup := *c[2]
				dup.Subject = "device:SN-EVIL"
				dup.Hash = dup.ComputeHash()
				return append(append(append([]*cradle.AuditEntry{}, c[:3]...), &dup), c[3:]...)
			},
			wantSeq:    3,
			wantReason: "entry 3 appears out of order after 3 (reordered or inserted rows)",
			wantCount:  n + 1,
		},
		{
			name: "swap two rows",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[1], c[2] = c[2], c[1]
				c[1].Seq, c[2].Seq = 2, 3
				return c
			},
			wantSeq:    2,
			wantReason: "entry 2 does not link to entry 1: its prev_hash differs from that entry's hash (inserted, deleted or reordered rows)",
		},
		{
			name:       "truncate the tail",
			tamper:     func(c []*cradle.AuditEntry) []*cradle.AuditEntry { return c[:3] },
			wantSeq:    4,
			wantReason: "the chain ends at entry 3 but the signed checkpoint names entry 5: the tail was truncated",
			wantCount:  3,
		},
		{
			name:       "delete every row",
			tamper:     func(c []*cradle.AuditEntry) []*cradle.AuditEntry { return nil },
			wantSeq:    1,
			wantReason: "the chain ends at entry 0 but the signed checkpoint names entry 5: the tail was truncated",
			wantCount:  -1,
		},
		{
			name: "append a forged row past the checkpoint",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				forged := &cradle.AuditEntry{TenantID: auditTenant, Seq: n + 1, Time: c[n-1].Time.Add(time.Second), Actor: "system:x(system)",
					Action: "device.transition", Subject: "device:SN-0001", Details: json.RawMessage(`{}`), PrevHash: c[n-1].Hash}
				forged.Hash = forged.ComputeHash()
				return append(c, forged)
			},
			wantSeq:    n + 1,
			wantReason: "entries 6 to 6 follow the signed checkpoint at 5: they were not written by this server",
			wantCount:  n + 1,
		},
		{
			name:       "checkpoint row deleted",
			noCP:       true,
			wantSeq:    1,
			wantReason: "no signed checkpoint for a chain of 5 entries: the checkpoint row was deleted",
		},
		{
			name: "bad checkpoint signature",
			cp: func() *cradle.AuditCheckpoint {
				cp := checkpointAt(chain, n, auditKey)
				cp.Signature[0] ^= 1
				return cp
			}(),
			wantSeq:    n,
			wantReason: "the checkpoint at entry 5 has no valid signature from this server's audit key",
		},
		{
			name:       "checkpoint signed by another key",
			cp:         checkpointAt(chain, n, otherKey),
			wantSeq:    n,
			wantReason: "the checkpoint at entry 5 has no valid signature from this server's audit key",
		},
		{
			name: "checkpoint moved forward without a new signature",
			cp: func() *cradle.AuditCheckpoint {
				cp := checkpointAt(chain, 3, auditKey)
				cp.Seq, cp.Hash = n, chain[n-1].Hash
				return cp
			}(),
			wantSeq:    n,
			wantReason: "the checkpoint at entry 5 has no valid signature from this server's audit key",
		},
		{
			name: "checkpoint of another tenant",
			cp: func() *cradle.AuditCheckpoint {
				cp := &cradle.AuditCheckpoint{TenantID: auditTenant + 1, Seq: n, Hash: chain[n-1].Hash, Time: auditStart}
				cp.Sign(auditKey)
				return cp
			}(),
			wantSeq:    n,
			wantReason: "the checkpoint at entry 5 has no valid signature from this server's audit key",
		},
		{
			name: "chain and checkpoint rolled back, witness ahead",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				return c[:3]
			},
			cp:         checkpointAt(chain, 3, auditKey),
			witness:    head,
			wantSeq:    4,
			wantReason: "the chain ends at entry 3 but the witness file saw entry 5: the tail was truncated and the checkpoint rolled back",
			wantCount:  3,
		},
		{
			// Someone holding the audit key rewrites the chain from entry 2
			// on and signs a new head; the witness file outside the
			// database still holds the genuine head at 2.
			name:       "chain rewritten and re-signed, witness disagrees",
			tamper:     func([]*cradle.AuditEntry) []*cradle.AuditEntry { return clone(rewritten) },
			cp:         checkpointAt(rewritten, n, auditKey),
			witness:    checkpointAt(chain, 2, auditKey),
			wantSeq:    2,
			wantReason: "entry 2 differs from the witness checkpoint",
		},
		{
			name:       "forged witness",
			witness:    checkpointAt(chain, 3, otherKey),
			wantSeq:    3,
			wantReason: "the witness checkpoint at entry 3 has no valid signature",
		},
		{
			name: "entry of another tenant",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[1].TenantID = auditTenant + 1
				rehash(c, 1)
				return c
			},
			wantSeq:    2,
			wantReason: "entry 2 belongs to tenant 8, not 7",
		},
		{
			name: "first entry does not start at genesis",
			tamper: func(c []*cradle.AuditEntry) []*cradle.AuditEntry {
				c[0].PrevHash = strings.Repeat("1", 64)
				rehash(c, 0)
				return c
			},
			wantSeq:    1,
			wantReason: "entry 1 does not link to entry 0: its prev_hash differs from that entry's hash (inserted, deleted or reordered rows)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := clone(chain)
			if tt.tamper != nil {
				c = tt.tamper(c)
			}
			cp := tt.cp
			if cp == nil && !tt.noCP {
				cp = head
			}
			got := verify(c, cp, tt.witness)
			wantCount := tt.wantCount
			switch wantCount {
			case 0:
				wantCount = n
			case -1:
				wantCount = 0
			}
			if got.OK || got.Broken == nil {
				t.Fatalf("verification passed: %+v", got)
			}
			want := cradle.AuditBreak{Seq: tt.wantSeq, Reason: tt.wantReason}
			if diff := cmp.Diff(want, *got.Broken); diff != "" {
				t.Errorf("first break (-want +got):\n%s", diff)
			}
			if got.Entries != wantCount {
				t.Errorf("Entries = %d, want %d (the walk goes on after a break)", got.Entries, wantCount)
			}
		})
	}
}

// TestAuditVerifierReportsFirstBreak tampers twice and expects the earlier
// break.
func TestAuditVerifierReportsFirstBreak(t *testing.T) {
	c := clone(buildChain(auditTenant, 6))
	c[1].Actor = "x"
	c[4].Actor = "y"
	got := verify(c, checkpointAt(buildChain(auditTenant, 6), 6, auditKey), nil)
	if got.OK || got.Broken == nil || got.Broken.Seq != 2 {
		t.Errorf("got %+v, want the break at entry 2", got.Broken)
	}
	if got.HeadSeq != 6 || got.Entries != 6 {
		t.Errorf("HeadSeq %d, Entries %d; want 6, 6", got.HeadSeq, got.Entries)
	}
}

// auditGoldenEntry is a fixed entry whose hash is pinned.
func auditGoldenEntry() *cradle.AuditEntry {
	return &cradle.AuditEntry{
		TenantID: 7,
		Seq:      42,
		Time:     time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.FixedZone("CET", 3600)),
		Actor:    "token:tok_0123456789abcdef(admin)",
		Action:   "device.transition",
		Subject:  "device:SN-0001",
		Details:  json.RawMessage(`{"from":"provisioned","to":"deployed","reason":"enrolled"}`),
		PrevHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	}
}

// TestAuditHashGolden pins the hash of a fixed entry, so that the canonical
// encoding never changes silently: every stored chain would stop verifying.
func TestAuditHashGolden(t *testing.T) {
	e := auditGoldenEntry()
	got := e.ComputeHash()
	// A change here breaks every stored chain; never refresh this file
	// unless the encoding's version ("cradle/audit/v1") changes too.
	golden(t, "audit_entry_hash.golden", got+"\n")
	if indep := documentedHash(e); got != indep {
		t.Errorf("ComputeHash() = %s, but the encoding documented on ComputeHash gives %s", got, indep)
	}
}

// documentedHash computes an entry's hash from the description in
// ComputeHash's doc comment, independently of the code.
func documentedHash(e *cradle.AuditEntry) string {
	var b []byte
	b = append(b, "cradle/audit/v1"...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.TenantID))
	b = binary.BigEndian.AppendUint64(b, uint64(e.Seq))
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixMicro()))
	for _, s := range []string{e.Actor, e.Action, e.Subject, string(e.Details), e.PrevHash} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestAuditHashCoversEveryField changes one field at a time, including
// moving bytes across a field boundary, and expects a different hash.
func TestAuditHashCoversEveryField(t *testing.T) {
	base := auditGoldenEntry().ComputeHash()
	tests := []struct {
		name   string
		change func(e *cradle.AuditEntry)
	}{
		{"tenant", func(e *cradle.AuditEntry) { e.TenantID++ }},
		{"seq", func(e *cradle.AuditEntry) { e.Seq++ }},
		{"time by a microsecond", func(e *cradle.AuditEntry) { e.Time = e.Time.Add(time.Microsecond) }},
		{"actor", func(e *cradle.AuditEntry) { e.Actor += "x" }},
		{"action", func(e *cradle.AuditEntry) { e.Action = "device.create" }},
		{"subject", func(e *cradle.AuditEntry) { e.Subject = "device:SN-0002" }},
		{"details", func(e *cradle.AuditEntry) {
			e.Details = json.RawMessage(`{"from":"provisioned","to":"deployed","reason":"enrolled" }`)
		}},
		{"prev hash", func(e *cradle.AuditEntry) { e.PrevHash = cradle.GenesisHash }},
		{"byte moved from action to actor", func(e *cradle.AuditEntry) {
			e.Actor += e.Action[:1]
			e.Action = e.Action[1:]
		}},
		{"byte moved from subject to action", func(e *cradle.AuditEntry) {
			e.Action += e.Subject[:1]
			e.Subject = e.Subject[1:]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := auditGoldenEntry()
			tt.change(e)
			if e.ComputeHash() == base {
				t.Errorf("changing the %s leaves the hash unchanged", tt.name)
			}
		})
	}
	t.Run("not covered: stored hash, sub-microsecond time, time zone", func(t *testing.T) {
		e := auditGoldenEntry()
		e.Hash = "anything"
		e.Time = e.Time.Truncate(time.Microsecond).UTC()
		if got := e.ComputeHash(); got != base {
			t.Errorf("hash changed to %s; the stored hash, nanoseconds below %v and the zone must not count", got, cradle.AuditTimePrecision)
		}
	})
}

// TestAuditCheckpointSignedBytes pins what a checkpoint signature covers and
// checks that every covered field matters.
func TestAuditCheckpointSignedBytes(t *testing.T) {
	cp := &cradle.AuditCheckpoint{TenantID: 7, Seq: 42, Hash: strings.Repeat("ab", 32),
		Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)}
	want := "cradle/audit-checkpoint/v1\n7\n42\n" + strings.Repeat("ab", 32) + "\n1767323045000006\n"
	if got := string(cp.SignedBytes()); got != want {
		t.Errorf("SignedBytes() = %q, want %q", got, want)
	}
	cp.Sign(auditKey)
	pub := auditKey.Public().(ed25519.PublicKey)
	if !cp.Verify(pub) {
		t.Fatal("a freshly signed checkpoint does not verify")
	}
	if cp.Verify(otherKey.Public().(ed25519.PublicKey)) {
		t.Error("checkpoint verifies under another key")
	}
	if cp.Verify(nil) || cp.Verify(pub[:16]) {
		t.Error("checkpoint verifies under a malformed key")
	}
	for name, change := range map[string]func(c *cradle.AuditCheckpoint){
		"tenant": func(c *cradle.AuditCheckpoint) { c.TenantID++ },
		"seq":    func(c *cradle.AuditCheckpoint) { c.Seq++ },
		"hash":   func(c *cradle.AuditCheckpoint) { c.Hash = cradle.GenesisHash },
		"time":   func(c *cradle.AuditCheckpoint) { c.Time = c.Time.Add(time.Microsecond) },
		"no sig": func(c *cradle.AuditCheckpoint) { c.Signature = nil },
	} {
		c := *cp
		change(&c)
		if c.Verify(pub) {
			t.Errorf("checkpoint with a changed %s still verifies", name)
		}
	}
}
