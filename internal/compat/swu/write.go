package swu

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/smallstep/pkcs7"

	"cradle"
)

// Spec is the software description Write puts into sw-description.
type Spec struct {
	Version               string
	Description           string
	HardwareCompatibility []string
}

// Source is one payload for Write. Data is read twice (once to hash, once
// to copy), so it is an io.ReaderAt of Size bytes rather than a stream.
type Source struct {
	// Entry describes the payload; Section defaults to "images", Filename
	// is required and SHA256 is filled in by Write. Device goes with
	// images, Dest ("path") with files.
	Entry Entry
	Data  io.ReaderAt
	Size  int64
}

// Signer signs sw-description. Cert must allow extended key usage
// emailProtection (what SWUpdate checks by default); Chain holds the
// intermediates to embed, if any.
type Signer struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// Write writes a signed .swu to w: a crc-format cpio archive of
// sw-description (libconfig, each payload with its sha256),
// sw-description.sig (Sign) and the payloads in order. Errors about the
// input have code EINVALID.
func Write(w io.Writer, spec Spec, payloads []Source, signer Signer) error {
	names := map[string]bool{DescriptionName: true, SignatureName: true}
	sums := make([]uint32, len(payloads))
	for i := range payloads {
		p := &payloads[i]
		if err := checkName(p.Entry.Filename); err != nil {
			return err
		}
		if names[p.Entry.Filename] {
			return cradle.Errorf(cradle.EINVALID, "swu: payload name %q is used twice or reserved", p.Entry.Filename)
		}
		names[p.Entry.Filename] = true
		if p.Entry.Section == "" {
			p.Entry.Section = "images"
		}
		if !sections[p.Entry.Section] {
			return cradle.Errorf(cradle.EINVALID, "swu: payload %q: section %q, want images, files or scripts", p.Entry.Filename, p.Entry.Section)
		}
		h := sha256.New()
		var s byteSum
		n, err := io.Copy(io.MultiWriter(h, &s), io.NewSectionReader(p.Data, 0, p.Size))
		if err != nil {
			return fmt.Errorf("swu: read payload %q: %w", p.Entry.Filename, err)
		}
		if n != p.Size {
			return cradle.Errorf(cradle.EINVALID, "swu: payload %q has %d bytes, %d announced", p.Entry.Filename, n, p.Size)
		}
		p.Entry.SHA256 = hex.EncodeToString(h.Sum(nil))
		sums[i] = uint32(s)
	}
	desc := Describe(spec, payloads)
	sig, err := Sign(desc, signer)
	if err != nil {
		return err
	}
	c := &cpioWriter{w: w}
	if err := c.file(DescriptionName, int64(len(desc)), sumOf(desc), strings.NewReader(string(desc))); err != nil {
		return err
	}
	if err := c.file(SignatureName, int64(len(sig)), sumOf(sig), strings.NewReader(string(sig))); err != nil {
		return err
	}
	for i, p := range payloads {
		if err := c.file(p.Entry.Filename, p.Size, sums[i], io.NewSectionReader(p.Data, 0, p.Size)); err != nil {
			return err
		}
	}
	return c.close()
}

type byteSum uint32

func (s *byteSum) Write(p []byte) (int, error) {
	for _, b := range p {
		*s += byteSum(b)
	}
	return len(p), nil
}

func sumOf(b []byte) uint32 {
	var s byteSum
	s.Write(b)
	return uint32(s)
}

// Describe renders spec and the payloads' entries (with their SHA256) as a
// libconfig sw-description.
func Describe(spec Spec, payloads []Source) []byte {
	var b strings.Builder
	b.WriteString("software =\n{\n")
	fmt.Fprintf(&b, "\tversion = %s;\n", quote(spec.Version))
	if spec.Description != "" {
		fmt.Fprintf(&b, "\tdescription = %s;\n", quote(spec.Description))
	}
	if len(spec.HardwareCompatibility) > 0 {
		q := make([]string, len(spec.HardwareCompatibility))
		for i, h := range spec.HardwareCompatibility {
			q[i] = quote(h)
		}
		fmt.Fprintf(&b, "\thardware-compatibility = [ %s ];\n", strings.Join(q, ", "))
	}
	for _, sec := range []string{"images", "files", "scripts"} {
		var items []Entry
		for _, p := range payloads {
			if p.Entry.Section == sec {
				items = append(items, p.Entry)
			}
		}
		if len(items) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\t%s = (\n", sec)
		for i, e := range items {
			b.WriteString("\t\t{\n")
			for _, kv := range [][2]string{{"filename", e.Filename}, {"type", e.Type}, {"device", e.Device}, {"path", e.Dest}, {"version", e.Version}, {"sha256", e.SHA256}} {
				if kv[1] != "" {
					fmt.Fprintf(&b, "\t\t\t%s = %s;\n", kv[0], quote(kv[1]))
				}
			}
			b.WriteString("\t\t}")
			if i < len(items)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString("\t);\n")
	}
	b.WriteString("}\n")
	return []byte(b.String())
}

// quote writes a libconfig string literal.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if c < 0x20 || c == 0x7f {
				fmt.Fprintf(&b, `\x%02x`, c)
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Sign returns a detached DER CMS SignedData over desc with SHA-256 and
// the signed attributes contentType, signingTime and messageDigest, as
// `openssl cms -sign -outform DER -nosmimecap -binary` makes it. The signer
// certificate (and Chain) is embedded. It refuses a certificate without
// extended key usage emailProtection, which SWUpdate would reject.
func Sign(desc []byte, s Signer) ([]byte, error) {
	if s.Cert == nil || s.Key == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: signing needs a certificate and its key")
	}
	if !slices.Contains(s.Cert.ExtKeyUsage, x509.ExtKeyUsageEmailProtection) && !slices.Contains(s.Cert.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: signer certificate %s lacks extended key usage emailProtection, which SWUpdate requires", s.Cert.Subject)
	}
	sd, err := pkcs7.NewSignedData(desc)
	if err != nil {
		return nil, fmt.Errorf("swu: sign: %w", err)
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if err := sd.AddSignerChain(s.Cert, s.Key, s.Chain, pkcs7.SignerInfoConfig{}); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sign sw-description: %v", err)
	}
	sd.Detach()
	der, err := sd.Finish()
	if err != nil {
		return nil, fmt.Errorf("swu: sign: %w", err)
	}
	return der, nil
}
