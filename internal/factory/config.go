package factory

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/kms"
)

// A station directory holds what `cradle factory station enroll` wrote:
//
//	station.yaml         the configuration (StationFile)
//	station.crt          the station certificate, then its chain
//	root.crt             the root units get as trust anchor
//	manufacturing-ca.crt the manufacturing CA certificate
//	command-signer.crt   the command signer chain (optional)
//	update-root.json     the update root metadata (optional)
//	token                the station's API token (mode 0600)
//	journal.log          the journal
//
// Keys are not in it: station.yaml names them by URI (PKCS#11 in
// production).
const (
	StationFileName  = "station.yaml"
	StationCertFile  = "station.crt"
	RootFile         = "root.crt"
	ManufacturingCA  = "manufacturing-ca.crt"
	CommandSignerCrt = "command-signer.crt"
	UpdateRootFile   = "update-root.json"
	TokenFile        = "token"
	JournalFile      = "journal.log"
)

// StationFile is station.yaml.
type StationFile struct {
	Name    string `yaml:"name"`
	Profile string `yaml:"profile"`
	Server  string `yaml:"server"`
	Org     string `yaml:"org,omitempty"`
	// StationKey and ManufacturingKey are kms key URIs.
	StationKey       string `yaml:"station_key"`
	ManufacturingKey string `yaml:"manufacturing_ca_key"`
	Reserve          int    `yaml:"reserve,omitempty"`
}

// ReadStationFile reads and checks dir/station.yaml.
func ReadStationFile(dir string) (*StationFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, StationFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("factory: %s has no %s: enroll the station first (cradle factory station enroll)", dir, StationFileName)
	} else if err != nil {
		return nil, fmt.Errorf("factory: %w", err)
	}
	return parseStationFile(b)
}

func parseStationFile(b []byte) (*StationFile, error) {
	var f StationFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("factory: %s: %v", StationFileName, err)
	}
	if err := cradle.ValidateStationName(f.Name); err != nil {
		return nil, fmt.Errorf("factory: %s: %s", StationFileName, cradle.ErrorMessage(err))
	}
	if _, err := cradle.ParseProfile(f.Profile); err != nil {
		return nil, fmt.Errorf("factory: %s: %s", StationFileName, cradle.ErrorMessage(err))
	}
	if f.StationKey == "" || f.ManufacturingKey == "" {
		return nil, fmt.Errorf("factory: %s: station_key and manufacturing_ca_key are required", StationFileName)
	}
	if f.Reserve < 0 || f.Reserve > cradle.MaxAllocation {
		return nil, fmt.Errorf("factory: %s: reserve must be 1 to %d", StationFileName, cradle.MaxAllocation)
	}
	return &f, nil
}

// WriteStationFile writes dir/station.yaml atomically.
func WriteStationFile(dir string, f *StationFile) error {
	b, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, StationFileName), b, 0o644)
}

// ReadCerts reads a PEM file of one or more certificates.
func ReadCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return out, nil
}

// Open loads the station in dir: its configuration, keys (opened through
// kms: the HSM must be reachable), certificates and journal. server may
// be nil (offline). Close releases the keys and the journal.
func Open(ctx context.Context, dir, operator string, server Server, opts kms.Options) (*Station, error) {
	f, err := ReadStationFile(dir)
	if err != nil {
		return nil, err
	}
	cfg := Config{Name: f.Name, Profile: cradle.Profile(f.Profile), Operator: operator, Org: f.Org, Server: server, Reserve: f.Reserve, OpenUnit: OpenUnit}
	for _, x := range []struct {
		name string
		dst  **x509.Certificate
	}{{StationCertFile, &cfg.StationCert}, {RootFile, &cfg.Root}, {ManufacturingCA, &cfg.ManufacturingCA}} {
		certs, err := ReadCerts(filepath.Join(dir, x.name))
		if err != nil {
			return nil, fmt.Errorf("factory: station %s: %w", f.Name, err)
		}
		*x.dst = certs[0]
	}
	if cfg.CommandSigner, err = ReadCerts(filepath.Join(dir, CommandSignerCrt)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("factory: station %s: %w", f.Name, err)
	}
	if cfg.UpdateRoot, err = os.ReadFile(filepath.Join(dir, UpdateRootFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("factory: station %s: %w", f.Name, err)
	}
	var keys []crypto.Signer
	closeKeys := func() {
		for _, k := range keys {
			kms.Close(k)
		}
	}
	for _, x := range []struct {
		what, uri string
		dst       *crypto.Signer
	}{{"station key", f.StationKey, &cfg.StationKey}, {"manufacturing CA key", f.ManufacturingKey, &cfg.ManufacturingKey}} {
		k, err := kms.Open(ctx, x.uri, opts)
		if err != nil {
			closeKeys()
			return nil, fmt.Errorf("factory: station %s: the %s is unavailable (is the HSM connected?): %w", f.Name, x.what, err)
		}
		keys = append(keys, k)
		*x.dst = k
	}
	cert := cfg.StationCert
	j, err := OpenJournal(filepath.Join(dir, JournalFile), func(s cradle.SignedTrace) error { return s.Verify(cert) })
	if err != nil {
		closeKeys()
		return nil, err
	}
	cfg.Journal = j
	s, err := New(cfg)
	if err != nil {
		closeKeys()
		j.Close()
		return nil, err
	}
	s.closeKeys = closeKeys
	return s, nil
}

// Close releases the station's keys and journal.
func (s *Station) Close() error {
	if s.closeKeys != nil {
		s.closeKeys()
	}
	return s.cfg.Journal.Close()
}
