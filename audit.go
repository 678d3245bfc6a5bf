package cradle

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// The audit log is one hash chain per tenant (tenant 0 holds what happens
// before a tenant is known, such as requests with unknown tokens). Entry n
// stores the hash of entry n-1; its own hash is SHA-256 over a canonical,
// length-prefixed binary encoding of every field (see AuditEntry.ComputeHash),
// so editing, deleting, inserting or reordering rows breaks a link.
//
// A hash chain alone cannot show that its newest entries were cut off. So the
// store keeps, per tenant, a checkpoint of the chain head (sequence and hash)
// signed with the server's Ed25519 audit key, updated in the same transaction
// as every append; the server also copies the newest checkpoints to a witness
// file outside the database. A chain shorter than its signed checkpoint, or
// one whose entry at the checkpoint differs, has lost its tail; entries past
// the checkpoint were not written by the server.

// AuditEntry is one record of the audit log.
type AuditEntry struct {
	TenantID int64           `json:"tenant_id"`
	Seq      int64           `json:"seq"` // 1, 2, 3 … per tenant
	Time     time.Time       `json:"time"`
	Actor    string          `json:"actor"`   // Actor.String(), or "anonymous"
	Action   string          `json:"action"`  // e.g. "device.create", "device.transition.refused"
	Subject  string          `json:"subject"` // e.g. "device:SN-0001", "token:tok_…"
	Details  json.RawMessage `json:"details"` // a JSON object, stored and hashed byte for byte
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
}

// AuditEvent is what a service records; the store fills in tenant, sequence,
// time and hashes.
type AuditEvent struct {
	Action  string
	Subject string
	Details any // marshalled to a JSON object; nil means {}
}

// GenesisHash is the PrevHash of the first entry of every chain.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// AuditTimePrecision is the precision stored and hashed for entry times.
const AuditTimePrecision = time.Microsecond

// ComputeHash returns the hex SHA-256 of the entry's canonical encoding: the
// domain string "cradle/audit/v1", then tenant, sequence and time in
// microseconds since the epoch as big-endian int64, then actor, action,
// subject, details and previous hash, each as a big-endian uint32 length
// followed by its bytes.
func (e *AuditEntry) ComputeHash() string {
	h := sha256.New()
	h.Write([]byte("cradle/audit/v1"))
	var b [8]byte
	for _, n := range []int64{e.TenantID, e.Seq, e.Time.UnixMicro()} {
		binary.BigEndian.PutUint64(b[:], uint64(n))
		h.Write(b[:])
	}
	for _, s := range [][]byte{[]byte(e.Actor), []byte(e.Action), []byte(e.Subject), e.Details, []byte(e.PrevHash)} {
		binary.BigEndian.PutUint32(b[:4], uint32(len(s)))
		h.Write(b[:4])
		h.Write(s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// AuditCheckpoint is a signed statement of a chain's head.
type AuditCheckpoint struct {
	TenantID  int64     `json:"tenant_id"`
	Seq       int64     `json:"seq"`
	Hash      string    `json:"hash"`
	Time      time.Time `json:"time"`
	Signature []byte    `json:"signature"` // Ed25519 over SignedBytes
}

// SignedBytes returns the canonical bytes a checkpoint's signature covers.
func (c *AuditCheckpoint) SignedBytes() []byte {
	return fmt.Appendf(nil, "cradle/audit-checkpoint/v1\n%d\n%d\n%s\n%d\n", c.TenantID, c.Seq, c.Hash, c.Time.UnixMicro())
}

// Sign fills in the signature.
func (c *AuditCheckpoint) Sign(key ed25519.PrivateKey) {
	c.Signature = ed25519.Sign(key, c.SignedBytes())
}

// Verify checks the signature.
func (c *AuditCheckpoint) Verify(pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, c.SignedBytes(), c.Signature)
}

// AuditFilter selects audit entries of the actor's tenant. Nil fields do
// not filter.
type AuditFilter struct {
	AfterSeq int64   // entries with a greater sequence
	Action   *string // exact action, or a prefix ending in '.' ("device.")
	Subject  *string // exact subject
	Limit    int     // 0 means DefaultPageSize; at most MaxPageSize
}

// AuditVerification is the outcome of re-walking a chain.
type AuditVerification struct {
	TenantID   int64            `json:"tenant_id"`
	OK         bool             `json:"ok"`
	Entries    int64            `json:"entries"`                // entries walked
	HeadSeq    int64            `json:"head_seq"`               // last sequence seen
	Checkpoint *AuditCheckpoint `json:"checkpoint,omitempty"`   // the signed head the chain was checked against
	Broken     *AuditBreak      `json:"first_broken,omitempty"` // the first broken link
}

// AuditBreak names the first broken link of a chain.
type AuditBreak struct {
	Seq    int64  `json:"seq"`    // the sequence where the chain breaks
	Reason string `json:"reason"` // what is wrong there
}

// AuditVerifier walks a chain entry by entry, in the order the store returns
// them (by sequence), and checks every link. Use Add for each entry, then
// Finish with the stored signed checkpoint.
type AuditVerifier struct {
	TenantID int64
	Key      ed25519.PublicKey // the audit key that signs checkpoints
	// Witness, when set, is a checkpoint kept outside the database (the
	// server's witness file). A database chain behind it has been cut back.
	Witness *AuditCheckpoint

	prevSeq  int64
	prevHash string
	hashes   map[int64]string // hashes at sequences a checkpoint may name
	want     map[int64]bool
	res      AuditVerification
}

// NewAuditVerifier starts a walk of tenant's chain. checkpoint is the signed
// head stored with the chain (nil if none was found); its sequence and the
// witness's are remembered so their hashes can be compared.
func NewAuditVerifier(tenantID int64, key ed25519.PublicKey, checkpoint, witness *AuditCheckpoint) *AuditVerifier {
	v := &AuditVerifier{TenantID: tenantID, Key: key, Witness: witness, prevHash: GenesisHash,
		hashes: map[int64]string{}, want: map[int64]bool{}}
	v.res = AuditVerification{TenantID: tenantID, OK: true, Checkpoint: checkpoint}
	if checkpoint != nil {
		v.want[checkpoint.Seq] = true
	}
	if witness != nil {
		v.want[witness.Seq] = true
	}
	v.hashes[0] = GenesisHash // an empty chain's checkpoint names sequence 0
	return v
}

func (v *AuditVerifier) fail(seq int64, format string, args ...any) {
	if v.res.Broken == nil {
		v.res.OK = false
		v.res.Broken = &AuditBreak{Seq: seq, Reason: fmt.Sprintf(format, args...)}
	}
}

// Add checks the next entry. It keeps going after a break so that Entries
// counts the whole chain, but only the first break is reported.
func (v *AuditVerifier) Add(e *AuditEntry) {
	v.res.Entries++
	switch {
	case e.TenantID != v.TenantID:
		v.fail(e.Seq, "entry %d belongs to tenant %d, not %d", e.Seq, e.TenantID, v.TenantID)
	case e.Seq != v.prevSeq+1:
		if e.Seq > v.prevSeq+1 {
			v.fail(v.prevSeq+1, "entry %d is missing: the chain jumps from %d to %d (deleted rows)", v.prevSeq+1, v.prevSeq, e.Seq)
		} else {
			v.fail(e.Seq, "entry %d appears out of order after %d (reordered or inserted rows)", e.Seq, v.prevSeq)
		}
	case e.PrevHash != v.prevHash:
		v.fail(e.Seq, "entry %d does not link to entry %d: its prev_hash differs from that entry's hash (inserted, deleted or reordered rows)", e.Seq, v.prevSeq)
	case e.ComputeHash() != e.Hash:
		v.fail(e.Seq, "entry %d has been altered: its content does not match its hash", e.Seq)
	}
	if v.want[e.Seq] {
		v.hashes[e.Seq] = e.Hash
	}
	v.prevSeq, v.prevHash = e.Seq, e.Hash
	v.res.HeadSeq = e.Seq
}

// Finish checks the end of the chain against the signed checkpoint and the
// witness, and returns the result.
func (v *AuditVerifier) Finish() *AuditVerification {
	cp := v.res.Checkpoint
	switch {
	case cp == nil && v.res.Entries > 0:
		v.fail(1, "no signed checkpoint for a chain of %d entries: the checkpoint row was deleted", v.res.Entries)
	case cp == nil:
	case cp.TenantID != v.TenantID || !cp.Verify(v.Key):
		v.fail(cp.Seq, "the checkpoint at entry %d has no valid signature from this server's audit key", cp.Seq)
	case v.res.HeadSeq < cp.Seq:
		v.fail(v.res.HeadSeq+1, "the chain ends at entry %d but the signed checkpoint names entry %d: the tail was truncated", v.res.HeadSeq, cp.Seq)
	case v.hashes[cp.Seq] != cp.Hash:
		v.fail(cp.Seq, "entry %d differs from the signed checkpoint", cp.Seq)
	case v.res.HeadSeq > cp.Seq:
		v.fail(cp.Seq+1, "entries %d to %d follow the signed checkpoint at %d: they were not written by this server", cp.Seq+1, v.res.HeadSeq, cp.Seq)
	}
	if w := v.Witness; w != nil && v.res.Broken == nil {
		switch {
		case !w.Verify(v.Key) || w.TenantID != v.TenantID:
			v.fail(w.Seq, "the witness checkpoint at entry %d has no valid signature", w.Seq)
		case v.res.HeadSeq < w.Seq:
			v.fail(v.res.HeadSeq+1, "the chain ends at entry %d but the witness file saw entry %d: the tail was truncated and the checkpoint rolled back", v.res.HeadSeq, w.Seq)
		case v.hashes[w.Seq] != w.Hash:
			v.fail(w.Seq, "entry %d differs from the witness checkpoint", w.Seq)
		}
	}
	return &v.res
}

// AuditService reads and verifies the audit log. Entries are appended by
// the services that make changes, not through this interface.
type AuditService interface {
	// FindAuditEntries lists entries of the actor's tenant in sequence
	// order. Needs PermAuditRead. EINVALID for a bad filter.
	FindAuditEntries(ctx context.Context, f AuditFilter) ([]*AuditEntry, error)
	// VerifyAudit re-walks the actor's tenant chain against its signed
	// checkpoint. A broken chain is a result (OK false, Broken set), not an
	// error. Needs PermAuditRead.
	VerifyAudit(ctx context.Context) (*AuditVerification, error)
}
