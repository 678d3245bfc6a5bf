package ota

import (
	"context"
	"fmt"
	"time"

	"cradle"
	"cradle/internal/artifact"
)

// CollectGarbage deletes the blobs of store that no release of any tenant
// refers to (releases.ReferencedArtifacts, as the system), sparing those
// Put less than grace before now: an upload in flight, or one whose
// record failed a moment ago, is not referenced yet. grace must exceed
// the longest upload plus the time to record it (ota.gc_grace, 24 hours
// by default).
func CollectGarbage(ctx context.Context, store artifact.Store, releases cradle.ReleaseService, grace time.Duration, now time.Time) (artifact.GCStats, error) {
	if grace <= 0 {
		return artifact.GCStats{}, fmt.Errorf("ota: garbage collection needs a positive grace period, not %s", grace)
	}
	// Tenant 0 is no tenant: ReferencedArtifacts spans all of them.
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "artifact-gc"))
	referenced := map[artifact.Digest]bool{}
	err := releases.ReferencedArtifacts(sys, func(hex string) error {
		d, err := artifact.ParseDigest(hex)
		if err != nil {
			return fmt.Errorf("ota: a release refers to artifact %q: %w", hex, err)
		}
		referenced[d] = true
		return nil
	})
	if err != nil {
		return artifact.GCStats{}, fmt.Errorf("ota: list referenced artifacts: %w", err)
	}
	return artifact.GC(ctx, store, func(d artifact.Digest) bool { return referenced[d] }, grace, now)
}
