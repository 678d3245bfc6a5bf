package factory

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/pki"
)

// rig is a station working offline from serials reserved in its journal:
// everything real but the server.
type rig struct {
	st    *Station
	batch *cradle.Batch
	rel   *Release
	h     *pki.Hierarchy
	keys  map[string]crypto.Signer
}

// memKeys makes in-memory keys on demand.
func memKeys(t testing.TB) (pki.KeyFunc, map[string]crypto.Signer) {
	keys := map[string]crypto.Signer{}
	return func(name string) (crypto.Signer, error) {
		if k, ok := keys[name]; ok {
			return k, nil
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		keys[name] = k
		return k, err
	}, keys
}

// newHierarchy makes a PKI of profile.
func newHierarchy(t testing.TB, profile string, keyf pki.KeyFunc) *pki.Hierarchy {
	t.Helper()
	h, err := pki.Init(context.Background(), pki.InitOptions{Profile: profile, Org: "Acme", Hostnames: []string{"127.0.0.1"}, Keys: keyf})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// stationCert issues a station certificate from the device CA.
func stationCert(t testing.TB, h *pki.Hierarchy, caKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	c, err := pki.Issue(context.Background(), h.DeviceCA(), caKey, key.Public(), &x509.Certificate{}, pki.Station("Acme", "line-1", time.Now(), 0)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newRig builds a station of profile with reserve units of a batch
// reserved; mfgKey and stationKey default to in-memory keys.
func newRig(t testing.TB, profile cradle.Profile, reserve int, mfgKey, stationKey crypto.Signer) *rig {
	t.Helper()
	keyf, keys := memKeys(t)
	if mfgKey != nil {
		keys[pki.NameManufacturingCA] = mfgKey
	}
	h := newHierarchy(t, string(profile), keyf)
	if stationKey == nil {
		stationKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	cert := stationCert(t, h, keys[pki.NameDeviceCA], stationKey)
	j, err := OpenJournal(filepath.Join(t.TempDir(), JournalFile), func(s cradle.SignedTrace) error { return s.Verify(cert) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	b := &cradle.Batch{ID: "B-1", Model: "sensor-x", HardwareRevision: "C", Quantity: reserve, FirmwareVersion: "1.4.2", Profile: profile, SerialPattern: "SX-{seq:05}"}
	if err := j.AddBatch(b); err != nil {
		t.Fatal(err)
	}
	units := make([]cradle.UnitAllocation, reserve)
	for i := range units {
		units[i] = cradle.UnitAllocation{Serial: fmt.Sprintf("SX-%05d", i+1), MAC: cradle.FormatMAC(0x02005e100000 + uint64(i)), Batch: b.ID}
	}
	if err := j.Reserve(units); err != nil {
		t.Fatal(err)
	}
	st, err := New(Config{Name: "line-1", Profile: profile, Operator: "ada", Org: "Acme", StationKey: stationKey, StationCert: cert,
		ManufacturingCA: h.ManufacturingCA, ManufacturingKey: keys[pki.NameManufacturingCA], Root: h.Root,
		CommandSigner: []*x509.Certificate{h.CommandSigner, h.Root}, Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{st: st, batch: b, rel: testRelease(t, string(profile)), h: h, keys: keys}
}

func testRelease(t testing.TB, profile string) *Release {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	files := map[string][]byte{
		"image": make([]byte, 64<<10), "boot": []byte("bootloader"),
		"key.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
	}
	rel, err := parseRelease([]byte("model: sensor-x\nversion: 1.4.2\nprofile: "+profile+"\nhardware_revisions: [C]\nimage: image\nbootloader: boot\nimage_key: key.pem\n"),
		func(n string) ([]byte, error) { return files[n], nil })
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

func newUnit(t testing.TB, uid string) Unit {
	t.Helper()
	dir := filepath.Join(t.TempDir(), uid)
	d, err := hw.CreateSimDevice(dir, uid)
	if err != nil {
		t.Fatal(err)
	}
	return Unit{Spec: dir, Device: d}
}

// failingFuses fails the n-th Program (from 1), as a fuse write that
// fails midway through the fuse step.
type failingFuses struct {
	hw.Fuses
	n, calls int
}

func (f *failingFuses) Program(ctx context.Context, field string, v []byte) error {
	f.calls++
	if f.calls == f.n {
		return fmt.Errorf("fuse %s: programming voltage dropped", field)
	}
	return f.Fuses.Program(ctx, field, v)
}

// TestFuseWriteFailsMidway: the second fuse write fails; the unit is
// failed at "fuses" with the reason, its key destroyed, its lifecycle
// still factory, its serial used; the next unit gets the next serial.
func TestFuseWriteFailsMidway(t *testing.T) {
	r := newRig(t, cradle.ProfileTest, 3, nil, nil)
	ctx := context.Background()
	u := newUnit(t, "UID-1")
	u.Device.Fuses = &failingFuses{Fuses: u.Device.Fuses, n: 2}
	res := r.st.Provision(ctx, r.batch, r.rel, u)
	if res.Err == nil || FailedStep(res.Err) != "fuses" || IsStationError(res.Err) {
		t.Fatalf("Provision: %v (step %q)", res.Err, FailedStep(res.Err))
	}
	rec := res.Record
	if rec == nil || rec.Status != cradle.UnitFailed || rec.FailedStep != "fuses" || !strings.Contains(rec.Reason, "programming voltage dropped") || rec.Serial != "SX-00001" {
		t.Fatalf("record: %+v", rec)
	}
	if rec.Fuses[hw.FuseImageKeyHash] == strings.Repeat("0", 64) || rec.Fuses[hw.FuseSecureBoot] != "00" {
		t.Errorf("the record's fuses should show the first write done and the second not: %v", rec.Fuses)
	}
	if _, err := u.Device.Keys.Key(ctx, DeviceKeyName); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("device key after the failure: %v, want destroyed", err)
	}
	v, _ := u.Device.Fuses.Read(ctx)
	if lc, _ := hw.ParseLifecycle(v[hw.FuseLifecycle]); lc != hw.LifecycleFactory {
		t.Errorf("lifecycle %s after a failure", lc)
	}
	if p := r.st.Journal().Pending(); len(p) != 1 || p[0].Record.Status != cradle.UnitFailed {
		t.Errorf("journal: %v", p)
	}
	// The same unit, repaired, is provisioned as a new unit: a new serial.
	u.Device.Fuses = u.Device.Sim
	res = r.st.Provision(ctx, r.batch, r.rel, u)
	if res.Err != nil || res.Record.Serial != "SX-00002" {
		t.Fatalf("second attempt: %v %+v", res.Err, res.Record)
	}
	// Provisioned: refused untouched the next time.
	res = r.st.Provision(ctx, r.batch, r.rel, u)
	if FailedStep(res.Err) != "preflight" || res.Record != nil || !strings.Contains(res.Err.Error(), "provisioned already") {
		t.Fatalf("re-provisioning: %v", res.Err)
	}
	// A unit that holds a device key already is refused untouched.
	k := newUnit(t, "UID-2")
	if _, err := k.Device.Keys.CreateKey(ctx, DeviceKeyName, hw.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if res = r.st.Provision(ctx, r.batch, r.rel, k); FailedStep(res.Err) != "preflight" || !strings.Contains(res.Err.Error(), "holds a device key") {
		t.Fatalf("unit with a key: %v", res.Err)
	}
	if _, err := k.Device.Keys.Key(ctx, DeviceKeyName); err != nil {
		t.Errorf("the refused unit lost its key: %v", err)
	}
	if r.st.Journal().Free(r.batch.ID) != 1 {
		t.Errorf("a refused unit used a serial")
	}
}

// brokenHSM is an HSM that went away.
type brokenHSM struct{ crypto.Signer }

func (b brokenHSM) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("pkcs11: CKR_DEVICE_REMOVED")
}

// TestHSMUnavailable: the manufacturing CA cannot sign; the unit is
// failed and its key destroyed, and the run stops there.
func TestHSMUnavailable(t *testing.T) {
	mfg, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r := newRig(t, cradle.ProfileTest, 3, mfg, nil)
	r.st.hsm.Signer = brokenHSM{mfg}
	units := []Unit{newUnit(t, "UID-1"), newUnit(t, "UID-2")}
	i := 0
	stats, _, err := r.st.Run(context.Background(), r.batch.ID, r.rel, func() (Unit, bool, error) {
		if i == len(units) {
			return Unit{}, false, nil
		}
		i++
		return units[i-1], true, nil
	}, nil)
	if err == nil || !IsStationError(err) || !strings.Contains(err.Error(), "is the HSM available") || stats.Units != 1 || stats.Failed != 1 {
		t.Fatalf("Run: %+v, %v", stats, err)
	}
	if _, err := units[0].Device.Keys.Key(context.Background(), DeviceKeyName); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("key of the unit the HSM failed: %v", err)
	}
	if _, err := units[1].Device.Keys.Key(context.Background(), DeviceKeyName); !errors.Is(err, hw.ErrNotFound) {
		t.Errorf("the run went on to the next unit")
	}
	recs := r.st.Journal().Records()
	if len(recs) != 1 || recs[0].Record.FailedStep != "idevid" {
		t.Errorf("records: %+v", recs)
	}
}

// TestProfileSeparation: a station refuses certificates, batches and
// firmware of the other profile, both ways.
func TestProfileSeparation(t *testing.T) {
	for _, p := range []cradle.Profile{cradle.ProfileTest, cradle.ProfileProduction} {
		other := cradle.ProfileProduction
		if p == other {
			other = cradle.ProfileTest
		}
		t.Run(string(p), func(t *testing.T) {
			r := newRig(t, p, 1, nil, nil)
			keyf, keys := memKeys(t)
			foreign := newHierarchy(t, string(other), keyf)
			cfg := r.st.cfg
			cfg.Root, cfg.ManufacturingCA, cfg.ManufacturingKey = foreign.Root, foreign.ManufacturingCA, keys[pki.NameManufacturingCA]
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "a "+string(p)+" station refuses") {
				t.Errorf("%s root at a %s station: %v", other, p, err)
			}
			if err := testRelease(t, string(other)).CheckFor(r.batch, p); err == nil || !strings.Contains(err.Error(), string(other)+" firmware refused by a "+string(p)+" station") {
				t.Errorf("%s firmware at a %s station: %v", other, p, err)
			}
			b := *r.batch
			b.ID, b.Profile = "B-other", other
			r.st.Journal().AddBatch(&b)
			if _, err := r.st.Batch(context.Background(), "B-other"); err == nil || !strings.Contains(err.Error(), "refuses it") {
				t.Errorf("%s batch at a %s station: %v", other, p, err)
			}
			// The station's own profile goes through.
			res := r.st.Provision(context.Background(), r.batch, r.rel, newUnit(t, "UID-1"))
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			if test := pki.IsTestCertificate(mustCert(t, res.Record.IDevID)); test != (p == cradle.ProfileTest) {
				t.Errorf("a %s station issued an IDevID with test mark %v", p, test)
			}
		})
	}
}

func mustCert(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// FuzzRelease: release.yaml from outside is parsed or refused.
func FuzzRelease(f *testing.F) {
	f.Add([]byte("model: m\nversion: 1\nprofile: test\nhardware_revisions: [A]\nimage: i\nbootloader: b\nimage_key: k\n"))
	f.Add([]byte("model: m\nprofile: nope\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// No file can be read, so no release can be accepted.
		if r, err := parseRelease(b, func(string) ([]byte, error) { return nil, os.ErrNotExist }); err == nil {
			t.Fatalf("parseRelease accepted %q without its image files: %+v", b, r)
		}
	})
}

// FuzzStationFile: station.yaml is parsed or refused.
func FuzzStationFile(f *testing.F) {
	f.Add([]byte("name: line-1\nprofile: test\nserver: http://x\nstation_key: k\nmanufacturing_ca_key: m\n"))
	f.Add([]byte("name: ../x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := parseStationFile(b)
		if err != nil {
			return
		}
		// What was accepted is written back by WriteStationFile: it must
		// read again as the same file.
		dir := t.TempDir()
		if err := WriteStationFile(dir, sf); err != nil {
			t.Fatalf("WriteStationFile: %v", err)
		}
		again, err := ReadStationFile(dir)
		if err != nil {
			t.Fatalf("accepted %q, but not what WriteStationFile wrote of it: %v", b, err)
		}
		if *again != *sf {
			t.Fatalf("round trip changed the station file: %+v, then %+v", sf, again)
		}
	})
}
