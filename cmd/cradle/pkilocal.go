package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"cradle/internal/atomicfile"
	"cradle/internal/kms"
	"cradle/internal/pki"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// The PKI of a data directory, made by `cradle pki init` and extended by
// `cradle pki rotate-device-ca`, both of which work on the directory
// directly (no server needed), lives in <data_dir>/pki:
//
//	<data_dir>/pki/                 0755
//	  root.crt manufacturing-ca.crt device-ca.crt [device-ca-2.crt …]
//	  server.crt command-signer.crt [release-signer.crt]
//	  ocsp-manufacturing-ca.crt ocsp-device-ca.crt [ocsp-device-ca-2.crt …]
//	                                certificates, PEM, 0644 (pki.WriteHierarchy)
//	  keys.yaml                     0600: every key name → the key's URI
//	  keys/                         0700: the file keys
//	    <name>.key                  0600: PKCS#8 PEM, "ENCRYPTED PRIVATE KEY"
//	                                unless init had --insecure-plaintext-keys
//
// keys.yaml is the one place that says where each key is, so a key may sit
// in an HSM (a "pkcs11:" URI, see internal/kms) or outside the data
// directory (an offline root: an absolute path). Its form:
//
//	keys:
//	  root: keys/root.key
//	  device-ca: "pkcs11:token=cradle;object=device-ca?module-path=…&pin-source=file:…"
//
// A relative file path is relative to <data_dir>/pki, so the data
// directory may be moved. The key names are those of internal/pki: root,
// manufacturing-ca, device-ca, device-ca-N, server, command-signer,
// release-signer and ocsp-<CA name>. keys.yaml is written atomically (a temporary file in the
// same directory, synced, then renamed). The server needs only the device
// CAs', their OCSP signers' and the server's keys (openPKI); the root key
// is needed only to rotate the device CA and can be kept offline.
//
// File keys are encrypted with one passphrase, taken from
// $CRADLE_PKI_PASSPHRASE, else from a file (--passphrase-file, or
// pki.passphrase_file for the server), else asked for when stdin is a
// terminal (pkiPassphrase).

const (
	pkiDirName     = "pki"
	pkiKeysDirName = "keys"
	pkiKeysFile    = "keys.yaml"
	// pkiPassphraseEnv holds the passphrase of the PKI's file keys.
	pkiPassphraseEnv = "CRADLE_PKI_PASSPHRASE"
	// maxKeysFileBytes bounds keys.yaml.
	maxKeysFileBytes = 1 << 20
)

// pkiDirOf is where the PKI of dataDir lives.
func pkiDirOf(dataDir string) string { return filepath.Join(dataDir, pkiDirName) }

// keysDocument is the form of keys.yaml.
type keysDocument struct {
	Keys map[string]string `yaml:"keys"`
}

// parseKeyMap reads keys.yaml: a "keys" mapping of key names to non-empty
// URIs, nothing else. Errors name what is wrong.
func parseKeyMap(data []byte) (map[string]string, error) {
	if len(data) > maxKeysFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", pkiKeysFile, maxKeysFileBytes)
	}
	var doc keysDocument
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s is empty", pkiKeysFile)
		}
		return nil, fmt.Errorf("%s: %w", pkiKeysFile, err)
	}
	if len(doc.Keys) == 0 {
		return nil, fmt.Errorf("%s names no keys", pkiKeysFile)
	}
	for name, uri := range doc.Keys {
		if name == "" || strings.ContainsAny(name, "/\\\x00") {
			return nil, fmt.Errorf("%s: invalid key name %q", pkiKeysFile, name)
		}
		if strings.TrimSpace(uri) == "" {
			return nil, fmt.Errorf("%s: key %s has no URI", pkiKeysFile, name)
		}
	}
	return doc.Keys, nil
}

// readKeyMap reads <pkiDir>/keys.yaml.
func readKeyMap(pkiDir string) (map[string]string, error) {
	path := filepath.Join(pkiDir, pkiKeysFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("pki: read %s: %w", path, err)
	}
	m, err := parseKeyMap(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return m, nil
}

// writeKeyMap writes <pkiDir>/keys.yaml atomically, mode 0600.
func writeKeyMap(pkiDir string, keys map[string]string) error {
	data, err := yaml.Marshal(keysDocument{Keys: keys})
	if err != nil {
		return fmt.Errorf("pki: encode %s: %w", pkiKeysFile, err)
	}
	data = append([]byte("# Where each key of this PKI is: a file path (relative to this directory)\n# or a pkcs11: URI. Written by cradle pki init and rotate-device-ca.\n"), data...)
	path := filepath.Join(pkiDir, pkiKeysFile)
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

// resolveKeyURI makes a relative file key path of keys.yaml relative to
// pkiDir; other URIs are returned as they are.
func resolveKeyURI(pkiDir, uri string) string {
	if isPKCS11URI(uri) {
		return uri
	}
	p, hadScheme := strings.CutPrefix(uri, "file:")
	if filepath.IsAbs(p) || strings.HasPrefix(p, "//") {
		return uri
	}
	p = filepath.Join(pkiDir, p)
	if hadScheme {
		return "file:" + p
	}
	return p
}

func isPKCS11URI(uri string) bool {
	return len(uri) >= 7 && strings.EqualFold(uri[:7], "pkcs11:")
}

// openPKI loads the hierarchy of dataDir (<data_dir>/pki, see the layout
// above) and opens the keys called names (e.g. "server", "device-ca",
// "ocsp-device-ca") through kms, with passphrase as the file keys'
// passphrase source (kms.Options.Passphrase; nil: only unencrypted keys
// open). It returns the hierarchy, the signers by name, and a function
// that releases them (PKCS#11 sessions; calling it again does nothing and
// returns the first result); call it when done. On any error
// every key opened so far is released. Errors: no PKI in the data
// directory (with the command that makes one), a name keys.yaml does not
// list, or a key that does not open (missing, wrong passphrase:
// errors.Is(err, kms.ErrWrongPassphrase), token trouble), each naming the
// key.
func openPKI(ctx context.Context, dataDir string, passphrase func() ([]byte, error), names ...string) (*pki.Hierarchy, map[string]crypto.Signer, func() error, error) {
	dir := pkiDirOf(dataDir)
	if _, err := os.Stat(filepath.Join(dir, pki.NameRoot+".crt")); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil, fmt.Errorf("pki: no PKI in %s: make one with cradle pki init --data-dir %s", dir, dataDir)
	}
	h, err := pki.LoadHierarchy(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	uris, err := readKeyMap(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	signers := map[string]crypto.Signer{}
	closeAll := sync.OnceValue(func() error {
		var errs []error
		for name, s := range signers {
			if err := kms.Close(s); err != nil {
				errs = append(errs, fmt.Errorf("pki: close key %s: %w", name, err))
			}
		}
		return errors.Join(errs...)
	})
	for _, name := range names {
		if _, ok := signers[name]; ok {
			continue
		}
		uri, ok := uris[name]
		if !ok {
			closeAll()
			return nil, nil, nil, fmt.Errorf("pki: key %s is not listed in %s: add its URI there", name, filepath.Join(dir, pkiKeysFile))
		}
		s, err := kms.Open(ctx, resolveKeyURI(dir, uri), kms.Options{Passphrase: passphrase})
		if err != nil {
			closeAll()
			return nil, nil, nil, fmt.Errorf("pki: open key %s: %w", name, err)
		}
		signers[name] = s
	}
	return h, signers, closeAll, nil
}

// pkiPassphrase returns the passphrase source of the PKI's file keys, tried
// in this order when first called: $CRADLE_PKI_PASSPHRASE if set and not
// empty; else the file flagFile if not "" (its first line); else a prompt
// on stderr when stdin is a terminal (echo off). Otherwise it is an error
// that says how to give one. The passphrase is read once and then
// remembered, so opening many keys asks once (each call returns a fresh
// copy, which the caller may clear); a failure is remembered too.
func pkiPassphrase(flagFile string, stdin io.Reader, stderr io.Writer) func() ([]byte, error) {
	return passphraseSource(flagFile, stdin, stderr, false)
}

// passphraseSource is pkiPassphrase; with confirm, a prompted passphrase
// is asked for twice (for new keys) and must match.
func passphraseSource(flagFile string, stdin io.Reader, stderr io.Writer, confirm bool) func() ([]byte, error) {
	read := sync.OnceValues(func() ([]byte, error) {
		if v := os.Getenv(pkiPassphraseEnv); v != "" {
			return []byte(v), nil
		}
		if flagFile != "" {
			return kms.PassphraseFromFile(flagFile)()
		}
		f, ok := stdin.(*os.File)
		if ok && inputIsTerminal(f) {
			p, err := kms.PassphrasePrompt(f, stderr, "Passphrase of the PKI's key files: ")()
			if err != nil || !confirm {
				return p, err
			}
			again, err := kms.PassphrasePrompt(f, stderr, "Repeat the passphrase: ")()
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(p, again) {
				return nil, errors.New("pki: the passphrases do not match")
			}
			return p, nil
		}
		return nil, fmt.Errorf("pki: the key files need a passphrase: set %s, or give a file holding it (--passphrase-file, or pki.passphrase_file for the server), or run on a terminal to be asked", pkiPassphraseEnv)
	})
	// Each caller gets its own copy: kms clears a passphrase once used.
	return func() ([]byte, error) {
		p, err := read()
		if err != nil {
			return nil, err
		}
		return bytes.Clone(p), nil
	}
}

// inputIsTerminal reports whether f is a character device other than
// /dev/null (a terminal).
func inputIsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}

// pkcs11Flags are --pkcs11-module, --pkcs11-token and --pkcs11-pin-source.
type pkcs11Flags struct {
	module, token, pinSource string
}

func (p *pkcs11Flags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.module, "pkcs11-module", "", "generate the keys in a PKCS#11 token: the module (e.g. /usr/lib/softhsm/libsofthsm2.so)")
	cmd.Flags().StringVar(&p.token, "pkcs11-token", "", "with --pkcs11-module: the token's label")
	cmd.Flags().StringVar(&p.pinSource, "pkcs11-pin-source", "", "with --pkcs11-module: file:PATH of a file holding the token's user PIN")
}

func (p *pkcs11Flags) enabled() (bool, error) {
	set := 0
	for _, v := range []string{p.module, p.token, p.pinSource} {
		if v != "" {
			set++
		}
	}
	switch set {
	case 0:
		return false, nil
	case 3:
		return true, nil
	}
	return false, errors.New("--pkcs11-module, --pkcs11-token and --pkcs11-pin-source go together: give all three")
}

// uri is the URI of key name in the token.
func (p *pkcs11Flags) uri(name string) string {
	pin := strings.TrimPrefix(p.pinSource, "file:")
	if abs, err := filepath.Abs(pin); err == nil {
		pin = abs
	}
	u := &kms.PKCS11URI{Token: p.token, Object: name, ModulePath: p.module, PINSource: pin}
	return u.String()
}

// keyMaker generates keys on demand for pki.Init and RotateDeviceCA:
// asked twice for a name (a CA's key is asked for again to sign its OCSP
// signer) it returns the same signer. It remembers what it made so that a
// failure can remove the file keys and every signer can be closed.
type keyMaker struct {
	ctx    context.Context
	pkiDir string
	alg    kms.Algorithm
	opts   kms.Options
	uri    func(name string) string // the URI (as written in keys.yaml) of a new key

	uris    map[string]string
	signers map[string]crypto.Signer
	files   []string // file keys made
}

// newKeyMakerBeside is a keyMaker of new keys of alg where the key of CA
// caName is (its keys.yaml URI is current): on the same PKCS #11 token,
// or in key files under dir, encrypted with pass (asked for now, so that
// a missing passphrase fails before anything is made).
func newKeyMakerBeside(ctx context.Context, dir, current, caName string, alg kms.Algorithm, pass func() ([]byte, error)) (*keyMaker, error) {
	var token *kms.PKCS11URI
	if isPKCS11URI(current) {
		var err error
		if token, err = kms.ParsePKCS11URI(current); err != nil {
			return nil, fmt.Errorf("keys.yaml, %s: %w", caName, err)
		}
		if token.PINValue != "" {
			return nil, fmt.Errorf("the URI of %s in keys.yaml carries pin-value: use pin-source=file:PATH instead", caName)
		}
	} else {
		if pass != nil {
			if _, err := pass(); err != nil {
				return nil, fmt.Errorf("new key files: %v; or, for a test PKI with unencrypted key files, --insecure-plaintext-keys", err)
			}
		}
		if err := os.MkdirAll(filepath.Join(dir, pkiKeysDirName), 0o700); err != nil {
			return nil, err
		}
	}
	return &keyMaker{ctx: ctx, pkiDir: dir, alg: alg, opts: kms.Options{Passphrase: pass}, uri: func(name string) string {
		if token != nil {
			u := *token
			u.Object, u.ID = name, nil
			return u.String()
		}
		return filepath.Join(pkiKeysDirName, name+".key")
	}}, nil
}

func (k *keyMaker) key(name string) (crypto.Signer, error) {
	if s, ok := k.signers[name]; ok {
		return s, nil
	}
	uri := k.uri(name)
	resolved := resolveKeyURI(k.pkiDir, uri)
	alg := k.alg
	if name == pki.NameReleaseSigner {
		alg = kms.ECDSAP256 // what Mender clients verify, whatever the other keys are
	}
	s, err := kms.Generate(k.ctx, resolved, alg, k.opts)
	if err != nil {
		if errors.Is(err, kms.ErrKeyExists) && isPKCS11URI(uri) {
			return nil, fmt.Errorf("%w (a key labelled %s is in the token already, perhaps from an earlier init that failed: delete it, e.g. with pkcs11-tool --delete-object, or use another token)", err, name)
		}
		return nil, err
	}
	if k.uris == nil {
		k.uris, k.signers = map[string]string{}, map[string]crypto.Signer{}
	}
	k.uris[name], k.signers[name] = uri, s
	if !isPKCS11URI(uri) {
		k.files = append(k.files, strings.TrimPrefix(resolved, "file:"))
	}
	return s, nil
}

// close releases every signer made.
func (k *keyMaker) close() {
	for _, s := range k.signers {
		kms.Close(s)
	}
}

// removeFiles deletes the file keys made (after a failure). Keys made in
// a token stay there; the returned note says so.
func (k *keyMaker) removeFiles() string {
	for _, f := range k.files {
		os.Remove(f)
	}
	var inToken []string
	for name, uri := range k.uris {
		if isPKCS11URI(uri) {
			inToken = append(inToken, name)
		}
	}
	if len(inToken) == 0 {
		return ""
	}
	sort.Strings(inToken)
	return fmt.Sprintf(" (the keys %s stay in the token: delete them before trying again)", strings.Join(inToken, ", "))
}

// fingerprint is the SHA-256 of a certificate as colon-separated hex.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// defaultHostnames are the device listener's names when none are given:
// the machine's host name, localhost and 127.0.0.1.
func defaultHostnames() []string {
	var names []string
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		names = append(names, h)
	}
	return append(names, "localhost", "127.0.0.1")
}

// hierarchyPresent reports whether dir holds (part of) a PKI: a root
// certificate, keys.yaml or a key file.
func hierarchyPresent(dir string) (string, bool) {
	for _, name := range []string{pki.NameRoot + ".crt", pkiKeysFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), true
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, pkiKeysDirName))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".key") {
			return filepath.Join(dir, pkiKeysDirName, e.Name()), true
		}
	}
	return "", false
}

func (a *app) pkiInitCmd() *cobra.Command {
	var (
		dataDir, profile, org, urlHost, alg, rootKeyURI, passFile string
		hostnames                                                 []string
		plaintext                                                 bool
		p11                                                       pkcs11Flags
	)
	cmd := &cobra.Command{
		Use:   "init --data-dir DIR --profile test|production --org ORG",
		Short: "Create the PKI of a data directory: root, CAs, server and command-signer certificates and their keys",
		Long: `Create the PKI of a data directory, in DIR/pki: a root CA, a manufacturing CA
(signs IDevIDs at the factory), a device CA (signs LDevIDs at enrollment), the
device listener's TLS certificate, the command signer, the release signer
(signs Mender artifacts and SWUpdate images; always ECDSA P-256), and an OCSP
signer for each issuing CA, each with a new key. Certificates go to DIR/pki/<name>.crt,
file keys to DIR/pki/keys/<name>.key, and DIR/pki/keys.yaml says where each key
is. An existing PKI is never overwritten.

File keys are encrypted with a passphrase from $CRADLE_PKI_PASSPHRASE, else
--passphrase-file, else asked for on the terminal. With --pkcs11-module,
--pkcs11-token and --pkcs11-pin-source every key is generated in that token
instead, labelled with its name. --root-key-uri puts the root key elsewhere
(a file path outside the data directory, or a pkcs11: URI).

The root key is needed only to rotate the device CA: keep it offline.`,
		Example: `  CRADLE_PKI_PASSPHRASE=… cradle pki init --data-dir /var/lib/cradle --profile production \
      --org "Example Corp" --hostname devices.example.com --url-host devices.example.com:8443
  cradle pki init --data-dir ./cradle-data --profile test --org Dev --insecure-plaintext-keys
  cradle pki init --data-dir /var/lib/cradle --profile production --org "Example Corp" \
      --hostname devices.example.com --pkcs11-module /usr/lib/softhsm/libsofthsm2.so \
      --pkcs11-token cradle --pkcs11-pin-source file:/etc/cradle/pin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return errors.New("--data-dir is required")
			}
			if profile != pki.ProfileTest && profile != pki.ProfileProduction {
				return fmt.Errorf("--profile must be %s or %s", pki.ProfileTest, pki.ProfileProduction)
			}
			if org == "" {
				return errors.New("--org is required: the organization named in every certificate")
			}
			if plaintext && profile == pki.ProfileProduction {
				return errors.New("--insecure-plaintext-keys is for tests and development: a production PKI's key files are always encrypted")
			}
			algorithm, err := kms.ParseAlgorithm(alg)
			if err != nil {
				return err
			}
			inToken, err := p11.enabled()
			if err != nil {
				return err
			}
			if len(hostnames) == 0 {
				hostnames = defaultHostnames()
			}
			for _, h := range hostnames {
				if strings.TrimSpace(h) == "" || strings.ContainsAny(h, " /") {
					return fmt.Errorf("invalid --hostname %q: give a DNS name or an IP address", h)
				}
			}
			if urlHost == "" {
				urlHost = net.JoinHostPort(hostnames[0], "8443")
			}
			if rootKeyURI != "" && !isPKCS11URI(rootKeyURI) {
				p := strings.TrimPrefix(rootKeyURI, "file:")
				if p, err = filepath.Abs(p); err != nil {
					return fmt.Errorf("--root-key-uri: %w", err)
				}
				rootKeyURI = p
			}
			dir := pkiDirOf(dataDir)
			if found, ok := hierarchyPresent(dir); ok {
				return fmt.Errorf("%s holds a PKI already (%s): cradle pki init never overwrites one; use another --data-dir, or cradle pki rotate-device-ca to add a device CA", dir, found)
			}

			fileKeys := !inToken || (rootKeyURI != "" && !isPKCS11URI(rootKeyURI))
			var opts kms.Options
			if fileKeys && !plaintext {
				pass := passphraseSource(passFile, a.stdin, a.stderr, true)
				if _, err := pass(); err != nil {
					return fmt.Errorf("%v; or, for tests and development only, --insecure-plaintext-keys writes unencrypted key files", err)
				}
				opts.Passphrase = pass
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("pki init: %w", err)
			}
			if fileKeys {
				if err := os.MkdirAll(filepath.Join(dir, pkiKeysDirName), 0o700); err != nil {
					return fmt.Errorf("pki init: %w", err)
				}
				// MkdirAll leaves an existing directory's mode alone.
				if err := os.Chmod(filepath.Join(dir, pkiKeysDirName), 0o700); err != nil {
					return fmt.Errorf("pki init: %w", err)
				}
			}

			km := &keyMaker{ctx: cmd.Context(), pkiDir: dir, alg: algorithm, opts: opts, uri: func(name string) string {
				switch {
				case name == pki.NameRoot && rootKeyURI != "":
					return rootKeyURI
				case inToken:
					return p11.uri(name)
				}
				return filepath.Join(pkiKeysDirName, name+".key")
			}}
			defer km.close()
			h, err := pki.Init(cmd.Context(), pki.InitOptions{
				Profile: profile, Org: org, Hostnames: hostnames, URLHost: urlHost, Keys: km.key,
			})
			if err == nil {
				err = pki.WriteHierarchy(dir, h)
			}
			if err == nil {
				err = writeKeyMap(dir, km.uris)
			}
			if err != nil {
				note := km.removeFiles()
				if h != nil {
					for _, name := range certNames(h) {
						os.Remove(filepath.Join(dir, name+".crt"))
					}
				}
				return fmt.Errorf("pki init: %w%s", err, note)
			}
			return a.printInitSummary(dir, h, km.uris, rootKeyURI != "")
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the data directory (the PKI goes to DIR/pki)")
	cmd.Flags().StringVar(&profile, "profile", "", "test (certificates marked as test, refused by production devices) or production")
	cmd.Flags().StringVar(&org, "org", "", "organization named in every certificate")
	cmd.Flags().StringArrayVar(&hostnames, "hostname", nil, "DNS name or IP address of the device listener, for its TLS certificate (repeatable; default: this machine's host name, localhost and 127.0.0.1)")
	cmd.Flags().StringVar(&urlHost, "url-host", "", "HOST:PORT where devices reach the device listener, written in the certificates' AIA/CRL/OCSP URLs (default: the first --hostname, port 8443)")
	cmd.Flags().StringVar(&alg, "key-algorithm", string(kms.DefaultAlgorithm), "algorithm of every key: "+algorithmNames())
	cmd.Flags().StringVar(&rootKeyURI, "root-key-uri", "", "put the root key here instead: a file path (e.g. on removable media) or a pkcs11: URI")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "file whose first line is the key files' passphrase (default: $"+pkiPassphraseEnv+", else a prompt)")
	cmd.Flags().BoolVar(&plaintext, "insecure-plaintext-keys", false, "write key files unencrypted (tests and development only; refused with --profile production)")
	p11.add(cmd)
	return cmd
}

func algorithmNames() string {
	var s []string
	for _, a := range kms.Algorithms {
		s = append(s, string(a))
	}
	return strings.Join(s, ", ")
}

// certNames are the names of h's certificate files, sorted: those of
// pki.WriteHierarchy.
func certNames(h *pki.Hierarchy) []string {
	names := []string{pki.NameRoot, pki.NameManufacturingCA, pki.NameServer, pki.NameCommandSigner}
	for i := range h.DeviceCAs {
		names = append(names, pki.DeviceCAName(i))
	}
	for ca := range h.IssuingCAs() {
		names = append(names, pki.OCSPNamePrefix+ca)
	}
	if h.ReleaseSigner != nil {
		names = append(names, pki.NameReleaseSigner)
	}
	sort.Strings(names)
	return names
}

func (a *app) printInitSummary(dir string, h *pki.Hierarchy, uris map[string]string, rootElsewhere bool) error {
	w := &errWriter{w: a.stdout}
	w.printf("Created a %s PKI in %s\n\n", h.Profile(), dir)
	w.printf("Root CA:  %s\n", h.Root.Subject)
	w.printf("SHA-256:  %s\n", fingerprint(h.Root))
	w.printf("Valid:    %s to %s\n\n", h.Root.NotBefore.Format(time.DateOnly), h.Root.NotAfter.Format(time.DateOnly))
	w.printf("Certificates:\n")
	for _, name := range certNames(h) {
		w.printf("  %s\n", filepath.Join(dir, name+".crt"))
	}
	w.printf("Keys (listed in %s):\n", filepath.Join(dir, pkiKeysFile))
	names := make([]string, 0, len(uris))
	for n := range uris {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		w.printf("  %-24s %s\n", n, resolveKeyURI(dir, uris[n]))
	}
	w.printf("\nDevices trust the root: give them %s (check its fingerprint above).\n", filepath.Join(dir, pki.NameRoot+".crt"))
	rootURI := uris[pki.NameRoot]
	switch {
	case isPKCS11URI(rootURI):
		w.printf("The root key is in a token; the server never needs it. Keep that token offline\nexcept to rotate the device CA (cradle pki rotate-device-ca).\n")
	case rootElsewhere:
		w.printf("The root key is at %s; the server never needs it. Keep it offline (e.g. on\nremovable media) except to rotate the device CA (cradle pki rotate-device-ca).\n", rootURI)
	default:
		w.printf("Move the root key offline: the server never needs it, only cradle pki\nrotate-device-ca does. Move %s to removable media, and\nwhen you rotate, bring it back or point the root entry of keys.yaml at it.\n", resolveKeyURI(dir, rootURI))
	}
	return w.err
}

// errWriter keeps the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}

// algorithmOf is the kms algorithm of a key like pub.
func algorithmOf(pub crypto.PublicKey) (kms.Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return kms.ECDSAP256, nil
		case elliptic.P384():
			return kms.ECDSAP384, nil
		}
	case ed25519.PublicKey:
		return kms.Ed25519, nil
	case *rsa.PublicKey:
		return kms.RSA3072, nil
	}
	return "", fmt.Errorf("unsupported key type %T", pub)
}

func (a *app) pkiRotateCmd() *cobra.Command {
	var (
		dataDir, urlHost, alg, passFile string
		plaintext                       bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-device-ca --data-dir DIR",
		Short: "Add a new device CA, signed by the root; it issues new device certificates from the next server start",
		Long: `Add a new device CA to the PKI of a data directory, signed with the root key
(which must be reachable: keys.yaml's root entry), with its OCSP signer. Its key
goes where the current device CA's is: the same token for a pkcs11: key, else
DIR/pki/keys/. The new CA issues the LDevIDs of enrollments once the server is
restarted; the old device CAs stay, so the certificates they issued remain
valid until they expire.`,
		Example: `  CRADLE_PKI_PASSPHRASE=… cradle pki rotate-device-ca --data-dir /var/lib/cradle`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return errors.New("--data-dir is required")
			}
			dir := pkiDirOf(dataDir)
			var pass func() ([]byte, error)
			if !plaintext {
				pass = passphraseSource(passFile, a.stdin, a.stderr, false)
			}
			h, signers, closeKeys, err := openPKI(cmd.Context(), dataDir, pass, pki.NameRoot)
			if err != nil {
				return fmt.Errorf("rotate-device-ca: %w", err)
			}
			defer closeKeys()
			if plaintext && h.Profile() == pki.ProfileProduction {
				return errors.New("rotate-device-ca: --insecure-plaintext-keys is for tests and development: a production PKI's key files are always encrypted")
			}
			uris, err := readKeyMap(dir)
			if err != nil {
				return fmt.Errorf("rotate-device-ca: %w", err)
			}
			var algorithm kms.Algorithm
			if alg != "" {
				if algorithm, err = kms.ParseAlgorithm(alg); err != nil {
					return err
				}
			} else if algorithm, err = algorithmOf(h.DeviceCA().PublicKey); err != nil {
				return fmt.Errorf("rotate-device-ca: the current device CA's key: %w; choose one with --key-algorithm", err)
			}
			if urlHost == "" {
				urlHost = urlHostOf(h.DeviceCA())
				if urlHost == "" {
					return errors.New("rotate-device-ca: the current device CA has no caIssuers URL to take the host from: give --url-host HOST:PORT")
				}
			}
			km, err := newKeyMakerBeside(cmd.Context(), dir, uris[h.DeviceCAName()], h.DeviceCAName(), algorithm, pass)
			if err != nil {
				return fmt.Errorf("rotate-device-ca: %w", err)
			}
			defer km.close()
			name, err := h.RotateDeviceCA(cmd.Context(), signers[pki.NameRoot], km.key, urlHost, time.Now())
			if err == nil {
				next := maps.Clone(uris)
				for n, u := range km.uris {
					next[n] = u
				}
				err = writeKeyMap(dir, next)
			}
			if err == nil {
				err = pki.WriteHierarchy(dir, h)
				if err != nil {
					writeKeyMap(dir, uris)
				}
			}
			if err != nil {
				note := km.removeFiles()
				return fmt.Errorf("rotate-device-ca: %w%s", err, note)
			}
			w := &errWriter{w: a.stdout}
			w.printf("%s\n", name)
			fmt.Fprintf(a.stderr, "Added device CA %s (%s, SHA-256 %s), key at %s.\nRestart cradle serve to issue device certificates from it; the older device CAs stay valid.\n",
				name, h.DeviceCA().Subject, fingerprint(h.DeviceCA()), resolveKeyURI(dir, km.uris[name]))
			return w.err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the data directory whose PKI (DIR/pki) gets the new device CA")
	cmd.Flags().StringVar(&urlHost, "url-host", "", "HOST:PORT in the new CA's AIA URL (default: the current device CA's)")
	cmd.Flags().StringVar(&alg, "key-algorithm", "", "algorithm of the new keys: "+algorithmNames()+" (default: that of the current device CA)")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "file whose first line is the key files' passphrase (default: $"+pkiPassphraseEnv+", else a prompt)")
	cmd.Flags().BoolVar(&plaintext, "insecure-plaintext-keys", false, "the PKI's key files are unencrypted (a test PKI made with that flag)")
	return cmd
}

// urlHostOf is the host[:port] of c's first caIssuers URL, or "".
func urlHostOf(c *x509.Certificate) string {
	if len(c.IssuingCertificateURL) == 0 {
		return ""
	}
	u, err := url.Parse(c.IssuingCertificateURL[0])
	if err != nil {
		return ""
	}
	return u.Host
}
