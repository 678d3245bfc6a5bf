package bootsim_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/agent/bootsim"
	"cradle/internal/agent/hw"
	"cradle/internal/mcuboot"
)

// unit is a simulated device with its image key.
type unit struct {
	dev  *hw.Device
	dir  string
	key  crypto.Signer
	opts bootsim.Options
}

// newUnit creates a simulated device whose fuses hold secureBoot, the
// KEYHASH of a fresh ECDSA P-256 image key (also compiled into the
// bootloader) and an anti_rollback count of floor.
func newUnit(t *testing.T, secureBoot bool, floor int) *unit {
	t.Helper()
	dir := t.TempDir()
	dev, err := hw.CreateSimDevice(dir, "uid-"+filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u := &unit{dev: dev, dir: dir, key: key, opts: bootsim.Options{Keys: []crypto.PublicKey{key.Public()}}}
	if secureBoot {
		u.program(t, hw.FuseSecureBoot, []byte{1})
		kh, err := mcuboot.KeyHash(key.Public())
		if err != nil {
			t.Fatal(err)
		}
		u.program(t, hw.FuseImageKeyHash, kh)
	}
	u.setFloor(t, floor)
	return u
}

func (u *unit) program(t *testing.T, field string, v []byte) {
	t.Helper()
	if err := u.dev.Fuses.Program(context.Background(), field, v); err != nil {
		t.Fatal(err)
	}
}

// setFloor programs the anti_rollback fuse to count n.
func (u *unit) setFloor(t *testing.T, n int) {
	t.Helper()
	v, err := hw.Thermometer(n, 64)
	if err != nil {
		t.Fatal(err)
	}
	u.program(t, hw.FuseAntiRollback, v)
}

// image signs a body as an MCUboot image of version with counter, by key
// (nil: unsigned).
func image(t *testing.T, key crypto.Signer, version string, counter uint32) []byte {
	t.Helper()
	v, err := mcuboot.ParseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	body := append(make([]byte, mcuboot.DefaultHeaderSize), []byte("firmware "+version)...)
	img, err := mcuboot.Sign(body, mcuboot.Options{Version: v, SecurityCounter: &counter, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func (u *unit) write(t *testing.T, slot hw.Slot, img []byte) [32]byte {
	t.Helper()
	d, err := u.dev.Slots.Write(context.Background(), slot, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (u *unit) setEnv(t *testing.T, kv ...string) {
	t.Helper()
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	if err := u.dev.BootEnv.Set(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func (u *unit) env(t *testing.T) map[string]string {
	t.Helper()
	env, err := u.dev.BootEnv.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func (u *unit) boot(t *testing.T) bootsim.Result {
	t.Helper()
	r, err := bootsim.Boot(context.Background(), u.dev, u.opts)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	return r
}

func version(t *testing.T, s string) mcuboot.Version {
	t.Helper()
	v, err := mcuboot.ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestBootNormal(t *testing.T) {
	u := newUnit(t, true, 2)
	da := u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 2))
	db := u.write(t, hw.SlotB, image(t, u.key, "1.1.0", 3))

	r := u.boot(t)
	want := bootsim.Result{Slot: hw.SlotA, SlotImage: bootsim.SlotImage{Version: version(t, "1.0.0"), SecurityCounter: 2, Digest: da}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("boot with an empty environment (-want +got):\n%s", diff)
	}
	if env := u.env(t); len(env) != 0 {
		t.Errorf("a plain boot wrote the environment: %v", env)
	}

	u.setEnv(t, hw.EnvBootSlot, "b")
	r = u.boot(t)
	want = bootsim.Result{Slot: hw.SlotB, SlotImage: bootsim.SlotImage{Version: version(t, "1.1.0"), SecurityCounter: 3, Digest: db}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("boot of slot b (-want +got):\n%s", diff)
	}
	if d, err := u.dev.Slots.Digest(context.Background(), hw.SlotB); err != nil || d != r.Digest {
		t.Errorf("Digest %x is not the slot's %x (%v)", r.Digest, d, err)
	}
}

func TestTrialBootRollsBackPastLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit string // bootlimit in the environment
		want  int    // attempts before the rollback
	}{
		{"default limit", "", hw.DefaultBootLimit},
		{"limit 1", "1", 1},
		{"limit 5", "5", 5},
		{"limit not a number", "x", hw.DefaultBootLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUnit(t, true, 0)
			da := u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 1))
			u.write(t, hw.SlotB, image(t, u.key, "2.0.0", 2))
			u.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1", hw.EnvBootLimit, tc.limit)

			for i := 1; i <= tc.want; i++ {
				r := u.boot(t)
				if r.Slot != hw.SlotB || r.BootCount != i || r.RolledBack || r.FellBack || r.Bricked {
					t.Fatalf("trial boot %d: %+v", i, r)
				}
				if got := u.env(t)[hw.EnvBootCount]; got != string(rune('0'+i)) {
					t.Fatalf("after trial boot %d bootcount = %q", i, got)
				}
			}
			r := u.boot(t)
			if r.Slot != hw.SlotA || !r.RolledBack || r.FellBack || r.Bricked || r.BootCount != 0 || r.Digest != da {
				t.Fatalf("boot past the limit: %+v", r)
			}
			if !strings.Contains(r.Reason, "exceeds bootlimit") {
				t.Errorf("Reason = %q", r.Reason)
			}
			wantEnv := map[string]string{hw.EnvBootSlot: "a"}
			if tc.limit != "" {
				wantEnv[hw.EnvBootLimit] = tc.limit
			}
			if diff := cmp.Diff(wantEnv, u.env(t)); diff != "" {
				t.Errorf("environment after the rollback (-want +got):\n%s", diff)
			}
			// The old slot now boots plainly, again and again.
			for range 2 {
				if r := u.boot(t); r.Slot != hw.SlotA || r.RolledBack || r.BootCount != 0 {
					t.Fatalf("boot after the rollback: %+v", r)
				}
			}
		})
	}
}

func TestCommittedTrialStays(t *testing.T) {
	u := newUnit(t, true, 0)
	u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 1))
	u.write(t, hw.SlotB, image(t, u.key, "2.0.0", 2))
	u.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1")
	if r := u.boot(t); r.Slot != hw.SlotB || r.BootCount != 1 {
		t.Fatalf("trial boot: %+v", r)
	}
	// The agent commits: upgrade_available and bootcount cleared.
	u.setEnv(t, hw.EnvUpgradeAvailable, "", hw.EnvBootCount, "")
	for i := range hw.DefaultBootLimit + 2 {
		if r := u.boot(t); r.Slot != hw.SlotB || r.BootCount != 0 || r.RolledBack {
			t.Fatalf("boot %d after the commit: %+v", i+1, r)
		}
	}
}

func TestBadNewSlotFallsBack(t *testing.T) {
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		// slotB returns the new image for slot b (nil: it left slot b as
		// it wants it).
		slotB func(t *testing.T, u *unit) []byte
		// keys adds keys compiled into the bootloader.
		keys []crypto.PublicKey
		want error
	}{
		{"corrupt", func(t *testing.T, u *unit) []byte {
			img := image(t, u.key, "2.0.0", 3)
			img[mcuboot.DefaultHeaderSize+2] ^= 0x01
			return img
		}, nil, mcuboot.ErrHashMismatch},
		{"unsigned", func(t *testing.T, u *unit) []byte {
			return image(t, nil, "2.0.0", 3)
		}, nil, mcuboot.ErrNoSignature},
		{"unknown key", func(t *testing.T, u *unit) []byte {
			return image(t, other, "2.0.0", 3)
		}, nil, mcuboot.ErrUnknownKey},
		{"compiled-in key not fused", func(t *testing.T, u *unit) []byte {
			return image(t, edKey, "2.0.0", 3)
		}, []crypto.PublicKey{edKey.Public()}, mcuboot.ErrUnknownKey},
		{"bad signature", func(t *testing.T, u *unit) []byte {
			img := image(t, u.key, "2.0.0", 3)
			// Flip the last byte of the signature (the low byte of s in
			// the DER, so the encoding stays valid).
			p, err := mcuboot.Parse(img)
			if err != nil {
				t.Fatal(err)
			}
			if sig := p.TLVs[len(p.TLVs)-1]; sig.Type != mcuboot.TLVECDSASig {
				t.Fatalf("last TLV is %#x, not the signature", sig.Type)
			}
			img[p.Size-1] ^= 0x01
			return img
		}, nil, mcuboot.ErrBadSignature},
		{"counter below the fuse", func(t *testing.T, u *unit) []byte {
			return image(t, u.key, "2.0.0", 1)
		}, nil, bootsim.ErrRollback},
		{"truncated (an interrupted write)", func(t *testing.T, u *unit) []byte {
			img := image(t, u.key, "2.0.0", 3)
			return img[:mcuboot.DefaultHeaderSize+5]
		}, nil, mcuboot.ErrSize},
		{"trailing garbage", func(t *testing.T, u *unit) []byte {
			return append(image(t, u.key, "2.0.0", 3), "junk"...)
		}, nil, mcuboot.ErrTrailingData},
		{"not an image", func(t *testing.T, u *unit) []byte {
			return bytes.Repeat([]byte{0xff}, 4096)
		}, nil, mcuboot.ErrBadMagic},
		{"never written", nil, nil, bootsim.ErrEmpty},
		{"erased", func(t *testing.T, u *unit) []byte {
			u.write(t, hw.SlotB, image(t, u.key, "2.0.0", 3))
			if err := u.dev.Sim.Erase(context.Background(), hw.SlotB); err != nil {
				t.Fatal(err)
			}
			return nil
		}, nil, bootsim.ErrEmpty},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUnit(t, true, 2)
			u.opts.Keys = append(u.opts.Keys, tc.keys...)
			da := u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 2))
			if tc.slotB != nil {
				if img := tc.slotB(t, u); img != nil {
					u.write(t, hw.SlotB, img)
				}
			}
			if _, err := bootsim.VerifySlot(context.Background(), u.dev, hw.SlotB, u.opts); !errors.Is(err, tc.want) {
				t.Fatalf("VerifySlot(b) = %v, want %v", err, tc.want)
			}
			u.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1")

			r := u.boot(t)
			want := bootsim.Result{Slot: hw.SlotA, SlotImage: bootsim.SlotImage{Version: version(t, "1.0.0"), SecurityCounter: 2, Digest: da}, FellBack: true}
			if diff := cmp.Diff(want, r, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Reason" }, cmp.Ignore())); diff != "" {
				t.Errorf("boot (-want +got):\n%s", diff)
			}
			if !strings.HasPrefix(r.Reason, "slot b: ") || !strings.Contains(r.Reason, tc.want.Error()) {
				t.Errorf("Reason = %q, want slot b's %q", r.Reason, tc.want)
			}
			if diff := cmp.Diff(map[string]string{hw.EnvBootSlot: "a"}, u.env(t)); diff != "" {
				t.Errorf("environment after the fallback (-want +got):\n%s", diff)
			}
			if r := u.boot(t); r.Slot != hw.SlotA || r.FellBack || r.Reason != "" {
				t.Errorf("next boot: %+v", r)
			}
		})
	}
}

// TestNoPartialImageVerifies writes every proper prefix of a good image,
// as a power cut during a flash write leaves it, and checks that none
// verifies while the whole image does.
func TestNoPartialImageVerifies(t *testing.T) {
	u := newUnit(t, true, 0)
	img := image(t, u.key, "2.0.0", 1)
	for n := 0; n < len(img); n++ {
		u.write(t, hw.SlotB, img[:n])
		si, err := bootsim.VerifySlot(context.Background(), u.dev, hw.SlotB, u.opts)
		if err == nil {
			t.Fatalf("a prefix of %d of %d bytes verifies: %+v", n, len(img), si)
		}
		if !isRefusal(err) {
			t.Fatalf("a prefix of %d bytes: %v is no verification failure, so Boot would not fall back", n, err)
		}
	}
	u.write(t, hw.SlotB, img)
	if _, err := bootsim.VerifySlot(context.Background(), u.dev, hw.SlotB, u.opts); err != nil {
		t.Fatalf("the whole image: %v", err)
	}
	t.Logf("%d partial images refused", len(img))
}

// isRefusal reports whether err is a slot failing verification.
func isRefusal(err error) bool {
	for _, e := range []error{bootsim.ErrEmpty, mcuboot.ErrBadMagic, mcuboot.ErrSize, mcuboot.ErrTLVOverrun, mcuboot.ErrNoHash, mcuboot.ErrHashMismatch, mcuboot.ErrTrailingData} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func TestBothSlotsBadIsBricked(t *testing.T) {
	u := newUnit(t, true, 3)
	u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 2)) // below the fuse
	u.write(t, hw.SlotB, image(t, nil, "2.0.0", 3))   // unsigned
	u.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1", hw.EnvBootCount, "1")

	r := u.boot(t)
	if !r.Bricked || r.Slot != "" || r.Digest != ([32]byte{}) || r.FellBack {
		t.Fatalf("Result = %+v, want Bricked and nothing booted", r)
	}
	for _, want := range []string{"slot b: " + mcuboot.ErrNoSignature.Error(), "slot a: " + bootsim.ErrRollback.Error()} {
		if !strings.Contains(r.Reason, want) {
			t.Errorf("Reason %q lacks %q", r.Reason, want)
		}
	}
	// Only the attempt was counted; the bricked boot changed nothing else.
	want := map[string]string{hw.EnvBootSlot: "b", hw.EnvUpgradeAvailable: "1", hw.EnvBootCount: "2"}
	if diff := cmp.Diff(want, u.env(t)); diff != "" {
		t.Errorf("environment (-want +got):\n%s", diff)
	}
}

func TestEmptyUnitIsBricked(t *testing.T) {
	for _, sb := range []bool{false, true} {
		u := newUnit(t, sb, 0)
		r := u.boot(t)
		if !r.Bricked || !strings.Contains(r.Reason, "slot a: "+bootsim.ErrEmpty.Error()) || !strings.Contains(r.Reason, "slot b: "+bootsim.ErrEmpty.Error()) {
			t.Errorf("secure boot %v: %+v", sb, r)
		}
	}
}

func TestSecureBootBlankKeyHash(t *testing.T) {
	u := newUnit(t, false, 0)
	u.program(t, hw.FuseSecureBoot, []byte{1}) // secure boot on, no key hash fused
	u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 0))
	r := u.boot(t)
	if !r.Bricked || !strings.Contains(r.Reason, "the fuse is blank") {
		t.Errorf("Result = %+v", r)
	}
	if _, err := bootsim.VerifySlot(context.Background(), u.dev, hw.SlotA, u.opts); !errors.Is(err, bootsim.ErrKeyNotFused) {
		t.Errorf("VerifySlot = %v, want ErrKeyNotFused", err)
	}
	// No compiled-in key at all.
	u2 := newUnit(t, true, 0)
	u2.opts = bootsim.Options{}
	u2.write(t, hw.SlotA, image(t, u2.key, "1.0.0", 0))
	if _, err := bootsim.VerifySlot(context.Background(), u2.dev, hw.SlotA, u2.opts); !errors.Is(err, bootsim.ErrKeyNotFused) {
		t.Errorf("VerifySlot without keys = %v, want ErrKeyNotFused", err)
	}
}

func TestSecureBootOffBootsAnyImage(t *testing.T) {
	u := newUnit(t, false, 5)
	garbage := []byte("not an mcuboot image at all")
	dg := u.write(t, hw.SlotA, garbage)
	r := u.boot(t)
	if diff := cmp.Diff(bootsim.Result{Slot: hw.SlotA, SlotImage: bootsim.SlotImage{Digest: dg}}, r); diff != "" {
		t.Errorf("garbage in slot a (-want +got):\n%s", diff)
	}
	// An unsigned MCUboot image below the counter fuse boots, described.
	db := u.write(t, hw.SlotB, image(t, nil, "3.1.4", 1))
	u.setEnv(t, hw.EnvBootSlot, "b")
	r = u.boot(t)
	if diff := cmp.Diff(bootsim.Result{Slot: hw.SlotB, SlotImage: bootsim.SlotImage{Version: version(t, "3.1.4"), SecurityCounter: 1, Digest: db}}, r); diff != "" {
		t.Errorf("unsigned image in slot b (-want +got):\n%s", diff)
	}
	// But never an empty slot: boot_slot=b on a unit with only slot a.
	u2 := newUnit(t, false, 0)
	da := u2.write(t, hw.SlotA, garbage)
	u2.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1")
	r = u2.boot(t)
	if r.Slot != hw.SlotA || !r.FellBack || r.Digest != da || !strings.Contains(r.Reason, bootsim.ErrEmpty.Error()) {
		t.Errorf("empty slot b: %+v", r)
	}
}

func TestImgtoolImageBoots(t *testing.T) {
	// An image made by MCUboot's own imgtool (version 2.1.0+9, counter 5).
	dir := filepath.Join("..", "..", "mcuboot", "testdata", "imgtool")
	for _, name := range []string{"imgtool-ecdsa-p256", "imgtool-ed25519", "imgtool-ed25519-pad-align8"} {
		t.Run(name, func(t *testing.T) {
			keyName := strings.TrimSuffix(name, "-pad-align8")
			pemBytes, err := os.ReadFile(filepath.Join(dir, keyName+".pub.pem"))
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(pemBytes)
			if blk == nil {
				t.Fatal("no PEM block")
			}
			pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			img, err := os.ReadFile(filepath.Join(dir, name+".img"))
			if err != nil {
				t.Fatal(err)
			}
			u := newUnit(t, false, 5)
			kh, err := mcuboot.KeyHash(pub)
			if err != nil {
				t.Fatal(err)
			}
			u.program(t, hw.FuseSecureBoot, []byte{1})
			u.program(t, hw.FuseImageKeyHash, kh)
			u.opts.Keys = append(u.opts.Keys, pub)
			u.write(t, hw.SlotA, img)
			r := u.boot(t)
			want := bootsim.Result{Slot: hw.SlotA, SlotImage: bootsim.SlotImage{Version: version(t, "2.1.0+9"), SecurityCounter: 5, Digest: sha256.Sum256(img)}}
			if diff := cmp.Diff(want, r); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			// One counter more in the fuse and it no longer boots.
			u.setFloor(t, 6)
			if r := u.boot(t); !r.Bricked {
				t.Errorf("with the fuse at 6: %+v", r)
			}
		})
	}
}

func TestEnvWriteInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		bad  bool // slot b does not verify
		want bootsim.Result
	}{
		{"counting an attempt", []string{hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1"}, false,
			bootsim.Result{Slot: hw.SlotB, BootCount: 1}},
		{"rolling back", []string{hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1", hw.EnvBootCount, "3"}, false,
			bootsim.Result{Slot: hw.SlotA, RolledBack: true}},
		{"falling back", []string{hw.EnvBootSlot, "b"}, true,
			bootsim.Result{Slot: hw.SlotA, FellBack: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUnit(t, true, 0)
			u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 0))
			imgB := image(t, u.key, "2.0.0", 0)
			if tc.bad {
				imgB = imgB[:100]
			}
			u.write(t, hw.SlotB, imgB)
			u.setEnv(t, tc.env...)
			before := u.env(t)

			u.dev.Sim.CutAfter(1)
			if r, err := bootsim.Boot(context.Background(), u.dev, u.opts); !errors.Is(err, hw.ErrPowerCut) || r != (bootsim.Result{}) {
				t.Fatalf("Boot = %+v, %v; want the cut and no result", r, err)
			}
			if diff := cmp.Diff(before, u.env(t)); diff != "" {
				t.Errorf("environment after the cut (-want +got):\n%s", diff)
			}
			// Power back: the unit is reopened and boots from what was stored.
			dev, err := hw.OpenSimDevice(u.dir)
			if err != nil {
				t.Fatal(err)
			}
			u.dev = dev
			r := u.boot(t)
			if r.Slot != tc.want.Slot || r.BootCount != tc.want.BootCount || r.RolledBack != tc.want.RolledBack || r.FellBack != tc.want.FellBack || r.Bricked {
				t.Errorf("boot after the cut: %+v, want %+v", r, tc.want)
			}
		})
	}
}

func TestVerifySlotRefusesOtherSlots(t *testing.T) {
	u := newUnit(t, true, 0)
	if _, err := bootsim.VerifySlot(context.Background(), u.dev, hw.SlotBoot, u.opts); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("VerifySlot(boot) = %v, want ErrInvalid", err)
	}
}

// TestPowerCutAtEveryBootWrite cuts the power at each environment write
// of a trial that ends in a rollback, powers the unit up again and boots
// on: every boot that happens boots a verified slot, and the unit ends on
// the old slot with the trial over.
func TestPowerCutAtEveryBootWrite(t *testing.T) {
	setup := func(t *testing.T) (*unit, [32]byte, [32]byte) {
		u := newUnit(t, true, 1)
		da := u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 1))
		db := u.write(t, hw.SlotB, image(t, u.key, "2.0.0", 2))
		u.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "1")
		return u, da, db
	}
	// A run without a cut learns the number of writes: one per trial boot
	// and the rollback.
	u, _, _ := setup(t)
	start := u.dev.Sim.Ops()
	for range hw.DefaultBootLimit + 1 {
		u.boot(t)
	}
	points := u.dev.Sim.Ops() - start
	if points != hw.DefaultBootLimit+1 {
		t.Fatalf("%d environment writes, want %d", points, hw.DefaultBootLimit+1)
	}
	for k := 1; k <= points; k++ {
		u, da, db := setup(t)
		u.dev.Sim.CutAfter(k)
		cuts := 0
		for boots := 0; ; boots++ {
			if boots > 2*points {
				t.Fatalf("cut %d: still on trial after %d boots: %v", k, boots, u.env(t))
			}
			r, err := bootsim.Boot(context.Background(), u.dev, u.opts)
			if errors.Is(err, hw.ErrPowerCut) {
				cuts++
				dev, err := hw.OpenSimDevice(u.dir)
				if err != nil {
					t.Fatal(err)
				}
				u.dev = dev
				continue
			}
			if err != nil {
				t.Fatalf("cut %d: %v", k, err)
			}
			want := map[hw.Slot][32]byte{hw.SlotA: da, hw.SlotB: db}[r.Slot]
			if r.Bricked || r.Digest != want {
				t.Fatalf("cut %d: booted %+v", k, r)
			}
			if r.Slot == hw.SlotA {
				if !r.RolledBack {
					t.Fatalf("cut %d: back on slot a without a rollback: %+v", k, r)
				}
				break
			}
		}
		if cuts != 1 {
			t.Errorf("cut %d: %d boots were cut, want 1", k, cuts)
		}
		if diff := cmp.Diff(map[string]string{hw.EnvBootSlot: "a"}, u.env(t)); diff != "" {
			t.Errorf("cut %d: environment at the end (-want +got):\n%s", k, diff)
		}
	}
	t.Logf("%d cut points exercised", points)
}

func TestOddEnvironment(t *testing.T) {
	u := newUnit(t, true, 0)
	da := u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 0))
	u.write(t, hw.SlotB, image(t, u.key, "2.0.0", 0))
	// An unknown boot_slot means a; a bootcount that is no number counts
	// from 0; upgrade_available other than "1" is no trial.
	u.setEnv(t, hw.EnvBootSlot, "c", hw.EnvUpgradeAvailable, "1", hw.EnvBootCount, "many")
	if r := u.boot(t); r.Slot != hw.SlotA || r.Digest != da || r.BootCount != 1 {
		t.Errorf("boot_slot=c: %+v", r)
	}
	u.setEnv(t, hw.EnvBootSlot, "b", hw.EnvUpgradeAvailable, "yes", hw.EnvBootCount, "")
	if r := u.boot(t); r.Slot != hw.SlotB || r.BootCount != 0 {
		t.Errorf("upgrade_available=yes: %+v", r)
	}
	if got := u.env(t)[hw.EnvBootCount]; got != "" {
		t.Errorf("a boot that is no trial counted: bootcount=%q", got)
	}
}

func TestBadCounterFuseIsAnError(t *testing.T) {
	u := newUnit(t, true, 0)
	u.write(t, hw.SlotA, image(t, u.key, "1.0.0", 0))
	u.program(t, hw.FuseAntiRollback, []byte{0, 0, 0, 0, 0, 0, 0, 2}) // not a thermometer code
	if r, err := bootsim.Boot(context.Background(), u.dev, u.opts); err == nil || !strings.Contains(err.Error(), "anti_rollback") {
		t.Errorf("Boot = %+v, %v; want an error naming the anti_rollback fuse", r, err)
	}
}
