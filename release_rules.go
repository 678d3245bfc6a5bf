package cradle

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits on the free text of releases and update reports.
const (
	MaxReleaseReason   = 512 // bytes of the reason a release was deprecated or yanked
	MaxUpdateReason    = 512 // bytes of the reason in a device's update report
	MaxReleaseFileName = 128 // bytes
	MaxReleaseVersion  = 64  // bytes
	MaxTargetPath      = 512 // bytes of a TUF target path
)

// Validate checks a release record before it is stored: model and version
// are tokens (letters, digits, '.', '_', '-', '+'), at most MaxHardwareRevs
// distinct hardware revisions, a known kind, a SHA-256 of 64 lower-case hex
// digits, a positive size, a plain file name (no '/' or '\\', no "..",
// printable, at most MaxReleaseFileName bytes), notes of at most
// MaxReleaseNotes bytes of UTF-8, and an image key fingerprint (SHA-256,
// hex) only for an MCUboot image. The EINVALID error names the field.
func (c *ReleaseCreate) Validate() error {
	if err := validateToken("model", c.Model, MaxModelLen, true); err != nil {
		return err
	}
	if err := validateToken("version", c.Version, MaxReleaseVersion, true); err != nil {
		return err
	}
	if len(c.HardwareRevisions) > MaxHardwareRevs {
		return Errorf(EINVALID, "invalid hardware_revisions: %d revisions, at most %d; leave it empty for every revision of the model", len(c.HardwareRevisions), MaxHardwareRevs)
	}
	for i, r := range c.HardwareRevisions {
		if err := validateToken("hardware revision", r, MaxRevisionLen, true); err != nil {
			return err
		}
		if slices.Contains(c.HardwareRevisions[:i], r) {
			return Errorf(EINVALID, "invalid hardware_revisions: %q is listed twice", r)
		}
	}
	if !slices.Contains(ReleaseKinds, c.Kind) {
		return Errorf(EINVALID, "invalid kind %q: use mcuboot, mender, swupdate or file", truncate(string(c.Kind), 40))
	}
	if err := ValidateSHA256("sha256", c.SHA256); err != nil {
		return err
	}
	if c.Size <= 0 {
		return Errorf(EINVALID, "invalid size %d: an artifact has at least one byte", c.Size)
	}
	if err := ValidateReleaseFileName(c.FileName); err != nil {
		return err
	}
	if len(c.Notes) > MaxReleaseNotes || !utf8.ValidString(c.Notes) {
		return Errorf(EINVALID, "invalid notes: at most %d bytes of UTF-8 text", MaxReleaseNotes)
	}
	if c.ImageKey != "" {
		if c.Kind != ReleaseMCUboot {
			return Errorf(EINVALID, "invalid image_key: only an MCUboot image is signed by an image key, not a %s artifact", c.Kind)
		}
		if err := ValidateSHA256("image_key", c.ImageKey); err != nil {
			return err
		}
	}
	return nil
}

// ValidateSHA256 checks that v is a SHA-256 digest as Cradle writes it: 64
// lower-case hex digits. The EINVALID error names field.
func ValidateSHA256(field, v string) error {
	ok := len(v) == 64
	for i := 0; ok && i < len(v); i++ {
		ok = isDigit(v[i]) || (v[i] >= 'a' && v[i] <= 'f')
	}
	if !ok {
		return Errorf(EINVALID, "invalid %s %q: a SHA-256 digest is 64 lower-case hex digits", field, truncate(v, 80))
	}
	return nil
}

// ValidateReleaseFileName checks the name an artifact was uploaded under:
// 1 to MaxReleaseFileName printable bytes, no '/' or '\\', no "..", so that
// it is one path element of a TUF target path.
func ValidateReleaseFileName(name string) error {
	switch {
	case name == "":
		return Errorf(EINVALID, "file_name is required")
	case len(name) > MaxReleaseFileName || !utf8.ValidString(name) || !isPrintable(name) ||
		strings.ContainsAny(name, `/\`) || strings.Contains(name, "..") || strings.TrimSpace(name) != name:
		return Errorf(EINVALID, "invalid file_name %q: use 1 to %d printable characters, no '/', '\\' or \"..\", no leading or trailing space", truncate(name, 80), MaxReleaseFileName)
	}
	return nil
}

// ValidateTargetPath checks a TUF target path: 1 to MaxTargetPath printable
// bytes of '/'-separated elements, none empty, "." or "..".
func ValidateTargetPath(field, p string) error {
	bad := p == "" || len(p) > MaxTargetPath || !utf8.ValidString(p) || !isPrintable(p) || strings.Contains(p, `\`)
	for _, el := range strings.Split(p, "/") {
		bad = bad || el == "" || el == "." || el == ".."
	}
	if bad {
		return Errorf(EINVALID, "invalid %s %q: use 1 to %d printable characters in '/'-separated names, none empty, \".\" or \"..\"", field, truncate(p, 80), MaxTargetPath)
	}
	return nil
}
