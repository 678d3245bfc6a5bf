package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// factoryKit is one tenant's factory: a store, a CA that issues station
// certificates and IDevIDs, and a station key that signs records.
type factoryKit struct {
	t       *testing.T
	e       *Env
	svc     *sqlstore.FactoryService
	ca      *testCA
	tenant  *cradle.Tenant
	admin   context.Context
	factory context.Context
	key     *ecdsa.PrivateKey
	n       int
}

func newFactoryKit(t *testing.T, e *Env, tenant string) *factoryKit {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tn, admin := e.Tenant(tenant, cradle.RoleAdmin)
	return &factoryKit{t: t, e: e, svc: sqlstore.NewFactoryService(e.DB), ca: newTestCA(t), tenant: tn, admin: admin,
		factory: e.As(tn.ID, cradle.RoleFactory), key: key}
}

func (k *factoryKit) as(role cradle.Role) context.Context { return k.e.As(k.tenant.ID, role) }

// batch creates a batch of the tenant.
func (k *factoryKit) batch(id string, quantity int, profile cradle.Profile) *cradle.Batch {
	k.t.Helper()
	b, err := k.svc.CreateBatch(k.admin, cradle.BatchCreate{ID: id, Model: "gw-1", HardwareRevision: "rev-b", Quantity: quantity,
		FirmwareVersion: "1.0.0", Profile: profile, SerialPattern: "CR-" + id + "-{seq:04}"})
	if err != nil {
		k.t.Fatalf("create batch %s: %v", id, err)
	}
	return b
}

// stationIssue returns an Issue function that certifies the kit's station
// key under the CA.
func (k *factoryKit) stationIssue(name string) func(context.Context) (*x509.Certificate, error) {
	return func(context.Context) (*x509.Certificate, error) {
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{SerialNumber: serial.Add(serial, big.NewInt(1)), Subject: pkix.Name{CommonName: name},
			NotBefore: Epoch.Add(-time.Hour), NotAfter: Epoch.Add(5 * 365 * 24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, k.ca.cert, &k.key.PublicKey, k.ca.key)
		if err != nil {
			return nil, err
		}
		return x509.ParseCertificate(der)
	}
}

// station enrolls a station of the tenant.
func (k *factoryKit) station(name string, profile cradle.Profile) *cradle.Station {
	k.t.Helper()
	st, err := k.svc.EnrollStation(k.admin, cradle.StationEnroll{Name: name, Profile: profile, TokenID: "tok_" + name, Issue: k.stationIssue(name)})
	if err != nil {
		k.t.Fatalf("enroll station %s: %v", name, err)
	}
	return st
}

// macRange adds a block to the tenant's pool.
func (k *factoryKit) macRange(first, last string) {
	k.t.Helper()
	if _, err := k.svc.AddMACRange(k.admin, first, last); err != nil {
		k.t.Fatalf("add MAC range %s-%s: %v", first, last, err)
	}
}

func (k *factoryKit) allocate(batch, station string, n int) []cradle.UnitAllocation {
	k.t.Helper()
	units, err := k.svc.AllocateUnits(k.factory, batch, station, n)
	if err != nil {
		k.t.Fatalf("allocate %d units of %s to %s: %v", n, batch, station, err)
	}
	if len(units) != n {
		k.t.Fatalf("allocated %d units, want %d", len(units), n)
	}
	return units
}

// record returns a signed trace record of a unit, decoded from its
// payload as a server receiving it would, with a fresh IDevID.
func (k *factoryKit) record(u cradle.UnitAllocation, station string, status cradle.UnitStatus) (*cradle.TraceRecord, cradle.SignedTrace) {
	k.t.Helper()
	k.n++
	b, err := k.svc.FindBatch(k.admin, u.Batch)
	if err != nil {
		k.t.Fatal(err)
	}
	now := k.e.Clock.Now()
	r := &cradle.TraceRecord{ID: fmt.Sprintf("rec-%s-%d", u.Serial, k.n), Batch: u.Batch, Station: station, Operator: "alice",
		Profile: b.Profile, Serial: u.Serial, MAC: u.MAC, HardwareUID: "uid-" + u.Serial, Model: b.Model, HardwareRevision: b.HardwareRevision,
		RMA: u.RMA, Status: status, StartedAt: now, FinishedAt: now.Add(90 * time.Second), FirmwareVersion: b.FirmwareVersion,
		Fuses: map[string]string{"secure_boot": "01"}, Tests: []cradle.TestResult{{Name: "radio", Passed: status == cradle.UnitProvisioned}}}
	if status == cradle.UnitProvisioned {
		idev, err := k.ca.issue(k.t, k.e, 100*365*24*time.Hour)(context.Background(), &cradle.Device{Serial: u.Serial})
		if err != nil {
			k.t.Fatal(err)
		}
		sum := sha256.Sum256(idev.Raw)
		r.IDevID, r.IDevIDSerial, r.IDevIDFingerprint = idev.Raw, cradle.SerialHex(idev.SerialNumber), hex.EncodeToString(sum[:])
		r.FirmwareDigest = hex.EncodeToString(sum[:])
	} else {
		r.FailedStep, r.Reason = "fuses", "secure-boot fuse read back 00 after write"
	}
	return k.sign(r)
}

// sign signs r with the station key and decodes it back.
func (k *factoryKit) sign(r *cradle.TraceRecord) (*cradle.TraceRecord, cradle.SignedTrace) {
	k.t.Helper()
	signed, err := cradle.SignTrace(r, k.key)
	if err != nil {
		k.t.Fatal(err)
	}
	got, err := signed.Record()
	if err != nil {
		k.t.Fatal(err)
	}
	return got, signed
}

// upload records a trace and fails unless it is stored anew.
func (k *factoryKit) upload(r *cradle.TraceRecord, signed cradle.SignedTrace) *cradle.StoredTrace {
	k.t.Helper()
	st, created, err := k.svc.RecordTrace(k.factory, r, signed)
	if err != nil || !created {
		k.t.Fatalf("record trace %s: created %v, %v", r.ID, created, err)
	}
	return st
}

func (k *factoryKit) device(serial string) *cradle.Device {
	k.t.Helper()
	d, err := k.e.Devices.FindDeviceBySerial(k.admin, serial)
	if err != nil {
		k.t.Fatal(err)
	}
	return d
}

func testFactoryBatches(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	b := k.batch("B1", 10, cradle.ProfileTest)
	if b.Allocated != 0 || b.Open() != 10 || b.CreatedBy == "" || !b.CreatedAt.Equal(Epoch) {
		t.Errorf("new batch %+v", b)
	}
	got, err := k.svc.FindBatch(k.as(cradle.RoleAuditor), "B1")
	if err != nil || got.SerialPattern != "CR-B1-{seq:04}" || got.Model != "gw-1" || got.Profile != cradle.ProfileTest || got.Quantity != 10 {
		t.Errorf("find batch: %+v, %v", got, err)
	}
	_, err = k.svc.CreateBatch(k.admin, cradle.BatchCreate{ID: "B1", Model: "gw-1", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1", Profile: cradle.ProfileTest, SerialPattern: "X-{seq}"})
	wantCode(t, err, cradle.ECONFLICT, "B1")
	_, err = k.svc.CreateBatch(k.admin, cradle.BatchCreate{ID: "B2", Model: "gw-1", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1", Profile: cradle.ProfileTest, SerialPattern: "no-placeholder"})
	wantCode(t, err, cradle.EINVALID, "{seq}")
	_, err = k.svc.FindBatch(k.admin, "B404")
	wantCode(t, err, cradle.ENOTFOUND, "B404")

	// Newest first, a page at a time.
	e.Clock.Add(time.Second)
	k.batch("B2", 5, cradle.ProfileProduction)
	e.Clock.Add(time.Second)
	k.batch("B3", 5, cradle.ProfileTest)
	var ids []string
	cursor := ""
	for range 4 {
		page, next, err := k.svc.FindBatches(k.admin, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page {
			ids = append(ids, b.ID)
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	if fmt.Sprint(ids) != "[B3 B2 B1]" {
		t.Errorf("batches newest first: %v", ids)
	}
	_, _, err = k.svc.FindBatches(k.admin, "garbage", 2)
	wantCode(t, err, cradle.EINVALID)

	// Another tenant has its own batch ids and sees none of these.
	other := newFactoryKit(t, e, "globex")
	_, err = other.svc.FindBatch(other.admin, "B1")
	wantCode(t, err, cradle.ENOTFOUND)
	other.batch("B1", 3, cradle.ProfileTest)
	if page, _, err := other.svc.FindBatches(other.admin, "", 0); err != nil || len(page) != 1 || page[0].Quantity != 3 {
		t.Errorf("other tenant's batches: %v, %v", page, err)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = 'factory.batch.create'`, k.tenant.ID); n != 3 {
		t.Errorf("%d factory.batch.create audit entries, want 3", n)
	}
}

func testFactoryMACRanges(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	r, err := k.svc.AddMACRange(k.admin, "02:00:5E:10:00:00", "02-00-5e-10-00-09")
	if err != nil || r.First != "02:00:5e:10:00:00" || r.Last != "02:00:5e:10:00:09" || r.Used != 0 {
		t.Fatalf("add range: %+v, %v", r, err)
	}
	_, err = k.svc.AddMACRange(k.admin, "02:00:5e:10:00:09", "02:00:5e:10:00:00")
	wantCode(t, err, cradle.EINVALID, "after")
	_, err = k.svc.AddMACRange(k.admin, "02:00:5e:10:00:05", "02:00:5e:10:00:20")
	wantCode(t, err, cradle.ECONFLICT, "overlaps")
	_, err = k.svc.AddMACRange(k.admin, "not-a-mac", "02:00:5e:10:00:20")
	wantCode(t, err, cradle.EINVALID)

	// No tenant may take addresses another tenant owns.
	other := newFactoryKit(t, e, "globex")
	for _, rg := range [][2]string{{"02:00:5e:10:00:09", "02:00:5e:10:00:0f"}, {"02:00:5e:0f:ff:ff", "02:00:5e:10:00:00"}, {"02:00:5e:00:00:00", "02:00:5e:ff:ff:ff"}} {
		_, err = other.svc.AddMACRange(other.admin, rg[0], rg[1])
		wantCode(t, err, cradle.ECONFLICT, "another tenant")
	}
	other.macRange("02:00:5e:10:00:0a", "02:00:5e:10:00:0f")
	k.macRange("02:00:5e:20:00:00", "02:00:5e:20:00:00")

	ranges, err := k.svc.MACRanges(k.as(cradle.RoleAuditor))
	if err != nil || len(ranges) != 2 || ranges[0].First != "02:00:5e:10:00:00" || ranges[1].Last != "02:00:5e:20:00:00" {
		t.Fatalf("ranges: %v, %v", ranges, err)
	}
	if ranges, err := other.svc.MACRanges(other.admin); err != nil || len(ranges) != 1 || ranges[0].First != "02:00:5e:10:00:0a" {
		t.Errorf("other tenant's ranges: %v, %v", ranges, err)
	}

	// Used counts what the station took, across blocks in address order.
	k.batch("B1", 20, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	units := k.allocate("B1", "st-1", 11)
	if units[0].MAC != "02:00:5e:10:00:00" || units[9].MAC != "02:00:5e:10:00:09" || units[10].MAC != "02:00:5e:20:00:00" {
		t.Errorf("MACs taken out of order: %v", units)
	}
	if ranges, err = k.svc.MACRanges(k.admin); err != nil || len(ranges) != 2 {
		t.Fatalf("ranges after 11 units: %v, %v", ranges, err)
	}
	if ranges[0].Used != 10 || ranges[1].Used != 1 {
		t.Errorf("used after 11 units: %d and %d, want 10 and 1", ranges[0].Used, ranges[1].Used)
	}
	_, err = k.svc.AllocateUnits(k.factory, "B1", "st-1", 1)
	wantCode(t, err, cradle.ECONFLICT, "MAC pool exhausted", "cradle factory mac-range add")
	k.macRange("02:00:5e:30:00:00", "02:00:5e:30:00:ff")
	if u := k.allocate("B1", "st-1", 1); u[0].MAC != "02:00:5e:30:00:00" || u[0].Serial != "CR-B1-0012" {
		t.Errorf("after a new range: %+v", u[0])
	}

	// Two tenants adding the same block at once: exactly one gets it.
	for i := range 5 {
		first, last := fmt.Sprintf("0e:00:00:00:%02x:00", i), fmt.Sprintf("0e:00:00:00:%02x:ff", i)
		errs := make(chan error, 2)
		for _, kit := range []*factoryKit{k, other} {
			go func() { _, err := kit.svc.AddMACRange(kit.admin, first, last); errs <- err }()
		}
		err1, err2 := <-errs, <-errs
		if (err1 == nil) == (err2 == nil) || cradle.ErrorCode(errors.Join(err1, err2)) != cradle.ECONFLICT {
			t.Errorf("block %s-%s added by two tenants at once: %v, %v; want one success and one ECONFLICT", first, last, err1, err2)
		}
	}
}

func testFactoryStations(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	st := k.station("line1-st1", cradle.ProfileProduction)
	cert, err := x509.ParseCertificate(st.DER)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(st.DER)
	if st.CertSerial != cradle.SerialHex(cert.SerialNumber) || st.Fingerprint != hex.EncodeToString(sum[:]) || st.TokenID != "tok_line1-st1" ||
		st.Profile != cradle.ProfileProduction || !st.EnrolledAt.Equal(Epoch) {
		t.Errorf("enrolled station %+v", st)
	}
	got, err := k.svc.FindStation(k.factory, "line1-st1")
	if err != nil || got.Fingerprint != st.Fingerprint || string(got.DER) != string(st.DER) || got.EnrolledBy != st.EnrolledBy {
		t.Errorf("find station: %+v, %v", got, err)
	}
	_, err = k.svc.EnrollStation(k.admin, cradle.StationEnroll{Name: "line1-st1", Profile: cradle.ProfileTest, Issue: k.stationIssue("x")})
	wantCode(t, err, cradle.ECONFLICT, "line1-st1")
	_, err = k.svc.EnrollStation(k.admin, cradle.StationEnroll{Name: "-bad", Profile: cradle.ProfileTest, Issue: k.stationIssue("x")})
	wantCode(t, err, cradle.EINVALID)
	_, err = k.svc.EnrollStation(k.admin, cradle.StationEnroll{Name: "st-2", Profile: "staging", Issue: k.stationIssue("x")})
	wantCode(t, err, cradle.EINVALID)
	// A failed issuance stores nothing.
	_, err = k.svc.EnrollStation(k.admin, cradle.StationEnroll{Name: "st-2", Profile: cradle.ProfileTest,
		Issue: func(context.Context) (*x509.Certificate, error) { return nil, errors.New("hsm unavailable") }})
	if err == nil {
		t.Fatal("an enrollment whose issuance failed succeeded")
	}
	_, err = k.svc.FindStation(k.admin, "st-2")
	wantCode(t, err, cradle.ENOTFOUND)
	k.station("st-0", cradle.ProfileTest)
	if list, err := k.svc.FindStations(k.as(cradle.RoleAuditor)); err != nil || len(list) != 2 || list[0].Name != "line1-st1" || list[1].Name != "st-0" {
		t.Errorf("stations: %v, %v", list, err)
	}
	other := newFactoryKit(t, e, "globex")
	_, err = other.svc.FindStation(other.admin, "line1-st1")
	wantCode(t, err, cradle.ENOTFOUND)
	if list, err := other.svc.FindStations(other.admin); err != nil || len(list) != 0 {
		t.Errorf("other tenant's stations: %v, %v", list, err)
	}
	other.station("line1-st1", cradle.ProfileTest) // names are per tenant
	if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = 'factory.station.enroll.refused'`, k.tenant.ID); n != 1 {
		t.Errorf("%d refused enrollments audited, want 1 (the taken name)", n)
	}
}

func testFactoryPermissions(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("B1", 10, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	u := k.allocate("B1", "st-1", 1)[0]
	rec, signed := k.record(u, "st-1", cradle.UnitProvisioned)
	ops := map[string]func(ctx context.Context) error{
		"create batch": func(ctx context.Context) error {
			_, err := k.svc.CreateBatch(ctx, cradle.BatchCreate{ID: "P1", Model: "m", HardwareRevision: "a", Quantity: 1, FirmwareVersion: "1", Profile: cradle.ProfileTest, SerialPattern: "P-{seq}"})
			return err
		},
		"add MAC range": func(ctx context.Context) error {
			_, err := k.svc.AddMACRange(ctx, "0a:00:00:00:00:00", "0a:00:00:00:00:00")
			return err
		},
		"enroll station": func(ctx context.Context) error {
			_, err := k.svc.EnrollStation(ctx, cradle.StationEnroll{Name: "st-x", Profile: cradle.ProfileTest, Issue: k.stationIssue("st-x")})
			return err
		},
		"allocate":      func(ctx context.Context) error { _, err := k.svc.AllocateUnits(ctx, "B1", "st-1", 1); return err },
		"reprovision":   func(ctx context.Context) error { _, err := k.svc.ReprovisionUnit(ctx, u.Serial, "st-1"); return err },
		"record trace":  func(ctx context.Context) error { _, _, err := k.svc.RecordTrace(ctx, rec, signed); return err },
		"find batch":    func(ctx context.Context) error { _, err := k.svc.FindBatch(ctx, "B1"); return err },
		"find stations": func(ctx context.Context) error { _, err := k.svc.FindStations(ctx); return err },
		"unit trace":    func(ctx context.Context) error { _, err := k.svc.UnitTrace(ctx, u.Serial); return err },
		"batch traces":  func(ctx context.Context) error { _, err := k.svc.BatchTraces(ctx, "B1"); return err },
		"due events":    func(ctx context.Context) error { _, err := k.svc.DueFactoryEvents(ctx, Epoch, 10); return err },
	}
	forbidden := map[cradle.Role][]string{
		cradle.RoleAuditor:  {"create batch", "add MAC range", "enroll station", "allocate", "reprovision", "record trace", "due events"},
		cradle.RoleFactory:  {"create batch", "add MAC range", "enroll station", "due events"},
		cradle.RoleOperator: {"enroll station", "allocate", "reprovision", "record trace", "due events"},
		cradle.RoleAdmin:    {"allocate", "reprovision", "record trace", "due events"},
		cradle.RoleDevice:   {"create batch", "find batch", "allocate", "record trace", "unit trace"},
	}
	for role, names := range forbidden {
		for _, name := range names {
			err := ops[name](k.as(role))
			if cradle.ErrorCode(err) != cradle.EFORBIDDEN {
				t.Errorf("%s may %s: %v, want EFORBIDDEN", role, name, err)
			}
		}
	}
	for _, name := range []string{"find batch", "find stations", "unit trace", "batch traces"} {
		if err := ops[name](k.as(cradle.RoleAuditor)); err != nil {
			t.Errorf("auditor may not %s: %v", name, err)
		}
	}
	if err := ops["create batch"](k.as(cradle.RoleOperator)); err != nil {
		t.Errorf("operator may not create a batch: %v", err)
	}
	if err := ops["record trace"](k.factory); err != nil {
		t.Errorf("factory may not record a trace: %v", err)
	}
	if _, err := k.svc.FindBatch(context.Background(), "B1"); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Errorf("anonymous find batch: %v", err)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action LIKE 'factory.%refused'`, k.tenant.ID); n < 20 {
		t.Errorf("%d refused factory calls audited, want every refusal", n)
	}
}

func testFactoryAllocate(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("B1", 5, cradle.ProfileTest)
	k.batch("P1", 5, cradle.ProfileProduction)
	k.station("st-1", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")

	units := k.allocate("B1", "st-1", 3)
	for i, u := range units {
		wantSerial, wantMAC := fmt.Sprintf("CR-B1-%04d", i+1), fmt.Sprintf("02:00:00:00:00:%02x", i)
		if u.Serial != wantSerial || u.MAC != wantMAC || u.Batch != "B1" || u.RMA {
			t.Errorf("unit %d: %+v, want %s %s", i, u, wantSerial, wantMAC)
		}
		d := k.device(u.Serial)
		if d.State != cradle.StateFactory || d.Model != "gw-1" || d.HardwareRevision != "rev-b" || len(d.MACs) != 1 || d.MACs[0] != wantMAC || d.Labels["batch"] != "B1" {
			t.Errorf("device of unit %d: %+v", i, d)
		}
	}
	if b := must[*cradle.Batch](k.t)(k.svc.FindBatch(k.admin, "B1")); b.Allocated != 3 || b.Open() != 2 {
		t.Errorf("batch after 3 units: %+v", b)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = 'factory.allocate' AND details LIKE '%CR-B1-0001%CR-B1-0003%'`, k.tenant.ID); n != 1 {
		t.Errorf("%d allocation audit entries naming the first and last serial, want 1", n)
	}

	// Refusals name what is wrong and change nothing.
	devices := count(t, e, `SELECT COUNT(*) FROM devices`)
	_, err := k.svc.AllocateUnits(k.factory, "B1", "st-1", 3)
	wantCode(t, err, cradle.ECONFLICT, "B1", "room for 2")
	_, err = k.svc.AllocateUnits(k.factory, "P1", "st-1", 1)
	wantCode(t, err, cradle.ECONFLICT, "st-1", "P1", "production", "test")
	_, err = k.svc.AllocateUnits(k.factory, "B404", "st-1", 1)
	wantCode(t, err, cradle.ENOTFOUND, "B404")
	_, err = k.svc.AllocateUnits(k.factory, "B1", "st-404", 1)
	wantCode(t, err, cradle.ENOTFOUND, "st-404")
	for _, n := range []int{0, -1, cradle.MaxAllocation + 1} {
		_, err = k.svc.AllocateUnits(k.factory, "B1", "st-1", n)
		wantCode(t, err, cradle.EINVALID)
	}
	// A serial the pattern gives that is already a device: nothing allocated.
	if _, err := e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: "CR-B1-0005", Model: "gw-1"}); err != nil {
		t.Fatal(err)
	}
	_, err = k.svc.AllocateUnits(k.factory, "B1", "st-1", 2)
	wantCode(t, err, cradle.ECONFLICT, "CR-B1-0005", "nothing was allocated")
	if n := count(t, e, `SELECT COUNT(*) FROM devices`); n != devices+1 {
		t.Errorf("refused allocations created %d devices", n-devices-1)
	}
	if b := must[*cradle.Batch](k.t)(k.svc.FindBatch(k.admin, "B1")); b.Allocated != 3 {
		t.Errorf("a refused allocation moved the batch to %d", b.Allocated)
	}
	if r := must[[]*cradle.MACRange](k.t)(k.svc.MACRanges(k.admin)); r[0].Used != 3 {
		t.Errorf("a refused allocation used MACs: %d", r[0].Used)
	}
	if u := k.allocate("B1", "st-1", 1); u[0].Serial != "CR-B1-0004" || u[0].MAC != "02:00:00:00:00:03" {
		t.Errorf("next unit after refusals: %+v", u[0])
	}
	if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = 'factory.allocate.refused'`, k.tenant.ID); n != 5 {
		t.Errorf("%d refused allocations audited, want 5 (full, profile, batch, station, serial taken)", n)
	}

	// Another tenant's batch and station are not found; its pool is its own.
	other := newFactoryKit(t, e, "globex")
	_, err = other.svc.AllocateUnits(other.factory, "B1", "st-1", 1)
	wantCode(t, err, cradle.ENOTFOUND)
	other.batch("B1", 5, cradle.ProfileTest)
	other.station("st-1", cradle.ProfileTest)
	_, err = other.svc.AllocateUnits(other.factory, "B1", "st-1", 1)
	wantCode(t, err, cradle.ECONFLICT, "MAC pool exhausted")
	other.macRange("04:00:00:00:00:00", "04:00:00:00:00:ff")
	if u := other.allocate("B1", "st-1", 1); u[0].Serial != "CR-B1-0001" || u[0].MAC != "04:00:00:00:00:00" {
		t.Errorf("other tenant's first unit: %+v", u[0])
	}
}

func testFactoryTraces(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("B1", 3, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	k.station("st-2", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	units := k.allocate("B1", "st-1", 3)

	// A provisioned unit: device provisioned, UID and IDevID recorded.
	e.Clock.Add(time.Minute)
	rec, signed := k.record(units[0], "st-1", cradle.UnitProvisioned)
	stored := k.upload(rec, signed)
	if stored.Record.ID != rec.ID || string(stored.Signed.Payload) != string(signed.Payload) || string(stored.Signed.Signature) != string(signed.Signature) || !stored.ReceivedAt.Equal(e.Clock.Now()) {
		t.Errorf("stored record %+v", stored)
	}
	d := k.device(units[0].Serial)
	if d.State != cradle.StateProvisioned || d.HardwareUID != "uid-"+units[0].Serial {
		t.Errorf("device after its record: %+v", d)
	}
	certs := sqlstore.NewCertificateService(e.DB)
	if c, err := certs.FindCertificateBySerial(k.admin, rec.IDevIDSerial); err != nil || c.Kind != cradle.CertIDevID || c.DeviceSerial != units[0].Serial || c.Issuer == "" {
		t.Errorf("IDevID: %+v, %v", c, err)
	}

	// The same upload again is the stored record; another under its id is refused.
	again, created, err := k.svc.RecordTrace(k.factory, rec, signed)
	if err != nil || created || string(again.Signed.Payload) != string(signed.Payload) || !again.ReceivedAt.Equal(stored.ReceivedAt) {
		t.Errorf("replayed upload: %+v, created %v, %v", again, created, err)
	}
	forged := *rec
	forged.Operator = "mallory"
	forgedRec, forgedSigned := k.sign(&forged)
	_, _, err = k.svc.RecordTrace(k.factory, forgedRec, forgedSigned)
	wantCode(t, err, cradle.ECONFLICT, rec.ID)
	// A record that is not its payload is refused.
	_, _, err = k.svc.RecordTrace(k.factory, forgedRec, signed)
	wantCode(t, err, cradle.EINVALID, "signed payload")
	// A second record of a provisioned unit needs rma.
	rec2, signed2 := k.record(units[0], "st-1", cradle.UnitProvisioned)
	_, _, err = k.svc.RecordTrace(k.factory, rec2, signed2)
	wantCode(t, err, cradle.ECONFLICT, "already provisioned; re-provisioning needs rma")

	// Records that do not match the allocation or the batch.
	mismatch := map[string]func(r *cradle.TraceRecord){
		"station st-2": func(r *cradle.TraceRecord) { r.Station = "st-2" },
		"mac":          func(r *cradle.TraceRecord) { r.MAC = "02:00:00:00:00:aa" },
		"model":        func(r *cradle.TraceRecord) { r.Model = "gw-2" },
		"revision":     func(r *cradle.TraceRecord) { r.HardwareRevision = "rev-z" },
		"profile":      func(r *cradle.TraceRecord) { r.Profile = cradle.ProfileProduction },
		"batch B9":     func(r *cradle.TraceRecord) { r.Batch = "B9" },
	}
	for want, change := range mismatch {
		r, _ := k.record(units[1], "st-1", cradle.UnitProvisioned)
		change(r)
		r, s := k.sign(r)
		_, _, err := k.svc.RecordTrace(k.factory, r, s)
		wantCode(t, err, cradle.ECONFLICT, want)
	}
	badSerial, _ := k.record(units[1], "st-1", cradle.UnitProvisioned)
	badSerial.IDevIDSerial = "abc123"
	badSerialRec, badSerialSigned := k.sign(badSerial)
	_, _, err = k.svc.RecordTrace(k.factory, badSerialRec, badSerialSigned)
	wantCode(t, err, cradle.EINVALID, "idevid_serial")
	unknown, _ := k.record(units[1], "st-1", cradle.UnitProvisioned)
	unknown.Serial = "CR-B1-0404"
	unknownRec, unknownSigned := k.sign(unknown)
	_, _, err = k.svc.RecordTrace(k.factory, unknownRec, unknownSigned)
	wantCode(t, err, cradle.ENOTFOUND)
	if d := k.device(units[1].Serial); d.State != cradle.StateFactory || d.HardwareUID != "" {
		t.Errorf("refused records changed the device: %+v", d)
	}

	// A failed unit keeps its serial and MAC for ever; its place in the
	// batch goes to a new unit.
	e.Clock.Add(time.Minute)
	frec, fsigned := k.record(units[1], "st-1", cradle.UnitFailed)
	k.upload(frec, fsigned)
	if d := k.device(units[1].Serial); d.State != cradle.StateFactory {
		t.Errorf("failed unit's device is %s", d.State)
	}
	late, lateSigned := k.record(units[1], "st-1", cradle.UnitProvisioned)
	_, _, err = k.svc.RecordTrace(k.factory, late, lateSigned)
	wantCode(t, err, cradle.ECONFLICT, "already failed")
	b := must[*cradle.Batch](k.t)(k.svc.FindBatch(k.admin, "B1"))
	if b.Allocated != 3 || b.Provisioned != 1 || b.Failed != 1 || b.Open() != 1 {
		t.Errorf("batch counters: %+v", b)
	}
	replacement := k.allocate("B1", "st-1", 1)[0]
	if replacement.Serial != "CR-B1-0004" || replacement.MAC != "02:00:00:00:00:03" {
		t.Errorf("replacement unit %+v reuses a serial or MAC", replacement)
	}
	_, err = k.svc.AllocateUnits(k.factory, "B1", "st-1", 1)
	wantCode(t, err, cradle.ECONFLICT, "batch B1 is full: 4 of 3 allocated, 1 failed")
	k.upload(k.record(units[2], "st-1", cradle.UnitProvisioned))
	k.upload(k.record(replacement, "st-1", cradle.UnitProvisioned))
	if b := must[*cradle.Batch](k.t)(k.svc.FindBatch(k.admin, "B1")); b.Provisioned != 3 || b.Failed != 1 || b.Open() != 0 {
		t.Errorf("finished batch: %+v", b)
	}

	// The batch's records in the order received; a unit's chain.
	traces, err := k.svc.BatchTraces(k.as(cradle.RoleAuditor), "B1")
	if err != nil || len(traces) != 4 || traces[0].Record.ID != rec.ID || traces[1].Record.ID != frec.ID || traces[1].Record.Status != cradle.UnitFailed {
		t.Fatalf("batch traces: %v, %v", traces, err)
	}
	_, err = k.svc.BatchTraces(k.admin, "B404")
	wantCode(t, err, cradle.ENOTFOUND)
	ut, err := k.svc.UnitTrace(k.as(cradle.RoleAuditor), units[0].Serial)
	if err != nil {
		t.Fatal(err)
	}
	if ut.Device.Serial != units[0].Serial || ut.Batch == nil || ut.Batch.ID != "B1" || len(ut.Records) != 1 || len(ut.Stations) != 1 || ut.Stations[0].Name != "st-1" ||
		len(ut.Certificates) != 1 || ut.Certificates[0].Serial != rec.IDevIDSerial || len(ut.History) != 2 || ut.History[1].To != cradle.StateProvisioned {
		t.Errorf("unit trace: %+v", ut)
	}
	if ut, err := k.svc.UnitTrace(k.admin, units[1].Serial); err != nil || len(ut.Records) != 1 || ut.Records[0].Record.FailedStep != "fuses" || len(ut.Certificates) != 0 {
		t.Errorf("failed unit's trace: %+v, %v", ut, err)
	}
	_, err = k.svc.UnitTrace(k.admin, "CR-B1-0404")
	wantCode(t, err, cradle.ENOTFOUND)

	// Another tenant sees none of it, and cannot record against it.
	other := newFactoryKit(t, e, "globex")
	_, err = other.svc.UnitTrace(other.admin, units[0].Serial)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = other.svc.BatchTraces(other.admin, "B1")
	wantCode(t, err, cradle.ENOTFOUND)
	_, _, err = other.svc.RecordTrace(other.factory, late, lateSigned)
	wantCode(t, err, cradle.ENOTFOUND)
	_, _, err = other.svc.RecordTrace(other.factory, rec, signed)
	wantCode(t, err, cradle.ECONFLICT)

	for _, action := range []string{"factory.trace", "device.transition", "factory.trace.refused"} {
		if n := count(t, e, `SELECT COUNT(*) FROM audit_entries WHERE tenant_id = ? AND action = ?`, k.tenant.ID, action); n == 0 {
			t.Errorf("no %s audit entry", action)
		}
	}
	for _, v := range verifyAll(t, e) {
		if !v.OK {
			t.Errorf("tenant %d chain broken: %+v", v.TenantID, v.Broken)
		}
	}
}

func testFactoryRMA(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("B1", 2, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	k.station("st-2", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	u := k.allocate("B1", "st-1", 1)[0]
	first, firstSigned := k.record(u, "st-1", cradle.UnitProvisioned)
	k.upload(first, firstSigned)

	_, err := k.svc.ReprovisionUnit(k.factory, u.Serial, "st-2")
	wantCode(t, err, cradle.ECONFLICT, "provisioned", "rma")
	_, err = k.svc.ReprovisionUnit(k.factory, "CR-B1-0404", "st-2")
	wantCode(t, err, cradle.ENOTFOUND)
	e.Clock.Add(24 * time.Hour)
	if _, err := e.Devices.TransitionDevice(k.admin, u.Serial, cradle.DeviceTransition{To: cradle.StateDeployed}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.TransitionDevice(k.as(cradle.RoleOperator), u.Serial, cradle.DeviceTransition{To: cradle.StateRMA, Reason: "radio dead"}); err != nil {
		t.Fatal(err)
	}
	_, err = k.svc.ReprovisionUnit(k.factory, u.Serial, "st-404")
	wantCode(t, err, cradle.ENOTFOUND)
	// A normal record for a unit in rma is still refused.
	plain, plainSigned := k.record(u, "st-1", cradle.UnitProvisioned)
	_, _, err = k.svc.RecordTrace(k.factory, plain, plainSigned)
	wantCode(t, err, cradle.ECONFLICT, "already provisioned")

	alloc, err := k.svc.ReprovisionUnit(k.factory, u.Serial, "st-2")
	if err != nil || alloc.Serial != u.Serial || alloc.MAC != u.MAC || alloc.Batch != "B1" || !alloc.RMA {
		t.Fatalf("reprovision: %+v, %v", alloc, err)
	}
	// The unit is now held by st-2: st-1's RMA record is refused.
	old, oldSigned := k.record(*alloc, "st-1", cradle.UnitProvisioned)
	_, _, err = k.svc.RecordTrace(k.factory, old, oldSigned)
	wantCode(t, err, cradle.ECONFLICT, "st-2")
	e.Clock.Add(time.Hour)
	failed, failedSigned := k.record(*alloc, "st-2", cradle.UnitFailed)
	k.upload(failed, failedSigned)
	if d := k.device(u.Serial); d.State != cradle.StateRMA {
		t.Errorf("after a failed RMA attempt the device is %s, want rma", d.State)
	}
	second, secondSigned := k.record(*alloc, "st-2", cradle.UnitProvisioned)
	k.upload(second, secondSigned)
	if d := k.device(u.Serial); d.State != cradle.StateProvisioned || d.HardwareUID != "uid-"+u.Serial {
		t.Errorf("re-provisioned device %+v", d)
	}
	b := must[*cradle.Batch](k.t)(k.svc.FindBatch(k.admin, "B1"))
	if b.Allocated != 1 || b.Provisioned != 1 || b.Failed != 0 {
		t.Errorf("RMA changed the batch's counters: %+v", b)
	}
	ut, err := k.svc.UnitTrace(k.admin, u.Serial)
	if err != nil {
		t.Fatal(err)
	}
	var path []cradle.State
	for _, h := range ut.History {
		path = append(path, h.To)
	}
	if fmt.Sprint(path) != "[factory provisioned deployed rma provisioned]" {
		t.Errorf("history %v", path)
	}
	if len(ut.Records) != 3 || ut.Records[0].Record.ID != first.ID || !ut.Records[2].Record.RMA || len(ut.Certificates) != 2 ||
		len(ut.Stations) != 2 || ut.Stations[0].Name != "st-1" || ut.Stations[1].Name != "st-2" {
		t.Errorf("unit trace after RMA: %d records, %d certificates, stations %v", len(ut.Records), len(ut.Certificates), ut.Stations)
	}

	// An imported unit in rma gets its factory record from its batch label
	// and first MAC.
	if _, err := e.Devices.CreateDevice(k.admin, cradle.DeviceCreate{Serial: "OLD-1", Model: "gw-1", HardwareRevision: "rev-b", MACs: []string{"06:00:00:00:00:01"},
		Labels: map[string]string{"batch": "B1"}, State: cradle.StateProvisioned}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.TransitionDevice(k.admin, "OLD-1", cradle.DeviceTransition{To: cradle.StateRMA}); err != nil {
		t.Fatal(err)
	}
	imported, err := k.svc.ReprovisionUnit(k.factory, "OLD-1", "st-1")
	if err != nil || imported.MAC != "06:00:00:00:00:01" || imported.Batch != "B1" || !imported.RMA {
		t.Fatalf("reprovision an imported unit: %+v, %v", imported, err)
	}
	k.upload(k.record(*imported, "st-1", cradle.UnitProvisioned))
	if d := k.device("OLD-1"); d.State != cradle.StateProvisioned {
		t.Errorf("imported unit after RMA: %s", d.State)
	}
}

func testFactoryConcurrentAllocation(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("B1", 100, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	k.station("st-2", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:3f")
	k.macRange("02:00:00:00:01:00", "02:00:00:00:01:ff")
	results := make([][]cradle.UnitAllocation, 2)
	errs := make(chan error, 20)
	done := make(chan int)
	for g, station := range []string{"st-1", "st-2"} {
		go func() {
			defer func() { done <- g }()
			for range 10 {
				units, err := k.svc.AllocateUnits(k.factory, "B1", station, 5)
				if err != nil {
					errs <- err
					return
				}
				results[g] = append(results[g], units...)
			}
		}()
	}
	<-done
	<-done
	close(errs)
	for err := range errs {
		t.Errorf("concurrent allocation: %v", err)
	}
	serials, macs := map[string]bool{}, map[string]bool{}
	for _, r := range results {
		for _, u := range r {
			if serials[u.Serial] || macs[u.MAC] {
				t.Errorf("unit %+v handed out twice", u)
			}
			serials[u.Serial], macs[u.MAC] = true, true
		}
	}
	if len(serials) != 100 || len(macs) != 100 {
		t.Errorf("%d serials and %d MACs, want 100 each", len(serials), len(macs))
	}
	for i := 1; i <= 100; i++ {
		if s := fmt.Sprintf("CR-B1-%04d", i); !serials[s] {
			t.Errorf("serial %s was skipped", s)
		}
	}
	if b := must[*cradle.Batch](k.t)(k.svc.FindBatch(k.admin, "B1")); b.Allocated != 100 || b.Open() != 0 {
		t.Errorf("batch after 100 units: %+v", b)
	}
	if r := must[[]*cradle.MACRange](k.t)(k.svc.MACRanges(k.admin)); r[0].Used != 64 || r[1].Used != 36 {
		t.Errorf("MAC ranges used %d and %d, want 64 and 36", r[0].Used, r[1].Used)
	}

	// A journal syncing the same record from several connections at once:
	// stored once, every other upload answered with it.
	rec, signed := k.record(results[0][0], "st-1", cradle.UnitProvisioned)
	type upload struct {
		created bool
		err     error
	}
	ups := make(chan upload, 4)
	for range 4 {
		go func() {
			_, created, err := k.svc.RecordTrace(k.factory, rec, signed)
			ups <- upload{created, err}
		}()
	}
	created := 0
	for range 4 {
		u := <-ups
		if u.err != nil {
			t.Errorf("concurrent upload of one record: %v", u.err)
		} else if u.created {
			created++
		}
	}
	if created != 1 || count(t, e, `SELECT COUNT(*) FROM factory_events`) != 1 || count(t, e, `SELECT COUNT(*) FROM factory_traces`) != 1 {
		t.Errorf("one record uploaded 4 times at once was created %d times", created)
	}
}

func testFactoryOutbox(t *testing.T, e *Env) {
	k := newFactoryKit(t, e, "acme")
	k.batch("B1", 5, cradle.ProfileTest)
	k.station("st-1", cradle.ProfileTest)
	k.macRange("02:00:00:00:00:00", "02:00:00:00:00:ff")
	units := k.allocate("B1", "st-1", 3)
	ok, okSigned := k.record(units[0], "st-1", cradle.UnitProvisioned)
	k.upload(ok, okSigned)
	e.Clock.Add(time.Second)
	bad, badSigned := k.record(units[1], "st-1", cradle.UnitFailed)
	k.upload(bad, badSigned)
	// A replayed upload adds no event.
	if _, created, err := k.svc.RecordTrace(k.factory, ok, okSigned); err != nil || created {
		t.Fatalf("replay: %v, %v", created, err)
	}

	sys := e.As(0, cradle.RoleSystem)
	now := e.Clock.Now()
	due, err := k.svc.DueFactoryEvents(sys, now, 10)
	if err != nil || len(due) != 2 {
		t.Fatalf("due events: %v, %v", due, err)
	}
	if ev := due[0]; ev.EventID != ok.ID || ev.Type != cradle.EventUnitProvisioned || ev.Source != "/factory/stations/st-1" || ev.Subject != units[0].Serial ||
		string(ev.Data) != string(okSigned.Payload) || ev.Attempts != 0 || !ev.Time.Equal(Epoch) {
		t.Errorf("first event %+v", ev)
	}
	if ev := due[1]; ev.EventID != bad.ID || ev.Type != cradle.EventUnitFailed {
		t.Errorf("second event %+v", ev)
	}
	if d := must[[]*cradle.FactoryEvent](t)(k.svc.DueFactoryEvents(sys, now, 1)); len(d) != 1 || d[0].ID != due[0].ID {
		t.Errorf("limit 1: %v", d)
	}

	// A failed delivery waits for its next attempt; a zero next gives up.
	if err := k.svc.FactoryEventFailed(sys, due[0].ID, now.Add(time.Minute), "503 Service Unavailable"); err != nil {
		t.Fatal(err)
	}
	if d := must[[]*cradle.FactoryEvent](t)(k.svc.DueFactoryEvents(sys, now, 10)); len(d) != 1 || d[0].ID != due[1].ID {
		t.Errorf("due after a failure: %v", d)
	}
	if d := must[[]*cradle.FactoryEvent](t)(k.svc.DueFactoryEvents(sys, now.Add(time.Minute), 10)); len(d) != 2 || d[0].Attempts != 1 {
		t.Errorf("due a minute later: %v", d)
	}
	if err := k.svc.FactoryEventFailed(sys, due[1].ID, time.Time{}, "410 Gone \xff"); err != nil {
		t.Fatal(err)
	}
	if d := must[[]*cradle.FactoryEvent](t)(k.svc.DueFactoryEvents(sys, now.Add(time.Hour), 10)); len(d) != 1 || d[0].ID != due[0].ID {
		t.Errorf("a dead event is still due: %v", d)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM factory_events WHERE dead = 1 AND attempts = 1 AND last_error LIKE '410 Gone%'`); n != 1 {
		t.Errorf("%d dead events kept with their error, want 1", n)
	}
	if err := k.svc.FactoryEventDelivered(sys, due[0].ID); err != nil {
		t.Fatal(err)
	}
	if d := must[[]*cradle.FactoryEvent](t)(k.svc.DueFactoryEvents(sys, now.Add(time.Hour), 10)); len(d) != 0 {
		t.Errorf("a delivered event is still due: %v", d)
	}
	wantCode(t, k.svc.FactoryEventDelivered(sys, due[0].ID), cradle.ENOTFOUND)
	wantCode(t, k.svc.FactoryEventFailed(sys, 99999, now, "x"), cradle.ENOTFOUND)

	// Nobody but the system touches the queue.
	for _, role := range []cradle.Role{cradle.RoleAdmin, cradle.RoleFactory, cradle.RoleAuditor} {
		_, err := k.svc.DueFactoryEvents(k.as(role), now, 10)
		wantCode(t, err, cradle.EFORBIDDEN)
		wantCode(t, k.svc.FactoryEventDelivered(k.as(role), due[1].ID), cradle.EFORBIDDEN)
		wantCode(t, k.svc.FactoryEventFailed(k.as(role), due[1].ID, now, "x"), cradle.EFORBIDDEN)
	}

	// An event is written with its record or not at all.
	events := count(t, e, `SELECT COUNT(*) FROM factory_events`)
	mismatch, _ := k.record(units[2], "st-1", cradle.UnitProvisioned)
	mismatch.MAC = "02:00:00:00:00:ee"
	r, s := k.sign(mismatch)
	_, _, err = k.svc.RecordTrace(k.factory, r, s)
	wantCode(t, err, cradle.ECONFLICT)
	if n := count(t, e, `SELECT COUNT(*) FROM factory_events`); n != events {
		t.Errorf("a refused record queued %d events", n-events)
	}
}
