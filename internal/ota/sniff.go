package ota

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"cradle"
	"cradle/internal/compat/menderartifact"
	"cradle/internal/compat/swu"
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

// MenderPayloadFactor bounds the decompressed payloads of a Mender
// artifact at upload: at most this many times the upload size limit
// (Publisher.MaxImageSize), so that a small compressed artifact cannot
// keep the server inflating for ever. Sparse root filesystems compress
// well, hence the generous factor.
const MenderPayloadFactor = 16

// CheckMenderArtifact parses a whole Mender artifact from r, streaming
// (payload files are hashed as they pass, never held), and checks that
// it may be installed on devices of model: the artifact's device types
// (artifact_depends.device_type) must include model exactly, as
// mender-client compares its device_type. maxPayload bounds the
// decompressed payloads (0: no bound). No signature is required: devices
// configured with a verification key check it. It returns what the
// artifact declares; a malformed artifact is EINVALID (ETOOLARGE for an
// oversize part) with menderartifact's message naming the part. A failure
// of r itself is returned wrapped, not as a cradle.Error.
func CheckMenderArtifact(r io.Reader, model string, maxPayload int64) (*menderartifact.Artifact, error) {
	a, err := menderartifact.Parse(r, menderartifact.Options{MaxPayloadSize: maxPayload})
	if err != nil {
		return nil, err
	}
	if !slices.Contains(a.DeviceTypes, model) {
		return nil, cradle.Errorf(cradle.EINVALID, "the Mender artifact is for device types [%s], not model %s: build it with --device-type %s",
			strings.Join(a.DeviceTypes, ", "), model, model)
	}
	return a, nil
}

// CheckSWUpdateImage parses a whole SWUpdate image from r, streaming
// (payloads are hashed as they pass, never held), and checks its
// sw-description against the release's hardware revisions with
// CheckHardwareCompatibility. No signature is required (devices check it
// against their CA), but one that is present must sit where SWUpdate
// expects it. A malformed image is EINVALID (ETOOLARGE for oversize
// metadata) with swu's message naming what is wrong.
func CheckSWUpdateImage(r io.Reader, revisions []string) (*swu.Image, error) {
	img, err := swu.Parse(r, swu.Options{})
	if err != nil {
		return nil, err
	}
	if err := CheckHardwareCompatibility(img.Description.HardwareCompatibility, revisions); err != nil {
		return nil, err
	}
	return img, nil
}

// swupdateRegexPrefix marks a hardware-compatibility entry that SWUpdate
// reads as a POSIX extended regular expression rather than a revision.
const swupdateRegexPrefix = "#RE:"

// CheckHardwareCompatibility checks a sw-description's
// hardware-compatibility list (compat) against a release's hardware
// revisions. The rule:
//
//   - compat empty: the image installs on any revision; accepted.
//   - revisions empty: the release is offered to every revision of its
//     model and makes no claim to check; accepted (SWUpdate on a board
//     whose revision compat does not list refuses the image itself).
//   - otherwise every revision of the release must be listed: equal to an
//     entry, or matched by an entry "#RE:<regexp>" (a POSIX extended
//     regular expression, unanchored unless it says ^ or $, as SWUpdate's
//     regexec does). A revision not listed is EINVALID naming it, since
//     devices of that revision would refuse the image after downloading
//     it; an entry whose regular expression does not compile is EINVALID.
func CheckHardwareCompatibility(compat, revisions []string) error {
	if len(compat) == 0 {
		return nil
	}
	var res []*regexp.Regexp
	for _, c := range compat {
		if expr, ok := strings.CutPrefix(c, swupdateRegexPrefix); ok {
			re, err := regexp.CompilePOSIX(expr)
			if err != nil {
				return cradle.Errorf(cradle.EINVALID, "swu: sw-description: hardware-compatibility entry %q is not a regular expression: %v", c, err)
			}
			res = append(res, re)
		}
	}
	if len(revisions) == 0 {
		return nil
	}
	var missing []string
	for _, rev := range revisions {
		ok := slices.Contains(compat, rev)
		for _, re := range res {
			ok = ok || re.MatchString(rev)
		}
		if !ok {
			missing = append(missing, rev)
		}
	}
	if len(missing) > 0 {
		return cradle.Errorf(cradle.EINVALID, "the SWUpdate image's hardware-compatibility [%s] does not list the release's hardware revision(s) %s: devices of those revisions would refuse it; fix sw-description or the release's revisions",
			strings.Join(compat, ", "), strings.Join(missing, ", "))
	}
	return nil
}
