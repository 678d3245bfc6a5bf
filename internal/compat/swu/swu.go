package swu

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"

	"cradle"
)

// Names of the members SWUpdate treats specially.
const (
	DescriptionName = "sw-description"
	SignatureName   = "sw-description.sig"
)

// Entry is one element of an images, files or scripts list in
// sw-description.
type Entry struct {
	// Section is "images", "files" or "scripts"; Path is the dotted path
	// of the list in the document ("software.images",
	// "software.myboard.stable.images").
	Section, Path string
	Filename      string
	Type          string // handler: raw, rawfile, ubivol, archive, shellscript, …
	Device        string // for images
	Dest          string // "path" for files
	Version       string
	// SHA256 is the payload's digest in lower-case hex, "" when absent.
	SHA256 string
}

// Description is what Cradle reads from sw-description.
type Description struct {
	Version     string
	Description string
	// HardwareCompatibility lists the board revisions the image is for
	// (empty: any).
	HardwareCompatibility []string
	// Entries are every images/files/scripts element found under software,
	// including board- and selection-specific sections, in document order.
	Entries []Entry
	// Root is the whole parsed document.
	Root *Value
}

// Payload is a cpio member after sw-description and its signature.
type Payload struct {
	Name   string
	Size   int64
	SHA256 string
}

// Image is a parsed .swu.
type Image struct {
	// Format is "newc" or "crc".
	Format      string
	Description Description
	// DescriptionRaw is sw-description as stored (what the signature covers).
	DescriptionRaw []byte
	// Signature is sw-description.sig (DER CMS), nil when the image is unsigned.
	Signature []byte
	// Signer is the certificate that signed sw-description, set when Parse
	// verified the signature (Options.Roots).
	Signer   *x509.Certificate
	Payloads []Payload
}

// Options control Parse. The zero value parses and checks structure and
// digests, accepts unsigned images and verifies no signature.
type Options struct {
	// Roots, when set, makes a signature mandatory: sw-description.sig
	// must be a CMS SignedData over sw-description by a certificate that
	// chains to Roots.
	Roots *x509.CertPool
	// KeyUsages the signer certificate must allow; nil means
	// emailProtection, what SWUpdate (Debian's build) checks by default.
	KeyUsages []x509.ExtKeyUsage
	// Now is the time certificates are checked at; zero means time.Now.
	Now time.Time
	// Payload, when set, is called for each payload with a reader of its
	// data; the digest is checked after it returns (the rest is drained
	// first). A payload that then fails the check makes Parse return an
	// error: the caller must discard what it kept.
	Payload func(p Payload, r io.Reader) error
}

// Parse reads a SWUpdate image from r, streaming: payloads are hashed as
// they pass and never held in memory. It returns an error with code
// EINVALID (or ETOOLARGE) naming the first thing wrong: not a newc/crc
// cpio archive, a crc mismatch, sw-description missing, not first, or
// malformed, a signature that is missing (when Options.Roots is set),
// second-placed wrongly, or does not verify, a payload not named in
// sw-description or named but absent, a named file without a sha256, or a
// digest mismatch.
func Parse(r io.Reader, opts Options) (*Image, error) {
	c := &cpioReader{r: bufio.NewReaderSize(r, 64<<10)}
	img := &Image{}

	e, err := c.next()
	if err == io.EOF {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: the archive is empty; sw-description must come first")
	}
	if err != nil {
		return nil, err
	}
	if c.format == magicCRC {
		img.Format = "crc"
	} else {
		img.Format = "newc"
	}
	if e.name != DescriptionName {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: first member is %q; sw-description must come first", e.name)
	}
	if img.DescriptionRaw, err = readSmall(c, e, maxDescription); err != nil {
		return nil, err
	}
	root, err := ParseConfig(img.DescriptionRaw)
	if err != nil {
		return nil, err
	}
	desc, err := describe(root)
	if err != nil {
		return nil, err
	}
	img.Description = *desc
	want := map[string]string{}
	for _, en := range desc.Entries {
		if en.Filename == "" {
			continue
		}
		if old, ok := want[en.Filename]; ok && old != en.SHA256 {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description gives %q two different sha256 values", en.Filename)
		}
		want[en.Filename] = en.SHA256
	}

	e, err = c.next()
	if err != nil && err != io.EOF {
		return nil, err
	}
	if e != nil && e.name == SignatureName {
		if img.Signature, err = readSmall(c, e, 64<<10); err != nil {
			return nil, err
		}
		e, err = c.next()
		if err != nil && err != io.EOF {
			return nil, err
		}
	}
	if opts.Roots != nil {
		if img.Signature == nil {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: the image is not signed: sw-description.sig must follow sw-description")
		}
		if img.Signer, err = Verify(img.DescriptionRaw, img.Signature, opts); err != nil {
			return nil, err
		}
	}

	seen := map[string]bool{}
	for e != nil {
		if e.name == DescriptionName || e.name == SignatureName {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: %s appears again after the payloads started", e.name)
		}
		if seen[e.name] {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: payload %q appears twice", e.name)
		}
		seen[e.name] = true
		sum, ok := want[e.name]
		if !ok {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: payload %q is not named in sw-description", e.name)
		}
		p := Payload{Name: e.name, Size: e.size}
		m := c.data(e)
		h := sha256.New()
		tr := io.TeeReader(m, h)
		if opts.Payload != nil {
			if err := opts.Payload(p, tr); err != nil {
				return nil, fmt.Errorf("swu: payload %q: %w", e.name, err)
			}
		}
		if _, err := io.Copy(h, m); err != nil {
			return nil, err
		}
		if err := m.done(); err != nil {
			return nil, err
		}
		p.SHA256 = hex.EncodeToString(h.Sum(nil))
		if p.SHA256 != sum {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: payload %q has sha256 %s; sw-description says %s", e.name, p.SHA256, sum)
		}
		img.Payloads = append(img.Payloads, p)
		if e, err = c.next(); err != nil && err != io.EOF {
			return nil, err
		}
	}
	var missing []string
	for name := range want {
		if !seen[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description names %s but the archive does not hold it", strings.Join(missing, ", "))
	}
	// After the trailer only zero padding may follow.
	var buf [4096]byte
	for {
		n, err := c.r.Read(buf[:])
		for _, b := range buf[:n] {
			if b != 0 {
				return nil, cradle.Errorf(cradle.EINVALID, "swu: data after the cpio trailer")
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

func readSmall(c *cpioReader, e *entry, limit int64) ([]byte, error) {
	if e.size > limit {
		return nil, cradle.Errorf(cradle.ETOOLARGE, "swu: %s is %d bytes, more than the %d allowed", e.name, e.size, limit)
	}
	m := c.data(e)
	b, err := io.ReadAll(m)
	if err != nil {
		return nil, err
	}
	return b, m.done()
}

// ParseDescription parses sw-description (libconfig or JSON) and extracts
// what Cradle needs; errors have code EINVALID.
func ParseDescription(doc []byte) (*Description, error) {
	root, err := ParseConfig(doc)
	if err != nil {
		return nil, err
	}
	return describe(root)
}

func describe(root *Value) (*Description, error) {
	sw := root.Get("software")
	if sw == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description has no software group")
	}
	if sw.Kind != KindGroup {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description: software is a %s, want a group", sw.Kind)
	}
	d := &Description{Root: root}
	var err error
	if d.Version, err = optString(sw, "version", "software"); err != nil {
		return nil, err
	}
	if d.Description, err = optString(sw, "description", "software"); err != nil {
		return nil, err
	}
	if hw := sw.Get("hardware-compatibility"); hw != nil {
		if hw.Kind != KindArray && hw.Kind != KindList {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description: software.hardware-compatibility is a %s, want an array of strings", hw.Kind)
		}
		for _, e := range hw.Elems {
			if e.Kind != KindString {
				return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description: software.hardware-compatibility holds a %s, want strings", e.Kind)
			}
			d.HardwareCompatibility = append(d.HardwareCompatibility, e.Str)
		}
	}
	if err := collect(sw, "software", 0, d); err != nil {
		return nil, err
	}
	return d, nil
}

func optString(g *Value, name, path string) (string, error) {
	v := g.Get(name)
	if v == nil {
		return "", nil
	}
	if v.Kind != KindString {
		return "", cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s.%s is a %s, want a string", path, name, v.Kind)
	}
	return v.Str, nil
}

var sections = map[string]bool{"images": true, "files": true, "scripts": true}

// collect walks the groups under software (boards, selections, their
// modes) and gathers every images/files/scripts element.
func collect(g *Value, path string, depth int, d *Description) error {
	for _, s := range g.Settings {
		p := path + "." + s.Name
		switch {
		case sections[s.Name]:
			if s.Value.Kind != KindList {
				return cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s is a %s, want a list ( … ) of groups", p, s.Value.Kind)
			}
			for i, el := range s.Value.Elems {
				en, err := entryOf(el, s.Name, p, i)
				if err != nil {
					return err
				}
				d.Entries = append(d.Entries, en)
			}
		case s.Value.Kind == KindGroup && depth < 4:
			if err := collect(s.Value, p, depth+1, d); err != nil {
				return err
			}
		}
	}
	return nil
}

func entryOf(el *Value, section, path string, i int) (Entry, error) {
	where := fmt.Sprintf("%s[%d]", path, i)
	if el.Kind != KindGroup {
		return Entry{}, cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s is a %s, want a group", where, el.Kind)
	}
	en := Entry{Section: section, Path: path}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"filename", &en.Filename}, {"type", &en.Type}, {"device", &en.Device}, {"path", &en.Dest}, {"version", &en.Version}, {"sha256", &en.SHA256}} {
		s, err := optString(el, f.name, where)
		if err != nil {
			return Entry{}, err
		}
		*f.dst = s
	}
	if en.Filename != "" {
		if err := checkName(en.Filename); err != nil {
			return Entry{}, cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s.filename: %v", where, err)
		}
		if en.SHA256 == "" {
			return Entry{}, cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s (%q) has no sha256; every payload must carry one", where, en.Filename)
		}
	}
	if en.SHA256 != "" {
		b, err := hex.DecodeString(en.SHA256)
		if err != nil || len(b) != sha256.Size {
			return Entry{}, cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s.sha256 %q is not 64 hex digits", where, en.SHA256)
		}
		en.SHA256 = strings.ToLower(en.SHA256)
		if en.Filename == "" {
			return Entry{}, cradle.Errorf(cradle.EINVALID, "swu: sw-description: %s has a sha256 but no filename", where)
		}
	}
	return en, nil
}

// Verify checks sig, a DER CMS SignedData (detached, or with content equal
// to desc), over desc against opts.Roots and opts.KeyUsages at opts.Now,
// and returns the signer's certificate. Errors have code EINVALID.
func Verify(desc, sig []byte, opts Options) (*x509.Certificate, error) {
	if opts.Roots == nil {
		return nil, errors.New("swu: Verify needs Options.Roots")
	}
	p7, err := pkcs7.Parse(sig)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description.sig is not a DER CMS SignedData: %v", err)
	}
	if len(p7.Signers) != 1 {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description.sig has %d signers, want 1", len(p7.Signers))
	}
	if len(p7.Content) > 0 && !bytes.Equal(p7.Content, desc) {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description.sig embeds content other than sw-description")
	}
	p7.Content = desc
	if err := p7.Verify(); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: the signature of sw-description does not verify: %v", err)
	}
	signer := p7.GetOnlySigner()
	if signer == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description.sig does not carry its signer's certificate")
	}
	usages := opts.KeyUsages
	if usages == nil {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	inter := x509.NewCertPool()
	for _, c := range p7.Certificates {
		if !c.Equal(signer) {
			inter.AddCert(c)
		}
	}
	if _, err := signer.Verify(x509.VerifyOptions{Roots: opts.Roots, Intermediates: inter, CurrentTime: now, KeyUsages: usages}); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: the signer of sw-description (%s) is not trusted: %v", signer.Subject, err)
	}
	return signer, nil
}
