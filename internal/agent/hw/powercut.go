package hw

import (
	"errors"
	"fmt"
)

// ErrPowerCut is the failure of a mutating operation of a SimDevice whose
// power was cut by CutAfter. It is permanent for that SimDevice: every
// later mutating operation fails with it too, until the device directory
// is opened again (OpenSimDevice), as a unit is powered up again.
var ErrPowerCut = errors.New("hw: power cut")

// CutAfter arms a power cut: counting from now, the n-th mutating
// operation fails with an error wrapping ErrPowerCut, and so does every
// mutating operation after it. n = 1 cuts the very next one; n <= 0 disarms
// a pending cut (a cut that already happened stays).
//
// The mutating operations are Slots.Write, SlotWriter.Erase and WriteAt,
// BootEnv.Set and Fuses.Program; each counts once its arguments are valid
// (see Ops). What a cut leaves behind depends on the operation:
//
//   - WriteAt: the first half of p (len(p)/2 bytes) is written and synced,
//     the rest is not: the slot is partly written, as flash is after a cut
//     in the middle of a program operation.
//   - Erase: the slot keeps only the first half of its old content, as
//     flash does whose erase was cut after some sectors.
//   - Slots.Write, BootEnv.Set, Fuses.Program: these are atomic (temporary
//     file and rename), so the cut leaves the old content.
//
// The operations that read (Open, Digest, Size, Get, Read) keep working
// after a cut, so a test can inspect what the cut left.
func (s *SimDevice) CutAfter(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n <= 0 {
		s.cutAt = 0
		return
	}
	s.cutAt = s.ops + n
}

// Ops returns how many mutating operations this SimDevice started since it
// was opened, counting the one a power cut interrupted but none refused
// because the power was already off. A fault-injection harness runs an
// update once to learn its number of cut points, then cuts at each.
func (s *SimDevice) Ops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops
}

// PowerCut reports whether a power cut happened on this SimDevice.
func (s *SimDevice) PowerCut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cut
}

// powerCutError is the failure of a mutating operation after a power cut.
// midway marks the operation the cut interrupted (which may leave a partial
// effect); the ones after it found the power off and did nothing.
type powerCutError struct {
	what   string
	op     int
	midway bool
}

func (e *powerCutError) Error() string {
	if e.midway {
		return fmt.Sprintf("hw: %s: power cut at operation %d", e.what, e.op)
	}
	return fmt.Sprintf("hw: %s: power is off", e.what)
}

// Unwrap returns ErrPowerCut.
func (e *powerCutError) Unwrap() error { return ErrPowerCut }

// tick counts one mutating operation named what and returns the power-cut
// error it must fail with, or nil. s.mu is held.
func (s *SimDevice) tick(what string) error {
	if s.cut {
		return &powerCutError{what: what}
	}
	s.ops++
	if s.cutAt > 0 && s.ops >= s.cutAt {
		s.cut = true
		s.cutAt = 0
		return &powerCutError{what: what, op: s.ops, midway: true}
	}
	return nil
}

// tickLocked is tick taking s.mu.
func (s *SimDevice) tickLocked(what string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tick(what)
}
