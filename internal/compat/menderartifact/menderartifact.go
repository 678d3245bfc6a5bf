// Package menderartifact reads and writes Mender Artifacts of format
// version 3, as the Debian mender-artifact 3.9 tool writes them and
// mender-client 3.4 installs them.
//
// # Format
//
// An artifact is a plain tar whose entries come in exactly this order:
//
//	version                 {"format":"mender","version":3}
//	manifest                "<sha256 hex>  <name>\n" for version, the header tar
//	                        and every payload file (data/NNNN/<file>)
//	manifest.sig            optional: base64 of a signature over the manifest
//	header.tar[.gz|.xz]     header-info, scripts/*, then per payload
//	                        headers/NNNN/type-info and optional headers/NNNN/meta-data
//	data/NNNN.tar[.gz|.xz]  the files of payload NNNN, one entry per payload
//	                        that has a type (a bootstrap payload has none)
//
// Compression is gzip, xz or none: what mender-client 3.4 reads. zstd and
// the augmented parts (manifest-augment, header-augment), which Mender only
// uses for its Enterprise delta updates, are refused with an error saying so.
//
// # Trust
//
// The manifest binds every other part by SHA-256 and the optional signature
// binds the manifest, so one signature covers the whole artifact. Signatures
// are RSA PKCS#1 v1.5 over SHA-256, or ECDSA P-256 over SHA-256 encoded as
// the raw 64-byte r‖s (not DER), as in mender-artifact's signer. When
// Options.Keys is set, Parse requires a signature by one of those keys and
// checks it before it reads the header; without keys a signature is
// reported (Artifact.Signed) but not checked. Resign adds or replaces the
// signature of an existing artifact, streaming, and leaves every other
// entry as it was.
//
// # Streaming and bounds
//
// Parse reads its input once, front to back. Payload files are hashed while
// they are read and never held in memory; the parts before them (version,
// manifest, signature, header) are read into memory up to fixed bounds
// (Options.MaxHeaderSize), and anything larger is refused with ETOOLARGE. A
// caller that keeps the artifact tees its input to storage and discards the
// copy when Parse fails.
//
// # Failures
//
// Every refusal is a *cradle.Error: EINVALID for a malformed artifact, a
// wrong checksum or a bad or missing signature, ETOOLARGE for a part over
// its bound; the message names the part (which entry, which file's
// checksum). A failure of the input reader itself is returned wrapped, not
// as a cradle.Error. Write returns EINVALID for a bad Spec or Source and
// passes on write and signer errors wrapped.
package menderartifact

import (
	"crypto"
	"time"

	"cradle"
)

// Artifact is what Parse learned from a valid artifact.
type Artifact struct {
	// Name is artifact_provides.artifact_name from header-info.
	Name string
	// Group is artifact_provides.artifact_group, "" when absent.
	Group string
	// DeviceTypes is artifact_depends.device_type: the device types the
	// artifact may be installed on (at least one).
	DeviceTypes []string
	// Provides is header-info's artifact_provides, artifact_name included.
	Provides map[string]string
	// Depends is header-info's artifact_depends, device_type included.
	Depends map[string][]string
	// Payloads are the payloads in order (mender-artifact writes one).
	Payloads []Payload
	// Scripts are the names of the state scripts in the header
	// (scripts/<name>).
	Scripts []string
	// Compression is the header's compression: "gzip", "xz" or "none".
	Compression string
	// Signed reports that the artifact carries manifest.sig.
	Signed bool
	// SignedBy is the key of Options.Keys that verified the signature, nil
	// when no keys were given.
	SignedBy crypto.PublicKey
}

// Payload is one payload: its type-info, meta-data and files.
type Payload struct {
	// Type is the payload type ("rootfs-image", or an update module such
	// as "single-file"); "" for a bootstrap payload, which has no data.
	Type string
	// Provides is type-info's artifact_provides.
	Provides map[string]string
	// Depends is type-info's artifact_depends; a single string value is
	// given as a one-element list.
	Depends map[string][]string
	// ClearsProvides is type-info's clears_artifact_provides.
	ClearsProvides []string
	// MetaData is headers/NNNN/meta-data, nil when absent.
	MetaData map[string]any
	// Files are the payload's files in archive order.
	Files []File
}

// File is one payload file, checked against the manifest.
type File struct {
	// Name is the file's name inside the payload (no directories).
	Name string
	// Size is its length in bytes.
	Size int64
	// SHA256 is its digest, equal to the manifest's line for
	// data/NNNN/<Name>.
	SHA256 [32]byte
	// ModTime is the modification time in the payload tar.
	ModTime time.Time
}

// Options control Parse. The zero value parses without checking a
// signature, with the default bounds.
type Options struct {
	// Keys are the trusted public keys (*rsa.PublicKey, or *ecdsa.PublicKey
	// on P-256). When set, the artifact must be signed by one of them.
	Keys []crypto.PublicKey
	// MaxHeaderSize bounds each part before the payloads: version,
	// manifest, manifest.sig, the compressed header tar and the header
	// decompressed. Zero means DefaultMaxHeaderSize.
	MaxHeaderSize int64
	// MaxPayloadSize bounds the decompressed bytes of all payload tars
	// together. Zero means no bound (the input's own length bounds it
	// only when there is no compression).
	MaxPayloadSize int64
}

// DefaultMaxHeaderSize is the bound on each header part when
// Options.MaxHeaderSize is zero. mender-artifact's headers are a few KiB;
// state scripts make them larger.
const DefaultMaxHeaderSize = 1 << 20

func invalid(format string, args ...any) error {
	return cradle.Errorf(cradle.EINVALID, "mender artifact: "+format, args...)
}

func tooLarge(format string, args ...any) error {
	return cradle.Errorf(cradle.ETOOLARGE, "mender artifact: "+format, args...)
}
