package pki_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki"
)

// TestRetireDeviceCA: the refusals of RetireDeviceCA, what CAStatus says
// before and after, and that retirement survives WriteHierarchy and
// LoadHierarchy, leaves the CA out of cacerts and the accepted issuers,
// and is kept by a later rotation.
func TestRetireDeviceCA(t *testing.T) {
	p := newPKI(t, pki.ProfileTest)
	old := p.issueLDevID(t, "SN-OLD", t0)
	later := t0.Add(30 * 24 * time.Hour)
	if err := p.h.RetireDeviceCA("device-ca", pki.Dependents{}, later); cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(err.Error(), "current device CA") {
		t.Fatalf("retiring the only device CA: %v", err)
	}
	if _, err := p.h.RotateDeviceCA(context.Background(), p.key(t, pki.NameRoot), p.keys.get, hostname, later); err != nil {
		t.Fatal(err)
	}
	live := pki.Dependents{Live: 3, LastExpiry: old.NotAfter}
	for _, tc := range []struct {
		name, ca string
		deps     pki.Dependents
		code     string
		want     string
	}{
		{"unknown", "device-ca-7", pki.Dependents{}, cradle.EINVALID, `"device-ca-7" is not a device CA`},
		{"manufacturing", pki.NameManufacturingCA, pki.Dependents{}, cradle.EINVALID, "is not a device CA"},
		{"current", "device-ca-2", pki.Dependents{}, cradle.EINVALID, "device-ca-2 is the current device CA"},
		{"dependents", "device-ca", live, cradle.EINVALID, "3 unexpired, unrevoked certificate(s) chain to it, the last expiring at " + old.NotAfter.UTC().Format(time.RFC3339)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.h.RetireDeviceCA(tc.ca, tc.deps, later)
			if cradle.ErrorCode(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %s %q", err, tc.code, tc.want)
			}
		})
	}
	st := p.h.CAStatus(map[string]pki.Dependents{"device-ca": live})
	if len(st) != 2 || st[0].Retirable || st[0].RetirableAt == nil || !st[0].RetirableAt.Equal(old.NotAfter) || !st[1].Current || st[1].Retirable {
		t.Fatalf("status with dependents: %+v", st)
	}
	if st := p.h.CAStatus(nil); !st[0].Retirable || st[1].Retirable {
		t.Fatalf("status without dependents: %+v", st)
	}

	at := later.Add(100 * 24 * time.Hour)
	if err := p.h.RetireDeviceCA("device-ca", pki.Dependents{}, at); err != nil {
		t.Fatal(err)
	}
	if err := p.h.RetireDeviceCA("device-ca", pki.Dependents{}, at); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("retiring twice: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.WriteHierarchy(dir, p.h); err != nil {
		t.Fatal(err)
	}
	h, err := pki.LoadHierarchy(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Retired["device-ca"]; !got.Equal(at) || len(h.Retired) != 1 {
		t.Fatalf("retired after reload: %v", h.Retired)
	}
	if _, ok := h.AcceptedCAs()["device-ca"]; ok || len(h.AcceptedCAs()) != 2 {
		t.Errorf("accepted CAs: %v", h.AcceptedCAs())
	}
	if cas := h.CACerts(); len(cas) != 3 || !cas[0].Equal(h.DeviceCAs[1]) {
		t.Errorf("cacerts serves %d certificates", len(cas))
	}
	if _, ok := h.IssuingCAs()["device-ca"]; !ok {
		t.Error("the retired CA is no longer an issuing CA (its CRL would stop)")
	}
	if err := h.CheckNotRetired(append([]*x509.Certificate{old}, h.DeviceCAs[0], h.Root)); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED || !strings.Contains(err.Error(), "device-ca, which is retired") {
		t.Errorf("a chain through the retired CA: %v", err)
	}
	if _, err := h.RotateDeviceCA(context.Background(), p.key(t, pki.NameRoot), p.keys.get, hostname, at); err != nil || !h.IsRetired("device-ca") {
		t.Fatalf("after a second rotation: %v, retired %v", err, h.Retired)
	}

	// A damaged retired.json is an error naming it.
	for _, bad := range []string{`{"device-ca-2": "2030-01-01T00:00:00Z"}`, `{"device-ca": "yesterday"}`, `[`} {
		d := filepath.Join(t.TempDir(), "pki")
		if err := pki.WriteHierarchy(d, p.h); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, pki.RetiredFile), []byte(bad), 0o644)
		if _, err := pki.LoadHierarchy(d); err == nil || !strings.Contains(err.Error(), pki.RetiredFile) {
			t.Errorf("LoadHierarchy with retired.json %s: %v", bad, err)
		}
	}
}
