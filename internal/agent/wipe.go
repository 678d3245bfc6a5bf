package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/atomicfile"
)

// Decommissioning, the device's part. A verified wipe command (see
// Executor) reaches Identity.Wipe, which:
//
//  1. records the wipe in the state file (State.Wipe, phase "tombstone")
//     before anything else, so that a power cut from then on resumes it at
//     the next start (ResumeWipe) instead of running the agent;
//  2. builds a cradle.Tombstone naming every object it is about to erase
//     (the agent's keys in the key store, the key store's own files, every
//     file in the state directory, the extra files of WipeOptions.Files)
//     and lifecycle "eol", signs its JSON with the LDevID key and keeps the
//     signed tombstone in the state file, so that a resumed wipe sends the
//     same bytes;
//  3. posts it to TombstonePath on the device listener, up to
//     WipeOptions.Attempts times; the server revoked the device before it
//     queued the command, so a tombstone that cannot be delivered does
//     not stop the wipe (the log says so);
//  4. moves to phase "erase" and crypto-erases, each step safe to repeat:
//     destroys the key objects, overwrites then removes the files, programs
//     the lifecycle fuse word to eol, writes the DecommissionedFile marker,
//     and last overwrites and removes the state file.
//
// A state directory holding DecommissionedFile is a decommissioned unit:
// CheckDecommissioned refuses it, and cradle-agent run exits with
// ExitDecommissioned.

// TombstonePath is the device listener's route for a signed tombstone.
const TombstonePath = "/device/v1/tombstone"

// DecommissionedFile is the marker a finished wipe leaves in the state
// directory: the JSON of the tombstone. Nothing else is left there.
const DecommissionedFile = "decommissioned"

// ErrDecommissioned: the unit was wiped at decommissioning; the agent
// does not run on it again.
var ErrDecommissioned = errors.New("agent: the unit is decommissioned")

// The phases of a wipe.
const (
	WipePhaseTombstone = "tombstone" // building and sending the tombstone
	WipePhaseErase     = "erase"     // erasing
)

// WipeProgress is a wipe being carried out, as the state file keeps it.
type WipeProgress struct {
	CommandID string `json:"command_id"`
	Sequence  uint64 `json:"sequence"`
	Phase     string `json:"phase"`
	// Tombstone is the signed tombstone once built; nil if the unit had
	// no usable LDevID to sign one with.
	Tombstone *cradle.SignedTombstone `json:"tombstone,omitempty"`
	// Erase is what the erase phase erases: the tombstone's list.
	Erase []cradle.ErasedObject `json:"erase,omitempty"`
	// Delivered is whether the server took the tombstone.
	Delivered bool      `json:"delivered"`
	StartedAt time.Time `json:"started_at"`
}

func (w *WipeProgress) check() error {
	switch {
	case w.CommandID == "":
		return errors.New("no command ID")
	case w.Phase != WipePhaseTombstone && w.Phase != WipePhaseErase:
		return fmt.Errorf("unknown phase %q", w.Phase)
	}
	for _, o := range w.Erase {
		if o.Name == "" || o.Store == "" {
			return errors.New("an object to erase without store or name")
		}
	}
	return nil
}

// WipeOptions configures Identity.Wipe and ResumeWipe.
type WipeOptions struct {
	// KeyStore is the kind of the unit's key store, as the tombstone
	// names it (hw.KeyStoreFile, KeyStoreTPM, KeyStorePKCS11); "" means
	// hw.KeyStoreFile.
	KeyStore string
	// Files are more files the agent wrote outside its state directory
	// (configuration written by the twin's file handlers, a spool kept
	// elsewhere): erased too, listed in the tombstone as config. Files in
	// a directory listed here are erased too.
	Files []string
	// Send delivers the signed tombstone; nil posts it to the server's
	// TombstonePath presenting the LDevID (PostTombstone).
	Send func(ctx context.Context, t cradle.SignedTombstone) error
	// Attempts bounds the deliveries tried; 0 means 5. RetryDelay is the
	// first wait between them, doubled each time; 0 means 2s.
	Attempts   int
	RetryDelay time.Duration
	// Quiesce, when set, is called before the erase: it stops whatever
	// else writes into the state directory (the channel, the updater).
	Quiesce func()

	// crash, set by tests, is called before each erase step and stops
	// the wipe with its error, as a power cut would.
	crash func(step string) error
}

// isAgentKey reports whether name is one of the keys the agent makes:
// the IDevID's key and the LDevID keys. A PKCS#11 token may hold other
// programs' keys; those are not the agent's to destroy.
func (id *Identity) isAgentKey(name string) bool {
	return name == id.opts.IDevIDKey || checkLDevIDKeyName(name) == nil
}

// Wipe carries out a verified wipe command (see the comment above
// TombstonePath). It returns nil once the unit is erased, and an error
// when a step failed: the wipe stays recorded in the state file and
// ResumeWipe finishes it. It must not run concurrently with Step; after it
// the Identity is spent.
func (id *Identity) Wipe(ctx context.Context, commandID string, sequence uint64, now time.Time, opts WipeOptions) error {
	if id.state.Wipe == nil {
		id.state.Wipe = &WipeProgress{CommandID: commandID, Sequence: sequence, Phase: WipePhaseTombstone, StartedAt: now.UTC()}
		if err := SaveState(id.opts.StateDir, id.state); err != nil {
			id.state.Wipe = nil
			return fmt.Errorf("agent: wipe: record it before erasing: %w", err)
		}
		id.opts.Logger.Warn("wipe: decommissioning this unit", "command", commandID, "sequence", sequence)
	}
	return id.ResumeWipe(ctx, now, opts)
}

// WipeInProgress reports whether the state holds an unfinished wipe.
func (id *Identity) WipeInProgress() bool { return id.state.Wipe != nil }

// ResumeWipe finishes the wipe the state file records, from the phase it
// reached. It does nothing when none is recorded.
func (id *Identity) ResumeWipe(ctx context.Context, now time.Time, opts WipeOptions) error {
	w := id.state.Wipe
	if w == nil {
		return nil
	}
	log := id.opts.Logger.With("command", w.CommandID)
	if w.Phase == WipePhaseTombstone {
		if w.Erase == nil {
			if err := id.buildTombstone(ctx, w, now, opts); err != nil {
				return err
			}
		}
		if w.Tombstone != nil {
			if err := id.sendTombstone(ctx, w.Tombstone, now, opts); err != nil {
				log.Error("wipe: tombstone not delivered; wiping anyway (the server revoked this unit when it queued the command)", "err", err)
			} else {
				w.Delivered = true
				log.Info("wipe: tombstone delivered", "objects", len(w.Erase))
			}
		} else {
			log.Error("wipe: no LDevID to sign a tombstone with; wiping without one")
		}
		w.Phase = WipePhaseErase
		if err := SaveState(id.opts.StateDir, id.state); err != nil {
			return fmt.Errorf("agent: wipe: %w", err)
		}
	}
	if opts.Quiesce != nil {
		opts.Quiesce()
	}
	if err := id.erase(ctx, w, opts); err != nil {
		return fmt.Errorf("agent: wipe: %w", err)
	}
	log.Warn("wipe: done; the unit is decommissioned", "objects", len(w.Erase), "tombstone_delivered", w.Delivered)
	return nil
}

// buildTombstone lists what the wipe erases and signs the tombstone,
// keeping both in the state file.
func (id *Identity) buildTombstone(ctx context.Context, w *WipeProgress, now time.Time, opts WipeOptions) error {
	objs, err := id.wipeObjects(ctx, opts)
	if err != nil {
		return fmt.Errorf("agent: wipe: list what to erase: %w", err)
	}
	w.Erase = objs
	if cur := id.state.Current; cur != nil {
		f, err := id.readFactory(ctx)
		if err != nil {
			// Without the serial no tombstone; the wipe goes on.
			id.opts.Logger.Error("wipe: cannot read the factory data for the tombstone; wiping without one", "err", err)
			return id.saveWipe()
		}
		ts := cradle.Tombstone{Serial: f.serial, CommandID: w.CommandID, Sequence: w.Sequence, Erased: tombstoneList(objs),
			Lifecycle: string(hw.LifecycleEOL), At: now.UTC()}
		st, err := id.signTombstone(ctx, cur, ts)
		if err != nil {
			id.opts.Logger.Error("wipe: cannot sign the tombstone with the LDevID key; wiping without one", "err", err)
		} else {
			w.Tombstone = st
		}
	}
	return id.saveWipe()
}

func (id *Identity) saveWipe() error {
	if err := SaveState(id.opts.StateDir, id.state); err != nil {
		return fmt.Errorf("agent: wipe: %w", err)
	}
	return nil
}

// wipeObjects lists the agent's keys, the key store's files, the state
// directory's files and opts.Files.
func (id *Identity) wipeObjects(ctx context.Context, opts WipeOptions) ([]cradle.ErasedObject, error) {
	store := opts.KeyStore
	if store == "" {
		store = hw.KeyStoreFile
	}
	keys := id.opts.Device.Keys
	names := map[string]bool{id.opts.IDevIDKey: true}
	for _, c := range []*Credential{id.state.Current, id.state.Previous} {
		if c != nil {
			names[c.KeyName] = true
		}
	}
	foreign := false         // the store holds keys of other programs
	var held map[string]bool // what the store lists, when it can
	if l, ok := keys.(hw.KeyLister); ok {
		listed, err := l.ListKeys(ctx)
		if err != nil {
			return nil, err
		}
		held = map[string]bool{}
		for _, n := range listed {
			held[n] = true
			if id.isAgentKey(n) {
				names[n] = true
			} else {
				foreign = true
			}
		}
	}
	var objs []cradle.ErasedObject
	for _, n := range slices.Sorted(maps.Keys(names)) {
		// A name the store does not hold (a key destroyed already) is
		// left out. A store that lists says; of one that cannot, Key
		// says (a listed key may be one Key cannot open, such as a
		// PKCS#11 private key without its public half: it goes too).
		if held != nil {
			if !held[n] {
				continue
			}
		} else if _, err := keys.Key(ctx, n); errors.Is(err, hw.ErrNotFound) {
			continue
		}
		objs = append(objs, cradle.ErasedObject{Store: store, Kind: "key", Name: n})
	}
	// Keys of the store's own that no name leads to (a crash orphaned
	// them) go too.
	if o, ok := keys.(hw.OrphanKeys); ok {
		orphans, err := o.ListOrphans(ctx)
		if err != nil {
			return nil, err
		}
		for _, n := range orphans {
			objs = append(objs, cradle.ErasedObject{Store: store, Kind: "key", Name: n})
		}
	}
	skip := map[string]bool{filepath.Join(id.opts.StateDir, DecommissionedFile): true}
	if sf, ok := keys.(hw.KeyStoreFiles); ok {
		for _, p := range sf.StoreFiles() {
			skip[p] = true
			// The index goes with the last key it names.
			if _, err := os.Lstat(p); err == nil && !foreign {
				objs = append(objs, cradle.ErasedObject{Store: store, Kind: "config", Name: p})
			}
		}
	}
	files, err := walkFiles(id.opts.StateDir, skip)
	if err != nil {
		return nil, err
	}
	for _, p := range files {
		rel, _ := filepath.Rel(id.opts.StateDir, p)
		objs = append(objs, cradle.ErasedObject{Store: "state", Kind: stateFileKind(rel), Name: rel})
	}
	for _, root := range opts.Files {
		extra, err := walkFiles(root, skip)
		if err != nil {
			return nil, err
		}
		for _, p := range extra {
			abs, _ := filepath.Abs(p)
			objs = append(objs, cradle.ErasedObject{Store: "state", Kind: "config", Name: abs})
		}
	}
	return objs, nil
}

// stateFileKind is "secret" for the files holding credentials or trust
// (the state file with the LDevID, the replay guard, keys, tokens,
// certificates), "config" for the rest (twin, spool, update state).
func stateFileKind(rel string) string {
	base := filepath.Base(rel)
	switch {
	case base == StateFile, base == CommandSequenceFile,
		strings.HasSuffix(base, ".pem"), strings.HasSuffix(base, ".key"), strings.HasSuffix(base, ".crt"),
		strings.Contains(base, "token"), strings.Contains(base, "secret"):
		return "secret"
	}
	return "config"
}

// walkFiles returns every file (not directory) under root, or root itself
// when it is a file; nothing when root does not exist. Paths in skip are
// left out.
func walkFiles(root string, skip map[string]bool) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == root {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		if !d.IsDir() && !skip[p] {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	return out, nil
}

// signTombstone signs the JSON of t with the key of credential c: ECDSA
// (ASN.1) or RSA PKCS#1 v1.5 over SHA-256, Ed25519 over the payload. The
// signature is checked before it is used.
func (id *Identity) signTombstone(ctx context.Context, c *Credential, t cradle.Tombstone) (*cradle.SignedTombstone, error) {
	tc, err := id.tlsCert(ctx, c)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	signer := tc.PrivateKey.(crypto.Signer)
	sig, err := SignPayload(signer, payload)
	if err != nil {
		return nil, err
	}
	st := &cradle.SignedTombstone{Payload: payload, Signature: sig, Certificate: tc.Leaf.Raw}
	// What the server checks first; a key store that signs wrongly is
	// caught here.
	if _, _, err := cradle.VerifyTombstone(*st); err != nil {
		return nil, err
	}
	return st, nil
}

// tombstoneList is objs as a tombstone carries them, within
// cradle.MaxTombstoneObjects and its name length: past the bound, the
// state directory's files are named by their top directory ("spool/…"),
// and what still does not fit is counted in a last entry. A long name
// keeps its end.
func tombstoneList(objs []cradle.ErasedObject) []cradle.ErasedObject {
	const maxName = 256
	clip := func(o cradle.ErasedObject) cradle.ErasedObject {
		if len(o.Name) > maxName {
			o.Name = "…" + strings.ToValidUTF8(o.Name[len(o.Name)-(maxName-len("…")):], "")
		}
		return o
	}
	if len(objs) > cradle.MaxTombstoneObjects {
		var folded []cradle.ErasedObject
		for _, o := range objs {
			if o.Store == "state" && !filepath.IsAbs(o.Name) {
				if top, _, ok := strings.Cut(o.Name, string(filepath.Separator)); ok {
					o = cradle.ErasedObject{Store: "state", Kind: o.Kind, Name: top + "/…"}
				}
			}
			if !slices.Contains(folded, o) {
				folded = append(folded, o)
			}
		}
		objs = folded
	}
	var out []cradle.ErasedObject
	for i, o := range objs {
		if len(out) == cradle.MaxTombstoneObjects-1 && len(objs) > cradle.MaxTombstoneObjects {
			out = append(out, cradle.ErasedObject{Store: "state", Kind: "config", Name: fmt.Sprintf("… and %d more files", len(objs)-i)})
			break
		}
		out = append(out, clip(o))
	}
	return out
}

// SignPayload signs payload as tombstones are signed: ECDSA (ASN.1) or
// RSA PKCS#1 v1.5 over its SHA-256, Ed25519 over payload itself.
func SignPayload(s crypto.Signer, payload []byte) ([]byte, error) {
	switch s.Public().(type) {
	case ed25519.PublicKey:
		return s.Sign(rand.Reader, payload, crypto.Hash(0))
	case *ecdsa.PublicKey, *rsa.PublicKey:
		d := sha256.Sum256(payload)
		return s.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	return nil, fmt.Errorf("agent: cannot sign with a %T key", s.Public())
}

// sendTombstone delivers t, retrying transient failures.
func (id *Identity) sendTombstone(ctx context.Context, t *cradle.SignedTombstone, now time.Time, opts WipeOptions) error {
	send := opts.Send
	if send == nil {
		hc, closeIdle, err := id.tombstoneClient(ctx, now)
		if err != nil {
			return err
		}
		defer closeIdle()
		send = func(ctx context.Context, t cradle.SignedTombstone) error {
			return PostTombstone(ctx, hc, id.opts.ServerURL, t)
		}
	}
	attempts, delay := opts.Attempts, opts.RetryDelay
	if attempts <= 0 {
		attempts = 5
	}
	if delay <= 0 {
		delay = 2 * time.Second
	}
	var err error
	for i := range attempts {
		if err = send(ctx, *t); err == nil {
			return nil
		}
		var pe *TombstoneRefusedError
		if errors.As(err, &pe) || i == attempts-1 {
			break
		}
		id.opts.Logger.Warn("wipe: tombstone not delivered; trying again", "attempt", i+1, "of", attempts, "err", err)
		tm := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			tm.Stop()
			return errors.Join(err, ctx.Err())
		case <-tm.C:
		}
		delay *= 2
	}
	return err
}

// tombstoneClient is an HTTP client presenting the current LDevID and
// trusting only the factory root, verifying at now.
func (id *Identity) tombstoneClient(ctx context.Context, now time.Time) (*http.Client, func(), error) {
	f, err := id.readFactory(ctx)
	if err != nil {
		return nil, nil, err
	}
	tc, err := id.tlsCert(ctx, id.state.Current)
	if err != nil {
		return nil, nil, err
	}
	hc, tr := id.httpClient(f, tc.Certificate, tc.PrivateKey.(crypto.Signer), now)
	return hc, tr.CloseIdleConnections, nil
}

// TombstoneRefusedError is the server's refusal of a tombstone (a 4xx
// answer): sending it again would not help.
type TombstoneRefusedError struct {
	Status  int
	Message string
}

func (e *TombstoneRefusedError) Error() string {
	return fmt.Sprintf("agent: the server refused the tombstone: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// PostTombstone posts t as JSON to serverURL's TombstonePath with hc,
// whose TLS configuration presents the LDevID. A 2xx answer is success,
// a 4xx a *TombstoneRefusedError, anything else an error worth retrying.
func PostTombstone(ctx context.Context, hc *http.Client, serverURL string, t cradle.SignedTombstone) error {
	body, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(serverURL, "/")+TombstonePath, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent: post the tombstone: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	var e cradle.Error
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
	if resp.StatusCode/100 == 4 {
		return &TombstoneRefusedError{Status: resp.StatusCode, Message: e.Message}
	}
	return fmt.Errorf("agent: post the tombstone: %s: %s", resp.Status, e.Message)
}

// erase runs the erase phase. Every step can be repeated: a key or file
// already gone is skipped, the fuse word already eol is programmed again
// as a no-op.
func (id *Identity) erase(ctx context.Context, w *WipeProgress, opts WipeOptions) error {
	step := func(name string) error {
		if opts.crash != nil {
			return opts.crash(name)
		}
		return nil
	}
	dev := id.opts.Device
	stateFile := filepath.Join(id.opts.StateDir, StateFile)
	var files []string
	for _, o := range w.Erase {
		if o.Kind == "key" {
			if err := step("key " + o.Name); err != nil {
				return err
			}
			destroy := dev.Keys.DestroyKey
			if ks, isOrphans := dev.Keys.(hw.OrphanKeys); isOrphans && strings.HasPrefix(o.Name, hw.OrphanKeyPrefix) {
				destroy = ks.DestroyOrphan
			}
			if err := destroy(ctx, o.Name); err != nil && !errors.Is(err, hw.ErrNotFound) {
				return fmt.Errorf("destroy key %s: %w", o.Name, err)
			}
			continue
		}
		p := o.Name
		if o.Store == "state" && !filepath.IsAbs(p) {
			p = filepath.Join(id.opts.StateDir, p)
		}
		if p != stateFile {
			files = append(files, p)
		}
	}
	// Files that appeared since the tombstone was built go too.
	now, err := walkFiles(id.opts.StateDir, map[string]bool{stateFile: true, filepath.Join(id.opts.StateDir, DecommissionedFile): true})
	if err != nil {
		return err
	}
	for _, p := range now {
		if !slices.Contains(files, p) {
			files = append(files, p)
		}
	}
	for _, p := range files {
		if err := step("file " + p); err != nil {
			return err
		}
		if err := shred(p); err != nil {
			return err
		}
	}
	if err := step("fuse"); err != nil {
		return err
	}
	word, err := hw.LifecycleWord(hw.LifecycleEOL)
	if err != nil {
		return err
	}
	if err := dev.Fuses.Program(ctx, hw.FuseLifecycle, word); err != nil {
		return fmt.Errorf("program the lifecycle fuse word to eol: %w", err)
	}
	if err := step("marker"); err != nil {
		return err
	}
	marker := []byte("{}\n")
	if w.Tombstone != nil {
		marker = append(bytes.Clone(w.Tombstone.Payload), '\n')
	}
	if err := atomicfile.WriteFile(filepath.Join(id.opts.StateDir, DecommissionedFile), marker, 0o600); err != nil {
		return fmt.Errorf("write the decommissioned marker: %w", err)
	}
	if err := step("state"); err != nil {
		return err
	}
	return finishErase(id.opts.StateDir)
}

// finishErase erases what a marked state directory may still hold (the
// state file, temporary files), keeping the marker, and removes the
// emptied directories.
func finishErase(dir string) error {
	marker := filepath.Join(dir, DecommissionedFile)
	left, err := walkFiles(dir, map[string]bool{marker: true})
	if err != nil {
		return err
	}
	for _, p := range left {
		if err := shred(p); err != nil {
			return err
		}
	}
	// Remove the emptied directories, deepest first.
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != dir {
			dirs = append(dirs, p)
		}
		return nil
	})
	for _, d := range slices.Backward(dirs) {
		os.Remove(d) // a directory something else filled stays
	}
	return nil
}

// shred overwrites a file with zeros, syncs it and removes it (a symbolic
// link is removed, never followed). A missing file is fine. As with
// hw's file key store, on flash and copy-on-write file systems the
// overwrite may not reach the old blocks: the keys, destroyed in their
// store, are what the crypto-erase rests on.
func shred(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("erase %s: %w", p, err)
	}
	if fi.Mode().IsRegular() && fi.Size() > 0 {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("erase %s: %w", p, err)
		}
		zeros := make([]byte, min(fi.Size(), 1<<20))
		for off := int64(0); off < fi.Size() && err == nil; off += int64(len(zeros)) {
			_, err = f.WriteAt(zeros[:min(int64(len(zeros)), fi.Size()-off)], off)
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("erase %s: overwrite: %w", p, err)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("erase %s: %w", p, err)
	}
	return nil
}

// CheckDecommissioned returns an error wrapping ErrDecommissioned when
// stateDir holds the marker of a finished wipe, after erasing whatever a
// power cut right after the marker left there. It returns nil otherwise.
func CheckDecommissioned(stateDir string) error {
	b, err := os.ReadFile(filepath.Join(stateDir, DecommissionedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: read the decommissioned marker: %w", err)
	}
	if err := finishErase(stateDir); err != nil {
		return fmt.Errorf("agent: finish the wipe: %w", err)
	}
	var t cradle.Tombstone
	json.Unmarshal(b, &t)
	when := "at decommissioning"
	if !t.At.IsZero() {
		when = "on " + t.At.UTC().Format(time.RFC3339)
	}
	return fmt.Errorf("this unit was wiped %s (wipe command %q); its keys and credentials are destroyed and it cannot run the agent or enroll again; return it to the factory only if it is to be rebuilt (%s): %w",
		when, t.CommandID, filepath.Join(stateDir, DecommissionedFile), ErrDecommissioned)
}
