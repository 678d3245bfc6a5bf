package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// EKCertIndexECC is the NV index of the ECC P-256 EK certificate (TCG EK
// Credential Profile).
const EKCertIndexECC = 0x01c0000a

// TPMManufacturer is a test TPM manufacturer: a root CA that certifies
// endorsement keys, as a TPM vendor's does.
type TPMManufacturer struct {
	Root *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewTPMManufacturer makes a manufacturer CA named name, valid for a day
// around now.
func NewTPMManufacturer(t testing.TB, name string) *TPMManufacturer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{name}, CommonName: name + " EK Root CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &TPMManufacturer{Root: root, Key: key}
}

var (
	oidTCGKPEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidSubjectAltName     = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer    = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel           = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion         = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
)

// IssueEK issues an EK certificate for pub as the TCG EK Credential
// Profile shapes it: empty subject, the TPM's maker, model and version in
// a critical subjectAltName directoryName, the tcg-kp-EKCertificate
// usage.
func (m *TPMManufacturer) IssueEK(t testing.TB, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	dirName, err := asn1.Marshal(pkix.RDNSequence{
		{{Type: oidTPMManufacturer, Value: "id:00001014"}},
		{{Type: oidTPMModel, Value: "swtpm"}},
		{{Type: oidTPMVersion, Value: "id:20191023"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dirName}})
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: m.Root.NotBefore, NotAfter: m.Root.NotAfter,
		KeyUsage:              x509.KeyUsageKeyAgreement,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidTCGKPEKCertificate},
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Root, pub, m.Key)
	if err != nil {
		t.Fatalf("issue the EK certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse the EK certificate: %v", err)
	}
	return cert
}

// ProvisionEKCertificate does what a TPM maker does at the end of the
// line: it creates the ECC P-256 endorsement key from the TCG template,
// has m certify it (IssueEK) and
// writes the certificate (DER) to NV EKCertIndexECC under platform
// authorization. It returns the certificate.
func (s *SWTPM) ProvisionEKCertificate(t testing.TB, m *TPMManufacturer) *x509.Certificate {
	t.Helper()
	conn, err := s.Dial()
	if err != nil {
		t.Fatalf("connect to swtpm: %v", err)
	}
	defer conn.Close()
	tpm := transport.FromReadWriter(conn)
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.ECCEKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatalf("create the EK: %v", err)
	}
	defer tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(tpm)
	pub, err := ek.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	ekKey, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	cert := m.IssueEK(t, ekKey)
	der := cert.Raw
	nvPub := tpm2.TPMSNVPublic{
		NVIndex: EKCertIndexECC,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			PPWrite: true, WriteDefine: true, PPRead: true, OwnerRead: true, AuthRead: true,
			NoDA: true, PlatformCreate: true, NT: tpm2.TPMNTOrdinary,
		},
		DataSize: uint16(len(der)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHPlatform, PublicInfo: tpm2.New2B(nvPub)}).Execute(tpm); err != nil {
		t.Fatalf("define NV %#x: %v", EKCertIndexECC, err)
	}
	rp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(EKCertIndexECC)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(der); off += 512 {
		end := min(off+512, len(der))
		_, err := tpm2.NVWrite{
			AuthHandle: tpm2.TPMRHPlatform,
			NVIndex:    tpm2.NamedHandle{Handle: EKCertIndexECC, Name: rp.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: der[off:end]},
			Offset:     uint16(off),
		}.Execute(tpm)
		if err != nil {
			t.Fatalf("write NV %#x at %d: %v", EKCertIndexECC, off, err)
		}
	}
	return cert
}

// ManufacturedSWTPM is a swtpm whose state swtpm_setup made as a TPM
// vendor would, certificates by swtpm-localca (swtpm-tools).
type ManufacturedSWTPM struct {
	*SWTPM
	// Root is swtpm-localca's root CA, Issuer the local CA under it that
	// signed the EK certificates.
	Root, Issuer *x509.Certificate
}

// StartManufacturedSWTPM runs swtpm_setup --tpm2 --create-ek-cert
// --create-platform-cert on a fresh state directory, with swtpm-localca's
// CA in a directory of the test's (not the system's
// /var/lib/swtpm-localca), then starts swtpm on that state. The TPM has
// an RSA-2048 EK certificate at NV 0x01c00002 and an ECC P-384 one at
// 0x01c00016, and persistent EKs at 0x81010001 and 0x81010016.
func StartManufacturedSWTPM(t testing.TB) *ManufacturedSWTPM {
	t.Helper()
	setup := NeedProgram(t, "swtpm_setup")
	localca := NeedProgram(t, "swtpm_localca")
	dir := t.TempDir()
	state, ca := filepath.Join(dir, "state"), filepath.Join(dir, "localca")
	for _, d := range []string{state, ca} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"swtpm-localca.conf":    fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca),
		"swtpm-localca.options": "--platform-manufacturer Cradle\n--platform-version 2.1\n--platform-model test\n",
	}
	files["swtpm_setup.conf"] = fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
		localca, filepath.Join(dir, "swtpm-localca.conf"), filepath.Join(dir, "swtpm-localca.options"))
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	Run(t, setup, "--tpm2", "--tpmstate", state, "--config", filepath.Join(dir, "swtpm_setup.conf"),
		"--create-ek-cert", "--create-platform-cert", "--overwrite")
	m := &ManufacturedSWTPM{SWTPM: startSWTPM(t, state)}
	m.Root = readPEMCert(t, filepath.Join(ca, "swtpm-localca-rootca-cert.pem"))
	m.Issuer = readPEMCert(t, filepath.Join(ca, "issuercert.pem"))
	return m
}

func readPEMCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("swtpm-localca: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("swtpm-localca: %s holds no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("swtpm-localca: %s: %v", path, err)
	}
	return c
}
