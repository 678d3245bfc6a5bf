package cradle

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"strings"
	"time"
	"unicode/utf8"
)

// Devices that run a foreign update client (the Mender client, SWUpdate's
// suricatta or another hawkBit DDI client) are the same device records as
// native ones: the same lifecycle, rollouts and audit log. What differs is
// how they authenticate and talk, which this file describes.
//
//   - Mender devices ask to be admitted with an auth request (their
//     identity data and a public key, signed with the key). Each distinct
//     (identity, key) pair is an auth set: pending until an operator
//     accepts it (binding it to a device, created when needed), rejected,
//     preauthorized by an operator for a device, or accepted at once when
//     the identity's MAC address is a MAC of exactly one provisioned
//     device of the tenant (a factory record not yet in service) that
//     talks cradle or mender and has no accepted, preauthorized or
//     rejected set. A deployed device is never admitted by its MAC: a MAC is no
//     secret, and the device already has its credentials. The server may
//     turn automatic admission off (mender.auto_admit). An accepted set
//     gets short-lived opaque session tokens. At most
//     MaxPendingMenderAuthSets sets of a tenant are pending; sets pending
//     longer than PendingMenderAuthSetAge are dropped.
//   - A Mender device names its tenant with a Mender tenant token (kind
//     tenant), which lets a device ask to be admitted and grants nothing
//     else.
//   - hawkBit devices authenticate with a per-device target token, a
//     per-tenant gateway token, or the device's client certificate on the
//     mTLS listener.
//   - A device talks one protocol. It never switches between the foreign
//     ones (mender and hawkbit). It moves from cradle to a foreign one
//     while it is provisioned, or later only when an operator chose it
//     (hawkbit when it has a live target token, mender when it has an
//     accepted auth set) or the device chose it itself, proven by its own
//     credential, its client certificate (NewContextWithOwnCredential).
//     A tenant-wide credential (a gateway token) never switches a
//     deployed device. Other switches are refused (ECONFLICT), audited.
//   - Tokens are stored as SHA-256 hashes only, expire, and are refused
//     once revoked, and whenever their device is suspended, in RMA or at
//     end of life.
//   - hawkBit action ids are small integers; each names one attempt of one
//     device in one rollout.

type ownCredentialKey struct{}

// NewContextWithOwnCredential marks a device's request as authenticated
// by a credential of the device's own (its client certificate), not a
// tenant-wide one: AdmitDevice may then move a deployed native device to
// a foreign protocol, which is the device's own choice.
func NewContextWithOwnCredential(ctx context.Context) context.Context {
	return context.WithValue(ctx, ownCredentialKey{}, true)
}

// OwnCredentialFromContext reports whether ctx was marked by
// NewContextWithOwnCredential.
func OwnCredentialFromContext(ctx context.Context) bool {
	v, _ := ctx.Value(ownCredentialKey{}).(bool)
	return v
}

// Protocol is how a device talks to Cradle.
type Protocol string

// Protocols.
const (
	ProtocolCradle  Protocol = "cradle"  // cradle-agent: the native API and MQTT over mTLS
	ProtocolMender  Protocol = "mender"  // the Mender device API (mender-client 3.x)
	ProtocolHawkbit Protocol = "hawkbit" // hawkBit DDI v1 (SWUpdate suricatta, rauc-hawkbit-updater)
)

// Protocols lists the protocols in a stable order.
var Protocols = []Protocol{ProtocolCradle, ProtocolMender, ProtocolHawkbit}

// MenderAuthStatus is where a Mender auth set is.
type MenderAuthStatus string

// Mender auth set statuses.
const (
	MenderPending       MenderAuthStatus = "pending"
	MenderAccepted      MenderAuthStatus = "accepted"
	MenderRejected      MenderAuthStatus = "rejected"
	MenderPreauthorized MenderAuthStatus = "preauthorized"
)

// Limits on the Mender and hawkBit records.
const (
	MaxMenderIDData       = 4096    // bytes of canonical identity data
	MaxMenderPublicKey    = 4096    // bytes of PEM
	MaxDeviceAttributes   = 256     // inventory attributes per device
	MaxAttributeNameLen   = 128     // bytes
	MaxAttributeValueLen  = 4096    // bytes of one value (a list is joined as JSON)
	MaxUpdateLogBytes     = 1 << 20 // one attempt's log, as stored
	MaxDDIActionID        = 1<<31 - 1
	DefaultMenderTokenTTL = 24 * time.Hour
	// MaxPendingMenderAuthSets is how many auth sets of a tenant may be
	// pending at once; a new pair past it is refused and not stored.
	MaxPendingMenderAuthSets = 10000
	// PendingMenderAuthSetAge is how long a pending set is kept: older
	// ones are dropped when a new one is stored (the device, if still
	// asking, makes a new one).
	PendingMenderAuthSetAge = 30 * 24 * time.Hour
)

// MenderAuthSet is one (identity data, public key) pair a Mender device
// asked to be admitted with.
type MenderAuthSet struct {
	// ID is "mas_" and 16 hex digits.
	ID string `json:"id"`
	// IDData is the identity as canonical JSON: an object with its keys
	// sorted and no insignificant space (string values, as the client's
	// identity script makes them).
	IDData string `json:"id_data"`
	// PublicKey is the device's key as PKIX PEM ("PUBLIC KEY"); RSA,
	// ECDSA P-256 or Ed25519.
	PublicKey string `json:"pubkey"`
	// KeyFingerprint is the SHA-256 (hex) of the DER public key.
	KeyFingerprint string           `json:"key_fingerprint"`
	Status         MenderAuthStatus `json:"status"`
	// DeviceSerial is the device the set is bound to; "" while pending
	// (and when rejected before it was bound).
	DeviceSerial string    `json:"device_serial,omitempty"`
	DecidedBy    string    `json:"decided_by,omitempty"` // the actor that accepted, rejected or preauthorized it
	Reason       string    `json:"reason,omitempty"`     // why it was rejected
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// MenderAuthRequest is an auth request whose X-MEN-Signature the handler
// has already verified with PublicKey. IDData and PublicKey are in the
// canonical forms of MenderAuthSet.
type MenderAuthRequest struct {
	IDData         string
	PublicKey      string
	KeyFingerprint string
	// MAC is the identity's "mac" value, lower case with colons; "" when
	// it has none. It is what automatic admission matches.
	MAC string
}

// MenderAuthFilter selects auth sets, newest first.
type MenderAuthFilter struct {
	Status *MenderAuthStatus
	Serial string // only sets bound to this device
	// Limit: 0 means DefaultPageSize; at most MaxPageSize.
	Limit int
}

// MenderAccept binds a pending (or rejected) auth set to a device. When
// no device has Serial, one is created with Model and HardwareRevision in
// state provisioned; it becomes deployed at its first admitted request.
type MenderAccept struct {
	Serial           string `json:"serial"`
	Model            string `json:"model,omitempty"`
	HardwareRevision string `json:"hardware_revision,omitempty"`
}

// MenderPreauth admits a device's identity and key ahead of its first
// auth request. The device must exist.
type MenderPreauth struct {
	Serial    string `json:"serial"`
	IDData    string `json:"id_data"` // any JSON object of strings; canonicalized
	PublicKey string `json:"pubkey"`  // PKIX PEM
}

// DeviceTokenKind is what a device token is for.
type DeviceTokenKind string

// Device token kinds.
const (
	TokenMenderSession DeviceTokenKind = "mender"  // issued to an admitted Mender device at login; short-lived
	TokenHawkbitTarget DeviceTokenKind = "target"  // a hawkBit TargetToken of one device, made by an operator
	TokenGateway       DeviceTokenKind = "gateway" // a hawkBit GatewayToken of a tenant
	// TokenMenderTenant is a Mender tenant token: lets devices ask to be
	// admitted in a tenant; grants nothing else.
	TokenMenderTenant DeviceTokenKind = "tenant"
)

// DeviceToken is a device token as stored; its secret is kept only as a
// SHA-256 hash. The token string is "<ID>.<secret>".
type DeviceToken struct {
	// ID is "dtk_" and 16 hex digits.
	ID           string          `json:"id"`
	Kind         DeviceTokenKind `json:"kind"`
	DeviceSerial string          `json:"device_serial,omitempty"` // "" for a gateway or tenant token
	Name         string          `json:"name,omitempty"`
	CreatedBy    string          `json:"created_by"`
	CreatedAt    time.Time       `json:"created_at"`
	ExpiresAt    *time.Time      `json:"expires_at,omitempty"` // nil: never (gateway and target tokens only)
	RevokedAt    *time.Time      `json:"revoked_at,omitempty"`
}

// IssuedToken is a token just made, with its secret string: shown once.
type IssuedToken struct {
	Token  DeviceToken `json:"token"`
	Secret string      `json:"secret"`
}

// DeviceTokenCreate asks an operator's device token: a target token of
// Serial, or a gateway or Mender tenant token (Serial empty) of the
// actor's tenant.
type DeviceTokenCreate struct {
	Kind      DeviceTokenKind `json:"kind"`
	Serial    string          `json:"serial,omitempty"`
	Name      string          `json:"name,omitempty"`
	ExpiresAt *time.Time      `json:"expires_at,omitempty"`
}

// DeviceTokenAuth is what a valid device token stands for.
type DeviceTokenAuth struct {
	Token    DeviceToken
	TenantID int64
	// Device is the token's device; nil for a gateway or tenant token.
	Device *Device
}

// DeviceAttribute is one inventory attribute a device reported.
type DeviceAttribute struct {
	Name      string    `json:"name"`
	Value     string    `json:"value"`
	UpdatedAt time.Time `json:"updated_at"`
}

// DDIAction is the hawkBit action that stands for one attempt of a device
// in a rollout.
type DDIAction struct {
	ID        int64     `json:"id"` // 1 … MaxDDIActionID, unique in the server
	Serial    string    `json:"serial"`
	RolloutID string    `json:"rollout_id"`
	Attempt   int       `json:"attempt"`
	CreatedAt time.Time `json:"created_at"`
}

// UpdateLog is the log a device sent for one attempt.
type UpdateLog struct {
	Serial    string    `json:"serial"`
	RolloutID string    `json:"rollout_id"`
	Attempt   int       `json:"attempt"`
	Log       string    `json:"log"` // as the device sent it (Mender: its JSON messages document)
	At        time.Time `json:"at"`
}

// ProtocolService is the store side of the Mender and hawkBit device APIs
// and their operator controls. Every refusal and every change is audited.
type ProtocolService interface {
	// MenderAuthenticate admits a verified auth request in the actor's
	// tenant (a system actor of that tenant). A new (identity, key) pair
	// is stored as a pending set, or accepted at once (bound to the
	// device) when automatic admission is on and req.MAC is a MAC of one
	// provisioned device (see the rules above); a preauthorized set
	// becomes accepted. For an accepted set it records the device's
	// protocol, moves a provisioned device to deployed (as the device),
	// and issues a session token valid for ttl; the set's tokens revoked
	// more than a day ago are deleted. EUNAUTHORIZED saying the set is
	// pending or rejected, or that the tenant has too many pending sets;
	// EFORBIDDEN when the device is suspended, in RMA or at end of life;
	// EINVALID for a malformed request.
	MenderAuthenticate(ctx context.Context, req MenderAuthRequest, ttl time.Duration) (*IssuedToken, *Device, error)
	// FindMenderAuthSets lists auth sets. Needs PermDeviceRead.
	FindMenderAuthSets(ctx context.Context, f MenderAuthFilter) ([]*MenderAuthSet, error)
	// FindMenderAuthSet returns one auth set. Needs PermDeviceRead.
	// ENOTFOUND.
	FindMenderAuthSet(ctx context.Context, id string) (*MenderAuthSet, error)
	// AcceptMenderAuthSet accepts a pending or rejected set for a device
	// (created when needed: then it also needs PermDeviceCreate, and a
	// model). Needs PermDeviceTransition. Any other set bound to the same
	// device and accepted is rejected (one key per device), and its tokens
	// revoked. ECONFLICT for a device of another protocol or state
	// (suspended, rma, eol), ENOTFOUND, EINVALID.
	AcceptMenderAuthSet(ctx context.Context, id string, a MenderAccept) (*MenderAuthSet, error)
	// RejectMenderAuthSet rejects a set and revokes its session tokens.
	// Needs PermDeviceTransition. ENOTFOUND.
	RejectMenderAuthSet(ctx context.Context, id, reason string) (*MenderAuthSet, error)
	// PreauthorizeMender stores a preauthorized set for an existing
	// device. Needs PermDeviceTransition. EINVALID (bad JSON or key),
	// ENOTFOUND (device), ECONFLICT (the pair is already known).
	PreauthorizeMender(ctx context.Context, p MenderPreauth) (*MenderAuthSet, error)

	// CreateDeviceToken makes a target, gateway or Mender tenant token.
	// Needs PermTokenWrite. EINVALID, ENOTFOUND (device).
	CreateDeviceToken(ctx context.Context, c DeviceTokenCreate) (*IssuedToken, error)
	// FindDeviceTokens lists a device's tokens (serial "" lists the
	// tenant's gateway and Mender tenant tokens), newest first, at most
	// MaxPageSize. Needs PermTokenRead.
	FindDeviceTokens(ctx context.Context, serial string) ([]*DeviceToken, error)
	// RevokeDeviceToken revokes one token of the tenant; revoking twice is
	// a no-op. Needs PermTokenWrite. ENOTFOUND.
	RevokeDeviceToken(ctx context.Context, id string) error
	// RevokeDeviceTokens revokes every live token of a device and returns
	// how many. It also rejects the device's accepted and preauthorized
	// Mender auth sets (reason "tokens revoked"), in the same transaction,
	// so its Mender client cannot log in again until an operator accepts
	// a key. Needs PermTokenWrite. ENOTFOUND.
	RevokeDeviceTokens(ctx context.Context, serial string) (int, error)
	// AuthenticateDeviceToken checks a token string across tenants (a
	// system actor of tenant 0). EUNAUTHORIZED when it is malformed,
	// unknown, expired or revoked, and EFORBIDDEN when its device is
	// suspended, in RMA or at end of life; the message says which, and the
	// refusal is audited in the token's tenant when it is known (at most
	// once a minute per token and process; the next audit row counts the
	// ones left out).
	AuthenticateDeviceToken(ctx context.Context, secret string) (*DeviceTokenAuth, error)

	// AdmitDevice records that a device (the actor, for itself) talks
	// protocol p, and moves it from provisioned to deployed, audited.
	// Cheap when nothing changes: it writes only on a change. ECONFLICT
	// when the device is in another state than provisioned or deployed,
	// or the switch of protocol is not allowed (see the rules above:
	// never mender ↔ hawkbit; cradle → either only while provisioned,
	// when an operator chose it, or when ctx carries the device's own
	// credential). Refusals are audited, at most once a minute per device
	// and process.
	AdmitDevice(ctx context.Context, serial string, p Protocol) (*Device, error)

	// SetDeviceAttributes stores inventory attributes: replace drops the
	// ones not given, merge keeps them. A device for itself (PermTwinReport)
	// or an operator (PermDeviceUpdate). EINVALID for too many, empty or
	// oversize names and values. Unchanged attributes write nothing.
	SetDeviceAttributes(ctx context.Context, serial string, attrs []DeviceAttribute, replace bool) error
	// RemoveDeviceAttributes drops the named attributes (hawkBit's
	// configData mode "remove"). Same permissions.
	RemoveDeviceAttributes(ctx context.Context, serial string, names []string) error
	// FindDeviceAttributes returns a device's attributes by name. A device
	// for itself, or PermDeviceRead. ENOTFOUND for an unknown device.
	FindDeviceAttributes(ctx context.Context, serial string) ([]DeviceAttribute, error)

	// DDIAction returns the action of the device's attempt, making it the
	// first time. A device for itself (PermUpdateDevice). ENOTFOUND when
	// the device is not in the rollout.
	DDIAction(ctx context.Context, serial, rolloutID string, attempt int) (*DDIAction, error)
	// FindDDIAction returns the device's action id. A device for itself
	// (PermUpdateDevice). ENOTFOUND for an unknown id or another device's.
	FindDDIAction(ctx context.Context, serial string, id int64) (*DDIAction, error)

	// StoreUpdateLog keeps the log of an attempt (the last one sent wins),
	// audited. A device for itself (PermUpdateDevice). ETOOLARGE over
	// MaxUpdateLogBytes; ENOTFOUND when the device is not in the rollout.
	StoreUpdateLog(ctx context.Context, serial, rolloutID string, attempt int, log string) error
	// FindUpdateLogs returns the logs of a device, newest first (rolloutID
	// "" for every rollout). Needs PermDeviceRead.
	FindUpdateLogs(ctx context.Context, serial, rolloutID string) ([]*UpdateLog, error)
}

// CanonicalMenderIDData checks a Mender identity (the JSON text of the
// auth request's id_data, or an operator's) and returns it canonical: an
// object whose values are strings or arrays of strings, re-encoded with
// its keys sorted and no insignificant space, so that the same identity
// is the same text however it was spelled. mac is its "mac" value
// normalized (lower case, colons), or "" when it has none or it is not
// one EUI-48. EINVALID says what is wrong.
func CanonicalMenderIDData(raw string) (canon, mac string, err error) {
	if len(raw) > MaxMenderIDData {
		return "", "", Errorf(EINVALID, "id_data is %d bytes; at most %d are accepted", len(raw), MaxMenderIDData)
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return "", "", Errorf(EINVALID, "id_data is not a JSON object of identity attributes (e.g. {\"mac\":\"02:00:00:00:00:01\"})")
	}
	if dec.More() {
		return "", "", Errorf(EINVALID, "id_data has text after its JSON object")
	}
	if len(m) == 0 {
		return "", "", Errorf(EINVALID, "id_data is an empty object: the device's identity needs at least one attribute")
	}
	for k, v := range m {
		if k == "" || !utf8.ValidString(k) {
			return "", "", Errorf(EINVALID, "id_data has an empty or invalid attribute name")
		}
		switch v := v.(type) {
		case string:
		case []any:
			for _, e := range v {
				if _, ok := e.(string); !ok {
					return "", "", Errorf(EINVALID, "id_data attribute %q: a list may hold only strings", truncate(k, 40))
				}
			}
		default:
			return "", "", Errorf(EINVALID, "id_data attribute %q: values are strings or lists of strings", truncate(k, 40))
		}
	}
	b, err := json.Marshal(m) // map keys are sorted
	if err != nil {
		return "", "", Errorf(EINVALID, "id_data: %v", err)
	}
	if s, ok := m["mac"].(string); ok {
		if n, err := NormalizeMAC(s); err == nil {
			mac = n
		}
	}
	return string(b), mac, nil
}

// ParseDevicePublicKey reads a device's public key as PKIX PEM ("PUBLIC
// KEY"): RSA of 2048 bits or more, ECDSA P-256, or Ed25519, the keys a
// Mender client uses. It returns the key, the PEM re-encoded canonically,
// and the key's fingerprint (SHA-256 of the DER, hex). EINVALID says what
// is wrong.
func ParseDevicePublicKey(pemText string) (pub crypto.PublicKey, canon, fingerprint string, err error) {
	if len(pemText) > MaxMenderPublicKey {
		return nil, "", "", Errorf(EINVALID, "public key is %d bytes; at most %d are accepted", len(pemText), MaxMenderPublicKey)
	}
	blk, rest := pem.Decode([]byte(pemText))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, "", "", Errorf(EINVALID, "public key is not PEM of type PUBLIC KEY (PKIX)")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, "", "", Errorf(EINVALID, "public key PEM has text after its block")
	}
	pub, err = x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, "", "", Errorf(EINVALID, "public key: %v", err)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, "", "", Errorf(EINVALID, "RSA public key of %d bits: at least 2048 are needed", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, "", "", Errorf(EINVALID, "ECDSA public key on %s: only P-256 is accepted", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, "", "", Errorf(EINVALID, "public key of type %T: use RSA, ECDSA P-256 or Ed25519", pub)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, "", "", Errorf(EINVALID, "public key: %v", err)
	}
	sum := sha256.Sum256(der)
	return pub, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), hex.EncodeToString(sum[:]), nil
}
