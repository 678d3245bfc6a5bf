package hw

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// The NV indices where TPM manufacturers store the EK certificate (TCG
// EK Credential Profile §2.2.1.4): the RSA-2048 and the ECC P-256 EK's.
const (
	EKCertIndexRSA = 0x01c00002
	EKCertIndexECC = 0x01c0000a
)

// nvChunk is how much one TPM2_NV_Read asks for (below every TPM's
// TPM_PT_NV_BUFFER_MAX).
const nvChunk = 512

// AttestationKey is an AK made by CreateAttestationKey: a restricted
// ECDSA P-256 signing key (fixedTPM, fixedParent, sensitiveDataOrigin)
// under the storage root key. It is transient: its wrapped private part
// is kept here and loaded for each use, never made persistent, so it
// lives as long as this value (or until the TPM is cleared).
type AttestationKey struct {
	// Public is the AK's public area, a marshalled TPMT_PUBLIC, as the
	// server's attestation start takes it.
	Public []byte

	public  tpm2.TPM2BPublic
	private tpm2.TPM2BPrivate
}

// akTemplate is a restricted signing key: it signs only digests the TPM
// computed itself (attestation structures), never outside data that
// could mimic one.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// EndorsementCertificate returns the EK certificate (DER) the TPM's
// manufacturer stored in NV: the ECC P-256 EK's when there is one, else
// the RSA-2048 EK's. A TPM without either gives an error wrapping
// ErrNotFound.
func (s *TPMKeyStore) EndorsementCertificate(ctx context.Context) ([]byte, error) {
	var der []byte
	err := s.withTPM(ctx, func(t transport.TPM) error {
		for _, idx := range []tpm2.TPMHandle{EKCertIndexECC, EKCertIndexRSA} {
			b, err := readNV(t, idx)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			der = trimDER(b)
			return nil
		}
		return fmt.Errorf("no EK certificate at NV %#x or %#x (provision one with swtpm_setup --create-ek-cert, or ask the TPM's maker): %w", EKCertIndexECC, EKCertIndexRSA, ErrNotFound)
	})
	if err != nil {
		return nil, fmt.Errorf("hw: read the EK certificate: %w", err)
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("hw: the EK certificate in the TPM's NV is not DER X.509: %w", err)
	}
	return der, nil
}

// readNV reads a whole NV index with owner authorization.
func readNV(t transport.TPM, idx tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read the public area of NV %#x: %w", uint32(idx), err)
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("NV %#x: %w", uint32(idx), err)
	}
	var out []byte
	for off := 0; off < int(nv.DataSize); off += nvChunk {
		n := min(nvChunk, int(nv.DataSize)-off)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.TPMRHOwner,
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: pub.NVName},
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("read NV %#x at %d: %w", uint32(idx), off, err)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// trimDER cuts the padding some manufacturers leave after the
// certificate's DER SEQUENCE.
func trimDER(b []byte) []byte {
	if len(b) < 4 || b[0] != 0x30 || b[1] != 0x82 {
		return b
	}
	if n := 4 + (int(b[2])<<8 | int(b[3])); n <= len(b) {
		return b[:n]
	}
	return b
}

// CreateAttestationKey creates a new AK under the storage root key.
func (s *TPMKeyStore) CreateAttestationKey(ctx context.Context) (*AttestationKey, error) {
	var ak *AttestationKey
	err := s.withTPM(ctx, func(t transport.TPM) error {
		srk, err := createSRK(t)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: srk.Handle}.Execute(t)
		created, err := tpm2.Create{ParentHandle: srk, InPublic: tpm2.New2B(akTemplate)}.Execute(t)
		if err != nil {
			return fmt.Errorf("create the attestation key: %w", err)
		}
		ak = &AttestationKey{Public: created.OutPublic.Bytes(), public: created.OutPublic, private: created.OutPrivate}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hw: %w", err)
	}
	return ak, nil
}

func createSRK(t transport.TPM) (tpm2.NamedHandle, error) {
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(t)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("create the storage root key under the owner hierarchy: %w", err)
	}
	return tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}, nil
}

// loadAK loads ak under a fresh SRK; the caller flushes both handles.
func loadAK(t transport.TPM, ak *AttestationKey) (srk, key tpm2.NamedHandle, err error) {
	if srk, err = createSRK(t); err != nil {
		return srk, key, err
	}
	loaded, err := tpm2.Load{ParentHandle: srk, InPrivate: ak.private, InPublic: ak.public}.Execute(t)
	if err != nil {
		tpm2.FlushContext{FlushHandle: srk.Handle}.Execute(t)
		return srk, key, fmt.Errorf("load the attestation key (was the TPM cleared since it was made?): %w", err)
	}
	return srk, tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name}, nil
}

// Certification is what TPM2_Certify says of a key.
type Certification struct {
	// KeyPublic is the certified key's public area (marshalled TPMT_PUBLIC).
	KeyPublic []byte
	// Info is the TPMS_ATTEST, Signature the AK's TPMT_SIGNATURE over it.
	Info      []byte
	Signature []byte
}

// Certify has ak certify the store's key name with TPM2_Certify, nonce
// as the qualifying data. A key that is not in the store wraps
// ErrNotFound.
func (s *TPMKeyStore) Certify(ctx context.Context, ak *AttestationKey, name string, nonce []byte) (*Certification, error) {
	e, err := s.entry("certify key", name)
	if err != nil {
		return nil, err
	}
	var c *Certification
	err = s.withTPM(ctx, func(t transport.TPM) error {
		if _, _, err := readKey(t, name, e); err != nil {
			return err
		}
		pub, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(e.Handle)}.Execute(t)
		if err != nil {
			return fmt.Errorf("read the key's public area: %w", err)
		}
		srk, key, err := loadAK(t, ak)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: srk.Handle}.Execute(t)
		defer tpm2.FlushContext{FlushHandle: key.Handle}.Execute(t)
		rsp, err := tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.Handle), Name: pub.Name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("TPM2_Certify: %w", err)
		}
		c = &Certification{KeyPublic: pub.OutPublic.Bytes(), Info: rsp.CertifyInfo.Bytes(), Signature: tpm2.Marshal(rsp.Signature)}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hw: certify key %s: %w", name, err)
	}
	return c, nil
}

// ActivateCredential recovers the secret of a credential challenge made
// for ak against the EK of ekCert (the certificate EndorsementCertificate
// returned): it re-creates that EK from the TCG template, checks that it
// is the certificate's key, and runs TPM2_ActivateCredential with a
// policy session satisfying the EK's policy (PolicySecret of the
// endorsement hierarchy, whose authorization is empty).
func (s *TPMKeyStore) ActivateCredential(ctx context.Context, ak *AttestationKey, ekCert, blob, encSecret []byte) ([]byte, error) {
	cert, err := x509.ParseCertificate(ekCert)
	if err != nil {
		return nil, fmt.Errorf("hw: activate credential: the EK certificate: %w", err)
	}
	tmpl := tpm2.ECCEKTemplate
	if _, ok := cert.PublicKey.(*rsa.PublicKey); ok {
		tmpl = tpm2.RSAEKTemplate
	}
	var secret []byte
	err = s.withTPM(ctx, func(t transport.TPM) error {
		ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(t)
		if err != nil {
			return fmt.Errorf("create the endorsement key: %w", err)
		}
		defer tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(t)
		if err := sameKey(ek.OutPublic, cert.PublicKey); err != nil {
			return err
		}
		srk, key, err := loadAK(t, ak)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: srk.Handle}.Execute(t)
		defer tpm2.FlushContext{FlushHandle: key.Handle}.Execute(t)
		policy := tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, sess tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
			_, err := tpm2.PolicySecret{
				AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
				PolicySession: sess,
				NonceTPM:      nonceTPM,
			}.Execute(t)
			return err
		})
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle:      tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: policy},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: blob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("TPM2_ActivateCredential: %w", err)
		}
		secret = rsp.CertInfo.Buffer
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hw: activate credential: %w", err)
	}
	return secret, nil
}

// sameKey checks that the TPM's EK public area is the certificate's key.
func sameKey(pub tpm2.TPM2BPublic, certKey crypto.PublicKey) error {
	p, err := pub.Contents()
	if err != nil {
		return fmt.Errorf("read the EK public area: %w", err)
	}
	k, err := tpm2.Pub(*p)
	if err != nil {
		return fmt.Errorf("read the EK public key: %w", err)
	}
	var eq bool
	switch ck := certKey.(type) {
	case *ecdsa.PublicKey:
		eq = ck.Equal(k)
	case *rsa.PublicKey:
		eq = ck.Equal(k)
	}
	if !eq {
		return errors.New("the TPM's endorsement key is not the key of the EK certificate in its NV (a certificate of another TPM?)")
	}
	return nil
}
