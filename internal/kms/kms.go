// Package kms is the one seam behind which every CA key of Cradle sits: a
// key is named by a URI, and opening it yields a crypto.Signer. The PKI
// never sees private key bytes; it asks the signer to sign.
//
// # Back ends
//
// A key URI picks one of two back ends:
//
//   - File keys: a plain path or "file:PATH". The key is a PKCS#8 PEM file.
//     With a passphrase it is an "ENCRYPTED PRIVATE KEY" (PBES2: PBKDF2 with
//     HMAC-SHA256 at 600,000 iterations, AES-256-CBC), which `openssl pkey
//     -passin` reads; without one it is a plain "PRIVATE KEY". Keys made by
//     `openssl genpkey -aes-256-cbc` (PBKDF2 or scrypt, any AES-CBC) load.
//     Files are written 0600, atomically (a temporary file in the same
//     directory, synced, then linked into place, so the key is either absent
//     or complete and an existing key is never replaced), and a key file
//     that group or others may access is refused, with the chmod that fixes
//     it.
//   - PKCS#11 keys: an RFC 7512 URI such as
//     "pkcs11:token=cradle;object=root-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/cradle/pin".
//     The token is selected by label (SoftHSM2 gives slots random ids), the
//     key by object label and/or id. Signing happens in the token through
//     github.com/ThalesGroup/crypto11: ECDSA keys are signed with CKM_ECDSA
//     over a digest computed in software (SoftHSM2 has no CKM_ECDSA_SHA256),
//     RSA keys with CKM_RSA_PKCS (or CKM_RSA_PKCS_PSS when asked). Ed25519
//     keys in a token are not supported (crypto11 has no EdDSA). This back
//     end needs cgo; a build without it refuses pkcs11: URIs with an error
//     that says so.
//
// # Algorithms
//
// ECDSA P-256 is the default; P-384, Ed25519 (file keys only) and RSA-3072
// can be chosen by name (see ParseAlgorithm).
//
// # Secrets
//
// A file key's passphrase and a token's PIN come from Options.Passphrase
// (PassphraseFromEnv, PassphraseFromFile, PassphrasePrompt), or for a token
// from the URI's pin-value or pin-source attribute, which win over it.
//
// # Failure modes
//
// Every error names the key (path or URI) and says what to do: a malformed
// URI names the attribute at fault; a wrong passphrase is ErrWrongPassphrase
// ("wrong passphrase for key PATH"), not a decryption error; a loose file
// mode says "chmod 600"; Generate refuses to replace a key (ErrKeyExists);
// a missing key is ErrKeyNotFound. Destroy is the one way to remove a key:
// the file, or the token's private, public and certificate objects.
//
// # Resources
//
// A PKCS#11 signer holds a session pool and a reference to the loaded
// module. Release it with Close(signer) (or its own Close method: every
// PKCS#11 signer is an io.Closer) when it is no longer needed; the module is
// finalized when its last signer is closed. File signers hold nothing, and
// Close on them is a no-op. PKCS#11 logs in a whole process, not a
// session: while one signer of a token is open, opening another key of the
// same token succeeds whatever PIN is given (the token answers "already
// logged in" without checking it), so the PIN guards the first Open only.
package kms

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Algorithm names a key type and size. Its values are the strings an
// operator types, e.g. on `cradle pki init --key-alg`.
type Algorithm string

// The algorithms a key may be generated with.
const (
	ECDSAP256 Algorithm = "ecdsa-p256" // the default
	ECDSAP384 Algorithm = "ecdsa-p384"
	Ed25519   Algorithm = "ed25519" // file keys only
	RSA3072   Algorithm = "rsa-3072"
)

// DefaultAlgorithm is the algorithm Generate uses when given "".
const DefaultAlgorithm = ECDSAP256

// Algorithms lists every Algorithm, the default first.
var Algorithms = []Algorithm{ECDSAP256, ECDSAP384, Ed25519, RSA3072}

// ParseAlgorithm returns the Algorithm named s (case-insensitive, e.g.
// "ecdsa-p256"); "" gives DefaultAlgorithm. Any other name is an error that
// lists the valid ones.
func ParseAlgorithm(s string) (Algorithm, error) {
	if s == "" {
		return DefaultAlgorithm, nil
	}
	for _, a := range Algorithms {
		if strings.EqualFold(s, string(a)) {
			return a, nil
		}
	}
	return "", fmt.Errorf("kms: unknown key algorithm %q (use one of %s)", s, algorithmList())
}

func algorithmList() string {
	names := make([]string, len(Algorithms))
	for i, a := range Algorithms {
		names[i] = string(a)
	}
	return strings.Join(names, ", ")
}

// Options holds what opening or generating a key may need besides its URI.
// The zero value is valid: file keys are then unencrypted, and a PKCS#11
// URI must carry its PIN.
type Options struct {
	// Passphrase returns the passphrase of a file key, or the PIN of a
	// PKCS#11 token whose URI has neither pin-value nor pin-source. Nil
	// means none: Generate writes an unencrypted file key, and Open of an
	// encrypted one fails with a message asking for a passphrase. It is
	// called at most once per Open or Generate, and only when needed.
	Passphrase func() ([]byte, error)
}

// Errors callers may test with errors.Is.
var (
	// ErrWrongPassphrase: the passphrase does not decrypt the key file (or
	// the token refused the PIN).
	ErrWrongPassphrase = errors.New("kms: wrong passphrase")
	// ErrKeyExists: Generate found a key at the URI already.
	ErrKeyExists = errors.New("kms: key exists")
	// ErrKeyNotFound: Open found no key at the URI.
	ErrKeyNotFound = errors.New("kms: key not found")
	// ErrNoPKCS11: this build cannot use pkcs11: URIs (built without cgo).
	ErrNoPKCS11 = errors.New("kms: this build has no PKCS#11 support: build with cgo (a C compiler) to use pkcs11: keys")
)

// Open returns the signer of the existing key named by uri: a file path,
// "file:PATH", or a "pkcs11:" URI (see ParsePKCS11URI). An unencrypted
// key file loads whether or not opts.Passphrase is set (the passphrase is
// then not asked for). Errors say what is
// wrong with the URI, the file (ErrKeyNotFound, loose permissions, not a
// key), the passphrase (ErrWrongPassphrase) or the token. Release the
// signer with Close.
func Open(ctx context.Context, uri string, opts Options) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if isPKCS11(uri) {
		u, err := ParsePKCS11URI(uri)
		if err != nil {
			return nil, err
		}
		return openPKCS11(ctx, u, opts)
	}
	path, err := filePath(uri)
	if err != nil {
		return nil, err
	}
	return openFile(path, opts)
}

// Generate creates a new key of algorithm alg ("" means DefaultAlgorithm)
// at uri and returns its signer. It never replaces a key: if one exists at
// the URI (the file exists, or the token holds a key with that label or
// id) it fails with ErrKeyExists. A file key is encrypted when
// opts.Passphrase is set. Release the signer with Close.
func Generate(ctx context.Context, uri string, alg Algorithm, opts Options) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	alg, err := ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	if isPKCS11(uri) {
		u, err := ParsePKCS11URI(uri)
		if err != nil {
			return nil, err
		}
		return generatePKCS11(ctx, u, alg, opts)
	}
	path, err := filePath(uri)
	if err != nil {
		return nil, err
	}
	return generateFile(path, alg, opts)
}

// Close releases what signer holds: for a PKCS#11 signer, its sessions and
// its reference to the module (finalized with the last one). It is a no-op
// for signers that hold nothing (file keys) and returns nil for them.
func Close(signer crypto.Signer) error {
	if c, ok := signer.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

func isPKCS11(uri string) bool {
	return len(uri) >= len("pkcs11:") && strings.EqualFold(uri[:len("pkcs11:")], "pkcs11:")
}

// filePath returns the path of a file key URI: "file:PATH" or a plain path.
// "file://" URLs are not accepted; they are easy to get wrong (host part).
func filePath(uri string) (string, error) {
	p := uri
	if rest, ok := strings.CutPrefix(uri, "file:"); ok {
		if strings.HasPrefix(rest, "//") {
			return "", fmt.Errorf("kms: key URI %q: write file:/absolute/path or file:relative/path, not a file:// URL", uri)
		}
		p = rest
	}
	if p == "" {
		return "", fmt.Errorf("kms: empty key URI: give a file path, file:PATH or a pkcs11: URI")
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("kms: key path %q contains a NUL byte", p)
	}
	return p, nil
}
