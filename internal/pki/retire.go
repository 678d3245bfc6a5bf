package pki

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"cradle"
	"cradle/internal/atomicfile"
)

// Retirement of a device CA. After RotateDeviceCA the old device CA keeps
// signing its CRL (and its OCSP signer answers) so that the certificates it
// issued stay checkable until they expire; devices move to the new CA as
// they renew. Once no unexpired, unrevoked certificate chains to the old
// CA (Dependents.Live is 0), RetireDeviceCA marks it retired: from then on
// it is no issuer or intermediate the device listener accepts
// (AcceptedCAs, CheckNotRetired), EST cacerts no longer serves it, and a
// re-enrollment with a certificate it issued is refused; its CRL is still
// published until the CA certificate itself expires, for relying parties
// that cached certificates. Retirement is recorded in RetiredFile in the
// PKI directory, {"device-ca": "2028-05-01T00:00:00Z", …}, written by
// WriteHierarchy and read by LoadHierarchy; it is never undone.

// RetiredFile is the file of a PKI directory that lists retired device CAs.
const RetiredFile = "retired.json"

// Dependents sums the certificates that chain to a CA at some time: Live
// counts those neither expired nor revoked (superseded ones count: a
// device may still present one until it expires), LastExpiry is the
// latest NotAfter among them.
type Dependents struct {
	Live       int
	LastExpiry time.Time
}

// IsRetired reports whether the device CA called name is retired.
func (h *Hierarchy) IsRetired(name string) bool {
	_, ok := h.retired()[name]
	return ok
}

// retired returns Retired, which its holder must not change: it is
// replaced, never changed in place.
func (h *Hierarchy) retired() map[string]time.Time {
	h.retiredMu.RLock()
	defer h.retiredMu.RUnlock()
	return h.Retired
}

// setRetired replaces Retired with a copy of it in which name was
// retired at at.
func (h *Hierarchy) setRetired(name string, at time.Time) {
	h.retiredMu.Lock()
	defer h.retiredMu.Unlock()
	m := make(map[string]time.Time, len(h.Retired)+1)
	for k, v := range h.Retired {
		m[k] = v
	}
	m[name] = at
	h.Retired = m
}

// deviceCAIndex returns the index of the device CA called name, or -1.
func (h *Hierarchy) deviceCAIndex(name string) int {
	for i := range h.DeviceCAs {
		if DeviceCAName(i) == name {
			return i
		}
	}
	return -1
}

// RetireDeviceCA marks the device CA called name retired at now. It
// refuses (EINVALID) a name that is no device CA, the current device CA
// (it issues new LDevIDs: rotate first), and a CA on which d.Live
// certificates still depend, saying how many and when the last expires;
// it refuses (ECONFLICT) a CA retired already. h is changed only on
// success; write it with WriteHierarchy.
func (h *Hierarchy) RetireDeviceCA(name string, d Dependents, now time.Time) error {
	i := h.deviceCAIndex(name)
	switch {
	case i < 0:
		return cradle.Errorf(cradle.EINVALID, "%q is not a device CA of this PKI (device CAs: %s)", name, deviceCANames(h))
	case i == len(h.DeviceCAs)-1:
		return cradle.Errorf(cradle.EINVALID, "%s is the current device CA, which issues new LDevIDs: rotate the device CA first (cradle pki rotate-device-ca), then retire %s once the devices have renewed", name, name)
	case h.IsRetired(name):
		return cradle.Errorf(cradle.ECONFLICT, "%s was retired at %s", name, h.retired()[name].Format(time.RFC3339))
	case d.Live > 0:
		return cradle.Errorf(cradle.EINVALID, "%s cannot be retired: %d unexpired, unrevoked certificate(s) chain to it, the last expiring at %s; retire it after that (or revoke them)",
			name, d.Live, d.LastExpiry.UTC().Format(time.RFC3339))
	}
	h.setRetired(name, now.UTC().Truncate(time.Second))
	return nil
}

// RetirementStatus is what CAStatus says of one device CA.
type RetirementStatus struct {
	Name     string    `json:"name"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	Current  bool      `json:"current"`
	// RetiredAt is set once the CA is retired.
	RetiredAt *time.Time `json:"retired_at,omitempty"`
	// Live and LastExpiry are its Dependents.
	Live       int        `json:"live_certificates"`
	LastExpiry *time.Time `json:"last_expiry,omitempty"`
	// Retirable says the CA can be retired now; RetirableAt, for one
	// that cannot yet, when its last dependent expires (unless some are
	// revoked earlier).
	Retirable   bool       `json:"retirable"`
	RetirableAt *time.Time `json:"retirable_at,omitempty"`
}

// CAStatus reports, for every device CA, whether it can be retired, given
// the dependents of each (by name; a CA missing from deps has none).
func (h *Hierarchy) CAStatus(deps map[string]Dependents) []RetirementStatus {
	out := make([]RetirementStatus, 0, len(h.DeviceCAs))
	retired := h.retired()
	for i, ca := range h.DeviceCAs {
		name := DeviceCAName(i)
		d := deps[name]
		s := RetirementStatus{Name: name, Subject: ca.Subject.CommonName, NotAfter: ca.NotAfter, Current: i == len(h.DeviceCAs)-1, Live: d.Live}
		if at, ok := retired[name]; ok {
			s.RetiredAt = &at
		}
		if d.Live > 0 {
			le := d.LastExpiry.UTC()
			s.LastExpiry = &le
		}
		switch {
		case s.Current || s.RetiredAt != nil:
		case d.Live == 0:
			s.Retirable = true
		default:
			s.RetirableAt = s.LastExpiry
		}
		out = append(out, s)
	}
	return out
}

// AcceptedCAs returns the issuing CAs whose certificates the device
// listener accepts: the manufacturing CA and every device CA not retired.
func (h *Hierarchy) AcceptedCAs() map[string]*x509.Certificate {
	m := h.IssuingCAs()
	for name := range h.retired() {
		delete(m, name)
	}
	return m
}

// CheckNotRetired refuses (EUNAUTHORIZED) a verified chain, leaf first,
// in which a retired device CA appears: a certificate minted with a
// retired CA's key is no credential, even though it chains to the root.
// Its signature fits deviceapi.Server.CheckChain alongside CheckProfile.
func (h *Hierarchy) CheckNotRetired(chain []*x509.Certificate) error {
	for name := range h.retired() {
		i := h.deviceCAIndex(name)
		if i < 0 {
			continue
		}
		ca := h.DeviceCAs[i]
		for _, c := range chain {
			if bytes.Equal(c.Raw, ca.Raw) {
				return cradle.Errorf(cradle.EUNAUTHORIZED, "certificate %q was issued by %s, which is retired", clip(chain[0].Subject.CommonName), name)
			}
		}
	}
	return nil
}

func deviceCANames(h *Hierarchy) string {
	var names []string
	for i := range h.DeviceCAs {
		names = append(names, DeviceCAName(i))
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}

// writeRetired writes RetiredFile when some CA is retired.
func writeRetired(dir string, h *Hierarchy) error {
	retired := h.retired()
	if len(retired) == 0 {
		return nil
	}
	m := map[string]string{}
	for name, at := range retired {
		m[name] = at.UTC().Format(time.RFC3339)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, RetiredFile), append(b, '\n'), 0o644)
}

// readRetired reads RetiredFile, if any, into h, which has its device CAs.
func readRetired(dir string, h *Hierarchy) error {
	m, path, err := parseRetired(dir)
	if err != nil {
		return fmt.Errorf("pki: load hierarchy: %w", err)
	}
	for name, at := range m {
		i := h.deviceCAIndex(name)
		if i < 0 || i == len(h.DeviceCAs)-1 {
			return fmt.Errorf("pki: load hierarchy: %s: %q is not a device CA that can be retired", path, name)
		}
		h.setRetired(name, at)
	}
	return nil
}

// parseRetired reads RetiredFile of dir (none: an empty map) and returns
// it with its path.
func parseRetired(dir string) (map[string]time.Time, string, error) {
	path := filepath.Join(dir, RetiredFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, nil
	} else if err != nil {
		return nil, path, err
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	out := make(map[string]time.Time, len(m))
	for name, s := range m {
		at, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return nil, path, fmt.Errorf("%s: %s: %w", path, name, err)
		}
		out[name] = at
	}
	return out, path, nil
}

// ReloadRetired applies RetiredFile of dir, as `cradle pki retire-ca`
// rewrote it while a server runs on h, to h: each device CA of h it
// names that h does not hold retired yet is retired from then on
// (IsRetired, AcceptedCAs, CheckNotRetired, CACerts), and returned in
// added, sorted. Retirement is never undone, so a name missing from the
// file stays retired. Two names are left alone: one that is no device
// CA of h (the directory was rotated since h was loaded: the CA is
// unknown to this server), and h's current device CA, which a server
// loaded before a rotation still issues from; the latter is returned in
// current, for the server to say that it must be restarted. A file
// that cannot be read or parsed changes nothing and is an error.
// It is safe to call while other goroutines use h.
func (h *Hierarchy) ReloadRetired(dir string) (added []string, current string, err error) {
	m, _, err := parseRetired(dir)
	if err != nil {
		return nil, "", fmt.Errorf("pki: reload retired CAs: %w", err)
	}
	for name, at := range m {
		i := h.deviceCAIndex(name)
		switch {
		case i < 0 || h.IsRetired(name):
		case i == len(h.DeviceCAs)-1:
			current = name
		default:
			h.setRetired(name, at)
			added = append(added, name)
		}
	}
	slices.Sort(added)
	return added, current, nil
}

// activeDeviceCAs returns the device CAs not retired, newest first.
func (h *Hierarchy) activeDeviceCAs() []*x509.Certificate {
	var out []*x509.Certificate
	for i := len(h.DeviceCAs) - 1; i >= 0; i-- {
		if !h.IsRetired(DeviceCAName(i)) {
			out = append(out, h.DeviceCAs[i])
		}
	}
	return slices.Clip(out)
}

// CountFunc counts the live certificates of an issuer (its subject key
// id, hex, as the store names issuers) at now: sqlstore's
// CertificateService.CertificateDependents.
type CountFunc func(ctx context.Context, issuer string, now time.Time) (int, time.Time, error)

// Dependents counts, with count, the live certificates of every device CA
// at now, by name.
func (h *Hierarchy) Dependents(ctx context.Context, count CountFunc, now time.Time) (map[string]Dependents, error) {
	out := map[string]Dependents{}
	for i, ca := range h.DeviceCAs {
		n, last, err := count(ctx, issuerKeyID(ca), now)
		if err != nil {
			return nil, fmt.Errorf("pki: certificates of %s: %w", DeviceCAName(i), err)
		}
		out[DeviceCAName(i)] = Dependents{Live: n, LastExpiry: last}
	}
	return out, nil
}

// IssuedFunc counts the certificates an issuer (its subject key id, hex)
// issued at or after since, in any state, and returns when the last was
// recorded: sqlstore's CertificateService.CertificatesIssuedSince.
type IssuedFunc func(ctx context.Context, issuer string, since time.Time) (int, time.Time, error)

// CheckNotIssuing refuses (EINVALID) to retire the device CA called name
// while the store shows a server still issuing from it. `cradle pki
// rotate-device-ca` works on the directory: a server started before it
// still issues from the CA it replaced until it is restarted. What the
// store can tell: certificates of name recorded after the CA that
// replaced it was made (its NotBefore), and none of any newer device CA
// recorded after the last of them. Then the last issuance came from
// name, after the rotation: a server started before the rotation runs.
// Once a restarted server issues one certificate from the new CA (an
// enrollment or a renewal), the check passes. A server that has issued
// nothing since the rotation cannot be seen here; the server itself
// never applies the retirement of the CA it issues from (ReloadRetired).
// A name that is no device CA, or the current one, passes: RetireDeviceCA
// refuses those.
func (h *Hierarchy) CheckNotIssuing(ctx context.Context, name string, issued IssuedFunc) error {
	i := h.deviceCAIndex(name)
	if i < 0 || i == len(h.DeviceCAs)-1 {
		return nil
	}
	since := h.DeviceCAs[i+1].NotBefore
	n, lastOld, err := issued(ctx, issuerKeyID(h.DeviceCAs[i]), since)
	if err != nil {
		return fmt.Errorf("pki: certificates of %s: %w", name, err)
	}
	if n == 0 {
		return nil
	}
	var lastNew time.Time
	for j := i + 1; j < len(h.DeviceCAs); j++ {
		_, last, err := issued(ctx, issuerKeyID(h.DeviceCAs[j]), since)
		if err != nil {
			return fmt.Errorf("pki: certificates of %s: %w", DeviceCAName(j), err)
		}
		if last.After(lastNew) {
			lastNew = last
		}
	}
	if lastNew.After(lastOld) {
		return nil
	}
	return cradle.Errorf(cradle.EINVALID, "%s cannot be retired: it issued %d certificate(s) after %s replaced it at %s, the last at %s, and no newer device CA has issued one since: a cradle serve started before the rotation still issues from %s. Restart cradle serve; retire %s once it has issued a certificate from %s (an enrollment or renewal)",
		name, n, DeviceCAName(i+1), since.UTC().Format(time.RFC3339), lastOld.UTC().Format(time.RFC3339), name, name, DeviceCAName(len(h.DeviceCAs)-1))
}
