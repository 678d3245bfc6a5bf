package hw_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"

	"cradle/internal/agent/hw"

	"github.com/google/go-cmp/cmp"
)

// image returns n bytes that differ at every offset, so a misplaced chunk
// shows.
func image(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// writeChunks writes img into slot from offset from, in chunks of size
// chunk, the way an update streams it.
func writeChunks(ctx context.Context, w hw.SlotWriter, slot hw.Slot, img []byte, from, chunk int) error {
	for off := from; off < len(img); off += chunk {
		end := min(off+chunk, len(img))
		if err := w.WriteAt(ctx, slot, int64(off), img[off:end]); err != nil {
			return err
		}
	}
	return nil
}

func slotSize(t *testing.T, w hw.SlotWriter, slot hw.Slot) int64 {
	t.Helper()
	n, err := w.Size(context.Background(), slot)
	if err != nil {
		t.Fatalf("Size(%s): %v", slot, err)
	}
	return n
}

func TestSlotWriter(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	var w hw.SlotWriter = d.Sim
	img := image(10_000)

	// Blank flash holds nothing and is written from offset 0.
	if n := slotSize(t, w, hw.SlotB); n != 0 {
		t.Errorf("blank slot b: Size = %d, want 0", n)
	}
	if err := writeChunks(ctx, w, hw.SlotB, img, 0, 4096); err != nil {
		t.Fatal(err)
	}
	if n := slotSize(t, w, hw.SlotB); n != int64(len(img)) {
		t.Errorf("Size = %d, want %d", n, len(img))
	}
	if got := readSlot(t, d, hw.SlotB); !bytes.Equal(got, img) {
		t.Error("slot b does not hold the image written in chunks")
	}
	if sum, err := d.Slots.Digest(ctx, hw.SlotB); err != nil || sum != sha256.Sum256(img) {
		t.Errorf("Digest = %x, %v; want the image's SHA-256", sum, err)
	}

	// Out-of-order writes are refused and change nothing.
	for _, off := range []int64{0, 9_999, 10_001, -1} {
		err := w.WriteAt(ctx, hw.SlotB, off, []byte("x"))
		if !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("WriteAt(off %d) on a %d-byte slot = %v, want ErrInvalid", off, len(img), err)
		}
	}
	if got := readSlot(t, d, hw.SlotB); !bytes.Equal(got, img) {
		t.Error("refused writes changed the slot")
	}
	if err := w.WriteAt(ctx, "c", 0, []byte("x")); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("WriteAt on slot c = %v, want ErrInvalid", err)
	}
	if err := w.Erase(ctx, "c"); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("Erase of slot c = %v, want ErrInvalid", err)
	}

	// Erase empties the slot; Open and Digest read what is there.
	if err := w.Erase(ctx, hw.SlotB); err != nil {
		t.Fatal(err)
	}
	if n := slotSize(t, w, hw.SlotB); n != 0 {
		t.Errorf("after Erase: Size = %d", n)
	}
	if got := readSlot(t, d, hw.SlotB); len(got) != 0 {
		t.Errorf("after Erase the slot reads %d bytes", len(got))
	}
	if sum, err := d.Slots.Digest(ctx, hw.SlotB); err != nil || sum != sha256.Sum256(nil) {
		t.Errorf("Digest after Erase = %x, %v; want the SHA-256 of nothing", sum, err)
	}

	// A write interrupted by a restart resumes at Size on a reopened device.
	if err := writeChunks(ctx, w, hw.SlotB, img[:6000], 0, 1000); err != nil {
		t.Fatal(err)
	}
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	from := slotSize(t, d2.Sim, hw.SlotB)
	if from != 6000 {
		t.Fatalf("reopened: Size = %d, want 6000", from)
	}
	if err := writeChunks(ctx, d2.Sim, hw.SlotB, img, int(from), 1500); err != nil {
		t.Fatal(err)
	}
	if sum, _ := d2.Slots.Digest(ctx, hw.SlotB); sum != sha256.Sum256(img) {
		t.Error("the resumed write does not give the image")
	}

	// The atomic Write of the factory path still replaces a slot whole,
	// and a WriteAt continues after it.
	if _, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(img[:100])); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteAt(ctx, hw.SlotA, 100, img[100:200]); err != nil {
		t.Fatal(err)
	}
	if got := readSlot(t, d, hw.SlotA); !bytes.Equal(got, img[:200]) {
		t.Error("WriteAt after Write does not append")
	}
	// d2 counts its own operations.
	if ops, ops2 := d.Sim.Ops(), d2.Sim.Ops(); ops != 3+1+6+1+1 || ops2 != 3 {
		t.Errorf("Ops = %d and %d, want 12 (3 writes, an erase, 6 writes, a Write, a write) and 3", ops, ops2)
	}
}

// TestCutAfterWriteAt cuts the power at every write of a streamed image:
// the slot then holds the chunks before and half of the cut one, every
// later operation fails, and a reopened device resumes at Size.
func TestCutAfterWriteAt(t *testing.T) {
	ctx := context.Background()
	const chunk = 1000
	img := image(5500)
	chunks := (len(img) + chunk - 1) / chunk
	for k := 1; k <= chunks; k++ {
		t.Run(fmt.Sprintf("cut at write %d", k), func(t *testing.T) {
			d := newDevice(t)
			if err := d.BootEnv.Set(ctx, map[string]string{"boot_slot": "a"}); err != nil {
				t.Fatal(err)
			}
			d.Sim.CutAfter(k)
			err := writeChunks(ctx, d.Sim, hw.SlotB, img, 0, chunk)
			if !errors.Is(err, hw.ErrPowerCut) {
				t.Fatalf("writeChunks = %v, want ErrPowerCut", err)
			}
			start := (k - 1) * chunk
			n := min(chunk, len(img)-start)
			want := img[:start+n/2]
			if got := readSlot(t, d, hw.SlotB); !bytes.Equal(got, want) {
				t.Errorf("slot holds %d bytes, want the first %d of the image", len(got), len(want))
			}
			if !d.Sim.PowerCut() || d.Sim.Ops() != 1+k {
				t.Errorf("PowerCut = %v, Ops = %d; want true, %d", d.Sim.PowerCut(), d.Sim.Ops(), 1+k)
			}
			// The power stays off for every mutating operation.
			for name, op := range map[string]func() error{
				"WriteAt": func() error { return d.Sim.WriteAt(ctx, hw.SlotB, int64(len(want)), img[len(want):]) },
				"Erase":   func() error { return d.Sim.Erase(ctx, hw.SlotB) },
				"Write": func() error {
					_, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(img))
					return err
				},
				"Set":     func() error { return d.BootEnv.Set(ctx, map[string]string{"boot_slot": "b"}) },
				"Program": func() error { return d.Fuses.Program(ctx, hw.FuseDebugLock, []byte{1}) },
			} {
				if err := op(); !errors.Is(err, hw.ErrPowerCut) {
					t.Errorf("%s after the cut = %v, want ErrPowerCut", name, err)
				}
			}
			if d.Sim.Ops() != 1+k {
				t.Errorf("operations refused for lack of power were counted: Ops = %d", d.Sim.Ops())
			}
			if got := readSlot(t, d, hw.SlotB); !bytes.Equal(got, want) {
				t.Error("operations after the cut changed slot b")
			}
			if _, err := d.Slots.Open(ctx, hw.SlotA); !errors.Is(err, hw.ErrNotFound) {
				t.Errorf("slot a after a refused Write: %v, want ErrNotFound", err)
			}
			env, _ := d.BootEnv.Get(ctx)
			if diff := cmp.Diff(map[string]string{"boot_slot": "a"}, env); diff != "" {
				t.Errorf("boot environment after the cut (-want +got):\n%s", diff)
			}

			// Power back: reopening clears the cut; the write resumes.
			d2, err := hw.OpenSimDevice(d.Sim.Dir())
			if err != nil {
				t.Fatal(err)
			}
			if d2.Sim.PowerCut() || d2.Sim.Ops() != 0 {
				t.Errorf("reopened: PowerCut = %v, Ops = %d", d2.Sim.PowerCut(), d2.Sim.Ops())
			}
			from := slotSize(t, d2.Sim, hw.SlotB)
			if err := writeChunks(ctx, d2.Sim, hw.SlotB, img, int(from), chunk); err != nil {
				t.Fatal(err)
			}
			if sum, _ := d2.Slots.Digest(ctx, hw.SlotB); sum != sha256.Sum256(img) {
				t.Error("resumed after the cut: slot b is not the image")
			}
		})
	}
}

func TestCutAfterErase(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	old := image(3001)
	if _, err := d.Slots.Write(ctx, hw.SlotB, bytes.NewReader(old)); err != nil {
		t.Fatal(err)
	}
	d.Sim.CutAfter(1)
	if err := d.Sim.Erase(ctx, hw.SlotB); !errors.Is(err, hw.ErrPowerCut) {
		t.Fatalf("Erase = %v, want ErrPowerCut", err)
	}
	if got := readSlot(t, d, hw.SlotB); !bytes.Equal(got, old[:1500]) {
		t.Errorf("a cut erase left %d bytes, want the first 1500 of the old image", len(got))
	}
	if err := d.Sim.Erase(ctx, hw.SlotB); !errors.Is(err, hw.ErrPowerCut) {
		t.Errorf("second Erase = %v, want ErrPowerCut", err)
	}
	if got := readSlot(t, d, hw.SlotB); len(got) != 1500 {
		t.Errorf("an erase without power changed the slot to %d bytes", len(got))
	}
	// A cut erase of blank flash leaves it blank.
	d.Sim.CutAfter(0)
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	d2.Sim.CutAfter(1)
	if err := d2.Sim.Erase(ctx, hw.SlotA); !errors.Is(err, hw.ErrPowerCut) {
		t.Fatalf("Erase of blank slot a = %v, want ErrPowerCut", err)
	}
	if n := slotSize(t, d2.Sim, hw.SlotA); n != 0 {
		t.Errorf("blank slot a holds %d bytes after a cut erase", n)
	}
}

// TestCutAfterAtomic cuts the power at each atomic operation: the old
// content stays.
func TestCutAfterAtomic(t *testing.T) {
	ctx := context.Background()
	old := image(2000)
	tests := []struct {
		name string
		op   func(d *hw.Device) error
	}{
		{"Slots.Write", func(d *hw.Device) error {
			_, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(image(70_000)))
			return err
		}},
		{"BootEnv.Set", func(d *hw.Device) error {
			return d.BootEnv.Set(ctx, map[string]string{"boot_slot": "b", "upgrade_available": "1", "bootcount": ""})
		}},
		{"Fuses.Program", func(d *hw.Device) error {
			b, _ := hw.Thermometer(2, 64)
			return d.Fuses.Program(ctx, hw.FuseAntiRollback, b)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDevice(t)
			if _, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(old)); err != nil {
				t.Fatal(err)
			}
			if err := d.BootEnv.Set(ctx, map[string]string{"boot_slot": "a", "bootcount": "1"}); err != nil {
				t.Fatal(err)
			}
			one, _ := hw.Thermometer(1, 64)
			if err := d.Fuses.Program(ctx, hw.FuseAntiRollback, one); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, d)
			d.Sim.CutAfter(1)
			if err := tt.op(d); !errors.Is(err, hw.ErrPowerCut) {
				t.Fatalf("%s = %v, want ErrPowerCut", tt.name, err)
			}
			if diff := cmp.Diff(before, snapshot(t, d)); diff != "" {
				t.Errorf("the cut %s changed the device (-before +after):\n%s", tt.name, diff)
			}
			assertNoTemp(t, d.Sim.Dir())
			if err := tt.op(d); !errors.Is(err, hw.ErrPowerCut) {
				t.Errorf("again without power: %v, want ErrPowerCut", err)
			}
			// Powered up again, the operation goes through.
			d2, err := hw.OpenSimDevice(d.Sim.Dir())
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.op(d2); err != nil {
				t.Fatalf("after reopening: %v", err)
			}
			if d2.Sim.Ops() != 1 {
				t.Errorf("Ops = %d, want 1", d2.Sim.Ops())
			}
			if cmp.Equal(before, snapshot(t, d2)) {
				t.Error("the operation after reopening changed nothing")
			}
		})
	}
}

// snapshot is what a test compares before and after a cut.
type devState struct {
	SlotA []byte
	Env   map[string]string
	Fuses hw.FuseValues
}

func snapshot(t *testing.T, d *hw.Device) devState {
	t.Helper()
	ctx := context.Background()
	env, err := d.BootEnv.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f, err := d.Fuses.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return devState{SlotA: readSlot(t, d, hw.SlotA), Env: env, Fuses: f}
}

func TestCutAfterCounting(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	// Refused arguments are no operation.
	if err := d.BootEnv.Set(ctx, map[string]string{"bad key": "1"}); !errors.Is(err, hw.ErrInvalid) {
		t.Fatal(err)
	}
	if err := d.Fuses.Program(ctx, "jtag", []byte{1}); !errors.Is(err, hw.ErrInvalid) {
		t.Fatal(err)
	}
	if err := d.Sim.WriteAt(ctx, hw.SlotB, 5, []byte("x")); !errors.Is(err, hw.ErrInvalid) {
		t.Fatal(err)
	}
	if d.Sim.Ops() != 0 {
		t.Errorf("refused calls counted: Ops = %d", d.Sim.Ops())
	}
	// The count is relative to the moment CutAfter is called.
	for range 3 {
		if err := d.BootEnv.Set(ctx, map[string]string{"x": "1"}); err != nil {
			t.Fatal(err)
		}
	}
	d.Sim.CutAfter(3)
	if err := d.Sim.Erase(ctx, hw.SlotB); err != nil {
		t.Fatal(err)
	}
	if err := d.Sim.WriteAt(ctx, hw.SlotB, 0, []byte("ab")); err != nil {
		t.Fatal(err)
	}
	if err := d.Sim.WriteAt(ctx, hw.SlotB, 2, []byte("cdef")); !errors.Is(err, hw.ErrPowerCut) {
		t.Fatalf("third operation after CutAfter(3) = %v, want ErrPowerCut", err)
	}
	if got := readSlot(t, d, hw.SlotB); string(got) != "abcd" {
		t.Errorf("slot = %q, want abcd (half of the cut write)", got)
	}
	if d.Sim.Ops() != 6 {
		t.Errorf("Ops = %d, want 6", d.Sim.Ops())
	}
	// Disarming: CutAfter(0) cancels a pending cut.
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	d2.Sim.CutAfter(1)
	d2.Sim.CutAfter(0)
	if err := d2.BootEnv.Set(ctx, map[string]string{"x": "2"}); err != nil {
		t.Errorf("after disarming: %v", err)
	}
}
