package hw_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"

	"github.com/google/go-cmp/cmp"
)

// needUBootTools skips (or fails in CI) without libubootenv's tools.
func needUBootTools(t *testing.T) {
	t.Helper()
	testkit.NeedProgram(t, "fw_printenv")
	testkit.NeedProgram(t, "fw_setenv")
}

// envCopies reads and parses the copies of a CreateUBootEnvFiles
// environment; a copy that does not parse is nil.
func envCopies(t *testing.T, u *hw.UBootEnv) []*hw.UBootEnvImage {
	t.Helper()
	cfg, err := os.ReadFile(u.Config)
	if err != nil {
		t.Fatal(err)
	}
	copies, err := hw.ParseUBootEnvConfig(cfg)
	if err != nil {
		t.Fatalf("ParseUBootEnvConfig of our own config: %v", err)
	}
	var imgs []*hw.UBootEnvImage
	for _, c := range copies {
		b, err := os.ReadFile(c.Path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != c.Size {
			t.Errorf("%s is %d bytes, the config says %d", c.Path, len(b), c.Size)
		}
		img, err := hw.ParseUBootEnvImage(b, len(copies) == 2)
		if err != nil {
			t.Logf("%s: %v", c.Path, err)
		}
		imgs = append(imgs, img)
	}
	return imgs
}

func envFiles(t *testing.T, u *hw.UBootEnv) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range []string{"uboot-env", "uboot-env-redund", hw.UBootEnvConfigName} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(u.Config), name))
		if err == nil {
			files[name] = b
		}
	}
	return files
}

func getEnv(t *testing.T, env hw.BootEnv) map[string]string {
	t.Helper()
	m, err := env.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return m
}

func TestUBootEnvRoundTrip(t *testing.T) {
	needUBootTools(t)
	ctx := context.Background()
	for _, redundant := range []bool{false, true} {
		name := "single"
		if redundant {
			name = "redundant"
		}
		t.Run(name, func(t *testing.T) {
			initial := map[string]string{"boot_slot": "a", "bootlimit": "3", "bootcmd": "run distro_bootcmd; echo a=b"}
			u, err := hw.CreateUBootEnvFiles(filepath.Join(t.TempDir(), "env"), 0x4000, redundant, initial)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(initial, getEnv(t, u)); diff != "" {
				t.Fatalf("fw_printenv of the created environment (-want +got):\n%s", diff)
			}
			// A trial boot of slot b, as the updater marks it: all at once.
			trial := map[string]string{hw.EnvBootSlot: "b", hw.EnvUpgradeAvailable: "1", hw.EnvBootCount: "0", "note": "  spaces, tabs\tand = kept  "}
			if err := u.Set(ctx, trial); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"boot_slot": "b", "bootlimit": "3", "bootcmd": initial["bootcmd"], "upgrade_available": "1", "bootcount": "0", "note": trial["note"]}
			if diff := cmp.Diff(want, getEnv(t, u)); diff != "" {
				t.Errorf("after Set (-want +got):\n%s", diff)
			}
			// The commit deletes keys: empty values.
			if err := u.Set(ctx, map[string]string{hw.EnvUpgradeAvailable: "", hw.EnvBootCount: "", "never-set": ""}); err != nil {
				t.Fatal(err)
			}
			delete(want, "upgrade_available")
			delete(want, "bootcount")
			if diff := cmp.Diff(want, getEnv(t, u)); diff != "" {
				t.Errorf("after deleting (-want +got):\n%s", diff)
			}
			// What fw_setenv wrote, read by our parser: the current copy
			// holds the environment.
			imgs := envCopies(t, u)
			cur := imgs[0]
			if redundant {
				if imgs[0] == nil || imgs[1] == nil {
					t.Fatal("a redundant copy does not parse")
				}
				// Created with flags 1 (uboot-env) and 0; two writes: 2
				// (uboot-env-redund), then 3 (uboot-env).
				if imgs[0].Flags != 3 || imgs[1].Flags != 2 {
					t.Errorf("flags = %d, %d; want 3, 2", imgs[0].Flags, imgs[1].Flags)
				}
				prev := maps2(want, map[string]string{"upgrade_available": "1", "bootcount": "0"})
				if diff := cmp.Diff(prev, imgs[1].Vars); diff != "" {
					t.Errorf("the older copy holds (-want +got):\n%s", diff)
				}
			}
			if cur == nil {
				t.Fatal("the current copy does not parse")
			}
			if diff := cmp.Diff(want, cur.Vars); diff != "" {
				t.Errorf("ParseUBootEnvImage of the current copy (-want +got):\n%s", diff)
			}
		})
	}
}

// maps2 returns a copy of a with b's entries added.
func maps2(a, b map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

// TestUBootEnvRedundantCorrupt corrupts the current copy's CRC: the tools
// read the other copy. With both corrupt, Get fails.
func TestUBootEnvRedundantCorrupt(t *testing.T) {
	needUBootTools(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "env")
	u, err := hw.CreateUBootEnvFiles(dir, 0x2000, true, map[string]string{"boot_slot": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Set(ctx, map[string]string{"boot_slot": "b", hw.EnvUpgradeAvailable: "1"}); err != nil {
		t.Fatal(err)
	}
	// The write went to uboot-env-redund (flags 2); spoil its CRC.
	corrupt(t, filepath.Join(dir, "uboot-env-redund"))
	if diff := cmp.Diff(map[string]string{"boot_slot": "a"}, getEnv(t, u)); diff != "" {
		t.Errorf("with the newer copy corrupt, fw_printenv reads (-want +got):\n%s", diff)
	}
	// A Set now writes over the corrupt copy, from the valid one.
	if err := u.Set(ctx, map[string]string{"bootcount": "1"}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"boot_slot": "a", "bootcount": "1"}, getEnv(t, u)); diff != "" {
		t.Errorf("after a Set over the corrupt copy (-want +got):\n%s", diff)
	}
	corrupt(t, filepath.Join(dir, "uboot-env-redund"))
	corrupt(t, filepath.Join(dir, "uboot-env"))
	if env, err := u.Get(ctx); err == nil {
		t.Errorf("Get with both copies corrupt = %v, want an error", env)
	}
	if err := u.Set(ctx, map[string]string{"bootcount": "2"}); err == nil {
		t.Error("Set with both copies corrupt succeeded")
	}
}

// corrupt flips the bits of a copy's CRC.
func corrupt(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestUBootEnvRefusals(t *testing.T) {
	needUBootTools(t)
	ctx := context.Background()
	u, err := hw.CreateUBootEnvFiles(filepath.Join(t.TempDir(), "env"), 0x1000, true, map[string]string{"boot_slot": "a"})
	if err != nil {
		t.Fatal(err)
	}
	before := envFiles(t, u)
	v1000 := strings.Repeat("v", 1000)
	tests := []struct {
		name    string
		changes map[string]string
	}{
		{"key with a space", map[string]string{"boot_slot": "b", "bad key": "1"}},
		{"key with =", map[string]string{"a=b": "1"}},
		{"empty key", map[string]string{"": "1"}},
		{"key too long", map[string]string{strings.Repeat("k", 65): "1"}},
		{"value with a newline", map[string]string{"boot_slot": "b\nbootcount=9"}},
		{"value with NUL", map[string]string{"boot_slot": "b\x00"}},
		{"value too long", map[string]string{"x": strings.Repeat("v", 4097)}},
		{"line too long for fw_setenv's script", map[string]string{"x": strings.Repeat("v", 1022)}},
		// Each value is allowed, but together they overflow the 4 KiB copy
		// (fw_setenv would write past the copy's end without a word).
		{"environment overflows", map[string]string{"x1": v1000, "x2": v1000, "x3": v1000, "x4": v1000, "x5": v1000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := u.Set(ctx, tt.changes)
			if !errors.Is(err, hw.ErrInvalid) {
				t.Fatalf("Set = %v, want ErrInvalid", err)
			}
			if diff := cmp.Diff(before, envFiles(t, u)); diff != "" {
				t.Errorf("a refused Set changed the files:\n%s", diff)
			}
		})
	}
	// Just fitting is accepted: 1 (the list's end) + 12 (boot_slot=a\0) +
	// 4 × 1004 (x1..x4) + 4 + 58 (x5) = 4091 = 0x1000 less the header.
	fit := map[string]string{"x1": v1000, "x2": v1000, "x3": v1000, "x4": v1000, "x5": strings.Repeat("w", 58)}
	if err := u.Set(ctx, fit); err != nil {
		t.Fatalf("an environment that just fits: %v", err)
	}
	if diff := cmp.Diff(maps2(fit, map[string]string{"boot_slot": "a"}), getEnv(t, u)); diff != "" {
		t.Errorf("the environment that just fits (-want +got):\n%s", diff)
	}
	// A value of the longest line fw_setenv reads whole goes through.
	if err := u.Set(ctx, map[string]string{"x4": "", "x3": "", "x2": strings.Repeat("u", 1020)}); err != nil {
		t.Fatalf("a 1023-byte line: %v", err)
	}
	if got := getEnv(t, u)["x2"]; len(got) != 1020 {
		t.Errorf("x2 is %d bytes, want 1020", len(got))
	}
	if err := u.Set(ctx, map[string]string{"x2": v1000, "x3": v1000, "x4": v1000}); err != nil {
		t.Fatal(err)
	}
	if err := u.Set(ctx, map[string]string{"y": "1"}); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("one byte too many: %v, want ErrInvalid", err)
	}
	var zero hw.UBootEnv
	if _, err := zero.Get(ctx); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("Get without Config = %v, want ErrInvalid", err)
	}
	if _, err := hw.CreateUBootEnvFiles(filepath.Dir(u.Config), 0x1000, true, nil); !errors.Is(err, hw.ErrExists) {
		t.Errorf("CreateUBootEnvFiles over an existing one = %v, want ErrExists", err)
	}
}

func TestUBootEnvImage(t *testing.T) {
	vars := map[string]string{"boot_slot": "b", "bootargs": "console=ttyS0,115200 root=/dev/mmcblk0p2"}
	for _, redundant := range []bool{false, true} {
		img := &hw.UBootEnvImage{Redundant: redundant, Vars: vars}
		if redundant {
			img.Flags = 7
		}
		b, err := img.Format(256)
		if err != nil {
			t.Fatal(err)
		}
		hdr := 4
		if redundant {
			hdr = 5
		}
		wantData := "boot_slot=b\x00bootargs=console=ttyS0,115200 root=/dev/mmcblk0p2\x00\x00"
		if len(b) != 256 || string(b[hdr:hdr+len(wantData)]) != wantData || b[255] != 0xff {
			t.Errorf("Format(redundant %v) = %q", redundant, b)
		}
		if crc := binary.LittleEndian.Uint32(b); crc != crc32.ChecksumIEEE(b[hdr:]) {
			t.Errorf("CRC %08x does not cover the data area", crc)
		}
		back, err := hw.ParseUBootEnvImage(b, redundant)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(img, back); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}

	seal := func(data string, size int) []byte {
		b := make([]byte, 4, size)
		b = append(b, data...)
		for len(b) < size {
			b = append(b, 0xff)
		}
		binary.LittleEndian.PutUint32(b, crc32.ChecksumIEEE(b[4:]))
		return b
	}
	bad := []struct {
		name string
		b    []byte
	}{
		{"too short", []byte{0, 0, 0, 0}},
		{"bad CRC", func() []byte { b := seal("a=1\x00\x00", 64); b[0]++; return b }()},
		{"no terminator", seal(strings.Repeat("a", 60), 64)},
		{"entry without =", seal("a=1\x00junk\x00\x00", 64)},
		{"empty name", seal("=1\x00\x00", 64)},
		{"duplicate name", seal("a=1\x00a=2\x00\x00", 64)},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if img, err := hw.ParseUBootEnvImage(tt.b, false); !errors.Is(err, hw.ErrInvalid) {
				t.Errorf("ParseUBootEnvImage = %v, %v; want ErrInvalid", img, err)
			}
		})
	}
	if img, err := hw.ParseUBootEnvImage(seal("\x00", 64), false); err != nil || len(img.Vars) != 0 {
		t.Errorf("empty environment: %v, %v", img, err)
	}
	for name, img := range map[string]*hw.UBootEnvImage{
		"too big":     {Vars: map[string]string{"a": strings.Repeat("x", 60)}},
		"empty value": {Vars: map[string]string{"a": ""}},
		"bad key":     {Vars: map[string]string{"a b": "1"}},
	} {
		if _, err := img.Format(64); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("Format(%s) = %v, want ErrInvalid", name, err)
		}
	}
}

func TestParseUBootEnvConfig(t *testing.T) {
	got, err := hw.ParseUBootEnvConfig([]byte("# comment\n\n/dev/mtd1 0x0 0x4000 0x10000\n  /dev/mtd2\t0 16384 65536 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []hw.UBootEnvCopy{{"/dev/mtd1", 0, 0x4000}, {"/dev/mtd2", 0, 16384}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{
		"",
		"# only a comment\n",
		"/dev/mtd1 0x0\n",
		"/dev/mtd1 zero 0x4000\n",
		"/dev/mtd1 0 0x4\n",
		"/dev/mtd1 0 0x4000 big\n",
		"/a 0 0x4000\n/b 0 0x2000\n",
		"/a 0 0x4000\n/b 0 0x4000\n/c 0 0x4000\n",
		"/a -1 0x4000\n",
	} {
		if _, err := hw.ParseUBootEnvConfig([]byte(bad)); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("ParseUBootEnvConfig(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

// FuzzParseUBootEnvImage: the parser never panics, and what it accepts
// formats back to an image it reads the same (when the variables are ones
// Format takes).
func FuzzParseUBootEnvImage(f *testing.F) {
	for _, vars := range []map[string]string{nil, {"boot_slot": "a", "bootcount": "2"}} {
		for _, red := range []bool{false, true} {
			b, err := (&hw.UBootEnvImage{Redundant: red, Vars: vars}).Format(128)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b, red)
		}
	}
	f.Add([]byte("\x00\x00\x00\x00a=1\x00"), false)
	f.Fuzz(func(t *testing.T, b []byte, redundant bool) {
		img, err := hw.ParseUBootEnvImage(b, redundant)
		if err != nil {
			if !errors.Is(err, hw.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		out, err := img.Format(max(len(b), 16))
		if err != nil {
			return // names or values BootEnv refuses
		}
		back, err := hw.ParseUBootEnvImage(out, redundant)
		if err != nil {
			t.Fatalf("our own image does not parse: %v", err)
		}
		if diff := cmp.Diff(img, back); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s", diff)
		}
		if !bytes.Equal(out, mustFormat(t, back, len(out))) {
			t.Fatal("Format is not deterministic")
		}
	})
}

func mustFormat(t *testing.T, img *hw.UBootEnvImage, size int) []byte {
	t.Helper()
	b, err := img.Format(size)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzParseUBootEnvConfig(f *testing.F) {
	f.Add([]byte("/dev/mtd1 0x0 0x4000 0x10000\n/dev/mtd2 0x0 0x4000 0x10000\n"))
	f.Add([]byte("# c\n/boot/uboot.env 0 16384\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		copies, err := hw.ParseUBootEnvConfig(b)
		if err != nil {
			if !errors.Is(err, hw.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if len(copies) < 1 || len(copies) > 2 {
			t.Fatalf("%d copies accepted", len(copies))
		}
		for _, c := range copies {
			if c.Path == "" || c.Offset < 0 || c.DataLen(true) < 1 {
				t.Fatalf("accepted %+v", c)
			}
		}
	})
}

// TestUBootEnvConcurrentSet: two handles on one environment (as two
// processes would have, sharing the lock file) set different keys at once;
// no change is lost.
func TestUBootEnvConcurrentSet(t *testing.T) {
	needUBootTools(t)
	ctx := context.Background()
	u, err := hw.CreateUBootEnvFiles(filepath.Join(t.TempDir(), "env"), 0x2000, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	u2 := &hw.UBootEnv{Config: u.Config, LockFile: u.LockFile}
	want := map[string]string{}
	var wg sync.WaitGroup
	for i := range 12 {
		k, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
		want[k] = v
		env := u
		if i%2 == 1 {
			env = u2
		}
		wg.Go(func() {
			if err := env.Set(ctx, map[string]string{k: v}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if diff := cmp.Diff(want, getEnv(t, u)); diff != "" {
		t.Errorf("after concurrent Sets (-want +got):\n%s", diff)
	}
}
