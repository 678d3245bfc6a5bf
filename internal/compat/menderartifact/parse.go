package menderartifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/ulikunitz/xz"
)

// Parse reads a Mender Artifact v3 from r, checks its structure, the
// manifest's checksum of every part and file and, with opts.Keys, its
// signature, and returns what it declares. It reads r to the end of the
// outer tar. See the package documentation for the rules.
func Parse(r io.Reader, opts Options) (*Artifact, error) {
	if opts.MaxHeaderSize <= 0 {
		opts.MaxHeaderSize = DefaultMaxHeaderSize
	}
	src := &sourceReader{r: r}
	p := &parser{opts: opts, src: src, tr: tar.NewReader(src), seen: map[string]bool{}}
	a, err := p.parse()
	if err != nil {
		if src.err != nil {
			// The input failed, not the artifact.
			return nil, fmt.Errorf("mender artifact: read: %w", src.err)
		}
		return nil, err
	}
	return a, nil
}

// sourceReader remembers an error of the input, so that Parse can tell a
// failing reader from a malformed artifact.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

type parser struct {
	opts     Options
	src      *sourceReader
	tr       *tar.Reader
	manifest map[string][32]byte
	seen     map[string]bool // manifest names checked so far
	a        Artifact
}

// next returns the next entry of the outer tar, nil at its end.
func (p *parser) next(want string) (*tar.Header, error) {
	h, err := p.tr.Next()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, invalid("reading the entry where %s belongs: %v", want, err)
	}
	if h.Typeflag != tar.TypeReg {
		return nil, invalid("entry %q is not a regular file (tar type %q)", h.Name, h.Typeflag)
	}
	return h, nil
}

// readSmall reads an entry of at most max bytes whole.
func (p *parser) readSmall(h *tar.Header, max int64) ([]byte, error) {
	if h.Size > max {
		return nil, tooLarge("%s is %d bytes, over the bound of %d", h.Name, h.Size, max)
	}
	b, err := io.ReadAll(p.tr)
	if err != nil {
		return nil, invalid("reading %s: %v", h.Name, err)
	}
	return b, nil
}

// check compares the digest of the part or file name with the manifest.
func (p *parser) check(name string, sum []byte) error {
	want, ok := p.manifest[name]
	if !ok {
		return invalid("the manifest has no checksum for %s", name)
	}
	if !bytes.Equal(want[:], sum) {
		return invalid("checksum mismatch for %s: manifest says %x, content is %x", name, want, sum)
	}
	p.seen[name] = true
	return nil
}

func (p *parser) parse() (*Artifact, error) {
	max := p.opts.MaxHeaderSize

	h, err := p.next("version")
	if err != nil {
		return nil, err
	}
	if h == nil || h.Name != "version" {
		return nil, invalid("the first entry must be version, not %s", entryName(h))
	}
	version, err := p.readSmall(h, 4096)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(version); err != nil {
		return nil, err
	}

	h, err = p.next("manifest")
	if err != nil {
		return nil, err
	}
	if h == nil || h.Name != "manifest" {
		return nil, invalid("manifest must follow version, found %s", entryName(h))
	}
	manifest, err := p.readSmall(h, max)
	if err != nil {
		return nil, err
	}
	if p.manifest, err = parseManifest(manifest); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(version)
	if err := p.check("version", sum[:]); err != nil {
		return nil, err
	}

	h, err = p.next("manifest.sig or the header")
	if err != nil {
		return nil, err
	}
	var sig []byte
	if h != nil && h.Name == "manifest.sig" {
		if sig, err = p.readSmall(h, 16<<10); err != nil {
			return nil, err
		}
		p.a.Signed = true
		if h, err = p.next("the header"); err != nil {
			return nil, err
		}
	}
	// The signature is checked before anything it protects is read.
	if len(p.opts.Keys) > 0 {
		if sig == nil {
			return nil, invalid("the artifact is not signed (no manifest.sig), but a signature by one of %d trusted keys is required", len(p.opts.Keys))
		}
		if p.a.SignedBy, err = verify(p.opts.Keys, manifest, sig); err != nil {
			return nil, err
		}
	}

	if h != nil && (h.Name == "manifest-augment" || strings.HasPrefix(h.Name, "header-augment")) {
		return nil, invalid("augmented artifacts (%s) are not supported", h.Name)
	}
	if h == nil || !strings.HasPrefix(h.Name, "header.tar") {
		return nil, invalid("header.tar.gz (or .xz, or uncompressed header.tar) must follow the manifest and the optional manifest.sig, found %s", entryName(h))
	}
	comp, err := compression(h.Name, "header.tar")
	if err != nil {
		return nil, err
	}
	p.a.Compression = comp
	if h.Size > max {
		return nil, tooLarge("%s is %d bytes, over the bound of %d", h.Name, h.Size, max)
	}
	if err := p.readHeader(h.Name, comp, max); err != nil {
		return nil, err
	}

	h, err = p.next("the first payload")
	if err != nil {
		return nil, err
	}
	if h != nil && strings.HasPrefix(h.Name, "header-augment") {
		return nil, invalid("augmented artifacts (%s) are not supported", h.Name)
	}
	var payloadBytes int64
	for i := range p.a.Payloads {
		pl := &p.a.Payloads[i]
		base := fmt.Sprintf("data/%04d", i)
		if pl.Type == "" && (h == nil || !strings.HasPrefix(h.Name, base+".tar")) {
			continue // a bootstrap payload may leave its data out
		}
		if h == nil || !strings.HasPrefix(h.Name, base+".tar") {
			return nil, invalid("%s.tar.gz (or .xz, or uncompressed .tar) must come next, found %s", base, entryName(h))
		}
		comp, err := compression(h.Name, base+".tar")
		if err != nil {
			return nil, err
		}
		if err := p.readData(pl, base, comp, &payloadBytes); err != nil {
			return nil, err
		}
		if h, err = p.next("the next payload or the end"); err != nil {
			return nil, err
		}
	}
	if h != nil {
		return nil, invalid("unexpected entry %q after the last payload", h.Name)
	}
	var missing []string
	for name := range p.manifest {
		if !p.seen[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, invalid("the manifest lists %s, which the artifact does not contain", strings.Join(missing, ", "))
	}
	return &p.a, nil
}

func entryName(h *tar.Header) string {
	if h == nil {
		return "the end of the archive"
	}
	return fmt.Sprintf("%q", h.Name)
}

func checkVersion(b []byte) error {
	var v struct {
		Format  *string `json:"format"`
		Version *int    `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return invalid("version: %v", err)
	}
	if v.Format == nil || *v.Format != "mender" {
		return invalid(`version: format must be "mender"`)
	}
	if v.Version == nil {
		return invalid("version: no version number")
	}
	if *v.Version != 3 {
		return invalid("version: format version %d is not supported, only 3", *v.Version)
	}
	return nil
}

// parseManifest reads "<64 hex>  <name>\n" lines.
func parseManifest(b []byte) (map[string][32]byte, error) {
	m := map[string][32]byte{}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return nil, invalid("manifest: empty, or its last line does not end with a newline")
	}
	for i, line := range strings.Split(string(b[:len(b)-1]), "\n") {
		hexSum, name, ok := strings.Cut(line, "  ")
		var sum [32]byte
		if !ok || len(hexSum) != 64 || name == "" || strings.ContainsAny(name, " \t\r") {
			return nil, invalid(`manifest line %d: want "<sha256 hex>  <name>", got %q`, i+1, line)
		}
		if _, err := hex.Decode(sum[:], []byte(hexSum)); err != nil {
			return nil, invalid("manifest line %d: checksum: %v", i+1, err)
		}
		if _, dup := m[name]; dup {
			return nil, invalid("manifest line %d: %s is listed twice", i+1, name)
		}
		m[name] = sum
	}
	return m, nil
}

// compression returns the compression named by the suffix of name after
// prefix.
func compression(name, prefix string) (string, error) {
	switch strings.TrimPrefix(name, prefix) {
	case ".gz":
		return "gzip", nil
	case ".xz":
		return "xz", nil
	case "":
		return "none", nil
	case ".zst":
		return "", invalid("%s: zstd compression is not supported (mender-client 3.4 reads gzip, xz or none)", name)
	}
	return "", invalid("%s: unknown compression (want .gz, .xz or none)", name)
}

func decompressor(r io.Reader, comp, name string) (io.Reader, error) {
	switch comp {
	case "gzip":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, invalid("%s: %v", name, err)
		}
		return zr, nil
	case "xz":
		zr, err := xz.NewReader(r)
		if err != nil {
			return nil, invalid("%s: %v", name, err)
		}
		return zr, nil
	}
	return r, nil
}

// hashingEntry hashes every byte read of the current outer entry.
func (p *parser) hashingEntry() (io.Reader, hash.Hash) {
	h := sha256.New()
	return io.TeeReader(p.tr, h), h
}

// limitReader fails with err once more than n bytes are read.
type limitReader struct {
	r   io.Reader
	n   int64
	err error
}

func (l *limitReader) Read(b []byte) (int, error) {
	if l.n < 0 {
		return 0, l.err
	}
	if int64(len(b)) > l.n+1 {
		b = b[:l.n+1]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	if l.n < 0 {
		return n, l.err
	}
	return n, err
}

// drain reads the rest of a decompressed stream after its inner tar ended,
// which may only be zero padding, then the rest of the outer entry.
func drain(name string, zr io.Reader, raw io.Reader) error {
	var buf [4096]byte
	var total int64
	for {
		n, err := zr.Read(buf[:])
		for _, c := range buf[:n] {
			if c != 0 {
				return invalid("%s: data after the end of its tar", name)
			}
		}
		total += int64(n)
		if total > 1<<20 {
			return invalid("%s: more than 1 MiB of padding after the end of its tar", name)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return invalid("%s: %v", name, err)
		}
	}
	if n, err := io.Copy(io.Discard, raw); err != nil {
		return invalid("%s: %v", name, err)
	} else if n > 0 {
		return invalid("%s: %d bytes after the end of its compressed stream", name, n)
	}
	return nil
}

type headerInfo struct {
	Payloads []struct {
		Type *string `json:"type"`
	} `json:"payloads"`
	ArtifactProvides map[string]string   `json:"artifact_provides"`
	ArtifactDepends  map[string][]string `json:"artifact_depends"`
}

type typeInfo struct {
	Type             *string                    `json:"type"`
	ArtifactProvides map[string]string          `json:"artifact_provides"`
	ArtifactDepends  map[string]json.RawMessage `json:"artifact_depends"`
	ClearsProvides   []string                   `json:"clears_artifact_provides"`
}

func (p *parser) readHeader(name, comp string, max int64) error {
	raw, sum := p.hashingEntry()
	zr, err := decompressor(raw, comp, name)
	if err != nil {
		return err
	}
	lim := &limitReader{r: zr, n: max, err: tooLarge("%s decompresses to more than %d bytes", name, max)}
	tr := tar.NewReader(lim)
	readEntry := func() (*tar.Header, []byte, error) {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, nil, nil
		}
		if err == nil && h.Typeflag != tar.TypeReg {
			err = fmt.Errorf("entry %q is not a regular file", h.Name)
		}
		var b []byte
		if err == nil {
			b, err = io.ReadAll(tr)
		}
		if err != nil {
			if errors.Is(err, lim.err) {
				return nil, nil, lim.err
			}
			return nil, nil, invalid("%s: %v", name, err)
		}
		return h, b, nil
	}

	h, b, err := readEntry()
	if err != nil {
		return err
	}
	if h == nil || h.Name != "header-info" {
		return invalid("%s: the first entry must be header-info, found %s", name, entryName(h))
	}
	var hi headerInfo
	if err := json.Unmarshal(b, &hi); err != nil {
		return invalid("%s: header-info: %v", name, err)
	}
	if len(hi.Payloads) == 0 {
		return invalid("%s: header-info lists no payloads", name)
	}
	if len(hi.Payloads) > 1000 {
		return invalid("%s: header-info lists %d payloads, more than 1000", name, len(hi.Payloads))
	}
	p.a.Provides = hi.ArtifactProvides
	p.a.Name = hi.ArtifactProvides["artifact_name"]
	p.a.Group = hi.ArtifactProvides["artifact_group"]
	if p.a.Name == "" {
		return invalid("%s: header-info has no artifact_provides.artifact_name", name)
	}
	p.a.Depends = hi.ArtifactDepends
	p.a.DeviceTypes = hi.ArtifactDepends["device_type"]
	if len(p.a.DeviceTypes) == 0 {
		return invalid("%s: header-info has no artifact_depends.device_type", name)
	}
	for _, dt := range p.a.DeviceTypes {
		if dt == "" {
			return invalid("%s: header-info has an empty device type", name)
		}
	}
	p.a.Payloads = make([]Payload, len(hi.Payloads))
	for i, pl := range hi.Payloads {
		if pl.Type != nil {
			if *pl.Type == "" {
				return invalid("%s: header-info: payload %d has an empty type", name, i)
			}
			p.a.Payloads[i].Type = *pl.Type
		}
	}

	if h, b, err = readEntry(); err != nil {
		return err
	}
	for h != nil && strings.HasPrefix(h.Name, "scripts/") {
		s := strings.TrimPrefix(h.Name, "scripts/")
		if s == "" || strings.Contains(s, "/") {
			return invalid("%s: bad script name %q", name, h.Name)
		}
		p.a.Scripts = append(p.a.Scripts, s)
		if h, b, err = readEntry(); err != nil {
			return err
		}
	}
	for i := range p.a.Payloads {
		pl := &p.a.Payloads[i]
		want := fmt.Sprintf("headers/%04d/type-info", i)
		if h == nil || h.Name != want {
			return invalid("%s: %s must come next, found %s", name, want, entryName(h))
		}
		var ti typeInfo
		if err := json.Unmarshal(b, &ti); err != nil {
			return invalid("%s: %s: %v", name, want, err)
		}
		// mender-artifact leaves a rootfs-image's type-info type empty.
		if ti.Type != nil && *ti.Type != "" && *ti.Type != pl.Type {
			return invalid("%s: %s says type %q, header-info says %q", name, want, *ti.Type, pl.Type)
		}
		pl.Provides = ti.ArtifactProvides
		pl.ClearsProvides = ti.ClearsProvides
		if len(ti.ArtifactDepends) > 0 {
			pl.Depends = map[string][]string{}
			for k, v := range ti.ArtifactDepends {
				var one string
				var list []string
				if json.Unmarshal(v, &one) == nil {
					list = []string{one}
				} else if err := json.Unmarshal(v, &list); err != nil {
					return invalid("%s: %s: artifact_depends.%s must be a string or a list of strings", name, want, k)
				}
				pl.Depends[k] = list
			}
		}
		if h, b, err = readEntry(); err != nil {
			return err
		}
		if meta := fmt.Sprintf("headers/%04d/meta-data", i); h != nil && h.Name == meta {
			// mender-artifact writes an empty meta-data for a rootfs-image.
			if err := json.Unmarshal(b, &pl.MetaData); len(b) > 0 && err != nil {
				return invalid("%s: %s: %v", name, meta, err)
			} else if len(b) > 0 && pl.MetaData == nil {
				return invalid("%s: %s must be a JSON object, not null", name, meta)
			}
			if h, b, err = readEntry(); err != nil {
				return err
			}
		}
	}
	if h != nil {
		return invalid("%s: unexpected entry %q", name, h.Name)
	}
	if err := drain(name, lim, raw); err != nil {
		if errors.Is(err, lim.err) {
			return lim.err
		}
		return err
	}
	return p.check(name, sum.Sum(nil))
}

func (p *parser) readData(pl *Payload, base, comp string, total *int64) error {
	name := base + ".tar"
	if comp != "none" {
		name = base + map[string]string{"gzip": ".tar.gz", "xz": ".tar.xz"}[comp]
	}
	raw := io.Reader(p.tr) // the compressed tar itself is not in the manifest
	zr, err := decompressor(raw, comp, name)
	if err != nil {
		return err
	}
	var in io.Reader = zr
	var lim *limitReader
	if p.opts.MaxPayloadSize > 0 {
		lim = &limitReader{r: zr, n: p.opts.MaxPayloadSize - *total,
			err: tooLarge("the payloads decompress to more than %d bytes", p.opts.MaxPayloadSize)}
		in = lim
	}
	counted := &countReader{r: in}
	tr := tar.NewReader(counted)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if lim != nil && errors.Is(err, lim.err) {
				return lim.err
			}
			return invalid("%s: %v", name, err)
		}
		if h.Typeflag != tar.TypeReg {
			return invalid("%s: entry %q is not a regular file", name, h.Name)
		}
		if h.Name == "" || h.Name != path.Base(h.Name) || h.Name == "." || h.Name == ".." {
			return invalid("%s: file name %q has a directory part", name, h.Name)
		}
		if names[h.Name] {
			return invalid("%s: file %q appears twice", name, h.Name)
		}
		names[h.Name] = true
		sum := sha256.New()
		n, err := io.Copy(sum, tr)
		if err != nil {
			if lim != nil && errors.Is(err, lim.err) {
				return lim.err
			}
			return invalid("%s: reading %s: %v", name, h.Name, err)
		}
		if err := p.check(base+"/"+h.Name, sum.Sum(nil)); err != nil {
			return err
		}
		f := File{Name: h.Name, Size: n, ModTime: h.ModTime}
		copy(f.SHA256[:], sum.Sum(nil))
		pl.Files = append(pl.Files, f)
	}
	if err := drain(name, in, raw); err != nil {
		if lim != nil && errors.Is(err, lim.err) {
			return lim.err
		}
		return err
	}
	*total += counted.n
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
