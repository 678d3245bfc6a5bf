package hw

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// TestFactoryData: the identity partition is written whole, read back,
// locked for good; a failed write leaves the previous content.
func TestFactoryData(t *testing.T) {
	ctx := context.Background()
	dev, err := CreateSimDevice(t.TempDir(), "UID-1")
	if err != nil {
		t.Fatal(err)
	}
	fd := dev.FactoryData
	files, locked, err := fd.Read(ctx)
	if err != nil || len(files) != 0 || locked {
		t.Fatalf("fresh partition: %v %v %v", files, locked, err)
	}
	want := map[string][]byte{"idevid.pem": []byte("cert"), "root.pem": []byte("root")}
	if err := fd.Write(ctx, want); err != nil {
		t.Fatal(err)
	}
	dev.Sim.FailNext(OpFactory, errors.New("power cut"))
	if err := fd.Write(ctx, map[string][]byte{"idevid.pem": []byte("other")}); err == nil {
		t.Fatal("a failing write succeeded")
	}
	reopened, err := OpenSimDevice(dev.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	got, locked, err := reopened.FactoryData.Read(ctx)
	if err != nil || locked || len(got) != 2 || !bytes.Equal(got["idevid.pem"], []byte("cert")) {
		t.Fatalf("after a failed write: %q locked=%v err=%v; want the first content", got, locked, err)
	}
	if err := fd.Write(ctx, map[string][]byte{".hidden": nil}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name: %v, want ErrInvalid", err)
	}
	if err := fd.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := fd.Lock(ctx); err != nil {
		t.Fatalf("second Lock: %v", err)
	}
	if err := fd.Write(ctx, want); !errors.Is(err, ErrLocked) {
		t.Fatalf("write after lock: %v, want ErrLocked", err)
	}
	if _, locked, _ := fd.Read(ctx); !locked {
		t.Fatal("Read does not report the lock")
	}
	// The bootloader partition is a slot of its own.
	if _, err := dev.Slots.Write(ctx, SlotBoot, bytes.NewReader([]byte("boot"))); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Slots.Digest(ctx, SlotBoot); err != nil {
		t.Fatal(err)
	}
}

// FuzzFactoryImage: a corrupt factory partition file is refused, never a
// panic.
func FuzzFactoryImage(f *testing.F) {
	f.Add([]byte(`{"locked":true,"files":{"a":"YQ=="}}`))
	f.Add([]byte(`{"files":{"../x":""}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := parseFactoryImage(b)
		if err == nil && img.Files == nil {
			t.Fatal("nil files without error")
		}
	})
}
