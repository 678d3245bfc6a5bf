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
	_, ok := h.Retired[name]
	return ok
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
		return cradle.Errorf(cradle.ECONFLICT, "%s was retired at %s", name, h.Retired[name].Format(time.RFC3339))
	case d.Live > 0:
		return cradle.Errorf(cradle.EINVALID, "%s cannot be retired: %d unexpired, unrevoked certificate(s) chain to it, the last expiring at %s; retire it after that (or revoke them)",
			name, d.Live, d.LastExpiry.UTC().Format(time.RFC3339))
	}
	if h.Retired == nil {
		h.Retired = map[string]time.Time{}
	}
	h.Retired[name] = now.UTC().Truncate(time.Second)
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
	for i, ca := range h.DeviceCAs {
		name := DeviceCAName(i)
		d := deps[name]
		s := RetirementStatus{Name: name, Subject: ca.Subject.CommonName, NotAfter: ca.NotAfter, Current: i == len(h.DeviceCAs)-1, Live: d.Live}
		if at, ok := h.Retired[name]; ok {
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
	for name := range h.Retired {
		delete(m, name)
	}
	return m
}

// CheckNotRetired refuses (EUNAUTHORIZED) a verified chain, leaf first,
// in which a retired device CA appears: a certificate minted with a
// retired CA's key is no credential, even though it chains to the root.
// Its signature fits deviceapi.Server.CheckChain alongside CheckProfile.
func (h *Hierarchy) CheckNotRetired(chain []*x509.Certificate) error {
	for name := range h.Retired {
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
	if len(h.Retired) == 0 {
		return nil
	}
	m := map[string]string{}
	for name, at := range h.Retired {
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
	path := filepath.Join(dir, RetiredFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("pki: load hierarchy: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("pki: load hierarchy: %s: %w", path, err)
	}
	for name, s := range m {
		i := h.deviceCAIndex(name)
		if i < 0 || i == len(h.DeviceCAs)-1 {
			return fmt.Errorf("pki: load hierarchy: %s: %q is not a device CA that can be retired", path, name)
		}
		at, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return fmt.Errorf("pki: load hierarchy: %s: %s: %w", path, name, err)
		}
		if h.Retired == nil {
			h.Retired = map[string]time.Time{}
		}
		h.Retired[name] = at
	}
	return nil
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
