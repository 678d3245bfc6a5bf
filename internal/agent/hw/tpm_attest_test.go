package hw_test

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/attest"
	"cradle/internal/testkit"
)

// TestTPMAttestation: against swtpm with an EK certificate in NV, the
// store's EK certificate, AK, TPM2_Certify and TPM2_ActivateCredential
// satisfy the server's verifier; a credential made for another AK does
// not activate, and the EK certificate is the provisioned one.
func TestTPMAttestation(t *testing.T) {
	ctx := t.Context()
	sw := testkit.StartSWTPM(t)
	maker := testkit.NewTPMManufacturer(t, "Test TPM Maker")
	provisioned := sw.ProvisionEKCertificate(t, maker)
	ks, dev, ekDER := storeWithKey(t, sw.Addr)
	if !bytes.Equal(ekDER, provisioned.Raw) {
		t.Fatalf("EndorsementCertificate returned %d bytes that are not the provisioned certificate", len(ekDER))
	}
	roots := x509.NewCertPool()
	roots.AddCert(maker.Root)
	v := &attest.Verifier{Roots: roots}

	run := func(t *testing.T) (*hw.AttestationKey, *attest.Challenge) {
		ak, err := ks.CreateAttestationKey(ctx)
		if err != nil {
			t.Fatalf("CreateAttestationKey: %v", err)
		}
		ch, err := v.Start("SN-1", attest.StartRequest{EKCertificate: ekDER, AKPublic: ak.Public})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		return ak, ch
	}
	t.Run("accepted", func(t *testing.T) {
		ak, ch := run(t)
		c, err := ks.Certify(ctx, ak, "idevid", ch.Nonce)
		if err != nil {
			t.Fatalf("Certify: %v", err)
		}
		secret, err := ks.ActivateCredential(ctx, ak, ekDER, ch.CredentialBlob, ch.EncryptedSecret)
		if err != nil {
			t.Fatalf("ActivateCredential: %v", err)
		}
		res, err := v.Finish("SN-1", dev.Public(), attest.FinishRequest{Session: ch.Session, KeyPublic: c.KeyPublic,
			CertifyInfo: c.Info, Signature: c.Signature, Secret: secret})
		if err != nil {
			t.Fatalf("Finish: %v", err)
		}
		if res.Method != attest.MethodTPM || res.EKIssuer != maker.Root.Subject.CommonName {
			t.Errorf("Finish = %+v", res)
		}
	})
	t.Run("credential of another AK", func(t *testing.T) {
		_, ch := run(t)
		other, err := ks.CreateAttestationKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The TPM refuses to release a secret bound to another Name.
		if _, err := ks.ActivateCredential(ctx, other, ekDER, ch.CredentialBlob, ch.EncryptedSecret); err == nil {
			t.Fatal("ActivateCredential released a credential made for another AK")
		}
	})
	t.Run("tampered certify", func(t *testing.T) {
		ak, ch := run(t)
		c, err := ks.Certify(ctx, ak, "idevid", ch.Nonce)
		if err != nil {
			t.Fatal(err)
		}
		secret, err := ks.ActivateCredential(ctx, ak, ekDER, ch.CredentialBlob, ch.EncryptedSecret)
		if err != nil {
			t.Fatal(err)
		}
		info := bytes.Clone(c.Info)
		info[len(info)-1] ^= 1 // the certified Name's last byte
		_, err = v.Finish("SN-1", dev.Public(), attest.FinishRequest{Session: ch.Session, KeyPublic: c.KeyPublic,
			CertifyInfo: info, Signature: c.Signature, Secret: secret})
		if cradle.ErrorCode(err) != cradle.EFORBIDDEN {
			t.Fatalf("Finish with a tampered certify: %v, want %s", err, cradle.EFORBIDDEN)
		}
	})
	t.Run("no such key", func(t *testing.T) {
		ak, ch := run(t)
		if _, err := ks.Certify(ctx, ak, "nope", ch.Nonce); !errors.Is(err, hw.ErrNotFound) {
			t.Fatalf("Certify of a missing key: %v, want ErrNotFound", err)
		}
	})
}

// TestTPMAttestationNoEKCertificate: a TPM without an EK certificate says
// so.
func TestTPMAttestationNoEKCertificate(t *testing.T) {
	sw := testkit.StartSWTPM(t)
	ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), filepath.Join(t.TempDir(), "tpm"))
	if _, err := ks.EndorsementCertificate(t.Context()); !errors.Is(err, hw.ErrNotFound) {
		t.Fatalf("EndorsementCertificate: %v, want ErrNotFound", err)
	}
}

// TestTPMAttestationSWTPMSetup: a TPM manufactured by swtpm_setup, its EK
// certificates issued by swtpm-localca (an RSA-2048 EK at 0x01c00002,
// no ECC P-256 one), attests to a verifier trusting swtpm-localca's root:
// the RSA EK path, with a third party's EK certificate.
func TestTPMAttestationSWTPMSetup(t *testing.T) {
	ctx := t.Context()
	sw := testkit.StartManufacturedSWTPM(t)
	ks, dev, ekDER := storeWithKey(t, sw.Addr)
	ek, err := x509.ParseCertificate(ekDER)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ek.PublicKey.(*rsa.PublicKey); !ok || ek.Issuer.String() != sw.Issuer.Subject.String() {
		t.Fatalf("EK certificate: a %T key from %s; want swtpm-localca's RSA EK certificate", ek.PublicKey, ek.Issuer)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(sw.Root)
	inter.AddCert(sw.Issuer)
	v := &attest.Verifier{Roots: roots, Intermediates: inter}
	ak, err := ks.CreateAttestationKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := v.Start("SN-1", attest.StartRequest{EKCertificate: ekDER, AKPublic: ak.Public})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	c, err := ks.Certify(ctx, ak, "idevid", ch.Nonce)
	if err != nil {
		t.Fatalf("Certify: %v", err)
	}
	secret, err := ks.ActivateCredential(ctx, ak, ekDER, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatalf("ActivateCredential with the RSA EK: %v", err)
	}
	if _, err := v.Finish("SN-1", dev.Public(), attest.FinishRequest{Session: ch.Session, KeyPublic: c.KeyPublic,
		CertifyInfo: c.Info, Signature: c.Signature, Secret: secret}); err != nil {
		t.Fatalf("Finish: %v", err)
	}
}

// storeWithKey is a key store on the TPM at addr with a key "idevid"
// created in it; it returns the key and the TPM's EK certificate too.
func storeWithKey(t *testing.T, addr string) (*hw.TPMKeyStore, crypto.Signer, []byte) {
	t.Helper()
	ks := hw.NewTPMKeyStore(hw.TPMTCP(addr), filepath.Join(t.TempDir(), "tpm"))
	dev, err := ks.CreateKey(t.Context(), "idevid", "")
	if err != nil {
		t.Fatal(err)
	}
	ekDER, err := ks.EndorsementCertificate(t.Context())
	if err != nil {
		t.Fatalf("EndorsementCertificate: %v", err)
	}
	return ks, dev, ekDER
}
