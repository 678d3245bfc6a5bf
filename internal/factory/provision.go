package factory

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/pki"
)

// Unit is one unit on the line as the station reaches it.
type Unit struct {
	// Spec says how to reach the unit again (a device directory, a
	// fixture address); it is journaled, so that a unit interrupted by a
	// station crash can be found afterwards.
	Spec   string
	Device *hw.Device
}

// DeviceKeyName is the name of the device key in the unit's key store.
const DeviceKeyName = "idevid"

// Result is the outcome of one unit.
type Result struct {
	Record *cradle.TraceRecord
	Signed cradle.SignedTrace
	// ClaimCode is the claim code of a provisioned unit, for its label
	// (the record carries only its hash); "" for a failed unit.
	ClaimCode string
	// Err is the unit's failure (nil when provisioned). Provision returns
	// it as well.
	Err error
	// Total is the unit's wall time; HSM the part spent signing in the
	// HSM; Device the part spent in the unit's hardware (key store,
	// flash, fuses, identity partition); Journal the part spent writing
	// and syncing the journal.
	Total, HSM, Device, Journal time.Duration
}

// stepError is a unit's failure at a named step.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return fmt.Sprintf("step %s: %v", e.step, e.err) }
func (e *stepError) Unwrap() error { return e.err }

// FailedStep returns the step a unit failed at, or "".
func FailedStep(err error) string {
	var e *stepError
	if errors.As(err, &e) {
		return e.step
	}
	return ""
}

// Provision provisions one unit of a batch with a release (see the
// package doc for the steps). A unit that fails before allocate is left
// untouched and gets no record; after it, a failed record is journaled
// and the error names the step. Errors of the station itself (the HSM, the
// journal) are marked (IsStationError): a run should stop on them.
func (s *Station) Provision(ctx context.Context, b *cradle.Batch, rel *Release, u Unit) *Result {
	start := time.Now()
	hsm0, j0 := s.HSMTime(), s.cfg.Journal.WriteTime()
	res := &Result{}
	var devTime time.Duration
	dev := func(f func() error) error {
		t := time.Now()
		err := f()
		devTime += time.Since(t)
		return err
	}
	defer func() {
		res.Total, res.HSM, res.Device, res.Journal = time.Since(start), s.HSMTime()-hsm0, devTime, s.cfg.Journal.WriteTime()-j0
	}()

	// preflight: nothing is allocated or touched if the unit is not new.
	if err := rel.CheckFor(b, s.cfg.Profile); err != nil {
		res.Err = &stepError{"preflight", err}
		return res
	}
	var fuses hw.FuseValues
	if err := dev(func() (err error) { fuses, err = u.Device.Fuses.Read(ctx); return }); err != nil {
		res.Err = &stepError{"preflight", fmt.Errorf("read the unit's fuses: %w", err)}
		return res
	}
	if lc, err := hw.ParseLifecycle(fuses[hw.FuseLifecycle]); err != nil || lc != hw.LifecycleFactory {
		if err == nil {
			err = fmt.Errorf("the unit's lifecycle fuses say %s: it was provisioned already (re-provisioning is for units in rma, through the server's RMA flow)", lc)
		}
		res.Err = &stepError{"preflight", err}
		return res
	}
	if err := dev(func() error {
		_, err := u.Device.Keys.Key(ctx, DeviceKeyName)
		return err
	}); err == nil {
		res.Err = &stepError{"preflight", fmt.Errorf("the unit holds a device key %q already (from a factory-init run outside the station, or an interrupted attempt): the station creates the device key itself: wipe the unit's key store first", DeviceKeyName)}
		return res
	} else if !errors.Is(err, hw.ErrNotFound) {
		res.Err = &stepError{"preflight", fmt.Errorf("the unit's key store: %w", err)}
		return res
	}

	// allocate
	recID, err := newRecordID()
	if err != nil {
		res.Err = &errStation{err}
		return res
	}
	if err := s.ensureReserved(ctx, b); err != nil {
		res.Err = &errStation{err}
		return res
	}
	unit, ok, durable, err := s.cfg.Journal.StartAsync(b.ID, u.Spec, s.cfg.Operator, recID)
	if err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("factory: no serial reserved for batch %s", b.ID)
		}
		res.Err = &errStation{err}
		return res
	}
	rec := &cradle.TraceRecord{
		ID: recID, Batch: b.ID, Station: s.cfg.Name, Operator: s.cfg.Operator, Profile: s.cfg.Profile,
		Serial: unit.Serial, MAC: unit.MAC, Model: b.Model, HardwareRevision: b.HardwareRevision,
		StartedAt: s.now(), FirmwareVersion: rel.Version,
	}
	keyCreated := false
	fail := func(step string, err error) *Result {
		durable() // the failed record's own sync follows; collect the start's
		res.Err = &stepError{step, err}
		if keyCreated {
			if derr := dev(func() error { return u.Device.Keys.DestroyKey(ctx, DeviceKeyName) }); derr != nil && !errors.Is(derr, hw.ErrNotFound) {
				err = fmt.Errorf("%w; destroying the device key failed too: %v", err, derr)
				res.Err = &stepError{step, err}
			}
		}
		rec.Status, rec.FailedStep, rec.Reason = cradle.UnitFailed, step, truncateReason(err.Error())
		rec.IDevID, rec.IDevIDSerial, rec.IDevIDFingerprint = nil, "", ""
		if v, rerr := u.Device.Fuses.Read(ctx); rerr == nil {
			rec.Fuses = fuseHex(v)
		}
		if jerr := s.finish(rec, res); jerr != nil {
			res.Err = &errStation{fmt.Errorf("unit %s failed at %s (%v) and its record could not be journaled: %w", unit.Serial, step, err, jerr)}
		}
		return res
	}

	// device-key: factory-init on the unit.
	var fi *agent.FactoryInitResult
	if err := dev(func() (err error) {
		fi, err = agent.FactoryInit(ctx, u.Device, agent.FactoryInitOptions{KeyName: DeviceKeyName})
		return
	}); err != nil {
		return fail("device-key", err)
	}
	keyCreated = true
	rec.HardwareUID = fi.HardwareUID

	// csr
	csr, err := parseCSR(fi.CSR, fi.HardwareUID)
	if err != nil {
		return fail("csr", err)
	}

	// idevid
	cfg := pki.IDevIDConfig{Organization: s.cfg.Org}
	idevid, err := pki.Issue(ctx, s.cfg.ManufacturingCA, s.hsm, csr.PublicKey, &x509.Certificate{},
		append([]pki.Option{pki.KeyPolicy()}, pki.IDevID(cfg, unit.Serial, []byte(fi.HardwareUID), rec.StartedAt)...)...)
	if err != nil {
		if _, policy := errors.AsType[*pki.PolicyError](err); !policy {
			// The HSM failed: every unit after this one would too.
			fail("idevid", err)
			res.Err = &errStation{fmt.Errorf("unit %s: the manufacturing CA could not sign (is the HSM available?): %w", unit.Serial, err)}
			return res
		}
		return fail("idevid", err)
	}

	// identity: from here the serial leaves the station, so its start
	// entry must be durable.
	if err := durable(); err != nil {
		fail("identity", err)
		res.Err = &errStation{err}
		return res
	}
	bundle, err := s.identityBundle(idevid, unit, b)
	if err != nil {
		return fail("identity", err)
	}
	if err := dev(func() error { return u.Device.FactoryData.Write(ctx, bundle) }); err != nil {
		return fail("identity", err)
	}

	// firmware
	if err := dev(func() error {
		if _, err := u.Device.Slots.Write(ctx, hw.SlotBoot, bytes.NewReader(rel.Bootloader)); err != nil {
			return fmt.Errorf("bootloader: %w", err)
		}
		if _, err := u.Device.Slots.Write(ctx, hw.SlotA, bytes.NewReader(rel.Image)); err != nil {
			return fmt.Errorf("slot A: %w", err)
		}
		return u.Device.BootEnv.Set(ctx, map[string]string{"active_slot": string(hw.SlotA), "bootcount": "0", "upgrade_available": "0"})
	}); err != nil {
		return fail("firmware", err)
	}

	// fuses
	want := hw.FuseValues{
		hw.FuseImageKeyHash: rel.ImageKeyHash[:],
		hw.FuseSecureBoot:   {1},
		hw.FuseDebugLock:    {1},
	}
	for _, field := range []string{hw.FuseImageKeyHash, hw.FuseSecureBoot, hw.FuseDebugLock} {
		if err := dev(func() error { return u.Device.Fuses.Program(ctx, field, want[field]) }); err != nil {
			return fail("fuses", err)
		}
	}

	// verify
	if err := dev(func() error { return s.verifyUnit(ctx, u.Device, rel, want, bundle, idevid) }); err != nil {
		return fail("verify", err)
	}

	// lock
	provisioned, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	if err := dev(func() error {
		if err := u.Device.FactoryData.Lock(ctx); err != nil {
			return fmt.Errorf("lock the factory partition: %w", err)
		}
		if err := u.Device.Fuses.Program(ctx, hw.FuseLifecycle, provisioned); err != nil {
			return fmt.Errorf("lifecycle fuses: %w", err)
		}
		v, err := u.Device.Fuses.Read(ctx)
		if err != nil {
			return err
		}
		if !bytes.Equal(v[hw.FuseLifecycle], provisioned) {
			return fmt.Errorf("lifecycle fuses read back %x, want %x", v[hw.FuseLifecycle], provisioned)
		}
		fuses = v
		return nil
	}); err != nil {
		return fail("lock", err)
	}

	// record: with the hash of the claim code printed on the unit's label
	code, err := cradle.NewClaimCode()
	if err != nil {
		fail("record", err)
		res.Err = &errStation{fmt.Errorf("unit %s: draw its claim code (is the system's random source working?): %w", unit.Serial, err)}
		return res
	}
	fp := sha256.Sum256(idevid.Raw)
	rec.ClaimCodeHash = cradle.ClaimCodeHash(unit.Serial, code)
	rec.Status = cradle.UnitProvisioned
	rec.IDevID, rec.IDevIDSerial, rec.IDevIDFingerprint = idevid.Raw, cradle.SerialHex(idevid.SerialNumber), hex.EncodeToString(fp[:])
	rec.FirmwareDigest, rec.BootloaderDigest = hex.EncodeToString(rel.ImageDigest[:]), hex.EncodeToString(rel.BootloaderDigest[:])
	rec.Fuses = fuseHex(fuses)
	rec.Tests = []cradle.TestResult{
		{Name: "readback", Passed: true, Detail: "fuses, slot digests, identity files, device key"},
		{Name: "idevid-chain", Passed: true, Detail: "IDevID chains to the " + string(s.cfg.Profile) + " root"},
	}
	if err := s.finish(rec, res); err != nil {
		res.Err = &errStation{fmt.Errorf("unit %s is provisioned but its record could not be journaled: %w", unit.Serial, err)}
		return res
	}
	res.ClaimCode = code
	return res
}

// finish signs and journals a record.
func (s *Station) finish(rec *cradle.TraceRecord, res *Result) error {
	rec.FinishedAt = s.now()
	if rec.FinishedAt.Before(rec.StartedAt) {
		rec.FinishedAt = rec.StartedAt
	}
	signed, err := cradle.SignTrace(rec, s.sk)
	if err != nil {
		return err
	}
	if err := s.cfg.Journal.addRecord(signed); err != nil {
		return err
	}
	res.Record, res.Signed = rec, signed
	return nil
}

// parseCSR checks the unit's CSR: its signature, its key and its subject
// (the hardware UID).
func parseCSR(pemBytes []byte, uid string) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("the unit's CSR is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the unit's CSR: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the unit's CSR signature does not verify: %v", err)
	}
	if err := pki.KeyPolicy().ValidateKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("the unit's key: %v", err)
	}
	if csr.Subject.CommonName != uid {
		return nil, fmt.Errorf("the CSR names %q, the unit's hardware UID is %q", csr.Subject.CommonName, uid)
	}
	return csr, nil
}

// DeviceInfo is device.json in the identity bundle.
type DeviceInfo struct {
	Serial           string         `json:"serial"`
	MAC              string         `json:"mac"`
	Model            string         `json:"model"`
	HardwareRevision string         `json:"hardware_revision"`
	Batch            string         `json:"batch"`
	Profile          cradle.Profile `json:"profile"`
	Station          string         `json:"station"`
}

// The files of the identity bundle.
const (
	FileIDevID        = "idevid.pem"         // IDevID, then the manufacturing CA
	FileRoot          = "root.pem"           // the trust anchor
	FileCommandSigner = "command-signer.pem" // the command signer chain
	FileUpdateRoot    = "update-root.json"   // TUF root metadata
	FileDeviceInfo    = "device.json"
)

func (s *Station) identityBundle(idevid *x509.Certificate, u cradle.UnitAllocation, b *cradle.Batch) (map[string][]byte, error) {
	pemOf := func(certs ...*x509.Certificate) []byte {
		var out []byte
		for _, c := range certs {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return out
	}
	info, err := json.Marshal(DeviceInfo{Serial: u.Serial, MAC: u.MAC, Model: b.Model, HardwareRevision: b.HardwareRevision,
		Batch: b.ID, Profile: s.cfg.Profile, Station: s.cfg.Name})
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		FileIDevID:     pemOf(idevid, s.cfg.ManufacturingCA),
		FileRoot:       pemOf(s.cfg.Root),
		FileDeviceInfo: info,
	}
	if len(s.cfg.CommandSigner) > 0 {
		files[FileCommandSigner] = pemOf(s.cfg.CommandSigner...)
	}
	if s.cfg.UpdateRoot != nil {
		files[FileUpdateRoot] = s.cfg.UpdateRoot
	}
	return files, nil
}

// verifyUnit reads everything back.
func (s *Station) verifyUnit(ctx context.Context, d *hw.Device, rel *Release, want hw.FuseValues, bundle map[string][]byte, idevid *x509.Certificate) error {
	got, err := d.Fuses.Read(ctx)
	if err != nil {
		return err
	}
	for _, f := range slices.Sorted(maps.Keys(want)) {
		if !bytes.Equal(got[f], want[f]) {
			return fmt.Errorf("fuse %s reads back %x, want %x", f, got[f], want[f])
		}
	}
	for _, x := range []struct {
		slot hw.Slot
		want [32]byte
	}{{hw.SlotBoot, rel.BootloaderDigest}, {hw.SlotA, rel.ImageDigest}} {
		sum, err := d.Slots.Digest(ctx, x.slot)
		if err != nil {
			return err
		}
		if sum != x.want {
			return fmt.Errorf("slot %s reads back SHA-256 %x, want %x", x.slot, sum, x.want)
		}
	}
	files, _, err := d.FactoryData.Read(ctx)
	if err != nil {
		return err
	}
	if len(files) != len(bundle) {
		return fmt.Errorf("the factory partition holds %d files, %d were written", len(files), len(bundle))
	}
	for name, data := range bundle {
		if !bytes.Equal(files[name], data) {
			return fmt.Errorf("factory partition file %s reads back different", name)
		}
	}
	key, err := d.Keys.Key(ctx, DeviceKeyName)
	if err != nil {
		return fmt.Errorf("device key: %w", err)
	}
	if !publicKeyEqual(key.Public(), idevid.PublicKey) {
		return fmt.Errorf("the device key is not the IDevID's key")
	}
	// The chain: x509 checked the IDevID's signature against the
	// manufacturing CA's key when it was issued, and New checked the
	// manufacturing CA against the root; here the names and the bundle.
	if !bytes.Equal(idevid.RawIssuer, s.cfg.ManufacturingCA.RawSubject) || !bytes.Equal(idevid.AuthorityKeyId, s.cfg.ManufacturingCA.SubjectKeyId) {
		return fmt.Errorf("the IDevID is not issued by the manufacturing CA")
	}
	if !slices.Contains(idevid.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("the IDevID lacks the clientAuth extended key usage")
	}
	return nil
}

func fuseHex(v hw.FuseValues) map[string]string {
	out := make(map[string]string, len(v))
	for k, b := range v {
		out[k] = hex.EncodeToString(b)
	}
	return out
}

func truncateReason(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "…"
	}
	return s
}
