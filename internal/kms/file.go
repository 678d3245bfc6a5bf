package kms

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/youmark/pkcs8"
)

// maxKeyFileSize bounds what is read from a key file; an RSA-8192 PEM key
// is under 7 KiB.
const maxKeyFileSize = 1 << 20

// Key derivation when writing an encrypted key: PBKDF2-HMAC-SHA256 with
// OWASP's 2023 figure of 600,000 iterations and a 16-byte salt, read by
// every OpenSSL since 1.0.
const (
	writeIterations = 600_000
	writeSaltSize   = 16
)

// Bounds on the cost of key derivation in a file we read, so a crafted
// file cannot make Open spin or allocate without end.
var (
	maxPBKDF2Iterations = 10_000_000
	maxScryptMemory     = 1 << 30 // 128·N·r bytes
)

// kmsError is an error with its own message that still matches a sentinel
// with errors.Is.
type kmsError struct {
	msg string
	err error
}

func (e *kmsError) Error() string { return e.msg }
func (e *kmsError) Unwrap() error { return e.err }

func errorf(sentinel error, format string, args ...any) error {
	return &kmsError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

func openFile(path string, opts Options) (crypto.Signer, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errorf(ErrKeyNotFound, "kms: key file %s does not exist", path)
	} else if err != nil {
		return nil, fmt.Errorf("kms: open key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kms: key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("kms: key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("kms: key file %s is accessible by group or others (mode %04o): run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("kms: read key file %s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("kms: key file %s is larger than %d bytes: not a key", path, maxKeyFileSize)
	}
	return parseKeyFile(path, data, opts.Passphrase)
}

// ParsePrivateKeyPEM decodes a PEM private key as a key file holds it: a
// PKCS#8 "PRIVATE KEY", an encrypted PKCS#8 "ENCRYPTED PRIVATE KEY"
// (PBES2 with PBKDF2 or scrypt and AES-CBC), or a legacy unencrypted "EC
// PRIVATE KEY" or "RSA PRIVATE KEY"; other PEM blocks before the key (such
// as "EC PARAMETERS") are skipped. passphrase is used only for an
// encrypted key. The key must be ECDSA on P-256, P-384 or P-521, Ed25519,
// or RSA of at least 2048 bits. A passphrase that does not decrypt the key
// gives ErrWrongPassphrase.
func ParsePrivateKeyPEM(data, passphrase []byte) (crypto.Signer, error) {
	return parseKeyFile("(PEM data)", data, func() ([]byte, error) {
		return bytes.Clone(passphrase), nil
	})
}

func parseKeyFile(path string, data []byte, passphrase func() ([]byte, error)) (crypto.Signer, error) {
	var block *pem.Block
	rest := data
	for {
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("kms: key file %s holds no PEM private key", path)
		}
		switch block.Type {
		case "PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
		default:
			continue
		}
		break
	}
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, fmt.Errorf("kms: key file %s uses legacy PEM encryption: convert it with openssl pkcs8 -topk8 -v2 aes-256-cbc -in %s", path, path)
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		if err := checkEncryptedPKCS8(block.Bytes); err != nil {
			return nil, fmt.Errorf("kms: key file %s: %v", path, err)
		}
		if passphrase == nil {
			return nil, fmt.Errorf("kms: key file %s is encrypted: give its passphrase (from the environment, a file or a prompt)", path)
		}
		pass, perr := passphrase()
		if perr != nil {
			return nil, fmt.Errorf("kms: passphrase for key %s: %w", path, perr)
		}
		if len(pass) == 0 {
			return nil, fmt.Errorf("kms: key file %s is encrypted and the passphrase given is empty", path)
		}
		key, _, err = pkcs8.ParsePrivateKey(block.Bytes, pass)
		clear(pass)
		if err != nil {
			// The structure was checked above, so what fails now is the
			// decryption: the padding or the decrypted key.
			return nil, errorf(ErrWrongPassphrase, "kms: wrong passphrase for key %s", path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kms: key file %s: %s key: %v", path, block.Type, err)
	}
	return checkKey(path, key)
}

func checkKey(path string, key any) (crypto.Signer, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return k, nil
		}
		return nil, fmt.Errorf("kms: key %s is ECDSA on %s: use P-256 or P-384", path, k.Curve.Params().Name)
	case ed25519.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("kms: key %s is RSA-%d, too weak: use at least 2048 bits (rsa-3072)", path, k.N.BitLen())
		}
		return k, nil
	}
	return nil, fmt.Errorf("kms: key %s is a %T, not a signing key (use ECDSA, Ed25519 or RSA)", path, key)
}

var (
	oidPBES2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidScrypt    = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11591, 4, 11}
	oidAES128CBC = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidHMACSHA1  = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA2  = map[string]bool{
		"1.2.840.113549.2.8":  true, // hmacWithSHA224
		"1.2.840.113549.2.9":  true, // hmacWithSHA256
		"1.2.840.113549.2.10": true, // hmacWithSHA384
		"1.2.840.113549.2.11": true, // hmacWithSHA512
	}
)

type encryptedPrivateKeyInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	Data      []byte
}

type pbes2Params struct {
	KDF pkix.AlgorithmIdentifier
	Enc pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt       []byte
	Iterations int
	KeyLength  int                      `asn1:"optional"`
	PRF        pkix.AlgorithmIdentifier `asn1:"optional"`
}

type scryptParams struct {
	Salt      []byte
	N         int
	R         int
	P         int
	KeyLength int `asn1:"optional"`
}

// checkEncryptedPKCS8 checks the structure and the bounds of an encrypted
// PKCS#8 key before it is decrypted, so that what fails afterwards can only
// be the passphrase, and so that no crafted file makes the decryption
// panic (a ciphertext that is not whole blocks) or run without end.
func checkEncryptedPKCS8(der []byte) error {
	var info encryptedPrivateKeyInfo
	if rest, err := asn1.Unmarshal(der, &info); err != nil {
		return fmt.Errorf("malformed encrypted PKCS#8 key: %v", err)
	} else if len(rest) > 0 {
		return errors.New("malformed encrypted PKCS#8 key: trailing data")
	}
	if !info.Algorithm.Algorithm.Equal(oidPBES2) {
		return fmt.Errorf("encrypted with %v, not PBES2: re-encrypt it with openssl pkcs8 -topk8 -v2 aes-256-cbc", info.Algorithm.Algorithm)
	}
	var params pbes2Params
	if rest, err := asn1.Unmarshal(info.Algorithm.Parameters.FullBytes, &params); err != nil || len(rest) > 0 {
		return errors.New("malformed PBES2 parameters")
	}
	var keyLen int
	switch enc := params.Enc.Algorithm; {
	case enc.Equal(oidAES128CBC):
		keyLen = 16
	case enc.Equal(oidAES192CBC):
		keyLen = 24
	case enc.Equal(oidAES256CBC):
		keyLen = 32
	default:
		return fmt.Errorf("encrypted with cipher %v: only AES-CBC is supported (re-encrypt with -v2 aes-256-cbc)", enc)
	}
	var iv []byte
	if rest, err := asn1.Unmarshal(params.Enc.Parameters.FullBytes, &iv); err != nil || len(rest) > 0 || len(iv) != 16 {
		return errors.New("malformed AES-CBC parameters (the IV must be 16 bytes)")
	}
	if len(info.Data) == 0 || len(info.Data)%16 != 0 {
		return errors.New("the encrypted key is not a whole number of AES blocks (truncated?)")
	}
	switch kdf := params.KDF.Algorithm; {
	case kdf.Equal(oidPBKDF2):
		var p pbkdf2Params
		if rest, err := asn1.Unmarshal(params.KDF.Parameters.FullBytes, &p); err != nil || len(rest) > 0 {
			return errors.New("malformed PBKDF2 parameters")
		}
		if p.Iterations < 1 || p.Iterations > maxPBKDF2Iterations {
			return fmt.Errorf("PBKDF2 iteration count %d is out of range (1 to %d)", p.Iterations, maxPBKDF2Iterations)
		}
		if p.KeyLength != 0 && p.KeyLength != keyLen {
			return fmt.Errorf("PBKDF2 key length %d does not fit the cipher (%d)", p.KeyLength, keyLen)
		}
		if prf := p.PRF.Algorithm; len(prf) > 0 && !prf.Equal(oidHMACSHA1) && !oidHMACSHA2[prf.String()] {
			return fmt.Errorf("PBKDF2 with unsupported PRF %v", prf)
		}
	case kdf.Equal(oidScrypt):
		var p scryptParams
		if rest, err := asn1.Unmarshal(params.KDF.Parameters.FullBytes, &p); err != nil || len(rest) > 0 {
			return errors.New("malformed scrypt parameters")
		}
		if p.N < 2 || p.N&(p.N-1) != 0 || p.R < 1 || p.P < 1 || p.P > 16 || p.R > 1<<10 ||
			p.N > maxScryptMemory/128/p.R {
			return fmt.Errorf("scrypt parameters N=%d r=%d p=%d are out of range (N a power of 2, 128·N·r at most %d bytes, p at most 16)", p.N, p.R, p.P, maxScryptMemory)
		}
		if p.KeyLength != 0 && p.KeyLength != keyLen {
			return fmt.Errorf("scrypt key length %d does not fit the cipher (%d)", p.KeyLength, keyLen)
		}
	default:
		return fmt.Errorf("key derivation %v is not supported (use PBKDF2 or scrypt)", kdf)
	}
	return nil
}

func generateFile(path string, alg Algorithm, opts Options) (crypto.Signer, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, errorf(ErrKeyExists, "kms: key file %s exists already: Generate never replaces a key (move it away first)", path)
	}
	key, err := newSoftwareKey(alg)
	if err != nil {
		return nil, err
	}
	var pass []byte
	if opts.Passphrase != nil {
		if pass, err = opts.Passphrase(); err != nil {
			return nil, fmt.Errorf("kms: passphrase for new key %s: %w", path, err)
		}
		if len(pass) == 0 {
			return nil, fmt.Errorf("kms: the passphrase for new key %s is empty", path)
		}
		defer clear(pass)
	}
	var block *pem.Block
	if pass == nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("kms: encode key: %w", err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	} else {
		der, err := pkcs8.MarshalPrivateKey(key, pass, &pkcs8.Opts{
			Cipher: pkcs8.AES256CBC,
			KDFOpts: pkcs8.PBKDF2Opts{
				SaltSize:       writeSaltSize,
				IterationCount: writeIterations,
				HMACHash:       crypto.SHA256,
			},
		})
		if err != nil {
			return nil, fmt.Errorf("kms: encrypt key: %w", err)
		}
		block = &pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der}
	}
	if err := writeNewFile(path, pem.EncodeToMemory(block)); err != nil {
		return nil, err
	}
	return key, nil
}

func newSoftwareKey(alg Algorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("kms: unknown key algorithm %q (use one of %s)", alg, algorithmList())
}

// writeNewFile writes data to path, mode 0600, so that path is either
// absent or complete: the data goes to a temporary file in the same
// directory, is synced, and is hard-linked to path, which fails if path
// exists (so an existing key is never replaced, even by a racing writer).
// The temporary name is removed in every case.
func writeNewFile(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("kms: write key file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		tmp.Close()
		return fmt.Errorf("kms: write key file %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("kms: write key file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("kms: write key file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("kms: write key file %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return errorf(ErrKeyExists, "kms: key file %s exists already: Generate never replaces a key (move it away first)", path)
	} else if err != nil {
		return fmt.Errorf("kms: write key file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		// Make the new name durable; a failure here leaves a complete key.
		_ = d.Sync()
		d.Close()
	}
	return nil
}
