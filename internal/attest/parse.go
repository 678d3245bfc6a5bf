package attest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// maxStructure bounds a TPM structure from outside (TPM structures fit in
// a 4 KiB response).
const maxStructure = 4096

// ParsePublic parses a marshalled TPMT_PUBLIC (the contents of a
// TPM2B_PUBLIC) of an ECC or RSA key: nothing may follow it.
func ParsePublic(b []byte) (*tpm2.TPMTPublic, error) {
	p, err := unmarshalWhole[tpm2.TPMTPublic](b, "TPMT_PUBLIC")
	if err != nil {
		return nil, err
	}
	if p.Type != tpm2.TPMAlgECC && p.Type != tpm2.TPMAlgRSA {
		return nil, fmt.Errorf("TPMT_PUBLIC of type %#x: only ECC and RSA keys are attested", uint16(p.Type))
	}
	return p, nil
}

// ParseAttest parses a TPMS_ATTEST (the contents of a TPM2B_ATTEST) made
// by TPM2_Certify: magic TPM_GENERATED_VALUE, type TPM_ST_ATTEST_CERTIFY.
func ParseAttest(b []byte) (*tpm2.TPMSAttest, error) {
	if len(b) >= 4 && !bytes.Equal(b[:4], []byte{0xff, 0x54, 0x43, 0x47}) {
		return nil, fmt.Errorf("TPMS_ATTEST magic %x is not TPM_GENERATED_VALUE (ff544347): not made by a TPM", b[:4])
	}
	if len(b) >= 6 && tpm2.TPMST(binary.BigEndian.Uint16(b[4:6])) != tpm2.TPMSTAttestCertify {
		return nil, fmt.Errorf("TPMS_ATTEST of type %#x, not TPM_ST_ATTEST_CERTIFY (0x8017): send what TPM2_Certify returned", b[4:6])
	}
	// A structure that unmarshals has more than 6 bytes, so the checks
	// above saw its magic and type.
	return unmarshalWhole[tpm2.TPMSAttest](b, "TPMS_ATTEST")
}

// ParseSignature parses a marshalled TPMT_SIGNATURE by an asymmetric
// key: ECDSA, RSASSA or RSAPSS.
func ParseSignature(b []byte) (*tpm2.TPMTSignature, error) {
	if len(b) >= 2 {
		switch tpm2.TPMAlgID(binary.BigEndian.Uint16(b)) {
		case tpm2.TPMAlgECDSA, tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		default:
			return nil, fmt.Errorf("TPMT_SIGNATURE of algorithm %#x: an AK signs with ECDSA, RSASSA or RSAPSS", b[:2])
		}
	}
	return unmarshalWhole[tpm2.TPMTSignature](b, "TPMT_SIGNATURE")
}

type unmarshallable[T any] interface {
	*T
	tpm2.Unmarshallable
}

// unmarshalWhole unmarshals b as one T, refusing empty, oversized or
// trailing input.
func unmarshalWhole[T tpm2.Marshallable, P unmarshallable[T]](b []byte, what string) (v *T, err error) {
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("no %s", what)
	case len(b) > maxStructure:
		return nil, fmt.Errorf("%s of %d bytes, more than the %d a TPM returns", what, len(b), maxStructure)
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("malformed %s: %v", what, r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, fmt.Errorf("malformed %s: %w", what, err)
	}
	if n := len(tpm2.Marshal(*v)); n != len(b) {
		return nil, errors.New(what + ": trailing bytes after the structure")
	}
	return v, nil
}
