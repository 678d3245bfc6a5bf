package kms_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"cradle/internal/kms"
)

func TestDestroyFileKey(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ca.key")
	if _, err := kms.Generate(ctx, path, kms.ECDSAP256, kms.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := kms.Destroy(ctx, "file:"+path, kms.Options{}); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the key file is still there after Destroy: %v", err)
	}
	if _, err := kms.Open(ctx, path, kms.Options{}); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Errorf("Open after Destroy: %v, want ErrKeyNotFound", err)
	}
	if err := kms.Destroy(ctx, path, kms.Options{}); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Errorf("second Destroy: %v, want ErrKeyNotFound", err)
	}
	// A directory at the path is not removed.
	dir := t.TempDir()
	if err := kms.Destroy(ctx, dir, kms.Options{}); err == nil {
		t.Errorf("Destroy of a directory succeeded")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("Destroy removed a directory: %v", err)
	}
}
