package hw_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"cradle/internal/agent/hw"

	"github.com/google/go-cmp/cmp"
)

// newDevice creates a simulated device in a fresh directory.
func newDevice(t *testing.T) *hw.Device {
	t.Helper()
	d, err := hw.CreateSimDevice(filepath.Join(t.TempDir(), "unit"), "UID-0001")
	if err != nil {
		t.Fatalf("CreateSimDevice: %v", err)
	}
	return d
}

func readOTP(t *testing.T, d *hw.Device) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.Sim.Dir(), "otp"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCreateOpenUID(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "unit")
	d, err := hw.CreateSimDevice(dir, "SOC-1234abcd")
	if err != nil {
		t.Fatal(err)
	}
	if uid, err := d.HardwareUID(ctx); err != nil || uid != "SOC-1234abcd" {
		t.Errorf("HardwareUID = %q, %v; want SOC-1234abcd", uid, err)
	}
	if _, err := hw.CreateSimDevice(dir, "OTHER"); !errors.Is(err, hw.ErrExists) {
		t.Errorf("CreateSimDevice on an existing device: %v, want ErrExists", err)
	}
	d2, err := hw.OpenSimDevice(dir)
	if err != nil {
		t.Fatal(err)
	}
	if uid, err := d2.HardwareUID(ctx); err != nil || uid != "SOC-1234abcd" {
		t.Errorf("reopened HardwareUID = %q, %v", uid, err)
	}
	if _, err := hw.OpenSimDevice(filepath.Join(t.TempDir(), "nothing")); err == nil {
		t.Error("OpenSimDevice on an empty directory succeeded")
	}
	for _, bad := range []string{"", "has space", "tab\t", strings.Repeat("x", 129), "é"} {
		if _, err := hw.CreateSimDevice(filepath.Join(t.TempDir(), "u"), bad); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("CreateSimDevice(uid %q) = %v, want ErrInvalid", bad, err)
		}
	}
	v, err := d.Fuses.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range hw.FuseFields {
		if !bytes.Equal(v[f.Name], make([]byte, f.Len())) {
			t.Errorf("blank device: %s = %x, want zeros", f.Name, v[f.Name])
		}
	}
}

func TestFuseWriteOnce(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	f := d.Fuses
	if err := f.Program(ctx, hw.FuseLifecycle, []byte{0, 0, 0, 3}); err != nil {
		t.Fatalf("Program lifecycle 0x3: %v", err)
	}
	before := readOTP(t, d)
	info, _ := os.Stat(filepath.Join(d.Sim.Dir(), "otp"))

	// Same value again: a no-op, the file is not even rewritten.
	if err := f.Program(ctx, hw.FuseLifecycle, []byte{0, 0, 0, 3}); err != nil {
		t.Fatalf("re-programming the same value: %v", err)
	}
	info2, _ := os.Stat(filepath.Join(d.Sim.Dir(), "otp"))
	if !os.SameFile(info, info2) {
		t.Error("a no-op Program rewrote the otp file")
	}

	// Clearing a bit: refused with the exact message, nothing written.
	err := f.Program(ctx, hw.FuseLifecycle, []byte{0, 0, 0, 1})
	const want = "fuse lifecycle: OTP bits cannot be cleared: have 0x3, asked 0x1"
	if err == nil || err.Error() != want {
		t.Errorf("clearing a bit: err = %v\nwant %s", err, want)
	}
	if !errors.Is(err, hw.ErrOTPClear) {
		t.Errorf("clearing a bit: %v is not ErrOTPClear", err)
	}
	var ce *hw.OTPClearError
	if !errors.As(err, &ce) || ce.Field != hw.FuseLifecycle || !bytes.Equal(ce.Have, []byte{0, 0, 0, 3}) || !bytes.Equal(ce.Asked, []byte{0, 0, 0, 1}) {
		t.Errorf("clearing a bit: %#v, want an *OTPClearError with the field and both values", err)
	}
	// A value that clears one bit and sets another is refused whole.
	if err := f.Program(ctx, hw.FuseLifecycle, []byte{0, 0, 0, 6}); !errors.Is(err, hw.ErrOTPClear) {
		t.Errorf("set one bit, clear another: %v, want ErrOTPClear", err)
	}
	if diff := cmp.Diff(before, readOTP(t, d)); diff != "" {
		t.Errorf("OTP image changed by refused Programs (-before +after):\n%s", diff)
	}

	// Adding bits works.
	if err := f.Program(ctx, hw.FuseLifecycle, []byte{0, 0, 0, 7}); err != nil {
		t.Fatalf("Program 0x7 over 0x3: %v", err)
	}
	if err := f.Program(ctx, hw.FuseSecureBoot, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := f.Program(ctx, hw.FuseSecureBoot, []byte{0}); err == nil ||
		err.Error() != "fuse secure_boot: OTP bits cannot be cleared: have 0x1, asked 0x0" {
		t.Errorf("clearing secure_boot: %v", err)
	}

	// Reopening shows the same bits.
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := d2.Fuses.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want2 := hw.FuseValues{
		hw.FuseSecureBoot:   {1},
		hw.FuseDebugLock:    {0},
		hw.FuseImageKeyHash: make([]byte, 32),
		hw.FuseLifecycle:    {0, 0, 0, 7},
		hw.FuseAntiRollback: make([]byte, 8),
	}
	if diff := cmp.Diff(want2, got); diff != "" {
		t.Errorf("fuses after reopen (-want +got):\n%s", diff)
	}
	if !got.Bit(hw.FuseSecureBoot) || got.Bit(hw.FuseDebugLock) || got.Uint(hw.FuseLifecycle) != 7 {
		t.Errorf("Bit/Uint accessors disagree with %v", got)
	}
}

func TestFuseFieldWidths(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	widths := map[string]int{}
	for _, f := range hw.FuseFields {
		widths[f.Name] = f.Bits
	}
	if diff := cmp.Diff(map[string]int{"secure_boot": 1, "debug_lock": 1, "image_key_hash": 256, "lifecycle": 32, "anti_rollback": 64}, widths); diff != "" {
		t.Errorf("fuse map (-want +got):\n%s", diff)
	}
	tests := []struct {
		name  string
		field string
		value []byte
		ok    bool
	}{
		{"secure boot set", hw.FuseSecureBoot, []byte{1}, true},
		{"secure boot bit 1 is beyond the width", hw.FuseSecureBoot, []byte{2}, false},
		{"debug lock two bytes", hw.FuseDebugLock, []byte{0, 1}, false},
		{"debug lock empty", hw.FuseDebugLock, nil, false},
		{"image key hash 32 bytes", hw.FuseImageKeyHash, bytes.Repeat([]byte{0xa5}, 32), true},
		{"image key hash 31 bytes", hw.FuseImageKeyHash, make([]byte, 31), false},
		{"image key hash 33 bytes", hw.FuseImageKeyHash, make([]byte, 33), false},
		{"lifecycle 3 bytes", hw.FuseLifecycle, []byte{0, 0, 1}, false},
		{"anti rollback 8 bytes", hw.FuseAntiRollback, []byte{0, 0, 0, 0, 0, 0, 0, 1}, true},
		{"anti rollback 4 bytes", hw.FuseAntiRollback, []byte{0, 0, 0, 1}, false},
		{"unknown field", "jtag", []byte{1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := readOTP(t, d)
			err := d.Fuses.Program(ctx, tt.field, tt.value)
			if tt.ok {
				if err != nil {
					t.Fatalf("Program(%s, %x): %v", tt.field, tt.value, err)
				}
				v, _ := d.Fuses.Read(ctx)
				if !bytes.Equal(v[tt.field], tt.value) {
					t.Errorf("read back %x, want %x", v[tt.field], tt.value)
				}
				return
			}
			if !errors.Is(err, hw.ErrInvalid) {
				t.Errorf("Program(%s, %x) = %v, want ErrInvalid", tt.field, tt.value, err)
			}
			if !bytes.Equal(before, readOTP(t, d)) {
				t.Error("the refused Program changed the OTP image")
			}
		})
	}
}

func TestFuseProgramInjectedFailure(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	if err := d.Fuses.Program(ctx, hw.FuseDebugLock, []byte{1}); err != nil {
		t.Fatal(err)
	}
	before := readOTP(t, d)
	boom := errors.New("power lost")
	d.Sim.FailNext(hw.OpProgram, boom)
	hash := sha256.Sum256([]byte("image key"))
	if err := d.Fuses.Program(ctx, hw.FuseImageKeyHash, hash[:]); !errors.Is(err, boom) {
		t.Fatalf("Program with injected failure = %v, want %v", err, boom)
	}
	if diff := cmp.Diff(before, readOTP(t, d)); diff != "" {
		t.Errorf("a failed Program changed the OTP image (-before +after):\n%s", diff)
	}
	assertNoTemp(t, d.Sim.Dir())
	// The failure was one-shot: the retry goes through.
	if err := d.Fuses.Program(ctx, hw.FuseImageKeyHash, hash[:]); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Fuses.Read(ctx)
	if !bytes.Equal(v[hw.FuseImageKeyHash], hash[:]) || !v.Bit(hw.FuseDebugLock) {
		t.Errorf("after retry: %x", v)
	}
}

// assertNoTemp fails if a temporary file was left in dir.
func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestConcurrentProgram(t *testing.T) {
	// Two handles on one directory (as two processes would have) each set
	// different anti_rollback bits at once: no bit is lost.
	ctx := context.Background()
	d := newDevice(t)
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 64 {
		dev := d
		if i%2 == 1 {
			dev = d2
		}
		wg.Go(func() {
			for {
				v, err := dev.Fuses.Read(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				val := v[hw.FuseAntiRollback]
				val[7-i/8] |= 1 << (i % 8)
				err = dev.Fuses.Program(ctx, hw.FuseAntiRollback, val)
				if errors.Is(err, hw.ErrOTPClear) {
					continue // another writer added a bit since our Read
				}
				if err != nil {
					t.Error(err)
				}
				return
			}
		})
	}
	wg.Wait()
	v, _ := d.Fuses.Read(ctx)
	if got := v.Uint(hw.FuseAntiRollback); got != ^uint64(0) {
		t.Errorf("anti_rollback = %#x, want all 64 bits set", got)
	}
}

func TestThermometer(t *testing.T) {
	prev := make([]byte, 8)
	for n := 0; n <= 64; n++ {
		b, err := hw.Thermometer(n, 64)
		if err != nil {
			t.Fatalf("Thermometer(%d): %v", n, err)
		}
		for i := range b {
			if prev[i]&^b[i] != 0 {
				t.Fatalf("Thermometer(%d) = %x clears a bit of Thermometer(%d) = %x", n, b, n-1, prev)
			}
		}
		if got, err := hw.ThermometerCount(b); err != nil || got != n {
			t.Errorf("ThermometerCount(%x) = %d, %v; want %d", b, got, err, n)
		}
		prev = b
	}
	if b, _ := hw.Thermometer(9, 64); !bytes.Equal(b, []byte{0, 0, 0, 0, 0, 0, 1, 0xff}) {
		t.Errorf("Thermometer(9) = %x", b)
	}
	for _, n := range []int{-1, 65} {
		if _, err := hw.Thermometer(n, 64); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("Thermometer(%d) = %v, want ErrInvalid", n, err)
		}
	}
	if _, err := hw.ThermometerCount([]byte{0, 0, 0, 0, 0, 0, 0, 0b101}); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("ThermometerCount with a gap = %v, want ErrInvalid", err)
	}
	// The counter moves forward on the device; back is refused.
	ctx := context.Background()
	d := newDevice(t)
	for _, n := range []int{1, 2, 5, 5, 64} {
		b, _ := hw.Thermometer(n, 64)
		if err := d.Fuses.Program(ctx, hw.FuseAntiRollback, b); err != nil {
			t.Fatalf("counter to %d: %v", n, err)
		}
	}
	b, _ := hw.Thermometer(3, 64)
	if err := d.Fuses.Program(ctx, hw.FuseAntiRollback, b); !errors.Is(err, hw.ErrOTPClear) {
		t.Errorf("counter back to 3: %v, want ErrOTPClear", err)
	}
}

func TestLifecycle(t *testing.T) {
	order := []hw.Lifecycle{hw.LifecycleFactory, hw.LifecycleProvisioned, hw.LifecycleDeployed, hw.LifecycleRMA, hw.LifecycleEOL}
	words := []string{"00000000", "00000001", "00000003", "00000007", "ffffffff"}
	ctx := context.Background()
	d := newDevice(t)
	var prev []byte
	for i, l := range order {
		w, err := hw.LifecycleWord(l)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmtHex(w); got != words[i] {
			t.Errorf("LifecycleWord(%s) = %s, want %s", l, got, words[i])
		}
		if back, err := hw.ParseLifecycle(w); err != nil || back != l {
			t.Errorf("ParseLifecycle(%x) = %s, %v; want %s", w, back, err, l)
		}
		for j := range prev {
			if prev[j]&^w[j] != 0 {
				t.Errorf("%s clears a bit of the stage before it", l)
			}
		}
		if err := d.Fuses.Program(ctx, hw.FuseLifecycle, w); err != nil {
			t.Errorf("programming %s after the stage before: %v", l, err)
		}
		prev = w
	}
	if _, err := hw.LifecycleWord("mystery"); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("LifecycleWord(mystery) = %v", err)
	}
	if _, err := hw.ParseLifecycle([]byte{0, 0, 0, 2}); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("ParseLifecycle(0x2) = %v", err)
	}
	// Back from deployed to provisioned is impossible on a fresh device.
	d2 := newDevice(t)
	dep, _ := hw.LifecycleWord(hw.LifecycleDeployed)
	prov, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	if err := d2.Fuses.Program(ctx, hw.FuseLifecycle, dep); err != nil {
		t.Fatal(err)
	}
	if err := d2.Fuses.Program(ctx, hw.FuseLifecycle, prov); !errors.Is(err, hw.ErrOTPClear) {
		t.Errorf("deployed back to provisioned: %v, want ErrOTPClear", err)
	}
}

func fmtHex(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&15])
	}
	return s.String()
}

func readSlot(t *testing.T, d *hw.Device, slot hw.Slot) []byte {
	t.Helper()
	rc, err := d.Slots.Open(context.Background(), slot)
	if err != nil {
		t.Fatalf("Open(%s): %v", slot, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// failingReader yields n bytes of data then fails.
type failingReader struct {
	n   int
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	r.n -= k
	return k, nil
}

func TestSlots(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	if _, err := d.Slots.Open(ctx, hw.SlotA); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("Open of an empty slot = %v, want ErrNotFound", err)
	}
	if _, err := d.Slots.Digest(ctx, hw.SlotB); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("Digest of an empty slot = %v, want ErrNotFound", err)
	}
	if _, err := d.Slots.Write(ctx, "c", strings.NewReader("x")); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("Write to slot c = %v, want ErrInvalid", err)
	}
	img := make([]byte, 300<<10)
	rand.Read(img)
	sum, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if sum != sha256.Sum256(img) {
		t.Error("Write returned the wrong digest")
	}
	if got, err := d.Slots.Digest(ctx, hw.SlotA); err != nil || got != sum {
		t.Errorf("Digest = %x, %v; want %x", got, err, sum)
	}
	if !bytes.Equal(readSlot(t, d, hw.SlotA), img) {
		t.Error("slot A does not read back what was written")
	}
	if _, err := d.Slots.Open(ctx, hw.SlotB); !errors.Is(err, hw.ErrNotFound) {
		t.Error("writing slot A touched slot B")
	}

	tests := []struct {
		name  string
		setup func(ctx context.Context) (context.Context, io.Reader)
		want  error
	}{
		{"injected failure midway", func(ctx context.Context) (context.Context, io.Reader) {
			d.Sim.FailNext(hw.OpSlotWrite, errBoom)
			return ctx, bytes.NewReader(make([]byte, 200<<10))
		}, errBoom},
		{"reader fails midway", func(ctx context.Context) (context.Context, io.Reader) {
			return ctx, &failingReader{n: 150 << 10, err: errBoom}
		}, errBoom},
		{"context cancelled", func(ctx context.Context) (context.Context, io.Reader) {
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			return ctx, bytes.NewReader(make([]byte, 10))
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, r := tt.setup(ctx)
			if _, err := d.Slots.Write(ctx, hw.SlotA, r); !errors.Is(err, tt.want) {
				t.Fatalf("Write = %v, want %v", err, tt.want)
			}
			if !bytes.Equal(readSlot(t, d, hw.SlotA), img) {
				t.Error("a failed Write did not leave the previous image")
			}
			assertNoTemp(t, d.Sim.Dir())
		})
	}
}

var errBoom = errors.New("boom")

func TestBootEnv(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	env, err := d.BootEnv.Get(ctx)
	if err != nil || env == nil || len(env) != 0 {
		t.Fatalf("fresh Get = %v, %v; want an empty map", env, err)
	}
	if err := d.BootEnv.Set(ctx, map[string]string{"boot_slot": "a", "bootcount": "0", "bootargs": "console=ttyS0 root=/dev/mmcblk0p2"}); err != nil {
		t.Fatal(err)
	}
	if err := d.BootEnv.Set(ctx, map[string]string{"bootcount": "", "upgrade_available": "1"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"boot_slot": "a", "bootargs": "console=ttyS0 root=/dev/mmcblk0p2", "upgrade_available": "1"}
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := d2.BootEnv.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("boot env after reopen (-want +got):\n%s", diff)
	}
	file, _ := os.ReadFile(filepath.Join(d.Sim.Dir(), "bootenv"))
	if string(file) != "boot_slot=a\nbootargs=console=ttyS0 root=/dev/mmcblk0p2\nupgrade_available=1\n" {
		t.Errorf("bootenv file:\n%s", file)
	}

	bad := []struct {
		name    string
		changes map[string]string
	}{
		{"empty key", map[string]string{"": "x"}},
		{"key with =", map[string]string{"a=b": "x"}},
		{"key with space", map[string]string{"a b": "x"}},
		{"value with newline", map[string]string{"a": "x\ny=z"}},
		{"value with NUL", map[string]string{"a": "x\x00"}},
		{"value too long", map[string]string{"a": strings.Repeat("v", 4097)}},
		{"one good one bad", map[string]string{"boot_slot": "b", "bad key": "x"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if err := d.BootEnv.Set(ctx, tt.changes); !errors.Is(err, hw.ErrInvalid) {
				t.Errorf("Set(%q) = %v, want ErrInvalid", tt.changes, err)
			}
			got, _ := d.BootEnv.Get(ctx)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("a refused Set changed the env (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("injected failure", func(t *testing.T) {
		d.Sim.FailNext(hw.OpBootEnvSet, errBoom)
		if err := d.BootEnv.Set(ctx, map[string]string{"boot_slot": "b", "bootcount": "1"}); !errors.Is(err, errBoom) {
			t.Fatalf("Set = %v, want %v", err, errBoom)
		}
		got, _ := d.BootEnv.Get(ctx)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("a failed Set changed the env (-want +got):\n%s", diff)
		}
		assertNoTemp(t, d.Sim.Dir())
	})
}

func TestKeyStore(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	digest := sha256.Sum256([]byte("csr"))
	for _, alg := range []hw.Algorithm{"", hw.ECDSAP256, hw.ECDSAP384, hw.Ed25519} {
		name := "idevid-" + string(alg)
		if alg == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			s, err := d.Keys.CreateKey(ctx, name, alg)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.(*ecdsa.PrivateKey); ok {
				t.Error("CreateKey handed out the private key")
			}
			st, err := os.Stat(filepath.Join(d.Sim.Dir(), "keys", name+".key"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
			}
			// Sign with a signer from Key (read back from the store) and
			// verify with the public key from CreateKey.
			s2, err := d.Keys.Key(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := s.Public().(type) {
			case *ecdsa.PublicKey:
				if alg == hw.ECDSAP384 && pub.Curve.Params().BitSize != 384 || alg != hw.ECDSAP384 && pub.Curve.Params().BitSize != 256 {
					t.Errorf("curve %s for %q", pub.Curve.Params().Name, alg)
				}
				sig, err := s2.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				if !ecdsa.VerifyASN1(pub, digest[:], sig) {
					t.Error("signature does not verify")
				}
			case ed25519.PublicKey:
				if alg != hw.Ed25519 {
					t.Errorf("ed25519 key for %q", alg)
				}
				sig, err := s2.Sign(rand.Reader, []byte("csr"), crypto.Hash(0))
				if err != nil {
					t.Fatal(err)
				}
				if !ed25519.Verify(pub, []byte("csr"), sig) {
					t.Error("signature does not verify")
				}
			default:
				t.Fatalf("public key %T", pub)
			}
			if _, err := d.Keys.CreateKey(ctx, name, alg); !errors.Is(err, hw.ErrExists) {
				t.Errorf("second CreateKey = %v, want ErrExists", err)
			}
			if err := d.Keys.DestroyKey(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Keys.Key(ctx, name); !errors.Is(err, hw.ErrNotFound) {
				t.Errorf("Key after destroy = %v, want ErrNotFound", err)
			}
			if err := d.Keys.DestroyKey(ctx, name); !errors.Is(err, hw.ErrNotFound) {
				t.Errorf("second DestroyKey = %v, want ErrNotFound", err)
			}
		})
	}
	for _, bad := range []string{"", ".hidden", "a/b", "../x", strings.Repeat("k", 65)} {
		if _, err := d.Keys.CreateKey(ctx, bad, ""); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("CreateKey(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := d.Keys.CreateKey(ctx, "k", "rsa-1024"); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("CreateKey(rsa-1024) = %v, want ErrInvalid", err)
	}
	d.Sim.FailNext(hw.OpCreateKey, errBoom)
	if _, err := d.Keys.CreateKey(ctx, "k", ""); !errors.Is(err, errBoom) {
		t.Errorf("CreateKey with injected failure = %v", err)
	}
	if _, err := d.Keys.Key(ctx, "k"); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("a failed CreateKey left a key: %v", err)
	}
	assertNoTemp(t, filepath.Join(d.Sim.Dir(), "keys"))
}

func TestCreateKeyRace(t *testing.T) {
	// Two handles on one directory create the same key at once: exactly
	// one wins.
	ctx := context.Background()
	d := newDevice(t)
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		name := "k" + string(rune('a'+i))
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, dev := range []*hw.Device{d, d2} {
			wg.Go(func() { _, errs[j] = dev.Keys.CreateKey(ctx, name, "") })
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, hw.ErrExists):
				t.Errorf("CreateKey(%s): %v", name, err)
			}
		}
		if ok != 1 {
			t.Errorf("CreateKey(%s): %d winners, want 1 (%v)", name, ok, errs)
		}
	}
}
