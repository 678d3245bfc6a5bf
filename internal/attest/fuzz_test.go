package attest_test

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"cradle"
	"cradle/internal/attest"
)

// The parsers take bytes from the device: they must never panic, and what
// they accept must be exactly one structure that marshals back to the
// input.

func FuzzParsePublic(f *testing.F) {
	fx := newFixture(f)
	f.Add(tpm2.Marshal(fx.akPub))
	f.Add(tpm2.Marshal(fx.devPub))
	f.Add(tpm2.Marshal(tpm2.RSAEKTemplate))
	f.Add([]byte{0, 0x23, 0, 0x0b})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := attest.ParsePublic(b)
		if err != nil {
			return
		}
		if !bytes.Equal(tpm2.Marshal(*p), b) {
			t.Fatalf("ParsePublic accepted %x, which does not marshal back", b)
		}
	})
}

func FuzzParseAttest(f *testing.F) {
	fx := newFixture(f)
	info, _ := fx.certify(f, fx.devPub, bytes.Repeat([]byte{1}, 32))
	f.Add(info)
	f.Add(info[:10])
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x17})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := attest.ParseAttest(b)
		if err != nil {
			return
		}
		if a.Magic != tpm2.TPMGeneratedValue || a.Type != tpm2.TPMSTAttestCertify {
			t.Fatalf("ParseAttest accepted magic %#x type %#x", a.Magic, a.Type)
		}
		if _, err := a.Attested.Certify(); err != nil {
			t.Fatalf("ParseAttest accepted a certify without certify info: %v", err)
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	fx := newFixture(f)
	f.Add(fx.sign(f, fx.ak, []byte("x")))
	f.Add(tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgRSASSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA,
		&tpm2.TPMSSignatureRSA{Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}})}))
	f.Add([]byte{0, 0x18})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := attest.ParseSignature(b)
		if err != nil {
			return
		}
		if !bytes.Equal(tpm2.Marshal(*s), b) {
			t.Fatalf("ParseSignature accepted %x, which does not marshal back", b)
		}
	})
}

// FuzzStart feeds Start arbitrary EK certificates and AK public areas: it
// refuses with a client error or issues a challenge, never panics.
func FuzzStart(f *testing.F) {
	fx := newFixture(f)
	f.Add(fx.ek.Raw, tpm2.Marshal(fx.akPub))
	f.Add(fx.ek.Raw, tpm2.Marshal(fx.devPub))
	f.Add([]byte{0x30, 0x82, 0, 0}, []byte{0, 0x23})
	f.Fuzz(func(t *testing.T, ek, ak []byte) {
		ch, err := fx.v.Start(fx.serial, attest.StartRequest{EKCertificate: ek, AKPublic: ak})
		if err != nil {
			if c := cradle.ErrorCode(err); c != cradle.EINVALID && c != cradle.EFORBIDDEN {
				t.Fatalf("Start refused with %v, not a client error", err)
			}
			return
		}
		if len(ch.Nonce) != 32 || len(ch.CredentialBlob) == 0 {
			t.Fatalf("Start accepted but gave %+v", ch)
		}
	})
}
