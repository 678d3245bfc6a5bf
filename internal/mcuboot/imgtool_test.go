package mcuboot

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// The images in testdata/imgtool were made by MCUboot's own imgtool (see
// the README there): these tests hold our parser and signer to what the
// reference tool writes.

func readPEM(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "imgtool", name))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", name)
	}
	return blk.Bytes
}

func imgtoolKey(t *testing.T, name string) (crypto.Signer, crypto.PublicKey) {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(readPEM(t, name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(readPEM(t, name+".pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer), pub
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "imgtool", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImgtoolImagesVerify: we accept every image imgtool made, read the
// version, security counter and body it wrote, and refuse it under the
// other key.
func TestImgtoolImagesVerify(t *testing.T) {
	fw := readTestdata(t, "fw.bin")
	_, ecPub := imgtoolKey(t, "imgtool-ecdsa-p256")
	_, edPub := imgtoolKey(t, "imgtool-ed25519")
	for _, c := range []struct {
		file       string
		key, other crypto.PublicKey
	}{
		{"imgtool-ecdsa-p256.img", ecPub, edPub},
		{"imgtool-ecdsa-p256-pad-align4.img", ecPub, edPub},
		{"imgtool-ed25519.img", edPub, ecPub},
		{"imgtool-ed25519-pad-align8.img", edPub, ecPub},
	} {
		t.Run(c.file, func(t *testing.T) {
			b := readTestdata(t, c.file)
			img, err := Verify(b, []crypto.PublicKey{c.key})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got := img.Header.Version.String(); got != "2.1.0+9" {
				t.Errorf("version %s, want 2.1.0+9", got)
			}
			if !img.HasSecurityCounter || img.SecurityCounter != 5 {
				t.Errorf("security counter %d (present %v), want 5", img.SecurityCounter, img.HasSecurityCounter)
			}
			if !bytes.Equal(img.Body, fw) {
				t.Error("body differs from fw.bin")
			}
			if _, err := Verify(b, []crypto.PublicKey{c.other}); err == nil {
				t.Error("verified under a key that did not sign it")
			}
		})
	}
}

// TestSignMatchesImgtool: Ed25519 signatures are deterministic, so our
// signer must write imgtool's images byte for byte, padded or not. ECDSA
// signatures are random: our image must equal imgtool's up to the
// signature TLV and verify under the same key.
func TestSignMatchesImgtool(t *testing.T) {
	fw := readTestdata(t, "fw.bin")
	counter := uint32(5)
	ver, err := ParseVersion("2.1.0+9")
	if err != nil {
		t.Fatal(err)
	}
	edKey, _ := imgtoolKey(t, "imgtool-ed25519")
	for _, c := range []struct {
		file        string
		slot, align int
	}{
		{"imgtool-ed25519.img", 0, 0},
		{"imgtool-ed25519-pad-align8.img", 0x8000, 8},
	} {
		got, err := Sign(fw, Options{Version: ver, SecurityCounter: &counter, HeaderSize: 0x200, PadHeader: true, SlotSize: c.slot, Align: c.align, Key: edKey})
		if err != nil {
			t.Fatal(err)
		}
		if want := readTestdata(t, c.file); !bytes.Equal(got, want) {
			t.Errorf("%s: our image (%d bytes) differs from imgtool's (%d bytes)", c.file, len(got), len(want))
		}
	}

	ecKey, ecPub := imgtoolKey(t, "imgtool-ecdsa-p256")
	got, err := Sign(fw, Options{Version: ver, SecurityCounter: &counter, HeaderSize: 0x200, PadHeader: true, SlotSize: 0x8000, Align: 4, Key: ecKey})
	if err != nil {
		t.Fatal(err)
	}
	ours, err := Verify(got, []crypto.PublicKey{ecPub})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := Parse(readTestdata(t, "imgtool-ecdsa-p256-pad-align4.img"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0x8000 {
		t.Errorf("padded image is %d bytes, want the slot size", len(got))
	}
	if ours.Header != theirs.Header || ours.Hash != theirs.Hash || !bytes.Equal(ours.KeyHash, theirs.KeyHash) {
		t.Errorf("header, hash or key hash differ from imgtool's:\n ours   %+v %x %x\n theirs %+v %x %x",
			ours.Header, ours.Hash, ours.KeyHash, theirs.Header, theirs.Hash, theirs.KeyHash)
	}
	if len(ours.TLVs) != len(theirs.TLVs) {
		t.Fatalf("%d TLVs, imgtool wrote %d", len(ours.TLVs), len(theirs.TLVs))
	}
	for i := range ours.TLVs {
		o, th := ours.TLVs[i], theirs.TLVs[i]
		if o.Type != th.Type {
			t.Errorf("TLV %d: type %#x, imgtool %#x", i, o.Type, th.Type)
		}
		if o.Type != TLVECDSASig && !bytes.Equal(o.Value, th.Value) {
			t.Errorf("TLV %d (%#x): value differs from imgtool's", i, o.Type)
		}
	}
}
