package hw_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"path/filepath"
	"strconv"
	"testing"

	"cradle/internal/agent/hw"

	"github.com/google/go-cmp/cmp"
)

func FuzzParseBootEnv(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("boot_slot=a\nbootcount=0\n"))
	f.Add([]byte("bootargs=console=ttyS0,115200 root=/dev/mmcblk0p2\n"))
	f.Add([]byte("a=1\na=2\n"))
	f.Add([]byte("novalue\n"))
	f.Add([]byte("a=\n"))
	f.Add([]byte("a=1"))
	f.Add([]byte("bad key=1\n"))
	f.Add([]byte("a=x\x00\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := hw.ParseBootEnv(data)
		if err != nil {
			return
		}
		// What parses formats back to the same environment.
		out, err := hw.FormatBootEnv(env)
		if err != nil {
			t.Fatalf("FormatBootEnv of a parsed env: %v", err)
		}
		env2, err := hw.ParseBootEnv(out)
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		if diff := cmp.Diff(env, env2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

func FuzzParseOTP(f *testing.F) {
	f.Add(make([]byte, hw.OTPImageSize))
	full := bytes.Repeat([]byte{0xff}, hw.OTPImageSize)
	f.Add(full)
	ok := make([]byte, hw.OTPImageSize)
	ok[0], ok[1] = 1, 1
	f.Add(ok)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, img []byte) {
		v, err := hw.ParseOTP(img)
		if err != nil {
			return
		}
		out, err := hw.FormatOTP(v)
		if err != nil {
			t.Fatalf("FormatOTP of a parsed image: %v", err)
		}
		if !bytes.Equal(out, img) {
			t.Fatalf("round trip: %x became %x", img, out)
		}
		for _, fld := range hw.FuseFields {
			if err := hw.CheckFuseValue(fld.Name, v[fld.Name]); err != nil {
				t.Fatalf("parsed field does not fit: %v", err)
			}
		}
	})
}

// BenchmarkProvision runs the hardware side of provisioning one unit on a
// fresh simulated device: create the device key, write 1 MiB to slot A,
// program every fuse, set the boot environment.
func BenchmarkProvision(b *testing.B) {
	ctx := context.Background()
	img := bytes.Repeat([]byte("firmware"), 1<<17) // 1 MiB
	hash := sha256.Sum256([]byte("image signing key"))
	life, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	ctr, _ := hw.Thermometer(1, 64)
	root := b.TempDir()
	b.SetBytes(int64(len(img)))
	i := 0
	for b.Loop() {
		i++
		d, err := hw.CreateSimDevice(filepath.Join(root, strconv.Itoa(i)), "UID-"+strconv.Itoa(i))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := d.Keys.CreateKey(ctx, "idevid", hw.ECDSAP256); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(img)); err != nil {
			b.Fatal(err)
		}
		for _, p := range []struct {
			field string
			v     []byte
		}{
			{hw.FuseImageKeyHash, hash[:]},
			{hw.FuseAntiRollback, ctr},
			{hw.FuseLifecycle, life},
			{hw.FuseSecureBoot, []byte{1}},
			{hw.FuseDebugLock, []byte{1}},
		} {
			if err := d.Fuses.Program(ctx, p.field, p.v); err != nil {
				b.Fatal(err)
			}
		}
		if err := d.BootEnv.Set(ctx, map[string]string{"boot_slot": "a", "bootcount": "0", "upgrade_available": "0"}); err != nil {
			b.Fatal(err)
		}
	}
}
