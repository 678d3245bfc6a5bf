package ocsp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"
)

// DER tags used by the encoder.
const (
	tagInteger     = 0x02
	tagBitString   = 0x03
	tagOctetString = 0x04
	tagNull        = 0x05
	tagOID         = 0x06
	tagEnumerated  = 0x0a
	tagGenTime     = 0x18
	tagSequence    = 0x30
)

func ctxCons(n byte) byte { return 0xa0 | n } // [n] constructed (EXPLICIT, or IMPLICIT of a SEQUENCE)
func ctxPrim(n byte) byte { return 0x80 | n } // [n] primitive (IMPLICIT of a primitive type)

// tlv appends the DER of a tag, the length of the contents and the contents.
func tlv(dst []byte, tag byte, contents ...[]byte) []byte {
	n := 0
	for _, c := range contents {
		n += len(c)
	}
	dst = append(dst, tag)
	switch {
	case n < 0x80:
		dst = append(dst, byte(n))
	case n < 0x100:
		dst = append(dst, 0x81, byte(n))
	case n < 0x10000:
		dst = append(dst, 0x82, byte(n>>8), byte(n))
	case n < 0x1000000:
		dst = append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	for _, c := range contents {
		dst = append(dst, c...)
	}
	return dst
}

func genTime(t time.Time) []byte {
	return tlv(nil, tagGenTime, []byte(t.UTC().Format("20060102150405Z")))
}

func mustOID(oid asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(oid)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	derOIDBasic = mustOID(OIDBasicResponse)
	derOIDNonce = mustOID(OIDNonce)
)

// ErrorResponse returns the DER of an OCSPResponse that carries only the
// status s (RFC 6960 §4.2.1: no responseBytes unless successful). It
// panics for Successful, which needs a BasicOCSPResponse.
func ErrorResponse(s ResponseStatus) []byte {
	if s == Successful {
		panic("ocsp: ErrorResponse(Successful)")
	}
	return []byte{tagSequence, 3, tagEnumerated, 1, byte(s)}
}

var errorResponses = map[ResponseStatus][]byte{
	MalformedRequest: ErrorResponse(MalformedRequest),
	InternalError:    ErrorResponse(InternalError),
	TryLater:         ErrorResponse(TryLater),
	SigRequired:      ErrorResponse(SigRequired),
	Unauthorized:     ErrorResponse(Unauthorized),
}

// certStatusDER returns the DER of CertStatus, thisUpdate and nextUpdate:
// the part of a SingleResponse after its CertID.
func certStatusDER(st Status, thisUpdate, nextUpdate time.Time) []byte {
	var cs []byte
	switch st.State {
	case Good:
		cs = []byte{ctxPrim(0), 0}
	case Revoked:
		info := genTime(st.RevokedAt)
		if st.Reason != nil {
			info = tlv(info, ctxCons(0), []byte{tagEnumerated, 1, byte(*st.Reason)})
		}
		cs = tlv(nil, ctxCons(1), info)
	default:
		cs = []byte{ctxPrim(2), 0}
	}
	cs = append(cs, genTime(thisUpdate)...)
	return tlv(cs, ctxCons(0), genTime(nextUpdate))
}

// signer holds what signing a BasicOCSPResponse needs for one issuer.
type signer struct {
	key         crypto.Signer
	hash        crypto.Hash // 0 for Ed25519
	sigAlg      []byte      // DER AlgorithmIdentifier
	responderID []byte      // DER [2] EXPLICIT KeyHash
	certs       []byte      // DER [0] EXPLICIT SEQUENCE OF Certificate, or nil
}

var (
	algECDSA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	algECDSA384 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}
	algECDSA512 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}
	algEd25519  = []byte{0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70}
	algRSA256   = []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00}
)

// signatureAlgorithm picks the signature algorithm for a public key.
func signatureAlgorithm(pub crypto.PublicKey) (crypto.Hash, []byte, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return crypto.SHA256, algECDSA256, nil
		case elliptic.P384():
			return crypto.SHA384, algECDSA384, nil
		case elliptic.P521():
			return crypto.SHA512, algECDSA512, nil
		}
		return 0, nil, fmt.Errorf("ocsp: unsupported ECDSA curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return 0, algEd25519, nil
	case *rsa.PublicKey:
		return crypto.SHA256, algRSA256, nil
	}
	return 0, nil, fmt.Errorf("ocsp: unsupported responder key type %T", pub)
}

// sign returns the DER of an OCSPResponse (successful, basic) whose
// ResponseData holds the given single responses (each the DER of a
// SingleResponse) and, when nonce is not nil, the nonce extension.
func (s *signer) sign(producedAt time.Time, singles [][]byte, nonce []byte) ([]byte, error) {
	rd := make([]byte, 0, 256)
	rd = append(rd, s.responderID...)
	rd = append(rd, genTime(producedAt)...)
	rd = tlv(rd, tagSequence, singles...)
	if nonce != nil {
		ext := tlv(nil, tagSequence, derOIDNonce, tlv(nil, tagOctetString, nonce))
		rd = tlv(rd, ctxCons(1), tlv(nil, tagSequence, ext))
	}
	tbs := tlv(nil, tagSequence, rd)

	msg := tbs
	opts := crypto.SignerOpts(crypto.Hash(0))
	if s.hash != 0 {
		h := s.hash.New()
		h.Write(tbs)
		msg = h.Sum(nil)
		opts = s.hash
	}
	sig, err := s.key.Sign(rand.Reader, msg, opts)
	if err != nil {
		return nil, fmt.Errorf("ocsp: sign response: %w", err)
	}
	if len(sig) == 0 {
		return nil, errors.New("ocsp: sign response: empty signature")
	}
	bitString := make([]byte, 0, len(sig)+1)
	bitString = append(append(bitString, 0), sig...)
	basic := tlv(nil, tagSequence, tbs, s.sigAlg, tlv(nil, tagBitString, bitString), s.certs)
	rb := tlv(nil, tagSequence, derOIDBasic, tlv(nil, tagOctetString, basic))
	return tlv(nil, tagSequence, []byte{tagEnumerated, 1, byte(Successful)}, tlv(nil, ctxCons(0), rb)), nil
}

// singleResponse returns the DER of a SingleResponse.
func singleResponse(certID, status []byte) []byte {
	return tlv(nil, tagSequence, certID, status)
}
