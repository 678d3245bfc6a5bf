package mcuboot

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// Image is a parsed MCUboot image. Its slices alias the parsed bytes.
type Image struct {
	Header Header
	// TLVs lists the protected TLVs, then the unprotected ones, in order.
	TLVs []TLV
	// Hash is the SHA-256 of header, body and protected area (checked).
	Hash [32]byte
	// SecurityCounter is the protected SEC_CNT value; HasSecurityCounter
	// says whether the image has one.
	SecurityCounter    uint32
	HasSecurityCounter bool
	// KeyHash is the first KEYHASH TLV's value (or the SHA-256 of a PUBKEY
	// TLV's), nil if the image names no key.
	KeyHash []byte
	// Key is the trusted key whose signature Verify checked; nil after
	// Parse.
	Key crypto.PublicKey
	// Size is the end of the TLV area; a padded image is longer.
	Size int
	// Body is the image body (without header and TLVs).
	Body []byte
}

// Parse checks the structure and the hash of an MCUboot image (see the
// package doc) without checking who signed it. Errors wrap ErrBadMagic,
// ErrSize, ErrTLVOverrun, ErrUnprotectedTLV, ErrNoHash, ErrHashMismatch,
// ErrTrailingData or ErrUnsupported.
func Parse(b []byte) (*Image, error) {
	if len(b) < MinHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the %d-byte header", ErrSize, len(b), MinHeaderSize)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != ImageMagic {
		return nil, fmt.Errorf("%w %#08x (want %#08x): not an MCUboot image", ErrBadMagic, m, ImageMagic)
	}
	h := Header{
		LoadAddr:         le.Uint32(b[4:]),
		HeaderSize:       le.Uint16(b[8:]),
		ProtectedTLVSize: le.Uint16(b[10:]),
		ImageSize:        le.Uint32(b[12:]),
		Flags:            le.Uint32(b[16:]),
		Version:          Version{b[20], b[21], le.Uint16(b[22:]), le.Uint32(b[24:])},
	}
	img := &Image{Header: h}
	if h.HeaderSize < MinHeaderSize {
		return nil, fmt.Errorf("%w: header size %d is below %d", ErrSize, h.HeaderSize, MinHeaderSize)
	}
	if h.Flags&(FlagEncryptedAES128|FlagEncryptedAES256) != 0 {
		return nil, fmt.Errorf("%w: the image is encrypted (flags %#x)", ErrUnsupported, h.Flags)
	}
	if h.Flags&(FlagCompressedLZMA1|FlagCompressedLZMA2) != 0 {
		return nil, fmt.Errorf("%w: the image is compressed (flags %#x)", ErrUnsupported, h.Flags)
	}
	bodyEnd := uint64(h.HeaderSize) + uint64(h.ImageSize)
	if bodyEnd > uint64(len(b)) {
		return nil, fmt.Errorf("%w: header (%d) and body (%d) need %d bytes but the file has %d", ErrSize, h.HeaderSize, h.ImageSize, bodyEnd, len(b))
	}
	img.Body = b[h.HeaderSize:bodyEnd]
	off := int(bodyEnd)

	// The protected area, if the header announces one.
	if h.ProtectedTLVSize != 0 {
		end, tlvs, err := readArea(b, off, ProtTLVInfoMagic, true)
		if err != nil {
			return nil, err
		}
		if end-off != int(h.ProtectedTLVSize) {
			return nil, fmt.Errorf("%w: the protected TLV area is %d bytes but the header says %d", ErrSize, end-off, h.ProtectedTLVSize)
		}
		img.TLVs = tlvs
		off = end
	} else if off+2 <= len(b) && le.Uint16(b[off:]) == ProtTLVInfoMagic {
		return nil, fmt.Errorf("%w: a protected TLV area the header does not announce (protected TLV size 0)", ErrSize)
	}
	hashEnd := off
	end, tlvs, err := readArea(b, off, TLVInfoMagic, false)
	if err != nil {
		return nil, err
	}
	img.TLVs = append(img.TLVs, tlvs...)
	img.Size = end

	for _, t := range img.TLVs {
		switch {
		case t.Protected && t.Type == TLVSecCnt:
			if len(t.Value) != 4 {
				return nil, fmt.Errorf("%w: security counter TLV of %d bytes (want 4)", ErrSize, len(t.Value))
			}
			if img.HasSecurityCounter {
				return nil, fmt.Errorf("%w: two security counter TLVs", ErrUnsupported)
			}
			img.SecurityCounter, img.HasSecurityCounter = le.Uint32(t.Value), true
		case !t.Protected && !unprotectedAllowed[t.Type]:
			return nil, fmt.Errorf("%w: type %#x (%s) must be in the protected area, where the hash covers it", ErrUnprotectedTLV, t.Type, tlvName(t.Type))
		}
	}

	var hashTLV *TLV
	for i, t := range img.TLVs {
		if t.Protected {
			continue
		}
		switch t.Type {
		case TLVSHA256:
			if hashTLV != nil {
				return nil, fmt.Errorf("%w: two SHA-256 TLVs", ErrUnsupported)
			}
			hashTLV = &img.TLVs[i]
		case TLVSHA384, TLVSHA512:
			return nil, fmt.Errorf("%w: %s hash (only SHA-256 images are supported)", ErrUnsupported, tlvName(t.Type))
		case TLVSigPure:
			return nil, fmt.Errorf("%w: pure signatures (only signatures over the SHA-256 are supported)", ErrUnsupported)
		case TLVKeyHash:
			if img.KeyHash == nil {
				img.KeyHash = t.Value
			}
		case TLVPubKey:
			if img.KeyHash == nil {
				kh := sha256.Sum256(t.Value)
				img.KeyHash = kh[:]
			}
		}
	}
	if hashTLV == nil {
		return nil, fmt.Errorf("%w: the image carries no hash to check", ErrNoHash)
	}
	img.Hash = sha256.Sum256(b[:hashEnd])
	if !bytes.Equal(hashTLV.Value, img.Hash[:]) {
		return nil, fmt.Errorf("%w: the SHA-256 TLV says %s but header, body and protected TLVs hash to %s", ErrHashMismatch, hex.EncodeToString(hashTLV.Value), hex.EncodeToString(img.Hash[:]))
	}
	if err := checkPad(b[end:]); err != nil {
		return nil, err
	}
	return img, nil
}

// readArea reads the TLV area with the given info magic at off and
// returns its end and its TLVs.
func readArea(b []byte, off int, magic uint16, prot bool) (int, []TLV, error) {
	what := "TLV area"
	if prot {
		what = "protected TLV area"
	}
	if off+tlvInfoSize > len(b) {
		return 0, nil, fmt.Errorf("%w: the %s info at offset %d lies past the end of the file (%d bytes)", ErrTLVOverrun, what, off, len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint16(b[off:]); m != magic {
		return 0, nil, fmt.Errorf("%w: %s info magic %#04x at offset %d (want %#04x)", ErrBadMagic, what, m, off, magic)
	}
	total := int(le.Uint16(b[off+2:]))
	if total < tlvInfoSize {
		return 0, nil, fmt.Errorf("%w: %s size %d is smaller than its info header", ErrSize, what, total)
	}
	end := off + total
	if end > len(b) {
		return 0, nil, fmt.Errorf("%w: the %s of %d bytes at offset %d runs past the end of the file (%d bytes)", ErrTLVOverrun, what, total, off, len(b))
	}
	var tlvs []TLV
	for p := off + tlvInfoSize; p < end; {
		if p+tlvHdrSize > end {
			return 0, nil, fmt.Errorf("%w: a TLV header at offset %d crosses the end of the %s (%d)", ErrTLVOverrun, p, what, end)
		}
		typ, n := le.Uint16(b[p:]), int(le.Uint16(b[p+2:]))
		if p+tlvHdrSize+n > end {
			return 0, nil, fmt.Errorf("%w: TLV type %#x of %d bytes at offset %d crosses the end of the %s (%d)", ErrTLVOverrun, typ, n, p, what, end)
		}
		tlvs = append(tlvs, TLV{Type: typ, Value: b[p+tlvHdrSize : p+tlvHdrSize+n], Protected: prot})
		p += tlvHdrSize + n
	}
	return end, tlvs, nil
}

// checkPad accepts what may follow the TLV area: nothing, or imgtool's
// slot padding (the erased value 0xff or 0x00, ending with a boot magic).
func checkPad(rest []byte) error {
	if len(rest) == 0 {
		return nil
	}
	bad := func(why string) error {
		return fmt.Errorf("%w: %d bytes follow the TLV area and %s", ErrTrailingData, len(rest), why)
	}
	if len(rest) < bootMagicSize {
		return bad("are too short for a slot trailer")
	}
	magic := rest[len(rest)-bootMagicSize:]
	ok := bytes.Equal(magic, bootMagic8)
	for _, a := range []int{16, 32} {
		ok = ok || bytes.Equal(magic, bootMagic(a))
	}
	if !ok {
		return bad("do not end with MCUboot's boot magic")
	}
	fill := rest[0]
	if fill != 0xff && fill != 0x00 {
		return bad(fmt.Sprintf("the padding starts with %#02x, not an erased value", fill))
	}
	for i, c := range rest[:len(rest)-bootMagicSize] {
		if c != fill {
			return bad(fmt.Sprintf("byte %d of the padding is %#02x, not the erased value %#02x", i, c, fill))
		}
	}
	return nil
}

// tlvName returns image.h's name of a TLV type, or "unknown".
func tlvName(t uint16) string {
	names := map[uint16]string{
		TLVKeyHash: "KEYHASH", TLVPubKey: "PUBKEY", TLVSHA256: "SHA256", TLVSHA384: "SHA384", TLVSHA512: "SHA512",
		TLVRSA2048PSS: "RSA2048_PSS", TLVECDSA224: "ECDSA224", TLVECDSASig: "ECDSA_SIG", TLVRSA3072PSS: "RSA3072_PSS",
		TLVEd25519: "ED25519", TLVSigPure: "SIG_PURE", TLVEncRSA2048: "ENC_RSA2048", TLVEncKW: "ENC_KW",
		TLVEncEC256: "ENC_EC256", TLVEncX25519: "ENC_X25519", TLVEncX25519SHA512: "ENC_X25519_SHA512",
		TLVDependency: "DEPENDENCY", TLVSecCnt: "SEC_CNT", TLVBootRecord: "BOOT_RECORD",
	}
	if n, ok := names[t]; ok {
		return n
	}
	return "unknown"
}

// Verify parses b (see Parse) and checks that it is signed by one of
// trusted (ECDSA P-256 or Ed25519 public keys): a KEYHASH or PUBKEY TLV
// names a trusted key and the signature TLV that follows it verifies
// with that key, as MCUboot's bootutil_img_validate requires. Beyond
// Parse's, errors wrap ErrUnknownKey (the image names no trusted key),
// ErrNoSignature or ErrBadSignature. The returned Image has Key set.
func Verify(b []byte, trusted []crypto.PublicKey) (*Image, error) {
	img, err := Parse(b)
	if err != nil {
		return nil, err
	}
	type known struct {
		pub  crypto.PublicKey
		hash []byte
	}
	var keys []known
	for _, k := range trusted {
		h, err := KeyHash(k)
		if err != nil {
			return nil, err
		}
		if _, err := sigTLV(k); err != nil {
			return nil, err
		}
		keys = append(keys, known{k, h})
	}
	var (
		current  *known // the trusted key the last KEYHASH named
		named    bool   // a KEYHASH or PUBKEY was seen
		sigErr   error
		unknowns []string
	)
	for _, t := range img.TLVs {
		if t.Protected {
			continue
		}
		switch t.Type {
		case TLVKeyHash, TLVPubKey:
			named = true
			h := t.Value
			if t.Type == TLVPubKey {
				s := sha256.Sum256(t.Value)
				h = s[:]
			}
			current = nil
			for i := range keys {
				if bytes.Equal(keys[i].hash, h) {
					current = &keys[i]
					break
				}
			}
			if current == nil {
				unknowns = append(unknowns, hex.EncodeToString(h))
			}
		case TLVECDSASig, TLVEd25519, TLVRSA2048PSS, TLVRSA3072PSS, TLVECDSA224:
			if current == nil {
				continue
			}
			if err := checkSig(t.Type, current.pub, img.Hash[:], t.Value); err != nil {
				sigErr = fmt.Errorf("%w: %s with the key whose hash is %s: %v", ErrBadSignature, tlvName(t.Type), hex.EncodeToString(current.hash), err)
				continue
			}
			img.Key, img.KeyHash = current.pub, current.hash
			return img, nil
		}
	}
	switch {
	case sigErr != nil:
		return nil, sigErr
	case len(unknowns) > 0:
		return nil, fmt.Errorf("%w: the image names key hash %s, which matches none of the %d trusted keys", ErrUnknownKey, unknowns[0], len(keys))
	case named:
		return nil, fmt.Errorf("%w: the image names a trusted key but carries no signature by it", ErrNoSignature)
	default:
		return nil, fmt.Errorf("%w: the image is not signed (no KEYHASH TLV)", ErrNoSignature)
	}
}
