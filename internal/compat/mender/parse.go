package mender

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"cradle"
)

// The parsers of what a Mender client sends. Each returns EINVALID (or
// ENOTFOUND for a deployment id) with a message saying what was wrong.

// AuthRequest is an auth request whose signature verified.
type AuthRequest struct {
	// Request is the identity and key in canonical form, for the store.
	Request cradle.MenderAuthRequest
	// TenantToken is the tenant token the device was configured with; ""
	// for none.
	TenantToken string
}

// authRequestBody is what the client sends (client/auth.go AuthReqData).
type authRequestBody struct {
	IDData      *string `json:"id_data"`
	TenantToken string  `json:"tenant_token"`
	PubKey      *string `json:"pubkey"`
}

// ParseAuthRequest reads an auth request body and checks its signature:
// signature is the X-MEN-Signature header (base64) over the exact body,
// made with the body's own key (RSA PKCS#1 v1.5 SHA-256, ECDSA P-256
// SHA-256 ASN.1 DER, or Ed25519 over the body).
func ParseAuthRequest(body []byte, signature string) (*AuthRequest, error) {
	var b authRequestBody
	if err := decodeStrict(body, "auth request", &b); err != nil {
		return nil, err
	}
	if b.IDData == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the auth request has no id_data (the device's identity, a JSON object as a string)")
	}
	if b.PubKey == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the auth request has no pubkey (the device's public key, PKIX PEM)")
	}
	canon, mac, err := cradle.CanonicalMenderIDData(*b.IDData)
	if err != nil {
		return nil, err
	}
	pub, pemText, fp, err := cradle.ParseDevicePublicKey(*b.PubKey)
	if err != nil {
		return nil, err
	}
	if signature == "" {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "the auth request has no X-MEN-Signature header")
	}
	sig, err := base64.StdEncoding.DecodeString(signature)
	if err != nil {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "X-MEN-Signature is not base64")
	}
	if err := verify(pub, body, sig); err != nil {
		return nil, err
	}
	return &AuthRequest{
		Request:     cradle.MenderAuthRequest{IDData: canon, PublicKey: pemText, KeyFingerprint: fp, MAC: mac},
		TenantToken: b.TenantToken,
	}, nil
}

// verify checks a signature of body by pub, as the Mender client makes it
// (store/keystore.go Sign).
func verify(pub crypto.PublicKey, body, sig []byte) error {
	sum := sha256.Sum256(body)
	ok := false
	switch k := pub.(type) {
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig) == nil
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, sum[:], sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, body, sig)
	}
	if !ok {
		return cradle.Errorf(cradle.EUNAUTHORIZED, "X-MEN-Signature does not verify with the request's public key over its body")
	}
	return nil
}

// inventoryAttribute is one element of an inventory body.
type inventoryAttribute struct {
	Name  *string         `json:"name"`
	Value json.RawMessage `json:"value"`
}

// ParseInventory reads an inventory body: a JSON array of {name, value},
// value a string, a number (kept as written) or an array of strings and
// numbers (kept as its JSON text). Names are unique.
func ParseInventory(body []byte) ([]cradle.DeviceAttribute, error) {
	var in []inventoryAttribute
	if err := decodeStrict(body, "inventory", &in); err != nil {
		return nil, err
	}
	if in == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the inventory is not a JSON array of {\"name\", \"value\"} objects")
	}
	if len(in) > cradle.MaxDeviceAttributes {
		return nil, cradle.Errorf(cradle.EINVALID, "the inventory has %d attributes; at most %d are accepted", len(in), cradle.MaxDeviceAttributes)
	}
	out := make([]cradle.DeviceAttribute, 0, len(in))
	seen := make(map[string]bool, len(in))
	for i, a := range in {
		if a.Name == nil || *a.Name == "" {
			return nil, cradle.Errorf(cradle.EINVALID, "inventory attribute %d has no name", i)
		}
		name := *a.Name
		if seen[name] {
			return nil, cradle.Errorf(cradle.EINVALID, "inventory attribute %q is given twice", clip(name, 60))
		}
		seen[name] = true
		v, err := attributeValue(a.Value)
		if err != nil {
			return nil, cradle.Errorf(cradle.EINVALID, "inventory attribute %q: %s", clip(name, 60), err)
		}
		out = append(out, cradle.DeviceAttribute{Name: name, Value: v})
	}
	return out, nil
}

// attributeValue turns an inventory value into the stored text.
func attributeValue(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", errors.New("it has no value")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("bad value: %v", err)
	}
	scalar := func(v any) (string, bool) {
		switch v := v.(type) {
		case string:
			return v, true
		case json.Number:
			return v.String(), true
		}
		return "", false
	}
	if s, ok := scalar(v); ok {
		return s, nil
	}
	list, ok := v.([]any)
	if !ok {
		return "", errors.New("a value is a string, a number or an array of them")
	}
	for _, e := range list {
		if _, ok := scalar(e); !ok {
			return "", errors.New("an array value may hold only strings and numbers")
		}
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return "", fmt.Errorf("bad value: %v", err)
	}
	return b.String(), nil
}

// Provides is what an update check says the device runs.
type Provides struct {
	DeviceType   string
	ArtifactName string
}

// nextV2Body is the v2 update check body.
type nextV2Body struct {
	DeviceProvides   map[string]string `json:"device_provides"`
	UpdateControlMap *bool             `json:"update_control_map"`
}

// ParseNextV2 reads a v2 update check body:
// {"device_provides": {string: string}, "update_control_map": bool}.
func ParseNextV2(body []byte) (Provides, error) {
	var b nextV2Body
	if err := decodeStrict(body, "update check", &b); err != nil {
		return Provides{}, err
	}
	if b.DeviceProvides == nil {
		return Provides{}, cradle.Errorf(cradle.EINVALID, "the update check has no device_provides object")
	}
	return provides(b.DeviceProvides)
}

// ParseNextV1 reads a v1 update check body: the flat provides object.
func ParseNextV1(body []byte) (Provides, error) {
	var m map[string]string
	if err := decodeStrict(body, "update check", &m); err != nil {
		return Provides{}, err
	}
	if m == nil {
		return Provides{}, cradle.Errorf(cradle.EINVALID, "the update check is not a JSON object of what the device provides")
	}
	return provides(m)
}

// ParseNextQuery reads a v1 GET update check's query:
// device_type=…&artifact_name=….
func ParseNextQuery(q map[string][]string) (Provides, error) {
	m := map[string]string{}
	for k, v := range q {
		if k != "device_type" && k != "artifact_name" {
			return Provides{}, cradle.Errorf(cradle.EINVALID, "query parameter %q: the update check takes device_type and artifact_name", clip(k, 40))
		}
		if len(v) != 1 {
			return Provides{}, cradle.Errorf(cradle.EINVALID, "query parameter %s is given %d times", k, len(v))
		}
		m[k] = v[0]
	}
	return provides(m)
}

func provides(m map[string]string) (Provides, error) {
	p := Provides{DeviceType: m["device_type"], ArtifactName: m["artifact_name"]}
	if p.DeviceType == "" {
		return Provides{}, cradle.Errorf(cradle.EINVALID, "the update check has no device_type")
	}
	if len(p.DeviceType) > 128 || !utf8.ValidString(p.DeviceType) {
		return Provides{}, cradle.Errorf(cradle.EINVALID, "device_type is not a short UTF-8 string")
	}
	return p, nil
}

// Deployment statuses the client reports (client/client_status.go, and
// the pause states of app/state.go).
const (
	StatusDownloading      = "downloading"
	StatusInstalling       = "installing"
	StatusRebooting        = "rebooting"
	StatusSuccess          = "success"
	StatusFailure          = "failure"
	StatusAlreadyInstalled = "already-installed"
)

// Status is a parsed status report.
type Status struct {
	Status   string
	SubState string
}

// UpdateState is the cradle update report state of s.
func (s Status) UpdateState() string {
	switch s.Status {
	case StatusDownloading:
		return cradle.UpdateDownloading
	case StatusSuccess, StatusAlreadyInstalled:
		return cradle.UpdateSucceeded
	case StatusFailure:
		return cradle.UpdateFailed
	}
	return cradle.UpdateInstalling // installing, rebooting, pause_*
}

var statuses = []string{StatusDownloading, StatusInstalling, StatusRebooting, StatusSuccess, StatusFailure, StatusAlreadyInstalled,
	"pause_before_installing", "pause_before_rebooting", "pause_before_committing"}

type statusBody struct {
	Status   *string `json:"status"`
	SubState string  `json:"substate"`
}

// ParseStatus reads a status report body: {"status", "substate"}.
func ParseStatus(body []byte) (Status, error) {
	var b statusBody
	if err := decodeStrict(body, "status report", &b); err != nil {
		return Status{}, err
	}
	if b.Status == nil {
		return Status{}, cradle.Errorf(cradle.EINVALID, "the status report has no status")
	}
	known := false
	for _, s := range statuses {
		known = known || *b.Status == s
	}
	if !known {
		return Status{}, cradle.Errorf(cradle.EINVALID, "unknown status %q: want one of %s", clip(*b.Status, 40), strings.Join(statuses, ", "))
	}
	if len(b.SubState) > 200 || !utf8.ValidString(b.SubState) {
		return Status{}, cradle.Errorf(cradle.EINVALID, "substate is not a short UTF-8 string")
	}
	return Status{Status: *b.Status, SubState: b.SubState}, nil
}

// logBody is a deployment log upload.
type logBody struct {
	Messages []map[string]any `json:"messages"`
}

// ParseLog checks a deployment log body, {"messages": [{"timestamp",
// "level", "message"}, …]}, and returns the message of its last entry of
// level error (or fatal, panic); "" when there is none.
func ParseLog(body []byte) (lastError string, err error) {
	var b logBody
	if err := decodeStrict(body, "deployment log", &b); err != nil {
		return "", err
	}
	if b.Messages == nil {
		return "", cradle.Errorf(cradle.EINVALID, "the deployment log has no messages array")
	}
	for i, m := range b.Messages {
		if m == nil {
			return "", cradle.Errorf(cradle.EINVALID, "deployment log message %d is not an object", i)
		}
		level, _ := m["level"].(string)
		msg, ok := m["message"].(string)
		if !ok {
			return "", cradle.Errorf(cradle.EINVALID, "deployment log message %d has no message string", i)
		}
		switch level {
		case "error", "fatal", "panic":
			lastError = msg
		}
	}
	return lastError, nil
}

// maxAttempt bounds the attempt number of a deployment id.
const maxAttempt = 1 << 20

// ParseDeploymentID splits a deployment id, "<rollout id>-<attempt>".
// ENOTFOUND for anything else: no such deployment.
func ParseDeploymentID(id string) (rolloutID string, attempt int, err error) {
	bad := func() (string, int, error) {
		return "", 0, cradle.Errorf(cradle.ENOTFOUND, "deployment %q not found: deployment ids are <rollout id>-<attempt>", clip(id, 80))
	}
	i := strings.LastIndexByte(id, '-')
	if i <= 0 || i > 64 {
		return bad()
	}
	rolloutID, num := id[:i], id[i+1:]
	for _, c := range rolloutID {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return bad()
		}
	}
	n, perr := strconv.Atoi(num)
	if perr != nil || n < 1 || n > maxAttempt || strconv.Itoa(n) != num {
		return bad()
	}
	return rolloutID, n, nil
}

// DeploymentID is the deployment id of an attempt.
func DeploymentID(rolloutID string, attempt int) string {
	return rolloutID + "-" + strconv.Itoa(attempt)
}

// decodeStrict decodes one JSON value into v: unknown fields and trailing
// data are refused, and the message says what was wrong.
func decodeStrict(data []byte, what string, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.Is(err, io.EOF):
			return cradle.Errorf(cradle.EINVALID, "the %s is empty", what)
		case errors.As(err, &se):
			return cradle.Errorf(cradle.EINVALID, "the %s is not valid JSON: %v (at byte %d)", what, se, se.Offset)
		case errors.As(err, &te):
			field := te.Field
			if field == "" {
				field = "the document"
			}
			return cradle.Errorf(cradle.EINVALID, "the %s: %s is a JSON %s, want %s", what, clip(field, 60), te.Value, te.Type)
		}
		return cradle.Errorf(cradle.EINVALID, "the %s: %s", what, clip(strings.TrimPrefix(err.Error(), "json: "), 200))
	}
	if dec.More() {
		return cradle.Errorf(cradle.EINVALID, "the %s has data after its JSON value", what)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return cradle.Errorf(cradle.EINVALID, "the %s has data after its JSON value", what)
	}
	return nil
}
