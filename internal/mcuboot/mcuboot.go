// Package mcuboot writes and checks firmware images in the format of the
// MCUboot secure bootloader (mcu-tools/mcuboot: bootutil/image.h,
// docs/design.md, and what its imgtool writes), so that a device's MCUboot
// boots what `cradle release sign-image` signs, and Cradle accepts what
// imgtool signs.
//
// # Format
//
// All integers are little-endian. An image is
//
//	header (HeaderSize bytes) | body (ImageSize bytes) | protected TLV area | TLV area | [pad]
//
// The first 32 bytes of the header are: magic 0x96f3b83d (u32), load
// address (u32), header size (u16, at least 32), protected TLV area size
// (u16, including its 4-byte info header; 0 when there is none), body size
// (u32), flags (u32), version (major u8, minor u8, revision u16, build
// u32) and 4 zero bytes. The rest of the header is zero (or, with
// Options.PadHeader, the erased value 0xff, as imgtool --pad-header does).
//
// A TLV area starts with an info header, magic (u16) and total size (u16,
// info header included), followed by TLVs: type (u16; imgtool writes it as
// a type byte and a zero byte) and length (u16), then the value. The
// protected area has magic 0x6908 and holds the security counter (SEC_CNT
// 0x50, u32); the unprotected area has magic 0x6907 and holds, in
// imgtool's order, the SHA-256 (0x10) of header, body and protected area
// together, the key hash (KEYHASH 0x01: the SHA-256 of the signing key's
// public key in DER SubjectPublicKeyInfo form, which is what imgtool
// hashes for both ECDSA P-256 and Ed25519), and the signature: ECDSA P-256
// over the SHA-256 hash, ASN.1 DER (ECDSA_SIG 0x22), or Ed25519 over the
// 32-byte hash as its message (ED25519 0x24). The protected area is covered
// by the hash; the unprotected one cannot be, and MCUboot accepts only the
// hash, key and signature (and encryption) TLVs there: any other type in
// it is refused (ErrUnprotectedTLV), so a security counter cannot be
// slipped in after signing.
//
// With Options.SlotSize the image is padded, like imgtool --pad, to the
// slot size with the erased value 0xff and ends with MCUboot's trailer:
// room for the swap status (128 sectors × 3 × Align), four MaxAlign-sized
// flags, and the 16-byte boot magic aligned up to MaxAlign (MaxAlign is
// max(8, Align)); the magic is 77c295f3 60d2ef7f 3552500f 2cb67980 when
// MaxAlign is 8, else MaxAlign (u16) followed by 2de15d29 410b8d77
// 679c110f 1f8a.
//
// # Checking
//
// Parse checks the structure and the hash: magic, header size, that the
// body and both TLV areas lie inside the file, that each TLV lies inside
// its area, the protected area's size against the header, that only
// unprotected types sit in the unprotected area, that a SHA-256 TLV is
// present and matches, and that nothing follows the TLV area but a pad in
// imgtool's form. Verify then requires a KEYHASH (or PUBKEY) naming one of
// the trusted keys followed by a signature of that key's type that it
// verifies. Every failure wraps one of the Err values, so callers test it
// with errors.Is (or IsImageError), and its message says what was found.
//
// ParseReader and VerifyReader check an image where it lies (a flash slot,
// a file) through an io.ReaderAt: they read the header and the TLV areas
// (each at most 64 KiB) and hash the rest through a 256 KiB buffer, so a
// 256 MB image costs no 256 MB of memory. Parse and Verify are the same
// code over a byte slice; the streaming forms return no Body, and a
// failure to read wraps the reader's error and none of the Err values.
//
// Not supported: encrypted and compressed images (refused with
// ErrUnsupported), RSA and P-384 keys, SHA-384/512 hashes, "pure" Ed25519
// signatures, dependency and boot-record TLVs when signing (they are read
// and kept when parsing), big-endian images, and a slot trailer marked
// for test or confirmed (imgtool --test/--confirm): Parse takes such a
// trailer's image_ok byte for trailing data.
//
// # Interoperability
//
// The layout follows image.h, image_validate.c and imgtool's image.py
// (read, not copied); the tests check it field by field against
// hand-written bytes, and against images made by imgtool 2.4.0 itself
// (testdata/imgtool): we verify them, and our signer writes its Ed25519
// images byte for byte (ECDSA ones up to the random signature). imgtool is
// not packaged by Debian, so CI runs on those files; `imgtool verify` was
// run by hand on images this package signed and accepted them.
package mcuboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Magic numbers of the format.
const (
	ImageMagic       = 0x96f3b83d
	TLVInfoMagic     = 0x6907 // the unprotected TLV area
	ProtTLVInfoMagic = 0x6908 // the protected TLV area

	// MinHeaderSize is the size of the fixed header fields.
	MinHeaderSize = 32
	// DefaultHeaderSize is the header size Zephyr reserves (ROM start
	// offset 0x200) and the default of Options.HeaderSize.
	DefaultHeaderSize = 0x200

	tlvInfoSize = 4
	tlvHdrSize  = 4
)

// TLV types (image.h IMAGE_TLV_*).
const (
	TLVKeyHash         = 0x01
	TLVPubKey          = 0x02
	TLVSHA256          = 0x10
	TLVSHA384          = 0x11
	TLVSHA512          = 0x12
	TLVRSA2048PSS      = 0x20
	TLVECDSA224        = 0x21
	TLVECDSASig        = 0x22
	TLVRSA3072PSS      = 0x23
	TLVEd25519         = 0x24
	TLVSigPure         = 0x25
	TLVEncRSA2048      = 0x30
	TLVEncKW           = 0x31
	TLVEncEC256        = 0x32
	TLVEncX25519       = 0x33
	TLVEncX25519SHA512 = 0x34
	TLVDependency      = 0x40
	TLVSecCnt          = 0x50
	TLVBootRecord      = 0x60
)

// Header flags (image.h IMAGE_F_*).
const (
	FlagPIC               = 0x00000001
	FlagEncryptedAES128   = 0x00000004
	FlagEncryptedAES256   = 0x00000008
	FlagNonBootable       = 0x00000010
	FlagRAMLoad           = 0x00000020
	FlagROMFixed          = 0x00000100
	FlagCompressedLZMA1   = 0x00000200
	FlagCompressedLZMA2   = 0x00000400
	FlagCompressedARMThum = 0x00000800
)

// unprotectedAllowed lists the TLV types MCUboot accepts outside the
// protected area (image_validate.c allowed_unprot_tlvs).
var unprotectedAllowed = map[uint16]bool{
	TLVKeyHash: true, TLVPubKey: true, TLVSHA256: true, TLVSHA384: true, TLVSHA512: true,
	TLVRSA2048PSS: true, TLVECDSA224: true, TLVECDSASig: true, TLVRSA3072PSS: true, TLVEd25519: true,
	TLVSigPure: true, TLVEncRSA2048: true, TLVEncKW: true, TLVEncEC256: true, TLVEncX25519: true,
	TLVEncX25519SHA512: true,
}

// Errors of Parse and Verify; each returned error wraps one of them.
var (
	ErrBadMagic       = errors.New("mcuboot: bad magic")
	ErrSize           = errors.New("mcuboot: size out of range")
	ErrTLVOverrun     = errors.New("mcuboot: TLV overruns its area")
	ErrNoHash         = errors.New("mcuboot: no SHA-256 TLV")
	ErrHashMismatch   = errors.New("mcuboot: hash mismatch")
	ErrUnknownKey     = errors.New("mcuboot: signed by an unknown key")
	ErrNoSignature    = errors.New("mcuboot: no signature")
	ErrBadSignature   = errors.New("mcuboot: bad signature")
	ErrUnprotectedTLV = errors.New("mcuboot: TLV not allowed in the unprotected area")
	ErrTrailingData   = errors.New("mcuboot: trailing data after the TLV area")
	ErrUnsupported    = errors.New("mcuboot: unsupported image")
)

// Version is an image version: major.minor.revision+build.
type Version struct {
	Major    uint8
	Minor    uint8
	Revision uint16
	Build    uint32
}

// String returns v as imgtool writes it, "1.2.3+4".
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d+%d", v.Major, v.Minor, v.Revision, v.Build)
}

// ParseVersion parses "maj[.min[.rev[+build]]]" as imgtool does: decimal
// numbers without leading zeros, missing parts 0, each within its field.
func ParseVersion(s string) (Version, error) {
	bad := func(why string) (Version, error) {
		return Version{}, fmt.Errorf("mcuboot: version %q: %s (use major.minor.revision+build, e.g. 1.2.3+4)", s, why)
	}
	rest, build, hasBuild := strings.Cut(s, "+")
	parts := strings.Split(rest, ".")
	if len(parts) > 3 || (hasBuild && len(parts) != 3) {
		return bad("wrong number of parts")
	}
	limits := []uint64{0xff, 0xff, 0xffff}
	var n [4]uint64
	num := func(p string, max uint64) (uint64, bool) {
		if p == "" || (len(p) > 1 && p[0] == '0') || strings.TrimLeft(p, "0123456789") != "" {
			return 0, false
		}
		x, err := strconv.ParseUint(p, 10, 64)
		return x, err == nil && x <= max
	}
	for i, p := range parts {
		x, ok := num(p, limits[i])
		if !ok {
			return bad(fmt.Sprintf("part %q is not a number from 0 to %d", p, limits[i]))
		}
		n[i] = x
	}
	if hasBuild {
		x, ok := num(build, 0xffffffff)
		if !ok {
			return bad(fmt.Sprintf("build %q is not a number from 0 to %d", build, uint64(0xffffffff)))
		}
		n[3] = x
	}
	return Version{uint8(n[0]), uint8(n[1]), uint16(n[2]), uint32(n[3])}, nil
}

// Header is the fixed part of an image header.
type Header struct {
	LoadAddr         uint32
	HeaderSize       uint16
	ProtectedTLVSize uint16 // the protected area with its info header; 0 if none
	ImageSize        uint32 // the body, without the header
	Flags            uint32
	Version          Version
}

func (h Header) marshal() []byte {
	b := make([]byte, MinHeaderSize)
	binary.LittleEndian.PutUint32(b[0:], ImageMagic)
	binary.LittleEndian.PutUint32(b[4:], h.LoadAddr)
	binary.LittleEndian.PutUint16(b[8:], h.HeaderSize)
	binary.LittleEndian.PutUint16(b[10:], h.ProtectedTLVSize)
	binary.LittleEndian.PutUint32(b[12:], h.ImageSize)
	binary.LittleEndian.PutUint32(b[16:], h.Flags)
	b[20] = h.Version.Major
	b[21] = h.Version.Minor
	binary.LittleEndian.PutUint16(b[22:], h.Version.Revision)
	binary.LittleEndian.PutUint32(b[24:], h.Version.Build)
	return b
}

// TLV is one type-length-value record of a TLV area.
type TLV struct {
	Type      uint16
	Value     []byte
	Protected bool // in the protected area
}

// tlvArea appends a TLV area with the given info magic to dst; with no
// TLVs it appends nothing, as imgtool does.
func tlvArea(dst []byte, magic uint16, tlvs []TLV) []byte {
	if len(tlvs) == 0 {
		return dst
	}
	size := tlvInfoSize
	for _, t := range tlvs {
		size += tlvHdrSize + len(t.Value)
	}
	dst = binary.LittleEndian.AppendUint16(dst, magic)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(size))
	for _, t := range tlvs {
		dst = binary.LittleEndian.AppendUint16(dst, t.Type)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(t.Value)))
		dst = append(dst, t.Value...)
	}
	return dst
}

// Trailer constants of an image padded to its slot (imgtool --pad).
const (
	trailerSectors = 128 // imgtool's default --max-sectors
	bootMagicSize  = 16
	erasedVal      = 0xff
)

var bootMagic8 = []byte{0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80}

// bootMagic returns the 16-byte magic that ends a slot's trailer for a
// flash whose largest write alignment is maxAlign.
func bootMagic(maxAlign int) []byte {
	if maxAlign == 8 {
		return bootMagic8
	}
	b := binary.LittleEndian.AppendUint16(nil, uint16(maxAlign))
	return append(b, 0x2d, 0xe1, 0x5d, 0x29, 0x41, 0x0b, 0x8d, 0x77, 0x67, 0x9c, 0x11, 0x0f, 0x1f, 0x8a)
}

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }

// trailerSize is the size of MCUboot's swap trailer for a write alignment
// align (imgtool's _trailer_size without encryption or overwrite-only).
func trailerSize(align, maxAlign int) int {
	return trailerSectors*3*align + maxAlign*4 + alignUp(bootMagicSize, maxAlign)
}
