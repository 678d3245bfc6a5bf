//go:build !cgo

package kms_test

import (
	"context"
	"errors"
	"testing"

	"cradle/internal/kms"
)

func TestNoPKCS11WithoutCgo(t *testing.T) {
	uri := "pkcs11:token=t;object=o?module-path=" + softhsmModule + "&pin-value=1234"
	want := "kms: this build has no PKCS#11 support: build with cgo (a C compiler) to use pkcs11: keys"
	if _, err := kms.Open(context.Background(), uri, kms.Options{}); !errors.Is(err, kms.ErrNoPKCS11) || err.Error() != want {
		t.Errorf("Open: %v", err)
	}
	if _, err := kms.Generate(context.Background(), uri, "", kms.Options{}); !errors.Is(err, kms.ErrNoPKCS11) {
		t.Errorf("Generate: %v", err)
	}
	// A malformed URI is still reported as such.
	if _, err := kms.Open(context.Background(), "pkcs11:object=o", kms.Options{}); err == nil || errors.Is(err, kms.ErrNoPKCS11) {
		t.Errorf("Open of a malformed URI: %v", err)
	}
}

func TestDestroyNoPKCS11WithoutCgo(t *testing.T) {
	uri := "pkcs11:token=t;object=o?module-path=" + softhsmModule + "&pin-value=1234"
	if err := kms.Destroy(context.Background(), uri, kms.Options{}); !errors.Is(err, kms.ErrNoPKCS11) {
		t.Errorf("Destroy: %v", err)
	}
}
