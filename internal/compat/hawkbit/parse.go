package hawkbit

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"cradle"
)

// Body limits. hawkBit itself caps a feedback's details; SWUpdate sends at
// most 48 lines of a few hundred bytes each.
const (
	MaxFeedbackBody      = 256 << 10
	MaxConfigDataBody    = 256 << 10
	MaxInstalledBaseBody = 16 << 10
	maxDetails           = 512
)

// Route is what a DDI request path names.
type Route struct {
	Tenant       string
	ControllerID string
	// Resource is "" (the base poll), "deploymentBase", "cancelAction",
	// "configData", "installedBase" or "softwaremodules".
	Resource string
	// ActionID is the action of deploymentBase, cancelAction and
	// installedBase/{id}, and the module of softwaremodules; 0 when absent.
	ActionID int64
	// Feedback is set for …/{id}/feedback.
	Feedback bool
	// FileName is the artifact of softwaremodules/{id}/artifacts/{file};
	// MD5SUM is set when the request is for "<file>.MD5SUM".
	FileName string
	MD5SUM   bool
}

// ParsePath reads a DDI path: /{tenant}/controller/v1/{controllerId}[/…].
// ok is false when the path is not under /{tenant}/controller/v1/ at all
// (another handler's); err says what is wrong with a DDI path that names no
// resource of the API.
func ParsePath(p string) (rt Route, ok bool, err error) {
	rest, found := strings.CutPrefix(p, "/")
	if !found {
		return rt, false, nil
	}
	seg := strings.Split(rest, "/")
	if len(seg) < 3 || seg[1] != "controller" || seg[2] != "v1" || seg[0] == "" {
		return rt, false, nil
	}
	if len(seg) < 4 || seg[3] == "" {
		return rt, true, cradle.Errorf(cradle.ENOTFOUND, "no controller id in %q: the DDI API is /{tenant}/controller/v1/{controllerId}", clip(p, 120))
	}
	rt.Tenant, rt.ControllerID = seg[0], seg[3]
	if !validName(rt.Tenant) {
		return rt, true, cradle.Errorf(cradle.ENOTFOUND, "tenant %q is not a tenant name", clip(rt.Tenant, 64))
	}
	if err := cradle.ValidateSerial(rt.ControllerID); err != nil {
		return rt, true, cradle.Errorf(cradle.ENOTFOUND, "controller id %q is not a device serial", clip(rt.ControllerID, 64))
	}
	seg = seg[4:]
	bad := func() (Route, bool, error) {
		return rt, true, cradle.Errorf(cradle.ENOTFOUND, "no DDI resource %q under controller %q", clip("/"+strings.Join(seg, "/"), 120), rt.ControllerID)
	}
	if len(seg) == 0 {
		return rt, true, nil
	}
	rt.Resource = seg[0]
	switch rt.Resource {
	case "configData":
		if len(seg) != 1 {
			return bad()
		}
	case "installedBase":
		if len(seg) == 1 {
			return rt, true, nil
		}
		if len(seg) != 2 {
			return bad()
		}
		if rt.ActionID, err = parseID(seg[1]); err != nil {
			return rt, true, err
		}
	case "deploymentBase", "cancelAction":
		if len(seg) < 2 || len(seg) > 3 || len(seg) == 3 && seg[2] != "feedback" {
			return bad()
		}
		if rt.ActionID, err = parseID(seg[1]); err != nil {
			return rt, true, err
		}
		rt.Feedback = len(seg) == 3
	case "softwaremodules":
		if len(seg) != 4 || seg[2] != "artifacts" || seg[3] == "" {
			return bad()
		}
		if rt.ActionID, err = parseID(seg[1]); err != nil {
			return rt, true, err
		}
		name := seg[3]
		if base, cut := strings.CutSuffix(name, ".MD5SUM"); cut && base != "" {
			name, rt.MD5SUM = base, true
		}
		if !validFileName(name) {
			return rt, true, cradle.Errorf(cradle.ENOTFOUND, "artifact file name %q is not one this server serves", clip(name, 120))
		}
		rt.FileName = name
	default:
		return bad()
	}
	return rt, true, nil
}

// parseID reads an action or module id: canonical decimal, 1 …
// cradle.MaxDDIActionID.
func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 || id > cradle.MaxDDIActionID || strconv.FormatInt(id, 10) != s {
		return 0, cradle.Errorf(cradle.ENOTFOUND, "%q is not an action id: ids are decimal numbers from 1 to %d", clip(s, 40), int64(cradle.MaxDDIActionID))
	}
	return id, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func validFileName(s string) bool {
	if s == "" || len(s) > 255 || s == "." || s == ".." || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' {
			return false
		}
	}
	return true
}

// Execution values of a feedback (hawkBit's DdiStatus.ExecutionStatus).
const (
	ExecClosed     = "closed"
	ExecProceeding = "proceeding"
	ExecCanceled   = "canceled"
	ExecScheduled  = "scheduled"
	ExecRejected   = "rejected"
	ExecResumed    = "resumed"
	ExecDownloaded = "downloaded"
	ExecDownload   = "download"
)

// Result values of a feedback.
const (
	FinishedSuccess = "success"
	FinishedFailure = "failure"
	FinishedNone    = "none"
)

// Feedback is an action feedback (DdiActionFeedback). Unknown fields
// (SWUpdate sends "id" and "time"; newer hawkBit clients "timestamp") are
// ignored, as hawkBit does.
type Feedback struct {
	Execution string
	Finished  string
	// Progress is cnt of of; both 0 when not sent.
	ProgressCnt, ProgressOf int64
	Details                 []string
	Code                    *int64
}

type feedbackJSON struct {
	Status *struct {
		Execution *string `json:"execution"`
		Result    *struct {
			Finished *string `json:"finished"`
			Progress *struct {
				Cnt *int64 `json:"cnt"`
				Of  *int64 `json:"of"`
			} `json:"progress"`
		} `json:"result"`
		Details []string `json:"details"`
		Code    *int64   `json:"code"`
	} `json:"status"`
}

// ParseFeedback reads a feedback body: status.execution and
// status.result.finished are required and must be known values, as in
// hawkBit; details are strings.
func ParseFeedback(data []byte) (Feedback, error) {
	var fb Feedback
	if len(data) > MaxFeedbackBody {
		return fb, cradle.Errorf(cradle.ETOOLARGE, "feedback is %d bytes; at most %d are accepted", len(data), MaxFeedbackBody)
	}
	var j feedbackJSON
	if err := decodeOne(data, &j); err != nil {
		return fb, cradle.Errorf(cradle.EINVALID, "feedback is not a DDI action feedback: %v (want {\"status\":{\"execution\":\"closed\",\"result\":{\"finished\":\"success\"}}})", err)
	}
	if j.Status == nil {
		return fb, cradle.Errorf(cradle.EINVALID, "feedback has no status")
	}
	if j.Status.Execution == nil {
		return fb, cradle.Errorf(cradle.EINVALID, "feedback has no status.execution")
	}
	switch e := *j.Status.Execution; e {
	case ExecClosed, ExecProceeding, ExecCanceled, ExecScheduled, ExecRejected, ExecResumed, ExecDownloaded, ExecDownload:
		fb.Execution = e
	default:
		return fb, cradle.Errorf(cradle.EINVALID, "feedback status.execution %q is not one of closed, proceeding, canceled, scheduled, rejected, resumed, downloaded, download", clip(e, 40))
	}
	if j.Status.Result == nil || j.Status.Result.Finished == nil {
		return fb, cradle.Errorf(cradle.EINVALID, "feedback has no status.result.finished")
	}
	switch f := *j.Status.Result.Finished; f {
	case FinishedSuccess, FinishedFailure, FinishedNone:
		fb.Finished = f
	default:
		return fb, cradle.Errorf(cradle.EINVALID, "feedback status.result.finished %q is not one of success, failure, none", clip(f, 40))
	}
	if p := j.Status.Result.Progress; p != nil {
		if p.Cnt == nil || p.Of == nil || *p.Cnt < 0 || *p.Of < 0 {
			return fb, cradle.Errorf(cradle.EINVALID, "feedback status.result.progress needs cnt and of, both 0 or more")
		}
		fb.ProgressCnt, fb.ProgressOf = *p.Cnt, *p.Of
	}
	if len(j.Status.Details) > maxDetails {
		return fb, cradle.Errorf(cradle.EINVALID, "feedback has %d details; at most %d are accepted", len(j.Status.Details), maxDetails)
	}
	for _, d := range j.Status.Details {
		if !utf8.ValidString(d) {
			return fb, cradle.Errorf(cradle.EINVALID, "feedback detail is not valid UTF-8")
		}
	}
	fb.Details, fb.Code = j.Status.Details, j.Status.Code
	return fb, nil
}

// Config data modes.
const (
	ModeMerge   = "merge"
	ModeReplace = "replace"
	ModeRemove  = "remove"
)

// ConfigData is a configData body (DdiConfigData): the attributes in Data
// and how to apply them; Mode defaults to merge. SWUpdate also sends "id",
// "time" and "status" (the old API), which are ignored.
type ConfigData struct {
	Mode string
	Data []cradle.DeviceAttribute // sorted by name; values "" for remove
}

// ParseConfigData reads a configData body. data is required, an object of
// strings (hawkBit's Map<String,String>); names and values must fit the
// attribute limits.
func ParseConfigData(body []byte) (ConfigData, error) {
	var c ConfigData
	if len(body) > MaxConfigDataBody {
		return c, cradle.Errorf(cradle.ETOOLARGE, "configData is %d bytes; at most %d are accepted", len(body), MaxConfigDataBody)
	}
	var j struct {
		Mode *string           `json:"mode"`
		Data map[string]string `json:"data"`
	}
	if err := decodeOne(body, &j); err != nil {
		return c, cradle.Errorf(cradle.EINVALID, "configData is not {\"mode\":\"merge|replace|remove\",\"data\":{\"name\":\"value\"}}: %v", err)
	}
	c.Mode = ModeMerge
	if j.Mode != nil {
		switch m := strings.ToLower(*j.Mode); m {
		case ModeMerge, ModeReplace, ModeRemove:
			c.Mode = m
		default:
			return c, cradle.Errorf(cradle.EINVALID, "configData mode %q is not merge, replace or remove", clip(*j.Mode, 40))
		}
	}
	if j.Data == nil {
		return c, cradle.Errorf(cradle.EINVALID, "configData has no data object")
	}
	if len(j.Data) > cradle.MaxDeviceAttributes {
		return c, cradle.Errorf(cradle.EINVALID, "configData has %d attributes; at most %d are kept per device", len(j.Data), cradle.MaxDeviceAttributes)
	}
	for k, v := range j.Data {
		if k == "" || len(k) > cradle.MaxAttributeNameLen || !utf8.ValidString(k) {
			return c, cradle.Errorf(cradle.EINVALID, "configData attribute name %q: names are 1 to %d bytes of UTF-8", clip(k, 40), cradle.MaxAttributeNameLen)
		}
		if len(v) > cradle.MaxAttributeValueLen || !utf8.ValidString(v) {
			return c, cradle.Errorf(cradle.EINVALID, "configData attribute %q: values are at most %d bytes of UTF-8", clip(k, 40), cradle.MaxAttributeValueLen)
		}
		c.Data = append(c.Data, cradle.DeviceAttribute{Name: k, Value: v})
	}
	sortAttrs(c.Data)
	return c, nil
}

// InstalledBase is a PUT installedBase body (DdiAssignedVersion): the
// software the device really runs, by name and version.
type InstalledBase struct {
	Name    string
	Version string
}

// ParseInstalledBase reads a PUT installedBase body; name and version are
// required, as hawkBit's @NotEmpty.
func ParseInstalledBase(body []byte) (InstalledBase, error) {
	var ib InstalledBase
	if len(body) > MaxInstalledBaseBody {
		return ib, cradle.Errorf(cradle.ETOOLARGE, "installedBase is %d bytes; at most %d are accepted", len(body), MaxInstalledBaseBody)
	}
	var j struct {
		Name    *string `json:"name"`
		Version *string `json:"version"`
	}
	if err := decodeOne(body, &j); err != nil {
		return ib, cradle.Errorf(cradle.EINVALID, "installedBase is not {\"name\":…,\"version\":…}: %v", err)
	}
	if j.Name == nil || *j.Name == "" || j.Version == nil || *j.Version == "" {
		return ib, cradle.Errorf(cradle.EINVALID, "installedBase needs a non-empty name and version")
	}
	if len(*j.Name) > 256 || len(*j.Version) > 256 || !utf8.ValidString(*j.Name) || !utf8.ValidString(*j.Version) {
		return ib, cradle.Errorf(cradle.EINVALID, "installedBase name and version are at most 256 bytes of UTF-8")
	}
	return InstalledBase{Name: *j.Name, Version: *j.Version}, nil
}

// decodeOne decodes exactly one JSON value (unknown fields allowed, as
// hawkBit's Jackson configuration does) with nothing but space after it.
func decodeOne(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errTrailing
	}
	var extra json.RawMessage
	if dec.Decode(&extra) == nil {
		return errTrailing
	}
	return nil
}

type trailingError struct{}

func (trailingError) Error() string { return "text after the JSON value" }

var errTrailing error = trailingError{}

func sortAttrs(a []cradle.DeviceAttribute) {
	slices.SortFunc(a, func(x, y cradle.DeviceAttribute) int { return strings.Compare(x.Name, y.Name) })
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
