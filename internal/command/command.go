// Package command carries lifecycle commands from the server to a device:
// the server signs them, the agent verifies them before it acts.
//
// # Parties and keys
//
// The server holds the command signer key (pki.NameCommandSigner), whose
// certificate the root signs under the pki.CommandSigner profile:
// keyUsage digitalSignature, the single extended key usage
// pki.OIDCommandSigning, not a CA. The device holds no key for this: it
// trusts the root certificate it received at the factory, its own serial,
// and the highest sequence number it has accepted so far.
//
// # Format
//
// A Command is JSON (see its fields). The wire form is an Envelope, JSON
// with three members, every byte string in standard base64:
//
//	{"payload": <the command JSON>, "signature": <sig>, "chain": [<leaf DER>, <intermediate DER> …]}
//
// The signature is over the payload bytes exactly as carried: ECDSA
// (ASN.1 DER) with SHA-256, SHA-384 or SHA-512 for P-256, P-384 or P-521,
// or Ed25519. The payload is never re-encoded, so the bytes signed are
// the bytes parsed.
//
// # Verification and failure modes
//
// Verifier.Verify checks, in this order, and refuses with the first
// failure (an error wrapping one of the Err… sentinels): the envelope
// size (ErrTooLarge); its form (ErrMalformed); the chain to the device's
// root at the device's current time (ErrUntrustedChain); the leaf's
// profile (ErrNotCommandSigner), and on a device with a production root
// any test-marked certificate (ErrTestSigner); the signature
// (ErrBadSignature); the signed command's own form (ErrMalformed); the
// target serial (ErrForeignDevice); expiry (ErrExpired); an issue time
// in the future beyond a small skew (ErrNotYetValid); the sequence, which
// must be above the last accepted one (ErrReplay). Only then is the
// sequence advanced in the persisted SequenceStore (ErrSequenceStore if
// that fails, in which case the command must not run). A refused command
// never advances the sequence. The command's payload is parsed only after
// its signature verified.
//
// The agent reports the outcome of each command it received as a Result.
package command

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"time"

	"cradle"
)

// Kind names what a command asks the device to do.
type Kind string

// Kinds of command.
const (
	KindReboot     Kind = "reboot"
	KindUploadLogs Kind = "upload-logs"
	KindRekey      Kind = "rekey"
	KindSetConfig  Kind = "set-config"
	KindPing       Kind = "ping"
	// KindWipe erases the device's keys and data at decommissioning.
	KindWipe Kind = "wipe"
)

// Kinds lists every kind a device knows.
var Kinds = []Kind{KindReboot, KindUploadLogs, KindRekey, KindSetConfig, KindPing, KindWipe}

// Known reports whether k is one of Kinds.
func (k Kind) Known() bool {
	for _, x := range Kinds {
		if k == x {
			return true
		}
	}
	return false
}

// MaxIDLen is the longest command ID.
const MaxIDLen = 128

// Command is one lifecycle command for one device. It names no tenant:
// the device serial is the target, and the server signs only for devices
// it manages.
type Command struct {
	// ID identifies the command in results and audit; 1 to MaxIDLen
	// printable ASCII characters.
	ID string `json:"id"`
	// Device is the serial of the target device.
	Device string `json:"device"`
	Kind   Kind   `json:"kind"`
	// Args are the kind's arguments, a JSON object; empty means none.
	Args json.RawMessage `json:"args,omitempty"`
	// Sequence is strictly increasing per device, from 1.
	Sequence  uint64    `json:"sequence"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Validate checks the command's form (not its signature, target or
// time): ID, serial, known kind, Args an object, sequence at least 1,
// ExpiresAt after IssuedAt. The error is a *cradle.Error with code
// EINVALID naming the field.
func (c *Command) Validate() error {
	if c.ID == "" || len(c.ID) > MaxIDLen {
		return cradle.Errorf(cradle.EINVALID, "invalid command id: must be 1 to %d characters", MaxIDLen)
	}
	for _, r := range c.ID {
		if r <= ' ' || r > '~' {
			return cradle.Errorf(cradle.EINVALID, "invalid command id %q: only printable ASCII without spaces", c.ID)
		}
	}
	if err := cradle.ValidateSerial(c.Device); err != nil {
		return cradle.Errorf(cradle.EINVALID, "invalid command device: %s", cradle.ErrorMessage(err))
	}
	if !c.Kind.Known() {
		return cradle.Errorf(cradle.EINVALID, "invalid command kind %q: want one of %v", c.Kind, Kinds)
	}
	if len(c.Args) > 0 {
		var obj map[string]json.RawMessage
		if !bytes.HasPrefix(bytes.TrimLeft(c.Args, " \t\r\n"), []byte("{")) || json.Unmarshal(c.Args, &obj) != nil {
			return cradle.Errorf(cradle.EINVALID, "invalid command args: must be a JSON object")
		}
	}
	if c.Sequence == 0 {
		return cradle.Errorf(cradle.EINVALID, "invalid command sequence 0: sequences start at 1")
	}
	if c.IssuedAt.IsZero() || c.ExpiresAt.IsZero() {
		return cradle.Errorf(cradle.EINVALID, "invalid command: issued_at and expires_at are required")
	}
	if !c.ExpiresAt.After(c.IssuedAt) {
		return cradle.Errorf(cradle.EINVALID, "invalid command: expires_at %s is not after issued_at %s", fmtTime(c.ExpiresAt), fmtTime(c.IssuedAt))
	}
	return nil
}

// parseCommand decodes a signed payload strictly: no unknown fields, no
// trailing data, and a valid command.
func parseCommand(payload []byte) (*Command, error) {
	var c Command
	if err := decodeStrict(payload, &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, errors.New(cradle.ErrorMessage(err))
	}
	return &c, nil
}

func decodeStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// Status is the outcome of a command on the device.
type Status string

// Statuses of a Result.
const (
	// StatusDone: the device verified the command and carried it out.
	StatusDone Status = "done"
	// StatusRefused: the device did not accept the command (Verify
	// failed); it did nothing.
	StatusRefused Status = "refused"
	// StatusFailed: the device accepted the command but carrying it out
	// failed.
	StatusFailed Status = "failed"
)

// MaxResultSize bounds a Result document.
const MaxResultSize = 16 << 10

// Result is what the agent reports about a command.
type Result struct {
	CommandID string `json:"command_id"`
	Sequence  uint64 `json:"sequence"`
	Status    Status `json:"status"`
	// Error says why the command was refused or failed; empty when done.
	Error string    `json:"error,omitempty"`
	At    time.Time `json:"at"`
}

// ParseResult decodes and checks a result sent by a device: at most
// MaxResultSize bytes, no unknown fields, a command ID
// (empty only for a refusal, see Refused), a known status, an error
// message exactly when the status is not done, and a time. The
// error is a *cradle.Error with code EINVALID.
func ParseResult(data []byte) (*Result, error) {
	if len(data) > MaxResultSize {
		return nil, cradle.Errorf(cradle.EINVALID, "command result of %d bytes is over the %d-byte limit", len(data), MaxResultSize)
	}
	var r Result
	if err := decodeStrict(data, &r); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "malformed command result: %v", err)
	}
	switch {
	case len(r.CommandID) > MaxIDLen:
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: command_id is longer than %d characters", MaxIDLen)
	case r.CommandID == "" && r.Status != StatusRefused:
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: command_id is required (only a refusal of an unauthenticated envelope may leave it out)")
	case r.Status != StatusDone && r.Status != StatusRefused && r.Status != StatusFailed:
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result status %q: want done, refused or failed", r.Status)
	case r.Status == StatusDone && r.Error != "":
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: status done with an error")
	case r.Status != StatusDone && r.Error == "":
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: status %s without an error message", r.Status)
	case r.At.IsZero():
		return nil, cradle.Errorf(cradle.EINVALID, "invalid command result: at is required")
	}
	return &r, nil
}

// Refused returns the Result reporting that Verify refused an envelope
// with err. The command ID and sequence are those of the signed command
// when the refusal came after its signature verified (see VerifyError),
// else empty and 0: an unauthenticated ID is not worth reporting.
func Refused(err error, at time.Time) Result {
	r := Result{Status: StatusRefused, Error: err.Error(), At: at}
	var ve *VerifyError
	if errors.As(err, &ve) && ve.Command != nil {
		r.CommandID, r.Sequence = ve.Command.ID, ve.Command.Sequence
	}
	return r
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
