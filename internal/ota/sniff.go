package ota

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"cradle"
	"cradle/internal/mcuboot"
)

// SniffSize is how many leading bytes of an artifact Sniff needs: a tar
// header and a small first entry (Mender), a cpio header and its name
// (SWUpdate), an MCUboot magic.
const SniffSize = 4096

// maxMenderVersionEntry bounds the "version" entry of a Mender artifact;
// mender-artifact writes about 40 bytes.
const maxMenderVersionEntry = 1024

// Sniff says what an artifact is from its first bytes (at most SniffSize
// of them are looked at): an MCUboot image (its magic), a Mender artifact
// (CheckMender), a SWUpdate image (CheckSWUpdate), or else a file.
func Sniff(head []byte) cradle.ReleaseKind {
	switch {
	case CheckMCUbootMagic(head) == nil:
		return cradle.ReleaseMCUboot
	case CheckMender(head) == nil:
		return cradle.ReleaseMender
	case CheckSWUpdate(head) == nil:
		return cradle.ReleaseSWUpdate
	}
	return cradle.ReleaseFile
}

// CheckKind checks that head (the first SniffSize bytes of an artifact)
// is of kind k. A file may be anything but one of the recognised kinds, so
// that an MCUboot image is not uploaded past its signature check by
// calling it a file. Errors are EINVALID and say what the bytes are.
func CheckKind(head []byte, k cradle.ReleaseKind) error {
	var err error
	switch k {
	case cradle.ReleaseMCUboot:
		err = CheckMCUbootMagic(head)
	case cradle.ReleaseMender:
		err = CheckMender(head)
	case cradle.ReleaseSWUpdate:
		err = CheckSWUpdate(head)
	case cradle.ReleaseFile:
		if got := Sniff(head); got != cradle.ReleaseFile {
			return cradle.Errorf(cradle.EINVALID, "the artifact is a %s artifact, not an opaque file: upload it with kind %s (or no kind)", got, got)
		}
		return nil
	default:
		return cradle.Errorf(cradle.EINVALID, "unknown release kind %q; use one of mcuboot, mender, swupdate, file", k)
	}
	if err != nil {
		return cradle.Errorf(cradle.EINVALID, "the artifact is not of kind %s: %v", k, err)
	}
	return nil
}

// CheckMCUbootMagic reports whether head starts with MCUboot's image magic
// (0x96f3b83d, little-endian). It checks nothing else: mcuboot.Verify
// checks the whole image.
func CheckMCUbootMagic(head []byte) error {
	if len(head) < 4 {
		return errors.New("shorter than an MCUboot header")
	}
	if m := binary.LittleEndian.Uint32(head); m != mcuboot.ImageMagic {
		return fmt.Errorf("no MCUboot magic (found %#08x, want %#08x)", m, uint32(mcuboot.ImageMagic))
	}
	return nil
}

// menderVersion is the "version" entry of a Mender artifact.
type menderVersion struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
}

// CheckMender reports whether head starts a Mender artifact of format
// version 3: an (uncompressed) tar archive whose first entry is a regular
// file called "version" holding {"format": "mender", "version": 3}. The
// rest of the artifact (header, data, signatures) is not looked at here.
func CheckMender(head []byte) error {
	tr := tar.NewReader(bytes.NewReader(head))
	h, err := tr.Next()
	if err != nil {
		return fmt.Errorf("not a tar archive: %v", err)
	}
	if h.Name != "version" {
		return fmt.Errorf("the first tar entry is %q, not \"version\"", h.Name)
	}
	if h.Typeflag != tar.TypeReg {
		return fmt.Errorf("the tar entry \"version\" is not a regular file")
	}
	if h.Size <= 0 || h.Size > maxMenderVersionEntry {
		return fmt.Errorf("the tar entry \"version\" is %d bytes; want 1 to %d", h.Size, maxMenderVersionEntry)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return fmt.Errorf("the tar entry \"version\" is cut short: %v", err)
	}
	var v menderVersion
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("the tar entry \"version\" is not JSON: %v", err)
	}
	if v.Format != "mender" {
		return fmt.Errorf("the artifact format is %q, not \"mender\"", v.Format)
	}
	if v.Version != 3 {
		return fmt.Errorf("Mender artifact format version %d is not supported; only version 3", v.Version)
	}
	return nil
}

// cpio "new ASCII" header: a 6-byte magic and 13 fields of 8 hex digits.
const (
	cpioHeaderSize = 110
	cpioNewc       = "070701"
	cpioCRC        = "070702"
	swDescription  = "sw-description"
	// maxSWDescription bounds the sw-description entry's size; real ones
	// are a few kilobytes.
	maxSWDescription = 1 << 20
)

// CheckSWUpdate reports whether head starts a SWUpdate image: a cpio
// archive in the "new ASCII" format (magic 070701, or 070702 with
// checksums, as swupdate requires) whose first entry is the regular file
// "sw-description". The description itself and the images that follow are
// not looked at here.
func CheckSWUpdate(head []byte) error {
	if len(head) < cpioHeaderSize {
		return errors.New("shorter than a cpio header")
	}
	magic := string(head[:6])
	if magic != cpioNewc && magic != cpioCRC {
		return fmt.Errorf("not a cpio archive in the new ASCII format (magic %q, want %q or %q)", magic, cpioNewc, cpioCRC)
	}
	field := func(i int) (uint64, error) {
		s := string(head[6+8*i : 6+8*i+8])
		v, err := strconv.ParseUint(s, 16, 32)
		if err != nil {
			return 0, fmt.Errorf("cpio header field %d is %q, not 8 hex digits", i, s)
		}
		return v, nil
	}
	var f [13]uint64
	for i := range f {
		v, err := field(i)
		if err != nil {
			return err
		}
		f[i] = v
	}
	mode, fileSize, nameSize := f[1], f[6], f[11]
	if nameSize != uint64(len(swDescription))+1 {
		return fmt.Errorf("the first cpio entry's name is %d bytes, not %q", nameSize, swDescription)
	}
	if len(head) < cpioHeaderSize+int(nameSize) {
		return errors.New("the first cpio entry's name is cut short")
	}
	name := head[cpioHeaderSize : cpioHeaderSize+int(nameSize)]
	if string(name[:len(name)-1]) != swDescription || name[len(name)-1] != 0 {
		return fmt.Errorf("the first cpio entry is %q, not %q", bytes.TrimRight(name, "\x00"), swDescription)
	}
	if mode&0o170000 != 0o100000 {
		return fmt.Errorf("the cpio entry %q is not a regular file (mode %o)", swDescription, mode)
	}
	if fileSize == 0 || fileSize > maxSWDescription {
		return fmt.Errorf("the cpio entry %q is %d bytes; want 1 to %d", swDescription, fileSize, maxSWDescription)
	}
	return nil
}
