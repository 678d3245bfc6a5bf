package factory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
)

// SyncReport says what a Sync did.
type SyncReport struct {
	Uploaded int      `json:"uploaded"` // newly stored by the server
	Known    int      `json:"known"`    // the server had them already (a retried upload)
	Pending  int      `json:"pending"`  // still to upload (server unreachable or refusing)
	Refused  []string `json:"refused,omitempty"`
}

// Sync uploads the journal's pending records in order and journals each
// acknowledgement. A record the server already holds counts as
// acknowledged: uploads are idempotent by record id. It stops at the first
// transport failure (the server is unreachable: the rest stays pending);
// a record the server refuses (tampered, conflicting) is reported and
// skipped. Tampered journal records never reach the server: the journal
// refuses them at open (see JournalRecord.Err) and Sync reports them.
func (s *Station) Sync(ctx context.Context) (SyncReport, error) {
	var rep SyncReport
	for _, r := range s.cfg.Journal.Records() {
		if r.Err != nil {
			rep.Refused = append(rep.Refused, r.Err.Error())
		}
	}
	pending := s.cfg.Journal.Pending()
	if s.cfg.Server == nil {
		rep.Pending = len(pending)
		return rep, fmt.Errorf("factory: no server configured: %d records pending", len(pending))
	}
	for i, r := range pending {
		created, err := s.cfg.Server.UploadTrace(ctx, r.Signed)
		if err != nil {
			switch cradle.ErrorCode(err) {
			case cradle.EINVALID, cradle.ECONFLICT, cradle.EFORBIDDEN, cradle.ENOTFOUND:
				rep.Refused = append(rep.Refused, fmt.Sprintf("record %s (unit %s): refused by the server: %s", r.Record.ID, r.Record.Serial, cradle.ErrorMessage(err)))
				continue
			}
			rep.Pending = len(pending) - i
			return rep, fmt.Errorf("factory: upload record %s: %w (%d records stay in the journal for the next sync)", r.Record.ID, err, rep.Pending)
		}
		if err := s.cfg.Journal.MarkSynced(r.Record.ID); err != nil {
			rep.Pending = len(pending) - i
			return rep, err
		}
		if created {
			rep.Uploaded++
		} else {
			rep.Known++
		}
	}
	return rep, nil
}

// Recover closes the units a previous run left started without a record
// (the station was killed or lost power): each gets a failed record with
// step "interrupted", and its device key is destroyed when open can
// reach the unit again. The serials stay used. It returns the records.
func (s *Station) Recover(ctx context.Context, open func(spec string) (Unit, io.Closer, error)) ([]*cradle.TraceRecord, error) {
	var out []*cradle.TraceRecord
	for _, st := range s.cfg.Journal.Interrupted() {
		b, ok := s.cfg.Journal.Batch(st.Unit.Batch)
		if !ok {
			return out, fmt.Errorf("factory: journal: unit %s belongs to batch %s, which the journal does not hold", st.Unit.Serial, st.Unit.Batch)
		}
		reason := "the station stopped while provisioning this unit; "
		uid := ""
		if open == nil || st.Device == "" {
			reason += "the unit could not be reached to destroy its key: quarantine it"
		} else if u, c, err := open(st.Device); err != nil {
			reason += fmt.Sprintf("the unit could not be reached to destroy its key (%v): quarantine it", err)
		} else {
			d := u.Device
			if err := d.Keys.DestroyKey(ctx, DeviceKeyName); err != nil && !isNotFound(err) {
				reason += fmt.Sprintf("destroying its device key failed (%v): quarantine it", err)
			} else {
				reason += "its device key was destroyed"
			}
			var uerr error
			if uid, uerr = d.HardwareUID(ctx); uerr != nil {
				reason += fmt.Sprintf("; its hardware UID could not be read (%v)", uerr)
			}
			if c != nil {
				c.Close()
			}
		}
		now := s.now()
		rec := &cradle.TraceRecord{
			ID: st.RecordID, Batch: b.ID, Station: s.cfg.Name, Operator: st.Operator, Profile: s.cfg.Profile,
			Serial: st.Unit.Serial, MAC: st.Unit.MAC, HardwareUID: uid, Model: b.Model, HardwareRevision: b.HardwareRevision,
			Status: cradle.UnitFailed, FailedStep: "interrupted", Reason: reason, StartedAt: now, FinishedAt: now,
		}
		if err := s.finish(rec, &Result{}); err != nil {
			return out, err
		}
		out = append(out, rec)
	}
	return out, nil
}

func isNotFound(err error) bool { return err != nil && errors.Is(err, hw.ErrNotFound) }

// Syncer uploads in the background while a batch runs: Kick after each
// journaled record; Stop waits for the last pass.
type Syncer struct {
	s     *Station
	kick  chan struct{}
	done  chan struct{}
	total SyncReport // what every pass uploaded; read after Stop
}

// add sums a pass into the run's report.
func (r *SyncReport) add(p SyncReport) {
	r.Uploaded += p.Uploaded
	r.Known += p.Known
	r.Pending = p.Pending
	r.Refused = p.Refused // each pass reports every refused record again
}

// StartSyncer starts background syncing.
func (s *Station) StartSyncer(ctx context.Context) *Syncer {
	y := &Syncer{s: s, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(y.done)
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-y.kick:
				if !ok {
					return
				}
				rep, err := s.Sync(ctx)
				y.total.add(rep)
				if err != nil {
					// The server is unreachable: wait a little before
					// the next kick is honoured.
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
				}
			}
		}
	}()
	return y
}

// Kick asks for a sync pass soon.
func (y *Syncer) Kick() {
	select {
	case y.kick <- struct{}{}:
	default:
	}
}

// Stop ends background syncing after the current pass and returns what
// the passes did.
func (y *Syncer) Stop() SyncReport {
	close(y.kick)
	<-y.done
	return y.total
}
