package command

import (
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"cradle/internal/pki"
)

// Reasons Verify refuses an envelope, in the order it checks them. Test
// with errors.Is; the error's text adds the details.
var (
	ErrTooLarge         = errors.New("command: envelope too large")
	ErrMalformed        = errors.New("command: malformed")
	ErrUntrustedChain   = errors.New("command: signer does not chain to the device's root")
	ErrNotCommandSigner = errors.New("command: signer is not a command signer")
	ErrTestSigner       = errors.New("command: test certificate refused by a production device")
	ErrBadSignature     = errors.New("command: bad signature")
	ErrForeignDevice    = errors.New("command: for another device")
	ErrExpired          = errors.New("command: expired")
	ErrNotYetValid      = errors.New("command: issued in the future")
	ErrReplay           = errors.New("command: replayed or out-of-order sequence")
	ErrSequenceStore    = errors.New("command: cannot record the sequence")
)

// DefaultMaxSkew is how far in the future a command's issue time may be
// when Verifier.MaxSkew is 0.
const DefaultMaxSkew = 5 * time.Minute

// VerifyError is the error of Verify.
type VerifyError struct {
	// Reason is one of the Err… sentinels.
	Reason error
	// Command is the signed command when the refusal came after its
	// signature and form verified (target, time, sequence, store); else
	// nil.
	Command *Command
	// Detail says what exactly was wrong.
	Detail string
	// Cause is the underlying error, if any (the store's for
	// ErrSequenceStore).
	Cause error
}

func (e *VerifyError) Error() string {
	s := e.Reason.Error()
	if e.Command != nil {
		s += fmt.Sprintf(" (command %s, sequence %d)", e.Command.ID, e.Command.Sequence)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Unwrap returns the reason and the cause.
func (e *VerifyError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Reason, e.Cause}
	}
	return []error{e.Reason}
}

// Verifier checks envelopes on a device. Its zero value is not usable:
// Root, Serial and Sequence are required. It is safe for concurrent use;
// Verify calls are serialized so that two envelopes never both pass the
// sequence check.
type Verifier struct {
	// Root is the root certificate the device received at the factory.
	// A production root (one without pki.OIDTestPolicy) refuses any
	// test-marked certificate in the chain.
	Root *x509.Certificate
	// Serial is the device's own serial.
	Serial string
	// Sequence holds the last accepted sequence number.
	Sequence SequenceStore
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxSkew is how far in the future an issue time may be; 0 means
	// DefaultMaxSkew.
	MaxSkew time.Duration

	mu sync.Mutex
}

// Verify checks envelope (see the package doc for the order of checks),
// advances the sequence store to the command's sequence, and returns the
// command, which the caller may then carry out. On refusal it returns a
// *VerifyError whose Reason is an Err… sentinel, and the store is left
// as it was. A Verifier missing Root, Serial or Sequence returns a plain
// error.
func (v *Verifier) Verify(envelope []byte) (*Command, error) {
	if v.Root == nil || v.Serial == "" || v.Sequence == nil {
		return nil, errors.New("command: verifier needs the root certificate, the device serial and a sequence store")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	refuse := func(reason error, cmd *Command, format string, a ...any) (*Command, error) {
		return nil, &VerifyError{Reason: reason, Command: cmd, Detail: fmt.Sprintf(format, a...)}
	}

	if len(envelope) > MaxEnvelopeSize {
		return refuse(ErrTooLarge, nil, "%d bytes is over the %d-byte limit", len(envelope), MaxEnvelopeSize)
	}
	var env Envelope
	if err := decodeStrict(envelope, &env); err != nil {
		return refuse(ErrMalformed, nil, "envelope: %v", err)
	}
	switch {
	case len(env.Payload) == 0:
		return refuse(ErrMalformed, nil, "envelope has no payload")
	case len(env.Signature) == 0:
		return refuse(ErrMalformed, nil, "envelope has no signature")
	case len(env.Chain) == 0 || len(env.Chain) > MaxChainLen:
		return refuse(ErrMalformed, nil, "envelope chain has %d certificates; want 1 to %d", len(env.Chain), MaxChainLen)
	}
	chain := make([]*x509.Certificate, len(env.Chain))
	for i, der := range env.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return refuse(ErrMalformed, nil, "chain certificate %d: %v", i, err)
		}
		chain[i] = c
	}
	leaf := chain[0]

	roots := x509.NewCertPool()
	roots.AddCert(v.Root)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	// The extended key usage is checked below against the command signer
	// profile; crypto/x509 only knows the standard usages.
	verified, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return refuse(ErrUntrustedChain, nil, "%v (device time %s, root %q)", err, fmtTime(now), v.Root.Subject.CommonName)
	}

	if err := checkSignerProfile(leaf); err != nil {
		return refuse(ErrNotCommandSigner, nil, "%v", err)
	}
	if !pki.IsTestCertificate(v.Root) {
		for _, c := range append(chain, verified[0]...) {
			if pki.IsTestCertificate(c) {
				return refuse(ErrTestSigner, nil, "certificate %q carries the test policy; this device trusts the production root %q", c.Subject.CommonName, v.Root.Subject.CommonName)
			}
		}
	}

	alg, _, err := signatureAlgorithm(leaf.PublicKey)
	if err != nil {
		return refuse(ErrBadSignature, nil, "%v", err)
	}
	if err := leaf.CheckSignature(alg, env.Payload, env.Signature); err != nil {
		return refuse(ErrBadSignature, nil, "signature by %q does not verify over the payload", leaf.Subject.CommonName)
	}

	cmd, err := parseCommand(env.Payload)
	if err != nil {
		return refuse(ErrMalformed, nil, "signed command: %v", err)
	}
	if cmd.Device != v.Serial {
		return refuse(ErrForeignDevice, cmd, "command is for device %q; this device is %q", cmd.Device, v.Serial)
	}
	if !now.Before(cmd.ExpiresAt) {
		return refuse(ErrExpired, cmd, "expired at %s; device time is %s", fmtTime(cmd.ExpiresAt), fmtTime(now))
	}
	skew := v.MaxSkew
	if skew == 0 {
		skew = DefaultMaxSkew
	}
	if cmd.IssuedAt.After(now.Add(skew)) {
		return refuse(ErrNotYetValid, cmd, "issued at %s, more than %s after the device time %s; check the device clock", fmtTime(cmd.IssuedAt), skew, fmtTime(now))
	}
	if last := v.Sequence.Last(); cmd.Sequence <= last {
		return refuse(ErrReplay, cmd, "sequence %d is not above the last accepted %d", cmd.Sequence, last)
	}
	if err := v.Sequence.Advance(cmd.Sequence); err != nil {
		return nil, &VerifyError{Reason: ErrSequenceStore, Command: cmd, Detail: "the command must not run: " + err.Error(), Cause: err}
	}
	return cmd, nil
}
