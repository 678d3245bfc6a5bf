package agent

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Rekey replaces the LDevID key at once, as the server asked with a rekey
// command: a new key in the key store, a simplereenroll signed with the
// current LDevID, then the confirmation, the same path as a scheduled
// renewal. The working identity is never lost: until the new certificate
// is stored the current one is untouched, and a new one the server
// refuses is dropped and the previous restored (see Step). A failure
// after the new certificate was stored leaves it to be confirmed by the
// next Step. Rekey refuses while the unit is not enrolled or the restart
// guard holds. Like Step, it must not run concurrently with Step.
func (id *Identity) Rekey(ctx context.Context, now time.Time) error {
	s := id.state
	if now.Before(s.HoldUntil) {
		return fmt.Errorf("agent: rekey: %w", restartLoopError(id.opts.Guard, s.HoldUntil))
	}
	if s.Status != StatusEnrolled || s.Current == nil {
		return fmt.Errorf("agent: rekey: the unit is %s, not enrolled; it gets a key when it enrolls", s.Status)
	}
	if !now.Before(s.Current.NotAfter) {
		return errors.New("agent: rekey: the LDevID expired; the next step enrolls again with the IDevID")
	}
	if err := id.obtain(ctx, now, true); err != nil {
		return fmt.Errorf("agent: rekey: %w", err)
	}
	return nil
}
