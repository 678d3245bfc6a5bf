package pki_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/pki"
)

// attime is t0 plus a day as openssl's -attime argument.
var attime = strconv.FormatInt(t0.Add(24*time.Hour).Unix(), 10)

func TestInitHierarchy(t *testing.T) {
	for _, profile := range []string{pki.ProfileTest, pki.ProfileProduction} {
		t.Run(profile, func(t *testing.T) {
			p := sharedPKI(t, profile)
			h := p.h
			if got := h.Profile(); got != profile {
				t.Errorf("Profile() = %q", got)
			}
			type want struct {
				cert       *x509.Certificate
				issuer     *x509.Certificate
				ca         bool
				maxPathLen int // -1: none
				ku         x509.KeyUsage
				eku        []x509.ExtKeyUsage
			}
			caKU := x509.KeyUsageCertSign | x509.KeyUsageCRLSign
			certs := map[string]want{
				"root":                  {h.Root, h.Root, true, 1, x509.KeyUsageCertSign | x509.KeyUsageCRLSign, nil},
				"manufacturing-ca":      {h.ManufacturingCA, h.Root, true, 0, caKU, nil},
				"device-ca":             {h.DeviceCA(), h.Root, true, 0, caKU, nil},
				"server":                {h.Server, h.Root, false, -1, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
				"command-signer":        {h.CommandSigner, h.Root, false, -1, x509.KeyUsageDigitalSignature, nil},
				"release-signer":        {h.ReleaseSigner, h.Root, false, -1, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageCodeSigning}},
				"ocsp-manufacturing-ca": {h.OCSPSigners[pki.NameManufacturingCA], h.ManufacturingCA, false, -1, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}},
				"ocsp-device-ca":        {h.OCSPSigners[pki.NameDeviceCA], h.DeviceCA(), false, -1, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}},
			}
			for name, w := range certs {
				c := w.cert
				if c == nil {
					t.Errorf("%s: missing", name)
					continue
				}
				if err := c.CheckSignatureFrom(w.issuer); err != nil {
					t.Errorf("%s: not signed by %s: %v", name, w.issuer.Subject.CommonName, err)
				}
				if c.IsCA != w.ca || !c.BasicConstraintsValid {
					t.Errorf("%s: CA %v (basic constraints %v), want %v", name, c.IsCA, c.BasicConstraintsValid, w.ca)
				}
				if w.ca && (c.MaxPathLen != w.maxPathLen || (w.maxPathLen == 0 && !c.MaxPathLenZero)) {
					t.Errorf("%s: pathLen %d (zero %v), want %d", name, c.MaxPathLen, c.MaxPathLenZero, w.maxPathLen)
				}
				if c.KeyUsage != w.ku {
					t.Errorf("%s: key usage %b, want %b", name, c.KeyUsage, w.ku)
				}
				if !cmp.Equal(c.ExtKeyUsage, w.eku) {
					t.Errorf("%s: EKU %v, want %v", name, c.ExtKeyUsage, w.eku)
				}
				if len(c.SubjectKeyId) != 20 {
					t.Errorf("%s: subject key id %x", name, c.SubjectKeyId)
				}
				if c != h.Root && !bytes.Equal(c.AuthorityKeyId, w.issuer.SubjectKeyId) {
					t.Errorf("%s: authority key id %x, issuer's SKI %x", name, c.AuthorityKeyId, w.issuer.SubjectKeyId)
				}
				if got := pki.IsTestCertificate(c); got != (profile == pki.ProfileTest) {
					t.Errorf("%s: test mark %v in profile %s", name, got, profile)
				}
			}
			if u := h.CommandSigner.UnknownExtKeyUsage; len(u) != 1 || !u[0].Equal(pki.OIDCommandSigning) {
				t.Errorf("command signer EKU %v", h.CommandSigner.UnknownExtKeyUsage)
			}
			if !cmp.Equal(h.Server.DNSNames, []string{hostname}) || len(h.Server.IPAddresses) != 1 || h.Server.IPAddresses[0].String() != "127.0.0.1" {
				t.Errorf("server SANs %v %v", h.Server.DNSNames, h.Server.IPAddresses)
			}
			for _, ca := range []string{pki.NameManufacturingCA, pki.NameDeviceCA} {
				o := h.OCSPSigners[ca]
				if !hasExt(o, pki.OIDOCSPNoCheck) {
					t.Errorf("OCSP signer of %s lacks id-pkix-ocsp-nocheck", ca)
				}
				if got := o.NotAfter.Sub(o.NotBefore); got != pki.OCSPSignerLifetime {
					t.Errorf("OCSP signer of %s lives %v", ca, got)
				}
				if len(o.OCSPServer)+len(o.CRLDistributionPoints) != 0 {
					t.Errorf("OCSP signer of %s has AIA OCSP or CDP", ca)
				}
			}

			// openssl agrees: every leaf verifies to the root.
			root := writePEM(t, "root.pem", h.Root)
			for _, tc := range []struct {
				name    string
				leaf    *x509.Certificate
				inter   *x509.Certificate
				purpose string
			}{
				{"server", h.Server, nil, "sslserver"},
				{"command signer", h.CommandSigner, nil, "any"},
				{"release signer as an S/MIME signer (SWUpdate)", h.ReleaseSigner, nil, "smimesign"},
				{"manufacturing CA", h.ManufacturingCA, nil, "any"},
				{"device CA", h.DeviceCA(), nil, "any"},
				{"OCSP signer of manufacturing CA", h.OCSPSigners[pki.NameManufacturingCA], h.ManufacturingCA, "ocsphelper"},
				{"OCSP signer of device CA", h.OCSPSigners[pki.NameDeviceCA], h.DeviceCA(), "ocsphelper"},
			} {
				args := []string{"verify", "-attime", attime, "-CAfile", root, "-purpose", tc.purpose}
				if tc.inter != nil {
					args = append(args, "-untrusted", writePEM(t, "int.pem", tc.inter))
				}
				if out, ok := openssl(t, append(args, writePEM(t, "leaf.pem", tc.leaf))...); !ok {
					t.Errorf("openssl verify %s: %s", tc.name, out)
				}
			}
			text := opensslText(t, h.OCSPSigners[pki.NameDeviceCA])
			for _, want := range []string{"OCSP Signing", "OCSP No Check"} {
				if !strings.Contains(text, want) {
					t.Errorf("OCSP signer text lacks %q:\n%s", want, text)
				}
			}
			text = opensslText(t, h.DeviceCA())
			for _, want := range []string{"CA:TRUE, pathlen:0", "Certificate Sign, CRL Sign", "CA Issuers - URI:https://cradle.example.test/pki/ca/root.crt"} {
				if !strings.Contains(text, want) {
					t.Errorf("device CA text lacks %q:\n%s", want, text)
				}
			}
			if h.ReleaseSigner.Subject.CommonName != "Acme Devices Release Signer" || h.ReleaseSigner.NotAfter.Sub(h.ReleaseSigner.NotBefore) != pki.ReleaseSignerLifetime {
				t.Errorf("release signer %s, valid %s to %s", h.ReleaseSigner.Subject, h.ReleaseSigner.NotBefore, h.ReleaseSigner.NotAfter)
			}
			if profile == pki.ProfileTest && !strings.Contains(opensslText(t, h.Root), "Policy: 1.3.6.1.4.1.99999.1.1") {
				t.Error("test root lacks the test policy in openssl's view")
			}
		})
	}
}

func hasExt(c *x509.Certificate, id []int) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(id) {
			return true
		}
	}
	return false
}

func TestInitRefusals(t *testing.T) {
	ks := &keyStore{keys: map[string]crypto.Signer{}}
	good := pki.InitOptions{Profile: pki.ProfileTest, Org: "Acme", Hostnames: []string{"h"}, Keys: ks.get}
	tests := []struct {
		name string
		edit func(*pki.InitOptions)
		want string
	}{
		{"bad profile", func(o *pki.InitOptions) { o.Profile = "staging" }, `invalid profile "staging"`},
		{"no org", func(o *pki.InitOptions) { o.Org = "" }, "organization is required"},
		{"no hostname", func(o *pki.InitOptions) { o.Hostnames = nil }, "at least one hostname"},
		{"key source fails", func(o *pki.InitOptions) {
			o.Keys = func(name string) (crypto.Signer, error) {
				if name == pki.NameDeviceCA {
					return nil, errors.New("token not present")
				}
				return ks.get(name)
			}
		}, "key device-ca: token not present"},
		{"weak CA key", func(o *pki.InitOptions) {
			o.Keys = func(name string) (crypto.Signer, error) {
				if name == pki.NameManufacturingCA {
					return genKey("rsa1024")
				}
				return ks.get(name)
			}
		}, "RSA key of 1024 bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.edit(&o)
			_, err := pki.Init(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Init: %v, want %q", err, tt.want)
			}
		})
	}
}

func TestWriteLoadRotate(t *testing.T) {
	p := newPKI(t, pki.ProfileTest)
	old := p.issueLDevID(t, "SN-OLD", t0)

	later := t0.Add(30 * 24 * time.Hour)
	name, err := p.h.RotateDeviceCA(context.Background(), p.key(t, pki.NameRoot), p.keys.get, hostname, later)
	if err != nil {
		t.Fatal(err)
	}
	if name != "device-ca-2" || p.h.DeviceCAName() != name || len(p.h.DeviceCAs) != 2 {
		t.Fatalf("rotation made %q; current %q of %d", name, p.h.DeviceCAName(), len(p.h.DeviceCAs))
	}
	if p.h.OCSPSigners[name] == nil || p.h.OCSPSigners[name].CheckSignatureFrom(p.h.DeviceCA()) != nil {
		t.Error("no OCSP signer of the new device CA")
	}
	if !pki.IsTestCertificate(p.h.DeviceCA()) {
		t.Error("new device CA under a test root is not marked test")
	}
	fresh := p.issueLDevID(t, "SN-NEW", later)
	if fresh.CheckSignatureFrom(p.h.DeviceCA()) != nil || fresh.SignatureAlgorithm != x509.PureEd25519 {
		t.Errorf("renewal not issued by the new device CA (signature %v)", fresh.SignatureAlgorithm)
	}

	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.WriteHierarchy(dir, p.h); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	wantFiles := []string{"command-signer.crt", "device-ca-2.crt", "device-ca.crt", "manufacturing-ca.crt",
		"ocsp-device-ca-2.crt", "ocsp-device-ca.crt", "ocsp-manufacturing-ca.crt", "release-signer.crt", "root.crt", "server.crt"}
	if diff := cmp.Diff(wantFiles, files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	loaded, err := pki.LoadHierarchy(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw := func(h *pki.Hierarchy) map[string][]byte {
		m := map[string][]byte{"root": h.Root.Raw, "mca": h.ManufacturingCA.Raw, "server": h.Server.Raw, "cmd": h.CommandSigner.Raw, "rel": h.ReleaseSigner.Raw}
		for i, c := range h.DeviceCAs {
			m[pki.DeviceCAName(i)] = c.Raw
		}
		for k, c := range h.OCSPSigners {
			m["ocsp "+k] = c.Raw
		}
		return m
	}
	if diff := cmp.Diff(raw(p.h), raw(loaded)); diff != "" {
		t.Errorf("loaded hierarchy differs (-written +loaded):\n%s", diff)
	}

	// CACerts: current device CA, older ones, manufacturing CA, root.
	var got []string
	for _, c := range loaded.CACerts() {
		got = append(got, c.Subject.CommonName)
	}
	want := []string{"Acme Devices Device CA 2 (test)", "Acme Devices Device CA (test)", "Acme Devices Manufacturing CA (test)", "Acme Devices Root CA (test)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CACerts (-want +got):\n%s", diff)
	}

	// Old and new LDevIDs both verify with what cacerts serves, in Go and in openssl.
	inter := x509.NewCertPool()
	roots := x509.NewCertPool()
	for _, c := range loaded.CACerts() {
		if c.Equal(loaded.Root) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	for _, leaf := range []*x509.Certificate{old, fresh} {
		if _, err := pki.VerifyDeviceChain(leaf, inter, roots, false, later.Add(time.Hour)); err != nil {
			t.Errorf("%s: %v", leaf.Subject.CommonName, err)
		}
		if out, ok := openssl(t, "verify", "-attime", strconv.FormatInt(later.Add(time.Hour).Unix(), 10), "-CAfile", writePEM(t, "root.pem", loaded.Root),
			"-untrusted", writePEM(t, "int.pem", loaded.CACerts()[:3]...), writePEM(t, "leaf.pem", leaf)); !ok {
			t.Errorf("openssl verify %s: %s", leaf.Subject.CommonName, out)
		}
	}

	// Rewriting is atomic and leaves no temporary files.
	if err := pki.WriteHierarchy(dir, loaded); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != len(wantFiles) {
		t.Errorf("%d files after a rewrite, want %d", len(entries), len(wantFiles))
	}

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			edit func(dir string)
			want string
		}{
			{"missing OCSP signer", func(d string) { os.Remove(filepath.Join(d, "ocsp-device-ca-2.crt")) }, "ocsp-device-ca-2.crt"},
			{"missing root", func(d string) { os.Remove(filepath.Join(d, "root.crt")) }, "root.crt"},
			{"not PEM", func(d string) { os.WriteFile(filepath.Join(d, "server.crt"), []byte("junk"), 0o644) }, "server.crt: want exactly one PEM CERTIFICATE"},
			{"foreign CA", func(d string) {
				other := sharedPKI(t, pki.ProfileProduction)
				os.WriteFile(filepath.Join(d, "device-ca.crt"), pemOf(other.h.DeviceCA()), 0o644)
			}, "device-ca.crt is not signed by root.crt"},
			{"foreign release signer", func(d string) {
				other := sharedPKI(t, pki.ProfileProduction)
				os.WriteFile(filepath.Join(d, "release-signer.crt"), pemOf(other.h.ReleaseSigner), 0o644)
			}, "release-signer.crt is not signed by root.crt"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d := t.TempDir()
				if err := pki.WriteHierarchy(d, loaded); err != nil {
					t.Fatal(err)
				}
				tc.edit(d)
				if _, err := pki.LoadHierarchy(d); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("LoadHierarchy: %v, want %q", err, tc.want)
				}
			})
		}
	})
}

func TestVerifyDeviceChain(t *testing.T) {
	test, prod := sharedPKI(t, pki.ProfileTest), sharedPKI(t, pki.ProfileProduction)
	testLeaf, prodLeaf := test.issueLDevID(t, "SN-T", t0), prod.issueLDevID(t, "SN-P", t0)
	testIDevID := test.issueIDevID(t, "SN-T", t0)
	roots := pool(test.h.Root, prod.h.Root)
	inter := pool(test.h.DeviceCA(), prod.h.DeviceCA(), test.h.ManufacturingCA, prod.h.ManufacturingCA)
	now := t0.Add(time.Hour)
	tests := []struct {
		name       string
		leaf       *x509.Certificate
		production bool
		want       string
	}{
		{"test leaf, test server", testLeaf, false, ""},
		{"production leaf, production server", prodLeaf, true, ""},
		{"production leaf, test server", prodLeaf, false, ""},
		{"test leaf, production server", testLeaf, true, "certificate chains to a test root; this server runs the production profile"},
		{"test IDevID, production server", testIDevID, true, "certificate chains to a test root; this server runs the production profile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chains, err := pki.VerifyDeviceChain(tt.leaf, inter, roots, tt.production, now)
			if tt.want == "" {
				if err != nil || len(chains) == 0 {
					t.Errorf("VerifyDeviceChain: %v", err)
				}
				return
			}
			if err == nil || cradle.ErrorMessage(err) != tt.want || cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
				t.Errorf("VerifyDeviceChain: %v, want %s %q", err, cradle.EUNAUTHORIZED, tt.want)
			}
		})
	}
	t.Run("unknown issuer", func(t *testing.T) {
		_, err := pki.VerifyDeviceChain(testLeaf, nil, pool(prod.h.Root), false, now)
		if cradle.ErrorCode(err) != cradle.EUNAUTHORIZED || !strings.Contains(err.Error(), "does not verify") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("server certificate is not for client auth", func(t *testing.T) {
		_, err := pki.VerifyDeviceChain(prod.h.Server, nil, pool(prod.h.Root), true, now)
		if cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("CheckProfile", func(t *testing.T) {
		chain := []*x509.Certificate{testLeaf, test.h.DeviceCA(), test.h.Root}
		if err := pki.CheckProfile(chain, false); err != nil {
			t.Error(err)
		}
		if err := pki.CheckProfile(chain, true); cradle.ErrorMessage(err) != pki.ErrTestRoot {
			t.Errorf("CheckProfile production: %v", err)
		}
		if err := pki.CheckProfile([]*x509.Certificate{prodLeaf, prod.h.DeviceCA(), prod.h.Root}, true); err != nil {
			t.Error(err)
		}
	})
}

// TestAddReleaseSigner: a PKI written before the release signer existed
// loads without one and gets one later from the root key; a second is
// refused, and so is a key Mender cannot verify.
func TestAddReleaseSigner(t *testing.T) {
	p := newPKI(t, pki.ProfileTest)
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.WriteHierarchy(dir, p.h); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "release-signer.crt")); err != nil {
		t.Fatal(err)
	}
	old, err := pki.LoadHierarchy(dir)
	if err != nil {
		t.Fatalf("a PKI without a release signer: %v", err)
	}
	if old.ReleaseSigner != nil {
		t.Fatal("a release signer from nowhere")
	}
	root := p.key(t, pki.NameRoot)
	err = old.AddReleaseSigner(context.Background(), root, mustKey(t, "ed25519").Public(), hostname, t0)
	if err == nil || !strings.Contains(err.Error(), "must be ECDSA P-256 or RSA") || old.ReleaseSigner != nil {
		t.Fatalf("Ed25519 release signer: %v", err)
	}
	if err := old.AddReleaseSigner(context.Background(), root, mustKey(t, "p384").Public(), hostname, t0); err == nil {
		t.Fatal("a P-384 release signer was issued")
	}
	key := mustKey(t, "p256")
	if err := old.AddReleaseSigner(context.Background(), root, key.Public(), hostname, t0); err != nil {
		t.Fatal(err)
	}
	if err := old.ReleaseSigner.CheckSignatureFrom(old.Root); err != nil || !pki.IsTestCertificate(old.ReleaseSigner) {
		t.Fatalf("release signer not under the test root: %v", err)
	}
	if _, err := old.ReleaseSigner.Verify(x509.VerifyOptions{Roots: pool(old.ReleaseSignerCAs()...), CurrentTime: t0.Add(time.Hour),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
		t.Errorf("release signer does not verify for emailProtection: %v", err)
	}
	err = old.AddReleaseSigner(context.Background(), root, key.Public(), hostname, t0)
	if cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("second release signer: %v", err)
	}
	if err := pki.WriteHierarchy(dir, old); err != nil {
		t.Fatal(err)
	}
	loaded, err := pki.LoadHierarchy(dir)
	if err != nil || loaded.ReleaseSigner == nil || !loaded.ReleaseSigner.Equal(old.ReleaseSigner) {
		t.Fatalf("reloaded: %v", err)
	}
}
