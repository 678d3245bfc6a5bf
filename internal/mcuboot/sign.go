package mcuboot

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Options says how Sign builds an image. The zero value (with a Key) signs
// version 0.0.0+0 with a DefaultHeaderSize header taken from the input's
// leading zero bytes, and no security counter TLV.
type Options struct {
	// Version goes into the header.
	Version Version
	// SecurityCounter, if not nil, is written as the SEC_CNT TLV of the
	// protected area (imgtool --security-counter).
	SecurityCounter *uint32
	// HeaderSize is the size of the header; 0 means DefaultHeaderSize.
	// It must be at least MinHeaderSize.
	HeaderSize int
	// PadHeader prepends HeaderSize bytes of 0xff for the header (imgtool
	// --pad-header); without it the input must start with HeaderSize zero
	// bytes, which the header replaces.
	PadHeader bool
	// LoadAddr, if not 0, is the RAM load address; it sets FlagRAMLoad.
	LoadAddr uint32
	// SlotSize, if not 0, pads the image to this size with MCUboot's
	// trailer at its end (imgtool --pad --slot-size).
	SlotSize int
	// Align is the flash write alignment (1, 2, 4, 8, 16 or 32; 0 means
	// 1), used for the trailer's size (imgtool --align).
	Align int
	// Key signs the image: an ECDSA P-256 or Ed25519 signer (a file or
	// PKCS#11 key from internal/kms). Nil writes an unsigned image (hash
	// only), as imgtool does without --key.
	Key crypto.Signer
	// Rand is the randomness of ECDSA; nil means crypto/rand.
	Rand io.Reader
}

// KeyHash returns the KEYHASH of a public key as imgtool computes it: the
// SHA-256 of its DER SubjectPublicKeyInfo.
func KeyHash(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("mcuboot: key hash: %w", err)
	}
	h := sha256.Sum256(der)
	return h[:], nil
}

// KeysWithHash returns the keys among keys whose KeyHash is hash: those
// an image naming hash in its KEYHASH TLV (or a bootloader whose OTP holds
// hash) may be verified with.
func KeysWithHash(keys []crypto.PublicKey, hash []byte) ([]crypto.PublicKey, error) {
	var out []crypto.PublicKey
	for _, k := range keys {
		h, err := KeyHash(k)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(h, hash) {
			out = append(out, k)
		}
	}
	return out, nil
}

// sigTLV returns the signature TLV type for a public key, or an error for
// a key MCUboot images cannot be signed with here.
func sigTLV(pub crypto.PublicKey) (uint16, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return 0, fmt.Errorf("%w: ECDSA key on %s: use a P-256 (ecdsa-p256) or Ed25519 key", ErrUnsupported, k.Curve.Params().Name)
		}
		return TLVECDSASig, nil
	case ed25519.PublicKey:
		return TLVEd25519, nil
	default:
		return 0, fmt.Errorf("%w: %T key: use a P-256 (ecdsa-p256) or Ed25519 key", ErrUnsupported, pub)
	}
}

// Sign returns body signed as an MCUboot image, laid out byte for byte as
// imgtool sign writes it with the same options (ECDSA signatures differ,
// being randomized). It fails without writing anything when the options
// are out of range, the body does not fit the header and slot, or the
// key is not ECDSA P-256 or Ed25519.
func Sign(body []byte, opts Options) ([]byte, error) {
	hs := opts.HeaderSize
	if hs == 0 {
		hs = DefaultHeaderSize
	}
	if hs < MinHeaderSize || hs > math.MaxUint16 {
		return nil, fmt.Errorf("mcuboot: header size %#x out of range (%#x to %#x)", hs, MinHeaderSize, math.MaxUint16)
	}
	align := opts.Align
	if align == 0 {
		align = 1
	}
	switch align {
	case 1, 2, 4, 8, 16, 32:
	default:
		return nil, fmt.Errorf("mcuboot: alignment %d: use 1, 2, 4, 8, 16 or 32", align)
	}
	var sig uint16
	if opts.Key != nil {
		var err error
		if sig, err = sigTLV(opts.Key.Public()); err != nil {
			return nil, err
		}
	}
	var img []byte
	if opts.PadHeader {
		img = make([]byte, hs, hs+len(body)+512)
		for i := range img {
			img[i] = erasedVal
		}
		img = append(img, body...)
	} else {
		if len(body) < hs {
			return nil, fmt.Errorf("mcuboot: input of %d bytes is shorter than the %#x-byte header: use --pad-header", len(body), hs)
		}
		for _, c := range body[:hs] {
			if c != 0 {
				return nil, fmt.Errorf("mcuboot: the input does not start with %#x zero bytes for the header: use --pad-header, or a header size the build reserved", hs)
			}
		}
		img = make([]byte, 0, len(body)+512)
		img = append(img, body...)
	}
	if uint64(len(img)-hs) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: the body is larger than 4 GiB", ErrSize)
	}

	var prot []TLV
	if opts.SecurityCounter != nil {
		prot = append(prot, TLV{Type: TLVSecCnt, Value: binary.LittleEndian.AppendUint32(nil, *opts.SecurityCounter), Protected: true})
	}
	protSize := 0
	if len(prot) > 0 {
		protSize = tlvInfoSize
		for _, t := range prot {
			protSize += tlvHdrSize + len(t.Value)
		}
	}
	h := Header{
		LoadAddr:         opts.LoadAddr,
		HeaderSize:       uint16(hs),
		ProtectedTLVSize: uint16(protSize),
		ImageSize:        uint32(len(img) - hs),
		Version:          opts.Version,
	}
	if opts.LoadAddr != 0 {
		h.Flags |= FlagRAMLoad
	}
	copy(img, h.marshal())
	img = tlvArea(img, ProtTLVInfoMagic, prot)

	digest := sha256.Sum256(img)
	tlvs := []TLV{{Type: TLVSHA256, Value: digest[:]}}
	if opts.Key != nil {
		kh, err := KeyHash(opts.Key.Public())
		if err != nil {
			return nil, err
		}
		var s []byte
		switch sig {
		case TLVECDSASig:
			r := opts.Rand
			if r == nil {
				r = rand.Reader
			}
			s, err = opts.Key.Sign(r, digest[:], crypto.SHA256)
		case TLVEd25519:
			// imgtool signs the image's SHA-256 with Ed25519 (its
			// sign_digest), which MCUboot's image_ed25519.c checks.
			s, err = opts.Key.Sign(nil, digest[:], crypto.Hash(0))
		}
		if err != nil {
			return nil, fmt.Errorf("mcuboot: sign: %w", err)
		}
		if err := checkSig(sig, opts.Key.Public(), digest[:], s); err != nil {
			return nil, fmt.Errorf("mcuboot: the key produced a signature that does not verify: %w", err)
		}
		tlvs = append(tlvs, TLV{Type: TLVKeyHash, Value: kh}, TLV{Type: sig, Value: s})
	}
	img = tlvArea(img, TLVInfoMagic, tlvs)

	if opts.SlotSize != 0 {
		maxAlign := max(8, align)
		ts := trailerSize(align, maxAlign)
		if len(img)+ts > opts.SlotSize {
			return nil, fmt.Errorf("mcuboot: image of %#x bytes plus its %#x-byte trailer exceeds the slot size %#x", len(img), ts, opts.SlotSize)
		}
		for len(img) < opts.SlotSize-bootMagicSize {
			img = append(img, erasedVal)
		}
		img = append(img, bootMagic(maxAlign)...)
	}
	return img, nil
}

// checkSig verifies a signature TLV of type typ over digest with pub.
func checkSig(typ uint16, pub crypto.PublicKey, digest, sig []byte) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if typ != TLVECDSASig || k.Curve != elliptic.P256() {
			return errors.New("key and signature types differ")
		}
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA P-256 signature does not verify")
		}
	case ed25519.PublicKey:
		if typ != TLVEd25519 {
			return errors.New("key and signature types differ")
		}
		if len(sig) != ed25519.SignatureSize || !ed25519.Verify(k, digest, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
	default:
		return fmt.Errorf("%T keys are not supported", pub)
	}
	return nil
}
