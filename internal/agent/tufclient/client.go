package tufclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"

	"cradle"
	"cradle/internal/atomicfile"
)

// Limits caps what the client reads of each role's metadata when no
// length is recorded for it (root and timestamp always; snapshot and
// targets when the metadata above omits the length). A zero field takes
// its default.
type Limits struct {
	Root      int64 // default 512 KiB
	Timestamp int64 // default 16 KiB
	Snapshot  int64 // default 2 MiB
	Targets   int64 // default 8 MiB
	// RootRotations bounds the root versions walked in one Refresh
	// (default 256).
	RootRotations int
}

func (l Limits) withDefaults() Limits {
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.Root, 512<<10)
	def(&l.Timestamp, 16<<10)
	def(&l.Snapshot, 2<<20)
	def(&l.Targets, 8<<20)
	if l.RootRotations <= 0 {
		l.RootRotations = 256
	}
	return l
}

func (l Limits) of(role string) int64 {
	switch role {
	case metadata.ROOT:
		return l.Root
	case metadata.TIMESTAMP:
		return l.Timestamp
	case metadata.SNAPSHOT:
		return l.Snapshot
	default:
		return l.Targets
	}
}

// Options configures a Client.
type Options struct {
	// Dir is the directory of the agent's state where the trusted
	// metadata is kept (required; created if missing).
	Dir string
	// MetadataURL is the repository's metadata URL, ending in "/" (the
	// update offer's tuf.metadata_url, "https://HOST/device/v1/tuf/").
	// Targets are under MetadataURL + "targets/".
	MetadataURL string
	// HTTPClient fetches metadata: the agent's mTLS client. Nil means
	// http.DefaultClient.
	HTTPClient *http.Client
	// TrustedRoot is the root metadata the device trusts from the factory,
	// used only when Dir holds no root.json yet.
	TrustedRoot []byte
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Limits caps metadata sizes; zero fields take the defaults.
	Limits Limits
}

// Client is a TUF client over one repository. It is safe for concurrent
// use; Refresh calls are serialized.
type Client struct {
	dir     string
	base    *url.URL
	hc      *http.Client
	now     func() time.Time
	limits  Limits
	refresh sync.Mutex // held by Refresh

	mu      sync.Mutex
	root    []byte                                     // the trusted root.json as stored
	targets *metadata.Metadata[metadata.TargetsType]   // nil until a Refresh succeeded
	version map[string]int64                           // of the last successful Refresh
	snap    *metadata.Metadata[metadata.SnapshotType]  // kept for Versions
	ts      *metadata.Metadata[metadata.TimestampType] // kept for Versions
	rootMD  *metadata.Metadata[metadata.RootType]      // kept for Versions
}

// Local file names in Dir.
const (
	rootFile      = "root.json"
	timestampFile = "timestamp.json"
	snapshotFile  = "snapshot.json"
	targetsFile   = "targets.json"
)

// Open loads the trusted root from opts.Dir, or, on a device's first
// update, checks opts.TrustedRoot (signed by a threshold of its own keys)
// and stores it there. It fetches nothing.
func Open(opts Options) (*Client, error) {
	if opts.Dir == "" {
		return nil, errors.New("tufclient: no state directory")
	}
	base, err := url.Parse(opts.MetadataURL)
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, cradle.Errorf(cradle.EINVALID, "TUF metadata URL %q is not an http(s) URL", opts.MetadataURL)
	}
	if !strings.HasSuffix(base.Path, "/") {
		base.Path += "/"
	}
	c := &Client{dir: opts.Dir, base: base, hc: opts.HTTPClient, now: opts.Now, limits: opts.Limits.withDefaults()}
	if c.hc == nil {
		c.hc = http.DefaultClient
	}
	if c.now == nil {
		c.now = time.Now
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("tufclient: %w", err)
	}
	root, err := os.ReadFile(filepath.Join(c.dir, rootFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if len(opts.TrustedRoot) == 0 {
			return nil, cradle.Errorf(cradle.EINVALID, "no trusted TUF root in %s and none given: provision the update root metadata", c.dir)
		}
		if _, err := trustedmetadata.New(opts.TrustedRoot); err != nil {
			return nil, classify(metadata.ROOT, err, Rollback)
		}
		if err := c.store(rootFile, opts.TrustedRoot); err != nil {
			return nil, err
		}
		root = opts.TrustedRoot
	case err != nil:
		return nil, fmt.Errorf("tufclient: %w", err)
	default:
		if _, err := trustedmetadata.New(root); err != nil {
			return nil, fmt.Errorf("tufclient: the trusted root in %s does not verify (state damaged?): %w", c.dir, err)
		}
	}
	c.root = root
	return c, nil
}

// Refresh runs the TUF client workflow (specification 5.3 to 5.6): it
// walks the root chain version by version (each new root signed by a
// threshold of the old root's keys and of its own), then fetches
// timestamp.json, the snapshot it names and the targets the snapshot
// names (N.snapshot.json, N.targets.json with consistent snapshots),
// checking signatures, versions against what is trusted, lengths and
// hashes against what the metadata above records, and expiry of every
// role. Each accepted file is stored in Dir at once, so the rollback
// protection it gives survives a failure later in the walk and a
// reboot. A refusal is an *Error naming the attack; a network failure is
// a plain error (transient: try later). After an error Lookup answers
// from the last successful Refresh of this Client, or not at all.
func (c *Client) Refresh(ctx context.Context) error {
	c.refresh.Lock()
	defer c.refresh.Unlock()
	c.mu.Lock()
	rootData := c.root
	c.mu.Unlock()

	tm, err := trustedmetadata.New(rootData)
	if err != nil {
		return fmt.Errorf("tufclient: trusted root: %w", err)
	}
	tm.RefTime = c.now().UTC()
	initial := tm.Root

	// 5.3: the root chain.
	for i := 0; ; i++ {
		if i >= c.limits.RootRotations {
			return refuse(EndlessData, metadata.ROOT, nil, "more than %d root versions after version %d in one update", c.limits.RootRotations, initial.Signed.Version)
		}
		next := tm.Root.Signed.Version + 1
		data, err := c.fetch(ctx, metadata.ROOT, strconv.FormatInt(next, 10)+".root.json", 0)
		if errors.Is(err, errNotFound) {
			break
		} else if err != nil {
			return err
		}
		if _, err := tm.UpdateRoot(data); err != nil {
			return classify(metadata.ROOT, err, rootVersionAttack(data, next))
		}
		if err := c.store(rootFile, data); err != nil {
			return err
		}
		c.mu.Lock()
		c.root = data
		c.mu.Unlock()
	}
	// 5.3.10: the final root must not be expired.
	if tm.Root.Signed.IsExpired(tm.RefTime) {
		return refuse(Freeze, metadata.ROOT, nil, "root version %d expired at %s", tm.Root.Signed.Version, tm.Root.Signed.Expires.Format(time.RFC3339))
	}
	// 5.3.11: after a rotation of the timestamp or snapshot keys, the
	// trusted timestamp and snapshot cannot be used against the new ones
	// (a fast-forward attack recovery).
	if roleKeysChanged(initial, tm.Root, metadata.TIMESTAMP) || roleKeysChanged(initial, tm.Root, metadata.SNAPSHOT) {
		for _, name := range []string{timestampFile, snapshotFile} {
			if err := os.Remove(filepath.Join(c.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("tufclient: %w", err)
			}
		}
	}
	consistent := tm.Root.Signed.ConsistentSnapshot

	// 5.4: timestamp. The trusted copy, if any, is the floor for versions.
	if local, err := c.load(timestampFile); err == nil {
		if _, err := tm.UpdateTimestamp(local); err != nil {
			var expired *metadata.ErrExpiredMetadata
			if !errors.As(err, &expired) {
				tm.Timestamp = nil // damaged state: start from root alone
			}
		}
	}
	data, err := c.fetch(ctx, metadata.TIMESTAMP, timestampFile, 0)
	if err != nil {
		return err
	}
	if err := checkTimestampShape(data); err != nil {
		return err
	}
	if _, err := tm.UpdateTimestamp(data); err != nil {
		var equal *metadata.ErrEqualVersionNumber
		if !errors.As(err, &equal) {
			return classify(metadata.TIMESTAMP, err, Rollback)
		}
		// The same version as trusted: keep the trusted copy, whose
		// expiry is checked below.
		if tm.Timestamp.Signed.IsExpired(tm.RefTime) {
			return refuse(Freeze, metadata.TIMESTAMP, nil, "timestamp.json version %d expired at %s", tm.Timestamp.Signed.Version, tm.Timestamp.Signed.Expires.Format(time.RFC3339))
		}
	} else if err := c.store(timestampFile, data); err != nil {
		return err
	}

	// 5.5: snapshot. The trusted copy is the floor for the versions it
	// lists (kept even when it no longer matches the timestamp); when it
	// still matches, it saves a download.
	snapMeta := tm.Timestamp.Signed.Meta[snapshotFile]
	loaded := false
	if local, err := c.load(snapshotFile); err == nil {
		if _, err := tm.UpdateSnapshot(local, true); err == nil {
			loaded = snapMeta.VerifyLengthHashes(local) == nil
		}
	}
	if !loaded {
		name := snapshotFile
		if consistent {
			name = strconv.FormatInt(snapMeta.Version, 10) + "." + snapshotFile
		}
		data, err := c.fetch(ctx, metadata.SNAPSHOT, name, snapMeta.Length)
		if err != nil {
			return err
		}
		before := tm.Snapshot
		if _, err := tm.UpdateSnapshot(data, false); err != nil {
			// A snapshot that was loaded and then failed the final check
			// does not match the timestamp: mix-and-match. One refused
			// before loading went back on a version it lists: rollback.
			attack := Rollback
			if tm.Snapshot != before {
				attack = MixAndMatch
			}
			return classify(metadata.SNAPSHOT, err, attack)
		}
		if err := c.store(snapshotFile, data); err != nil {
			return err
		}
	}

	// 5.6: targets.
	targetsMeta, ok := tm.Snapshot.Signed.Meta[targetsFile]
	if !ok {
		return refuse(MixAndMatch, metadata.SNAPSHOT, nil, "snapshot.json version %d lists no targets.json", tm.Snapshot.Signed.Version)
	}
	loaded = false
	if local, err := c.load(targetsFile); err == nil {
		if _, err := tm.UpdateTargets(local); err == nil {
			loaded = true
		}
	}
	if !loaded {
		name := targetsFile
		if consistent {
			name = strconv.FormatInt(targetsMeta.Version, 10) + "." + targetsFile
		}
		data, err := c.fetch(ctx, metadata.TARGETS, name, targetsMeta.Length)
		if err != nil {
			return err
		}
		if _, err := tm.UpdateTargets(data); err != nil {
			return classify(metadata.TARGETS, err, MixAndMatch)
		}
		if err := c.store(targetsFile, data); err != nil {
			return err
		}
	}

	c.mu.Lock()
	c.targets = tm.Targets[metadata.TARGETS]
	c.rootMD, c.ts, c.snap = tm.Root, tm.Timestamp, tm.Snapshot
	c.mu.Unlock()
	return nil
}

// Versions returns the version of each role the last successful Refresh
// trusted, or nil before one.
func (c *Client) Versions() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.targets == nil {
		return nil
	}
	return map[string]int64{
		metadata.ROOT:      c.rootMD.Signed.Version,
		metadata.TIMESTAMP: c.ts.Signed.Version,
		metadata.SNAPSHOT:  c.snap.Signed.Version,
		metadata.TARGETS:   c.targets.Signed.Version,
	}
}

// rootVersionAttack tells, for a root version refused for its version
// number, whether it went back (rollback) or jumped (mix-and-match).
func rootVersionAttack(data []byte, want int64) Attack {
	md, err := metadata.Root().FromBytes(data)
	if err == nil && md.Signed.Version < want {
		return Rollback
	}
	return MixAndMatch
}

// roleKeysChanged reports whether role's keys or threshold differ between
// two roots.
func roleKeysChanged(a, b *metadata.Metadata[metadata.RootType], role string) bool {
	ra, rb := a.Signed.Roles[role], b.Signed.Roles[role]
	if ra == nil || rb == nil {
		return ra != rb
	}
	x, y := slices.Clone(ra.KeyIDs), slices.Clone(rb.KeyIDs)
	slices.Sort(x)
	slices.Sort(y)
	return ra.Threshold != rb.Threshold || !slices.Equal(x, y)
}

// checkTimestampShape refuses a timestamp without the snapshot entry that
// every later step reads.
func checkTimestampShape(data []byte) error {
	md, err := metadata.Timestamp().FromBytes(data)
	if err != nil {
		return classify(metadata.TIMESTAMP, err, Rollback)
	}
	if md.Signed.Meta[snapshotFile] == nil {
		return refuse(Malformed, metadata.TIMESTAMP, nil, "timestamp.json has no snapshot.json entry")
	}
	return nil
}

var errNotFound = errors.New("tufclient: not found")

// fetch GETs name under the metadata URL, reading at most length bytes
// when length > 0 (the length recorded for it) and the role's limit
// otherwise. More bytes than that is endless data; 404 is errNotFound;
// other failures are transient errors.
func (c *Client) fetch(ctx context.Context, role, name string, length int64) ([]byte, error) {
	limit := length
	if limit <= 0 {
		limit = c.limits.of(role)
	}
	u := c.base.JoinPath(name).String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("tufclient: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("tufclient: fetch %s: %w", name, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, errNotFound
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("tufclient: fetch %s: %s", name, resp.Status)
	}
	what := "the size limit"
	if length > 0 {
		what = "the length recorded for it"
	}
	if resp.ContentLength > limit {
		return nil, refuse(EndlessData, role, nil, "%s is %d bytes, more than %s (%d)", name, resp.ContentLength, what, limit)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("tufclient: fetch %s: %w", name, err)
	}
	if int64(len(data)) > limit {
		return nil, refuse(EndlessData, role, nil, "%s is more than %s (%d bytes)", name, what, limit)
	}
	return data, nil
}

func (c *Client) load(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(c.dir, name))
}

func (c *Client) store(name string, data []byte) error {
	if err := atomicfile.WriteFile(filepath.Join(c.dir, name), data, 0o600); err != nil {
		return fmt.Errorf("tufclient: store %s: %w", name, err)
	}
	return nil
}
