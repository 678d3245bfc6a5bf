package update_test

import (
	"context"
	"crypto"
	"errors"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/agent/bootsim"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
)

// TestUpdatePowerCutAtEveryWrite cuts the power at each mutating
// operation of one update (every slot erase and write, boot environment
// update and fuse program, the bootloader's own included), powers the
// unit up again (reopen, boot) and restarts the agent: the unit always
// boots a verified image, ends on the new one with one success reported,
// and never has a slot on trial or marked good that does not verify.
// It runs over a full image in 64 KiB writes, and over a
// full image and a delta in 4 KiB writes, so that a cut falls in many
// places of the slot and of the delta's rebuild.
func TestUpdatePowerCutAtEveryWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int
		chunk int
		delta bool
	}{
		{"full image, 64 KiB writes", 150 << 10, 64 << 10, false},
		{"full image, 4 KiB writes", 64 << 10, 4 << 10, false},
		{"delta, 4 KiB writes", 64 << 10, 4 << 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) { powerCutAtEveryWrite(t, tc.size, tc.chunk, tc.delta) })
	}
}

func powerCutAtEveryWrite(t *testing.T, size, chunk int, withDelta bool) {
	w := newWorld(t)
	v1, v2 := w.releases(size)
	w.publish(v1, nil)
	offer := func() { w.offerOf(v2, 1) }
	if withDelta {
		p := w.publishDelta(v1, v2)
		offer = func() { w.offerDelta(v1, v2, p) }
	} else {
		w.publish(v2, nil)
	}
	withChunk := func(o *update.Options) { o.ChunkSize = chunk }
	ctx := context.Background()

	// A first run counts the mutating operations of the update.
	u := w.newUnit(v1)
	u.opts = withChunk
	offer()
	before := u.dev.Sim.Ops()
	check(t, u.updater())
	wantFinal(t, w, cradle.UpdateSucceeded, "")
	total := u.dev.Sim.Ops() - before
	if total < 5 {
		t.Fatalf("an update made %d mutating operations", total)
	}
	if withDelta {
		w.mu.Lock()
		n := len(w.ranges)
		w.mu.Unlock()
		if n != 1 {
			t.Fatalf("the delta run made %d artifact requests; want the patch only", n)
		}
	}

	keys := bootsim.Options{Keys: []crypto.PublicKey{w.imageKey.Public()}}
	kinds := map[string]int{}
	for n := 1; n <= total; n++ {
		w.mu.Lock()
		w.reports, w.software = nil, nil
		w.mu.Unlock()
		u := w.newUnit(v1)
		u.opts = withChunk
		offer()
		u.dev.Sim.CutAfter(n)
		_, err := u.updater().Check(ctx)
		if !u.dev.Sim.PowerCut() {
			t.Fatalf("cut %d of %d: no power cut happened (err %v)", n, total, err)
		}
		if !errors.Is(err, hw.ErrPowerCut) {
			t.Fatalf("cut %d: the update ended with %v, want the power cut", n, err)
		}
		kinds[cutKind(err)]++
		u.reopen()
		if err := u.boot(ctx); err != nil {
			t.Fatalf("cut %d (%v): boot after the cut: %v", n, err, err)
		}
		runToIdle(t, u.updater())
		if f := w.finalReports(); len(f) != 1 || f[0].State != cradle.UpdateSucceeded {
			t.Fatalf("cut %d (%v): final reports %+v", n, err, f)
		}
		slot, d := u.running()
		if slot != hw.SlotB || d != v2.digest() || w.lastSoftware() != v2.digest() || u.antiRollback() != 2 {
			t.Fatalf("cut %d (%v): runs %s %s, reported %s, anti_rollback %d", n, err, slot, d, w.lastSoftware(), u.antiRollback())
		}
		env, _ := u.dev.BootEnv.Get(ctx)
		if env[hw.EnvUpgradeAvailable] == "1" {
			t.Fatalf("cut %d (%v): slot %s left on trial", n, err, slot)
		}
		if _, err := bootsim.VerifySlot(ctx, u.dev, slot, keys); err != nil {
			t.Fatalf("cut %d: the committed slot does not verify: %v", n, err)
		}
		if err := u.boot(ctx); err != nil || u.lastBoot.Slot != hw.SlotB {
			t.Fatalf("cut %d: next boot %v %+v", n, err, u.lastBoot)
		}
	}
	// The slot is written in whole chunks (Options.ChunkSize,
	// update.DefaultChunkSize by default), the delta's rebuild too.
	writeSize := chunk
	if writeSize == 0 {
		writeSize = update.DefaultChunkSize
	}
	if want := (len(v2.image) + writeSize - 1) / writeSize; kinds["slot write"] != want {
		t.Errorf("%d slot writes of a %d-byte image in %d-byte chunks, want %d", kinds["slot write"], len(v2.image), writeSize, want)
	}
	for _, k := range []string{"slot erase", "slot write", "boot environment update", "fuse program"} {
		if kinds[k] == 0 {
			t.Errorf("no cut at a %s", k)
		}
	}
	t.Logf("power cut at each of %d cut points of one update (%d-byte image, delta %v): %d slot erases, %d slot writes, %d boot environment updates, %d fuse programs",
		total, len(v2.image), withDelta, kinds["slot erase"], kinds["slot write"], kinds["boot environment update"], kinds["fuse program"])
}

// cutKind names the operation a power cut interrupted, from the error
// of the cut (hw's powerCutError says "hw: <operation>: power cut ...").
func cutKind(err error) string {
	s := err.Error()
	for _, k := range []struct{ op, kind string }{
		{"erase slot", "slot erase"}, {"write slot", "slot write"},
		{"set boot environment", "boot environment update"}, {"program fuse", "fuse program"},
	} {
		if strings.Contains(s, "hw: "+k.op) {
			return k.kind
		}
	}
	return "other: " + s
}
