package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"cradle/internal/agent"
	"cradle/internal/agent/hw"
)

const factoryInitUsage = `cradle-agent factory-init creates the device key inside the unit's key store
and prints one JSON object: hardware_uid, key, csr (PEM, subject CN = the
hardware UID, signed by the new key) and public_key_sha256 (hex SHA-256 of
the key's SubjectPublicKeyInfo). The private key never leaves the store.

It runs only while the unit's lifecycle fuses say factory or rma. If a
previous attempt left the key, it refuses unless --replace is given, which
destroys that key and creates a new one.

Usage:
  cradle-agent factory-init --device DIR [flags]

Flags:
  --device DIR             the unit: a simulated device directory (required)
  --key-store KIND         where the key is made: file (the unit's own
                           simulated key files, the default), tpm or pkcs11
  --tpm PATH|HOST:PORT     the TPM: its device (default /dev/tpmrm0) or
                           swtpm's command channel
  --tpm-state DIR          the TPM key index (default DIR/tpm)
  --pkcs11-module PATH     the secure element's PKCS#11 library
  --pkcs11-token LABEL     its token label
  --pkcs11-pin-source file:PATH
                           the file holding its user PIN
  --key NAME               the key's name (default idevid)
  --replace                destroy a key left by a previous attempt first

Exit status: 0 done, 1 failed (the error is on stderr), 2 usage error.
`

// runFactoryInit runs `cradle-agent factory-init` with args (after the
// command name) and returns the exit code.
func runFactoryInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cradle-agent factory-init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	var spec hw.KeyStoreSpec
	device := fs.String("device", "", "the simulated device directory")
	fs.StringVar(&spec.Kind, "key-store", hw.KeyStoreFile, "file, tpm or pkcs11")
	fs.StringVar(&spec.TPM, "tpm", "", "TPM device path or host:port")
	fs.StringVar(&spec.TPMState, "tpm-state", "", "TPM key index directory")
	fs.StringVar(&spec.PKCS11Module, "pkcs11-module", "", "PKCS#11 module")
	fs.StringVar(&spec.PKCS11Token, "pkcs11-token", "", "PKCS#11 token label")
	fs.StringVar(&spec.PKCS11PINSource, "pkcs11-pin-source", "", "file:PATH of the PIN")
	key := fs.String("key", agent.DefaultKeyName, "key name")
	replace := fs.Bool("replace", false, "destroy a previous key first")
	if err := fs.Parse(args); err == flag.ErrHelp {
		fmt.Fprint(stdout, factoryInitUsage)
		return 0
	} else if err != nil {
		fmt.Fprintln(stderr, "see cradle-agent factory-init --help")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "error: factory-init takes no arguments, got %q; see cradle-agent factory-init --help\n", fs.Args())
		return 2
	}
	if *device == "" {
		fmt.Fprintln(stderr, "error: factory-init needs --device DIR, the unit's device directory; see cradle-agent factory-init --help")
		return 2
	}

	dev, err := hw.OpenSimDevice(*device)
	if err != nil {
		fmt.Fprintf(stderr, "error: open the unit: %v\n", err)
		return 1
	}
	keys, closer, err := hw.OpenKeyStore(spec, dev)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		if errors.Is(err, hw.ErrInvalid) {
			return 2
		}
		return 1
	}
	dev.Keys = keys

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := agent.FactoryInit(ctx, dev, agent.FactoryInitOptions{KeyName: *key, Replace: *replace})
	if cerr := closer.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("release the key store: %w", cerr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		fmt.Fprintf(stderr, "error: write the result: %v\n", err)
		return 1
	}
	return 0
}
