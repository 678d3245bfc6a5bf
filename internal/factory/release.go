package factory

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"gopkg.in/yaml.v3"

	"cradle"
)

// Release is the first firmware a batch gets: a bootloader, an image for
// slot A, and the public key that signs images, whose hash is burnt into
// the image_key_hash fuses so that the bootloader boots only images it
// signed. A release directory holds release.yaml:
//
//	model: sensor-x
//	version: 1.4.2
//	profile: production            # or test
//	hardware_revisions: [B, C]
//	image: firmware.bin
//	bootloader: bootloader.bin
//	image_key: image-key.pem        # PEM public key (PKIX)
//
// with the files it names beside it.
type Release struct {
	Model             string
	Version           string
	Profile           cradle.Profile
	HardwareRevisions []string
	Image             []byte
	Bootloader        []byte
	ImageKey          crypto.PublicKey
	// ImageKeyHash is SHA-256 of the image key's SubjectPublicKeyInfo
	// DER, the value of the image_key_hash fuses.
	ImageKeyHash     [32]byte
	ImageDigest      [32]byte
	BootloaderDigest [32]byte
}

type releaseFile struct {
	Model             string   `yaml:"model"`
	Version           string   `yaml:"version"`
	Profile           string   `yaml:"profile"`
	HardwareRevisions []string `yaml:"hardware_revisions"`
	Image             string   `yaml:"image"`
	Bootloader        string   `yaml:"bootloader"`
	ImageKey          string   `yaml:"image_key"`
}

// MaxImage bounds a firmware or bootloader image.
const MaxImage = 256 << 20

// LoadRelease reads a release directory.
func LoadRelease(dir string) (*Release, error) {
	b, err := os.ReadFile(filepath.Join(dir, "release.yaml"))
	if err != nil {
		return nil, fmt.Errorf("factory: firmware release: %w", err)
	}
	return parseRelease(b, func(name string) ([]byte, error) {
		if name == "" || filepath.IsAbs(name) || !filepath.IsLocal(name) {
			return nil, fmt.Errorf("file %q must be a name inside the release directory", name)
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if st.Size() > MaxImage {
			return nil, fmt.Errorf("%s is %d bytes, more than %d", name, st.Size(), MaxImage)
		}
		return os.ReadFile(p)
	})
}

// parseRelease decodes release.yaml; read loads the files it names.
func parseRelease(b []byte, read func(string) ([]byte, error)) (*Release, error) {
	var f releaseFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("factory: release.yaml: %v", err)
	}
	if f.Model == "" || f.Version == "" {
		return nil, fmt.Errorf("factory: release.yaml: model and version are required")
	}
	profile, err := cradle.ParseProfile(f.Profile)
	if err != nil {
		return nil, fmt.Errorf("factory: release.yaml: %s", cradle.ErrorMessage(err))
	}
	if len(f.HardwareRevisions) == 0 {
		return nil, fmt.Errorf("factory: release.yaml: hardware_revisions lists none")
	}
	r := &Release{Model: f.Model, Version: f.Version, Profile: profile, HardwareRevisions: f.HardwareRevisions}
	for _, x := range []struct {
		name string
		dst  *[]byte
	}{{f.Image, &r.Image}, {f.Bootloader, &r.Bootloader}} {
		if *x.dst, err = read(x.name); err != nil {
			return nil, fmt.Errorf("factory: release: %v", err)
		}
		if len(*x.dst) == 0 {
			return nil, fmt.Errorf("factory: release: %s is empty", x.name)
		}
	}
	keyPEM, err := read(f.ImageKey)
	if err != nil {
		return nil, fmt.Errorf("factory: release: image key: %v", err)
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("factory: release: image key %s is not a PEM PUBLIC KEY", f.ImageKey)
	}
	if r.ImageKey, err = x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		return nil, fmt.Errorf("factory: release: image key %s: %v", f.ImageKey, err)
	}
	r.ImageKeyHash = sha256.Sum256(blk.Bytes)
	r.ImageDigest = sha256.Sum256(r.Image)
	r.BootloaderDigest = sha256.Sum256(r.Bootloader)
	return r, nil
}

// CheckFor refuses a release that does not fit a batch at a station of
// the given profile: another model, hardware revision or version than the
// batch's, or test firmware at a production station (and production
// firmware at a test station: test units must not carry production
// images).
func (r *Release) CheckFor(b *cradle.Batch, station cradle.Profile) error {
	switch {
	case r.Model != b.Model:
		return fmt.Errorf("factory: firmware is for model %s, batch %s builds model %s", r.Model, b.ID, b.Model)
	case !slices.Contains(r.HardwareRevisions, b.HardwareRevision):
		return fmt.Errorf("factory: firmware %s supports hardware revisions %v, batch %s builds revision %s", r.Version, r.HardwareRevisions, b.ID, b.HardwareRevision)
	case r.Version != b.FirmwareVersion:
		return fmt.Errorf("factory: firmware is version %s, batch %s calls for %s", r.Version, b.ID, b.FirmwareVersion)
	case r.Profile != station:
		return fmt.Errorf("factory: %s firmware refused by a %s station", r.Profile, station)
	}
	return nil
}
