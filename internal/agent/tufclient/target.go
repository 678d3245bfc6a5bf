package tufclient

import (
	"encoding/hex"

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

// Select is Lookup for an install: it refuses (an *Error) a target built
// for another model (WrongHardware), one whose hardware revisions list
// neither hwRevision nor "*" (WrongHardware), and one whose security
// counter is below counter, the device's anti-rollback counter
// (LowerSecurityCounter).
func (c *Client) Select(model, hwRevision string, counter uint32, path string) (Target, error) {
	t, err := c.Lookup(path)
	if err != nil {
		return Target{}, err
	}
	if t.Custom.Model != model {
		return Target{}, refuse(WrongHardware, path, nil, "target %s is built for model %q; this device is a %q", path, t.Custom.Model, model)
	}
	fits := false
	for _, r := range t.Custom.HardwareRevisions {
		if r == "*" || r == hwRevision {
			fits = true
			break
		}
	}
	if !fits {
		return Target{}, refuse(WrongHardware, path, nil, "target %s runs on hardware revisions %q, not on this device's %q", path, t.Custom.HardwareRevisions, hwRevision)
	}
	if t.Custom.SecurityCounter < counter {
		return Target{}, refuse(LowerSecurityCounter, path, nil, "target %s has security counter %d, below the device's %d", path, t.Custom.SecurityCounter, counter)
	}
	return t, nil
}
