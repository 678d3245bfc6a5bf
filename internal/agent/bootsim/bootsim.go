// Package bootsim simulates the bootloader of a unit with two firmware
// slots: MCUboot-style secure boot over U-Boot-style A/B logic, on an
// hw.Device (a SimDevice in tests). The update tests and the
// fault-injection harness "reboot" a unit by calling Boot.
//
// # The A/B protocol
//
// The boot environment holds four variables (the hw.Env* constants):
//
//	boot_slot          the slot to boot, "a" or "b" (unset or anything else: "a")
//	upgrade_available  "1" while the slot in boot_slot is on trial
//	bootcount          boot attempts of the trial (unset or not a number: 0)
//	bootlimit          attempts allowed (unset, 0 or not a number: hw.DefaultBootLimit)
//
// The agent writes the new image into the other slot, verifies it and
// then, in one BootEnv.Set, points boot_slot at it with
// upgrade_available=1 and bootcount cleared. At each Boot with
// upgrade_available=1 the bootloader first counts the attempt: bootcount
// goes up by one in one BootEnv.Set; once it exceeds bootlimit, that Set
// instead switches boot_slot back to the other slot and clears
// upgrade_available and bootcount (the rollback, U-Boot's altbootcmd).
// The agent commits a healthy trial by clearing upgrade_available and
// bootcount; it rolls back on its own by the same Set that restores
// boot_slot.
//
// # Verification
//
// The chosen slot is then verified. With the secure_boot fuse blank any
// non-empty slot boots (its version and counter are read when it parses
// as an MCUboot image). With secure_boot set, the slot must hold an
// MCUboot image (mcuboot.VerifyReader: structure, SHA-256, nothing after the
// TLVs but imgtool's pad, so a partly written slot never verifies) that
// is signed by a key that is both compiled into the bootloader
// (Options.Keys) and whose KEYHASH equals the image_key_hash fuse, and
// whose security counter (SEC_CNT; 0 when absent) is at least the
// anti_rollback fuse's thermometer count. This is MCUboot with the key
// compiled in and its hash checked against OTP, as on parts that store
// only the key hash in fuses: a PUBKEY TLV in the image is never trusted
// on its own, so a blank or foreign image_key_hash verifies nothing.
//
// If the chosen slot does not verify, the other slot is tried; when it
// verifies it boots and the fallback is recorded in one BootEnv.Set
// (boot_slot = that slot, upgrade_available and bootcount cleared). When
// neither verifies, Boot boots nothing and its Result says Bricked with
// both reasons; the environment is left as it was. An unverified slot is
// never booted.
//
// # Power cuts
//
// Boot writes the environment at most twice (the count or rollback, then
// a fallback) and reads nothing it wrote, so an interrupted Boot (any
// error of BootEnv.Set, such as a simulated power cut) returns the error
// having booted nothing, and the next Boot after the unit is reopened
// starts again from whatever environment was stored: an attempt whose
// count was not stored is counted again.
package bootsim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"cradle/internal/agent/hw"
	"cradle/internal/mcuboot"
)

// Errors for a slot that does not verify, besides mcuboot's; test with
// errors.Is.
var (
	// ErrEmpty: the slot was never written or has been erased.
	ErrEmpty = errors.New("bootsim: slot is empty")
	// ErrKeyNotFused: no compiled-in key has the image_key_hash fuse value
	// (or the fuse is blank), so no image can verify.
	ErrKeyNotFused = errors.New("bootsim: no compiled-in key matches the image_key_hash fuse")
	// ErrRollback: the image's security counter is below the
	// anti_rollback fuse.
	ErrRollback = errors.New("bootsim: security counter below the anti_rollback fuse")
	// ErrNotBootable: the image header carries the non-bootable flag.
	ErrNotBootable = errors.New("bootsim: image is flagged non-bootable")
)

// Options configure the simulated bootloader. The zero value has no
// compiled-in key, so with secure boot on nothing verifies.
type Options struct {
	// Keys are the image public keys compiled into the bootloader (ECDSA
	// P-256 or Ed25519). Only the one whose KEYHASH equals the
	// image_key_hash fuse is used.
	Keys []crypto.PublicKey
}

// SlotImage describes the image in a slot.
type SlotImage struct {
	// Version is the MCUboot header version (zero if the slot is not an
	// MCUboot image, which only boots with secure boot off).
	Version mcuboot.Version
	// SecurityCounter is the SEC_CNT TLV (0 when absent).
	SecurityCounter uint32
	// Digest is the SHA-256 of the slot's whole content, what the agent
	// reports as its running image.
	Digest [32]byte
}

// Result is what one Boot did.
type Result struct {
	// Slot is the slot booted; empty when Bricked.
	Slot hw.Slot
	// SlotImage describes the booted image; zero when Bricked.
	SlotImage
	// BootCount is the attempt number of a trial boot (1 to bootlimit), 0
	// when the booted slot is not on trial.
	BootCount int
	// RolledBack says the trial exceeded bootlimit at this boot, so the
	// bootloader switched back to the other slot.
	RolledBack bool
	// FellBack says the chosen slot did not verify and the other slot
	// was booted.
	FellBack bool
	// Bricked says neither slot verified: nothing was booted.
	Bricked bool
	// Reason says why the bootloader rolled back, fell back or bricked
	// ("" on a plain boot).
	Reason string
}

// Boot runs the bootloader once on dev (see the package doc). It returns
// an error, having booted nothing, when the environment or the fuses
// cannot be read, a slot cannot be read for another reason than being
// empty, or an environment write fails (a power cut: the next Boot starts
// from what was stored). A unit whose slots both fail verification is
// not an error: the Result says Bricked. Each slot checked is read in
// place through hw.SlotReaderAt and bounded buffers (mcuboot.VerifyReader),
// as a bootloader reads its flash, so a 256 MB slot costs no 256 MB of
// memory.
func Boot(ctx context.Context, dev *hw.Device, opts Options) (Result, error) {
	env, err := dev.BootEnv.Get(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("bootsim: read boot environment: %w", err)
	}
	slot := hw.BootSlot(env)
	var res Result
	var reasons []string
	if env[hw.EnvUpgradeAvailable] == "1" {
		limit := envInt(env[hw.EnvBootLimit])
		if limit <= 0 {
			limit = hw.DefaultBootLimit
		}
		count := envInt(env[hw.EnvBootCount]) + 1
		if count > limit {
			back := slot.Other()
			if err := dev.BootEnv.Set(ctx, map[string]string{
				hw.EnvBootSlot: string(back), hw.EnvUpgradeAvailable: "", hw.EnvBootCount: "",
			}); err != nil {
				return Result{}, fmt.Errorf("bootsim: roll back to slot %s: %w", back, err)
			}
			reasons = append(reasons, fmt.Sprintf("slot %s: trial boot %d exceeds bootlimit %d: rolled back to slot %s", slot, count, limit, back))
			res.RolledBack = true
			slot = back
		} else {
			if err := dev.BootEnv.Set(ctx, map[string]string{hw.EnvBootCount: strconv.Itoa(count)}); err != nil {
				return Result{}, fmt.Errorf("bootsim: count boot attempt %d: %w", count, err)
			}
			res.BootCount = count
		}
	}

	fuses, err := dev.Fuses.Read(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("bootsim: read fuses: %w", err)
	}
	img, verr := verify(ctx, dev, slot, fuses, opts)
	if verr == nil {
		res.Slot, res.SlotImage = slot, img
		res.Reason = join(reasons)
		return res, nil
	}
	if !isVerifyError(verr) {
		return Result{}, verr
	}
	reasons = append(reasons, fmt.Sprintf("slot %s: %v", slot, verr))
	alt := slot.Other()
	img, aerr := verify(ctx, dev, alt, fuses, opts)
	if aerr != nil {
		if !isVerifyError(aerr) {
			return Result{}, aerr
		}
		reasons = append(reasons, fmt.Sprintf("slot %s: %v", alt, aerr))
		return Result{Bricked: true, RolledBack: res.RolledBack, Reason: join(reasons)}, nil
	}
	if err := dev.BootEnv.Set(ctx, map[string]string{
		hw.EnvBootSlot: string(alt), hw.EnvUpgradeAvailable: "", hw.EnvBootCount: "",
	}); err != nil {
		return Result{}, fmt.Errorf("bootsim: fall back to slot %s: %w", alt, err)
	}
	res.Slot, res.SlotImage = alt, img
	res.FellBack, res.BootCount = true, 0
	res.Reason = join(reasons)
	return res, nil
}

// VerifySlot checks slot of dev as Boot would, against the fuses as they
// are now, without touching the environment. Its error wraps ErrEmpty,
// ErrKeyNotFused, ErrRollback, ErrNotBootable or an mcuboot error when
// the slot does not verify, or reports why the slot or the fuses could
// not be read.
func VerifySlot(ctx context.Context, dev *hw.Device, slot hw.Slot, opts Options) (SlotImage, error) {
	if slot != hw.SlotA && slot != hw.SlotB {
		return SlotImage{}, fmt.Errorf("bootsim: slot %q is not a firmware slot (a or b): %w", slot, hw.ErrInvalid)
	}
	fuses, err := dev.Fuses.Read(ctx)
	if err != nil {
		return SlotImage{}, fmt.Errorf("bootsim: read fuses: %w", err)
	}
	return verify(ctx, dev, slot, fuses, opts)
}

// verify reads slot and checks it against fuses.
func verify(ctx context.Context, dev *hw.Device, slot hw.Slot, fuses hw.FuseValues, opts Options) (SlotImage, error) {
	slots, ok := dev.Slots.(hw.SlotReaderAt)
	if !ok {
		return SlotImage{}, fmt.Errorf("bootsim: the unit's slots cannot be read at offsets (hw.SlotReaderAt)")
	}
	r, size, err := slots.OpenAt(ctx, slot)
	if errors.Is(err, hw.ErrNotFound) {
		return SlotImage{}, ErrEmpty
	}
	if err != nil {
		return SlotImage{}, fmt.Errorf("bootsim: read slot %s: %w", slot, err)
	}
	defer r.Close()
	if size == 0 {
		return SlotImage{}, ErrEmpty
	}
	// The slot is read in place, as a bootloader reads flash: hashed
	// through a buffer, then checked by mcuboot's streaming verifier.
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(r, 0, size), make([]byte, 256<<10)); err != nil {
		return SlotImage{}, fmt.Errorf("bootsim: read slot %s: %w", slot, err)
	}
	si := SlotImage{}
	h.Sum(si.Digest[:0])
	if !fuses.Bit(hw.FuseSecureBoot) {
		// Secure boot off: anything boots; describe it if we can.
		if img, err := mcuboot.ParseReader(r, size); err == nil {
			si.Version, si.SecurityCounter = img.Header.Version, img.SecurityCounter
		}
		return si, nil
	}

	fused := fuses[hw.FuseImageKeyHash]
	keys, err := mcuboot.KeysWithHash(opts.Keys, fused)
	if err != nil {
		return SlotImage{}, fmt.Errorf("bootsim: compiled-in key: %w", err)
	}
	if len(keys) == 0 {
		if bytes.Count(fused, []byte{0}) == len(fused) {
			return SlotImage{}, fmt.Errorf("%w: the fuse is blank", ErrKeyNotFused)
		}
		return SlotImage{}, fmt.Errorf("%w: none of the %d keys hashes to %s", ErrKeyNotFused, len(opts.Keys), hex.EncodeToString(fused))
	}
	img, err := mcuboot.VerifyReader(r, size, keys)
	if err != nil {
		if !mcuboot.IsImageError(err) {
			return SlotImage{}, fmt.Errorf("bootsim: read slot %s: %w", slot, err)
		}
		return SlotImage{}, err
	}
	if img.Header.Flags&mcuboot.FlagNonBootable != 0 {
		return SlotImage{}, fmt.Errorf("%w (flags %#x)", ErrNotBootable, img.Header.Flags)
	}
	floor, err := hw.ThermometerCount(fuses[hw.FuseAntiRollback])
	if err != nil {
		return SlotImage{}, fmt.Errorf("bootsim: anti_rollback fuse: %w", err)
	}
	if uint64(img.SecurityCounter) < uint64(floor) {
		return SlotImage{}, fmt.Errorf("%w: image %s has counter %d, the fuse %d", ErrRollback, img.Header.Version, img.SecurityCounter, floor)
	}
	si.Version, si.SecurityCounter = img.Header.Version, img.SecurityCounter
	return si, nil
}

// isVerifyError reports whether err is a slot failing verification (as
// opposed to an I/O failure, which Boot returns).
func isVerifyError(err error) bool {
	for _, e := range []error{ErrEmpty, ErrKeyNotFused, ErrRollback, ErrNotBootable} {
		if errors.Is(err, e) {
			return true
		}
	}
	return mcuboot.IsImageError(err)
}

// envInt parses a counter variable; anything but a decimal number is 0.
func envInt(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

func join(reasons []string) string { return strings.Join(reasons, "; ") }
