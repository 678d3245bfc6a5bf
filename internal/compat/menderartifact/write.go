package menderartifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/ulikunitz/xz"
)

// Spec describes the artifact Write makes: one payload of one type.
type Spec struct {
	// Name is the artifact_name (required).
	Name string
	// Group is the optional artifact_group.
	Group string
	// DeviceTypes are the compatible device types (at least one).
	DeviceTypes []string
	// PayloadType is the payload type: "rootfs-image" or an update
	// module's name such as "single-file" (required).
	PayloadType string
	// Provides, Depends and ClearsProvides go into the payload's
	// type-info (artifact_provides, artifact_depends,
	// clears_artifact_provides); a Depends value of one element is written
	// as a string, as mender-artifact does. Nothing is added to them: a caller that
	// wants mender-artifact's defaults (e.g. "rootfs-image.version")
	// sets them.
	Provides       map[string]string
	Depends        map[string][]string
	ClearsProvides []string
	// MetaData, when set, is written as headers/0000/meta-data (for
	// update modules).
	MetaData map[string]any
	// Compression of the header and the payload: "gzip" (the default
	// when empty), "xz" or "none".
	Compression string
	// ModTime is the modification time of every tar entry; zero means
	// the Unix epoch, which makes the output depend only on the input
	// (and the signature).
	ModTime time.Time
	// TempDir holds the compressed payload while its size is unknown;
	// empty means os.TempDir.
	TempDir string
}

// Source is one payload file for Write.
type Source struct {
	// Name is the file's name in the payload (no directories).
	Name string
	// Size is the exact number of bytes R yields.
	Size int64
	// R yields the content; Write reads it once.
	R io.Reader
}

// Write writes a Mender Artifact v3 with one payload holding files to w,
// signed by signer (RSA, or ECDSA P-256 with a raw r‖s signature) unless
// signer is nil. The payload is compressed into a temporary file first,
// because the outer tar needs its size, so every source is read once.
// Write does not close w.
func Write(w io.Writer, spec Spec, files []Source, signer crypto.Signer) error {
	if err := spec.check(files); err != nil {
		return err
	}
	comp := spec.Compression
	if comp == "" {
		comp = "gzip"
	}
	ext := map[string]string{"gzip": ".gz", "xz": ".xz", "none": ""}[comp]
	mtime := spec.ModTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0)
	}

	header, err := spec.header(comp, mtime)
	if err != nil {
		return err
	}

	tmp, err := os.CreateTemp(spec.TempDir, "menderartifact-*.data")
	if err != nil {
		return fmt.Errorf("mender artifact: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	sums, err := writeData(tmp, comp, files, mtime)
	if err != nil {
		return err
	}
	dataSize, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("mender artifact: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("mender artifact: %w", err)
	}

	version := []byte(`{"format":"mender","version":3}`)
	headerName := "header.tar" + ext
	lines := map[string][32]byte{
		"version":  sha256.Sum256(version),
		headerName: sha256.Sum256(header),
	}
	for i, f := range files {
		lines["data/0000/"+f.Name] = sums[i]
	}
	names := make([]string, 0, len(lines))
	for n := range lines {
		names = append(names, n)
	}
	sort.Strings(names)
	var manifest bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&manifest, "%x  %s\n", lines[n], n)
	}

	var sig []byte
	if signer != nil {
		if sig, err = sign(signer, manifest.Bytes()); err != nil {
			return err
		}
	}

	tw := tar.NewWriter(w)
	put := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Size: size, Mode: 0o600, ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}); err != nil {
			return fmt.Errorf("mender artifact: write %s: %w", name, err)
		}
		if _, err := io.Copy(tw, r); err != nil {
			return fmt.Errorf("mender artifact: write %s: %w", name, err)
		}
		return nil
	}
	small := func(name string, b []byte) error { return put(name, int64(len(b)), bytes.NewReader(b)) }
	if err := small("version", version); err != nil {
		return err
	}
	if err := small("manifest", manifest.Bytes()); err != nil {
		return err
	}
	if sig != nil {
		if err := small("manifest.sig", sig); err != nil {
			return err
		}
	}
	if err := small(headerName, header); err != nil {
		return err
	}
	if err := put("data/0000.tar"+ext, dataSize, tmp); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("mender artifact: %w", err)
	}
	return nil
}

func (s *Spec) check(files []Source) error {
	if s.Name == "" {
		return invalid("spec: Name (artifact_name) is required")
	}
	if len(s.DeviceTypes) == 0 {
		return invalid("spec: at least one device type is required")
	}
	for _, dt := range s.DeviceTypes {
		if dt == "" {
			return invalid("spec: a device type is empty")
		}
	}
	if s.PayloadType == "" {
		return invalid("spec: PayloadType is required")
	}
	switch s.Compression {
	case "", "gzip", "xz", "none":
	default:
		return invalid("spec: compression %q is not one of gzip, xz, none", s.Compression)
	}
	seen := map[string]bool{}
	for _, f := range files {
		if f.Name == "" || f.Name != path.Base(f.Name) || f.Name == "." || f.Name == ".." {
			return invalid("payload file name %q must be a plain file name", f.Name)
		}
		if len(f.Name) > 100 {
			return invalid("payload file name %q is longer than 100 bytes", f.Name)
		}
		if seen[f.Name] {
			return invalid("payload file %q is given twice", f.Name)
		}
		seen[f.Name] = true
		if f.Size < 0 || f.R == nil {
			return invalid("payload file %q needs a reader and a size ≥ 0", f.Name)
		}
	}
	return nil
}

// header returns the compressed header tar.
func (s *Spec) header(comp string, mtime time.Time) ([]byte, error) {
	provides := map[string]string{"artifact_name": s.Name}
	if s.Group != "" {
		provides["artifact_group"] = s.Group
	}
	info, err := json.Marshal(map[string]any{
		"payloads":          []map[string]string{{"type": s.PayloadType}},
		"artifact_provides": provides,
		"artifact_depends":  map[string][]string{"device_type": s.DeviceTypes},
	})
	if err != nil {
		return nil, fmt.Errorf("mender artifact: header-info: %w", err)
	}
	ti := map[string]any{"type": s.PayloadType}
	if len(s.Provides) > 0 {
		ti["artifact_provides"] = s.Provides
	}
	if len(s.Depends) > 0 {
		// A single value is written as a string, as mender-artifact does.
		deps := map[string]any{}
		for k, v := range s.Depends {
			if len(v) == 1 {
				deps[k] = v[0]
			} else {
				deps[k] = v
			}
		}
		ti["artifact_depends"] = deps
	}
	if len(s.ClearsProvides) > 0 {
		ti["clears_artifact_provides"] = s.ClearsProvides
	}
	typeInfo, err := json.Marshal(ti)
	if err != nil {
		return nil, fmt.Errorf("mender artifact: type-info: %w", err)
	}
	var buf bytes.Buffer
	zw, err := compressor(&buf, comp)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	entries := []struct {
		name string
		b    []byte
	}{{"header-info", info}, {"headers/0000/type-info", typeInfo}}
	if s.MetaData != nil {
		meta, err := json.Marshal(s.MetaData)
		if err != nil {
			return nil, invalid("spec: MetaData: %v", err)
		}
		entries = append(entries, struct {
			name string
			b    []byte
		}{"headers/0000/meta-data", meta})
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Size: int64(len(e.b)), Mode: 0o600, ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}); err != nil {
			return nil, fmt.Errorf("mender artifact: header: %w", err)
		}
		if _, err := tw.Write(e.b); err != nil {
			return nil, fmt.Errorf("mender artifact: header: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("mender artifact: header: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("mender artifact: header: %w", err)
	}
	return buf.Bytes(), nil
}

// writeData writes the compressed payload tar to w and returns each
// file's SHA-256.
func writeData(w io.Writer, comp string, files []Source, mtime time.Time) ([][32]byte, error) {
	zw, err := compressor(w, comp)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	sums := make([][32]byte, len(files))
	for i, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.Name, Size: f.Size, Mode: 0o644, ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}); err != nil {
			return nil, fmt.Errorf("mender artifact: payload %s: %w", f.Name, err)
		}
		h := sha256.New()
		n, err := io.CopyN(io.MultiWriter(tw, h), f.R, f.Size)
		if errors.Is(err, io.EOF) {
			return nil, invalid("payload file %q: its reader ended after %d of %d bytes", f.Name, n, f.Size)
		} else if err != nil {
			return nil, fmt.Errorf("mender artifact: payload %s: %w", f.Name, err)
		}
		var one [1]byte
		if k, _ := io.ReadFull(f.R, one[:]); k > 0 {
			return nil, invalid("payload file %q: its reader has more than %d bytes", f.Name, f.Size)
		}
		copy(sums[i][:], h.Sum(nil))
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("mender artifact: payload: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("mender artifact: payload: %w", err)
	}
	return sums, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func compressor(w io.Writer, comp string) (io.WriteCloser, error) {
	switch comp {
	case "gzip":
		return gzip.NewWriter(w), nil
	case "xz":
		zw, err := xz.NewWriter(w)
		if err != nil {
			return nil, fmt.Errorf("mender artifact: xz: %w", err)
		}
		return zw, nil
	}
	return nopCloser{w}, nil
}
