package swu

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"cradle"
)

// Resign copies the .swu read from r to w with a new sw-description.sig
// made by s (see Sign), in place of the old one if there was one:
// sw-description, sw-description.sig, then every payload member as it
// was, in the input's cpio format (crc or newc). Because sw-description
// binds every payload by digest, the new signature covers the image.
//
// Resign streams and checks the archive's framing, the crc format's byte
// sums (after each member is copied) and that sw-description parses; it
// does not check payload digests: run Parse with the signer's roots on the
// output before trusting it (a mismatch there means the input was damaged,
// and the output must be discarded). Errors about the input have code
// EINVALID (ETOOLARGE for an oversize sw-description); on error w holds a
// partial image.
func Resign(w io.Writer, r io.Reader, s Signer) error {
	c := &cpioReader{r: bufio.NewReaderSize(r, 64<<10)}
	e, err := c.next()
	if err == io.EOF {
		return cradle.Errorf(cradle.EINVALID, "swu: the archive is empty; sw-description must come first")
	}
	if err != nil {
		return err
	}
	if e.name != DescriptionName {
		return cradle.Errorf(cradle.EINVALID, "swu: first member is %q; sw-description must come first", e.name)
	}
	desc, err := readSmall(c, e, maxDescription)
	if err != nil {
		return err
	}
	if _, err := ParseDescription(desc); err != nil {
		return err
	}
	sig, err := Sign(desc, s)
	if err != nil {
		return err
	}
	out := &cpioWriter{w: w, magic: c.format}
	sum := func(b []byte) uint32 {
		if c.format == magicNewc {
			return 0
		}
		return sumOf(b)
	}
	if err := out.file(DescriptionName, int64(len(desc)), sum(desc), bytes.NewReader(desc)); err != nil {
		return fmt.Errorf("swu: write: %w", err)
	}
	if err := out.file(SignatureName, int64(len(sig)), sum(sig), bytes.NewReader(sig)); err != nil {
		return fmt.Errorf("swu: write: %w", err)
	}

	e, err = c.next()
	if err != nil && err != io.EOF {
		return err
	}
	if e != nil && e.name == SignatureName {
		if _, err := readSmall(c, e, 64<<10); err != nil {
			return err
		}
		if e, err = c.next(); err != nil && err != io.EOF {
			return err
		}
	}
	for e != nil {
		if e.name == DescriptionName || e.name == SignatureName {
			return cradle.Errorf(cradle.EINVALID, "swu: %s appears again after the payloads started", e.name)
		}
		if err := out.header(e.name, e.mode, e.size, e.check); err != nil {
			return fmt.Errorf("swu: write: %w", err)
		}
		m := c.data(e)
		n, err := io.Copy(w, m)
		out.off += n
		if err != nil {
			return err
		}
		if err := m.done(); err != nil {
			return err
		}
		if err := out.pad(); err != nil {
			return fmt.Errorf("swu: write: %w", err)
		}
		if e, err = c.next(); err != nil && err != io.EOF {
			return err
		}
	}
	var buf [4096]byte
	for {
		n, err := c.r.Read(buf[:])
		if bytes.IndexFunc(buf[:n], func(r rune) bool { return r != 0 }) >= 0 {
			return cradle.Errorf(cradle.EINVALID, "swu: data after the cpio trailer")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := out.close(); err != nil {
		return fmt.Errorf("swu: write: %w", err)
	}
	return nil
}
