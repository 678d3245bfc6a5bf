package tuf

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
)

// Role names, as they appear in root.json.
const (
	RoleRoot      = metadata.ROOT
	RoleTargets   = metadata.TARGETS
	RoleSnapshot  = metadata.SNAPSHOT
	RoleTimestamp = metadata.TIMESTAMP
)

// Expiry gives how long each role's metadata is valid after it is signed.
// A zero field takes its default.
type Expiry struct {
	Root      time.Duration // default 365 days
	Targets   time.Duration // default 90 days
	Snapshot  time.Duration // default 7 days
	Timestamp time.Duration // default 1 day
}

func (e Expiry) withDefaults() Expiry {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&e.Root, 365*24*time.Hour)
	def(&e.Targets, 90*24*time.Hour)
	def(&e.Snapshot, 7*24*time.Hour)
	def(&e.Timestamp, 24*time.Hour)
	return e
}

func (e Expiry) of(role string) time.Duration {
	switch role {
	case RoleRoot:
		return e.Root
	case RoleTargets:
		return e.Targets
	case RoleSnapshot:
		return e.Snapshot
	default:
		return e.Timestamp
	}
}

// Options configures a Repository. The zero value is usable with a Store.
type Options struct {
	// Store holds the metadata files (required).
	Store Store
	// Expiry sets the validity periods; zero fields take the defaults.
	Expiry Expiry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Signers are the keys an operation may sign with. Each operation says
// which it needs; a key given for a role must be one root lists for that
// role, or the operation is refused.
type Signers struct {
	// Root holds root keys: at least the threshold of the root being
	// signed and, for a rotation, of the root before it.
	Root      []crypto.Signer
	Targets   crypto.Signer
	Snapshot  crypto.Signer
	Timestamp crypto.Signer
}

// RootSpec is the set of root keys and how many of them must sign.
type RootSpec struct {
	Keys      []crypto.PublicKey
	Threshold int
}

// Target describes a target file to add: its size and SHA-256 digest (the
// only hash, so that a client's hash-prefixed URL is the content address),
// and its custom metadata.
type Target struct {
	Length int64
	SHA256 []byte
	Custom Custom
}

// Repository is a TUF repository of the four top-level roles. Changes to
// targets (AddTarget, RemoveTarget) are staged in memory until Publish.
// It is safe for concurrent use; one process should own a store.
type Repository struct {
	store  Store
	expiry Expiry
	now    func() time.Time

	mu        sync.Mutex
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
	staged    map[string]*metadata.TargetFiles // nil: nothing staged
}

// state is one complete set of top-level metadata, built in full before
// anything is written.
type state struct {
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
}

func newRepository(opts Options) (*Repository, error) {
	if opts.Store == nil {
		return nil, errors.New("tuf: no store")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Repository{store: opts.Store, expiry: opts.Expiry.withDefaults(), now: now}, nil
}

// Init creates a repository in an empty store: root version 1 with the
// given root keys and threshold and the public keys of s.Targets,
// s.Snapshot and s.Timestamp (threshold 1 each), signed by s.Root, and
// empty targets, snapshot and timestamp, all version 1. It refuses a store
// that already has a root.json, a threshold below 1 or above the number of
// root keys, and too few root signers.
func Init(ctx context.Context, opts Options, spec RootSpec, s Signers) (*Repository, error) {
	r, err := newRepository(opts)
	if err != nil {
		return nil, err
	}
	if _, err := r.store.Get(ctx, "root.json"); err == nil {
		return nil, cradle.Errorf(cradle.ECONFLICT, "the TUF repository already exists (root.json is there); open it instead")
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tuf: read root.json: %w", err)
	}
	if s.Targets == nil || s.Snapshot == nil || s.Timestamp == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "init needs the targets, snapshot and timestamp keys")
	}
	now := r.now()
	root := metadata.Root(r.expires(RoleRoot, now))
	root.Signed.ConsistentSnapshot = true
	if err := setRootKeys(&root.Signed, spec); err != nil {
		return nil, err
	}
	for role, signer := range map[string]crypto.Signer{RoleTargets: s.Targets, RoleSnapshot: s.Snapshot, RoleTimestamp: s.Timestamp} {
		if err := setRoleKey(&root.Signed, role, signer.Public()); err != nil {
			return nil, err
		}
	}
	if err := signRoot(root, nil, s.Root); err != nil {
		return nil, err
	}
	st := state{
		root:      root,
		targets:   metadata.Targets(r.expires(RoleTargets, now)),
		snapshot:  metadata.Snapshot(r.expires(RoleSnapshot, now)),
		timestamp: metadata.Timestamp(r.expires(RoleTimestamp, now)),
	}
	// sign gives snapshot and timestamp the next version: 1.
	st.snapshot.Signed.Version, st.timestamp.Signed.Version = 0, 0
	if err := r.sign(&st, s, true, true, true); err != nil {
		return nil, err
	}
	if err := r.write(ctx, st, true, true, true, true); err != nil {
		return nil, err
	}
	r.commit(st)
	return r, nil
}

// Open loads the repository from its store and checks that each role's
// metadata is signed by the keys root gives it (expired metadata opens, so
// that it can be refreshed).
func Open(ctx context.Context, opts Options) (*Repository, error) {
	r, err := newRepository(opts)
	if err != nil {
		return nil, err
	}
	var st state
	if st.root, err = load[metadata.RootType](ctx, r.store, "root.json"); err != nil {
		return nil, err
	}
	if st.targets, err = load[metadata.TargetsType](ctx, r.store, "targets.json"); err != nil {
		return nil, err
	}
	if st.snapshot, err = load[metadata.SnapshotType](ctx, r.store, "snapshot.json"); err != nil {
		return nil, err
	}
	if st.timestamp, err = load[metadata.TimestampType](ctx, r.store, "timestamp.json"); err != nil {
		return nil, err
	}
	for _, v := range []struct {
		role string
		md   any
	}{{RoleRoot, st.root}, {RoleTargets, st.targets}, {RoleSnapshot, st.snapshot}, {RoleTimestamp, st.timestamp}} {
		if err := st.root.VerifyDelegate(v.role, v.md); err != nil {
			return nil, fmt.Errorf("tuf: %s.json is not signed by the %s keys of root version %d: %w", v.role, v.role, st.root.Signed.Version, err)
		}
	}
	r.commit(st)
	return r, nil
}

func load[T metadata.Roles](ctx context.Context, s Store, name string) (*metadata.Metadata[T], error) {
	b, err := s.Get(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, cradle.Errorf(cradle.ENOTFOUND, "the TUF repository has no %s; create it with init", name)
	} else if err != nil {
		return nil, fmt.Errorf("tuf: read %s: %w", name, err)
	}
	md, err := new(metadata.Metadata[T]).FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("tuf: parse %s: %w", name, err)
	}
	return md, nil
}

// Root returns root.json as stored (a client's initial trusted root).
func (r *Repository) Root() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.root.ToBytes(true)
}

// Versions returns the current version of each role.
func (r *Repository) Versions() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return map[string]int64{
		RoleRoot:      r.root.Signed.Version,
		RoleTargets:   r.targets.Signed.Version,
		RoleSnapshot:  r.snapshot.Signed.Version,
		RoleTimestamp: r.timestamp.Signed.Version,
	}
}

// Expires returns when each role's published metadata expires.
func (r *Repository) Expires() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return map[string]time.Time{
		RoleRoot:      r.root.Signed.Expires,
		RoleTargets:   r.targets.Signed.Expires,
		RoleSnapshot:  r.snapshot.Signed.Expires,
		RoleTimestamp: r.timestamp.Signed.Expires,
	}
}

// Targets returns the published targets' custom metadata by path.
func (r *Repository) Targets() (map[string]Custom, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Custom, len(r.targets.Signed.Targets))
	for p, tf := range r.targets.Signed.Targets {
		c, err := customOf(tf)
		if err != nil {
			return nil, fmt.Errorf("tuf: target %s: %w", p, err)
		}
		out[p] = c
	}
	return out, nil
}

func customOf(tf *metadata.TargetFiles) (Custom, error) {
	if tf.Custom == nil {
		return Custom{}, cradle.Errorf(cradle.EINVALID, "target has no custom metadata")
	}
	return ParseCustom(*tf.Custom)
}

// AddTarget stages a target for the next Publish, replacing one at the
// same path. It refuses a malformed path, a length below 1, a digest that
// is not 32 bytes, incomplete custom metadata, and a security counter
// below that of any target of the same model, the one it replaces
// included (a downgrade). A delta patch is a target too, with the custom
// metadata of the release it produces.
func (r *Repository) AddTarget(path string, t Target) error {
	if err := checkTargetPath(path); err != nil {
		return err
	}
	if t.Length <= 0 {
		return cradle.Errorf(cradle.EINVALID, "target %s: length %d; give the file's size in bytes", path, t.Length)
	}
	if len(t.SHA256) != 32 {
		return cradle.Errorf(cradle.EINVALID, "target %s: the SHA-256 digest is %d bytes, not 32", path, len(t.SHA256))
	}
	if err := t.Custom.Validate(); err != nil {
		return cradle.Errorf(cradle.EINVALID, "target %s: %s", path, cradle.ErrorMessage(err))
	}
	custom, err := t.Custom.marshal()
	if err != nil {
		return fmt.Errorf("tuf: target %s: %w", path, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	staged := r.stagedTargets()
	for p, tf := range staged {
		c, err := customOf(tf)
		if err != nil {
			return fmt.Errorf("tuf: target %s: %w", p, err)
		}
		if c.Model == t.Custom.Model && t.Custom.SecurityCounter < c.SecurityCounter {
			return cradle.Errorf(cradle.EINVALID, "target %s: security counter %d is below %d of %s (model %s): a downgrade; build the release with a counter of at least %d",
				path, t.Custom.SecurityCounter, c.SecurityCounter, p, c.Model, c.SecurityCounter)
		}
	}
	staged[path] = &metadata.TargetFiles{
		Length: t.Length,
		Hashes: metadata.Hashes{"sha256": slices.Clone(t.SHA256)},
		Custom: custom,
		Path:   path,
	}
	r.staged = staged
	return nil
}

// RemoveTarget stages the removal of a target for the next Publish.
func (r *Repository) RemoveTarget(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	staged := r.stagedTargets()
	if _, ok := staged[path]; !ok {
		return cradle.Errorf(cradle.ENOTFOUND, "no target %q in the TUF repository", path)
	}
	delete(staged, path)
	r.staged = staged
	return nil
}

func (r *Repository) stagedTargets() map[string]*metadata.TargetFiles {
	if r.staged != nil {
		return r.staged
	}
	return maps.Clone(r.targets.Signed.Targets)
}

// Publish signs the staged targets as a new targets version with
// s.Targets, then a new snapshot with s.Snapshot and a new timestamp with
// s.Timestamp, and writes them in that order (timestamp last, so a client
// sees the old repository or the new one). It refuses when root has
// expired: renew root first (RotateRoot with the same keys).
func (r *Repository) Publish(ctx context.Context, s Signers) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if r.root.Signed.IsExpired(now) {
		return cradle.Errorf(cradle.EINVALID, "root version %d expired at %s; renew it (rotate root with the same keys) before publishing",
			r.root.Signed.Version, r.root.Signed.Expires.Format(time.RFC3339))
	}
	st := r.current()
	st.targets = clone(r.targets)
	st.targets.Signed.Targets = r.stagedTargets()
	st.targets.Signed.Version++
	st.targets.Signed.Expires = r.expires(RoleTargets, now)
	if err := r.sign(&st, s, true, true, true); err != nil {
		return err
	}
	if err := r.write(ctx, st, false, true, true, true); err != nil {
		return err
	}
	r.commit(st)
	r.staged = nil
	return nil
}

// Refresh re-signs, with the keys in s, the metadata that expires within
// half of its period from now: targets (which makes a new snapshot),
// snapshot (which makes a new timestamp) and timestamp. It returns the
// roles it re-signed. Root is never re-signed here (its keys are
// offline). When a role is due but its key is not in s, the others are
// still refreshed and the error names the missing key. Staged target
// changes are not published by Refresh.
func (r *Repository) Refresh(ctx context.Context, s Signers) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if r.root.Signed.IsExpired(now) {
		return nil, cradle.Errorf(cradle.EINVALID, "root version %d expired at %s; renew it (rotate root with the same keys) before refreshing",
			r.root.Signed.Version, r.root.Signed.Expires.Format(time.RFC3339))
	}
	due := func(role string, expires time.Time) bool {
		return expires.Sub(now) < r.expiry.of(role)/2
	}
	var missing []string
	doTargets := due(RoleTargets, r.targets.Signed.Expires)
	if doTargets && s.Targets == nil {
		missing = append(missing, RoleTargets)
		doTargets = false
	}
	doSnapshot := doTargets || due(RoleSnapshot, r.snapshot.Signed.Expires)
	if doSnapshot && s.Snapshot == nil {
		missing = append(missing, RoleSnapshot)
		doTargets, doSnapshot = false, false
	}
	doTimestamp := doSnapshot || due(RoleTimestamp, r.timestamp.Signed.Expires)
	if doTimestamp && s.Timestamp == nil {
		missing = append(missing, RoleTimestamp)
		doTargets, doSnapshot, doTimestamp = false, false, false
	}
	var done []string
	if doTimestamp {
		st := r.current()
		if doTargets {
			st.targets = clone(r.targets)
			st.targets.Signed.Version++
			st.targets.Signed.Expires = r.expires(RoleTargets, now)
			done = append(done, RoleTargets)
		}
		if doSnapshot {
			done = append(done, RoleSnapshot)
		}
		done = append(done, RoleTimestamp)
		if err := r.sign(&st, s, doTargets, doSnapshot, true); err != nil {
			return nil, err
		}
		if err := r.write(ctx, st, false, doTargets, doSnapshot, true); err != nil {
			return nil, err
		}
		r.commit(st)
	}
	if len(missing) > 0 {
		return done, cradle.Errorf(cradle.EINVALID, "%s expire(s) soon and need their key(s) to be refreshed", strings.Join(missing, ", "))
	}
	return done, nil
}

// RotateKey replaces the key of the targets, snapshot or timestamp role
// with newKey: a new root version lists it instead of the old key(s) and
// is signed by a threshold of s.Root, then the role is re-signed with the
// new key (and snapshot and timestamp after it). s must hold the keys of
// the other roles the rotation re-signs; for the targets role, s.Targets is
// ignored. Metadata signed by the retired key is refused by clients from
// then on.
func (r *Repository) RotateKey(ctx context.Context, role string, newKey crypto.Signer, s Signers) error {
	switch role {
	case RoleTargets, RoleSnapshot, RoleTimestamp:
	default:
		return cradle.Errorf(cradle.EINVALID, "cannot rotate the key of role %q: use targets, snapshot or timestamp (root has RotateRoot)", role)
	}
	if newKey == nil {
		return cradle.Errorf(cradle.EINVALID, "no new %s key", role)
	}
	switch role {
	case RoleTargets:
		s.Targets = newKey
	case RoleSnapshot:
		s.Snapshot = newKey
	case RoleTimestamp:
		s.Timestamp = newKey
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	root := r.nextRoot()
	for _, id := range root.Signed.Roles[role].KeyIDs {
		if err := root.Signed.RevokeKey(id, role); err != nil {
			return fmt.Errorf("tuf: revoke %s key: %w", role, err)
		}
	}
	if err := setRoleKey(&root.Signed, role, newKey.Public()); err != nil {
		return err
	}
	return r.rotate(ctx, role, root, s)
}

// RotateRoot makes a new root version with the root keys and threshold of
// spec (the same keys renew root before it expires). As the TUF
// specification requires, it must be signed by a threshold of the old
// root's keys and a threshold of the new root's keys: s.Root holds both
// (a key in both counts for both). Only root is written: the other roles'
// keys are unchanged, and clients fetch the new root before anything else.
func (r *Repository) RotateRoot(ctx context.Context, spec RootSpec, s Signers) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	root := r.nextRoot()
	for _, id := range root.Signed.Roles[RoleRoot].KeyIDs {
		if err := root.Signed.RevokeKey(id, RoleRoot); err != nil {
			return fmt.Errorf("tuf: revoke root key: %w", err)
		}
	}
	if err := setRootKeys(&root.Signed, spec); err != nil {
		return err
	}
	return r.rotate(ctx, RoleRoot, root, s)
}

func (r *Repository) nextRoot() *metadata.Metadata[metadata.RootType] {
	root := clone(r.root)
	root.Signed.Version++
	root.Signed.Expires = r.expires(RoleRoot, r.now())
	return root
}

// rotate signs and publishes a new root; when role is not root, the role
// whose key changed is re-signed with its new key, and so is every role
// after it in the chain targets → snapshot → timestamp.
func (r *Repository) rotate(ctx context.Context, role string, root *metadata.Metadata[metadata.RootType], s Signers) error {
	if err := signRoot(root, r.root, s.Root); err != nil {
		return err
	}
	now := r.now()
	st := r.current()
	st.root = root
	targets := role == RoleTargets
	snapshot := targets || role == RoleSnapshot
	timestamp := snapshot || role == RoleTimestamp
	if targets {
		st.targets = clone(r.targets)
		st.targets.Signed.Version++
		st.targets.Signed.Expires = r.expires(RoleTargets, now)
	}
	if err := r.sign(&st, s, targets, snapshot, timestamp); err != nil {
		return err
	}
	if err := r.write(ctx, st, true, targets, snapshot, timestamp); err != nil {
		return err
	}
	r.commit(st)
	return nil
}

func (r *Repository) current() state {
	return state{root: r.root, targets: r.targets, snapshot: r.snapshot, timestamp: r.timestamp}
}

// commit makes st the repository's state. Staged target changes stay
// staged: only Publish consumes them.
func (r *Repository) commit(st state) {
	r.root, r.targets, r.snapshot, r.timestamp = st.root, st.targets, st.snapshot, st.timestamp
}

func (r *Repository) expires(role string, now time.Time) time.Time {
	return now.UTC().Truncate(time.Second).Add(r.expiry.of(role))
}

// sign re-signs the chosen roles of st in dependency order: targets, then a
// snapshot recording the targets version, then a timestamp recording the
// snapshot. A new snapshot or timestamp gets the next version and a fresh
// expiry.
func (r *Repository) sign(st *state, s Signers, targets, snapshot, timestamp bool) error {
	now := r.now()
	if targets {
		if s.Targets == nil {
			return cradle.Errorf(cradle.EINVALID, "signing targets needs the targets key")
		}
		if err := signRole(st.targets, RoleTargets, st.root, s.Targets); err != nil {
			return err
		}
	}
	if snapshot {
		if s.Snapshot == nil {
			return cradle.Errorf(cradle.EINVALID, "signing snapshot needs the snapshot key")
		}
		b, err := st.targets.ToBytes(true)
		if err != nil {
			return fmt.Errorf("tuf: encode targets: %w", err)
		}
		snap := clone(st.snapshot)
		snap.Signed.Version++
		snap.Signed.Expires = r.expires(RoleSnapshot, now)
		snap.Signed.Meta = map[string]*metadata.MetaFiles{"targets.json": metaFile(st.targets.Signed.Version, b)}
		if err := signRole(snap, RoleSnapshot, st.root, s.Snapshot); err != nil {
			return err
		}
		st.snapshot = snap
	}
	if timestamp {
		if s.Timestamp == nil {
			return cradle.Errorf(cradle.EINVALID, "signing timestamp needs the timestamp key")
		}
		b, err := st.snapshot.ToBytes(true)
		if err != nil {
			return fmt.Errorf("tuf: encode snapshot: %w", err)
		}
		ts := clone(st.timestamp)
		ts.Signed.Version++
		ts.Signed.Expires = r.expires(RoleTimestamp, now)
		ts.Signed.Meta = map[string]*metadata.MetaFiles{"snapshot.json": metaFile(st.snapshot.Signed.Version, b)}
		if err := signRole(ts, RoleTimestamp, st.root, s.Timestamp); err != nil {
			return err
		}
		st.timestamp = ts
	}
	return nil
}

func metaFile(version int64, data []byte) *metadata.MetaFiles {
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(data))
	sum := sha256.Sum256(data)
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// write stores st: the versioned files first, then the unversioned names,
// timestamp.json last. A failure part way leaves timestamp.json (what
// clients start from) as it was.
func (r *Repository) write(ctx context.Context, st state, root, targets, snapshot, timestamp bool) error {
	type file struct {
		names []string // the role's versioned name, then its plain one
		md    interface{ ToBytes(bool) ([]byte, error) }
	}
	versioned := func(v int64, name string) []string {
		return []string{strconv.FormatInt(v, 10) + "." + name, name}
	}
	var files []file
	if root {
		files = append(files, file{versioned(st.root.Signed.Version, "root.json"), st.root})
	}
	if targets {
		files = append(files, file{versioned(st.targets.Signed.Version, "targets.json"), st.targets})
	}
	if snapshot {
		files = append(files, file{versioned(st.snapshot.Signed.Version, "snapshot.json"), st.snapshot})
	}
	if timestamp {
		files = append(files, file{[]string{"timestamp.json"}, st.timestamp})
	}
	for _, f := range files {
		b, err := f.md.ToBytes(true)
		if err != nil {
			return fmt.Errorf("tuf: encode %s: %w", f.names[0], err)
		}
		for _, name := range f.names {
			if err := r.store.Put(ctx, name, b); err != nil {
				return fmt.Errorf("tuf: store %s: %w", name, err)
			}
		}
	}
	return nil
}

func clone[T metadata.Roles](md *metadata.Metadata[T]) *metadata.Metadata[T] {
	b, err := md.ToBytes(false)
	if err != nil {
		panic("tuf: metadata does not encode: " + err.Error())
	}
	c, err := new(metadata.Metadata[T]).FromBytes(b)
	if err != nil {
		panic("tuf: metadata does not decode: " + err.Error())
	}
	return c
}

func setRootKeys(root *metadata.RootType, spec RootSpec) error {
	if spec.Threshold < 1 {
		return cradle.Errorf(cradle.EINVALID, "root threshold %d: it must be at least 1", spec.Threshold)
	}
	if spec.Threshold > len(spec.Keys) {
		return cradle.Errorf(cradle.EINVALID, "root threshold %d is larger than the number of root keys (%d): add keys or lower the threshold", spec.Threshold, len(spec.Keys))
	}
	seen := map[string]bool{}
	for _, pub := range spec.Keys {
		k, id, err := tufKey(pub)
		if err != nil {
			return cradle.Errorf(cradle.EINVALID, "root key: %v", err)
		}
		if seen[id] {
			return cradle.Errorf(cradle.EINVALID, "root key %s is listed twice", short(id))
		}
		seen[id] = true
		if err := root.AddKey(k, RoleRoot); err != nil {
			return fmt.Errorf("tuf: add root key: %w", err)
		}
	}
	root.Roles[RoleRoot].Threshold = spec.Threshold
	return nil
}

func setRoleKey(root *metadata.RootType, role string, pub crypto.PublicKey) error {
	k, _, err := tufKey(pub)
	if err != nil {
		return cradle.Errorf(cradle.EINVALID, "%s key: %v", role, err)
	}
	if err := root.AddKey(k, role); err != nil {
		return fmt.Errorf("tuf: add %s key: %w", role, err)
	}
	root.Roles[role].Threshold = 1
	return nil
}

// signRole replaces md's signatures with one by signer, which must be a key
// root gives role.
func signRole[T metadata.Roles](md *metadata.Metadata[T], role string, root *metadata.Metadata[metadata.RootType], signer crypto.Signer) error {
	_, id, err := tufKey(signer.Public())
	if err != nil {
		return cradle.Errorf(cradle.EINVALID, "%s key: %v", role, err)
	}
	if !slices.Contains(root.Signed.Roles[role].KeyIDs, id) {
		return cradle.Errorf(cradle.EINVALID, "key %s is not a %s key of root version %d; use the key root lists or rotate the %s key",
			short(id), role, root.Signed.Version, role)
	}
	md.ClearSignatures()
	if _, err := md.Sign(keySigner{signer}); err != nil {
		return fmt.Errorf("tuf: sign %s: %w", role, err)
	}
	if err := root.VerifyDelegate(role, md); err != nil {
		return fmt.Errorf("tuf: %s signature does not verify: %w", role, err)
	}
	return nil
}

// signRoot signs root with every signer and checks it meets its own
// threshold and, when old is not nil, the threshold of old. A signer whose
// key neither root lists is refused.
func signRoot(root, old *metadata.Metadata[metadata.RootType], signers []crypto.Signer) error {
	root.ClearSignatures()
	seen := map[string]bool{}
	for _, s := range signers {
		_, id, err := tufKey(s.Public())
		if err != nil {
			return cradle.Errorf(cradle.EINVALID, "root key: %v", err)
		}
		inNew := slices.Contains(root.Signed.Roles[RoleRoot].KeyIDs, id)
		inOld := old != nil && slices.Contains(old.Signed.Roles[RoleRoot].KeyIDs, id)
		if !inNew && !inOld {
			return cradle.Errorf(cradle.EINVALID, "key %s is not a root key of root version %d or %d", short(id), root.Signed.Version-1, root.Signed.Version)
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		if _, err := root.Sign(keySigner{s}); err != nil {
			return fmt.Errorf("tuf: sign root: %w", err)
		}
	}
	if old != nil {
		if err := old.VerifyDelegate(RoleRoot, root); err != nil {
			return cradle.Errorf(cradle.EINVALID, "root version %d needs %d signature(s) by keys of root version %d: %v",
				root.Signed.Version, old.Signed.Roles[RoleRoot].Threshold, old.Signed.Version, err)
		}
	}
	if err := root.VerifyDelegate(RoleRoot, root); err != nil {
		return cradle.Errorf(cradle.EINVALID, "root version %d needs %d signature(s) by its own root keys: %v",
			root.Signed.Version, root.Signed.Roles[RoleRoot].Threshold, err)
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// TargetURLPath returns where a client fetches a target under the targets
// URL with consistent snapshots: "DIR/HEX.NAME", HEX its SHA-256.
func TargetURLPath(path string, digest []byte) string {
	dir, name := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, name = path[:i+1], path[i+1:]
	}
	return dir + hex.EncodeToString(digest) + "." + name
}
