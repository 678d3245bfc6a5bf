package tufclient

import (
	"encoding/hex"
	"slices"

	"cradle"
	"cradle/internal/tuf"
)

// Target is a target file as the trusted targets metadata describes it:
// what a download must be, byte for byte, before it is installed.
type Target struct {
	// Path is the target's path in the repository ("gw-100/1.4.2/app.bin").
	Path string
	// Length is the file's exact size in bytes: a download stops there.
	Length int64
	// SHA256 is the lower-case hex SHA-256 of the file.
	SHA256 string
	// Custom is the release's custom metadata (model, hardware revisions,
	// version, security counter, delta bases).
	Custom tuf.Custom
	// URL is where the file is fetched: MetadataURL + "targets/" +
	// DIR/HEX.NAME (a consistent-snapshot target URL).
	URL string
}

// Lookup returns the target at path in the targets metadata of the last
// successful Refresh. It returns ENOTFOUND when there is no such target,
// EUNAVAILABLE before a Refresh succeeded, and EINVALID when the signed
// entry is unusable (no SHA-256, a length below 1, custom metadata that
// does not parse): a publisher's error, not an attack.
func (c *Client) Lookup(path string) (Target, error) {
	c.mu.Lock()
	targets := c.targets
	c.mu.Unlock()
	if targets == nil {
		return Target{}, cradle.Errorf(cradle.EUNAVAILABLE, "no trusted TUF targets yet: refresh the metadata first")
	}
	tf, ok := targets.Signed.Targets[path]
	if !ok {
		return Target{}, cradle.Errorf(cradle.ENOTFOUND, "no target %q in targets.json version %d", path, targets.Signed.Version)
	}
	sum := tf.Hashes["sha256"]
	if len(sum) != 32 {
		return Target{}, cradle.Errorf(cradle.EINVALID, "target %q has no SHA-256 in targets.json", path)
	}
	if tf.Length <= 0 {
		return Target{}, cradle.Errorf(cradle.EINVALID, "target %q has length %d in targets.json", path, tf.Length)
	}
	if tf.Custom == nil {
		return Target{}, cradle.Errorf(cradle.EINVALID, "target %q has no custom metadata (model, hardware revisions, security counter)", path)
	}
	custom, err := tuf.ParseCustom(*tf.Custom)
	if err != nil {
		return Target{}, cradle.Errorf(cradle.EINVALID, "target %q: %s", path, cradle.ErrorMessage(err))
	}
	return Target{
		Path:   path,
		Length: tf.Length,
		SHA256: hex.EncodeToString(sum),
		Custom: custom,
		URL:    c.base.JoinPath("targets", tuf.TargetURLPath(path, sum)).String(),
	}, nil
}

// Select is Lookup for an install, then Fit.
func (c *Client) Select(model, hwRevision string, counter uint32, path string) (Target, error) {
	t, err := c.Lookup(path)
	if err != nil {
		return Target{}, err
	}
	if err := Fit(path, t.Custom, model, hwRevision, counter); err != nil {
		return Target{}, err
	}
	return t, nil
}

// Fit checks a target's custom metadata against the device: it refuses
// (an *Error) a target built for another model (WrongHardware), one whose
// hardware revisions list neither hwRevision nor "*" (WrongHardware), and
// one whose security counter is below counter, the device's anti-rollback
// counter (LowerSecurityCounter).
func Fit(path string, c tuf.Custom, model, hwRevision string, counter uint32) error {
	if c.Model != model {
		return refuse(WrongHardware, path, nil, "target %s is for model %q; this device is a %q", path, c.Model, model)
	}
	if !slices.Contains(c.HardwareRevisions, "*") && !slices.Contains(c.HardwareRevisions, hwRevision) {
		return refuse(WrongHardware, path, nil, "target %s is for hardware revisions %v; this device is revision %q", path, c.HardwareRevisions, hwRevision)
	}
	if c.SecurityCounter < counter {
		return refuse(LowerSecurityCounter, path, nil, "target %s has security counter %d, below the device's %d: a rollback", path, c.SecurityCounter, counter)
	}
	return nil
}
