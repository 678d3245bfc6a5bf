package hw_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"cradle/internal/agent/hw"
)

// TestSimOpenAt: a slot never written is not found, an erased one is
// empty, and a slot written flash-style or atomically reads back at any
// offset with its size.
func TestSimOpenAt(t *testing.T) {
	ctx := context.Background()
	dev, err := hw.CreateSimDevice(t.TempDir(), "uid-1")
	if err != nil {
		t.Fatal(err)
	}
	sim := dev.Sim
	if _, _, err := sim.OpenAt(ctx, hw.SlotB); !errors.Is(err, hw.ErrNotFound) {
		t.Fatalf("never written: err = %v, want ErrNotFound", err)
	}
	if _, _, err := sim.OpenAt(ctx, hw.Slot("c")); !errors.Is(err, hw.ErrInvalid) {
		t.Fatalf("unknown slot: err = %v, want ErrInvalid", err)
	}
	if err := sim.Erase(ctx, hw.SlotB); err != nil {
		t.Fatal(err)
	}
	r, n, err := sim.OpenAt(ctx, hw.SlotB)
	if err != nil || n != 0 {
		t.Fatalf("erased: size %d, err %v; want 0, nil", n, err)
	}
	r.Close()
	img := image(300 << 10)
	if err := writeChunks(ctx, sim, hw.SlotB, img, 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Write(ctx, hw.SlotA, bytes.NewReader(img[:1000])); err != nil {
		t.Fatal(err)
	}
	for slot, want := range map[hw.Slot][]byte{hw.SlotB: img, hw.SlotA: img[:1000]} {
		r, n, err := sim.OpenAt(ctx, slot)
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(len(want)) {
			t.Errorf("slot %s: size %d, want %d", slot, n, len(want))
		}
		got := make([]byte, 100)
		if _, err := r.ReadAt(got, n-100); err != nil || !bytes.Equal(got, want[len(want)-100:]) {
			t.Errorf("slot %s: the last 100 bytes differ (err %v)", slot, err)
		}
		r.Close()
	}
}
