package mcuboot_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"cradle/internal/mcuboot"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func u32(v uint32) *uint32 { return &v }

// edKey returns a fixed Ed25519 key (seed 0x01..0x20), so its images are
// deterministic.
func edKey() ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i + 1)
	}
	return ed25519.NewKeyFromSeed(seed)
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// spkiEd25519 and spkiP256 spell out the DER SubjectPublicKeyInfo that
// imgtool hashes for KEYHASH (RFC 8410 and RFC 5480 prefixes), written here
// by hand rather than with crypto/x509.
func spkiEd25519(pub ed25519.PublicKey) []byte {
	return append(unhexMust("302a300506032b6570032100"), pub...)
}

func spkiP256(pub *ecdsa.PublicKey) []byte {
	b := unhexMust("3059301306072a8648ce3d020106082a8648ce3d030107034200" + "04")
	b = append(b, pub.X.FillBytes(make([]byte, 32))...)
	return append(b, pub.Y.FillBytes(make([]byte, 32))...)
}

func unhexMust(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestSignGoldenLayout checks a signed image byte by byte against the
// layout of image.h and imgtool, computed by hand: header fields, the
// protected area with SEC_CNT, the TLV area with SHA256, KEYHASH and the
// signature.
func TestSignGoldenLayout(t *testing.T) {
	body := []byte("firmware")
	in := append(make([]byte, 32), body...) // a 32-byte header reserved by the "build"
	ed := edKey()
	ec := ecKey(t)
	for _, tc := range []struct {
		name    string
		key     crypto.Signer
		sigType string // little-endian TLV type
		spki    []byte
	}{
		{"ed25519", ed, "2400", spkiEd25519(ed.Public().(ed25519.PublicKey))},
		{"ecdsa-p256", ec, "2200", spkiP256(&ec.PublicKey)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := mcuboot.Sign(in, mcuboot.Options{
				Version: mcuboot.Version{Major: 1, Minor: 2, Revision: 3, Build: 4}, SecurityCounter: u32(7),
				HeaderSize: 32, Key: tc.key,
			})
			if err != nil {
				t.Fatal(err)
			}
			wantHeader := unhex(t, `3db8f396 00000000 2000 0c00 08000000 00000000 01 02 0300 04000000 00000000`)
			wantProt := unhex(t, `0869 0c00  5000 0400 07000000`)
			hashed := append(append(append([]byte{}, wantHeader...), body...), wantProt...)
			if !bytes.Equal(img[:len(hashed)], hashed) {
				t.Fatalf("header, body and protected area:\n got %x\nwant %x", img[:len(hashed)], hashed)
			}
			digest := sha256.Sum256(hashed)
			keyHash := sha256.Sum256(tc.spki)
			rest := img[len(hashed):]
			sigLen := len(rest) - (4 + 4 + 32 + 4 + 32 + 4)
			want := unhex(t, "0769")
			want = binary.LittleEndian.AppendUint16(want, uint16(len(rest)))
			want = append(want, unhex(t, "1000 2000")...)
			want = append(want, digest[:]...)
			want = append(want, unhex(t, "0100 2000")...)
			want = append(want, keyHash[:]...)
			want = append(want, unhex(t, tc.sigType)...)
			want = binary.LittleEndian.AppendUint16(want, uint16(sigLen))
			if !bytes.Equal(rest[:len(want)], want) {
				t.Fatalf("TLV area up to the signature:\n got %x\nwant %x", rest[:len(want)], want)
			}
			sig := rest[len(want):]
			switch k := tc.key.(type) {
			case ed25519.PrivateKey:
				// Ed25519 is deterministic: imgtool's sign_digest gives
				// exactly this signature of the 32-byte hash.
				if !bytes.Equal(sig, ed25519.Sign(k, digest[:])) {
					t.Fatalf("Ed25519 signature is not over the image hash")
				}
			case *ecdsa.PrivateKey:
				if !ecdsa.VerifyASN1(&k.PublicKey, digest[:], sig) {
					t.Fatalf("ECDSA signature (DER) does not verify over the image hash")
				}
			}
		})
	}
}

func TestSignPadHeaderAndSlot(t *testing.T) {
	body := bytes.Repeat([]byte{0xab}, 100)
	img, err := mcuboot.Sign(body, mcuboot.Options{Version: mcuboot.Version{Major: 2}, HeaderSize: 0x200, PadHeader: true, Key: edKey(),
		SlotSize: 0x4000, Align: 4, LoadAddr: 0x20000000})
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != 0x4000 {
		t.Fatalf("padded image is %#x bytes, want the slot size 0x4000", len(img))
	}
	// The header after its 32 fixed bytes keeps imgtool's erased fill.
	if !bytes.Equal(img[32:0x200], bytes.Repeat([]byte{0xff}, 0x200-32)) {
		t.Fatalf("header padding is not 0xff")
	}
	if got := binary.LittleEndian.Uint32(img[12:]); got != 100 {
		t.Fatalf("image size %d, want 100", got)
	}
	if got := binary.LittleEndian.Uint32(img[16:]); got != mcuboot.FlagRAMLoad {
		t.Fatalf("flags %#x, want RAM_LOAD", got)
	}
	if got := binary.LittleEndian.Uint16(img[10:]); got != 0 {
		t.Fatalf("protected TLV size %d without a security counter, want 0", got)
	}
	if !bytes.Equal(img[len(img)-16:], unhex(t, "77c295f3 60d2ef7f 3552500f 2cb67980")) {
		t.Fatalf("trailer does not end with the boot magic: %x", img[len(img)-16:])
	}
	p, err := mcuboot.Verify(img, []crypto.PublicKey{edKey().Public()})
	if err != nil {
		t.Fatal(err)
	}
	if p.HasSecurityCounter || !bytes.Equal(p.Body, body) || p.Header.LoadAddr != 0x20000000 {
		t.Fatalf("parsed %+v", p.Header)
	}

	// Align 16: MaxAlign 16, the other magic, and a trailer of
	// 128*3*16 + 16*4 + 16 bytes.
	img, err = mcuboot.Sign(body, mcuboot.Options{HeaderSize: 32, PadHeader: true, SlotSize: 0x8000, Align: 16})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[len(img)-16:], unhex(t, "1000 2de15d29 410b8d77 679c110f 1f8a")) {
		t.Fatalf("trailer magic for max align 16: %x", img[len(img)-16:])
	}
	if _, err := mcuboot.Parse(img); err != nil {
		t.Fatal(err)
	}
	unpadded, _ := mcuboot.Sign(body, mcuboot.Options{HeaderSize: 32, PadHeader: true})
	trailer := 128*3*16 + 16*4 + 16
	if _, err := mcuboot.Sign(body, mcuboot.Options{HeaderSize: 32, PadHeader: true, SlotSize: len(unpadded) + trailer, Align: 16}); err != nil {
		t.Fatalf("exact fit refused: %v", err)
	}
	if _, err := mcuboot.Sign(body, mcuboot.Options{HeaderSize: 32, PadHeader: true, SlotSize: len(unpadded) + trailer - 1, Align: 16}); err == nil {
		t.Fatal("a slot one byte too small was accepted")
	}
}

func TestSignRefusals(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	zeros := make([]byte, 0x200+10)
	for _, tc := range []struct {
		name string
		in   []byte
		opts mcuboot.Options
		want string
	}{
		{"header not zero", append([]byte{1}, zeros...), mcuboot.Options{}, "does not start with 0x200 zero bytes"},
		{"input shorter than header", make([]byte, 10), mcuboot.Options{}, "shorter than the 0x200-byte header"},
		{"header too small", zeros, mcuboot.Options{HeaderSize: 16}, "header size 0x10 out of range"},
		{"header too large", zeros, mcuboot.Options{HeaderSize: 0x10000}, "out of range"},
		{"bad alignment", zeros, mcuboot.Options{Align: 3}, "alignment 3"},
		{"P-384 key", zeros, mcuboot.Options{Key: p384}, "P-384"},
		{"RSA key", zeros, mcuboot.Options{Key: rsaKey}, "rsa.PublicKey"},
		{"slot too small", zeros, mcuboot.Options{SlotSize: 0x300}, "exceeds the slot size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mcuboot.Sign(tc.in, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want mcuboot.Version
		ok   bool
	}{
		{"1.2.3+4", mcuboot.Version{1, 2, 3, 4}, true},
		{"1", mcuboot.Version{Major: 1}, true},
		{"1.2", mcuboot.Version{Major: 1, Minor: 2}, true},
		{"0.0.0", mcuboot.Version{}, true},
		{"255.255.65535+4294967295", mcuboot.Version{255, 255, 65535, 4294967295}, true},
		{"256.0.0", mcuboot.Version{}, false},
		{"1.256", mcuboot.Version{}, false},
		{"1.2.65536", mcuboot.Version{}, false},
		{"1.2.3+4294967296", mcuboot.Version{}, false},
		{"01.2.3", mcuboot.Version{}, false},
		{"1.2+3", mcuboot.Version{}, false},
		{"1.2.3.4", mcuboot.Version{}, false},
		{"v1.2.3", mcuboot.Version{}, false},
		{"", mcuboot.Version{}, false},
		{"1.-2.3", mcuboot.Version{}, false},
	} {
		got, err := mcuboot.ParseVersion(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok && got.String() != "" {
			if back, _ := mcuboot.ParseVersion(got.String()); back != got {
				t.Errorf("%v does not round-trip through String", got)
			}
		}
	}
}

func TestVerifyRoundTrip(t *testing.T) {
	ed := edKey()
	ec := ecKey(t)
	other := ecKey(t)
	for _, key := range []crypto.Signer{ed, ec} {
		img, err := mcuboot.Sign(append(make([]byte, 0x200), "app"...), mcuboot.Options{
			Version: mcuboot.Version{Major: 1, Minor: 4, Revision: 2, Build: 9}, SecurityCounter: u32(42), Key: key})
		if err != nil {
			t.Fatal(err)
		}
		p, err := mcuboot.Verify(img, []crypto.PublicKey{other.Public(), key.Public()})
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		if !p.HasSecurityCounter || p.SecurityCounter != 42 || p.Header.Version.String() != "1.4.2+9" || string(p.Body) != "app" {
			t.Fatalf("parsed %+v", p)
		}
		if eq, _ := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !eq.Equal(p.Key) {
			t.Fatal("Verify returned another key than the signer")
		}
		kh, _ := mcuboot.KeyHash(key.Public())
		if !bytes.Equal(p.KeyHash, kh) {
			t.Fatal("key hash")
		}
		if p.Hash != sha256.Sum256(img[:0x200+3+12]) {
			t.Fatal("hash")
		}
	}
}

// image builds an image by hand from its parts, with a correct hash
// unless told otherwise: the tests' independent writer.
type image struct {
	hdrSize      int
	protSizeHdr  int // the header's protected TLV size: 0 the real one, -1 zero
	flags        uint32
	body         []byte
	prot, unprot [][2][]byte // type (2 bytes LE), value
	noHash       bool
	badHash      bool
	sign         crypto.Signer
	after        []byte
}

func tlv(typ uint16, v []byte) [2][]byte {
	return [2][]byte{binary.LittleEndian.AppendUint16(nil, typ), v}
}

func area(magic uint16, ts [][2][]byte) []byte {
	if len(ts) == 0 {
		return nil
	}
	n := 4
	for _, x := range ts {
		n += 4 + len(x[1])
	}
	b := binary.LittleEndian.AppendUint16(nil, magic)
	b = binary.LittleEndian.AppendUint16(b, uint16(n))
	for _, x := range ts {
		b = append(b, x[0]...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(x[1])))
		b = append(b, x[1]...)
	}
	return b
}

func (im image) build(t *testing.T) []byte {
	t.Helper()
	if im.hdrSize == 0 {
		im.hdrSize = 32
	}
	prot := area(0x6908, im.prot)
	h := make([]byte, im.hdrSize)
	binary.LittleEndian.PutUint32(h, 0x96f3b83d)
	binary.LittleEndian.PutUint16(h[8:], uint16(im.hdrSize))
	ps := len(prot)
	switch {
	case im.protSizeHdr == -1:
		ps = 0
	case im.protSizeHdr != 0:
		ps = im.protSizeHdr
	}
	binary.LittleEndian.PutUint16(h[10:], uint16(ps))
	binary.LittleEndian.PutUint32(h[12:], uint32(len(im.body)))
	binary.LittleEndian.PutUint32(h[16:], im.flags)
	b := append(append(h, im.body...), prot...)
	digest := sha256.Sum256(b)
	if im.badHash {
		digest[0] ^= 1
	}
	var ts [][2][]byte
	if !im.noHash {
		ts = append(ts, tlv(0x10, digest[:]))
	}
	if im.sign != nil {
		kh, _ := mcuboot.KeyHash(im.sign.Public())
		ts = append(ts, tlv(0x01, kh))
		d := sha256.Sum256(b)
		var sig []byte
		var typ uint16
		switch im.sign.(type) {
		case ed25519.PrivateKey:
			sig, _ = im.sign.Sign(nil, d[:], crypto.Hash(0))
			typ = 0x24
		default:
			sig, _ = im.sign.Sign(rand.Reader, d[:], crypto.SHA256)
			typ = 0x22
		}
		ts = append(ts, tlv(typ, sig))
	}
	ts = append(ts, im.unprot...)
	b = append(b, area(0x6907, ts)...)
	return append(b, im.after...)
}

// refusal is an image Verify must refuse, with the error it wraps and a
// part of its message.
type refusal struct {
	name string
	img  []byte
	want error
	msg  string
}

// refusals returns the hand-built refusals of TestVerifyRefusals, the
// keys they are checked against, and the good image they are made from.
func refusals(t *testing.T) ([]refusal, []crypto.PublicKey, []byte) {
	t.Helper()
	ed := edKey()
	trusted := []crypto.PublicKey{ed.Public()}
	secCnt := tlv(0x50, []byte{1, 0, 0, 0})
	good := image{body: []byte("body"), prot: [][2][]byte{secCnt}, sign: ed}.build(t)
	if _, err := mcuboot.Verify(good, trusted); err != nil {
		t.Fatalf("the hand-built image is refused: %v", err)
	}
	mutate := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	// Offsets in good: header 0..32, body 32..36, protected area 36..48,
	// TLV area from 48: info, SHA256 (52..88), KEYHASH (88..124), ED25519
	// header at 124, signature 128..192.
	return []refusal{
		{"empty", nil, mcuboot.ErrSize, "shorter than the 32-byte header"},
		{"bad magic", mutate(func(b []byte) []byte { b[0] ^= 1; return b }), mcuboot.ErrBadMagic, "not an MCUboot image"},
		{"header size below 32", mutate(func(b []byte) []byte { b[8] = 16; return b }), mcuboot.ErrSize, "header size 16"},
		{"body past the end", mutate(func(b []byte) []byte { b[14] = 1; return b }), mcuboot.ErrSize, "the file has"},
		{"truncated in the TLV area", good[:150], mcuboot.ErrTLVOverrun, "runs past the end"},
		{"truncated before the TLV info", good[:50], mcuboot.ErrTLVOverrun, "past the end of the file"},
		{"TLV length overruns its area", mutate(func(b []byte) []byte { b[126] = 0x41; return b }), mcuboot.ErrTLVOverrun, "crosses the end"},
		{"protected TLV overruns its area", mutate(func(b []byte) []byte { b[42] = 5; return b }), mcuboot.ErrTLVOverrun, "protected TLV area"},
		{"bad TLV info magic", mutate(func(b []byte) []byte { b[48] = 0; return b }), mcuboot.ErrBadMagic, "TLV area info magic"},
		{"TLV area smaller than its info", mutate(func(b []byte) []byte { b[50], b[51] = 3, 0; return b }), mcuboot.ErrSize, "smaller than its info header"},
		{"protected size differs from header", image{body: []byte("x"), prot: [][2][]byte{secCnt}, protSizeHdr: 16}.build(t), mcuboot.ErrSize, "header says 16"},
		{"unannounced protected area", image{body: []byte("x"), prot: [][2][]byte{secCnt}, protSizeHdr: -1}.build(t), mcuboot.ErrSize, "does not announce"},
		{"hash mismatch (body)", mutate(func(b []byte) []byte { b[33] ^= 1; return b }), mcuboot.ErrHashMismatch, "hash to"},
		{"hash mismatch (security counter)", mutate(func(b []byte) []byte { b[44] = 9; return b }), mcuboot.ErrHashMismatch, ""},
		{"hash mismatch (TLV)", image{body: []byte("x"), badHash: true, sign: ed}.build(t), mcuboot.ErrHashMismatch, ""},
		{"no hash", image{body: []byte("x"), noHash: true, unprot: [][2][]byte{tlv(0x01, make([]byte, 32))}}.build(t), mcuboot.ErrNoHash, ""},
		{"security counter in the unprotected area", image{body: []byte("x"), sign: ed, unprot: [][2][]byte{secCnt}}.build(t), mcuboot.ErrUnprotectedTLV, "SEC_CNT"},
		{"dependency in the unprotected area", image{body: []byte("x"), sign: ed, unprot: [][2][]byte{tlv(0x40, make([]byte, 12))}}.build(t), mcuboot.ErrUnprotectedTLV, "DEPENDENCY"},
		{"short security counter", image{body: []byte("x"), sign: ed, prot: [][2][]byte{tlv(0x50, []byte{1})}}.build(t), mcuboot.ErrSize, "security counter TLV of 1 bytes"},
		{"trailing garbage", append(append([]byte(nil), good...), "junk"...), mcuboot.ErrTrailingData, "too short"},
		{"trailing garbage with a magic", append(append(append([]byte(nil), good...), 0xff, 0x00), bootMagic()...), mcuboot.ErrTrailingData, "byte 1 of the padding"},
		{"a bare boot magic as padding", append(append([]byte(nil), good...), bootMagic()...), mcuboot.ErrTrailingData, "starts with 0x77"},
		{"padding of a non-erased value", append(append(append([]byte(nil), good...), 0x12, 0x12), bootMagic()...), mcuboot.ErrTrailingData, "starts with 0x12"},
		{"trailing data without a magic", append(append([]byte(nil), good...), bytes.Repeat([]byte{0xff}, 40)...), mcuboot.ErrTrailingData, "boot magic"},
		{"encrypted", image{body: []byte("x"), flags: mcuboot.FlagEncryptedAES128, sign: ed}.build(t), mcuboot.ErrUnsupported, "encrypted"},
		{"compressed", image{body: []byte("x"), flags: mcuboot.FlagCompressedLZMA2, sign: ed}.build(t), mcuboot.ErrUnsupported, "compressed"},
		{"SHA-384", image{body: []byte("x"), noHash: true, unprot: [][2][]byte{tlv(0x11, make([]byte, 48))}}.build(t), mcuboot.ErrUnsupported, "SHA384"},
		{"unknown key", image{body: []byte("x"), sign: ecKey(t)}.build(t), mcuboot.ErrUnknownKey, "matches none of the 1 trusted keys"},
		{"bad signature", mutate(func(b []byte) []byte { b[130] ^= 1; return b }), mcuboot.ErrBadSignature, "ED25519"},
		{"unsigned", image{body: []byte("x")}.build(t), mcuboot.ErrNoSignature, "no KEYHASH"},
		{"key hash without signature", image{body: []byte("x"), unprot: [][2][]byte{tlv(0x01, mustKeyHash(ed.Public()))}}.build(t), mcuboot.ErrNoSignature, "carries no signature"},
		{"signature type of another key type", image{body: []byte("x"), unprot: [][2][]byte{tlv(0x01, mustKeyHash(ed.Public())), tlv(0x22, make([]byte, 70))}}.build(t), mcuboot.ErrBadSignature, "types differ"},
	}, trusted, good
}

func TestVerifyRefusals(t *testing.T) {
	cases, trusted, good := refusals(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mcuboot.Verify(tc.img, trusted)
			if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
	// A padded trailer in imgtool's form is no garbage.
	padded := append(append(append([]byte(nil), good...), bytes.Repeat([]byte{0xff}, 100)...), bootMagic()...)
	if _, err := mcuboot.Verify(padded, trusted); err != nil {
		t.Fatalf("padded image: %v", err)
	}
}

func bootMagic() []byte { return unhexMust("77c295f360d2ef7f3552500f2cb67980") }

func mustKeyHash(pub crypto.PublicKey) []byte {
	h, err := mcuboot.KeyHash(pub)
	if err != nil {
		panic(err)
	}
	return h
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
