package cradle

import (
	"context"
	"time"
)

// Decommissioning ends a device's life for good. An admin asks for it
// (and, when the tenant's policy says so, a second admin approves). Then
// the server, at once and whether or not the device is online: revokes
// every certificate of the device (IDevID included), every device token
// and Mender auth set, moves the device to eol (its live sessions close),
// and queues a signed wipe command. The device, when it gets the command,
// sends a tombstone signed with its LDevID key listing what it is about
// to erase, then crypto-erases: destroys its key objects (file, TPM,
// PKCS#11), wipes its secrets and configuration, disables itself, and
// sets its lifecycle fuse word to end-of-life. An eol device is refused
// everywhere but on the one route that hands it the wipe command and takes
// its tombstone, and it can never enroll again.
//
// Every step is audited. The decommissioning certificate (JSON, and a
// printable HTML page made from it) lists what was revoked, when, and when
// the device confirmed it is erasing (its signed tombstone, which precedes
// the erase, was received).

// DecommissionState is where a decommissioning is.
type DecommissionState string

// Decommissioning states.
const (
	// DecommissionAwaitingApproval: the tenant's policy asks a second
	// admin to approve; nothing is revoked yet.
	DecommissionAwaitingApproval DecommissionState = "awaiting-approval"
	// DecommissionWiping: revoked and eol; the wipe command waits for
	// the device (or was sent to it).
	DecommissionWiping DecommissionState = "wiping"
	// DecommissionConfirmed: the device's signed tombstone arrived.
	DecommissionConfirmed DecommissionState = "confirmed"
)

// ErasedObject is one thing a device erased.
type ErasedObject struct {
	// Store is where it lived: "file", "tpm", "pkcs11" (key stores), or
	// "state" (secrets and configuration on the device's storage).
	Store string `json:"store"`
	// Kind is "key", "secret" or "config".
	Kind string `json:"kind"`
	// Name is the object's name in its store (a key label, a file name).
	Name string `json:"name"`
}

// Tombstone is what a device states before it erases itself.
type Tombstone struct {
	Serial    string `json:"serial"`
	CommandID string `json:"command_id"` // the wipe command
	Sequence  uint64 `json:"sequence"`   // its sequence
	// Erased lists what the device erases after sending the tombstone.
	Erased []ErasedObject `json:"erased"`
	// Lifecycle is the lifecycle fuse word the device sets, "eol".
	Lifecycle string    `json:"lifecycle"`
	At        time.Time `json:"at"`
}

// SignedTombstone is a tombstone as the device sends it: the JSON payload
// exactly as signed, the signature over it (ECDSA ASN.1 or RSA PKCS#1 v1.5,
// over SHA-256; Ed25519 over the payload) with the key of the LDevID
// whose DER certificate comes with it.
type SignedTombstone struct {
	Payload     []byte `json:"payload"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"certificate"`
}

// DecommissionedCredential is one credential decommissioning revoked.
type DecommissionedCredential struct {
	Kind      string    `json:"kind"` // "certificate:idevid", "certificate:ldevid", "token:mender", "token:target", "mender-auth-set"
	ID        string    `json:"id"`   // certificate serial (hex), token id, auth set id
	RevokedAt time.Time `json:"revoked_at"`
	// Wipe marks an LDevID that was valid (not superseded) when the
	// decommissioning was executed: only such a certificate may fetch
	// the wipe command and sign the tombstone.
	Wipe bool `json:"wipe,omitempty"`
}

// Decommission is a device's decommissioning record.
type Decommission struct {
	Serial      string            `json:"serial"`
	State       DecommissionState `json:"state"`
	Reason      string            `json:"reason"`
	RequestedBy string            `json:"requested_by"`
	RequestedAt time.Time         `json:"requested_at"`
	ApprovedBy  string            `json:"approved_by,omitempty"`
	ApprovedAt  *time.Time        `json:"approved_at,omitempty"`
	// ExecutedAt is when the credentials were revoked and the device
	// moved to eol.
	ExecutedAt *time.Time `json:"executed_at,omitempty"`
	// CommandID is the wipe command.
	CommandID string                     `json:"command_id,omitempty"`
	Revoked   []DecommissionedCredential `json:"revoked"`
	// Tombstone is the device's signed statement, once it arrived.
	Tombstone *Tombstone `json:"tombstone,omitempty"`
	// ConfirmedAt is when the device confirmed it is erasing: its signed
	// tombstone was received. The tombstone precedes the erase; it
	// states what the device is about to erase.
	ConfirmedAt *time.Time `json:"confirmed_at,omitempty"`
	// Compromised lists the certificates of Revoked revoked again, for
	// keyCompromise, after the execution: a key that may be in other
	// hands proves nothing, so no tombstone confirms this
	// decommissioning any more and the wipe routes refuse the device.
	Compromised []string `json:"compromised,omitempty"`
}

// DecommissionCertificate is the document that proves what happened: the
// record, the device, and the audit entries of every step, signed by the
// server's audit key.
type DecommissionCertificate struct {
	Tenant       string        `json:"tenant"`
	Device       Device        `json:"device"`
	Decommission Decommission  `json:"decommission"`
	Audit        []*AuditEntry `json:"audit"`
	IssuedAt     time.Time     `json:"issued_at"`
	// Signature is base64 of the audit key's signature over the JSON of
	// the certificate with this field empty; KeyID names the key.
	KeyID     string `json:"key_id,omitempty"`
	Signature string `json:"signature,omitempty"`
}

// MaxDecommissionReason bounds a decommissioning's reason.
const MaxDecommissionReason = 1024

// DecommissionService runs decommissioning.
type DecommissionService interface {
	// RequestDecommission asks for a device's decommissioning. Needs an
	// admin (PermDeviceTransition and the lifecycle's rule for eol).
	// When the tenant's policy needs two approvers it is recorded as
	// awaiting approval; otherwise it is executed at once. ECONFLICT when
	// the device is already eol or being decommissioned; EINVALID for an
	// empty or oversize reason.
	RequestDecommission(ctx context.Context, serial, reason string) (*Decommission, error)
	// ApproveDecommission approves and executes a decommissioning that
	// awaits approval. Needs an admin other than the requester
	// (EFORBIDDEN for the same one).
	ApproveDecommission(ctx context.Context, serial string) (*Decommission, error)
	// RecordTombstone verifies and keeps the device's signed tombstone:
	// the certificate must be one of the LDevIDs the execution revoked
	// (those valid at that moment, listed in Revoked; not one revoked
	// earlier, and none of the record's certificates revoked again for
	// keyCompromise since), the signature must verify, the serial and
	// command must be the device's wipe command. A device for itself,
	// also at eol; the device listener also wants the tombstone's
	// certificate to be the request's TLS client certificate. EINVALID
	// says what failed.
	RecordTombstone(ctx context.Context, serial string, t SignedTombstone) (*Decommission, error)
	// FindDecommission returns a device's record. Needs PermDeviceRead.
	// ENOTFOUND when it was never asked.
	FindDecommission(ctx context.Context, serial string) (*Decommission, error)
	// DecommissionCertificate returns the signed certificate of a
	// decommissioning. Needs PermDeviceRead and PermAuditRead.
	DecommissionCertificate(ctx context.Context, serial string) (*DecommissionCertificate, error)
}
