// Package factory is the provisioning station: it gives each unit on the
// line its identity and first firmware, and records what it did.
//
// # Provisioning a unit
//
// Provision runs these steps on one unit; the step names appear in failed
// records:
//
//	preflight  the unit's lifecycle fuse word is factory (a provisioned
//	           unit is refused and nothing is touched)
//	allocate   the next serial and MAC reserved for the station
//	           (journaled before use, never reused)
//	device-key cradle-agent's factory-init on the unit: a key created in
//	           the unit's key store, its hardware UID and a CSR
//	csr        the CSR's signature, key policy and UID checked
//	idevid     the IDevID issued by the manufacturing CA (key in the
//	           station's HSM)
//	identity   the identity bundle written to the factory data partition
//	firmware   the bootloader and the first image written to slot A
//	fuses      image-key hash, secure boot, debug lock
//	verify     everything read back and compared: fuses, slot digests,
//	           identity files, the device key matching the IDevID, the
//	           IDevID chain to the root
//	lock       the factory partition write-protected, lifecycle fuse word
//	           set to provisioned
//	record     the trace record signed by the station key and journaled
//
// A unit that fails a step after allocate gets a failed record naming
// the step and the reason, and its device key is destroyed; it is never
// provisioned (the server keeps it in state factory).
//
// # Journal and sync
//
// Every record goes to the journal (see Journal) before anything else,
// then to the server in the background. When the server is unreachable
// the station keeps working from its reserved serials; Sync uploads what
// is pending later. The server stores a record once by its id, so a
// record sent twice (a crash between upload and acknowledgement) is no
// duplicate.
//
// # Test and production
//
// A station has a profile. A production station refuses a test root,
// manufacturing CA, station certificate, batch or firmware, and a test
// station refuses their production counterparts (test units must never
// carry production identities). A unit provisioned under a test root
// cannot enroll with a production server: its IDevID does not chain to
// the production root, and the test policy OID marks it besides.
package factory

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"cradle"
	"cradle/internal/pki"
)

// Server is what the station needs of the Cradle server
// (httpapi.Client implements it).
type Server interface {
	Batch(ctx context.Context, id string) (*cradle.Batch, error)
	AllocateUnits(ctx context.Context, batch, station string, count int) ([]cradle.UnitAllocation, error)
	UploadTrace(ctx context.Context, s cradle.SignedTrace) (created bool, err error)
}

// Config is a station's identity and trust.
type Config struct {
	Name     string
	Profile  cradle.Profile
	Operator string // who runs the line, written in every record
	Org      string // O of the IDevIDs; "" leaves it out

	// StationKey signs trace records; StationCert is its certificate.
	StationKey  crypto.Signer
	StationCert *x509.Certificate
	// ManufacturingKey is the manufacturing CA's key (in the HSM).
	ManufacturingCA  *x509.Certificate
	ManufacturingKey crypto.Signer
	// Root is the root every unit gets as its trust anchor.
	Root *x509.Certificate
	// CommandSigner is the command signer's chain (leaf first), which
	// units need to check signed commands.
	CommandSigner []*x509.Certificate
	// UpdateRoot is the update framework's root metadata (TUF root.json)
	// written to every unit; nil writes none.
	UpdateRoot []byte

	Journal *Journal
	Server  Server
	// Reserve is how many units the station reserves from the server at
	// a time (default 16).
	Reserve int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OpenUnit reaches a unit again by its spec, to destroy the key of a
	// unit a crash interrupted; nil when units cannot be reached again.
	// Open sets it to the package's OpenUnit.
	OpenUnit func(spec string) (Unit, io.Closer, error)
}

// Station provisions units.
type Station struct {
	cfg Config
	hsm *timedSigner // the manufacturing CA key
	sk  *timedSigner // the station key

	closeKeys func()
}

// New checks a configuration and returns its station. It refuses a
// configuration that mixes profiles, a manufacturing CA that does not
// chain to the root, and a station key that is not its certificate's.
func New(cfg Config) (*Station, error) {
	if err := cradle.ValidateStationName(cfg.Name); err != nil {
		return nil, err
	}
	if _, err := cradle.ParseProfile(string(cfg.Profile)); err != nil {
		return nil, err
	}
	if cfg.Operator == "" {
		return nil, fmt.Errorf("factory: the operator is required (who runs the line goes into every record)")
	}
	switch {
	case cfg.StationKey == nil || cfg.StationCert == nil:
		return nil, fmt.Errorf("factory: the station key and certificate are required: enroll the station first")
	case cfg.ManufacturingKey == nil || cfg.ManufacturingCA == nil || cfg.Root == nil:
		return nil, fmt.Errorf("factory: the manufacturing CA, its key and the root are required")
	case cfg.Journal == nil:
		return nil, fmt.Errorf("factory: a journal is required")
	}
	if !publicKeyEqual(cfg.StationKey.Public(), cfg.StationCert.PublicKey) {
		return nil, fmt.Errorf("factory: the station key is not the key of the station certificate")
	}
	if !publicKeyEqual(cfg.ManufacturingKey.Public(), cfg.ManufacturingCA.PublicKey) {
		return nil, fmt.Errorf("factory: the manufacturing CA key is not the key of the manufacturing CA certificate")
	}
	if err := cfg.ManufacturingCA.CheckSignatureFrom(cfg.Root); err != nil {
		return nil, fmt.Errorf("factory: the manufacturing CA is not signed by the root: %v", err)
	}
	for _, x := range []struct {
		what  string
		certs []*x509.Certificate
	}{
		{"root", []*x509.Certificate{cfg.Root}}, {"manufacturing CA", []*x509.Certificate{cfg.ManufacturingCA}},
		{"station certificate", []*x509.Certificate{cfg.StationCert}}, {"command signer chain", cfg.CommandSigner},
	} {
		for _, c := range x.certs {
			if err := checkProfile(cfg.Profile, x.what, c); err != nil {
				return nil, err
			}
		}
	}
	if cfg.Reserve <= 0 {
		cfg.Reserve = 16
	}
	return &Station{cfg: cfg, hsm: &timedSigner{Signer: cfg.ManufacturingKey}, sk: &timedSigner{Signer: cfg.StationKey}}, nil
}

// checkProfile refuses a certificate of the other profile.
func checkProfile(p cradle.Profile, what string, c *x509.Certificate) error {
	test := pki.IsTestCertificate(c)
	switch {
	case p == cradle.ProfileProduction && test:
		return fmt.Errorf("factory: the %s %q is a test certificate: a production station refuses test keys and roots", what, c.Subject.CommonName)
	case p == cradle.ProfileTest && !test:
		return fmt.Errorf("factory: the %s %q is a production certificate: a test station refuses production keys and roots", what, c.Subject.CommonName)
	}
	return nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// Name returns the station's name.
func (s *Station) Name() string { return s.cfg.Name }

// Journal returns the station's journal.
func (s *Station) Journal() *Journal { return s.cfg.Journal }

func (s *Station) now() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now().UTC()
	}
	return time.Now().UTC()
}

// Batch returns a batch, from the journal when the station knows it
// (so it works offline), else from the server, journaling it. It refuses
// a batch of the other profile.
func (s *Station) Batch(ctx context.Context, id string) (*cradle.Batch, error) {
	b, ok := s.cfg.Journal.Batch(id)
	if !ok {
		if s.cfg.Server == nil {
			return nil, fmt.Errorf("factory: batch %s is unknown to this station and no server is configured", id)
		}
		var err error
		if b, err = s.cfg.Server.Batch(ctx, id); err != nil {
			return nil, fmt.Errorf("factory: fetch batch %s: %w", id, err)
		}
		if err := s.cfg.Journal.AddBatch(b); err != nil {
			return nil, err
		}
	}
	if b.Profile != s.cfg.Profile {
		return nil, fmt.Errorf("factory: batch %s is a %s batch: a %s station refuses it", b.ID, b.Profile, s.cfg.Profile)
	}
	return b, nil
}

// ensureReserved makes sure at least one unit of batch is reserved,
// asking the server for a block when none is.
func (s *Station) ensureReserved(ctx context.Context, b *cradle.Batch) error {
	if s.cfg.Journal.Free(b.ID) > 0 {
		return nil
	}
	if s.cfg.Server == nil {
		return fmt.Errorf("factory: no serials reserved for batch %s and no server configured", b.ID)
	}
	units, err := s.cfg.Server.AllocateUnits(ctx, b.ID, s.cfg.Name, s.cfg.Reserve)
	if cradle.ErrorCode(err) == cradle.ECONFLICT {
		// Near the end of a batch: ask for what is left.
		var fresh *cradle.Batch
		if fresh, err = s.cfg.Server.Batch(ctx, b.ID); err == nil && fresh.Open() > 0 {
			units, err = s.cfg.Server.AllocateUnits(ctx, b.ID, s.cfg.Name, min(fresh.Open(), s.cfg.Reserve))
		} else if err == nil {
			return fmt.Errorf("factory: batch %s is complete: %d units provisioned, no serial left to allocate", b.ID, fresh.Provisioned)
		}
	}
	if err != nil {
		return fmt.Errorf("factory: no serials left for batch %s and the server did not allocate more: %w", b.ID, err)
	}
	return s.cfg.Journal.Reserve(units)
}

// newRecordID returns a fresh record id.
func newRecordID() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "tr-" + hex.EncodeToString(b), nil
}

// timedSigner is a signer that adds up the time spent in Sign: the HSM's
// share of a unit.
type timedSigner struct {
	crypto.Signer
	ns atomic.Int64
}

func (t *timedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	start := time.Now()
	sig, err := t.Signer.Sign(r, digest, opts)
	t.ns.Add(int64(time.Since(start)))
	return sig, err
}

// HSMTime returns the time spent signing in the HSM so far (the
// manufacturing CA and the station key).
func (s *Station) HSMTime() time.Duration {
	return time.Duration(s.hsm.ns.Load() + s.sk.ns.Load())
}

// errStation marks a failure of the station itself (HSM, journal), which
// stops a run, as opposed to a failure of one unit.
type errStation struct{ err error }

func (e *errStation) Error() string { return e.err.Error() }
func (e *errStation) Unwrap() error { return e.err }

// IsStationError reports whether err is a failure of the station (its
// HSM or journal) rather than of the unit: a batch run stops on it.
func IsStationError(err error) bool {
	var e *errStation
	return errors.As(err, &e)
}
