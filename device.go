package cradle

import (
	"context"
	"io"
	"net"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Device is one unit in the registry.
type Device struct {
	ID               int64             `json:"-"`
	TenantID         int64             `json:"-"`
	Serial           string            `json:"serial"`
	HardwareUID      string            `json:"hardware_uid,omitempty"`
	MACs             []string          `json:"macs"` // EUI-48, lower case, colon separated
	Model            string            `json:"model"`
	HardwareRevision string            `json:"hardware_revision,omitempty"`
	Labels           map[string]string `json:"labels"`
	State            State             `json:"state"`
	// Protocol is how the device talks to Cradle (see compat.go): set when
	// it is first admitted; cradle until then.
	Protocol       Protocol  `json:"protocol"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	StateChangedAt time.Time `json:"state_changed_at"`
}

// DeviceCreate is a request to register a device. The same shape is one
// row of a JSON-lines import.
type DeviceCreate struct {
	Serial           string            `json:"serial"`
	HardwareUID      string            `json:"hardware_uid,omitempty"`
	MACs             []string          `json:"macs,omitempty"`
	Model            string            `json:"model"`
	HardwareRevision string            `json:"hardware_revision,omitempty"`
	Labels           map[string]string `json:"labels,omitempty"`
	State            State             `json:"state,omitempty"` // "" means factory; see InitialStates
}

// Limits on device fields.
const (
	MaxSerialLen     = 64
	MaxUIDLen        = 128
	MaxModelLen      = 64
	MaxRevisionLen   = 32
	MaxMACs          = 16
	MaxLabels        = 64
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 256
)

// Normalize validates c and puts it in canonical form: MAC addresses in lower
// case with colons, an empty state made factory, nil collections made empty.
// The error is EINVALID and names the field.
func (c *DeviceCreate) Normalize() error {
	if err := ValidateSerial(c.Serial); err != nil {
		return err
	}
	if len(c.HardwareUID) > MaxUIDLen || !isPrintable(c.HardwareUID) || strings.TrimSpace(c.HardwareUID) != c.HardwareUID {
		return Errorf(EINVALID, "invalid hardware_uid %q: use at most %d printable characters without surrounding spaces", c.HardwareUID, MaxUIDLen)
	}
	if err := validateToken("model", c.Model, MaxModelLen, true); err != nil {
		return err
	}
	if err := validateToken("hardware_revision", c.HardwareRevision, MaxRevisionLen, false); err != nil {
		return err
	}
	if len(c.MACs) > MaxMACs {
		return Errorf(EINVALID, "too many MAC addresses: %d, at most %d", len(c.MACs), MaxMACs)
	}
	macs := make([]string, 0, len(c.MACs))
	for _, m := range c.MACs {
		n, err := NormalizeMAC(m)
		if err != nil {
			return err
		}
		for _, seen := range macs {
			if seen == n {
				return Errorf(EINVALID, "MAC address %s is listed twice", n)
			}
		}
		macs = append(macs, n)
	}
	c.MACs = macs
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	if err := ValidateLabels(c.Labels); err != nil {
		return err
	}
	switch c.State {
	case "":
		c.State = StateFactory
	case StateFactory, StateProvisioned:
	default:
		return Errorf(EINVALID, "invalid initial state %q: a device is created in state factory or provisioned", c.State)
	}
	return nil
}

// ValidateSerial checks a serial number: 1 to 64 characters, letters, digits,
// '.', '_' and '-', starting with a letter or digit.
func ValidateSerial(s string) error {
	if s == "" {
		return Errorf(EINVALID, "serial is required")
	}
	if len(s) > MaxSerialLen {
		return Errorf(EINVALID, "invalid serial %q: longer than %d characters", truncate(s, 80), MaxSerialLen)
	}
	if !isAlnum(s[0]) {
		return Errorf(EINVALID, "invalid serial %q: must start with a letter or digit", s)
	}
	for _, r := range s {
		if r < utf8.RuneSelf && (isAlnum(byte(r)) || r == '.' || r == '_' || r == '-') {
			continue
		}
		if r == utf8.RuneError && !utf8.ValidString(s) {
			return Errorf(EINVALID, "invalid serial %q: not valid UTF-8", s)
		}
		return Errorf(EINVALID, "invalid serial %q: character %q not allowed; use letters, digits, '.', '_' and '-'", s, r)
	}
	return nil
}

// NormalizeMAC parses an EUI-48 MAC address written with ':' or '-'
// separators and returns it in lower case with colons.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 || (len(s) != 17) {
		return "", Errorf(EINVALID, "invalid MAC address %q: use six hex octets such as 02:00:5e:10:00:01", truncate(s, 80))
	}
	return hw.String(), nil
}

// ValidateLabels checks label keys and values. A key is 1 to 63 characters:
// letters, digits, '.', '_', '-' and '/', starting and ending with a letter or
// digit. A value is at most 256 printable characters.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return Errorf(EINVALID, "too many labels: %d, at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if err := ValidateLabelKey(k); err != nil {
			return err
		}
		if len(v) > MaxLabelValueLen || !isPrintable(v) {
			return Errorf(EINVALID, "invalid value for label %q: use at most %d printable characters", k, MaxLabelValueLen)
		}
	}
	return nil
}

// ValidateLabelKey checks one label key (see ValidateLabels).
func ValidateLabelKey(k string) error {
	bad := len(k) == 0 || len(k) > MaxLabelKeyLen || !isAlnum(k[0]) || !isAlnum(k[len(k)-1])
	for i := 0; !bad && i < len(k); i++ {
		c := k[i]
		bad = !isAlnum(c) && c != '.' && c != '_' && c != '-' && c != '/'
	}
	if bad {
		return Errorf(EINVALID, "invalid label key %q: use 1 to 63 letters, digits, '.', '_', '-', '/', starting and ending with a letter or digit", truncate(k, 80))
	}
	return nil
}

func validateToken(field, v string, max int, required bool) error {
	if v == "" {
		if required {
			return Errorf(EINVALID, "%s is required", field)
		}
		return nil
	}
	bad := len(v) > max || !isAlnum(v[0])
	for i := 0; !bad && i < len(v); i++ {
		c := v[i]
		bad = !isAlnum(c) && c != '.' && c != '_' && c != '-' && c != '+'
	}
	if bad {
		return Errorf(EINVALID, "invalid %s %q: use 1 to %d letters, digits, '.', '_', '-', '+', starting with a letter or digit", field, truncate(v, 80), max)
	}
	return nil
}

// DeviceFilter selects devices. Nil fields do not filter.
type DeviceFilter struct {
	State        *State
	Model        *string
	SerialPrefix *string
	Selector     *LabelSelector
	Protocol     *Protocol
	// Cursor continues a listing where the previous page ended (its
	// NextCursor). Empty starts at the beginning.
	Cursor string
	// Limit is the page size: 0 means DefaultPageSize; at most MaxPageSize.
	Limit int
}

// Page sizes for listings.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// DeviceUpdate changes a device's labels: SetLabels are added or replaced,
// then RemoveLabels are removed. A key may not be in both.
type DeviceUpdate struct {
	SetLabels    map[string]string `json:"set_labels,omitempty"`
	RemoveLabels []string          `json:"remove_labels,omitempty"`
}

// Validate checks an update.
func (u DeviceUpdate) Validate() error {
	if len(u.SetLabels) == 0 && len(u.RemoveLabels) == 0 {
		return Errorf(EINVALID, "nothing to update: give set_labels or remove_labels")
	}
	if err := ValidateLabels(u.SetLabels); err != nil {
		return err
	}
	for _, k := range u.RemoveLabels {
		if err := ValidateLabelKey(k); err != nil {
			return err
		}
		if _, ok := u.SetLabels[k]; ok {
			return Errorf(EINVALID, "label %q is both set and removed", k)
		}
	}
	return nil
}

// DeviceTransition asks to move a device to another lifecycle state.
type DeviceTransition struct {
	To     State  `json:"to"`
	Reason string `json:"reason,omitempty"`
}

// ImportFormat names the encoding of a bulk import.
type ImportFormat string

// Import formats.
const (
	// ImportCSV is RFC 4180 CSV with a header row naming the columns:
	// serial, model (required), hardware_uid, hardware_revision, macs
	// (separated by ';' or spaces), labels (k=v separated by ';'), state.
	ImportCSV ImportFormat = "csv"
	// ImportJSONL is one DeviceCreate JSON object per line.
	ImportJSONL ImportFormat = "jsonl"
)

// ImportReport says what an import did. An import is all or nothing: when
// any row is rejected, Committed is false and no row was stored.
type ImportReport struct {
	Committed     bool          `json:"committed"`
	Accepted      int           `json:"accepted"`       // rows that were valid
	RejectedCount int           `json:"rejected_count"` // every rejected row, even past the listed ones
	Rejected      []ImportError `json:"rejected"`       // the first MaxImportErrors rejected rows
}

// ImportError is one rejected row of an import.
type ImportError struct {
	Line   int    `json:"line"` // 1-based line (CSV record or JSON line) in the input
	Serial string `json:"serial,omitempty"`
	Reason string `json:"reason"`
}

// MaxImportErrors bounds the rejected rows listed in an ImportReport.
const MaxImportErrors = 1000

// DeviceService is the device registry.
type DeviceService interface {
	// FindDeviceBySerial returns a device of the actor's tenant. Needs
	// PermDeviceRead. ENOTFOUND when there is none in the tenant.
	FindDeviceBySerial(ctx context.Context, serial string) (*Device, error)
	// FindDevices lists the tenant's devices in creation order, one page at a
	// time; next is the cursor of the following page, "" after the last.
	// Needs PermDeviceRead. EINVALID for a bad cursor or limit.
	FindDevices(ctx context.Context, f DeviceFilter) (devices []*Device, next string, err error)
	// CreateDevice registers a device. Needs PermDeviceCreate. EINVALID for
	// bad fields, ECONFLICT when the serial is taken in the tenant.
	CreateDevice(ctx context.Context, c DeviceCreate) (*Device, error)
	// UpdateDevice changes a device's labels. Needs PermDeviceUpdate.
	// EINVALID, ENOTFOUND.
	UpdateDevice(ctx context.Context, serial string, u DeviceUpdate) (*Device, error)
	// TransitionDevice moves a device through the lifecycle. Needs
	// PermDeviceTransition and a move the lifecycle table allows the
	// actor's role; otherwise ECONFLICT naming the current state and the
	// allowed moves. ENOTFOUND, EINVALID (unknown state, reason too long).
	TransitionDevice(ctx context.Context, serial string, t DeviceTransition) (*Device, error)
	// FindDeviceHistory returns a device's lifecycle transitions, oldest
	// first. Needs PermDeviceRead. ENOTFOUND.
	FindDeviceHistory(ctx context.Context, serial string) ([]*StateChange, error)
	// ImportDevices reads rows in the given format from r as a stream and
	// registers them all in one transaction, or none of them. Row errors
	// (bad fields, duplicate serials in the input or in the registry) are
	// reported in the ImportReport, with a nil error. The error is for the
	// whole request: EFORBIDDEN, EINVALID (unknown format, unreadable
	// header), ETOOLARGE (the reader's limit), EINTERNAL.
	ImportDevices(ctx context.Context, format ImportFormat, r io.Reader) (*ImportReport, error)
}

// SortedLabelKeys returns the keys of labels in order.
func SortedLabelKeys(labels map[string]string) []string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func isAlnum(c byte) bool { return isDigit(c) || isLower(c) || (c >= 'A' && c <= 'Z') }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
