package tufclient

import (
	"errors"
	"fmt"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Attack names the attack a refusal defends against, in the words of the
// TUF specification's threat list. It is stable text the agent reports to
// the server as the reason of a failed update.
type Attack string

// The attacks the client refuses.
const (
	// Rollback: metadata older than what the device already trusts (a
	// lower timestamp, snapshot or targets version, or a root version
	// that goes back).
	Rollback Attack = "rollback"
	// Freeze: metadata past its expiry (an indefinite freeze: a mirror
	// replaying an old, validly signed repository forever).
	Freeze Attack = "freeze"
	// MixAndMatch: metadata files that do not belong together (a snapshot
	// or targets whose version, length or hash differs from what the
	// metadata above it records).
	MixAndMatch Attack = "mix-and-match"
	// ArbitrarySoftware: metadata not signed by a threshold of the keys
	// root gives its role (a wrong key, a retired key, a bad signature).
	ArbitrarySoftware Attack = "arbitrary-software"
	// EndlessData: metadata longer than the length recorded for it or
	// than the client's size limit, or an endless chain of root versions.
	EndlessData Attack = "endless-data"
	// Malformed: metadata that does not parse as the role it claims to
	// be.
	Malformed Attack = "malformed-metadata"
	// WrongHardware: a target built for another model or hardware
	// revision (Select).
	WrongHardware Attack = "wrong-hardware"
	// LowerSecurityCounter: a target whose security counter is below the
	// device's anti-rollback counter (Select).
	LowerSecurityCounter Attack = "lower-security-counter"
)

// Error is a refusal of metadata or of a target: Attack says which attack
// it defends against, Role the metadata role or target path concerned.
// Nothing a refused Refresh fetched is trusted or kept.
type Error struct {
	Attack Attack
	Role   string // "root", "timestamp", "snapshot", "targets", or the target path for Select
	Msg    string // what was wrong
	Err    error  // the underlying go-tuf error, if any
}

func (e *Error) Error() string {
	return fmt.Sprintf("tufclient: %s refused (%s): %s", e.Attack, e.Role, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// AttackOf returns the attack a refusal names, and false when err is no
// refusal (a network failure, a missing target).
func AttackOf(err error) (Attack, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Attack, true
	}
	return "", false
}

func refuse(a Attack, role string, err error, format string, args ...any) *Error {
	return &Error{Attack: a, Role: role, Msg: fmt.Sprintf(format, args...), Err: err}
}

// classify turns an error of go-tuf's trusted metadata set into a refusal.
// Signatures are checked before versions and expiry there, so a version
// or expiry error is about metadata signed by the right keys.
func classify(role string, err error, versionAttack Attack) error {
	var (
		unsigned *metadata.ErrUnsignedMetadata
		expired  *metadata.ErrExpiredMetadata
		version  *metadata.ErrBadVersionNumber
		mismatch *metadata.ErrLengthOrHashMismatch
		repo     *metadata.ErrRepository
		value    *metadata.ErrValue
		typ      *metadata.ErrType
	)
	switch {
	case errors.As(err, &unsigned):
		return refuse(ArbitrarySoftware, role, err, "%s.json is not signed by a threshold of the keys root gives %s: %s", role, role, unsigned.Msg)
	case errors.As(err, &expired):
		return refuse(Freeze, role, err, "%s", expired.Msg)
	case errors.As(err, &version):
		return refuse(versionAttack, role, err, "%s.json: %s", role, version.Msg)
	case errors.As(err, &mismatch):
		return refuse(MixAndMatch, role, err, "%s.json does not match the length and hash recorded for it: %s", role, mismatch.Msg)
	case errors.As(err, &repo):
		return refuse(MixAndMatch, role, err, "%s.json: %s", role, repo.Msg)
	case errors.As(err, &value), errors.As(err, &typ):
		return refuse(Malformed, role, err, "%s.json: %v", role, err)
	}
	// Anything else comes from decoding (encoding/json errors).
	return refuse(Malformed, role, err, "%s.json does not parse: %v", role, err)
}
