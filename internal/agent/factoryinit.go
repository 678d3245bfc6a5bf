// Package agent is the device agent: the code of cradle-agent that acts on
// the unit's hardware (package hw). It holds factory-init, the agent's part
// of factory provisioning (create the device key inside the unit's key
// store and hand out a certificate signing request for it), and the unit's
// identity lifecycle (Identity: enrollment and renewal, with its persisted
// State).
//
// # Identity lifecycle
//
// Parties and keys: the unit holds its factory identity, the IDevID (key
// "idevid" in its hw.KeyStore, the certificate chain and the trust anchor
// in its write-protected factory data partition), and an operational
// identity, the LDevID, whose key "ldevid-<n>" it creates in the same key
// store. The server's device listener speaks EST (RFC 7030); its TLS
// certificate chains to the factory root (root.pem), the only trust the
// agent takes from outside the server.
//
// Enrollment: EST simpleenroll over mTLS with the IDevID, a new key, a CSR
// whose subject is CN = serialNumber = the unit's serial. The returned
// LDevID must hold the CSR's key, name the serial and chain to the root
// through a CA certificate fetched with /cacerts (itself checked against
// the root). It is stored durably, then confirmed by an authenticated
// request with it (csrattrs); the lifecycle fuse moves to deployed.
//
// Renewal: from two thirds of the LDevID's lifetime, simplereenroll
// authenticated with the current LDevID and its issuing CA (so a server
// whose own list predates a device CA rotation still verifies it), with a
// new key each time and the current subject and subjectAltName (§3.3.2).
// The old credential stays in the state, and its key in the key store,
// until the new one is stored and confirmed; only then is the old key
// destroyed. A failed attempt keeps everything as it was and retries after
// an exponential backoff with full jitter. An LDevID that expired anyway
// (a unit off for months) is replaced by enrolling again with the IDevID.
//
// Crash safety: every state change is one atomic SaveState. A key created
// before a crash but never stored is found by its name (the next
// "ldevid-<n>") and replaced.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"cradle/internal/agent/hw"
)

// DefaultKeyName is the name of the device key factory-init creates: the
// key of the unit's IDevID certificate.
const DefaultKeyName = "idevid"

// ErrLifecycle: the unit's lifecycle fuses forbid the operation (for
// factory-init: the unit is past the factory and not back for RMA).
var ErrLifecycle = errors.New("agent: not allowed in this lifecycle stage")

// FactoryInitOptions tunes FactoryInit. The zero value creates an ECDSA
// P-256 key named DefaultKeyName and refuses to replace one.
type FactoryInitOptions struct {
	// KeyName is the key's name in the key store; "" means
	// DefaultKeyName.
	KeyName string
	// Algorithm is the key's algorithm; "" means hw.ECDSAP256.
	Algorithm hw.Algorithm
	// Replace destroys a key left by a previous attempt and creates a new
	// one. Without it such a key makes FactoryInit fail.
	Replace bool
}

// FactoryInitResult is what factory-init hands the factory station. It
// holds no secret: the private key never leaves the key store.
type FactoryInitResult struct {
	// HardwareUID is the unit's hardware unique ID.
	HardwareUID string `json:"hardware_uid"`
	// Key is the name of the key created.
	Key string `json:"key"`
	// CSR is a PEM "CERTIFICATE REQUEST" whose subject CN is HardwareUID,
	// signed by the new key. In JSON it is the PEM text.
	CSR []byte `json:"-"`
	// PublicKeySHA256 is the hex SHA-256 of the key's SubjectPublicKeyInfo
	// (DER), the fingerprint the station and the logs quote.
	PublicKeySHA256 string `json:"public_key_sha256"`
}

type factoryInitJSON struct {
	HardwareUID     string `json:"hardware_uid"`
	Key             string `json:"key"`
	CSR             string `json:"csr"`
	PublicKeySHA256 string `json:"public_key_sha256"`
}

// MarshalJSON writes the result with the CSR as PEM text.
func (r FactoryInitResult) MarshalJSON() ([]byte, error) {
	return json.Marshal(factoryInitJSON{r.HardwareUID, r.Key, string(r.CSR), r.PublicKeySHA256})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *FactoryInitResult) UnmarshalJSON(b []byte) error {
	var j factoryInitJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = FactoryInitResult{HardwareUID: j.HardwareUID, Key: j.Key, CSR: []byte(j.CSR), PublicKeySHA256: j.PublicKeySHA256}
	return nil
}

// FactoryInit creates the device key inside dev.Keys and returns a CSR
// for it. It runs only while the lifecycle fuse word says factory or rma
// (an error wrapping ErrLifecycle otherwise). When the key exists already
// (a previous attempt stopped after creating it) it fails with an error
// wrapping hw.ErrExists, unless opts.Replace is set: then the old key is
// destroyed and a new one made.
func FactoryInit(ctx context.Context, dev *hw.Device, opts FactoryInitOptions) (*FactoryInitResult, error) {
	name := opts.KeyName
	if name == "" {
		name = DefaultKeyName
	}
	fuses, err := dev.Fuses.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: read the fuses: %w", err)
	}
	stage, err := hw.ParseLifecycle(fuses[hw.FuseLifecycle])
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: %w", err)
	}
	if stage != hw.LifecycleFactory && stage != hw.LifecycleRMA {
		return nil, fmt.Errorf("agent: factory-init: the unit's lifecycle fuses say %s; factory-init runs only in %s or %s, so a fielded unit keeps its identity: %w",
			stage, hw.LifecycleFactory, hw.LifecycleRMA, ErrLifecycle)
	}
	uid, err := dev.HardwareUID(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: read the hardware UID: %w", err)
	}

	signer, err := dev.Keys.CreateKey(ctx, name, opts.Algorithm)
	if errors.Is(err, hw.ErrExists) {
		if !opts.Replace {
			return nil, fmt.Errorf("agent: factory-init: key %q exists already: a previous attempt left it; --replace destroys it and creates a new one: %w", name, err)
		}
		if err := dev.Keys.DestroyKey(ctx, name); err != nil {
			return nil, fmt.Errorf("agent: factory-init: destroy the previous key %q: %w", name, err)
		}
		signer, err = dev.Keys.CreateKey(ctx, name, opts.Algorithm)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: create key %q: %w", name, err)
	}

	spki, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: key %q: %w", name, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: uid}}, signer)
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: sign the CSR with key %q: %w", name, err)
	}
	// A key store that signs wrongly is caught here, not at the CA.
	csr, err := x509.ParseCertificateRequest(der)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, fmt.Errorf("agent: factory-init: the CSR signed by key %q does not verify (is the key store working?): %w", name, err)
	}
	sum := sha256.Sum256(spki)
	return &FactoryInitResult{
		HardwareUID:     uid,
		Key:             name,
		CSR:             pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
		PublicKeySHA256: hex.EncodeToString(sum[:]),
	}, nil
}
