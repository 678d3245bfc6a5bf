package ota

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/kms"
	"cradle/internal/tuf"
)

// Names in a tenant's directory <data_dir>/tuf/<tenant>.
const (
	tufDirName      = "tuf"
	repositoryName  = "repository"
	keysFileName    = "keys.json"
	lockFileName    = "lock"
	maxKeysFileSize = 64 << 10
)

// OnlineRoles are the roles whose keys the server holds (keys.json).
var OnlineRoles = []string{tuf.RoleTargets, tuf.RoleSnapshot, tuf.RoleTimestamp}

// TenantDir is where the TUF repository of tenant lives under dataDir:
// <data_dir>/tuf/<tenant>.
func TenantDir(dataDir, tenant string) string {
	return filepath.Join(dataDir, tufDirName, tenant)
}

// RepositoryDir is the directory of tenant's TUF metadata, the files a TUF
// client fetches (a tuf.DirStore): <data_dir>/tuf/<tenant>/repository.
func RepositoryDir(dataDir, tenant string) string {
	return filepath.Join(TenantDir(dataDir, tenant), repositoryName)
}

// KeysPath is the online keys map of tenant: <data_dir>/tuf/<tenant>/keys.json.
func KeysPath(dataDir, tenant string) string {
	return filepath.Join(TenantDir(dataDir, tenant), keysFileName)
}

// OnlineKeys maps each online role (targets, snapshot, timestamp) to the
// kms URI of its key: a file path (relative to the tenant's directory,
// so the data directory can move), "file:PATH", or a "pkcs11:" URI.
type OnlineKeys map[string]string

// ParseOnlineKeys decodes keys.json: a JSON object with exactly the keys
// "targets", "snapshot" and "timestamp", each a non-empty URI.
func ParseOnlineKeys(data []byte) (OnlineKeys, error) {
	if len(data) > maxKeysFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", keysFileName, maxKeysFileSize)
	}
	var k OnlineKeys
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&k); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object of role names to key URIs: %v", keysFileName, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s has data after its object", keysFileName)
	}
	for role, uri := range k {
		if !slices.Contains(OnlineRoles, role) {
			return nil, fmt.Errorf("%s: %q is not an online role (targets, snapshot, timestamp)", keysFileName, role)
		}
		if strings.TrimSpace(uri) == "" {
			return nil, fmt.Errorf("%s: role %s has no key URI", keysFileName, role)
		}
	}
	for _, role := range OnlineRoles {
		if _, ok := k[role]; !ok {
			return nil, fmt.Errorf("%s names no key for role %s", keysFileName, role)
		}
	}
	return k, nil
}

// ReadOnlineKeys reads the online keys map of tenant. An absent file is
// ENOTFOUND: the tenant has no TUF repository.
func ReadOnlineKeys(dataDir, tenant string) (OnlineKeys, error) {
	path := KeysPath(dataDir, tenant)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, noRepository(dataDir, tenant)
	} else if err != nil {
		return nil, fmt.Errorf("ota: %w", err)
	}
	k, err := ParseOnlineKeys(data)
	if err != nil {
		return nil, fmt.Errorf("ota: %s: %w", path, err)
	}
	return k, nil
}

// WriteOnlineKeys replaces the online keys map of tenant, atomically,
// mode 0600.
func WriteOnlineKeys(dataDir, tenant string, k OnlineKeys) error {
	data, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return fmt.Errorf("ota: encode %s: %w", keysFileName, err)
	}
	path := KeysPath(dataDir, tenant)
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("ota: write %s: %w", path, err)
	}
	return nil
}

// ResolveKeyURI makes a relative file path of keys.json relative to the
// tenant's directory dir; other URIs are returned as they are.
func ResolveKeyURI(dir, uri string) string {
	if len(uri) >= 7 && strings.EqualFold(uri[:7], "pkcs11:") {
		return uri
	}
	p, hadScheme := strings.CutPrefix(uri, "file:")
	if filepath.IsAbs(p) {
		return uri
	}
	p = filepath.Join(dir, p)
	if hadScheme {
		return "file:" + p
	}
	return p
}

func noRepository(dataDir, tenant string) error {
	return cradle.Errorf(cradle.ENOTFOUND, "tenant %s has no TUF repository: make one with cradle release repo init --tenant %s --data-dir %s", tenant, tenant, dataDir)
}

// Repos manages the TUF repositories of every tenant of a data directory.
// Each operation takes an exclusive flock on <data_dir>/tuf/<tenant>/lock,
// re-opens the repository from disk (so staged changes of a failed
// operation are discarded, and changes made meanwhile by the local CLI or
// another replica sharing the data directory are seen), and opens the
// online keys keys.json names (kept open between operations, and re-opened
// when keys.json names another key). Set the exported fields before first
// use; Close releases the keys.
type Repos struct {
	// DataDir is the data directory (required).
	DataDir string
	// Passphrase is the file keys' passphrase source (kms.Options).
	Passphrase func() ([]byte, error)
	// Expiry sets the metadata validity periods; zero fields take
	// internal/tuf's defaults.
	Expiry tuf.Expiry
	// Clock is the time; nil means the system clock.
	Clock cradle.Clock
	// Logger logs refreshes; nil means slog.Default().
	Logger *slog.Logger

	mu      sync.Mutex
	signers map[string]map[string]openKey // tenant → role → key
}

type openKey struct {
	uri    string
	signer crypto.Signer
}

func (r *Repos) now() time.Time { return cradle.Now(r.Clock) }

func (r *Repos) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.Default()
	}
	return r.Logger
}

func (r *Repos) options(tenant string) tuf.Options {
	return tuf.Options{Store: tuf.DirStore{Dir: RepositoryDir(r.DataDir, tenant)}, Expiry: r.Expiry, Now: r.now}
}

// lock takes the exclusive flock of tenant's directory, waiting until ctx
// ends. It returns the function that releases it.
func lock(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ota: open lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("ota: lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("ota: waiting for the lock of %s: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Do runs fn on tenant's repository, re-opened from disk, with its online
// signers, while holding the tenant's lock. Changes fn stages but does not
// publish are discarded. ENOTFOUND when the tenant has no repository;
// EUNAVAILABLE when an online key does not open.
func (r *Repos) Do(ctx context.Context, tenant string, fn func(*tuf.Repository, tuf.Signers) error) error {
	if err := cradle.ValidateTenantName(tenant); err != nil {
		return err
	}
	dir := TenantDir(r.DataDir, tenant)
	if _, err := os.Stat(KeysPath(r.DataDir, tenant)); errors.Is(err, fs.ErrNotExist) {
		return noRepository(r.DataDir, tenant)
	}
	unlock, err := lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	keys, err := ReadOnlineKeys(r.DataDir, tenant)
	if err != nil {
		return err
	}
	s, err := r.openSigners(ctx, tenant, keys)
	if err != nil {
		return err
	}
	repo, err := tuf.Open(ctx, r.options(tenant))
	if err != nil {
		return fmt.Errorf("ota: open the TUF repository of tenant %s: %w", tenant, err)
	}
	return fn(repo, s)
}

// openSigners returns the signers keys names, reusing those already open.
func (r *Repos) openSigners(ctx context.Context, tenant string, keys OnlineKeys) (tuf.Signers, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.signers == nil {
		r.signers = map[string]map[string]openKey{}
	}
	open := r.signers[tenant]
	if open == nil {
		open = map[string]openKey{}
		r.signers[tenant] = open
	}
	dir := TenantDir(r.DataDir, tenant)
	for _, role := range OnlineRoles {
		uri := ResolveKeyURI(dir, keys[role])
		if k, ok := open[role]; ok {
			if k.uri == uri {
				continue
			}
			kms.Close(k.signer)
			delete(open, role)
		}
		s, err := kms.Open(ctx, uri, kms.Options{Passphrase: r.Passphrase})
		if err != nil {
			return tuf.Signers{}, cradle.Errorf(cradle.EUNAVAILABLE, "the %s key of tenant %s's TUF repository does not open: %v", role, tenant, err)
		}
		open[role] = openKey{uri: uri, signer: s}
	}
	return tuf.Signers{Targets: open[tuf.RoleTargets].signer, Snapshot: open[tuf.RoleSnapshot].signer, Timestamp: open[tuf.RoleTimestamp].signer}, nil
}

// Close releases the online keys opened so far.
func (r *Repos) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, open := range r.signers {
		for role, k := range open {
			if err := kms.Close(k.signer); err != nil {
				errs = append(errs, fmt.Errorf("ota: close %s key: %w", role, err))
			}
		}
	}
	r.signers = nil
	return errors.Join(errs...)
}

// Init creates tenant's repository: version 1 of every role, with the
// root keys of spec (signed by root, at least the threshold of them) and
// the online keys keys names, which it writes to keys.json last. It
// refuses (ECONFLICT) when the tenant has a repository or a keys.json
// already; on failure it leaves no repository behind.
func (r *Repos) Init(ctx context.Context, tenant string, spec tuf.RootSpec, root []crypto.Signer, keys OnlineKeys) error {
	if err := cradle.ValidateTenantName(tenant); err != nil {
		return err
	}
	if _, err := ParseOnlineKeys(mustJSON(keys)); err != nil {
		return cradle.Errorf(cradle.EINVALID, "%v", err)
	}
	dir := TenantDir(r.DataDir, tenant)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	unlock, err := lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	repoDir := RepositoryDir(r.DataDir, tenant)
	for _, p := range []string{KeysPath(r.DataDir, tenant), filepath.Join(repoDir, "root.json")} {
		if _, err := os.Stat(p); err == nil {
			return cradle.Errorf(cradle.ECONFLICT, "tenant %s has a TUF repository already (%s exists)", tenant, p)
		}
	}
	s, err := r.openSigners(ctx, tenant, keys)
	if err != nil {
		return err
	}
	s.Root = root
	_, repoExisted := os.Stat(repoDir)
	cleanup := func() {
		if repoExisted != nil {
			os.RemoveAll(repoDir)
		}
	}
	if _, err := tuf.Init(ctx, r.options(tenant), spec, s); err != nil {
		cleanup()
		return err
	}
	if err := WriteOnlineKeys(r.DataDir, tenant, keys); err != nil {
		cleanup()
		return err
	}
	return nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// Tenants lists the tenants of the data directory that have a repository
// (a keys.json), sorted.
func (r *Repos) Tenants() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(r.DataDir, tufDirName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("ota: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() || cradle.ValidateTenantName(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(KeysPath(r.DataDir, e.Name())); err == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// RefreshAll re-signs, in every tenant's repository, the metadata that
// expires within half of its period (tuf.Repository.Refresh). It goes on
// past a tenant that fails and returns every failure joined, each naming
// its tenant. It returns the roles re-signed by tenant.
func (r *Repos) RefreshAll(ctx context.Context) (map[string][]string, error) {
	tenants, err := r.Tenants()
	if err != nil {
		return nil, err
	}
	done := map[string][]string{}
	var errs []error
	for _, t := range tenants {
		err := r.Do(ctx, t, func(repo *tuf.Repository, s tuf.Signers) error {
			roles, err := repo.Refresh(ctx, s)
			if len(roles) > 0 {
				done[t] = roles
				r.logger().Info("ota: refreshed TUF metadata", "tenant", t, "roles", roles)
			}
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("ota: refresh the TUF repository of tenant %s: %w", t, err))
		}
	}
	return done, errors.Join(errs...)
}

// Status describes tenant's repository as published: each role's version,
// expiry, key IDs and threshold, and the number of targets. ENOTFOUND when
// the tenant has none.
func (r *Repos) Status(ctx context.Context, tenant string) (*cradle.RepositoryStatus, error) {
	var st *cradle.RepositoryStatus
	err := r.Do(ctx, tenant, func(repo *tuf.Repository, _ tuf.Signers) error {
		var err error
		st, err = status(repo)
		return err
	})
	return st, err
}

// StatusOf describes an open repository (see Repos.Status).
func status(repo *tuf.Repository) (*cradle.RepositoryStatus, error) {
	raw, err := repo.Root()
	if err != nil {
		return nil, err
	}
	root, err := metadata.Root().FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("ota: parse root.json: %w", err)
	}
	targets, err := repo.Targets()
	if err != nil {
		return nil, err
	}
	versions, expires := repo.Versions(), repo.Expires()
	st := &cradle.RepositoryStatus{Roles: map[string]cradle.RepositoryRole{}, Targets: len(targets)}
	for _, name := range []string{tuf.RoleRoot, tuf.RoleTargets, tuf.RoleSnapshot, tuf.RoleTimestamp} {
		role := root.Signed.Roles[name]
		rr := cradle.RepositoryRole{Version: versions[name], Expires: expires[name]}
		if role != nil {
			rr.KeyIDs = slices.Sorted(slices.Values(role.KeyIDs))
			rr.Threshold = role.Threshold
		}
		st.Roles[name] = rr
	}
	return st, nil
}

// readAllLimit reads r up to n bytes, refusing more.
func readAllLimit(r io.Reader, n int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, n+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > n {
		return nil, fmt.Errorf("more than %d bytes", n)
	}
	return b, nil
}
