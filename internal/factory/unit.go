package factory

import (
	"fmt"
	"io"
	"strings"

	"cradle/internal/agent/hw"
)

// OpenUnit reaches a unit by its spec: its device directory (a simulated
// unit), then optional key=value words choosing its key store:
//
//	units/0001
//	units/0002 key-store=tpm tpm=127.0.0.1:2321 tpm-state=units/0002/tpm
//	units/0003 key-store=pkcs11 pkcs11-module=/usr/lib/softhsm/libsofthsm2.so pkcs11-token=se pkcs11-pin-source=file:pin
//
// The closer, when not nil, releases the key store.
func OpenUnit(spec string) (Unit, io.Closer, error) {
	words := strings.Fields(spec)
	if len(words) == 0 {
		return Unit{Spec: spec}, nil, fmt.Errorf("factory: empty unit spec")
	}
	ks := hw.KeyStoreSpec{}
	for _, w := range words[1:] {
		k, v, ok := strings.Cut(w, "=")
		if !ok || v == "" {
			return Unit{Spec: spec}, nil, fmt.Errorf("factory: unit %s: %q is not key=value", words[0], w)
		}
		switch k {
		case "key-store":
			ks.Kind = v
		case "tpm":
			ks.TPM = v
		case "tpm-state":
			ks.TPMState = v
		case "pkcs11-module":
			ks.PKCS11Module = v
		case "pkcs11-token":
			ks.PKCS11Token = v
		case "pkcs11-pin-source":
			ks.PKCS11PINSource = v
		default:
			return Unit{Spec: spec}, nil, fmt.Errorf("factory: unit %s: unknown option %q (key-store, tpm, tpm-state, pkcs11-module, pkcs11-token, pkcs11-pin-source)", words[0], k)
		}
	}
	dev, err := hw.OpenSimDevice(words[0])
	if err != nil {
		return Unit{Spec: spec}, nil, fmt.Errorf("factory: unit %s: %w", words[0], err)
	}
	keys, closer, err := hw.OpenKeyStore(ks, dev)
	if err != nil {
		return Unit{Spec: spec}, nil, fmt.Errorf("factory: unit %s: %w", words[0], err)
	}
	dev.Keys = keys
	return Unit{Spec: spec, Device: dev}, closer, nil
}
