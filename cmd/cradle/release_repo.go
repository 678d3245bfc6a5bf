package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"cradle"
	"cradle/internal/kms"
	"cradle/internal/ota"
	"cradle/internal/tuf"
)

// The TUF repository of a tenant, made by `cradle release repo init` and
// changed by the other repo commands, which work on the data directory
// directly (no server needed; they take the same lock as the server, see
// internal/ota):
//
//	<data_dir>/tuf/<tenant>/repository/   the metadata devices fetch
//	<data_dir>/tuf/<tenant>/keys.json     online role → key URI (0600)
//	<data_dir>/tuf/<tenant>/keys/         online file keys (0700): <role>[-N].key
//	<root key dir>/root-N.key             root file keys: move them offline
//
// File keys are encrypted with the PKI passphrase ($CRADLE_PKI_PASSPHRASE,
// --passphrase-file, or a prompt), which the server also uses to open the
// online keys.

func (a *app) releaseRepoCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "repo",
		Short: "Create and maintain a tenant's TUF repository (local: works on the data directory)",
	}
	c.AddCommand(a.repoInitCmd(), a.repoStatusCmd(), a.repoRefreshCmd(), a.repoRotateKeyCmd(), a.repoRotateRootCmd())
	return c
}

// repoFlags are the flags every repo command has.
type repoFlags struct {
	dataDir, tenant, passFile string
}

func (f *repoFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dataDir, "data-dir", "", "the data directory (the repository is DIR/tuf/<tenant>)")
	cmd.Flags().StringVar(&f.tenant, "tenant", "default", "the tenant whose repository this is")
	cmd.Flags().StringVar(&f.passFile, "passphrase-file", "", "file whose first line is the key files' passphrase (default: $"+pkiPassphraseEnv+", else a prompt)")
}

func (f *repoFlags) check() error {
	if f.dataDir == "" {
		return errors.New("--data-dir is required")
	}
	if err := cradle.ValidateTenantName(f.tenant); err != nil {
		return fmt.Errorf("--tenant: %s", cradle.ErrorMessage(err))
	}
	return nil
}

func (f *repoFlags) repos(a *app) *ota.Repos {
	return &ota.Repos{DataDir: f.dataDir, Passphrase: pkiPassphrase(f.passFile, a.stdin, a.stderr), Logger: nil}
}

// openRootKeys opens the root keys named by uris (files or pkcs11:).
func openRootKeys(ctx context.Context, uris []string, pass func() ([]byte, error)) ([]crypto.Signer, func(), error) {
	var signers []crypto.Signer
	closeAll := func() {
		for _, s := range signers {
			kms.Close(s)
		}
	}
	for _, u := range uris {
		s, err := kms.Open(ctx, u, kms.Options{Passphrase: pass})
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("root key %s: %w", u, err)
		}
		signers = append(signers, s)
	}
	return signers, closeAll, nil
}

func publicKeys(signers []crypto.Signer) []crypto.PublicKey {
	var pubs []crypto.PublicKey
	for _, s := range signers {
		pubs = append(pubs, s.Public())
	}
	return pubs
}

// absKeyURI makes a file key path absolute (pkcs11: URIs are kept).
func absKeyURI(uri string) (string, error) {
	if isPKCS11URI(uri) {
		return uri, nil
	}
	p, err := filepath.Abs(strings.TrimPrefix(uri, "file:"))
	if err != nil {
		return "", err
	}
	return p, nil
}

// keyOptions returns the kms options for new keys: a confirmed passphrase
// for file keys unless plaintext.
func (a *app) newKeyOptions(fileKeys, plaintext bool, passFile string) (kms.Options, error) {
	if !fileKeys || plaintext {
		return kms.Options{}, nil
	}
	pass := passphraseSource(passFile, a.stdin, a.stderr, true)
	if _, err := pass(); err != nil {
		return kms.Options{}, fmt.Errorf("%v; or, for tests and development only, --insecure-plaintext-keys writes unencrypted key files", err)
	}
	return kms.Options{Passphrase: pass}, nil
}

func (a *app) repoInitCmd() *cobra.Command {
	var (
		f                   repoFlags
		rootKeys, threshold int
		rootKeyDir, alg     string
		plaintext           bool
		p11                 pkcs11Flags
	)
	cmd := &cobra.Command{
		Use:   "init --data-dir DIR [--tenant NAME] [--root-keys N --threshold K] [--root-key-dir DIR]",
		Short: "Create a tenant's TUF repository: offline root keys, online targets/snapshot/timestamp keys, version 1",
		Long: `Create the TUF repository of a tenant in DIR/tuf/<tenant>: N root keys, of
which K must sign every new root version, and the online keys of the targets,
snapshot and timestamp roles, which the server uses to sign releases and to
refresh metadata. keys.json lists the online keys. An existing repository is
never overwritten.

Root keys go to --root-key-dir (default DIR/tuf/<tenant>/root-keys) as
root-1.key … root-N.key. The server never needs them: move them offline, and
bring them back only to rotate keys (rotate-key, rotate-root). With
--pkcs11-module, --pkcs11-token and --pkcs11-pin-source every key is generated
in that token instead (labelled tuf-<tenant>-<role>), except the root keys when
--root-key-dir is given.`,
		Example: `  CRADLE_PKI_PASSPHRASE=… cradle release repo init --data-dir /var/lib/cradle \
      --root-keys 3 --threshold 2 --root-key-dir /media/usb/tuf-root`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if rootKeys < 1 || rootKeys > 16 {
				return fmt.Errorf("--root-keys %d: give 1 to 16", rootKeys)
			}
			if threshold < 1 || threshold > rootKeys {
				return fmt.Errorf("--threshold %d: give 1 to --root-keys (%d)", threshold, rootKeys)
			}
			algorithm, err := kms.ParseAlgorithm(alg)
			if err != nil {
				return err
			}
			inToken, err := p11.enabled()
			if err != nil {
				return err
			}
			tenantDir := ota.TenantDir(f.dataDir, f.tenant)
			if _, err := os.Stat(ota.KeysPath(f.dataDir, f.tenant)); err == nil {
				return fmt.Errorf("tenant %s has a TUF repository already (%s): repo init never overwrites one; use rotate-key or rotate-root", f.tenant, ota.KeysPath(f.dataDir, f.tenant))
			}
			rootInFiles := !inToken || rootKeyDir != ""
			if rootInFiles && rootKeyDir == "" {
				rootKeyDir = filepath.Join(tenantDir, "root-keys")
			}
			if rootKeyDir != "" {
				if rootKeyDir, err = filepath.Abs(rootKeyDir); err != nil {
					return fmt.Errorf("--root-key-dir: %w", err)
				}
			}
			opts, err := a.newKeyOptions(!inToken || rootInFiles, plaintext, f.passFile)
			if err != nil {
				return err
			}
			for _, d := range []string{filepath.Join(tenantDir, "keys"), rootKeyDir} {
				if d == "" || (d == filepath.Join(tenantDir, "keys") && inToken) {
					continue
				}
				if err := os.MkdirAll(d, 0o700); err != nil {
					return fmt.Errorf("repo init: %w", err)
				}
				if err := os.Chmod(d, 0o700); err != nil {
					return fmt.Errorf("repo init: %w", err)
				}
			}
			km := &keyMaker{ctx: cmd.Context(), pkiDir: tenantDir, alg: algorithm, opts: opts, uri: func(name string) string {
				switch {
				case strings.HasPrefix(name, "root-") && rootInFiles:
					return filepath.Join(rootKeyDir, name+".key")
				case inToken:
					return p11.uri("tuf-" + f.tenant + "-" + name)
				}
				return filepath.Join("keys", name+".key")
			}}
			defer km.close()
			var roots []crypto.Signer
			keys := ota.OnlineKeys{}
			err = func() error {
				for i := 1; i <= rootKeys; i++ {
					s, err := km.key("root-" + strconv.Itoa(i))
					if err != nil {
						return err
					}
					roots = append(roots, s)
				}
				for _, role := range ota.OnlineRoles {
					if _, err := km.key(role); err != nil {
						return err
					}
					keys[role] = km.uris[role]
				}
				repos := f.repos(a)
				repos.Passphrase = opts.Passphrase
				defer repos.Close()
				return repos.Init(cmd.Context(), f.tenant, tuf.RootSpec{Keys: publicKeys(roots), Threshold: threshold}, roots, keys)
			}()
			if err != nil {
				return fmt.Errorf("repo init: %s%s", errorText(err), km.removeFiles())
			}
			return a.printRepoInit(f, km.uris, rootKeys, threshold)
		},
	}
	f.add(cmd)
	cmd.Flags().IntVar(&rootKeys, "root-keys", 1, "how many root keys to make")
	cmd.Flags().IntVar(&threshold, "threshold", 1, "how many root keys must sign a new root version")
	cmd.Flags().StringVar(&rootKeyDir, "root-key-dir", "", "where to write the root key files (default DIR/tuf/<tenant>/root-keys; better on removable media)")
	cmd.Flags().StringVar(&alg, "key-algorithm", string(kms.DefaultAlgorithm), "algorithm of every key: ecdsa-p256 or ed25519")
	cmd.Flags().BoolVar(&plaintext, "insecure-plaintext-keys", false, "write key files unencrypted (tests and development only)")
	p11.add(cmd)
	return cmd
}

func (a *app) printRepoInit(f repoFlags, uris map[string]string, n, k int) error {
	w := &errWriter{w: a.stdout}
	tenantDir := ota.TenantDir(f.dataDir, f.tenant)
	w.printf("Created the TUF repository of tenant %s in %s\n\n", f.tenant, ota.RepositoryDir(f.dataDir, f.tenant))
	w.printf("Root keys (%d of %d must sign a new root):\n", k, n)
	for i := 1; i <= n; i++ {
		w.printf("  %s\n", ota.ResolveKeyURI(tenantDir, uris["root-"+strconv.Itoa(i)]))
	}
	w.printf("Online keys (listed in %s):\n", ota.KeysPath(f.dataDir, f.tenant))
	for _, role := range ota.OnlineRoles {
		w.printf("  %-10s %s\n", role, ota.ResolveKeyURI(tenantDir, uris[role]))
	}
	w.printf("\nDevices trust %s (version 1 of root).\n", filepath.Join(ota.RepositoryDir(f.dataDir, f.tenant), "1.root.json"))
	w.printf("Move the root keys offline (e.g. to removable media): the server never needs them,\nonly cradle release repo rotate-key and rotate-root do (--root-key FILE).\n")
	return w.err
}

func (a *app) repoStatusCmd() *cobra.Command {
	var (
		f       repoFlags
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "status --data-dir DIR [--tenant NAME]",
		Short: "Show each role's version, expiry, keys and threshold, and the number of targets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			repos := f.repos(a)
			defer repos.Close()
			st, err := repos.Status(cmd.Context(), f.tenant)
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(a.stdout, st)
			}
			t := newTable(a.stdout, "ROLE", "VERSION", "EXPIRES", "THRESHOLD", "KEY IDS")
			for _, role := range []string{tuf.RoleRoot, tuf.RoleTargets, tuf.RoleSnapshot, tuf.RoleTimestamp} {
				r := st.Roles[role]
				ids := make([]string, len(r.KeyIDs))
				for i, id := range r.KeyIDs {
					ids[i] = id[:min(16, len(id))]
				}
				t.row(role, strconv.FormatInt(r.Version, 10), r.Expires.UTC().Format(time.RFC3339), strconv.Itoa(r.Threshold), strings.Join(ids, ","))
			}
			if err := t.flush(); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "\n%d targets\n", st.Targets)
			return err
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func (a *app) repoRefreshCmd() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "refresh --data-dir DIR [--tenant NAME]",
		Short: "Re-sign the targets, snapshot and timestamp metadata that expire within half their period",
		Long: `Re-sign, with the online keys, the metadata of a tenant's repository that expires
within half of its period. The server does this on a timer (ota.refresh_interval);
this command is for a repository without a running server. Root is never
refreshed here: renew it with rotate-root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			repos := f.repos(a)
			defer repos.Close()
			var roles []string
			err := repos.Do(cmd.Context(), f.tenant, func(repo *tuf.Repository, s tuf.Signers) error {
				var err error
				roles, err = repo.Refresh(cmd.Context(), s)
				return err
			})
			if err != nil {
				return err
			}
			if len(roles) == 0 {
				_, err = fmt.Fprintln(a.stdout, "Nothing to refresh: no role expires within half of its period.")
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "Refreshed %s.\n", strings.Join(roles, ", "))
			return err
		},
	}
	f.add(cmd)
	return cmd
}

func (a *app) repoRotateKeyCmd() *cobra.Command {
	var (
		f         repoFlags
		role, alg string
		rootURIs  []string
		plaintext bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-key --data-dir DIR --role targets|snapshot|timestamp --root-key FILE|URI ...",
		Short: "Replace an online key: a new root version lists the new key, and the old one is retired",
		Long: `Replace the key of the targets, snapshot or timestamp role of a tenant's
repository. A new key is made beside the old one (DIR/tuf/<tenant>/keys/<role>-N.key,
or in the same token), a new root version signed by the root keys given with
--root-key (at least the threshold) lists it instead of the old one, the role is
re-signed, and keys.json names the new key. Metadata signed by the old key is
refused by devices from then on; its file is left in place for you to destroy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if !slices.Contains(ota.OnlineRoles, role) {
				return fmt.Errorf("--role %q: give targets, snapshot or timestamp (root keys change with rotate-root)", role)
			}
			if len(rootURIs) == 0 {
				return errors.New("--root-key is required: the root key files (or pkcs11: URIs) that sign the new root version, at least the threshold of them")
			}
			algorithm, err := kms.ParseAlgorithm(alg)
			if err != nil {
				return err
			}
			keys, err := ota.ReadOnlineKeys(f.dataDir, f.tenant)
			if err != nil {
				return err
			}
			tenantDir := ota.TenantDir(f.dataDir, f.tenant)
			old := keys[role]
			name := nextKeyName(tenantDir, keys, role)
			var newURI string
			if isPKCS11URI(old) {
				u, err := kms.ParsePKCS11URI(old)
				if err != nil {
					return fmt.Errorf("keys.json: %w", err)
				}
				u.Object, u.ID = "tuf-"+f.tenant+"-"+name, nil
				newURI = u.String()
				if u.PINValue != "" {
					return errors.New("the current key's URI carries its PIN (pin-value); use pin-source so that the new key's URI can be written to keys.json")
				}
			} else {
				newURI = filepath.Join("keys", name+".key")
				if err := os.MkdirAll(filepath.Join(tenantDir, "keys"), 0o700); err != nil {
					return err
				}
			}
			pass := pkiPassphrase(f.passFile, a.stdin, a.stderr)
			if plaintext {
				pass = nil
			}
			roots, closeRoots, err := openRootKeys(cmd.Context(), rootURIs, pkiPassphrase(f.passFile, a.stdin, a.stderr))
			if err != nil {
				return err
			}
			defer closeRoots()
			km := &keyMaker{ctx: cmd.Context(), pkiDir: tenantDir, alg: algorithm, opts: kms.Options{Passphrase: pass}, uri: func(string) string { return newURI }}
			defer km.close()
			repos := f.repos(a)
			defer repos.Close()
			err = repos.Do(cmd.Context(), f.tenant, func(repo *tuf.Repository, s tuf.Signers) error {
				newKey, err := km.key(name)
				if err != nil {
					return err
				}
				s.Root = roots
				if err := repo.RotateKey(cmd.Context(), role, newKey, s); err != nil {
					return err
				}
				keys[role] = newURI
				if err := ota.WriteOnlineKeys(f.dataDir, f.tenant, keys); err != nil {
					return fmt.Errorf("%w; the repository now lists the new key %s: put its URI in keys.json as %s", err, ota.ResolveKeyURI(tenantDir, newURI), role)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("rotate-key: %s%s", errorText(err), km.removeFiles())
			}
			w := &errWriter{w: a.stdout}
			w.printf("Rotated the %s key of tenant %s.\n", role, f.tenant)
			w.printf("New key: %s\n", ota.ResolveKeyURI(tenantDir, newURI))
			w.printf("Retired: %s (no longer trusted; destroy it)\n", ota.ResolveKeyURI(tenantDir, old))
			w.printf("Restart the server (or wait for its next operation) to sign with the new key.\n")
			return w.err
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&role, "role", "", "the role whose key to replace: targets, snapshot or timestamp")
	cmd.Flags().StringArrayVar(&rootURIs, "root-key", nil, "a root key file or pkcs11: URI (repeat for the threshold)")
	cmd.Flags().StringVar(&alg, "key-algorithm", string(kms.DefaultAlgorithm), "algorithm of the new key: ecdsa-p256 or ed25519")
	cmd.Flags().BoolVar(&plaintext, "insecure-plaintext-keys", false, "write the new key file unencrypted (tests and development only)")
	return cmd
}

// nextKeyName is "<role>-N" for the first N from 2 whose file (or token
// label) is not in use by keys.json nor present in the keys directory.
func nextKeyName(tenantDir string, keys ota.OnlineKeys, role string) string {
	for n := 2; ; n++ {
		name := role + "-" + strconv.Itoa(n)
		used := false
		for _, uri := range keys {
			if strings.Contains(uri, name+".key") || strings.Contains(uri, "-"+name+";") || strings.Contains(uri, "-"+name+"?") {
				used = true
			}
		}
		if _, err := os.Stat(filepath.Join(tenantDir, "keys", name+".key")); err == nil {
			used = true
		}
		if !used {
			return name
		}
	}
}

func (a *app) repoRotateRootCmd() *cobra.Command {
	var (
		f                  repoFlags
		rootURIs           []string
		newKeys, threshold int
		newKeyDir, alg     string
		plaintext          bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-root --data-dir DIR --root-key FILE|URI ... [--new-root-keys N --new-root-key-dir DIR] [--threshold K]",
		Short: "Make a new root version: new root keys or threshold, or the same keys to renew root before it expires",
		Long: `Make a new root version of a tenant's repository, signed by a threshold of the
current root keys (--root-key, repeatable) and, as TUF requires, a threshold of
the new ones. With --new-root-keys N, N new root keys are made in
--new-root-key-dir and replace the current ones; without it, the current root
keys are kept (all of them, whether given or not) and root is renewed for
another period. --threshold sets the new threshold (default: the current one,
or 1 with new keys). Devices that trust any earlier root version follow.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if len(rootURIs) == 0 {
				return errors.New("--root-key is required: the current root key files (or pkcs11: URIs), at least the threshold of them")
			}
			if newKeys < 0 || newKeys > 16 {
				return fmt.Errorf("--new-root-keys %d: give 1 to 16 (or none to renew with the current keys)", newKeys)
			}
			if newKeys > 0 && newKeyDir == "" {
				return errors.New("--new-root-key-dir is required with --new-root-keys: where to write the new root key files")
			}
			algorithm, err := kms.ParseAlgorithm(alg)
			if err != nil {
				return err
			}
			roots, closeRoots, err := openRootKeys(cmd.Context(), rootURIs, pkiPassphrase(f.passFile, a.stdin, a.stderr))
			if err != nil {
				return err
			}
			defer closeRoots()
			var km *keyMaker
			if newKeys > 0 {
				if newKeyDir, err = filepath.Abs(newKeyDir); err != nil {
					return err
				}
				opts, err := a.newKeyOptions(true, plaintext, f.passFile)
				if err != nil {
					return err
				}
				if err := os.MkdirAll(newKeyDir, 0o700); err != nil {
					return err
				}
				km = &keyMaker{ctx: cmd.Context(), pkiDir: newKeyDir, alg: algorithm, opts: opts, uri: func(name string) string { return filepath.Join(newKeyDir, name+".key") }}
				defer km.close()
			}
			repos := f.repos(a)
			defer repos.Close()
			var spec tuf.RootSpec
			var version int64
			err = repos.Do(cmd.Context(), f.tenant, func(repo *tuf.Repository, s tuf.Signers) error {
				raw, err := repo.Root()
				if err != nil {
					return err
				}
				current, err := metadata.Root().FromBytes(raw)
				if err != nil {
					return fmt.Errorf("root.json: %w", err)
				}
				signers := slices.Clone(roots)
				if km == nil {
					role := current.Signed.Roles[tuf.RoleRoot]
					for _, id := range role.KeyIDs {
						pub, err := current.Signed.Keys[id].ToPublicKey()
						if err != nil {
							return fmt.Errorf("root key %s: %w", id, err)
						}
						spec.Keys = append(spec.Keys, pub)
					}
					spec.Threshold = role.Threshold
				} else {
					for i := 1; i <= newKeys; i++ {
						k, err := km.key("root-v" + strconv.FormatInt(current.Signed.Version+1, 10) + "-" + strconv.Itoa(i))
						if err != nil {
							return err
						}
						signers = append(signers, k)
						spec.Keys = append(spec.Keys, k.Public())
					}
					spec.Threshold = 1
				}
				if threshold > 0 {
					spec.Threshold = threshold
				}
				s.Root = signers
				version = current.Signed.Version + 1
				return repo.RotateRoot(cmd.Context(), spec, s)
			})
			if err != nil {
				note := ""
				if km != nil {
					note = km.removeFiles()
				}
				return fmt.Errorf("rotate-root: %s%s", errorText(err), note)
			}
			w := &errWriter{w: a.stdout}
			w.printf("Made root version %d of tenant %s: %d of %d root keys must sign the next.\n", version, f.tenant, spec.Threshold, len(spec.Keys))
			if km != nil {
				w.printf("New root keys (move them offline):\n")
				for i := 1; i <= newKeys; i++ {
					w.printf("  %s\n", km.uris["root-v"+strconv.FormatInt(version, 10)+"-"+strconv.Itoa(i)])
				}
				w.printf("The old root keys are retired.\n")
			}
			return w.err
		},
	}
	f.add(cmd)
	cmd.Flags().StringArrayVar(&rootURIs, "root-key", nil, "a current root key file or pkcs11: URI (repeat for the threshold)")
	cmd.Flags().IntVar(&newKeys, "new-root-keys", 0, "make this many new root keys to replace the current ones (default: keep the current keys)")
	cmd.Flags().StringVar(&newKeyDir, "new-root-key-dir", "", "where to write the new root key files")
	cmd.Flags().IntVar(&threshold, "threshold", 0, "how many root keys must sign the next root version (default: the current threshold, or 1 with new keys)")
	cmd.Flags().StringVar(&alg, "key-algorithm", string(kms.DefaultAlgorithm), "algorithm of new root keys: ecdsa-p256 or ed25519")
	cmd.Flags().BoolVar(&plaintext, "insecure-plaintext-keys", false, "write new key files unencrypted (tests and development only)")
	return cmd
}
