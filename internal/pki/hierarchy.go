package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"cradle/internal/atomicfile"

	"cradle"
)

// Names of the hierarchy's keys and certificates. A KeyFunc is asked for
// each key by these names; WriteHierarchy writes <name>.crt for each
// certificate. A rotated device CA N (N ≥ 2) is "device-ca-N", and each
// CA that issues device certificates has an OCSP signer "ocsp-<ca name>".
const (
	NameRoot            = "root"
	NameManufacturingCA = "manufacturing-ca"
	NameDeviceCA        = "device-ca"
	NameServer          = "server"
	NameCommandSigner   = "command-signer"
	NameReleaseSigner   = "release-signer"
	OCSPNamePrefix      = "ocsp-"
)

// Default lifetimes of the hierarchy's certificates.
const (
	RootLifetime          = 25 * 365 * 24 * time.Hour
	ManufacturingLifetime = 20 * 365 * 24 * time.Hour
	DeviceCALifetime      = 5 * 365 * 24 * time.Hour
	ServerLifetime        = 397 * 24 * time.Hour
	CommandSignerLifetime = 2 * 365 * 24 * time.Hour
	OCSPSignerLifetime    = 180 * 24 * time.Hour
	ReleaseSignerLifetime = 5 * 365 * 24 * time.Hour
)

// KeyFunc returns the signer of the key called name (see NameRoot …),
// creating it if the back end does so. It is how Init reaches the file or
// PKCS#11 key store without this package knowing which.
type KeyFunc func(name string) (crypto.Signer, error)

// InitOptions configures Init.
type InitOptions struct {
	// Profile is ProfileTest or ProfileProduction.
	Profile string
	// Org is the organization in every subject; required.
	Org string
	// Hostnames are the DNS names and IP addresses of the device-facing
	// listener, written in the server certificate; at least one.
	Hostnames []string
	// URLHost is host[:port] in the caIssuers URLs of the CA and server
	// certificates (see URLs); "" means Hostnames[0].
	URLHost string
	// Keys supplies every key; required.
	Keys KeyFunc
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Hierarchy holds the certificates (never the keys) of a Cradle PKI.
type Hierarchy struct {
	Root            *x509.Certificate
	ManufacturingCA *x509.Certificate
	// DeviceCAs are oldest first; the last one is current and issues new
	// LDevIDs. Index i is named DeviceCAName(i).
	DeviceCAs     []*x509.Certificate
	Server        *x509.Certificate
	CommandSigner *x509.Certificate
	// OCSPSigners maps a CA name (NameManufacturingCA, DeviceCAName(i))
	// to its delegated OCSP signer.
	OCSPSigners map[string]*x509.Certificate
	// ReleaseSigner signs Mender artifacts and SWUpdate images (see
	// ReleaseSigner the profile); nil in a PKI made before it existed,
	// until AddReleaseSigner.
	ReleaseSigner *x509.Certificate
	// Retired maps the names of retired device CAs to when they were
	// retired (RetireDeviceCA); nil when none is. A running server
	// replaces it under retiredMu (ReloadRetired): read it through
	// IsRetired and the other methods, not directly, once the hierarchy
	// is shared.
	Retired map[string]time.Time
	// retiredMu guards Retired, which is replaced, never changed in
	// place, once set.
	retiredMu sync.RWMutex
}

// DeviceCAName is the name of the i-th device CA (0-based): "device-ca",
// then "device-ca-2", "device-ca-3" ….
func DeviceCAName(i int) string {
	if i == 0 {
		return NameDeviceCA
	}
	return NameDeviceCA + "-" + strconv.Itoa(i+1)
}

// DeviceCA returns the current device CA.
func (h *Hierarchy) DeviceCA() *x509.Certificate { return h.DeviceCAs[len(h.DeviceCAs)-1] }

// DeviceCAName returns the name of the current device CA.
func (h *Hierarchy) DeviceCAName() string { return DeviceCAName(len(h.DeviceCAs) - 1) }

// Profile returns the profile of the hierarchy, read from its root.
func (h *Hierarchy) Profile() string { return Profile(h.Root) }

// IssuingCAs returns the CAs that issue device certificates by name: the
// manufacturing CA and every device CA.
func (h *Hierarchy) IssuingCAs() map[string]*x509.Certificate {
	m := map[string]*x509.Certificate{NameManufacturingCA: h.ManufacturingCA}
	for i, c := range h.DeviceCAs {
		m[DeviceCAName(i)] = c
	}
	return m
}

// CACerts returns what EST /cacerts serves: the current device CA first
// (the issuer of what enrollment returns), then older device CAs newest
// first (their LDevIDs stay valid until they expire; retired ones are
// left out), the manufacturing
// CA, and the root last. A client that installs them all can verify every
// device certificate the deployment has issued and the server's own.
func (h *Hierarchy) CACerts() []*x509.Certificate {
	out := h.activeDeviceCAs()
	return append(out, h.ManufacturingCA, h.Root)
}

// Init creates a hierarchy: root, manufacturing CA, device CA, server TLS
// certificate, command signer, release signer, and one OCSP signer for
// each of the two issuing CAs, asking opts.Keys for the keys named
// NameRoot, NameManufacturingCA, NameDeviceCA, NameServer,
// NameCommandSigner, NameReleaseSigner (ECDSA P-256 or RSA: what Mender
// verifies), "ocsp-manufacturing-ca" and "ocsp-device-ca". Every key must pass
// KeyPolicy. A test profile marks the root with OIDTestPolicy, and so
// every certificate under it.
//
// Root: self-signed, RootLifetime, pathLen 1, keyCertSign and cRLSign.
// CAs: pathLen 0, keyCertSign and cRLSign only, caIssuers pointing at
// root.crt. Not digitalSignature: OpenSSL's S/MIME purpose check accepts a
// CA certificate without EKU that has it, so an online issuing CA could
// otherwise sign .swu images that devices trusting the root install. Server: ServerTLS profile. Command signer:
// CommandSigner profile. Release signer: ReleaseSigner profile. OCSP
// signers: OCSPSigner profile. Subject and
// authority key identifiers are set on all.
//
// Errors: EINVALID for bad options; a KeyFunc or signer failure wrapped.
func Init(ctx context.Context, opts InitOptions) (*Hierarchy, error) {
	if err := checkProfileName(opts.Profile); err != nil {
		return nil, err
	}
	if opts.Org == "" {
		return nil, cradle.Errorf(cradle.EINVALID, "pki init: organization is required")
	}
	if len(opts.Hostnames) == 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "pki init: at least one hostname of the device-facing listener is required")
	}
	if opts.Keys == nil {
		return nil, errors.New("pki: init: no key source")
	}
	now := time.Now()
	if opts.Now != nil {
		now = opts.Now()
	}
	now = now.UTC().Truncate(time.Second)
	host := opts.URLHost
	if host == "" {
		host = opts.Hostnames[0]
	}
	key := func(name string) (crypto.Signer, error) {
		s, err := opts.Keys(name)
		if err != nil {
			return nil, fmt.Errorf("pki: key %s: %w", name, err)
		}
		if s == nil {
			return nil, fmt.Errorf("pki: key %s: the key source returned no signer", name)
		}
		return s, nil
	}

	rootKey, err := key(NameRoot)
	if err != nil {
		return nil, err
	}
	suffix := ""
	if opts.Profile == ProfileTest {
		suffix = " (test)"
	}
	rootOpts := []Option{KeyPolicy()}
	if opts.Profile == ProfileTest {
		rootOpts = append(rootOpts, MarkTest())
	}
	root, err := Issue(ctx, nil, rootKey, rootKey.Public(), &x509.Certificate{
		Subject:               pkix.Name{CommonName: opts.Org + " Root CA" + suffix, Organization: []string{opts.Org}},
		NotBefore:             now,
		NotAfter:              now.Add(RootLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, rootOpts...)
	if err != nil {
		return nil, err
	}
	h := &Hierarchy{Root: root, OCSPSigners: map[string]*x509.Certificate{}}
	rootURL := Distribution{IssuingCertificate: URLs(host, NameRoot).IssuingCertificate}

	h.ManufacturingCA, err = issueCA(ctx, root, rootKey, key, NameManufacturingCA, opts.Org+" Manufacturing CA"+suffix, now, ManufacturingLifetime, rootURL)
	if err != nil {
		return nil, err
	}
	dca, err := issueCA(ctx, root, rootKey, key, NameDeviceCA, opts.Org+" Device CA"+suffix, now, DeviceCALifetime, rootURL)
	if err != nil {
		return nil, err
	}
	h.DeviceCAs = []*x509.Certificate{dca}

	serverKey, err := key(NameServer)
	if err != nil {
		return nil, err
	}
	h.Server, err = Issue(ctx, root, rootKey, serverKey.Public(), &x509.Certificate{},
		append(ServerTLS(opts.Org, opts.Hostnames, now, ServerLifetime), KeyPolicy(), rootURL)...)
	if err != nil {
		return nil, err
	}
	cmdKey, err := key(NameCommandSigner)
	if err != nil {
		return nil, err
	}
	h.CommandSigner, err = Issue(ctx, root, rootKey, cmdKey.Public(), &x509.Certificate{},
		append(CommandSigner(opts.Org, now, CommandSignerLifetime), KeyPolicy(), rootURL)...)
	if err != nil {
		return nil, err
	}
	relKey, err := key(NameReleaseSigner)
	if err != nil {
		return nil, err
	}
	if err := h.AddReleaseSigner(ctx, rootKey, relKey.Public(), host, now); err != nil {
		return nil, err
	}
	for _, ca := range []string{NameManufacturingCA, NameDeviceCA} {
		if err := h.issueOCSPSigner(ctx, ca, key, now); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// AddReleaseSigner issues the release signer's certificate for pub under
// the root, signed with rootKey (ReleaseSigner profile, ReleaseSignerLifetime,
// caIssuers at urlHost as InitOptions.URLHost), and sets h.ReleaseSigner.
// A hierarchy that has one already is refused with ECONFLICT: the old
// certificate may still be what devices' updates are signed with. h is
// changed only on success.
func (h *Hierarchy) AddReleaseSigner(ctx context.Context, rootKey crypto.Signer, pub crypto.PublicKey, urlHost string, now time.Time) error {
	if h.ReleaseSigner != nil {
		return cradle.Errorf(cradle.ECONFLICT, "pki: the PKI has a release signer already (%s, valid until %s)", h.ReleaseSigner.Subject, h.ReleaseSigner.NotAfter.UTC().Format(time.DateOnly))
	}
	org := ""
	if len(h.Root.Subject.Organization) > 0 {
		org = h.Root.Subject.Organization[0]
	}
	c, err := Issue(ctx, h.Root, rootKey, pub, &x509.Certificate{},
		append(ReleaseSigner(org, now, ReleaseSignerLifetime), KeyPolicy(),
			Distribution{IssuingCertificate: URLs(urlHost, NameRoot).IssuingCertificate})...)
	if err != nil {
		return err
	}
	h.ReleaseSigner = c
	return nil
}

// ReleaseSignerCAs returns the certificates a device trusts release
// signatures with (SWUpdate's -k file): the root, which issued the release
// signer.
func (h *Hierarchy) ReleaseSignerCAs() []*x509.Certificate { return []*x509.Certificate{h.Root} }

func issueCA(ctx context.Context, root *x509.Certificate, rootKey crypto.Signer, key KeyFunc, name, cn string, now time.Time, life time.Duration, d Distribution) (*x509.Certificate, error) {
	k, err := key(name)
	if err != nil {
		return nil, err
	}
	return Issue(ctx, root, rootKey, k.Public(), &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: root.Subject.Organization},
		NotBefore:             now,
		NotAfter:              now.Add(life),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, KeyPolicy(), d)
}

// issueOCSPSigner issues the OCSP signer of CA caName with that CA's key.
func (h *Hierarchy) issueOCSPSigner(ctx context.Context, caName string, key KeyFunc, now time.Time) error {
	ca := h.IssuingCAs()[caName]
	caKey, err := key(caName)
	if err != nil {
		return err
	}
	k, err := key(OCSPNamePrefix + caName)
	if err != nil {
		return err
	}
	c, err := Issue(ctx, ca, caKey, k.Public(), &x509.Certificate{}, append(OCSPSigner(now, OCSPSignerLifetime), KeyPolicy())...)
	if err != nil {
		return err
	}
	h.OCSPSigners[caName] = c
	return nil
}

// RotateDeviceCA adds a new device CA under the same root, signed with
// rootKey, and its OCSP signer; keys is asked for DeviceCAName(n) and
// "ocsp-"+DeviceCAName(n). The new CA becomes current (issues new
// LDevIDs); the old ones stay in DeviceCAs, so their certificates verify
// until they expire and CACerts serves them all. urlHost is as
// InitOptions.URLHost. It returns the new CA's name. h is changed only on
// success.
func (h *Hierarchy) RotateDeviceCA(ctx context.Context, rootKey crypto.Signer, keys KeyFunc, urlHost string, now time.Time) (string, error) {
	now = now.UTC().Truncate(time.Second)
	name := DeviceCAName(len(h.DeviceCAs))
	key := func(n string) (crypto.Signer, error) {
		s, err := keys(n)
		if err != nil {
			return nil, fmt.Errorf("pki: key %s: %w", n, err)
		}
		if s == nil {
			return nil, fmt.Errorf("pki: key %s: the key source returned no signer", n)
		}
		return s, nil
	}
	suffix := ""
	if IsTestCertificate(h.Root) {
		suffix = " (test)"
	}
	org := ""
	if len(h.Root.Subject.Organization) > 0 {
		org = h.Root.Subject.Organization[0]
	}
	cn := org + " Device CA " + strconv.Itoa(len(h.DeviceCAs)+1) + suffix
	ca, err := issueCA(ctx, h.Root, rootKey, key, name, cn, now, DeviceCALifetime,
		Distribution{IssuingCertificate: URLs(urlHost, NameRoot).IssuingCertificate})
	if err != nil {
		return "", err
	}
	next := &Hierarchy{Root: h.Root, ManufacturingCA: h.ManufacturingCA, DeviceCAs: append(slices.Clip(h.DeviceCAs), ca),
		Server: h.Server, CommandSigner: h.CommandSigner, ReleaseSigner: h.ReleaseSigner, OCSPSigners: map[string]*x509.Certificate{},
		Retired: h.retired()}
	for k, v := range h.OCSPSigners {
		next.OCSPSigners[k] = v
	}
	if err := next.issueOCSPSigner(ctx, name, key, now); err != nil {
		return "", err
	}
	// Field by field: h holds a lock. Rotation is offline (the CLI's);
	// a server picks the new CA up at its next start.
	h.DeviceCAs, h.OCSPSigners = next.DeviceCAs, next.OCSPSigners
	return name, nil
}

// ServerTLS is the profile of the device-facing listener's certificate:
// CN the first hostname, O org, DNS and IP SANs from hostnames,
// keyUsage digitalSignature, extKeyUsage serverAuth, valid from now for
// life.
func ServerTLS(org string, hostnames []string, now time.Time, life time.Duration) []Option {
	return []Option{ModifyCertificateFunc("server-tls", func(t, _ *x509.Certificate) error {
		if len(hostnames) == 0 {
			return errors.New("no hostname")
		}
		t.Subject = pkix.Name{CommonName: hostnames[0], Organization: []string{org}}
		t.DNSNames, t.IPAddresses = nil, nil
		for _, h := range hostnames {
			if ip := net.ParseIP(h); ip != nil {
				t.IPAddresses = append(t.IPAddresses, ip)
			} else if h != "" {
				t.DNSNames = append(t.DNSNames, h)
			} else {
				return errors.New("empty hostname")
			}
		}
		setLeaf(t, now, life, x509.KeyUsageDigitalSignature)
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		return nil
	})}
}

// CommandSigner is the profile of the key that signs lifecycle commands
// to devices: CN "<org> Command Signer", keyUsage digitalSignature
// (critical), extended key usage OIDCommandSigning only, so that the
// certificate is good for nothing else (not TLS, not code signing).
// Devices verify a command's signature with this certificate, chained to
// the root they trust.
func CommandSigner(org string, now time.Time, life time.Duration) []Option {
	return []Option{ModifyCertificateFunc("command-signer", func(t, _ *x509.Certificate) error {
		t.Subject = pkix.Name{CommonName: org + " Command Signer", Organization: []string{org}}
		setLeaf(t, now, life, x509.KeyUsageDigitalSignature)
		t.ExtKeyUsage = nil
		t.UnknownExtKeyUsage = []asn1.ObjectIdentifier{OIDCommandSigning}
		return nil
	})}
}

// OCSPSigner is the profile of a delegated OCSP responder certificate
// (RFC 6960 §4.2.2.2): issued by the CA whose certificates it answers
// for, CN "<issuer CN> OCSP Signer", keyUsage digitalSignature,
// extKeyUsage OCSPSigning, id-pkix-ocsp-nocheck (so clients do not ask
// about the responder itself; hence the short life), no AIA or CRL
// distribution point. Renew it with Issue and this profile before it
// expires.
func OCSPSigner(now time.Time, life time.Duration) []Option {
	return []Option{ModifyCertificateFunc("ocsp-signer", func(t, issuer *x509.Certificate) error {
		if issuer == nil {
			return errors.New("an OCSP signer must be issued by a CA")
		}
		t.Subject = pkix.Name{CommonName: issuer.Subject.CommonName + " OCSP Signer", Organization: issuer.Subject.Organization}
		setLeaf(t, now, life, x509.KeyUsageDigitalSignature)
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
		t.ExtraExtensions = append(t.ExtraExtensions, pkix.Extension{Id: OIDOCSPNoCheck, Value: []byte{0x05, 0x00}})
		t.OCSPServer, t.CRLDistributionPoints, t.IssuingCertificateURL = nil, nil, nil
		return nil
	})}
}

// ReleaseSigner is the profile of the key that signs releases in the
// formats of other update clients: a Mender artifact's manifest.sig and a
// SWUpdate image's sw-description.sig (CMS). CN "<org> Release Signer",
// keyUsage digitalSignature (critical), extended key usages
// emailProtection (what SWUpdate checks, as an S/MIME signer) and
// codeSigning. The key must be ECDSA P-256 or RSA, the only kinds
// mender-artifact verifies (RuleReleaseSigner).
func ReleaseSigner(org string, now time.Time, life time.Duration) []Option {
	return []Option{
		ValidateKeyFunc(RuleReleaseSigner, func(pub crypto.PublicKey) error {
			switch k := pub.(type) {
			case *ecdsa.PublicKey:
				if k.Curve == elliptic.P256() {
					return nil
				}
			case *rsa.PublicKey:
				return nil
			}
			return fmt.Errorf("a release signer key must be ECDSA P-256 or RSA (what Mender clients verify), not %s", keyKind(pub))
		}),
		ModifyCertificateFunc(RuleReleaseSigner, func(t, _ *x509.Certificate) error {
			t.Subject = pkix.Name{CommonName: org + " Release Signer", Organization: []string{org}}
			setLeaf(t, now, life, x509.KeyUsageDigitalSignature)
			t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageCodeSigning}
			t.UnknownExtKeyUsage = nil
			return nil
		}),
	}
}

// keyKind names a public key's type for a person.
func keyKind(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + curveName(k.Curve)
	case *rsa.PublicKey:
		return "RSA"
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

func setLeaf(t *x509.Certificate, now time.Time, life time.Duration, ku x509.KeyUsage) {
	t.NotBefore = now.UTC().Truncate(time.Second)
	t.NotAfter = t.NotBefore.Add(life)
	t.KeyUsage = ku
	t.IsCA, t.BasicConstraintsValid = false, true
}

// WriteHierarchy writes h's certificates to dir as PEM, one file each:
//
//	root.crt  manufacturing-ca.crt  device-ca.crt [device-ca-2.crt …]
//	server.crt  command-signer.crt  [release-signer.crt]
//	ocsp-manufacturing-ca.crt  ocsp-device-ca.crt [ocsp-device-ca-2.crt …]
//
// Each file is written atomically (a temporary file in dir, synced, then
// renamed), mode 0644; dir is created (0755) if needed. Keys are never
// written here.
func WriteHierarchy(dir string, h *Hierarchy) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pki: write hierarchy: %w", err)
	}
	for name, c := range h.files() {
		if c == nil {
			return fmt.Errorf("pki: write hierarchy: no certificate for %s", name)
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644); err != nil {
			return fmt.Errorf("pki: write hierarchy: %w", err)
		}
	}
	if err := writeRetired(dir, h); err != nil {
		return fmt.Errorf("pki: write hierarchy: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the renames are durable once the directory is synced; not every file system supports it
		d.Close()
	}
	return nil
}

func (h *Hierarchy) files() map[string]*x509.Certificate {
	m := map[string]*x509.Certificate{
		NameRoot: h.Root, NameManufacturingCA: h.ManufacturingCA,
		NameServer: h.Server, NameCommandSigner: h.CommandSigner,
	}
	for i, c := range h.DeviceCAs {
		m[DeviceCAName(i)] = c
	}
	for ca := range h.IssuingCAs() {
		m[OCSPNamePrefix+ca] = h.OCSPSigners[ca]
	}
	if h.ReleaseSigner != nil {
		m[NameReleaseSigner] = h.ReleaseSigner
	}
	return m
}

// LoadHierarchy reads a hierarchy that WriteHierarchy wrote. Device CAs
// are read as device-ca.crt, device-ca-2.crt … up to the first missing
// number; release-signer.crt is read when present (PKIs made before it
// lack it). Every file must hold exactly one certificate, every CA and leaf
// must be signed by its issuer (the root, or for OCSP signers their CA),
// and every issuing CA needs its OCSP signer. A missing or bad file is an
// error naming it.
func LoadHierarchy(dir string) (*Hierarchy, error) {
	read := func(name string) (*x509.Certificate, error) {
		path := filepath.Join(dir, name+".crt")
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("pki: load hierarchy: %w", err)
		}
		blk, rest := pem.Decode(b)
		if blk == nil || blk.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) > 0 {
			return nil, fmt.Errorf("pki: load hierarchy: %s: want exactly one PEM CERTIFICATE", path)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: load hierarchy: %s: %w", path, err)
		}
		return c, nil
	}
	h := &Hierarchy{OCSPSigners: map[string]*x509.Certificate{}}
	var err error
	if h.Root, err = read(NameRoot); err != nil {
		return nil, err
	}
	if err := h.Root.CheckSignatureFrom(h.Root); err != nil {
		return nil, fmt.Errorf("pki: load hierarchy: root.crt is not a self-signed CA: %w", err)
	}
	fromRoot := func(name string) (*x509.Certificate, error) {
		c, err := read(name)
		if err != nil {
			return nil, err
		}
		if err := c.CheckSignatureFrom(h.Root); err != nil {
			return nil, fmt.Errorf("pki: load hierarchy: %s.crt is not signed by root.crt: %w", name, err)
		}
		return c, nil
	}
	if h.ManufacturingCA, err = fromRoot(NameManufacturingCA); err != nil {
		return nil, err
	}
	if h.Server, err = fromRoot(NameServer); err != nil {
		return nil, err
	}
	if h.CommandSigner, err = fromRoot(NameCommandSigner); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, NameReleaseSigner+".crt")); !errors.Is(err, fs.ErrNotExist) {
		if h.ReleaseSigner, err = fromRoot(NameReleaseSigner); err != nil {
			return nil, err
		}
	}
	for i := 0; ; i++ {
		name := DeviceCAName(i)
		if i > 0 {
			if _, err := os.Stat(filepath.Join(dir, name+".crt")); errors.Is(err, fs.ErrNotExist) {
				break
			}
		}
		c, err := fromRoot(name)
		if err != nil {
			return nil, err
		}
		h.DeviceCAs = append(h.DeviceCAs, c)
	}
	for name, ca := range h.IssuingCAs() {
		c, err := read(OCSPNamePrefix + name)
		if err != nil {
			return nil, err
		}
		if err := ca.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
			return nil, fmt.Errorf("pki: load hierarchy: %s%s.crt is not signed by %s.crt: %w", OCSPNamePrefix, name, name, err)
		}
		h.OCSPSigners[name] = c
	}
	if err := readRetired(dir, h); err != nil {
		return nil, err
	}
	return h, nil
}
