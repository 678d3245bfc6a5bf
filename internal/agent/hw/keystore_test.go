package hw_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"cradle/internal/agent/hw"
	"cradle/internal/kms"
	"cradle/internal/testkit"
)

func TestOpenKeyStore(t *testing.T) {
	ctx := context.Background()
	dev := newDevice(t)

	ks, closer, err := hw.OpenKeyStore(hw.KeyStoreSpec{}, dev)
	if err != nil {
		t.Fatalf("OpenKeyStore(file): %v", err)
	}
	if ks != dev.Keys || closer == nil {
		t.Errorf("OpenKeyStore(file) = %T, closer %v; want the unit's own store and a closer", ks, closer)
	}

	for _, spec := range []hw.KeyStoreSpec{
		{Kind: "nvram"},
		{Kind: "file", TPM: "/dev/tpmrm0"},
		{Kind: "tpm", PKCS11Token: "se"},
		{Kind: "pkcs11", PKCS11Module: testkit.SoftHSMModule, PKCS11Token: "se"},
	} {
		if _, _, err := hw.OpenKeyStore(spec, dev); !errors.Is(err, hw.ErrInvalid) {
			t.Errorf("OpenKeyStore(%+v): %v, want ErrInvalid", spec, err)
		}
	}
	if _, _, err := hw.OpenKeyStore(hw.KeyStoreSpec{}, nil); !errors.Is(err, hw.ErrInvalid) {
		t.Errorf("OpenKeyStore(file) without a unit: %v, want ErrInvalid", err)
	}

	t.Run("tpm", func(t *testing.T) {
		sw := testkit.StartSWTPM(t)
		ks, closer, err := hw.OpenKeyStore(hw.KeyStoreSpec{Kind: "tpm", TPM: sw.Addr}, dev)
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		if _, ok := ks.(*hw.TPMKeyStore); !ok {
			t.Fatalf("OpenKeyStore(tpm) = %T", ks)
		}
		if _, err := ks.CreateKey(ctx, "idevid", ""); err != nil {
			t.Fatal(err)
		}
		// The index went into the unit's directory by default.
		if _, err := os.Stat(filepath.Join(dev.Sim.Dir(), "tpm", "tpm-keys.json")); err != nil {
			t.Errorf("no index in the unit's tpm directory: %v", err)
		}
		if _, err := dev.Sim.Key(ctx, "idevid"); !errors.Is(err, hw.ErrNotFound) {
			t.Errorf("the TPM key landed in the unit's file store: %v", err)
		}
	})

	t.Run("tpm device", func(t *testing.T) {
		ks, _, err := hw.OpenKeyStore(hw.KeyStoreSpec{Kind: "tpm", TPM: filepath.Join(t.TempDir(), "tpmrm0"), TPMState: t.TempDir()}, dev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ks.CreateKey(ctx, "idevid", ""); err == nil {
			t.Errorf("CreateKey on a missing TPM device succeeded")
		}
	})

	t.Run("pkcs11", func(t *testing.T) {
		h := testkit.NewSoftHSM(t, "se")
		ks, closer, err := hw.OpenKeyStore(hw.KeyStoreSpec{Kind: "pkcs11", PKCS11Module: h.Module, PKCS11Token: "se", PKCS11PINSource: "file:" + h.PINFile}, dev)
		if errors.Is(err, kms.ErrNoPKCS11) {
			t.Skip("built without cgo")
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ks.CreateKey(ctx, "idevid", ""); err != nil {
			t.Fatal(err)
		}
		if err := closer.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}
