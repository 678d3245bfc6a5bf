// Package attest verifies TPM 2.0 attestation at enrollment: the server
// side of proving that a device's key lives in a genuine TPM.
//
// Parties and keys. The TPM manufacturer certifies each TPM's endorsement
// key (EK, a restricted decryption key made from the TCG template; its
// certificate sits in the TPM's NV at 0x01c0000a for ECC P-256, 0x01c00002
// for RSA-2048). The device creates an attestation key (AK: a restricted
// signing key, fixedTPM, fixedParent, sensitiveDataOrigin) and has it
// certify its device key (the IDevID's key, which the device authenticates
// with). The server trusts the manufacturers' roots (device.tpm_ek_roots).
//
// Protocol, two requests on the device listener, both authenticated with
// the IDevID:
//
//  1. Start: the device sends the EK certificate and the AK's public area.
//     The server checks that the certificate chains to a manufacturer root
//     and that the AK has the attributes of a restricted signing key, then
//     answers a fresh nonce and a credential challenge: a random secret
//     encrypted to the EK (the EK public key is taken from the certificate,
//     never from the device) and bound to the AK's Name (TPM2_MakeCredential,
//     TPM 2.0 Part 1 §24). Only the TPM holding that EK can recover it, and
//     only for an object with that Name, loaded in the same TPM.
//  2. Finish: the device sends the certified key's public area, the
//     TPMS_ATTEST of TPM2_Certify (magic TPM_GENERATED_VALUE, type
//     TPM_ST_ATTEST_CERTIFY, extraData the nonce), its signature by the AK,
//     and the secret TPM2_ActivateCredential gave back. The server checks
//     each of them, that the certified key is a TPM-resident key (fixedTPM,
//     sensitiveDataOrigin) whose public key is the one of the client
//     certificate, and that the secret is the one it chose.
//
// Failure modes. Every refusal is a *cradle.Error saying what was wrong:
// EINVALID for malformed input or an unknown, used or expired session,
// EFORBIDDEN for input that is well formed but not trusted (an EK
// certificate that does not chain, an AK that is not a restricted signing
// key, a certify of another key, a bad signature, a wrong secret). A
// session is single-use: Finish consumes it whatever the outcome, so a
// replayed nonce or a second guess at the secret needs a new Start. Sessions
// are kept in memory, one per device (a new Start replaces the old one),
// and expire after Verifier.TTL; a server restart forgets them, and the
// device starts again.
package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"cradle"
)

// MethodTPM names TPM attestation in results and device labels.
const MethodTPM = "tpm"

// DefaultTTL is how long a started session may be finished.
const DefaultTTL = 5 * time.Minute

const (
	nonceSize  = 32
	secretSize = 32
)

// StartRequest is the body of POST /device/v1/attestation/start.
type StartRequest struct {
	// EKCertificate is the EK certificate (DER) read from the TPM's NV.
	EKCertificate []byte `json:"ek_certificate"`
	// AKPublic is the AK's public area: a marshalled TPMT_PUBLIC (the
	// contents of its TPM2B_PUBLIC).
	AKPublic []byte `json:"ak_public"`
}

// Challenge is the answer to a start.
type Challenge struct {
	// Session names the session in the finish request.
	Session string `json:"session"`
	// Nonce is the qualifying data TPM2_Certify must sign.
	Nonce []byte `json:"nonce"`
	// CredentialBlob and EncryptedSecret are TPM2_ActivateCredential's
	// inputs: the TPMS_ID_OBJECT (TPM2B_ID_OBJECT contents) and the
	// secret encrypted to the EK (TPM2B_ENCRYPTED_SECRET contents).
	CredentialBlob  []byte    `json:"credential_blob"`
	EncryptedSecret []byte    `json:"encrypted_secret"`
	ExpiresAt       time.Time `json:"expires_at"`
}

// FinishRequest is the body of POST /device/v1/attestation/finish.
type FinishRequest struct {
	Session string `json:"session"`
	// KeyPublic is the certified key's public area (marshalled TPMT_PUBLIC).
	KeyPublic []byte `json:"key_public"`
	// CertifyInfo is the TPMS_ATTEST TPM2_Certify returned (its TPM2B_ATTEST
	// contents), Signature the AK's TPMT_SIGNATURE over it.
	CertifyInfo []byte `json:"certify_info"`
	Signature   []byte `json:"signature"`
	// Secret is what TPM2_ActivateCredential recovered.
	Secret []byte `json:"secret"`
}

// Result is a verified attestation.
type Result struct {
	Method string `json:"method"`
	// EKCertificate is the SHA-256 fingerprint (hex) of the EK certificate,
	// EKIssuer its issuer's common name.
	EKCertificate string `json:"ek_certificate_sha256"`
	EKIssuer      string `json:"ek_issuer"`
	// AKName is the AK's TPM Name (hex).
	AKName string    `json:"ak_name"`
	At     time.Time `json:"at"`
}

// Verifier runs attestation sessions. Set the fields before the first
// call; it is safe for concurrent use.
type Verifier struct {
	// Roots are the TPM manufacturers' root certificates. Nil refuses
	// every EK certificate.
	Roots *x509.CertPool
	// Intermediates are manufacturers' intermediate CAs, when the TPM's
	// NV holds the EK certificate alone; nil means none.
	Intermediates *x509.CertPool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TTL is how long a session lives; 0 means DefaultTTL.
	TTL time.Duration
	// Rand draws nonces, secrets and the encryption of the challenge; nil
	// means crypto/rand.
	Rand io.Reader

	mu       sync.Mutex
	sessions map[string]*session // by device serial
}

type session struct {
	id        string
	nonce     []byte
	secret    []byte
	ak        crypto.PublicKey
	akName    []byte
	ekSum     [32]byte
	ekIssuer  string
	expiresAt time.Time
}

func (v *Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

func (v *Verifier) rand() io.Reader {
	if v.Rand == nil {
		return rand.Reader
	}
	return v.Rand
}

// Start checks the EK certificate and the AK of serial's device and
// returns a challenge. It returns EINVALID for malformed input and
// EFORBIDDEN for an EK certificate that does not chain to the roots or an
// AK that is not a restricted signing key.
func (v *Verifier) Start(serial string, req StartRequest) (*Challenge, error) {
	now := v.now()
	ek, err := x509.ParseCertificate(req.EKCertificate)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate is not a DER X.509 certificate: %v", err)
	}
	if err := v.verifyEK(ek, now); err != nil {
		return nil, err
	}
	ekKey, err := ekEncapsulationKey(ek)
	if err != nil {
		return nil, err
	}
	akPub, err := ParsePublic(req.AKPublic)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the AK public area: %v", err)
	}
	if err := checkAK(akPub); err != nil {
		return nil, err
	}
	ak, err := tpm2.Pub(*akPub)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the AK public key: %v", err)
	}
	akName, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the AK's name: %v", err)
	}
	s := &session{nonce: make([]byte, nonceSize), secret: make([]byte, secretSize), ak: ak, akName: akName.Buffer,
		ekSum: sha256.Sum256(ek.Raw), ekIssuer: ek.Issuer.CommonName, expiresAt: now.Add(v.ttl())}
	id := make([]byte, 16)
	for _, b := range [][]byte{s.nonce, s.secret, id} {
		if _, err := io.ReadFull(v.rand(), b); err != nil {
			return nil, fmt.Errorf("attestation: draw a nonce: %w", err)
		}
	}
	s.id = hex.EncodeToString(id)
	blob, encSecret, err := tpm2.CreateCredential(v.rand(), ekKey, akName.Buffer, s.secret)
	if err != nil {
		return nil, fmt.Errorf("attestation: make the credential: %w", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sessions == nil {
		v.sessions = map[string]*session{}
	}
	for k, old := range v.sessions {
		if !now.Before(old.expiresAt) {
			delete(v.sessions, k)
		}
	}
	v.sessions[serial] = s
	return &Challenge{Session: s.id, Nonce: s.nonce, CredentialBlob: blob, EncryptedSecret: encSecret, ExpiresAt: s.expiresAt}, nil
}

func (v *Verifier) ttl() time.Duration {
	if v.TTL <= 0 {
		return DefaultTTL
	}
	return v.TTL
}

// Finish checks the device's answer to the session it started. deviceKey
// is the public key of the client certificate (the IDevID) the request
// came with: the certified key must be it. The session is consumed
// whatever the outcome. It returns EINVALID for malformed input and for a
// session that is unknown, used, expired or another device's, and
// EFORBIDDEN when the certify is of another key, its nonce is not the
// session's, its signature does not verify with the AK, or the secret is
// wrong.
func (v *Verifier) Finish(serial string, deviceKey crypto.PublicKey, req FinishRequest) (*Result, error) {
	now := v.now()
	v.mu.Lock()
	s := v.sessions[serial]
	if s != nil && s.id == req.Session {
		delete(v.sessions, serial)
	} else {
		s = nil
	}
	v.mu.Unlock()
	if s == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: session %q is unknown, used or not this device's: start again", req.Session)
	}
	if !now.Before(s.expiresAt) {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: session %q expired at %s: start again", req.Session, s.expiresAt.UTC().Format(time.RFC3339))
	}
	keyPub, err := ParsePublic(req.KeyPublic)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the certified key's public area: %v", err)
	}
	attest, err := ParseAttest(req.CertifyInfo)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the certify info: %v", err)
	}
	sig, err := ParseSignature(req.Signature)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the certify signature: %v", err)
	}
	if err := verifySignature(s.ak, req.CertifyInfo, sig); err != nil {
		return nil, err
	}
	if !bytes.Equal(attest.ExtraData.Buffer, s.nonce) {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "attestation: the certify info's qualifying data is not this session's nonce (a replayed or stale certify): start again")
	}
	info, err := attest.Attested.Certify()
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the certify info: %v", err)
	}
	name, err := tpm2.ObjectName(keyPub)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the certified key's name: %v", err)
	}
	if !bytes.Equal(info.Name.Buffer, name.Buffer) {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "attestation: the certify names another key (%x) than the public area sent (%x)", info.Name.Buffer, name.Buffer)
	}
	a := keyPub.ObjectAttributes
	if !a.FixedTPM || !a.SensitiveDataOrigin {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "attestation: the certified key was not generated in the TPM or can leave it (fixedTPM %t, sensitiveDataOrigin %t)", a.FixedTPM, a.SensitiveDataOrigin)
	}
	k, err := tpm2.Pub(*keyPub)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the certified key's public key: %v", err)
	}
	eq, ok := deviceKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(k) {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "attestation: the certified key is not the key of the client certificate: certify the IDevID's key")
	}
	if subtle.ConstantTimeCompare(req.Secret, s.secret) != 1 {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "attestation: the activated credential is wrong: the AK is not in the TPM of the EK certificate")
	}
	return &Result{Method: MethodTPM, EKCertificate: hex.EncodeToString(s.ekSum[:]), EKIssuer: s.ekIssuer,
		AKName: hex.EncodeToString(s.akName), At: now}, nil
}

// verifyEK checks that ek chains to the roots at now.
func (v *Verifier) verifyEK(ek *x509.Certificate, now time.Time) error {
	if v.Roots == nil {
		return cradle.Errorf(cradle.EFORBIDDEN, "attestation: no TPM manufacturer roots are configured (device.tpm_ek_roots): the server accepts no EK certificate")
	}
	if err := handleTPMSubjectAltName(ek); err != nil {
		return err
	}
	// EK certificates carry the TCG EK EKU (2.23.133.8.1) or none; the
	// manufacturer's CA decides, so any usage is accepted.
	_, err := ek.Verify(x509.VerifyOptions{Roots: v.Roots, Intermediates: v.Intermediates, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return cradle.Errorf(cradle.EFORBIDDEN, "attestation: the EK certificate (issuer %q) does not chain to a configured TPM manufacturer root: %v", ek.Issuer.String(), err)
	}
	return nil
}

// ekEncapsulationKey is the EK public key as the TCG template makes it,
// from the certificate's key: ECC P-256 or RSA-2048.
func ekEncapsulationKey(ek *x509.Certificate) (tpm2.LabeledEncapsulationKey, error) {
	var pub tpm2.TPMTPublic
	switch k := ek.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate's key is on %s; use the ECC P-256 or RSA-2048 EK", k.Curve.Params().Name)
		}
		pub = tpm2.ECCEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
		})
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 || k.E != 65537 {
			return nil, cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate's RSA key has %d bits and exponent %d; the TCG EK is RSA-2048 with exponent 65537", k.N.BitLen(), k.E)
		}
		pub = tpm2.RSAEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	default:
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate holds a %T key; an EK is ECC P-256 or RSA-2048", ek.PublicKey)
	}
	key, err := tpm2.ImportEncapsulationKey(&pub)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate's key: %v", err)
	}
	return key, nil
}

// checkAK refuses a public area that is not a restricted signing key
// generated in, and bound to, a TPM.
func checkAK(p *tpm2.TPMTPublic) error {
	a := p.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
		{a.Restricted, "restricted"}, {a.SignEncrypt, "sign"}} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return cradle.Errorf(cradle.EFORBIDDEN, "attestation: the AK is not a restricted signing key bound to its TPM: it lacks %v", missing)
	}
	if a.Decrypt {
		return cradle.Errorf(cradle.EFORBIDDEN, "attestation: the AK may also decrypt; an AK is a signing key only")
	}
	if p.Type != tpm2.TPMAlgECC && p.Type != tpm2.TPMAlgRSA {
		return cradle.Errorf(cradle.EINVALID, "attestation: the AK is of type %#x; use ECC or RSA", uint16(p.Type))
	}
	if p.NameAlg != tpm2.TPMAlgSHA256 && p.NameAlg != tpm2.TPMAlgSHA384 && p.NameAlg != tpm2.TPMAlgSHA512 {
		return cradle.Errorf(cradle.EINVALID, "attestation: the AK's name algorithm %#x is not SHA-256, SHA-384 or SHA-512", uint16(p.NameAlg))
	}
	return nil
}

// verifySignature checks sig over msg with the AK.
func verifySignature(ak crypto.PublicKey, msg []byte, sig *tpm2.TPMTSignature) error {
	bad := func(why string, args ...any) error {
		return cradle.Errorf(cradle.EFORBIDDEN, "attestation: the certify signature does not verify with the AK: "+why, args...)
	}
	var hashAlg tpm2.TPMIAlgHash
	switch sig.SigAlg {
	case tpm2.TPMAlgECDSA:
		e, err := sig.Signature.ECDSA()
		if err != nil {
			return bad("%v", err)
		}
		hashAlg = e.Hash
		h, err := digest(hashAlg, msg)
		if err != nil {
			return bad("%v", err)
		}
		k, ok := ak.(*ecdsa.PublicKey)
		if !ok {
			return bad("an ECDSA signature from a %T AK", ak)
		}
		if !ecdsa.Verify(k, h, new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)) {
			return bad("the ECDSA signature is wrong (certify info or signature altered)")
		}
		return nil
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		var r *tpm2.TPMSSignatureRSA
		var err error
		if sig.SigAlg == tpm2.TPMAlgRSASSA {
			r, err = sig.Signature.RSASSA()
		} else {
			r, err = sig.Signature.RSAPSS()
		}
		if err != nil {
			return bad("%v", err)
		}
		h, err := digest(r.Hash, msg)
		if err != nil {
			return bad("%v", err)
		}
		k, ok := ak.(*rsa.PublicKey)
		if !ok {
			return bad("an RSA signature from a %T AK", ak)
		}
		ch, _ := r.Hash.Hash()
		if sig.SigAlg == tpm2.TPMAlgRSASSA {
			err = rsa.VerifyPKCS1v15(k, ch, h, r.Sig.Buffer)
		} else {
			err = rsa.VerifyPSS(k, ch, h, r.Sig.Buffer, nil)
		}
		if err != nil {
			return bad("%v", err)
		}
		return nil
	}
	return bad("signature algorithm %#x; use ECDSA, RSASSA or RSAPSS", uint16(sig.SigAlg))
}

func digest(alg tpm2.TPMIAlgHash, msg []byte) ([]byte, error) {
	switch alg {
	case tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512:
	default:
		return nil, fmt.Errorf("hash algorithm %#x; use SHA-256, SHA-384 or SHA-512", uint16(alg))
	}
	h, err := alg.Hash()
	if err != nil {
		return nil, err
	}
	w := h.New()
	w.Write(msg)
	return w.Sum(nil), nil
}

var (
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
)

// handleTPMSubjectAltName accepts the critical subjectAltName of an EK
// certificate (TCG EK Credential Profile §3.2.9: the subject is empty and
// the TPM's manufacturer, model and version are a directoryName), which
// crypto/x509 leaves unhandled, once it holds a directoryName naming the
// TPM manufacturer. Other unhandled critical extensions stay and fail
// verification.
func handleTPMSubjectAltName(ek *x509.Certificate) error {
	i := slices.IndexFunc(ek.UnhandledCriticalExtensions, func(o asn1.ObjectIdentifier) bool { return o.Equal(oidSubjectAltName) })
	if i < 0 {
		return nil
	}
	for _, e := range ek.Extensions {
		if !e.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(e.Value, &names); err != nil || len(rest) > 0 {
			return cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate's subjectAltName is malformed")
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 4 {
				continue
			}
			var rdns pkix.RDNSequence
			if rest, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil || len(rest) > 0 {
				return cradle.Errorf(cradle.EINVALID, "attestation: the EK certificate's subjectAltName directoryName is malformed")
			}
			for _, rdn := range rdns {
				for _, atv := range rdn {
					if atv.Type.Equal(oidTPMManufacturer) {
						ek.UnhandledCriticalExtensions = slices.Delete(ek.UnhandledCriticalExtensions, i, i+1)
						return nil
					}
				}
			}
		}
	}
	return cradle.Errorf(cradle.EFORBIDDEN, "attestation: the EK certificate's critical subjectAltName names no TPM manufacturer (tcg-at-tpmManufacturer): not an EK certificate")
}
