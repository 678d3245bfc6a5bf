package hw_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"cradle/internal/agent/hw"
)

// crashChildEnv names the device directory when the test binary runs as
// the child of TestSlotWriteKilled.
const crashChildEnv = "HW_TEST_CRASH_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

// stallingReader yields n bytes, then says so on stdout and blocks forever.
type stallingReader struct{ n int }

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		fmt.Println("midway")
		select {}
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = 'N'
	}
	r.n -= k
	return k, nil
}

// crashChild writes slot A of the device in dir and stalls halfway, to be
// killed.
func crashChild(dir string) {
	d, err := hw.OpenSimDevice(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	_, err = d.Slots.Write(context.Background(), hw.SlotA, &stallingReader{n: 512 << 10})
	fmt.Fprintln(os.Stderr, "write returned:", err)
	os.Exit(3)
}

// TestSlotWriteKilled kills a process with SIGKILL in the middle of a slot
// write: the slot still holds the previous image, whole.
func TestSlotWriteKilled(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t)
	old := bytes.Repeat([]byte("old image "), 100<<10)
	if _, err := d.Slots.Write(ctx, hw.SlotA, bytes.NewReader(old)); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+d.Sim.Dir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "midway\n" {
		t.Fatalf("child said %q, %v; stderr:\n%s", line, err, stderr.Bytes())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	if got, err := d.Slots.Digest(ctx, hw.SlotA); err != nil || got != sha256.Sum256(old) {
		t.Errorf("after the kill: Digest = %x, %v; want the old image's", got, err)
	}
	rc, err := d.Slots.Open(ctx, hw.SlotA)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, _ := io.ReadAll(rc); !bytes.Equal(b, old) {
		t.Errorf("after the kill slot A holds %d bytes, not the old image", len(b))
	}
	// The device opens and writes normally afterwards; the dead writer's
	// temporary file is ignored.
	d2, err := hw.OpenSimDevice(d.Sim.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d2.Slots.Write(ctx, hw.SlotA, bytes.NewReader([]byte("new"))); err != nil {
		t.Fatal(err)
	}
}
