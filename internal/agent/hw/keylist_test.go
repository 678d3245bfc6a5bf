package hw_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"cradle/internal/agent/hw"
	"cradle/internal/testkit"
)

// TestListKeys: the file and TPM stores list the keys they hold, sorted,
// and forget destroyed ones; the TPM store names its index files.
func TestListKeys(t *testing.T) {
	ctx := context.Background()
	for name, open := range map[string]func(t *testing.T) hw.KeyStore{
		"file": func(t *testing.T) hw.KeyStore {
			dev, err := hw.CreateSimDevice(filepath.Join(t.TempDir(), "unit"), "uid-1")
			if err != nil {
				t.Fatal(err)
			}
			return dev.Keys
		},
		"tpm": func(t *testing.T) hw.KeyStore {
			sw := testkit.StartSWTPM(t)
			state := filepath.Join(t.TempDir(), "tpm")
			ks := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), state)
			if got := ks.StoreFiles(); !slices.Contains(got, filepath.Join(state, "tpm-keys.json")) {
				t.Errorf("StoreFiles: %v", got)
			}
			return ks
		},
	} {
		t.Run(name, func(t *testing.T) {
			ks := open(t)
			l := ks.(hw.KeyLister)
			if got, err := l.ListKeys(ctx); err != nil || len(got) != 0 {
				t.Fatalf("empty store lists %v, %v", got, err)
			}
			for _, k := range []string{"ldevid-2", "idevid", "ldevid-10"} {
				if _, err := ks.CreateKey(ctx, k, ""); err != nil {
					t.Fatal(err)
				}
			}
			if err := ks.DestroyKey(ctx, "ldevid-2"); err != nil {
				t.Fatal(err)
			}
			got, err := l.ListKeys(ctx)
			if want := []string{"idevid", "ldevid-10"}; err != nil || !slices.Equal(got, want) {
				t.Errorf("ListKeys: %v, %v; want %v", got, err, want)
			}
		})
	}
}
