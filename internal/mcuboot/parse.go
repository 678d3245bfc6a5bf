package mcuboot

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Image is a parsed MCUboot image. Its TLV values are copies of the TLV
// areas; Body aliases the bytes given to Parse or Verify.
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
	// Body is the image body (without header and TLVs). It is nil after
	// ParseReader and VerifyReader, which never hold the body in memory:
	// read it from the image at Header.HeaderSize, Header.ImageSize bytes.
	Body []byte
}

// Parse checks the structure and the hash of an MCUboot image (see the
// package doc) without checking who signed it. Errors wrap ErrBadMagic,
// ErrSize, ErrTLVOverrun, ErrUnprotectedTLV, ErrNoHash, ErrHashMismatch,
// ErrTrailingData or ErrUnsupported. It is ParseReader over b, with Body
// set to the body's bytes in b.
func Parse(b []byte) (*Image, error) {
	img, err := ParseReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, err
	}
	img.Body = b[img.Header.HeaderSize : int(img.Header.HeaderSize)+int(img.Header.ImageSize)]
	return img, nil
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
// ErrNoSignature or ErrBadSignature. The returned Image has Key set. It
// is VerifyReader over b, with Body set as Parse sets it.
func Verify(b []byte, trusted []crypto.PublicKey) (*Image, error) {
	img, err := VerifyReader(bytes.NewReader(b), int64(len(b)), trusted)
	if err != nil {
		return nil, err
	}
	img.Body = b[img.Header.HeaderSize : int(img.Header.HeaderSize)+int(img.Header.ImageSize)]
	return img, nil
}

// checkSignature finds the signature of a trusted key among img's
// unprotected TLVs (see Verify) and sets img.Key and img.KeyHash.
func checkSignature(img *Image, trusted []crypto.PublicKey) error {
	type known struct {
		pub  crypto.PublicKey
		hash []byte
	}
	var keys []known
	for _, k := range trusted {
		h, err := KeyHash(k)
		if err != nil {
			return err
		}
		if _, err := sigTLV(k); err != nil {
			return err
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
			return nil
		}
	}
	switch {
	case sigErr != nil:
		return sigErr
	case len(unknowns) > 0:
		return fmt.Errorf("%w: the image names key hash %s, which matches none of the %d trusted keys", ErrUnknownKey, unknowns[0], len(keys))
	case named:
		return fmt.Errorf("%w: the image names a trusted key but carries no signature by it", ErrNoSignature)
	default:
		return fmt.Errorf("%w: the image is not signed (no KEYHASH TLV)", ErrNoSignature)
	}
}
