package hw

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// The kinds of key store OpenKeyStore opens.
const (
	KeyStoreFile   = "file"   // the simulated unit's own key files (the default)
	KeyStoreTPM    = "tpm"    // a TPM 2.0: TPMKeyStore
	KeyStorePKCS11 = "pkcs11" // a PKCS#11 token: PKCS11KeyStore
)

// DefaultTPM is the TPM a "tpm" key store uses when KeyStoreSpec.TPM is
// empty: the kernel's resource manager.
const DefaultTPM = "/dev/tpmrm0"

// KeyStoreSpec says which key store holds a unit's keys, as the agent's
// and the factory station's flags give it.
type KeyStoreSpec struct {
	// Kind is KeyStoreFile (or empty), KeyStoreTPM or KeyStorePKCS11.
	Kind string
	// TPM is the TPM's character device (a path, DefaultTPM when empty)
	// or host:port of swtpm's command channel.
	TPM string
	// TPMState is the TPM key store's state directory; empty means the
	// "tpm" directory inside the simulated unit's directory.
	TPMState string
	// PKCS11Module, PKCS11Token and PKCS11PINSource ("file:PATH") name the
	// token (see NewPKCS11KeyStore).
	PKCS11Module    string
	PKCS11Token     string
	PKCS11PINSource string
}

// TPMOpener returns the opener of spec.TPM: TPMTCP for host:port,
// TPMDevice for a path (anything holding a slash, or DefaultTPM when
// empty).
func (spec KeyStoreSpec) TPMOpener() func() (io.ReadWriteCloser, error) {
	t := spec.TPM
	if t == "" {
		t = DefaultTPM
	}
	if !strings.Contains(t, "/") && strings.Contains(t, ":") {
		return TPMTCP(t)
	}
	return TPMDevice(t)
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// OpenKeyStore opens the key store spec names for the unit dev. "file"
// (the default) is dev.Keys; "tpm" a TPMKeyStore; "pkcs11" a
// PKCS11KeyStore. The closer releases what the store holds (the PKCS#11
// signers it handed out); it is never nil. A bad spec is an error
// wrapping ErrInvalid.
func OpenKeyStore(spec KeyStoreSpec, dev *Device) (KeyStore, io.Closer, error) {
	none := closerFunc(func() error { return nil })
	if spec.Kind != KeyStorePKCS11 && (spec.PKCS11Module != "" || spec.PKCS11Token != "" || spec.PKCS11PINSource != "") {
		return nil, nil, fmt.Errorf("hw: PKCS#11 settings given for a %q key store: choose the pkcs11 key store, or drop them: %w", kindName(spec.Kind), ErrInvalid)
	}
	if spec.Kind != KeyStoreTPM && (spec.TPM != "" || spec.TPMState != "") {
		return nil, nil, fmt.Errorf("hw: TPM settings given for a %q key store: choose the tpm key store, or drop them: %w", kindName(spec.Kind), ErrInvalid)
	}
	switch spec.Kind {
	case "", KeyStoreFile:
		if dev == nil || dev.Keys == nil {
			return nil, nil, fmt.Errorf("hw: the file key store is the simulated unit's, and no unit was given: %w", ErrInvalid)
		}
		return dev.Keys, none, nil
	case KeyStoreTPM:
		state := spec.TPMState
		if state == "" {
			if dev == nil || dev.Sim == nil {
				return nil, nil, fmt.Errorf("hw: the TPM key store needs a state directory: %w", ErrInvalid)
			}
			state = filepath.Join(dev.Sim.Dir(), "tpm")
		}
		return NewTPMKeyStore(spec.TPMOpener(), state), none, nil
	case KeyStorePKCS11:
		ks, err := NewPKCS11KeyStore(spec.PKCS11Module, spec.PKCS11Token, spec.PKCS11PINSource)
		if err != nil {
			return nil, nil, err
		}
		return ks, ks, nil
	}
	return nil, nil, fmt.Errorf("hw: unknown key store %q: use %s, %s or %s: %w", spec.Kind, KeyStoreFile, KeyStoreTPM, KeyStorePKCS11, ErrInvalid)
}

func kindName(kind string) string {
	if kind == "" {
		return KeyStoreFile
	}
	return kind
}

// checkPKCS11Args checks the arguments of NewPKCS11KeyStore and returns
// the PIN file's path.
func checkPKCS11Args(module, token, pinSource string) (string, error) {
	if module == "" {
		return "", fmt.Errorf("hw: pkcs11 key store: no module: give the path of the token's PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so): %w", ErrInvalid)
	}
	if token == "" {
		return "", fmt.Errorf("hw: pkcs11 key store: no token label: give the label (pkcs11-tool --module %s -L lists them): %w", module, ErrInvalid)
	}
	pinFile, ok := strings.CutPrefix(pinSource, "file:")
	if !ok || pinFile == "" {
		return "", fmt.Errorf("hw: pkcs11 key store: PIN source %q: write file:PATH, PATH being a file holding the user PIN: %w", pinSource, ErrInvalid)
	}
	return pinFile, nil
}
