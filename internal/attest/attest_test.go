package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"cradle"
	"cradle/internal/attest"
	"cradle/internal/testkit"
)

// fixture is a software stand-in for a TPM's side of the protocol: an EK
// certified by a manufacturer, an AK and a device key (ECDSA keys whose
// public areas are what a TPM would report), so that each refusal can be
// provoked precisely. The whole flow against a real TPM is in
// internal/agent/hw's TestTPMAttestation (swtpm) and cmd/cradle.
type fixture struct {
	maker   *testkit.TPMManufacturer
	ek      *x509.Certificate
	ak      *ecdsa.PrivateKey
	akPub   tpm2.TPMTPublic
	dev     *ecdsa.PrivateKey
	devPub  tpm2.TPMTPublic
	v       *attest.Verifier
	now     time.Time
	serial  string
	session *attest.Challenge
}

func eccPublic(k *ecdsa.PublicKey, attrs tpm2.TPMAObject, scheme tpm2.TPMTECCScheme) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    scheme, CurveID: tpm2.TPMECCNistP256,
			KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
		}),
	}
}

var (
	akAttrs = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		NoDA: true, Restricted: true, SignEncrypt: true}
	akScheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
		Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})}
	devAttrs = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		NoDA: true, SignEncrypt: true}
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{maker: testkit.NewTPMManufacturer(t, "Test TPM Maker"), ak: newKey(t), dev: newKey(t),
		now: time.Now(), serial: "SN-1"}
	f.ek = f.maker.IssueEK(t, newKey(t).Public())
	f.akPub = eccPublic(&f.ak.PublicKey, akAttrs, akScheme)
	f.devPub = eccPublic(&f.dev.PublicKey, devAttrs, tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull})
	roots := x509.NewCertPool()
	roots.AddCert(f.maker.Root)
	f.v = &attest.Verifier{Roots: roots, Now: func() time.Time { return f.now }}
	return f
}

func (f *fixture) start(t testing.TB) *attest.Challenge {
	t.Helper()
	ch, err := f.v.Start(f.serial, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: tpm2.Marshal(f.akPub)})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return ch
}

func name(t testing.TB, p tpm2.TPMTPublic) []byte {
	n, err := tpm2.ObjectName(&p)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}

// certify is what TPM2_Certify of certified by the AK with nonce returns.
func (f *fixture) certify(t testing.TB, certified tpm2.TPMTPublic, nonce []byte) (info, sig []byte) {
	t.Helper()
	n := name(t, certified)
	info = tpm2.Marshal(tpm2.TPMSAttest{
		Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify,
		QualifiedSigner: tpm2.TPM2BName{Buffer: name(t, f.akPub)},
		ExtraData:       tpm2.TPM2BData{Buffer: nonce},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
			Name: tpm2.TPM2BName{Buffer: n}, QualifiedName: tpm2.TPM2BName{Buffer: n}}),
	})
	return info, f.sign(t, f.ak, info)
}

func (f *fixture) sign(t testing.TB, k *ecdsa.PrivateKey, msg []byte) []byte {
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA,
		&tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()}})})
}

// finish answers ch correctly except for the secret, which a software
// fixture cannot recover (only the EK's TPM can): it is wrong, so an
// answer that passes every other check is refused for the secret last.
func (f *fixture) finishRequest(t testing.TB, ch *attest.Challenge) attest.FinishRequest {
	info, sig := f.certify(t, f.devPub, ch.Nonce)
	return attest.FinishRequest{Session: ch.Session, KeyPublic: tpm2.Marshal(f.devPub), CertifyInfo: info, Signature: sig,
		Secret: bytes.Repeat([]byte{7}, 32)}
}

func wantRefusal(t *testing.T, err error, code, text string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want %s refusal saying %q", code, text)
	}
	if cradle.ErrorCode(err) != code || !strings.Contains(err.Error(), text) {
		t.Fatalf("refused with %v; want %s saying %q", err, code, text)
	}
}

// TestStartRefusals: Start refuses what cannot be trusted or parsed.
func TestStartRefusals(t *testing.T) {
	f := newFixture(t)
	other := testkit.NewTPMManufacturer(t, "Other Maker")
	plainCert := func() []byte { // a valid certificate of the maker without the TPM subjectAltName
		c := f.maker.IssueEK(t, newKey(t).Public())
		return c.Raw
	}()
	ak := func(mod func(*tpm2.TPMTPublic)) []byte {
		p := f.akPub
		mod(&p)
		return tpm2.Marshal(p)
	}
	tests := []struct {
		name      string
		roots     bool
		req       attest.StartRequest
		code, msg string
	}{
		{"EK certificate of another maker", true, attest.StartRequest{EKCertificate: other.IssueEK(t, newKey(t).Public()).Raw, AKPublic: tpm2.Marshal(f.akPub)},
			cradle.EFORBIDDEN, "does not chain to a configured TPM manufacturer root"},
		{"no roots configured", false, attest.StartRequest{EKCertificate: plainCert, AKPublic: tpm2.Marshal(f.akPub)},
			cradle.EFORBIDDEN, "no TPM manufacturer roots are configured"},
		{"EK certificate not DER", true, attest.StartRequest{EKCertificate: []byte("hello"), AKPublic: tpm2.Marshal(f.akPub)},
			cradle.EINVALID, "not a DER X.509 certificate"},
		{"AK not restricted", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: ak(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false })},
			cradle.EFORBIDDEN, "lacks [restricted]"},
		{"AK not fixedTPM", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: ak(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false })},
			cradle.EFORBIDDEN, "lacks [fixedTPM]"},
		{"AK imported", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: ak(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false })},
			cradle.EFORBIDDEN, "lacks [sensitiveDataOrigin]"},
		{"AK not a signing key", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: ak(func(p *tpm2.TPMTPublic) {
			p.ObjectAttributes.SignEncrypt, p.ObjectAttributes.Decrypt = false, true
		})}, cradle.EFORBIDDEN, "lacks [sign]"},
		{"AK also decrypts", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: ak(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true })},
			cradle.EFORBIDDEN, "may also decrypt"},
		{"AK public malformed", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: []byte{0, 0x23, 0, 0x0b}},
			cradle.EINVALID, "the AK public area"},
		{"AK public with trailing bytes", true, attest.StartRequest{EKCertificate: f.ek.Raw, AKPublic: append(tpm2.Marshal(f.akPub), 0)},
			cradle.EINVALID, "trailing bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := &attest.Verifier{Now: func() time.Time { return f.now }}
			if tt.roots {
				v.Roots = f.v.Roots
			}
			_, err := v.Start(f.serial, tt.req)
			wantRefusal(t, err, tt.code, tt.msg)
		})
	}
}

// TestFinishRefusals: each wrong answer is refused for what is wrong, and
// a correct answer but for the secret is refused for the secret.
func TestFinishRefusals(t *testing.T) {
	f := newFixture(t)
	otherKey := newKey(t)
	otherPub := eccPublic(&otherKey.PublicKey, devAttrs, tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull})
	tests := []struct {
		name      string
		change    func(t *testing.T, ch *attest.Challenge, r *attest.FinishRequest)
		code, msg string
	}{
		{"wrong secret", func(*testing.T, *attest.Challenge, *attest.FinishRequest) {},
			cradle.EFORBIDDEN, "the activated credential is wrong"},
		{"tampered certify", func(_ *testing.T, _ *attest.Challenge, r *attest.FinishRequest) {
			r.CertifyInfo[len(r.CertifyInfo)-1] ^= 1
		},
			cradle.EFORBIDDEN, "does not verify with the AK"},
		{"signed by another key", func(t *testing.T, _ *attest.Challenge, r *attest.FinishRequest) {
			r.Signature = f.sign(t, newKey(t), r.CertifyInfo)
		}, cradle.EFORBIDDEN, "does not verify with the AK"},
		{"certify of another key", func(t *testing.T, ch *attest.Challenge, r *attest.FinishRequest) {
			r.CertifyInfo, r.Signature = f.certify(t, otherPub, ch.Nonce)
			r.KeyPublic = tpm2.Marshal(otherPub)
		}, cradle.EFORBIDDEN, "not the key of the client certificate"},
		{"certify names another key than the public area", func(t *testing.T, ch *attest.Challenge, r *attest.FinishRequest) {
			r.CertifyInfo, r.Signature = f.certify(t, otherPub, ch.Nonce)
		}, cradle.EFORBIDDEN, "names another key"},
		{"certified key not in a TPM", func(t *testing.T, ch *attest.Challenge, r *attest.FinishRequest) {
			p := f.devPub
			p.ObjectAttributes.FixedTPM = false
			r.CertifyInfo, r.Signature = f.certify(t, p, ch.Nonce)
			r.KeyPublic = tpm2.Marshal(p)
		}, cradle.EFORBIDDEN, "fixedTPM false"},
		{"stale nonce", func(t *testing.T, _ *attest.Challenge, r *attest.FinishRequest) {
			r.CertifyInfo, r.Signature = f.certify(t, f.devPub, bytes.Repeat([]byte{1}, 32))
		}, cradle.EFORBIDDEN, "not this session's nonce"},
		{"unknown session", func(_ *testing.T, _ *attest.Challenge, r *attest.FinishRequest) { r.Session = "nope" },
			cradle.EINVALID, "unknown, used or not this device's"},
		{"expired session", func(*testing.T, *attest.Challenge, *attest.FinishRequest) { f.now = f.now.Add(attest.DefaultTTL) },
			cradle.EINVALID, "expired"},
		{"not a certify", func(t *testing.T, ch *attest.Challenge, r *attest.FinishRequest) {
			r.CertifyInfo[5] = 0x18 // TPM_ST_ATTEST_QUOTE
			r.Signature = f.sign(t, f.ak, r.CertifyInfo)
		}, cradle.EINVALID, "not TPM_ST_ATTEST_CERTIFY"},
		{"not made by a TPM", func(t *testing.T, ch *attest.Challenge, r *attest.FinishRequest) {
			r.CertifyInfo[0] = 0
			r.Signature = f.sign(t, f.ak, r.CertifyInfo)
		}, cradle.EINVALID, "not TPM_GENERATED_VALUE"},
		{"signature malformed", func(_ *testing.T, _ *attest.Challenge, r *attest.FinishRequest) { r.Signature = r.Signature[:5] },
			cradle.EINVALID, "the certify signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.now = time.Now()
			ch := f.start(t)
			r := f.finishRequest(t, ch)
			tt.change(t, ch, &r)
			_, err := f.v.Finish(f.serial, f.dev.Public(), r)
			wantRefusal(t, err, tt.code, tt.msg)
		})
	}
}

// TestSessionSingleUse: a finish consumes its session whatever the
// outcome (a replay is refused), a session is its device's only, and a
// new start replaces the device's previous session.
func TestSessionSingleUse(t *testing.T) {
	f := newFixture(t)
	ch := f.start(t)
	r := f.finishRequest(t, ch)
	_, err := f.v.Finish(f.serial, f.dev.Public(), r)
	wantRefusal(t, err, cradle.EFORBIDDEN, "the activated credential is wrong")
	_, err = f.v.Finish(f.serial, f.dev.Public(), r)
	wantRefusal(t, err, cradle.EINVALID, "unknown, used")

	ch = f.start(t)
	_, err = f.v.Finish("SN-2", f.dev.Public(), f.finishRequest(t, ch))
	wantRefusal(t, err, cradle.EINVALID, "not this device's")

	old := f.start(t)
	f.start(t)
	_, err = f.v.Finish(f.serial, f.dev.Public(), f.finishRequest(t, old))
	wantRefusal(t, err, cradle.EINVALID, "unknown, used")
}

// TestStartChallenge: a challenge has a fresh nonce and session, and
// expires after the TTL.
func TestStartChallenge(t *testing.T) {
	f := newFixture(t)
	f.v.TTL = time.Minute
	a, b := f.start(t), f.start(t)
	if len(a.Nonce) != 32 || bytes.Equal(a.Nonce, b.Nonce) || a.Session == b.Session {
		t.Errorf("two starts gave nonces %x, %x and sessions %q, %q", a.Nonce, b.Nonce, a.Session, b.Session)
	}
	if !a.ExpiresAt.Equal(f.now.Add(time.Minute)) {
		t.Errorf("ExpiresAt = %v, want now + TTL", a.ExpiresAt)
	}
	if len(a.CredentialBlob) == 0 || len(a.EncryptedSecret) == 0 {
		t.Errorf("no credential challenge: %+v", a)
	}
}
