package menderartifact

import (
	"archive/tar"
	"crypto"
	"crypto/sha256"
	"fmt"
	"io"
)

// Resign copies the artifact read from r to w with a new manifest.sig made
// by signer (RSA, or ECDSA P-256 as raw r‖s), in place of the old one if
// there was one: version, manifest, manifest.sig, then every later entry
// byte for byte. Because the manifest binds every other part by digest,
// the new signature covers the whole artifact.
//
// Resign streams and checks only what it needs: version (format 3), a
// well-formed manifest no larger than DefaultMaxHeaderSize that lists
// version with its digest, and regular-file entries. It does not check
// the header's or payloads' digests: run Parse with the signer's key on
// the output before trusting it (a mismatch there means the input was
// damaged, and the output must be discarded). Errors about the input are
// EINVALID (ETOOLARGE for an oversize manifest); w's and signer's errors
// are wrapped. On error w holds a partial artifact.
func Resign(w io.Writer, r io.Reader, signer crypto.Signer) error {
	if signer == nil {
		return invalid("resign: no signing key")
	}
	src := &sourceReader{r: r}
	sink := &sinkWriter{w: w}
	p := &parser{src: src, tr: tar.NewReader(src), seen: map[string]bool{}}
	err := p.resign(tar.NewWriter(sink), signer)
	switch {
	case err == nil:
		return nil
	case src.err != nil:
		return fmt.Errorf("mender artifact: read: %w", src.err)
	case sink.err != nil:
		return fmt.Errorf("mender artifact: write: %w", sink.err)
	}
	return err
}

// sinkWriter remembers an error of the output, so that Resign can tell it
// from a malformed input.
type sinkWriter struct {
	w   io.Writer
	err error
}

func (s *sinkWriter) Write(b []byte) (int, error) {
	n, err := s.w.Write(b)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

func (p *parser) resign(tw *tar.Writer, signer crypto.Signer) error {
	put := func(h *tar.Header, b []byte) error {
		h.Size = int64(len(b))
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("mender artifact: write %s: %w", h.Name, err)
		}
		if _, err := tw.Write(b); err != nil {
			return fmt.Errorf("mender artifact: write %s: %w", h.Name, err)
		}
		return nil
	}

	h, err := p.next("version")
	if err != nil {
		return err
	}
	if h == nil || h.Name != "version" {
		return invalid("the first entry must be version, not %s", entryName(h))
	}
	version, err := p.readSmall(h, 4096)
	if err != nil {
		return err
	}
	if err := checkVersion(version); err != nil {
		return err
	}
	if err := put(h, version); err != nil {
		return err
	}

	h, err = p.next("manifest")
	if err != nil {
		return err
	}
	if h == nil || h.Name != "manifest" {
		return invalid("manifest must follow version, found %s", entryName(h))
	}
	manifest, err := p.readSmall(h, DefaultMaxHeaderSize)
	if err != nil {
		return err
	}
	if p.manifest, err = parseManifest(manifest); err != nil {
		return err
	}
	sum := sha256.Sum256(version)
	if err := p.check("version", sum[:]); err != nil {
		return err
	}
	sig, err := sign(signer, manifest)
	if err != nil {
		return err
	}
	manifestHeader := *h
	if err := put(h, manifest); err != nil {
		return err
	}
	sigHeader := manifestHeader
	sigHeader.Name = "manifest.sig"
	if err := put(&sigHeader, sig); err != nil {
		return err
	}

	h, err = p.next("manifest.sig or the header")
	if err != nil {
		return err
	}
	if h != nil && h.Name == "manifest.sig" {
		if _, err := p.readSmall(h, 16<<10); err != nil {
			return err
		}
		if h, err = p.next("the header"); err != nil {
			return err
		}
	}
	if h == nil {
		return invalid("the artifact ends after the manifest: the header and payloads are missing")
	}
	for h != nil {
		if h.Name == "version" || h.Name == "manifest" || h.Name == "manifest.sig" {
			return invalid("%s appears twice", h.Name)
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("mender artifact: write %s: %w", h.Name, err)
		}
		if n, err := io.Copy(tw, p.tr); err != nil {
			return invalid("copying %s: %v", h.Name, err)
		} else if n != h.Size {
			return invalid("%s is cut short: %d of %d bytes", h.Name, n, h.Size)
		}
		if h, err = p.next("the next entry or the end"); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("mender artifact: %w", err)
	}
	return nil
}
