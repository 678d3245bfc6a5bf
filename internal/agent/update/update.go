// Package update is the agent's A/B update state machine: it takes an
// offer from the server, checks it against signed TUF metadata, streams
// the image (or a zstd delta) into the inactive slot, verifies it, boots
// it on trial, runs health checks, and commits or rolls back.
//
// # Parties and trust
//
// The server offers an update (GET /device/v1/update) but is not trusted
// for what to install: the TUF target named by the offer's target path,
// fetched through the agent's TUF client (Metadata), gives the length,
// SHA-256, model, hardware revisions and security counter. An offer that
// disagrees with the signed target is refused. The image is an MCUboot
// image signed by the image key whose hash is burnt into the
// image_key_hash fuses; the updater checks the signature with that key
// before the slot is marked bootable, so the bootloader never gets an
// image it would refuse. The anti_rollback fuses (a thermometer code) hold
// the lowest security counter the device accepts; they advance only after
// the new image is committed, so that a fallback to the old slot still
// boots.
//
// # States
//
// The state is one JSON file (update.json in the state directory),
// replaced atomically, and every transition is saved before its side
// effect, so a restart at any point repeats at most one idempotent step:
//
//	idle → fetching → downloading [→ applying] → verifying → installing
//	     → rebooting → trial → committing → reporting → idle
//	                        ↘ rolling-back → reverting → reporting → idle
//
// fetching refreshes the TUF metadata and checks the target (model,
// hardware revision, security counter not below the fuses', the offer
// agreeing). downloading streams into the inactive slot through
// hw.SlotWriter (a delta's patch into the state directory), hashing and
// counting on the fly and never taking more than the signed length; the
// offset is saved every Options.SaveEvery bytes, and a resume re-hashes
// what the slot already holds and asks for the rest with Range. applying
// rebuilds a delta against the active slot into the inactive one
// (the active slot is read into memory: delta.Apply takes its base whole).
// verifying checks length and digest, then the MCUboot signature and
// that the image's security counter is the signed one, reading the slot
// in place (hw.SlotReaderAt, mcuboot.VerifyReader) so the image is never
// held in memory. installing sets
// boot_slot=new, upgrade_available=1, bootcount=0 in one Set; rebooting
// calls Options.Reboot. After the boot, a booted new slot with
// upgrade_available=1 is a trial: the health checks (the server answers,
// the optional hook, Options.Liveness) must pass before
// Options.HealthTimeout from the trial's start, and a check still
// running at that deadline is cut and fails the trial. committing clears
// upgrade_available and bootcount, then programs the anti_rollback fuses.
// A failed trial sets boot_slot=old, upgrade_available=0 and reboots. If
// the bootloader fell back by itself (booted the old slot while the state
// says rebooting, trial or committing) the report is "rollback by
// bootloader", and nothing is committed: the fuses never advance while
// the old image runs.
//
// Every refusal (metadata the TUF client refuses, an offer that is not
// for this device, a lower security counter, a digest or length
// mismatch, more data than the signed length, a bad signature) leaves the
// boot environment untouched, so the device stays on its slot, and is
// reported as failed with the reason. A reason names the attack refused
// in the TUF client's words (tufclient.Attack): the client's own refusals
// read "TUF metadata refused: tufclient: rollback refused (timestamp):
// ...", the updater's start with the attack ("wrong-hardware: ...",
// "lower-security-counter: ...", "arbitrary-software: ..." for a target
// not signed, bytes that are not the signed ones or a bad image
// signature, "endless-data: ..." for a download longer than the signed
// length). Failures to reach the server are transient: the state stays
// and the step is tried again. A download URL
// the server refuses (403: signed links expire) is not retried as it is:
// the updater asks for a fresh offer of the same attempt and downloads
// from its new URL; no such offer any more ends the update as failed.
package update

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/tufclient"
	"cradle/internal/delta"
	"cradle/internal/mcuboot"
	"cradle/internal/tuf"
)

// Target is a target file as the signed TUF metadata describes it.
type Target struct {
	Path   string
	Length int64
	SHA256 [32]byte
	Custom tuf.Custom
}

// Metadata is the agent's TUF client.
type Metadata interface {
	// Refresh brings the trusted metadata up to date from the repository
	// at metadataURL (root chain, timestamp, snapshot, targets). It fails
	// for metadata it refuses (expired, rolled back, mix-and-match, bad
	// signatures) and when the repository cannot be reached (an error
	// for which IsTransient holds).
	Refresh(ctx context.Context, metadataURL string) error
	// Target returns the trusted target at path, or an error if the
	// trusted targets metadata has none.
	Target(path string) (Target, error)
}

// Server is the device update API (Client speaks it over HTTPS).
type Server interface {
	// Check returns the pending offer for a device running
	// runningSHA256, or nil when nothing is pending.
	Check(ctx context.Context, runningSHA256 string) (*Offer, error)
	// Report sends a report on an attempt.
	Report(ctx context.Context, r cradle.UpdateReport) error
	// ReportSoftware tells the server which image runs.
	ReportSoftware(ctx context.Context, sha256Hex string) error
	// Download returns rawURL's content from byte off on.
	Download(ctx context.Context, rawURL string, off int64) (io.ReadCloser, error)
}

// Options configures New. Device, Writer, Server, Metadata, StateDir,
// Model and Reboot are required.
type Options struct {
	// Device is the unit's hardware: slots, boot environment, fuses.
	Device *hw.Device
	// Writer writes the inactive slot flash-style.
	Writer hw.SlotWriter
	// Server is the device update API.
	Server Server
	// Metadata is the TUF client.
	Metadata Metadata
	// StateDir holds update.json and a delta's patch.
	StateDir string
	// Model and HardwareRevision are the unit's, from its factory data.
	Model            string
	HardwareRevision string
	// ImageKeys are the public keys images may be signed with; only the
	// one whose KEYHASH is the image_key_hash fuse value is used (all of
	// them while the fuse is blank).
	ImageKeys []crypto.PublicKey
	// Reboot reboots the unit. On a real unit it does not return; in the
	// simulator it boots the simulated unit and returns, and the updater
	// carries on as after a boot.
	Reboot func(ctx context.Context) error
	// BootedSlot returns the slot the unit booted from; nil means the boot
	// environment's boot_slot (default "a").
	BootedSlot func(ctx context.Context) (hw.Slot, error)
	// BootID identifies the current boot (Linux: /proc/sys/kernel/random/boot_id);
	// nil means every resume is after a boot.
	BootID func() string
	// HealthHook, if set, is a program run with the new version in
	// CRADLE_UPDATE_VERSION; it must exit 0 within HealthTimeout.
	HealthHook []string
	// Liveness checks the agent itself; nil passes.
	Liveness func(ctx context.Context) error
	// HealthTimeout bounds the health checks of a trial boot from its
	// start; zero means 5 minutes.
	HealthTimeout time.Duration
	// HealthRetry spaces retries of failing checks; zero means 5 s.
	HealthRetry time.Duration
	// SaveEvery is how many downloaded bytes go between saves of the
	// offset; zero means 1 MiB.
	SaveEvery int64
	// ChunkSize is how many bytes go to the slot in one write (one flash
	// program operation, hw.SlotWriter.WriteAt), for a full image and for
	// a delta's rebuilt image alike; only the last write of an image is
	// shorter. Zero means DefaultChunkSize. Each write is synced, so
	// small chunks cost throughput (16 KiB writes ran at 0.28 of the
	// install benchmark's baseline); the power-cut tests use small
	// chunks to cut at more places.
	ChunkSize int
	// Observe, if set, is called with each state right after it is
	// saved (progress display; the kill-in-every-state test stops the
	// updater there).
	Observe func(State)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
}

// Updater runs the state machine. Its methods are not safe for concurrent
// use except Notify.
type Updater struct {
	opts   Options
	st     *State
	notice chan struct{}
	mu     sync.Mutex
}

// New checks opts and loads the state from opts.StateDir (no network, no
// hardware). Resume then finishes what a previous run left.
func New(opts Options) (*Updater, error) {
	switch {
	case opts.Device == nil || opts.Device.Slots == nil || opts.Device.BootEnv == nil || opts.Device.Fuses == nil:
		return nil, errors.New("update: no device (slots, boot environment and fuses)")
	case opts.Writer == nil:
		return nil, errors.New("update: no slot writer")
	case !canReadAt(opts.Device.Slots):
		return nil, errors.New("update: the unit's slots cannot be read at offsets (hw.SlotReaderAt), which verifying an image in place needs")
	case opts.Server == nil:
		return nil, errors.New("update: no server")
	case opts.Metadata == nil:
		return nil, errors.New("update: no TUF client")
	case opts.StateDir == "":
		return nil, errors.New("update: no state directory")
	case opts.Model == "":
		return nil, errors.New("update: no device model")
	case opts.Reboot == nil:
		return nil, errors.New("update: no reboot function")
	}
	if opts.HealthTimeout <= 0 {
		opts.HealthTimeout = 5 * time.Minute
	}
	if opts.HealthRetry <= 0 {
		opts.HealthRetry = 5 * time.Second
	}
	if opts.SaveEvery <= 0 {
		opts.SaveEvery = 1 << 20
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("update: state directory: %w", err)
	}
	st, err := loadState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	return &Updater{opts: opts, st: st, notice: make(chan struct{}, 1)}, nil
}

// State returns a copy of the current state.
func (u *Updater) State() State { return *u.st }

// Notify tells the updater that the server has an update (an MQTT notice);
// Run then checks at once.
func (u *Updater) Notify() {
	select {
	case u.notice <- struct{}{}:
	default:
	}
}

// Run resumes any update in progress and then checks for updates at each
// Notify and every poll interval until ctx is done. Failures are logged
// and retried at the next check.
func (u *Updater) Run(ctx context.Context, poll time.Duration) error {
	if poll <= 0 {
		poll = time.Hour
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if err := u.Resume(ctx); err != nil {
			u.opts.Logger.Warn("update", "phase", u.st.Phase, "err", err)
		} else if _, err := u.Check(ctx); err != nil {
			u.opts.Logger.Warn("update check", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-u.notice:
		}
	}
}

// Check asks the server for an update when idle and installs it. It
// reports whether an update was taken.
func (u *Updater) Check(ctx context.Context) (bool, error) {
	if u.st.Phase != PhaseIdle {
		return false, u.Resume(ctx)
	}
	running, err := u.bootedDigest(ctx)
	if err != nil {
		return false, err
	}
	o, err := u.opts.Server.Check(ctx, running)
	if err != nil || o == nil {
		return false, err
	}
	if running != "" && o.Release.SHA256 == running {
		// The unit already runs the offered image: most often the offer
		// of the attempt it has just finished, asked again before the
		// server consumed its report. Installing it again would write
		// the other slot for nothing; report success instead.
		u.opts.Logger.Info("update offered for the image already running; reporting it installed", "rollout", o.RolloutID, "attempt", o.Attempt)
		return false, u.saveAndResume(ctx, &State{Phase: PhaseReporting, RolloutID: o.RolloutID, Attempt: o.Attempt,
			Outcome: cradle.UpdateSucceeded, Reason: "already running this image"})
	}
	st := &State{Phase: PhaseFetching, RolloutID: o.RolloutID, Attempt: o.Attempt, MetadataURL: o.TUF.MetadataURL,
		TargetPath: o.Release.TargetPath, ArtifactURL: o.Artifact.URL, OfferedSHA256: o.Release.SHA256, OfferedSize: o.Release.Size}
	if o.Delta != nil {
		st.Delta = &Patch{URL: o.Delta.URL, SHA256: o.Delta.SHA256, Length: o.Delta.Size, FromSHA256: o.Delta.FromSHA256}
	}
	u.opts.Logger.Info("update offered", "rollout", o.RolloutID, "attempt", o.Attempt, "target", o.Release.TargetPath, "delta", o.Delta != nil)
	if err := u.save(st); err != nil {
		return false, err
	}
	return true, u.Resume(ctx)
}

// saveAndResume saves st and runs the state machine from it.
func (u *Updater) saveAndResume(ctx context.Context, st *State) error {
	if err := u.save(st); err != nil {
		return err
	}
	return u.Resume(ctx)
}

// Resume runs the state machine from the saved state until it is idle, or
// a step fails transiently (the error is returned and the state kept).
func (u *Updater) Resume(ctx context.Context) error {
	for u.st.Phase != PhaseIdle {
		if err := ctx.Err(); err != nil {
			return err
		}
		before := u.st.Phase
		err := u.step(ctx)
		if err == nil {
			continue
		}
		if IsTransient(err) {
			return err
		}
		// A hardware failure (a write that did not happen) is retried
		// too: the step is repeated from its saved state.
		var r *refusal
		if !errors.As(err, &r) {
			return fmt.Errorf("update: %s: %w", before, err)
		}
		u.opts.Logger.Warn("update refused", "phase", before, "reason", r.reason)
		if err := u.fail(r.reason); err != nil {
			return err
		}
	}
	return nil
}

// refusal ends an update: it is reported as failed with reason.
type refusal struct{ reason string }

func (r *refusal) Error() string { return r.reason }

func refuse(format string, args ...any) error { return &refusal{fmt.Sprintf(format, args...)} }

// refuseAttack is a refusal of something an attacker (or a broken server)
// can serve: the reason starts with the attack's name in the TUF client's
// words ("wrong-hardware: target ..."), so that the server's record of the
// failed attempt says which attack the device refused.
func refuseAttack(a tufclient.Attack, format string, args ...any) error {
	return &refusal{string(a) + ": " + fmt.Sprintf(format, args...)}
}

// fail moves to reporting a failure; the boot environment is left as it
// is (a refusal before installing never touched it).
func (u *Updater) fail(reason string) error {
	st := u.cur()
	st.Phase, st.Outcome, st.Reason = PhaseReporting, cradle.UpdateFailed, reason
	return u.save(st)
}

func (u *Updater) cur() *State { c := *u.st; return &c }

func (u *Updater) save(st *State) error {
	if err := saveState(u.opts.StateDir, st); err != nil {
		return err
	}
	u.st = st
	if u.opts.Observe != nil {
		u.opts.Observe(*st)
	}
	return nil
}

// step runs the side effect of the current phase and saves the next.
func (u *Updater) step(ctx context.Context) error {
	switch u.st.Phase {
	case PhaseFetching:
		return u.fetch(ctx)
	case PhaseDownloading:
		if u.st.Delta != nil {
			return u.downloadPatch(ctx)
		}
		return u.download(ctx)
	case PhaseApplying:
		return u.apply(ctx)
	case PhaseVerifying:
		return u.verify(ctx)
	case PhaseInstalling:
		return u.install(ctx)
	case PhaseRebooting:
		return u.afterBoot(ctx)
	case PhaseTrial:
		return u.trial(ctx)
	case PhaseCommitting:
		return u.commit(ctx)
	case PhaseRollingBack:
		return u.rollBack(ctx)
	case PhaseReverting:
		return u.afterRevert(ctx)
	case PhaseReporting:
		return u.report(ctx)
	}
	return fmt.Errorf("update: no step for phase %q", u.st.Phase)
}

// bootedSlot is the slot the unit runs.
func (u *Updater) bootedSlot(ctx context.Context) (hw.Slot, error) {
	if u.opts.BootedSlot != nil {
		return u.opts.BootedSlot(ctx)
	}
	env, err := u.opts.Device.BootEnv.Get(ctx)
	if err != nil {
		return "", err
	}
	return hw.BootSlot(env), nil
}

// bootedDigest is the hex SHA-256 of the running image, "" if the slot is
// empty.
func (u *Updater) bootedDigest(ctx context.Context) (string, error) {
	s, err := u.bootedSlot(ctx)
	if err != nil {
		return "", err
	}
	d, err := u.opts.Device.Slots.Digest(ctx, s)
	if errors.Is(err, hw.ErrNotFound) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	return hex.EncodeToString(d[:]), nil
}

// progress sends an intermediate report; a failure is only logged (the
// final report is the one that must arrive).
func (u *Updater) progress(ctx context.Context, state string) {
	if err := u.opts.Server.Report(ctx, cradle.UpdateReport{RolloutID: u.st.RolloutID, Attempt: u.st.Attempt, State: state}); err != nil {
		u.opts.Logger.Warn("update progress not reported", "state", state, "err", err)
	}
}

// fetch refreshes the metadata and checks the target against the device
// and the offer.
func (u *Updater) fetch(ctx context.Context) error {
	if err := u.opts.Metadata.Refresh(ctx, u.st.MetadataURL); err != nil {
		if IsTransient(err) {
			return err
		}
		return refuse("TUF metadata refused: %v", err)
	}
	t, err := u.opts.Metadata.Target(u.st.TargetPath)
	if err != nil {
		return refuseAttack(tufclient.ArbitrarySoftware, "target %s is not in the signed metadata: %v", u.st.TargetPath, err)
	}
	c := t.Custom
	fuses, err := u.opts.Device.Fuses.Read(ctx)
	if err != nil {
		return err
	}
	have, err := hw.ThermometerCount(fuses[hw.FuseAntiRollback])
	if err != nil {
		return err
	}
	if err := tufclient.Fit(t.Path, c, u.opts.Model, u.opts.HardwareRevision, uint32(have)); err != nil {
		var e *tufclient.Error
		if !errors.As(err, &e) {
			return err
		}
		return refuseAttack(e.Attack, "%s", e.Msg)
	}
	if c.SecurityCounter > 64 {
		return refuse("target %s has security counter %d; the anti-rollback fuses count to 64", t.Path, c.SecurityCounter)
	}
	sum := hex.EncodeToString(t.SHA256[:])
	if (u.st.OfferedSHA256 != "" && u.st.OfferedSHA256 != sum) || (u.st.OfferedSize != 0 && u.st.OfferedSize != t.Length) {
		return refuseAttack(tufclient.ArbitrarySoftware, "the server offers %s (%d bytes) for %s; the signed metadata says %s (%d bytes)", u.st.OfferedSHA256, u.st.OfferedSize, t.Path, sum, t.Length)
	}
	booted, err := u.bootedSlot(ctx)
	if err != nil {
		return err
	}
	st := u.cur()
	st.Phase, st.Length, st.SHA256, st.SecurityCounter, st.ReleaseVersion = PhaseDownloading, t.Length, sum, c.SecurityCounter, c.Version
	st.OldSlot, st.NewSlot, st.Offset = booted, booted.Other(), 0
	if st.Delta != nil {
		running, err := u.bootedDigest(ctx)
		if err != nil {
			return err
		}
		st.Delta = u.signedDelta(c, st.Delta, running)
	}
	if err := u.save(st); err != nil {
		return err
	}
	u.progress(ctx, cradle.UpdateDownloading)
	return nil
}

// signedDelta returns the offered patch if the signed target lists it for
// the running image with the same digest and length; otherwise nil (the
// full image is downloaded).
func (u *Updater) signedDelta(c tuf.Custom, offered *Patch, running string) *Patch {
	for _, d := range c.DeltaBases {
		if d.From == running && d.From == offered.FromSHA256 && d.Hashes["sha256"] == offered.SHA256 && d.Length == offered.Length {
			p := *offered
			p.Path = d.Patch
			return &p
		}
	}
	u.opts.Logger.Warn("the offered delta is not signed for the running image; downloading the full image", "from", offered.FromSHA256)
	return nil
}

func (u *Updater) patchPath() string { return filepath.Join(u.opts.StateDir, "update.patch") }

// download streams the image into the new slot, resuming after what the
// slot holds.
func (u *Updater) download(ctx context.Context) error {
	slot := u.st.NewSlot
	size, err := u.opts.Writer.Size(ctx, slot)
	if err != nil {
		return err
	}
	if !u.st.Erased || size > u.st.Length {
		// The slot may hold an older image: start from an erased slot.
		if err := u.opts.Writer.Erase(ctx, slot); err != nil {
			return err
		}
		st := u.cur()
		st.Erased, st.Offset, size = true, 0, 0
		if err := u.save(st); err != nil {
			return err
		}
	}
	h := sha256.New()
	if size > 0 {
		// Re-hash what an earlier run wrote.
		if err := u.hashSlot(ctx, slot, size, h); err != nil {
			return err
		}
	}
	w := &slotWriter{ctx: ctx, w: u.opts.Writer, slot: slot, off: size}
	if err := u.stream(ctx, u.st.Length, size, h, w); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != u.st.SHA256 {
		// Nothing bootable was marked; erase so the next attempt starts clean.
		if err := u.opts.Writer.Erase(ctx, slot); err != nil {
			return err
		}
		return refuseAttack(tufclient.ArbitrarySoftware, "the downloaded image has digest %s; the signed metadata says %s", got, u.st.SHA256)
	}
	st := u.cur()
	st.Phase, st.Offset = PhaseVerifying, u.st.Length
	return u.save(st)
}

// hashSlot hashes the first n bytes of slot into h.
func (u *Updater) hashSlot(ctx context.Context, slot hw.Slot, n int64, h io.Writer) error {
	r, err := u.opts.Device.Slots.Open(ctx, slot)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := io.CopyN(h, r, n); err != nil {
		return fmt.Errorf("update: re-hash %d bytes of slot %s: %w", n, slot, err)
	}
	return nil
}

// stream copies the download's bytes (the image's, or the delta's patch
// when there is one) from off to w (which starts at off), hashing
// them, saving the offset every SaveEvery bytes, and refusing more than
// length bytes in all.
func (u *Updater) stream(ctx context.Context, length, off int64, h io.Writer, w io.Writer) error {
	if off == length {
		return nil
	}
	body, err := u.openDownload(ctx, off)
	if err != nil {
		return err
	}
	defer body.Close()
	buf := make([]byte, u.opts.ChunkSize)
	lastSave := off
	for {
		// Whole chunks, so that the slot is written in ChunkSize pieces
		// whatever sizes the network delivers: each WriteAt is synced, as
		// flash is written, so a write per network read (a TLS record,
		// 16 KiB) would cost a sync each.
		n, rerr := io.ReadFull(body, buf)
		if n > 0 {
			if off+int64(n) > length {
				return refuseAttack(tufclient.EndlessData, "the download is longer than the %d bytes the signed metadata allows", length)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			h.Write(buf[:n])
			off += int64(n)
			if off-lastSave >= u.opts.SaveEvery {
				st := u.cur()
				st.Offset = off
				if err := u.save(st); err != nil {
					return err
				}
				lastSave = off
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break // the end of the body; a short one is caught below
		}
		if rerr != nil {
			return &TransientError{fmt.Errorf("update: download interrupted at byte %d: %w", off, rerr)}
		}
	}
	if off < length {
		return &TransientError{fmt.Errorf("update: download ended at byte %d of %d", off, length)}
	}
	return nil
}

// downloadURL is what the downloading phase fetches: the delta's patch
// when there is one, else the image.
func (u *Updater) downloadURL() string {
	if u.st.Delta != nil {
		return u.st.Delta.URL
	}
	return u.st.ArtifactURL
}

// openDownload opens the download from byte off. Artifact URLs are signed
// and expire: when the server refuses one (403, ErrURLRefused), retrying
// it is pointless, so the updater asks for a fresh offer of the same
// attempt, saves its new URL and tries once more.
func (u *Updater) openDownload(ctx context.Context, off int64) (io.ReadCloser, error) {
	body, err := u.opts.Server.Download(ctx, u.downloadURL(), off)
	if !errors.Is(err, ErrURLRefused) {
		return body, err
	}
	u.opts.Logger.Info("download URL refused; asking for a fresh offer", "err", err)
	if err := u.renewURL(ctx); err != nil {
		return nil, err
	}
	return u.opts.Server.Download(ctx, u.downloadURL(), off)
}

// renewURL takes the download URL from a fresh offer of the attempt in
// progress. An offer of anything else (or none: the rollout was aborted
// or the attempt timed out) ends the update as failed.
func (u *Updater) renewURL(ctx context.Context) error {
	running, err := u.bootedDigest(ctx)
	if err != nil {
		return err
	}
	o, err := u.opts.Server.Check(ctx, running)
	if err != nil {
		return err
	}
	if o == nil || o.RolloutID != u.st.RolloutID || o.Attempt != u.st.Attempt || o.Release.TargetPath != u.st.TargetPath {
		return refuse("the download URL was refused and the server no longer offers this update (rollout %s, attempt %d)", u.st.RolloutID, u.st.Attempt)
	}
	st := u.cur()
	if st.Delta != nil {
		if o.Delta == nil || o.Delta.SHA256 != st.Delta.SHA256 || checkURL(o.Delta.URL) != nil {
			return refuse("the download URL of the delta was refused and the server's new offer has no such delta")
		}
		d := *st.Delta
		d.URL = o.Delta.URL
		st.Delta = &d
	} else {
		st.ArtifactURL = o.Artifact.URL
	}
	return u.save(st)
}

// DefaultChunkSize is the size of the slot writes of an update.
const DefaultChunkSize = 1 << 20

// slotWriter writes a slot in order through hw.SlotWriter.
type slotWriter struct {
	ctx  context.Context
	w    hw.SlotWriter
	slot hw.Slot
	off  int64
}

func (s *slotWriter) Write(p []byte) (int, error) {
	if err := s.w.WriteAt(s.ctx, s.slot, s.off, p); err != nil {
		return 0, err
	}
	s.off += int64(len(p))
	return len(p), nil
}

// downloadPatch streams a delta's patch into the state directory.
func (u *Updater) downloadPatch(ctx context.Context) error {
	p := u.st.Delta
	f, err := os.OpenFile(u.patchPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if !u.st.Erased || size > p.Length {
		if err := f.Truncate(0); err != nil {
			return err
		}
		st := u.cur()
		st.Erased, st.Offset, size = true, 0, 0
		if err := u.save(st); err != nil {
			return err
		}
	}
	h := sha256.New()
	if _, err := io.CopyN(h, f, size); err != nil {
		return err
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		return err
	}
	if err := u.stream(ctx, p.Length, size, h, &syncWriter{f: f, every: u.opts.SaveEvery}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != p.SHA256 {
		f.Truncate(0)
		return refuseAttack(tufclient.ArbitrarySoftware, "the downloaded patch %s has digest %s; the signed metadata says %s", p.Path, got, p.SHA256)
	}
	st := u.cur()
	st.Phase, st.Offset = PhaseApplying, p.Length
	return u.save(st)
}

// syncWriter syncs the file every so many bytes, so a saved offset is
// never ahead of the data.
type syncWriter struct {
	f       *os.File
	every   int64
	written int64
}

func (s *syncWriter) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.written += int64(n)
	if err == nil && s.written >= s.every {
		err = s.f.Sync()
		s.written = 0
	}
	return n, err
}

// apply rebuilds the image from the active slot and the patch into the
// new slot.
func (u *Updater) apply(ctx context.Context) error {
	p := u.st.Delta
	r, err := u.opts.Device.Slots.Open(ctx, u.st.OldSlot)
	if err != nil {
		return err
	}
	base, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		return err
	}
	var e delta.Expect
	if e.BaseSHA256, err = delta.ParseDigest(p.FromSHA256); err != nil {
		return refuse("delta base digest %q: %v", p.FromSHA256, err)
	}
	if e.TargetSHA256, err = delta.ParseDigest(u.st.SHA256); err != nil {
		return refuse("target digest %q: %v", u.st.SHA256, err)
	}
	e.Limit, e.TargetSize = u.st.Length, u.st.Length
	pf, err := os.Open(u.patchPath())
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := u.opts.Writer.Erase(ctx, u.st.NewSlot); err != nil {
		return err
	}
	w := &slotWriter{ctx: ctx, w: u.opts.Writer, slot: u.st.NewSlot}
	bw := newChunkWriter(w, u.opts.ChunkSize)
	if _, err := delta.Apply(bw, base, pf, e); err != nil {
		var hwErr *hwWriteError
		if errors.As(err, &hwErr) {
			return hwErr.err
		}
		return refuse("delta %s: %v", p.Path, err)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	st := u.cur()
	st.Phase = PhaseVerifying
	return u.save(st)
}

// hwWriteError tells a slot write failure apart from a patch failure
// inside delta.Apply.
type hwWriteError struct{ err error }

func (e *hwWriteError) Error() string { return e.err.Error() }

// Unwrap returns the slot write's error (hw.ErrPowerCut after a cut).
func (e *hwWriteError) Unwrap() error { return e.err }

// chunkWriter buffers writes into chunks for the slot.
type chunkWriter struct {
	w   io.Writer
	buf []byte
}

func newChunkWriter(w io.Writer, n int) *chunkWriter {
	return &chunkWriter{w: w, buf: make([]byte, 0, n)}
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(cap(c.buf)-len(c.buf), len(p))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == cap(c.buf) {
			if err := c.Flush(); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

func (c *chunkWriter) Flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	if _, err := c.w.Write(c.buf); err != nil {
		return &hwWriteError{err}
	}
	c.buf = c.buf[:0]
	return nil
}

func canReadAt(s hw.Slots) bool { _, ok := s.(hw.SlotReaderAt); return ok }

// verifyBuf is the buffer verify hashes the slot through.
const verifyBuf = 256 << 10

// verify checks the new slot: signed length and digest, then the MCUboot
// signature by the fused image key and the signed security counter. It
// reads the slot at offsets (hw.SlotReaderAt) and never holds the image
// in memory.
func (u *Updater) verify(ctx context.Context) error {
	r, size, err := u.opts.Device.Slots.(hw.SlotReaderAt).OpenAt(ctx, u.st.NewSlot)
	if errors.Is(err, hw.ErrNotFound) {
		return refuse("slot %s holds no image; the signed image has %d bytes", u.st.NewSlot, u.st.Length)
	}
	if err != nil {
		return err
	}
	defer r.Close()
	if size != u.st.Length {
		return refuse("slot %s holds %d bytes; the signed image has %d", u.st.NewSlot, size, u.st.Length)
	}
	// The slot is read where it lies, through bounded buffers: once for
	// the TUF digest, once for the MCUboot check.
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(r, 0, size), make([]byte, verifyBuf)); err != nil {
		return fmt.Errorf("update: read slot %s: %w", u.st.NewSlot, err)
	}
	if sum := h.Sum(nil); hex.EncodeToString(sum) != u.st.SHA256 {
		return refuse("slot %s does not hold the signed image (digest %x)", u.st.NewSlot, sum)
	}
	keys, err := u.trustedKeys(ctx)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return refuse("no image key matches the image_key_hash fuses; the image cannot be verified")
	}
	parsed, err := mcuboot.VerifyReader(r, size, keys)
	if err != nil && !mcuboot.IsImageError(err) {
		return fmt.Errorf("update: verify slot %s: %w", u.st.NewSlot, err) // a read failure: try again
	}
	if err != nil {
		return refuseAttack(tufclient.ArbitrarySoftware, "image signature: %v", err)
	}
	if parsed.SecurityCounter != u.st.SecurityCounter {
		return refuseAttack(tufclient.ArbitrarySoftware, "the image's security counter is %d; the signed metadata says %d", parsed.SecurityCounter, u.st.SecurityCounter)
	}
	st := u.cur()
	st.Phase = PhaseInstalling
	if err := u.save(st); err != nil {
		return err
	}
	u.progress(ctx, cradle.UpdateInstalling)
	return nil
}

// trustedKeys returns the image keys the fuses allow.
func (u *Updater) trustedKeys(ctx context.Context) ([]crypto.PublicKey, error) {
	fuses, err := u.opts.Device.Fuses.Read(ctx)
	if err != nil {
		return nil, err
	}
	want := fuses[hw.FuseImageKeyHash]
	if !slices.ContainsFunc(want, func(b byte) bool { return b != 0 }) {
		return u.opts.ImageKeys, nil // a blank fuse: every configured key
	}
	return mcuboot.KeysWithHash(u.opts.ImageKeys, want)
}

// bootID is the current boot's identity, "" when unknown.
func (u *Updater) bootID() string {
	if u.opts.BootID == nil {
		return ""
	}
	return u.opts.BootID()
}

// install points the boot environment at the new slot on trial, then
// reboots.
func (u *Updater) install(ctx context.Context) error {
	st, err := u.pointBootAt(ctx, u.st.NewSlot, true, PhaseRebooting)
	if err != nil {
		return err
	}
	u.opts.Logger.Info("update installed; rebooting", "slot", st.NewSlot, "version", st.ReleaseVersion)
	return u.opts.Reboot(ctx)
}

// pointBootAt sets the boot environment to boot slot next (on trial or
// not, the boot count reset), then saves the phase that waits for the
// reboot with the current boot ID, and returns the saved state.
func (u *Updater) pointBootAt(ctx context.Context, slot hw.Slot, trial bool, next Phase) (*State, error) {
	upgrade := "0"
	if trial {
		upgrade = "1"
	}
	if err := u.opts.Device.BootEnv.Set(ctx, map[string]string{
		hw.EnvBootSlot: string(slot), hw.EnvUpgradeAvailable: upgrade, hw.EnvBootCount: "0",
	}); err != nil {
		return nil, err
	}
	st := u.cur()
	st.Phase, st.BootID = next, u.bootID()
	return st, u.save(st)
}

// afterBoot decides what the boot after installing was.
func (u *Updater) afterBoot(ctx context.Context) error {
	if id := u.bootID(); id != "" && id == u.st.BootID {
		u.opts.Logger.Info("no reboot since installing; rebooting")
		return u.opts.Reboot(ctx)
	}
	booted, err := u.bootedSlot(ctx)
	if err != nil {
		return err
	}
	env, err := u.opts.Device.BootEnv.Get(ctx)
	if err != nil {
		return err
	}
	st := u.cur()
	switch {
	case booted == u.st.NewSlot:
		// Rounded up to the second, so that the checks get at least
		// HealthTimeout.
		st.Phase, st.TrialStart = PhaseTrial, (u.opts.Now().UnixNano()+int64(time.Second)-1)/int64(time.Second)
	default:
		st.Phase, st.Outcome = PhaseReporting, cradle.UpdateFailed
		st.Reason = fmt.Sprintf("rollback by bootloader: the unit booted slot %s again (bootcount %s, bootlimit %s); the new image in slot %s did not boot",
			booted, orDash(env[hw.EnvBootCount]), orDash(env[hw.EnvBootLimit]), u.st.NewSlot)
	}
	return u.save(st)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// trial runs the health checks of a trial boot.
func (u *Updater) trial(ctx context.Context) error {
	booted, err := u.bootedSlot(ctx)
	if err != nil {
		return err
	}
	env, err := u.opts.Device.BootEnv.Get(ctx)
	if err != nil {
		return err
	}
	if booted != u.st.NewSlot || env[hw.EnvUpgradeAvailable] != "1" {
		// The bootloader gave up on the new slot (a reboot loop during
		// the trial) and went back.
		st := u.cur()
		st.Phase, st.Outcome = PhaseReporting, cradle.UpdateFailed
		st.Reason = fmt.Sprintf("rollback by bootloader: the unit booted slot %s during the trial of slot %s (bootcount %s)", booted, u.st.NewSlot, orDash(env[hw.EnvBootCount]))
		return u.save(st)
	}
	deadline := time.Unix(u.st.TrialStart, 0).Add(u.opts.HealthTimeout)
	rollBack := func(err error) error {
		st := u.cur()
		st.Phase, st.Reason = PhaseRollingBack, "health check failed: "+err.Error()
		return u.save(st)
	}
	var last error
	for {
		// Every check is cut at the deadline: one that never answers (a
		// server that accepts and stalls, a stuck liveness probe) fails
		// the trial instead of holding it open.
		hctx, cancel := context.WithTimeout(ctx, deadline.Sub(u.opts.Now()))
		err := u.health(hctx)
		cut := hctx.Err() != nil
		cancel()
		if ctx.Err() != nil {
			return ctx.Err() // the agent stops; the trial resumes
		}
		if err != nil && cut && last != nil {
			// An attempt cut by the deadline says less than the
			// failure before it.
			err = last
		}
		last = err
		if err == nil {
			st := u.cur()
			st.Phase = PhaseCommitting
			return u.save(st)
		}
		left := deadline.Sub(u.opts.Now())
		if left <= 0 {
			return rollBack(err)
		}
		u.opts.Logger.Warn("health check failing; retrying", "err", err)
		// The wait ends at the deadline at the latest; a failure that
		// lasts until then is the reason reported (not that no time
		// was left for one more try).
		wait := min(u.opts.HealthRetry, left)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if wait == left {
			return rollBack(err)
		}
	}
}

// health runs the checks once, within ctx (which ends at the trial's
// deadline).
func (u *Updater) health(ctx context.Context) error {
	running, err := u.bootedDigest(ctx)
	if err != nil {
		return err
	}
	if _, err := u.opts.Server.Check(ctx, running); err != nil {
		return fmt.Errorf("the server cannot be reached: %v", err)
	}
	if u.opts.Liveness != nil {
		if err := u.opts.Liveness(ctx); err != nil {
			return fmt.Errorf("agent liveness: %v", err)
		}
	}
	if len(u.opts.HealthHook) > 0 {
		if ctx.Err() != nil {
			return fmt.Errorf("hook %s: no time left before the deadline", u.opts.HealthHook[0])
		}
		cmd := exec.CommandContext(ctx, u.opts.HealthHook[0], u.opts.HealthHook[1:]...)
		cmd.Env = append(os.Environ(), "CRADLE_UPDATE_VERSION="+u.st.ReleaseVersion, "CRADLE_UPDATE_SLOT="+string(u.st.NewSlot))
		out, err := cmd.CombinedOutput()
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("hook %s did not finish before the health deadline (%v): %s", u.opts.HealthHook[0], err, bytes.TrimSpace(lastBytes(out, 512)))
		}
		if err != nil {
			return fmt.Errorf("hook %s: %v: %s", u.opts.HealthHook[0], err, bytes.TrimSpace(lastBytes(out, 512)))
		}
	}
	return nil
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// commit confirms the new slot, then advances the anti-rollback fuses.
// A commit resumed after the bootloader went back to the old slot (the
// unit reset past bootlimit before the agent ran again) confirms nothing
// and burns nothing: the fuses would then refuse the image that runs.
func (u *Updater) commit(ctx context.Context) error {
	booted, err := u.bootedSlot(ctx)
	if err != nil {
		return err
	}
	env, err := u.opts.Device.BootEnv.Get(ctx)
	if err != nil {
		return err
	}
	if booted != u.st.NewSlot || hw.BootSlot(env) != u.st.NewSlot {
		st := u.cur()
		st.Phase, st.Outcome = PhaseReporting, cradle.UpdateFailed
		st.Reason = fmt.Sprintf("rollback by bootloader: the unit booted slot %s (boot_slot %s) before the commit of slot %s; nothing was committed",
			booted, hw.BootSlot(env), u.st.NewSlot)
		return u.save(st)
	}
	if err := u.opts.Device.BootEnv.Set(ctx, map[string]string{hw.EnvUpgradeAvailable: "0", hw.EnvBootCount: "0"}); err != nil {
		return err
	}
	fuses, err := u.opts.Device.Fuses.Read(ctx)
	if err != nil {
		return err
	}
	have, err := hw.ThermometerCount(fuses[hw.FuseAntiRollback])
	if err != nil {
		return err
	}
	if int(u.st.SecurityCounter) > have {
		v, err := hw.Thermometer(int(u.st.SecurityCounter), 64)
		if err != nil {
			return err
		}
		if err := u.opts.Device.Fuses.Program(ctx, hw.FuseAntiRollback, v); err != nil {
			return err
		}
	}
	st := u.cur()
	st.Phase, st.Outcome, st.Reason = PhaseReporting, cradle.UpdateSucceeded, ""
	u.opts.Logger.Info("update committed", "slot", st.NewSlot, "version", st.ReleaseVersion, "security_counter", st.SecurityCounter)
	return u.save(st)
}

// rollBack points the boot environment at the old slot and reboots.
func (u *Updater) rollBack(ctx context.Context) error {
	st, err := u.pointBootAt(ctx, u.st.OldSlot, false, PhaseReverting)
	if err != nil {
		return err
	}
	u.opts.Logger.Warn("update rolled back; rebooting", "slot", st.OldSlot, "reason", st.Reason)
	return u.opts.Reboot(ctx)
}

// afterRevert reports the rollback once the old slot runs again.
func (u *Updater) afterRevert(ctx context.Context) error {
	if id := u.bootID(); id != "" && id == u.st.BootID {
		return u.opts.Reboot(ctx)
	}
	st := u.cur()
	st.Phase, st.Outcome = PhaseReporting, cradle.UpdateFailed
	return u.save(st)
}

// report tells the server the outcome and what runs now, then goes idle.
// That the outcome was taken is saved before the software report, so a
// retry of the latter does not send the outcome again (only a stop
// between the server's answer and that save can).
func (u *Updater) report(ctx context.Context) error {
	if u.st.RolloutID != "" && !u.st.Reported {
		r := cradle.UpdateReport{RolloutID: u.st.RolloutID, Attempt: u.st.Attempt, State: u.st.Outcome, Reason: truncate(u.st.Reason, 1024)}
		if err := u.opts.Server.Report(ctx, r); err != nil {
			if IsTransient(err) {
				return err
			}
			u.opts.Logger.Warn("update report refused by the server", "err", err)
		}
		st := u.cur()
		st.Reported = true
		if err := u.save(st); err != nil {
			return err
		}
	}
	running, err := u.bootedDigest(ctx)
	if err != nil {
		return err
	}
	if running != "" {
		if err := u.opts.Server.ReportSoftware(ctx, running); err != nil {
			if IsTransient(err) {
				return err
			}
			u.opts.Logger.Warn("software report refused by the server", "err", err)
		}
	}
	u.opts.Logger.Info("update finished", "outcome", u.st.Outcome, "reason", u.st.Reason, "running", running)
	os.Remove(u.patchPath())
	return u.save(&State{Phase: PhaseIdle})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
