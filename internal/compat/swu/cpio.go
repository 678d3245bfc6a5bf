package swu

import (
	"bufio"
	"fmt"
	"io"
	"strconv"

	"cradle"
)

// cpio "new ASCII" headers: a 6-byte magic and 13 eight-digit hex fields.
const (
	magicNewc    = "070701"
	magicCRC     = "070702"
	headerLen    = 110
	trailerName  = "TRAILER!!!"
	maxNameLen   = 256
	modeTypeMask = 0o170000
	modeRegular  = 0o100000
)

// entry is one cpio member's header.
type entry struct {
	name  string
	mode  uint32
	size  int64
	check uint32 // the byte sum of the data, for the crc format
	crc   bool
}

// cpioReader reads a newc or crc archive member by member, streaming each
// member's data.
type cpioReader struct {
	r      *bufio.Reader
	off    int64 // bytes consumed so far, for alignment
	format string
}

func (c *cpioReader) read(p []byte) error {
	n, err := io.ReadFull(c.r, p)
	c.off += int64(n)
	return err
}

func (c *cpioReader) skipPad() error {
	pad := (4 - c.off%4) % 4
	if pad == 0 {
		return nil
	}
	var b [3]byte
	if err := c.read(b[:pad]); err != nil {
		return cradle.Errorf(cradle.EINVALID, "swu: cpio archive ends inside padding")
	}
	for _, x := range b[:pad] {
		if x != 0 {
			return cradle.Errorf(cradle.EINVALID, "swu: cpio padding at offset %d is not zero", c.off)
		}
	}
	return nil
}

// next reads the next header; it returns io.EOF after the trailer.
func (c *cpioReader) next() (*entry, error) {
	var h [headerLen]byte
	start := c.off
	if err := c.read(h[:]); err != nil {
		if err == io.EOF && start == 0 {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: empty file, not a cpio archive")
		}
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio archive truncated in the header at offset %d (no TRAILER!!!)", start)
	}
	magic := string(h[:6])
	if magic != magicNewc && magic != magicCRC {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: bad cpio magic %q at offset %d: want 070701 (newc) or 070702 (crc)", magic, start)
	}
	if c.format == "" {
		c.format = magic
	} else if c.format != magic {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio member at offset %d mixes formats %s and %s", start, c.format, magic)
	}
	var f [13]uint32
	for i := range f {
		s := string(h[6+8*i : 14+8*i])
		v, err := strconv.ParseUint(s, 16, 32)
		if err != nil {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio header at offset %d: field %d %q is not hex", start, i, s)
		}
		f[i] = uint32(v)
	}
	e := &entry{mode: f[1], size: int64(f[6]), check: f[12], crc: magic == magicCRC}
	nameLen := f[11]
	if nameLen < 2 || nameLen > maxNameLen {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio header at offset %d: name size %d out of range 2..%d", start, nameLen, maxNameLen)
	}
	name := make([]byte, nameLen)
	if err := c.read(name); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio archive truncated in a name at offset %d", start)
	}
	if name[nameLen-1] != 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio name at offset %d is not NUL-terminated", start)
	}
	e.name = string(name[:nameLen-1])
	if err := c.skipPad(); err != nil {
		return nil, err
	}
	if e.name == trailerName {
		if e.size != 0 {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio trailer has data")
		}
		return nil, io.EOF
	}
	if !e.crc && e.check != 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio member %q: newc header with a non-zero check field", e.name)
	}
	if e.mode&modeTypeMask != modeRegular {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: cpio member %q is not a regular file (mode %o)", e.name, e.mode)
	}
	if err := checkName(e.name); err != nil {
		return nil, err
	}
	return e, nil
}

// checkName refuses names SWUpdate would not look up or that could escape
// a directory when a caller stores payloads under their names.
func checkName(n string) error {
	if n == "" || n == "." || n == ".." {
		return cradle.Errorf(cradle.EINVALID, "swu: cpio member name %q is not a file name", n)
	}
	for _, r := range n {
		if r == '/' || r == '\\' || r < 0x20 || r == 0x7f {
			return cradle.Errorf(cradle.EINVALID, "swu: cpio member name %q must be a plain file name (no path separators or control characters)", n)
		}
	}
	return nil
}

// data returns a reader of e's data that, once drained, checks the crc
// format's byte sum; the caller must call done afterwards.
func (c *cpioReader) data(e *entry) *memberReader {
	return &memberReader{c: c, e: e, left: e.size}
}

type memberReader struct {
	c    *cpioReader
	e    *entry
	left int64
	sum  uint32
}

func (m *memberReader) Read(p []byte) (int, error) {
	if m.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > m.left {
		p = p[:m.left]
	}
	n, err := m.c.r.Read(p)
	m.c.off += int64(n)
	m.left -= int64(n)
	for _, b := range p[:n] {
		m.sum += uint32(b)
	}
	if err == io.EOF {
		if m.left > 0 {
			return n, cradle.Errorf(cradle.EINVALID, "swu: cpio member %q truncated: %d of %d bytes missing", m.e.name, m.left, m.e.size)
		}
		err = nil
	}
	return n, err
}

// done drains what the consumer left, checks the crc and skips the
// padding after the data.
func (m *memberReader) done() error {
	if _, err := io.Copy(io.Discard, m); err != nil {
		return err
	}
	if m.e.crc && m.sum != m.e.check {
		return cradle.Errorf(cradle.EINVALID, "swu: cpio member %q fails its crc check: header says %08x, data sums to %08x", m.e.name, m.e.check, m.sum)
	}
	return m.c.skipPad()
}

// cpioWriter writes a crc-format archive, or newc when magic is magicNewc
// (whose check fields must then be zero).
type cpioWriter struct {
	w     io.Writer
	off   int64
	ino   uint32
	magic string
}

func (c *cpioWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	var z [3]byte
	return c.write(z[:(4-c.off%4)%4])
}

func (c *cpioWriter) header(name string, mode uint32, size int64, sum uint32) error {
	if size > 0xffffffff {
		return cradle.Errorf(cradle.ETOOLARGE, "swu: payload %q is %d bytes; cpio allows at most 4 GiB - 1", name, size)
	}
	c.ino++
	nlink := uint32(1)
	ino := c.ino
	if name == trailerName {
		ino, nlink = 0, 1
	}
	magic := c.magic
	if magic == "" {
		magic = magicCRC
	}
	h := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		magic, ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, sum)
	if err := c.write([]byte(h)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// file writes one member whose byte sum is already known, copying exactly
// size bytes from r.
func (c *cpioWriter) file(name string, size int64, sum uint32, r io.Reader) error {
	if err := c.header(name, modeRegular|0o644, size, sum); err != nil {
		return err
	}
	n, err := io.Copy(c.w, io.LimitReader(r, size))
	c.off += n
	if err != nil {
		return err
	}
	if n != size {
		return cradle.Errorf(cradle.EINVALID, "swu: payload %q gave %d bytes, %d announced", name, n, size)
	}
	return c.pad()
}

func (c *cpioWriter) close() error {
	if err := c.header(trailerName, 0, 0, 0); err != nil {
		return err
	}
	// cpio pads the archive to a 512-byte block.
	var z [512]byte
	return c.write(z[:(512-c.off%512)%512])
}
