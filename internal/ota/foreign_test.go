package ota_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/compat/menderartifact"
	"cradle/internal/compat/swu"
	"cradle/internal/ota"
	"cradle/internal/testkit"
)

// menderFile is a whole Mender artifact made by menderartifact.Write: one
// single-file payload holding content, for deviceTypes, compressed with
// comp, signed by signer unless it is nil.
func menderFile(t testing.TB, deviceTypes []string, comp string, content []byte, signer crypto.Signer) []byte {
	t.Helper()
	var b bytes.Buffer
	spec := menderartifact.Spec{
		Name: "app-1", DeviceTypes: deviceTypes, PayloadType: "single-file", Compression: comp,
		Provides: map[string]string{"rootfs-image.single-file.version": "1"}, TempDir: t.TempDir(),
	}
	files := []menderartifact.Source{{Name: "app.bin", Size: int64(len(content)), R: bytes.NewReader(content)}}
	if err := menderartifact.Write(&b, spec, files, signer); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// swuSigner is a self-signed certificate with the extended key usage
// SWUpdate checks, and its key.
func swuSigner(t testing.TB) swu.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "swu signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return swu.Signer{Cert: cert, Key: key}
}

// swuFile is a whole signed .swu made by swu.Write, with one raw image
// holding content and the given hardware-compatibility.
func swuFile(t testing.TB, signer swu.Signer, compat []string, content []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	spec := swu.Spec{Version: "1.0", HardwareCompatibility: compat}
	payloads := []swu.Source{{Entry: swu.Entry{Filename: "rootfs.ext4", Type: "raw", Device: "/dev/mmcblk0p2"}, Data: bytes.NewReader(content), Size: int64(len(content))}}
	if err := swu.Write(&b, spec, payloads, signer); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// flip returns a copy of b with one byte of the first occurrence of
// marker changed.
func flip(t *testing.T, b []byte, marker string) []byte {
	t.Helper()
	i := bytes.Index(b, []byte(marker))
	if i < 0 {
		t.Fatalf("marker %q not in the artifact", marker)
	}
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// TestUploadForeignArtifacts: well-formed Mender artifacts and SWUpdate
// images made by the compat packages' Write are parsed whole and
// recorded, signed or not, under every compression.
func TestUploadForeignArtifacts(t *testing.T) {
	e := newEnv(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer := swuSigner(t)
	payload := bytes.Repeat([]byte("application "), 4000)
	for _, tt := range []struct {
		name    string
		version string
		revs    []string
		body    []byte
		want    cradle.ReleaseKind
		kind    cradle.ReleaseKind // declared; "" lets the publisher recognise it
	}{
		{"mender gzip unsigned", "1.0.0", nil, menderFile(t, []string{"gw-a"}, "gzip", payload, nil), cradle.ReleaseMender, ""},
		{"mender xz signed, two device types", "1.0.1", nil, menderFile(t, []string{"gw-b", "gw-a"}, "xz", payload, key), cradle.ReleaseMender, cradle.ReleaseMender},
		{"mender none", "1.0.2", []string{"1.0"}, menderFile(t, []string{"gw-a"}, "none", payload, nil), cradle.ReleaseMender, ""},
		{"swu without hardware-compatibility", "2.0.0", []string{"1.0"}, swuFile(t, signer, nil, payload), cradle.ReleaseSWUpdate, ""},
		{"swu listing the revisions", "2.0.1", []string{"1.0", "2.3"}, swuFile(t, signer, []string{"1.0", `#RE:^2\.[0-9]$`}, payload), cradle.ReleaseSWUpdate, cradle.ReleaseSWUpdate},
		{"swu for some revisions, release for all", "2.0.2", nil, swuFile(t, signer, []string{"1.0"}, payload), cradle.ReleaseSWUpdate, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := upload("gw-a", tt.version, tt.body)
			u.Kind, u.HardwareRevisions = tt.kind, tt.revs
			r, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != tt.want || r.Size != int64(len(tt.body)) || r.State != cradle.ReleaseUploaded {
				t.Fatalf("release %+v, want an uploaded %s of %d bytes", r, tt.want, len(tt.body))
			}
		})
	}
}

// TestUploadForeignRefusals: a malformed artifact, or one for another
// device type or hardware revision, is refused with the reason and makes
// no release record.
func TestUploadForeignRefusals(t *testing.T) {
	e := newEnv(t)
	signer := swuSigner(t)
	payload := []byte(strings.Repeat("PAYLOAD-MARKER ", 100))
	mender := menderFile(t, []string{"gw-a"}, "none", payload, nil)
	good := swuFile(t, signer, []string{"1.0"}, payload)
	for _, tt := range []struct {
		name string
		revs []string
		body []byte
		code string
		want string
	}{
		{"mender for another device type", nil, menderFile(t, []string{"gw-b", "gw-c"}, "gzip", payload, nil), cradle.EINVALID,
			"the Mender artifact is for device types [gw-b, gw-c], not model gw-a"},
		{"mender payload changed", nil, flip(t, mender, "PAYLOAD-MARKER"), cradle.EINVALID, "mender artifact: "},
		{"mender manifest changed", nil, flip(t, mender, "data/0000/app.bin"), cradle.EINVALID, "mender artifact: "},
		{"mender cut short", nil, mender[:len(mender)*2/3], cradle.EINVALID, "mender artifact: "},
		{"swu payload changed", nil, flip(t, good, "PAYLOAD-MARKER"), cradle.EINVALID, "swu: "},
		{"swu payload not in sw-description", nil, swuImage("070701", "sw-description"), cradle.EINVALID, `"rootfs.ext4.gz"`},
		{"swu for another revision", []string{"1.0", "2.0"}, good, cradle.EINVALID,
			"hardware-compatibility [1.0] does not list the release's hardware revision(s) 2.0"},
		{"swu with a bad regular expression", nil, swuFile(t, signer, []string{"#RE:1.(0"}, payload), cradle.EINVALID, `"#RE:1.(0" is not a regular expression`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := upload("gw-a", "1.0.0", tt.body)
			u.HardwareRevisions = tt.revs
			_, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(tt.body))
			if cradle.ErrorCode(err) != tt.code || !strings.Contains(cradle.ErrorMessage(err), tt.want) {
				t.Fatalf("err = %v, want %s containing %q", err, tt.code, tt.want)
			}
			t.Log(err)
			list, err := e.releases.FindReleases(e.admin, cradle.ReleaseFilter{})
			if err != nil || len(list) != 0 {
				t.Fatalf("a refused upload made %d records (%v)", len(list), err)
			}
		})
	}
	// The same bytes under a valid description are accepted afterwards.
	u := upload("gw-a", "1.0.0", good)
	u.HardwareRevisions = []string{"1.0"}
	if _, err := e.pub.UploadRelease(e.admin, u, bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
}

// TestUploadMenderToolArtifact: an artifact written by Debian's
// mender-artifact is accepted for its device type and refused for
// another model.
func TestUploadMenderToolArtifact(t *testing.T) {
	tool := testkit.NeedProgram(t, "mender-artifact")
	e := newEnv(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "app.conf"), filepath.Join(dir, "app.mender")
	if err := os.WriteFile(in, []byte("answer=42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool, "write", "module-image", "-T", "single-file", "-n", "app-7", "-t", "gw-tool", "-f", in, "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mender-artifact write: %v\n%s", err, b)
	}
	body, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.pub.UploadRelease(e.admin, upload("gw-other", "7.0.0", body), bytes.NewReader(body))
	if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), "is for device types [gw-tool], not model gw-other") {
		t.Fatalf("wrong model: %v", err)
	}
	r, err := e.pub.UploadRelease(e.admin, upload("gw-tool", "7.0.0", body), bytes.NewReader(body))
	if err != nil || r.Kind != cradle.ReleaseMender {
		t.Fatalf("tool artifact: %+v %v", r, err)
	}
}

func TestCheckHardwareCompatibility(t *testing.T) {
	for _, tt := range []struct {
		name   string
		compat []string
		revs   []string
		want   string // "" means accepted
	}{
		{"no list", nil, []string{"1.0"}, ""},
		{"release for all revisions", []string{"1.0"}, nil, ""},
		{"listed", []string{"1.0", "1.1"}, []string{"1.1", "1.0"}, ""},
		{"not listed", []string{"1.0"}, []string{"1.0", "1.1", "2"}, "revision(s) 1.1, 2"},
		{"exact, not a prefix", []string{"1.0"}, []string{"1.0.1"}, "1.0.1"},
		{"regular expression", []string{`#RE:^1\.[2-4]$`}, []string{"1.3"}, ""},
		{"regular expression, unanchored", []string{`#RE:rev-b`}, []string{"board-rev-b2"}, ""},
		{"regular expression not matching", []string{`#RE:^1\.[2-4]$`}, []string{"1.5"}, "1.5"},
		{"bad regular expression", []string{`#RE:[`}, nil, "not a regular expression"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := ota.CheckHardwareCompatibility(tt.compat, tt.revs)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tt.want) {
				t.Fatalf("err = %v, want EINVALID containing %q", err, tt.want)
			}
		})
	}
}

// FuzzCheckHardwareCompatibility: any sw-description list and revision is
// either accepted or refused with EINVALID; a listed revision is always
// accepted when the list compiles.
func FuzzCheckHardwareCompatibility(f *testing.F) {
	f.Add("1.0", `#RE:^1\.[0-9]$`, "1.3")
	f.Add("#RE:(", "x", "x")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, a, b, rev string) {
		compat := []string{a, b}
		err := ota.CheckHardwareCompatibility(compat, []string{rev})
		if err != nil && cradle.ErrorCode(err) != cradle.EINVALID {
			t.Fatalf("code %s: %v", cradle.ErrorCode(err), err)
		}
		if ota.CheckHardwareCompatibility(compat, nil) == nil {
			if ota.CheckHardwareCompatibility(compat, []string{a}) != nil {
				t.Fatalf("%q is listed in %q but refused", a, compat)
			}
		}
	})
}
