package mcuboot

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// streamBuf is the size of the buffer ParseReader hashes and checks the
// padding with: large enough that a read costs little next to hashing it,
// small enough for a device's agent. TLV areas are read whole, and each is
// at most 64 KiB (a 16-bit size).
const streamBuf = 256 << 10

// ParseReader is Parse for an image of size bytes read through r, such as
// a flash slot or a file, without holding it in memory: it reads the
// header and both TLV areas, and hashes header, body and protected area
// through a bounded buffer, so its memory does not grow with the image.
// It checks exactly what Parse checks and fails with the same errors;
// failures to read r are returned wrapped and wrap none of the Err values.
// The returned Image's Body is nil.
func ParseReader(r io.ReaderAt, size int64) (*Image, error) {
	if size < MinHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the %d-byte header", ErrSize, size, MinHeaderSize)
	}
	b := make([]byte, MinHeaderSize)
	if err := readAt(r, b, 0); err != nil {
		return nil, err
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
	bodyEnd := int64(h.HeaderSize) + int64(h.ImageSize)
	if bodyEnd > size {
		return nil, fmt.Errorf("%w: header (%d) and body (%d) need %d bytes but the file has %d", ErrSize, h.HeaderSize, h.ImageSize, bodyEnd, size)
	}
	off := bodyEnd

	// The protected area, if the header announces one.
	if h.ProtectedTLVSize != 0 {
		end, tlvs, err := readArea(r, size, off, ProtTLVInfoMagic, true)
		if err != nil {
			return nil, err
		}
		if end-off != int64(h.ProtectedTLVSize) {
			return nil, fmt.Errorf("%w: the protected TLV area is %d bytes but the header says %d", ErrSize, end-off, h.ProtectedTLVSize)
		}
		img.TLVs = tlvs
		off = end
	} else if off+2 <= size {
		var m [2]byte
		if err := readAt(r, m[:], off); err != nil {
			return nil, err
		}
		if le.Uint16(m[:]) == ProtTLVInfoMagic {
			return nil, fmt.Errorf("%w: a protected TLV area the header does not announce (protected TLV size 0)", ErrSize)
		}
	}
	hashEnd := off
	end, tlvs, err := readArea(r, size, off, TLVInfoMagic, false)
	if err != nil {
		return nil, err
	}
	img.TLVs = append(img.TLVs, tlvs...)
	img.Size = int(end)

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
	buf := make([]byte, min(streamBuf, max(hashEnd, size-end)))
	hh := sha256.New()
	for p := int64(0); p < hashEnd; {
		chunk := buf[:min(int64(len(buf)), hashEnd-p)]
		if err := readAt(r, chunk, p); err != nil {
			return nil, err
		}
		hh.Write(chunk)
		p += int64(len(chunk))
	}
	hh.Sum(img.Hash[:0])
	if !bytes.Equal(hashTLV.Value, img.Hash[:]) {
		return nil, fmt.Errorf("%w: the SHA-256 TLV says %s but header, body and protected TLVs hash to %s", ErrHashMismatch, hex.EncodeToString(hashTLV.Value), hex.EncodeToString(img.Hash[:]))
	}
	if err := checkPad(r, end, size, buf); err != nil {
		return nil, err
	}
	return img, nil
}

// VerifyReader is Verify for an image of size bytes read through r (see
// ParseReader): it checks exactly what Verify checks, fails with the same
// errors, and returns an Image whose Body is nil.
func VerifyReader(r io.ReaderAt, size int64, trusted []crypto.PublicKey) (*Image, error) {
	img, err := ParseReader(r, size)
	if err != nil {
		return nil, err
	}
	if err := checkSignature(img, trusted); err != nil {
		return nil, err
	}
	return img, nil
}

// IsImageError reports whether err, from one of the package's parsers or
// verifiers, is a verdict on the image (it wraps one of the Err values)
// rather than a failure to read it, which may be worth a retry.
func IsImageError(err error) bool {
	for _, e := range []error{ErrBadMagic, ErrSize, ErrTLVOverrun, ErrNoHash, ErrHashMismatch, ErrUnknownKey,
		ErrNoSignature, ErrBadSignature, ErrUnprotectedTLV, ErrTrailingData, ErrUnsupported} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// readAt fills p from r at off. The caller has checked that off+len(p)
// lies within the image's size, so a short read is an I/O failure (the
// image shrank, or size was wrong), not a format error.
func readAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("mcuboot: read %d bytes at offset %d: %w", len(p), off, err)
}

// readArea reads the TLV area with the given info magic at off of an
// image of size bytes and returns its end and its TLVs.
func readArea(r io.ReaderAt, size, off int64, magic uint16, prot bool) (int64, []TLV, error) {
	what := "TLV area"
	if prot {
		what = "protected TLV area"
	}
	if off+tlvInfoSize > size {
		return 0, nil, fmt.Errorf("%w: the %s info at offset %d lies past the end of the file (%d bytes)", ErrTLVOverrun, what, off, size)
	}
	var info [tlvInfoSize]byte
	if err := readAt(r, info[:], off); err != nil {
		return 0, nil, err
	}
	le := binary.LittleEndian
	if m := le.Uint16(info[:]); m != magic {
		return 0, nil, fmt.Errorf("%w: %s info magic %#04x at offset %d (want %#04x)", ErrBadMagic, what, m, off, magic)
	}
	total := int64(le.Uint16(info[2:]))
	if total < tlvInfoSize {
		return 0, nil, fmt.Errorf("%w: %s size %d is smaller than its info header", ErrSize, what, total)
	}
	end := off + total
	if end > size {
		return 0, nil, fmt.Errorf("%w: the %s of %d bytes at offset %d runs past the end of the file (%d bytes)", ErrTLVOverrun, what, total, off, size)
	}
	// The area without its info header; at most 64 KiB.
	b := make([]byte, total-tlvInfoSize)
	if err := readAt(r, b, off+tlvInfoSize); err != nil {
		return 0, nil, err
	}
	var tlvs []TLV
	for p := 0; p < len(b); {
		at := off + tlvInfoSize + int64(p) // p's offset in the image
		if p+tlvHdrSize > len(b) {
			return 0, nil, fmt.Errorf("%w: a TLV header at offset %d crosses the end of the %s (%d)", ErrTLVOverrun, at, what, end)
		}
		typ, n := le.Uint16(b[p:]), int(le.Uint16(b[p+2:]))
		if p+tlvHdrSize+n > len(b) {
			return 0, nil, fmt.Errorf("%w: TLV type %#x of %d bytes at offset %d crosses the end of the %s (%d)", ErrTLVOverrun, typ, n, at, what, end)
		}
		tlvs = append(tlvs, TLV{Type: typ, Value: b[p+tlvHdrSize : p+tlvHdrSize+n : p+tlvHdrSize+n], Protected: prot})
		p += tlvHdrSize + n
	}
	return end, tlvs, nil
}

// checkPad accepts what may follow the TLV area, from end to size:
// nothing, or imgtool's slot padding (the erased value 0xff or 0x00,
// ending with a boot magic). It reads the padding through buf.
func checkPad(r io.ReaderAt, end, size int64, buf []byte) error {
	n := size - end
	if n == 0 {
		return nil
	}
	bad := func(why string) error {
		return fmt.Errorf("%w: %d bytes follow the TLV area and %s", ErrTrailingData, n, why)
	}
	if n < bootMagicSize {
		return bad("are too short for a slot trailer")
	}
	magic := make([]byte, bootMagicSize)
	if err := readAt(r, magic, size-bootMagicSize); err != nil {
		return err
	}
	ok := bytes.Equal(magic, bootMagic8)
	for _, a := range []int{16, 32} {
		ok = ok || bytes.Equal(magic, bootMagic(a))
	}
	if !ok {
		return bad("do not end with MCUboot's boot magic")
	}
	// The fill is the first byte after the TLV area, which is the magic's
	// own first byte when nothing else follows (no erased value: refused).
	var first [1]byte
	if err := readAt(r, first[:], end); err != nil {
		return err
	}
	fill := first[0]
	if fill != 0xff && fill != 0x00 {
		return bad(fmt.Sprintf("the padding starts with %#02x, not an erased value", fill))
	}
	for p := int64(0); p < n-bootMagicSize; {
		chunk := buf[:min(int64(len(buf)), n-bootMagicSize-p)]
		if err := readAt(r, chunk, end+p); err != nil {
			return err
		}
		for i, c := range chunk {
			if c != fill {
				return bad(fmt.Sprintf("byte %d of the padding is %#02x, not the erased value %#02x", p+int64(i), c, fill))
			}
		}
		p += int64(len(chunk))
	}
	return nil
}
