package cradle

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Profile separates test from production trust. A batch, a factory
// station and a PKI each have one; a production station refuses test
// keys, test firmware and test roots, and a production server refuses
// devices provisioned under a test root.
type Profile string

// The two profiles.
const (
	ProfileTest       Profile = "test"
	ProfileProduction Profile = "production"
)

// ParseProfile returns the profile named s, or EINVALID.
func ParseProfile(s string) (Profile, error) {
	switch p := Profile(strings.TrimSpace(s)); p {
	case ProfileTest, ProfileProduction:
		return p, nil
	}
	return "", Errorf(EINVALID, "unknown profile %q: use test or production", truncate(s, 40))
}

// Batch is a production order: a quantity of units of one model and
// hardware revision, built with one firmware release under one profile.
type Batch struct {
	ID               string    `json:"id"`
	TenantID         int64     `json:"-"`
	Model            string    `json:"model"`
	HardwareRevision string    `json:"hardware_revision"`
	Quantity         int       `json:"quantity"`
	FirmwareVersion  string    `json:"firmware_version"`
	Profile          Profile   `json:"profile"`
	SerialPattern    string    `json:"serial_pattern"`
	Allocated        int       `json:"allocated"`   // serials handed to stations, failed units included
	Provisioned      int       `json:"provisioned"` // units whose provisioning record was received
	Failed           int       `json:"failed"`      // units that failed (their serial is never reused)
	CreatedAt        time.Time `json:"created_at"`
	CreatedBy        string    `json:"created_by"`
}

// Open reports how many more units may be allocated: failed units do not
// count against the quantity, so a batch of 100 ends with 100 good units.
func (b *Batch) Open() int {
	n := b.Quantity - (b.Allocated - b.Failed)
	if n < 0 {
		return 0
	}
	return n
}

// BatchCreate asks for a new batch.
type BatchCreate struct {
	ID               string  `json:"id"`
	Model            string  `json:"model"`
	HardwareRevision string  `json:"hardware_revision"`
	Quantity         int     `json:"quantity"`
	FirmwareVersion  string  `json:"firmware_version"`
	Profile          Profile `json:"profile"`
	SerialPattern    string  `json:"serial_pattern"`
}

// MaxBatchQuantity bounds a batch.
const MaxBatchQuantity = 1_000_000

// Validate checks every field; the error is EINVALID and names the field.
func (c *BatchCreate) Validate() error {
	if err := validateName("batch id", c.ID); err != nil {
		return err
	}
	if err := validateToken("model", c.Model, MaxModelLen, true); err != nil {
		return err
	}
	if err := validateToken("hardware_revision", c.HardwareRevision, MaxRevisionLen, true); err != nil {
		return err
	}
	if err := validateToken("firmware_version", c.FirmwareVersion, 64, true); err != nil {
		return err
	}
	if c.Quantity < 1 || c.Quantity > MaxBatchQuantity {
		return Errorf(EINVALID, "quantity %d is out of range 1..%d", c.Quantity, MaxBatchQuantity)
	}
	if _, err := ParseProfile(string(c.Profile)); err != nil {
		return err
	}
	return ValidateSerialPattern(c.SerialPattern, c.Quantity)
}

// validateName checks an identifier chosen by an operator: 1 to 64
// characters of [A-Za-z0-9._-], starting with a letter or digit.
func validateName(field, s string) error {
	if s == "" || len(s) > 64 || !isAlnum(s[0]) {
		return Errorf(EINVALID, "%s %q must be 1 to 64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", field, truncate(s, 80))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return Errorf(EINVALID, "%s %q must be 1 to 64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", field, truncate(s, 80))
		}
	}
	return nil
}

// ValidateStationName checks a factory station's name (the rules of a
// batch id).
func ValidateStationName(s string) error { return validateName("station name", s) }

// A serial pattern is literal text around one placeholder {seq} or
// {seq:N}: the unit's sequence number in its batch (from 1), zero-padded
// to N digits. "CR-2648-{seq:05}" gives CR-2648-00001, CR-2648-00002 ….
// Every serial it produces must be a valid device serial.

// parseSerialPattern splits a pattern into prefix, width and suffix.
func parseSerialPattern(p string) (prefix string, width int, suffix string, err error) {
	i := strings.Index(p, "{seq")
	if i < 0 {
		return "", 0, "", Errorf(EINVALID, "serial pattern %q has no {seq} placeholder (e.g. CR-2648-{seq:05})", truncate(p, 80))
	}
	j := strings.IndexByte(p[i:], '}')
	if j < 0 {
		return "", 0, "", Errorf(EINVALID, "serial pattern %q: unclosed placeholder", truncate(p, 80))
	}
	ph := p[i+1 : i+j]
	prefix, suffix = p[:i], p[i+j+1:]
	if strings.Contains(suffix, "{seq") {
		return "", 0, "", Errorf(EINVALID, "serial pattern %q has more than one {seq} placeholder", truncate(p, 80))
	}
	switch {
	case ph == "seq":
	case strings.HasPrefix(ph, "seq:"):
		width, err = strconv.Atoi(ph[4:])
		if err != nil || width < 1 || width > 12 {
			return "", 0, "", Errorf(EINVALID, "serial pattern %q: the width in {seq:N} must be 1 to 12", truncate(p, 80))
		}
	default:
		return "", 0, "", Errorf(EINVALID, "serial pattern %q: unknown placeholder {%s}; use {seq} or {seq:N}", truncate(p, 80), truncate(ph, 20))
	}
	return prefix, width, suffix, nil
}

// ValidateSerialPattern checks a pattern and that the serials of units 1
// and quantity are valid device serials.
func ValidateSerialPattern(p string, quantity int) error {
	for _, n := range []int{1, quantity} {
		s, err := FormatSerial(p, n)
		if err != nil {
			return err
		}
		if err := ValidateSerial(s); err != nil {
			return Errorf(EINVALID, "serial pattern %q gives %q for unit %d: %s", truncate(p, 80), s, n, ErrorMessage(err))
		}
	}
	return nil
}

// FormatSerial returns the serial of unit seq (from 1) of a pattern.
func FormatSerial(pattern string, seq int) (string, error) {
	prefix, width, suffix, err := parseSerialPattern(pattern)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s%0*d%s", prefix, width, seq, suffix), nil
}

// MACRange is a block of EUI-48 addresses the tenant owns (an IEEE
// MA-L/MA-M/MA-S assignment, or a locally administered block), from which
// factory stations get one address per unit. An address is never handed
// out twice, not even after the unit failed.
type MACRange struct {
	First string `json:"first"` // lower case, colon separated
	Last  string `json:"last"`
	Used  int64  `json:"used"` // addresses handed out so far, from First up
}

// ParseMAC returns an EUI-48 address as a number.
func ParseMAC(s string) (uint64, error) {
	m, err := NormalizeMAC(s)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.ReplaceAll(m, ":", ""), 16, 64)
	if err != nil {
		return 0, Errorf(EINVALID, "invalid MAC address %q", truncate(s, 40))
	}
	return v, nil
}

// FormatMAC formats the low 48 bits of v as a MAC address.
func FormatMAC(v uint64) string {
	b := make([]string, 6)
	for i := range b {
		b[i] = fmt.Sprintf("%02x", byte(v>>(8*(5-i))))
	}
	return strings.Join(b, ":")
}

// Station is a factory provisioning station. Its certificate (issued when
// it enrolled, for a key in its HSM) verifies the trace records it signs.
type Station struct {
	Name        string    `json:"name"`
	TenantID    int64     `json:"-"`
	Profile     Profile   `json:"profile"`
	CertSerial  string    `json:"certificate_serial"`
	Fingerprint string    `json:"fingerprint"` // SHA-256 of the certificate, hex
	EnrolledAt  time.Time `json:"enrolled_at"`
	EnrolledBy  string    `json:"enrolled_by"`
	TokenID     string    `json:"token_id,omitempty"` // the factory token made for it
	DER         []byte    `json:"-"`
}

// StationEnroll asks to enroll a station: the store checks the name is
// free and calls Issue for its certificate inside the transaction.
type StationEnroll struct {
	Name    string
	Profile Profile
	TokenID string
	Issue   func(ctx context.Context) (*x509.Certificate, error)
}

// UnitStatus is where a unit stands at the factory.
type UnitStatus string

// Unit statuses.
const (
	UnitAllocated   UnitStatus = "allocated"   // serial and MAC handed to a station
	UnitProvisioned UnitStatus = "provisioned" // its provisioning record was received
	UnitFailed      UnitStatus = "failed"      // it failed; the serial and MAC stay used
)

// UnitAllocation is what a station gets for one unit.
type UnitAllocation struct {
	Serial string `json:"serial"`
	MAC    string `json:"mac"`
	Batch  string `json:"batch"`
	RMA    bool   `json:"rma,omitempty"` // a returned unit being re-provisioned
}

// MaxAllocation bounds one allocation request.
const MaxAllocation = 1000

// TestResult is one factory test of a unit.
type TestResult struct {
	Name   string `json:"name"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail,omitempty"`
}

// TraceRecord is what a station records of one unit it provisioned or
// failed to. The station signs it (SignedTrace); once received, a record
// is kept as signed.
type TraceRecord struct {
	ID                string            `json:"id"` // unique; the idempotency key of uploads
	Batch             string            `json:"batch"`
	Station           string            `json:"station"`
	Operator          string            `json:"operator"`
	Profile           Profile           `json:"profile"`
	Serial            string            `json:"serial"`
	MAC               string            `json:"mac"`
	HardwareUID       string            `json:"hardware_uid,omitempty"`
	Model             string            `json:"model"`
	HardwareRevision  string            `json:"hardware_revision"`
	RMA               bool              `json:"rma,omitempty"`
	Status            UnitStatus        `json:"status"` // provisioned or failed
	FailedStep        string            `json:"failed_step,omitempty"`
	Reason            string            `json:"reason,omitempty"`
	StartedAt         time.Time         `json:"started_at"`
	FinishedAt        time.Time         `json:"finished_at"`
	FirmwareVersion   string            `json:"firmware_version,omitempty"`
	FirmwareDigest    string            `json:"firmware_digest,omitempty"`   // SHA-256 of slot A, hex
	BootloaderDigest  string            `json:"bootloader_digest,omitempty"` // SHA-256, hex
	IDevIDSerial      string            `json:"idevid_serial,omitempty"`     // SerialHex
	IDevIDFingerprint string            `json:"idevid_fingerprint,omitempty"`
	IDevID            []byte            `json:"idevid,omitempty"` // DER
	Fuses             map[string]string `json:"fuses,omitempty"`  // field → hex, as read back
	Tests             []TestResult      `json:"tests,omitempty"`
	// ClaimCodeHash is ClaimCodeHash of the claim code printed on the
	// unit's label (the code itself is not recorded); "" when the
	// station printed none.
	ClaimCodeHash string `json:"claim_code_hash,omitempty"`
}

// Validate checks a record's fields; the error is EINVALID and names the
// field. A provisioned record needs its IDevID; a failed one its step and
// reason.
func (r *TraceRecord) Validate() error {
	if err := validateName("record id", r.ID); err != nil {
		return err
	}
	if err := validateName("batch", r.Batch); err != nil {
		return err
	}
	if err := ValidateStationName(r.Station); err != nil {
		return err
	}
	if err := validateToken("operator", r.Operator, 128, true); err != nil {
		return err
	}
	if _, err := ParseProfile(string(r.Profile)); err != nil {
		return err
	}
	if err := ValidateSerial(r.Serial); err != nil {
		return err
	}
	if _, err := ParseMAC(r.MAC); err != nil {
		return err
	}
	if r.StartedAt.IsZero() || r.FinishedAt.Before(r.StartedAt) {
		return Errorf(EINVALID, "record %s: finished_at must not be before started_at, and both are required", r.ID)
	}
	switch r.Status {
	case UnitProvisioned:
		if len(r.IDevID) == 0 || r.IDevIDSerial == "" || r.FirmwareDigest == "" {
			return Errorf(EINVALID, "record %s: a provisioned unit's record needs idevid, idevid_serial and firmware_digest", r.ID)
		}
		if r.FailedStep != "" {
			return Errorf(EINVALID, "record %s: a provisioned unit has no failed_step", r.ID)
		}
	case UnitFailed:
		if r.FailedStep == "" || r.Reason == "" {
			return Errorf(EINVALID, "record %s: a failed unit's record needs failed_step and reason", r.ID)
		}
	default:
		return Errorf(EINVALID, "record %s: status %q must be provisioned or failed", r.ID, truncate(string(r.Status), 20))
	}
	if err := validateClaimHash(r.ClaimCodeHash); err != nil {
		return Errorf(EINVALID, "record %s: %s", r.ID, ErrorMessage(err))
	}
	if len(r.Reason) > 2048 {
		return Errorf(EINVALID, "record %s: reason is longer than 2048 bytes", r.ID)
	}
	return nil
}

// SignedTrace is a trace record as the station signed it: Payload is the
// record's JSON, Signature the station key's signature over SHA-256 of
// Payload (ASN.1 ECDSA, or PKCS #1 v1.5 for RSA). In JSON both are base64.
type SignedTrace struct {
	Payload   []byte `json:"payload"`
	Signature []byte `json:"signature"`
}

// SignTrace marshals r and signs it with the station's key.
func SignTrace(r *TraceRecord, key crypto.Signer) (SignedTrace, error) {
	if err := r.Validate(); err != nil {
		return SignedTrace{}, err
	}
	payload, err := json.Marshal(r)
	if err != nil {
		return SignedTrace{}, Errorf(EINTERNAL, "marshal trace record: %v", err)
	}
	var sig []byte
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		sig, err = key.Sign(rand.Reader, payload, crypto.Hash(0))
	} else {
		sum := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		return SignedTrace{}, fmt.Errorf("sign trace record %s: %w", r.ID, err)
	}
	return SignedTrace{Payload: payload, Signature: sig}, nil
}

// Verify checks the signature with the station's certificate. The error
// is EINVALID: "signature does not verify".
func (s SignedTrace) Verify(station *x509.Certificate) error {
	if verifySignature(station.PublicKey, s.Payload, s.Signature) != nil {
		return Errorf(EINVALID, "trace record signature does not verify with the certificate of station %s (tampered or signed by another key)", truncate(station.Subject.CommonName, 80))
	}
	return nil
}

// Record decodes and validates the payload. It does not check the
// signature (see internal/factory.Verify).
func (s SignedTrace) Record() (*TraceRecord, error) {
	var r TraceRecord
	dec := json.NewDecoder(strings.NewReader(string(s.Payload)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, Errorf(EINVALID, "trace record payload is not a record: %v", err)
	}
	if dec.More() {
		return nil, Errorf(EINVALID, "trace record payload has data after the record")
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// StoredTrace is a received record with its signature.
type StoredTrace struct {
	Record     TraceRecord `json:"record"`
	Signed     SignedTrace `json:"signed"`
	ReceivedAt time.Time   `json:"received_at"`
}

// UnitTrace is the chain of a unit from its batch to today.
type UnitTrace struct {
	Device       *Device        `json:"device"`
	Batch        *Batch         `json:"batch,omitempty"`
	Records      []*StoredTrace `json:"records"` // every factory attempt, oldest first
	Stations     []*Station     `json:"stations"`
	Certificates []*Certificate `json:"certificates"`
	History      []*StateChange `json:"history"`
}

// FactoryEvent is a provisioning event waiting to be delivered to the
// MES webhook (see internal/webhook).
type FactoryEvent struct {
	ID       int64     `json:"-"`
	EventID  string    `json:"id"`   // the CloudEvents id: the record id
	Type     string    `json:"type"` // EventUnitProvisioned or EventUnitFailed
	Source   string    `json:"source"`
	Subject  string    `json:"subject"` // the unit's serial
	Time     time.Time `json:"time"`
	Data     []byte    `json:"data"` // the record's JSON
	Attempts int       `json:"attempts"`
}

// CloudEvents types of factory events.
const (
	EventUnitProvisioned = "io.cradle.factory.unit.provisioned"
	EventUnitFailed      = "io.cradle.factory.unit.failed"
)

// FactoryService keeps batches, stations, unit allocations and trace
// records. Other tenants' records answer ENOTFOUND.
type FactoryService interface {
	// CreateBatch needs PermBatchWrite. EINVALID, ECONFLICT when the id
	// is taken.
	CreateBatch(ctx context.Context, c BatchCreate) (*Batch, error)
	// FindBatch needs PermFactoryRead. ENOTFOUND.
	FindBatch(ctx context.Context, id string) (*Batch, error)
	// FindBatches lists batches, newest first. Needs PermFactoryRead.
	FindBatches(ctx context.Context, cursor string, limit int) ([]*Batch, string, error)
	// AddMACRange adds a block of addresses to the tenant's pool. Needs
	// PermBatchWrite. EINVALID (first after last), ECONFLICT when it
	// overlaps a block of any tenant.
	AddMACRange(ctx context.Context, first, last string) (*MACRange, error)
	// MACRanges lists the tenant's blocks. Needs PermFactoryRead.
	MACRanges(ctx context.Context) ([]*MACRange, error)
	// EnrollStation records a station and its certificate. Needs
	// PermStationEnroll. ECONFLICT when the name is taken.
	EnrollStation(ctx context.Context, e StationEnroll) (*Station, error)
	// FindStation needs PermFactoryRead. ENOTFOUND.
	FindStation(ctx context.Context, name string) (*Station, error)
	// FindStations lists the tenant's stations. Needs PermFactoryRead.
	FindStations(ctx context.Context) ([]*Station, error)
	// AllocateUnits hands count new serials (from the batch's pattern)
	// and MACs (from the pool) to a station, registering each unit as a
	// device in state factory, in one transaction. Needs
	// PermFactoryProvision. ENOTFOUND (batch, station), ECONFLICT (the
	// batch is full, a serial is taken, the MAC pool is exhausted; the
	// message says which).
	AllocateUnits(ctx context.Context, batch, station string, count int) ([]UnitAllocation, error)
	// ReprovisionUnit hands a station the serial and MAC of a unit in rma
	// for re-provisioning. Needs PermFactoryProvision. ENOTFOUND,
	// ECONFLICT when the device is not in rma.
	ReprovisionUnit(ctx context.Context, serial, station string) (*UnitAllocation, error)
	// RecordTrace stores a record whose signature the caller verified,
	// and acts on it in one transaction: a provisioned unit's device
	// moves to provisioned (from factory, or from rma for an RMA record)
	// and its IDevID is recorded; a failed unit is marked failed. It is
	// idempotent by record id: the same record again returns the stored
	// one with created false; a different record under a known id is
	// ECONFLICT. ECONFLICT too for a record of a unit that is already
	// provisioned or failed, or not allocated to that batch and station.
	// Needs PermFactoryProvision.
	RecordTrace(ctx context.Context, r *TraceRecord, signed SignedTrace) (stored *StoredTrace, created bool, err error)
	// UnitTrace returns the chain of a unit. Needs PermFactoryRead.
	// ENOTFOUND.
	UnitTrace(ctx context.Context, serial string) (*UnitTrace, error)
	// BatchTraces returns the records of a batch in the order received.
	// Needs PermFactoryRead. ENOTFOUND for an unknown batch.
	BatchTraces(ctx context.Context, batch string) ([]*StoredTrace, error)
}

// FactoryOutbox is the queue of factory events for the webhook
// dispatcher. Only the system role calls it.
type FactoryOutbox interface {
	// DueFactoryEvents returns up to limit undelivered events whose next
	// attempt is due at now, oldest first.
	DueFactoryEvents(ctx context.Context, now time.Time, limit int) ([]*FactoryEvent, error)
	// FactoryEventDelivered removes a delivered event.
	FactoryEventDelivered(ctx context.Context, id int64) error
	// FactoryEventFailed counts a failed attempt and schedules the next
	// at next; a zero next gives up (the event is kept, marked dead, with
	// lastError).
	FactoryEventFailed(ctx context.Context, id int64, next time.Time, lastError string) error
}
