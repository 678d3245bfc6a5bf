// Package hw is the device hardware the agent and the factory station
// touch, behind small interfaces, with a simulated implementation in a
// device directory.
//
// # Parts
//
// A Device bundles six parts, each modelling something found on real
// boards:
//
//   - KeyStore: a secure element, TPM 2.0 or on-chip key vault. Keys are
//     created inside it and used through a crypto.Signer; the private key
//     never leaves it. Destroying a key destroys the material.
//   - Fuses: one-time-programmable (OTP) eFuses, as on i.MX (OCOTP), STM32
//     or ESP32 parts. A field is a fixed number of bits; programming blows
//     fuses, so a bit only ever goes from 0 to 1.
//   - Slots: two firmware partitions A and B for A/B updates, and the
//     bootloader partition.
//   - FactoryData: the identity partition the factory writes (certificates,
//     trust anchors) and then write-protects for good, as an eMMC boot
//     partition with permanent write protection or a locked OTP region.
//   - BootEnv: the bootloader's key=value environment (U-Boot's
//     fw_printenv/fw_setenv).
//   - Identity: a hardware unique ID burnt in by the silicon vendor
//     (a SoC UID, a serial in ROM).
//
// # Key stores
//
// Besides the simulated unit's file store, two real KeyStores: a TPM 2.0
// (TPMKeyStore, through go-tpm; keys are ECDSA signing keys under the
// storage root key, made persistent at handles 0x81010000–0x810100FF, with
// a name→handle index in a state directory) and a PKCS#11 token standing
// in for a secure element (PKCS11KeyStore, through internal/kms; the key
// name is the object label). OpenKeyStore picks one from a KeyStoreSpec.
//
// # OTP semantics
//
// The fuse map has five fields (FuseFields): secure_boot (1 bit),
// debug_lock (1 bit), image_key_hash (256 bits), lifecycle (32 bits) and
// anti_rollback (64 bits). A field's value is ceil(bits/8) bytes,
// big-endian; in a 1-bit field only the lowest bit may be set. Program
// refuses, and writes nothing, when the value would clear a bit that is
// already set ("fuse lifecycle: OTP bits cannot be cleared: have 0x3,
// asked 0x1"), when the field is unknown, or when the value has the wrong
// length or bits beyond the field's width. Programming the value already
// held is a no-op. Counters are thermometer codes (Thermometer: n is the
// lowest n bits set) and the lifecycle word only ever adds bits
// (LifecycleWord), so both can move forward and never back.
//
// # Crash safety
//
// The simulated device (OpenSimDevice, CreateSimDevice) writes every file
// by writing a temporary file next to it, syncing it, renaming it into
// place and syncing the directory: after a crash a file holds either its
// old or its new content, never a mix. A failed or interrupted slot write
// leaves the previous image; a failed fuse write leaves the OTP image as
// it was. Key files are created with a hard link, which fails if the name
// exists, so two processes cannot both create the same key. See SimDevice
// for the directory layout and what two processes sharing one directory
// may do.
//
// Updates write the inactive slot as flash is written (SlotWriter: Erase,
// then WriteAt in order), so a write cut short leaves a partial slot that
// the writer resumes at its Size. For fault injection a SimDevice cuts the
// power at the n-th next mutating operation (CutAfter, Ops, ErrPowerCut):
// a cut write leaves half of its data, a cut erase half of the old image,
// and the atomic operations (Slots.Write, BootEnv.Set, Fuses.Program) their
// old content.
//
// # U-Boot environment
//
// UBootEnv is the BootEnv of a real U-Boot environment, read and written
// by fw_printenv and fw_setenv (libubootenv) as integrations on Linux do;
// CreateUBootEnvFiles makes a file-backed one (single or redundant copies)
// with its fw_env.config, and ParseUBootEnvImage reads one copy.
package hw

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"
)

// Errors the parts return, wrapped with details; test with errors.Is.
var (
	// ErrNotFound: no key by that name, or an empty slot.
	ErrNotFound = errors.New("hw: not found")
	// ErrExists: a key by that name already exists.
	ErrExists = errors.New("hw: already exists")
	// ErrOTPClear: a Program would clear an OTP bit that is already set
	// (the error is an *OTPClearError naming the field and both values).
	ErrOTPClear = errors.New("hw: OTP bits cannot be cleared")
	// ErrInvalid: an unknown fuse field or slot, a bad value length, key
	// name, algorithm or boot environment key.
	ErrInvalid = errors.New("hw: invalid argument")
	// ErrLocked: the factory data partition is write-protected.
	ErrLocked = errors.New("hw: write-protected")
)

// Algorithm is a key algorithm of a KeyStore.
type Algorithm string

// The algorithms a KeyStore supports. The empty Algorithm means
// ECDSAP256, the default.
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	ECDSAP384 Algorithm = "ecdsa-p384"
	Ed25519   Algorithm = "ed25519"
)

// KeyStore holds private keys that never leave it.
type KeyStore interface {
	// CreateKey creates a key named name (1 to 64 characters of
	// [A-Za-z0-9._-], not starting with a dot) and returns a signer for
	// it. It returns an error wrapping ErrExists if the name is taken, and
	// ErrInvalid for a bad name or algorithm.
	CreateKey(ctx context.Context, name string, alg Algorithm) (crypto.Signer, error)
	// Key returns a signer for an existing key, or an error wrapping
	// ErrNotFound.
	Key(ctx context.Context, name string) (crypto.Signer, error)
	// DestroyKey destroys the key material, or returns an error wrapping
	// ErrNotFound. Signers returned earlier for the key may keep working
	// in a simulation; real stores make them fail.
	DestroyKey(ctx context.Context, name string) error
}

// Fuses is a bank of one-time-programmable fuses (see the package doc for
// the semantics).
type Fuses interface {
	// Read returns the value of every field.
	Read(ctx context.Context) (FuseValues, error)
	// Program ORs value into field after checking that no set bit would be
	// cleared (ErrOTPClear), that the field exists and that value has its
	// length and width (ErrInvalid). On any error nothing was written.
	// Programming the value already held is a no-op.
	Program(ctx context.Context, field string, value []byte) error
}

// Slot names a firmware slot.
type Slot string

// The two firmware slots, and the bootloader's partition.
const (
	SlotA    Slot = "a"
	SlotB    Slot = "b"
	SlotBoot Slot = "boot"
)

// Other returns the other firmware slot of an A/B pair: b for a, a for b,
// and "" for anything else.
func (s Slot) Other() Slot {
	switch s {
	case SlotA:
		return SlotB
	case SlotB:
		return SlotA
	}
	return ""
}

// BootSlot is the slot a boot environment points at, as the bootloader
// reads it: boot_slot when it names slot a or b, else a.
func BootSlot(env map[string]string) Slot {
	if s := Slot(env[EnvBootSlot]); s == SlotA || s == SlotB {
		return s
	}
	return SlotA
}

// Slots are the two firmware partitions and the bootloader partition.
type Slots interface {
	// Write replaces the image in slot with everything read from r and
	// returns its SHA-256. The replacement is atomic: on any error
	// (including r's or ctx's) the previous image is left in place.
	Write(ctx context.Context, slot Slot, r io.Reader) (digest [32]byte, err error)
	// Open returns the image in slot, or an error wrapping ErrNotFound if
	// nothing was ever written there.
	Open(ctx context.Context, slot Slot) (io.ReadCloser, error)
	// Digest returns the SHA-256 of the image in slot, or an error
	// wrapping ErrNotFound.
	Digest(ctx context.Context, slot Slot) ([32]byte, error)
}

// BootEnv is the bootloader's key=value environment.
type BootEnv interface {
	// Get returns the whole environment (an empty, non-nil map when none
	// is set).
	Get(ctx context.Context) (map[string]string, error)
	// Set applies changes atomically: all or none. An empty value deletes
	// the key. Keys are 1 to 64 characters of [A-Za-z0-9_.-]; values hold
	// no newline or NUL and at most 4096 bytes. A bad key or value is
	// refused with ErrInvalid and nothing is changed.
	Set(ctx context.Context, changes map[string]string) error
}

// FactoryData is the identity partition: a small set of named files the
// factory writes (IDevID chain, trust anchors) and then locks. Once
// locked it can be read but never written again.
type FactoryData interface {
	// Write replaces the partition's content with files, atomically: all
	// of them or none. Names are 1 to 64 characters of [A-Za-z0-9._-],
	// not starting with a dot. ErrLocked once locked.
	Write(ctx context.Context, files map[string][]byte) error
	// Read returns the files (an empty, non-nil map when none was
	// written) and whether the partition is locked.
	Read(ctx context.Context) (files map[string][]byte, locked bool, err error)
	// Lock write-protects the partition for good; locking a locked
	// partition is a no-op.
	Lock(ctx context.Context) error
}

// Identity reads the hardware unique ID.
type Identity interface {
	// HardwareUID returns the unit's hardware unique ID.
	HardwareUID(ctx context.Context) (string, error)
}

// Device bundles the hardware of one unit.
type Device struct {
	Keys        KeyStore
	Fuses       Fuses
	Slots       Slots
	BootEnv     BootEnv
	Identity    Identity
	FactoryData FactoryData
	// Sim is the simulated device behind all parts, for fault injection
	// in tests; nil on real hardware.
	Sim *SimDevice
}

// HardwareUID is d.Identity.HardwareUID.
func (d *Device) HardwareUID(ctx context.Context) (string, error) {
	return d.Identity.HardwareUID(ctx)
}

// FuseField describes one field of the fuse map.
type FuseField struct {
	Name string
	Bits int
}

// Len is the length in bytes of the field's value.
func (f FuseField) Len() int { return (f.Bits + 7) / 8 }

// The fuse field names.
const (
	FuseSecureBoot   = "secure_boot"
	FuseDebugLock    = "debug_lock"
	FuseImageKeyHash = "image_key_hash"
	FuseLifecycle    = "lifecycle"
	FuseAntiRollback = "anti_rollback"
)

// FuseFields is the fuse map, in the order of the simulated OTP image.
var FuseFields = []FuseField{
	{FuseSecureBoot, 1},
	{FuseDebugLock, 1},
	{FuseImageKeyHash, 256},
	{FuseLifecycle, 32},
	{FuseAntiRollback, 64},
}

// fuseField returns the field named name.
func fuseField(name string) (FuseField, bool) {
	for _, f := range FuseFields {
		if f.Name == name {
			return f, true
		}
	}
	return FuseField{}, false
}

// FuseValues maps every field name to its value (FuseField.Len bytes,
// big-endian).
type FuseValues map[string][]byte

// Bit reports whether the 1-bit field (secure_boot, debug_lock) is set.
func (v FuseValues) Bit(field string) bool {
	b := v[field]
	return len(b) > 0 && b[len(b)-1]&1 == 1
}

// Uint returns the lifecycle or anti_rollback field as a number.
func (v FuseValues) Uint(field string) uint64 {
	var n uint64
	for _, c := range v[field] {
		n = n<<8 | uint64(c)
	}
	return n
}

// CheckFuseValue reports whether value fits field: the right length and no
// bit beyond the field's width. Errors wrap ErrInvalid.
func CheckFuseValue(field string, value []byte) error {
	f, ok := fuseField(field)
	if !ok {
		return fmt.Errorf("fuse %s: unknown field: %w", field, ErrInvalid)
	}
	if len(value) != f.Len() {
		return fmt.Errorf("fuse %s: value is %d bytes, the field takes %d: %w", field, len(value), f.Len(), ErrInvalid)
	}
	if extra := f.Len()*8 - f.Bits; extra > 0 && value[0]>>(8-extra) != 0 {
		return fmt.Errorf("fuse %s: value 0x%s has bits beyond the field's %d: %w", field, hex.EncodeToString(value), f.Bits, ErrInvalid)
	}
	return nil
}

// OTPClearError is the refusal of a Program that would clear OTP bits.
// It matches ErrOTPClear under errors.Is.
type OTPClearError struct {
	Field string
	Have  []byte // the field's value on the device
	Asked []byte // the value asked for
}

// Error reads "fuse lifecycle: OTP bits cannot be cleared: have 0x3,
// asked 0x1".
func (e *OTPClearError) Error() string {
	return fmt.Sprintf("fuse %s: OTP bits cannot be cleared: have %s, asked %s", e.Field, hexWord(e.Have), hexWord(e.Asked))
}

// Is reports whether target is ErrOTPClear.
func (e *OTPClearError) Is(target error) bool { return target == ErrOTPClear }

// checkProgram checks that programming value over have clears no bit.
func checkProgram(field string, have, value []byte) error {
	for i := range have {
		if have[i]&^value[i] != 0 {
			return &OTPClearError{Field: field, Have: bytes.Clone(have), Asked: bytes.Clone(value)}
		}
	}
	return nil
}

// hexWord formats b as a minimal 0x hex number.
func hexWord(b []byte) string {
	s := strings.TrimLeft(hex.EncodeToString(b), "0")
	if s == "" {
		s = "0"
	}
	return "0x" + s
}

// Thermometer returns the value of a counter field of width bits holding n:
// the lowest n bits set. It is an error if n is negative or above bits.
// Counting up only adds bits, so an OTP counter can move forward only.
func Thermometer(n, width int) ([]byte, error) {
	if n < 0 || n > width || width <= 0 {
		return nil, fmt.Errorf("hw: thermometer count %d out of range 0..%d: %w", n, width, ErrInvalid)
	}
	b := make([]byte, (width+7)/8)
	for i := 0; i < n; i++ {
		b[len(b)-1-i/8] |= 1 << (i % 8)
	}
	return b, nil
}

// ThermometerCount decodes a thermometer code: the number of set bits,
// which must be the lowest ones. A gap (set bits above a clear one) is an
// error wrapping ErrInvalid.
func ThermometerCount(b []byte) (int, error) {
	n := 0
	for _, c := range b {
		n += bits.OnesCount8(c)
	}
	want, err := Thermometer(n, len(b)*8)
	if err != nil {
		return 0, err
	}
	for i := range b {
		if b[i] != want[i] {
			return 0, fmt.Errorf("hw: %s is not a thermometer code: %w", hexWord(b), ErrInvalid)
		}
	}
	return n, nil
}

// Lifecycle is a unit's life stage as burnt into the lifecycle fuse word.
type Lifecycle string

// The life stages, in the only order the word can move. Each word holds
// every bit of the words before it:
//
//	factory      0x00000000
//	provisioned  0x00000001
//	deployed     0x00000003
//	rma          0x00000007
//	eol          0xffffffff
const (
	LifecycleFactory     Lifecycle = "factory"
	LifecycleProvisioned Lifecycle = "provisioned"
	LifecycleDeployed    Lifecycle = "deployed"
	LifecycleRMA         Lifecycle = "rma"
	LifecycleEOL         Lifecycle = "eol"
)

var lifecycleWords = []struct {
	l Lifecycle
	w uint32
}{
	{LifecycleFactory, 0x0},
	{LifecycleProvisioned, 0x1},
	{LifecycleDeployed, 0x3},
	{LifecycleRMA, 0x7},
	{LifecycleEOL, 0xffffffff},
}

// LifecycleWord returns the lifecycle field value of l, or an error
// wrapping ErrInvalid for an unknown stage.
func LifecycleWord(l Lifecycle) ([]byte, error) {
	for _, e := range lifecycleWords {
		if e.l == l {
			return binary.BigEndian.AppendUint32(nil, e.w), nil
		}
	}
	return nil, fmt.Errorf("hw: unknown lifecycle %q: %w", l, ErrInvalid)
}

// ParseLifecycle returns the stage a lifecycle field value encodes, or an
// error wrapping ErrInvalid for a word that is no stage's.
func ParseLifecycle(b []byte) (Lifecycle, error) {
	if len(b) != 4 {
		return "", fmt.Errorf("hw: lifecycle word is %d bytes, want 4: %w", len(b), ErrInvalid)
	}
	w := binary.BigEndian.Uint32(b)
	for _, e := range lifecycleWords {
		if e.w == w {
			return e.l, nil
		}
	}
	return "", fmt.Errorf("hw: lifecycle word %#x is no known stage: %w", w, ErrInvalid)
}

// SlotWriter writes a firmware slot the way flash is written, for an
// update that streams into the inactive slot: Erase first (the slot then
// holds no image), then WriteAt in order. A power cut during a write leaves
// the slot partly written, which the bootloader refuses because the image
// does not verify; the writer resumes at Size after a restart. Only the
// inactive slot is ever written this way.
type SlotWriter interface {
	// Erase erases slot: afterwards it holds zero bytes.
	Erase(ctx context.Context, slot Slot) error
	// WriteAt writes p at offset off, which must equal the slot's current
	// Size (flash is written in order; a rewrite needs an Erase). It returns
	// ErrInvalid for another offset.
	WriteAt(ctx context.Context, slot Slot, off int64, p []byte) error
	// Size returns how many bytes the slot holds.
	Size(ctx context.Context, slot Slot) (int64, error)
}

// Boot environment variables of an A/B update, as U-Boot scripts and the
// bootloader simulator read them. BootSlot names the slot to boot ("a" or
// "b"). UpgradeAvailable "1" marks a trial boot of a new slot: the
// bootloader then counts BootCount up at each boot and, past BootLimit
// (default DefaultBootLimit), boots the other slot again and clears
// UpgradeAvailable. The agent commits a trial boot by clearing
// UpgradeAvailable and BootCount.
const (
	EnvBootSlot         = "boot_slot"
	EnvUpgradeAvailable = "upgrade_available"
	EnvBootCount        = "bootcount"
	EnvBootLimit        = "bootlimit"
	DefaultBootLimit    = 3
)
