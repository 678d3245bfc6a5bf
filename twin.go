package cradle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// The configuration twin of a device is two versioned JSON documents: the
// desired configuration the server wants the device to run, and the
// configuration the device reports it runs.
//
// Precedence. The effective desired configuration of a device is composed
// from the config groups whose label selector matches the device's labels,
// merged in ascending priority (ties broken by name, ascending), and then
// the device's own document on top. Merging is a deep merge of JSON
// objects: keys of the later document win, objects present in both are
// merged key by key, and arrays and scalars are replaced whole. A device
// with neither matching groups nor a document of its own has no desired
// configuration until it gets one; once it has had one, losing every
// source makes it the empty object {} under a new version.
//
// Versions. The effective version is a per-device integer that increases
// by one every time the device's effective configuration changes, whatever
// changed it (its own document, a group, its labels). Changes that leave
// the effective configuration as it was do not bump it.
//
// Schemas. An operator may register a JSON Schema per device model. While
// one is registered, a change whose effective configuration for a device
// of that model fails it is refused, naming the device and the path in the
// document (a JSON pointer).
//
// The wire documents are the same bytes over MQTT and HTTPS:
//
//	desired  (server→device): {"version": 7, "config": {…}}
//	reported (device→server): {"version": 7, "status": "applied", "error": "", "config": {…}, "at": "2026-…Z"}

// Twin limits.
const (
	MaxConfigBytes  = 64 << 10 // a configuration document, a group's config, a reported document
	MaxSchemaBytes  = 64 << 10 // a model's JSON Schema
	MaxConfigDepth  = 32       // nesting of objects and arrays in a configuration
	MaxGroupNameLen = 63
)

// ReportStatus is what the device did with the desired version it names.
type ReportStatus string

// Report statuses.
const (
	ReportApplied  ReportStatus = "applied"  // the device runs the desired version
	ReportRejected ReportStatus = "rejected" // the document was invalid (JSON, schema); the device kept its running config
	ReportFailed   ReportStatus = "failed"   // applying failed in a handler; the device says what it runs in config
)

// DriftState compares a device's reported document with its desired one.
type DriftState string

// Drift states.
const (
	DriftNone     DriftState = "none"     // no desired configuration
	DriftPending  DriftState = "pending"  // the device has not reported the desired version yet
	DriftInSync   DriftState = "in-sync"  // applied, and the reported config is the desired one
	DriftRejected DriftState = "rejected" // the device rejected the desired version
	DriftFailed   DriftState = "failed"   // the device failed to apply the desired version
	DriftDrifted  DriftState = "drifted"  // the device claims the desired version but runs another config (or claims a version never issued)
)

// DriftStates lists the drift states, in a stable order.
var DriftStates = []DriftState{DriftNone, DriftPending, DriftInSync, DriftRejected, DriftFailed, DriftDrifted}

// ParseDriftState returns the drift state named s, or EINVALID listing the
// valid ones.
func ParseDriftState(s string) (DriftState, error) {
	if slices.Contains(DriftStates, DriftState(s)) {
		return DriftState(s), nil
	}
	return "", Errorf(EINVALID, "unknown drift state %q; valid states: none, pending, in-sync, rejected, failed, drifted", truncate(s, 40))
}

// TwinDesired is the desired document a device receives.
type TwinDesired struct {
	Version int64           `json:"version"` // ≥ 1
	Config  json.RawMessage `json:"config"`  // a JSON object, canonical (sorted keys, no spaces)
}

// TwinReported is the document a device reports.
type TwinReported struct {
	Version int64           `json:"version"`         // the desired version it last handled; 0 if none
	Status  ReportStatus    `json:"status"`          // applied, rejected or failed
	Error   string          `json:"error,omitempty"` // the precise reason, when not applied
	Config  json.RawMessage `json:"config"`          // the configuration it runs (an object)
	At      time.Time       `json:"at"`              // when the device handled it
}

// Twin is a device's configuration twin as operators see it.
type Twin struct {
	Serial string `json:"serial"`
	Model  string `json:"model"`
	// DeviceConfig is the device's own document, set by operators; absent
	// when it has none.
	DeviceConfig json.RawMessage `json:"device_config,omitempty"`
	// Groups names the config groups that match the device, in merge
	// order (the last wins).
	Groups []string `json:"groups"`
	// Desired is the effective desired document; absent while there is
	// none.
	Desired   *TwinDesired `json:"desired,omitempty"`
	DesiredAt *time.Time   `json:"desired_at,omitempty"`
	// Reported is the device's last report; ReportedAt is when the server
	// received it.
	Reported   *TwinReported `json:"reported,omitempty"`
	ReportedAt *time.Time    `json:"reported_at,omitempty"`
	Drift      DriftState    `json:"drift"`
}

// TwinStatus is one row of a drift listing.
type TwinStatus struct {
	Serial          string       `json:"serial"`
	DesiredVersion  int64        `json:"desired_version"`
	ReportedVersion int64        `json:"reported_version"`
	ReportedStatus  ReportStatus `json:"reported_status,omitempty"`
	Error           string       `json:"error,omitempty"`
	Drift           DriftState   `json:"drift"`
	ReportedAt      *time.Time   `json:"reported_at,omitempty"`
}

// TwinFilter selects rows of a drift listing. Only devices that have a
// twin (a desired document, a report, or both) are listed.
type TwinFilter struct {
	Drift  *DriftState // nil: every state
	Cursor string      // from a previous page; "" for the first
	Limit  int         // 0 means DefaultPageSize; at most MaxPageSize
}

// ConfigGroup is configuration shared by the devices its selector matches.
type ConfigGroup struct {
	Name      string          `json:"name"`
	Selector  string          `json:"selector"` // a label selector, canonical
	Priority  int             `json:"priority"` // higher is merged later, so wins
	Config    json.RawMessage `json:"config"`   // a JSON object
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
	UpdatedBy string          `json:"updated_by"`
}

// ConfigGroupPut creates or replaces a config group.
type ConfigGroupPut struct {
	Selector string          `json:"selector"`
	Priority int             `json:"priority"`
	Config   json.RawMessage `json:"config"`
}

// Validate checks the request; it returns the parsed selector and config.
func (p ConfigGroupPut) Validate() (*LabelSelector, map[string]any, error) {
	sel, err := ParseLabelSelector(p.Selector)
	if err != nil {
		return nil, nil, err
	}
	if p.Priority < -1000000 || p.Priority > 1000000 {
		return nil, nil, Errorf(EINVALID, "invalid priority %d: use -1000000 to 1000000", p.Priority)
	}
	if len(p.Config) == 0 {
		return nil, nil, Errorf(EINVALID, "a config group needs a config object")
	}
	cfg, err := ParseConfig(p.Config)
	if err != nil {
		return nil, nil, err
	}
	return sel, cfg, nil
}

// ValidateGroupName checks a config group name: 1 to 63 lower-case
// letters, digits, '-' and '.', starting with a letter or digit.
func ValidateGroupName(name string) error {
	ok := len(name) > 0 && len(name) <= MaxGroupNameLen && (isLower(name[0]) || isDigit(name[0]))
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = isLower(c) || isDigit(c) || c == '-' || c == '.'
	}
	if !ok {
		return Errorf(EINVALID, "invalid config group name %q: use 1 to %d lower-case letters, digits, '-' and '.', starting with a letter or digit", truncate(name, 80), MaxGroupNameLen)
	}
	return nil
}

// ConfigSchema is the JSON Schema the configuration of a model's devices
// must satisfy.
type ConfigSchema struct {
	Model     string          `json:"model"`
	Schema    json.RawMessage `json:"schema"`
	UpdatedAt time.Time       `json:"updated_at"`
	UpdatedBy string          `json:"updated_by"`
}

// TwinChange tells the device channel that a device's effective desired
// document changed: Desired is the new wire document.
type TwinChange struct {
	TenantID int64
	Serial   string
	Desired  []byte
}

// TwinService manages configuration twins, config groups and model
// schemas. Operator changes are audited with the change in one transaction.
type TwinService interface {
	// FindTwin returns a device's twin. Needs PermTwinRead; a device may
	// read only its own. ENOTFOUND for an unknown device.
	FindTwin(ctx context.Context, serial string) (*Twin, error)
	// SetDeviceConfig replaces the device's own document (a JSON object)
	// and returns the twin. Needs PermTwinWrite. EINVALID for a document
	// that is not a JSON object within the limits, or whose effective
	// configuration fails the model's schema; ENOTFOUND for an unknown
	// device.
	SetDeviceConfig(ctx context.Context, serial string, config []byte) (*Twin, error)
	// DeleteDeviceConfig removes the device's own document. Needs
	// PermTwinWrite. ENOTFOUND for an unknown device or one without a
	// document of its own.
	DeleteDeviceConfig(ctx context.Context, serial string) (*Twin, error)
	// FindDesired returns the device's effective desired document, or nil
	// when it has none. Needs PermTwinRead; a device may read only its own.
	FindDesired(ctx context.Context, serial string) (*TwinDesired, error)
	// ReportTwin stores a device's reported document. Needs
	// PermTwinReport, and a device reports only for itself. EINVALID for
	// a document ParseReported refuses.
	ReportTwin(ctx context.Context, serial string, r *TwinReported) error
	// FindTwins lists twins with their drift state, by serial. Needs
	// PermTwinRead.
	FindTwins(ctx context.Context, f TwinFilter) ([]*TwinStatus, string, error)

	// PutConfigGroup creates or replaces a group and recomputes the
	// devices it reached or now reaches, in one transaction. Needs
	// PermTwinWrite. EINVALID for a bad name, selector or config, or when
	// a device's effective configuration would fail its model's schema.
	PutConfigGroup(ctx context.Context, name string, p ConfigGroupPut) (*ConfigGroup, error)
	// FindConfigGroups lists the tenant's groups in merge order. Needs
	// PermTwinRead.
	FindConfigGroups(ctx context.Context) ([]*ConfigGroup, error)
	// FindConfigGroup returns a group, or ENOTFOUND. Needs PermTwinRead.
	FindConfigGroup(ctx context.Context, name string) (*ConfigGroup, error)
	// DeleteConfigGroup deletes a group and recomputes the devices it
	// reached. Needs PermTwinWrite. ENOTFOUND for an unknown group;
	// EINVALID when a device's configuration without it would fail its
	// model's schema.
	DeleteConfigGroup(ctx context.Context, name string) error

	// PutConfigSchema registers (or replaces) the JSON Schema of a model.
	// Needs PermTwinWrite. EINVALID for a schema that does not compile, or
	// that a device of the model's current effective configuration fails.
	PutConfigSchema(ctx context.Context, model string, schema []byte) (*ConfigSchema, error)
	// FindConfigSchema returns a model's schema, or ENOTFOUND. Needs
	// PermTwinRead.
	FindConfigSchema(ctx context.Context, model string) (*ConfigSchema, error)
}

// ParseConfig parses a configuration document: strict JSON (one value, no
// duplicate keys, no trailing data), at most MaxConfigBytes and
// MaxConfigDepth deep, and a JSON object. Numbers are kept as json.Number,
// so nothing is rounded. Errors are EINVALID and say what and where.
func ParseConfig(data []byte) (map[string]any, error) {
	if len(data) > MaxConfigBytes {
		return nil, Errorf(ETOOLARGE, "configuration document is %d bytes; the limit is %d", len(data), MaxConfigBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseJSONValue(dec, "", 0)
	if err != nil {
		return nil, err
	}
	if rest := data[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) > 0 {
		return nil, Errorf(EINVALID, "invalid configuration: unexpected data after the JSON value at byte %d", dec.InputOffset())
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, Errorf(EINVALID, "invalid configuration: the document must be a JSON object, not %s", jsonKind(v))
	}
	return m, nil
}

func parseJSONValue(dec *json.Decoder, path string, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errorf(EINVALID, "invalid configuration: the JSON ends early")
		}
		return nil, Errorf(EINVALID, "invalid configuration JSON near byte %d: %v", dec.InputOffset(), err)
	}
	switch t := tok.(type) {
	case json.Delim:
		if depth >= MaxConfigDepth {
			return nil, Errorf(EINVALID, "invalid configuration: nested deeper than %d at %s", MaxConfigDepth, pointerOrRoot(path))
		}
		switch t {
		case '{':
			m := map[string]any{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, Errorf(EINVALID, "invalid configuration JSON near byte %d: %v", dec.InputOffset(), err)
				}
				k, _ := kt.(string) // the decoder only yields string keys in an object
				p := path + "/" + escapePointer(k)
				if _, dup := m[k]; dup {
					return nil, Errorf(EINVALID, "invalid configuration: duplicate key at %s", p)
				}
				v, err := parseJSONValue(dec, p, depth+1)
				if err != nil {
					return nil, err
				}
				m[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, Errorf(EINVALID, "invalid configuration JSON near byte %d: %v", dec.InputOffset(), err)
			}
			return m, nil
		case '[':
			a := []any{}
			for i := 0; dec.More(); i++ {
				v, err := parseJSONValue(dec, fmt.Sprintf("%s/%d", path, i), depth+1)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, Errorf(EINVALID, "invalid configuration JSON near byte %d: %v", dec.InputOffset(), err)
			}
			return a, nil
		}
		return nil, Errorf(EINVALID, "invalid configuration JSON near byte %d: unexpected %q", dec.InputOffset(), t)
	default:
		return t, nil
	}
}

func escapePointer(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}

func pointerOrRoot(p string) string {
	if p == "" {
		return "the root"
	}
	return p
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	}
	return "an object"
}

// CanonicalConfig encodes a parsed configuration canonically: keys sorted,
// no insignificant space, numbers as written.
func CanonicalConfig(cfg map[string]any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(cfg); err != nil {
		// Values from ParseConfig and MergeConfig always encode.
		panic("cradle: encode configuration: " + err.Error())
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

// MergeConfig returns base with over merged on top: objects present in
// both are merged key by key; anything else in over replaces what base
// has. Neither argument is modified.
func MergeConfig(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bo, bok := out[k].(map[string]any)
		oo, ook := v.(map[string]any)
		if bok && ook {
			out[k] = MergeConfig(bo, oo)
		} else {
			out[k] = v
		}
	}
	return out
}

// SortConfigGroups sorts groups in merge order: ascending priority, ties
// by name.
func SortConfigGroups(groups []*ConfigGroup) {
	slices.SortFunc(groups, func(a, b *ConfigGroup) int {
		if a.Priority != b.Priority {
			if a.Priority < b.Priority {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// ComposeConfig returns the effective configuration of a device with
// labels: the groups (in merge order, see SortConfigGroups) whose selector
// matches, merged, then device on top (nil: none). ok is false when no
// group matches and device is nil. matched names the groups used.
func ComposeConfig(groups []*ConfigGroup, labels map[string]string, device map[string]any) (cfg map[string]any, matched []string, ok bool, err error) {
	return NewConfigComposer(groups).Compose(labels, device)
}

// ConfigComposer is ComposeConfig for many devices and the same groups: it
// parses each group's selector and configuration once, when a device first
// needs it, instead of once per device.
type ConfigComposer struct {
	groups []*ConfigGroup
	sels   []*LabelSelector
	cfgs   []map[string]any
}

// NewConfigComposer returns a composer of groups, in merge order (see
// SortConfigGroups). It parses nothing yet.
func NewConfigComposer(groups []*ConfigGroup) *ConfigComposer {
	return &ConfigComposer{groups: groups, sels: make([]*LabelSelector, len(groups)), cfgs: make([]map[string]any, len(groups))}
}

// Compose is ComposeConfig(groups, labels, device). The configuration it
// returns may share values with the groups' parsed configurations and
// must not be modified.
func (c *ConfigComposer) Compose(labels map[string]string, device map[string]any) (cfg map[string]any, matched []string, ok bool, err error) {
	cfg = map[string]any{}
	for i, g := range c.groups {
		if c.sels[i] == nil {
			if c.sels[i], err = ParseLabelSelector(g.Selector); err != nil {
				return nil, nil, false, fmt.Errorf("config group %s: %w", g.Name, err)
			}
		}
		if !c.sels[i].Matches(labels) {
			continue
		}
		if c.cfgs[i] == nil {
			if c.cfgs[i], err = ParseConfig(g.Config); err != nil {
				return nil, nil, false, fmt.Errorf("config group %s: %w", g.Name, err)
			}
		}
		cfg = MergeConfig(cfg, c.cfgs[i])
		matched = append(matched, g.Name)
	}
	if device != nil {
		cfg = MergeConfig(cfg, device)
	}
	return cfg, matched, len(matched) > 0 || device != nil, nil
}

// ParseDesired parses a desired document as a device receives it: strict
// JSON, version ≥ 1 and config an object (see ParseConfig). The document
// may be at most MaxConfigBytes plus a small envelope.
func ParseDesired(data []byte) (*TwinDesired, map[string]any, error) {
	if len(data) > MaxConfigBytes+256 {
		return nil, nil, Errorf(ETOOLARGE, "desired document is %d bytes; the limit is %d", len(data), MaxConfigBytes+256)
	}
	var d TwinDesired
	if err := DecodeStrictJSON(data, &d); err != nil {
		return nil, nil, err
	}
	if d.Version < 1 {
		return nil, nil, Errorf(EINVALID, "invalid desired document: version %d, want 1 or more", d.Version)
	}
	if len(d.Config) == 0 {
		return nil, nil, Errorf(EINVALID, "invalid desired document: config is missing")
	}
	cfg, err := ParseConfig(d.Config)
	if err != nil {
		return nil, nil, err
	}
	d.Config = CanonicalConfig(cfg)
	return &d, cfg, nil
}

// ParseReported parses a reported document as a device sends it: strict
// JSON, a known status, an error exactly when not applied, config an
// object (empty {} when the device runs none), at a time.
func ParseReported(data []byte) (*TwinReported, error) {
	if len(data) > MaxConfigBytes+4096 {
		return nil, Errorf(ETOOLARGE, "reported document is %d bytes; the limit is %d", len(data), MaxConfigBytes+4096)
	}
	var r TwinReported
	if err := DecodeStrictJSON(data, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks a reported document and makes its config canonical.
func (r *TwinReported) Validate() error {
	if r.Version < 0 {
		return Errorf(EINVALID, "invalid reported document: version %d is negative", r.Version)
	}
	switch r.Status {
	case ReportApplied:
		if r.Error != "" {
			return Errorf(EINVALID, "invalid reported document: status applied with an error; send the error with status rejected or failed")
		}
	case ReportRejected, ReportFailed:
		if r.Error == "" {
			return Errorf(EINVALID, "invalid reported document: status %s needs an error saying why", r.Status)
		}
	default:
		return Errorf(EINVALID, "invalid reported document: status %q; want applied, rejected or failed", truncate(string(r.Status), 40))
	}
	if len(r.Error) > 4096 || !isPrintable(r.Error) {
		return Errorf(EINVALID, "invalid reported document: error must be at most 4096 printable characters")
	}
	if r.At.IsZero() {
		return Errorf(EINVALID, "invalid reported document: at (an RFC 3339 time) is missing")
	}
	if len(r.Config) == 0 {
		return Errorf(EINVALID, "invalid reported document: config is missing; send {} when the device runs none")
	}
	cfg, err := ParseConfig(r.Config)
	if err != nil {
		return err
	}
	r.Config = CanonicalConfig(cfg)
	return nil
}

// Drift compares a reported document (nil: none) with the desired one
// (nil: none). Both configs must be canonical.
func Drift(desired *TwinDesired, reported *TwinReported) DriftState {
	switch {
	case desired == nil && (reported == nil || reported.Version == 0):
		return DriftNone
	case desired == nil:
		return DriftDrifted // it claims a version the server never issued
	case reported == nil || reported.Version < desired.Version:
		return DriftPending
	case reported.Version > desired.Version:
		return DriftDrifted
	case reported.Status == ReportRejected:
		return DriftRejected
	case reported.Status == ReportFailed:
		return DriftFailed
	case !bytes.Equal(reported.Config, desired.Config):
		return DriftDrifted
	}
	return DriftInSync
}

// ValidateModelName checks a model name as a config schema key: the rules
// of Device.Model, so that every schema can match a device.
func ValidateModelName(model string) error {
	return validateToken("model", model, MaxModelLen, true)
}
