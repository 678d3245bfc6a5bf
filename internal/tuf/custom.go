package tuf

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"

	"cradle"
)

// Custom is the "custom" object of a target in targets.json: what a device
// needs to decide whether a release is for it, before it downloads it.
type Custom struct {
	// Model is the device model the image is built for.
	Model string `json:"model"`
	// HardwareRevisions lists the board revisions the image runs on (at
	// least one).
	HardwareRevisions []string `json:"hardware_revisions"`
	// Version is the release's version string (e.g. "1.4.2").
	Version string `json:"version"`
	// SecurityCounter is the anti-rollback counter (MCUboot's security
	// counter): a device refuses a target whose counter is below its own,
	// and the repository refuses to add one below that of a target of the
	// same model.
	SecurityCounter uint32 `json:"security_counter"`
	// DeltaBases lists the patches that turn an earlier image into this one.
	DeltaBases []DeltaBase `json:"delta_bases"`
}

// DeltaBase is one delta patch for a target: a device whose current image
// has SHA-256 From downloads the target at Patch (itself a target of the
// repository), of Length bytes with the given Hashes, and applies it.
type DeltaBase struct {
	From   string            `json:"from_sha256"`
	Patch  string            `json:"patch"`
	Length int64             `json:"length"`
	Hashes map[string]string `json:"hashes"`
}

// maxCustomSize bounds a custom object; a real one is a few hundred bytes.
const maxCustomSize = 64 << 10

// ParseCustom decodes and validates a target's custom object. Every field
// but delta_bases is required; unknown fields are refused so that a typo
// is not silently ignored.
func ParseCustom(data []byte) (Custom, error) {
	var c Custom
	if len(data) > maxCustomSize {
		return c, cradle.Errorf(cradle.EINVALID, "target custom metadata is %d bytes; the limit is %d", len(data), maxCustomSize)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return c, cradle.Errorf(cradle.EINVALID, "target custom metadata is not a JSON object: %v", err)
	}
	for _, f := range []string{"model", "hardware_revisions", "version", "security_counter"} {
		if v, ok := fields[f]; !ok || string(v) == "null" {
			return c, cradle.Errorf(cradle.EINVALID, "target custom metadata has no %q", f)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, cradle.Errorf(cradle.EINVALID, "target custom metadata: %v", err)
	}
	if err := c.Validate(); err != nil {
		return Custom{}, err
	}
	return c, nil
}

// Validate checks that every required field is set and well formed.
func (c Custom) Validate() error {
	if strings.TrimSpace(c.Model) == "" {
		return cradle.Errorf(cradle.EINVALID, "target custom metadata has no model")
	}
	if len(c.HardwareRevisions) == 0 {
		return cradle.Errorf(cradle.EINVALID, "target custom metadata has no hardware revision; list at least one")
	}
	for _, r := range c.HardwareRevisions {
		if strings.TrimSpace(r) == "" {
			return cradle.Errorf(cradle.EINVALID, "target custom metadata has an empty hardware revision")
		}
	}
	if strings.TrimSpace(c.Version) == "" {
		return cradle.Errorf(cradle.EINVALID, "target custom metadata has no version")
	}
	for i, d := range c.DeltaBases {
		if !isSHA256Hex(d.From) {
			return cradle.Errorf(cradle.EINVALID, "delta base %d: from_sha256 %q is not a hex SHA-256 digest", i, d.From)
		}
		if err := checkTargetPath(d.Patch); err != nil {
			return cradle.Errorf(cradle.EINVALID, "delta base %d: %s", i, cradle.ErrorMessage(err))
		}
		if d.Length <= 0 {
			return cradle.Errorf(cradle.EINVALID, "delta base %d: length %d; give the patch's size in bytes", i, d.Length)
		}
		if !isSHA256Hex(d.Hashes["sha256"]) {
			return cradle.Errorf(cradle.EINVALID, "delta base %d: hashes has no hex sha256", i)
		}
	}
	return nil
}

func isSHA256Hex(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && strings.ToLower(s) == s
}

// checkTargetPath refuses target paths a client could not fetch safely: a
// path is relative, slash-separated, with no empty, "." or ".." element.
func checkTargetPath(p string) error {
	if p == "" || len(p) > 255 {
		return cradle.Errorf(cradle.EINVALID, "target path %q must be 1 to 255 bytes", p)
	}
	for _, e := range strings.Split(p, "/") {
		if e == "" || e == "." || e == ".." {
			return cradle.Errorf(cradle.EINVALID, "target path %q must be relative with no empty, \".\" or \"..\" element", p)
		}
	}
	for _, c := range p {
		if c < 0x21 || c == 0x7f || c == '\\' {
			return cradle.Errorf(cradle.EINVALID, "target path %q has a space, control character or backslash", p)
		}
	}
	return nil
}

func (c Custom) marshal() (*json.RawMessage, error) {
	if c.DeltaBases == nil {
		c.DeltaBases = []DeltaBase{}
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	raw := json.RawMessage(b)
	return &raw, nil
}
