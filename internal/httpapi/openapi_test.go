package httpapi_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/httpapi"

	"github.com/google/go-cmp/cmp"
)

// openAPIDoc is the part of the OpenAPI document the tests read.
type openAPIDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Required   []string                   `json:"required"`
		} `json:"schemas"`
	} `json:"components"`
}

func loadDoc(t *testing.T) *openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(httpapi.OpenAPIDocument(), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi.json says openapi %q, want 3.x", doc.OpenAPI)
	}
	return &doc
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// documented lists "METHOD /path" for every operation of the document.
func documented(doc *openAPIDoc) []string {
	var out []string
	for path, item := range doc.Paths {
		for m := range item {
			if slices.Contains(httpMethods, m) {
				out = append(out, strings.ToUpper(m)+" "+path)
			}
		}
	}
	sort.Strings(out)
	return out
}

// served lists "METHOD /path" for every route; ServeMux wildcards and
// OpenAPI path templates are both written {name}.
func served(routes []httpapi.Route) []string {
	var out []string
	for _, r := range routes {
		out = append(out, r.Method+" "+r.Pattern)
	}
	sort.Strings(out)
	return out
}

// routeMismatches names each route missing from the document and each
// documented operation that is not a route.
func routeMismatches(served, documented []string) []string {
	var out []string
	for _, s := range served {
		if !slices.Contains(documented, s) {
			out = append(out, "route "+s+" is not in openapi.json")
		}
	}
	for _, d := range documented {
		if !slices.Contains(served, d) {
			out = append(out, "openapi.json documents "+d+", which is not a route")
		}
	}
	return out
}

// TestOpenAPIMatchesRoutes fails when a route is missing from the document
// or the document names a route that does not exist.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadDoc(t)
	s := &httpapi.Server{}
	if bad := routeMismatches(served(s.Routes()), documented(doc)); len(bad) > 0 {
		t.Errorf("routes and openapi.json disagree:\n\t%s", strings.Join(bad, "\n\t"))
	}
}

// TestRouteMismatchesCatchesDrift proves the comparison above can fail.
func TestRouteMismatchesCatchesDrift(t *testing.T) {
	got := routeMismatches([]string{"GET /a", "POST /b"}, []string{"GET /a", "DELETE /b"})
	want := []string{"route POST /b is not in openapi.json", "openapi.json documents DELETE /b, which is not a route"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestOpenAPIReferencesResolve checks that every $ref points at a
// component that exists.
func TestOpenAPIReferencesResolve(t *testing.T) {
	var doc any
	if err := json.Unmarshal(httpapi.OpenAPIDocument(), &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				if resolve(doc, ref) == nil {
					t.Errorf("$ref %q does not resolve", ref)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
}

func resolve(doc any, ref string) any {
	path, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil
	}
	cur := doc
	for _, p := range strings.Split(path, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// TestOpenAPISchemasMatchTypes holds each schema's properties equal to the
// JSON fields of the Go type the API sends or takes, and its required
// list to the fields without omitempty.
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	doc := loadDoc(t)
	types := map[string]any{
		"Error":                    cradle.Error{},
		"Identity":                 httpapi.Identity{},
		"Device":                   cradle.Device{},
		"DeviceCreate":             cradle.DeviceCreate{},
		"DeviceUpdate":             cradle.DeviceUpdate{},
		"DeviceTransition":         cradle.DeviceTransition{},
		"StateChange":              cradle.StateChange{},
		"DeviceList":               httpapi.DeviceList{},
		"TransitionList":           httpapi.TransitionList{},
		"ImportReport":             cradle.ImportReport{},
		"ImportError":              cradle.ImportError{},
		"AuditEntry":               cradle.AuditEntry{},
		"AuditList":                httpapi.AuditList{},
		"AuditCheckpoint":          cradle.AuditCheckpoint{},
		"AuditBreak":               cradle.AuditBreak{},
		"AuditVerification":        cradle.AuditVerification{},
		"Token":                    cradle.Token{},
		"TokenCreate":              cradle.TokenCreate{},
		"TokenCreated":             httpapi.TokenCreated{},
		"TokenList":                httpapi.TokenList{},
		"Certificate":              cradle.Certificate{},
		"CertificateList":          httpapi.CertificateList{},
		"Revocation":               httpapi.Revocation{},
		"CertificateRecord":        httpapi.CertificateRecord{},
		"CommandRequest":           cradle.CommandRequest{},
		"CommandResult":            cradle.CommandResult{},
		"DeviceCommand":            cradle.DeviceCommand{},
		"CommandList":              httpapi.CommandList{},
		"Twin":                     cradle.Twin{},
		"TwinDesired":              cradle.TwinDesired{},
		"TwinReported":             cradle.TwinReported{},
		"TwinStatus":               cradle.TwinStatus{},
		"TwinList":                 httpapi.TwinList{},
		"ConfigGroup":              cradle.ConfigGroup{},
		"ConfigGroupList":          httpapi.ConfigGroupList{},
		"ConfigSchema":             cradle.ConfigSchema{},
		"Release":                  cradle.Release{},
		"ReleaseDelta":             cradle.ReleaseDelta{},
		"ReleaseList":              httpapi.ReleaseList{},
		"ReasonRequest":            httpapi.ReasonRequest{},
		"Decommission":             cradle.Decommission{},
		"DecommissionedCredential": cradle.DecommissionedCredential{},
		"ErasedObject":             cradle.ErasedObject{},
		"Tombstone":                cradle.Tombstone{},
		"DecommissionCertificate":  cradle.DecommissionCertificate{},
		"ImageKey":                 cradle.ImageKey{},
		"ImageKeyCreate":           httpapi.ImageKeyCreate{},
		"ImageKeyList":             httpapi.ImageKeyList{},
		"RepositoryStatus":         cradle.RepositoryStatus{},
		"RepositoryRole":           cradle.RepositoryRole{},
		"RolloutSpec":              cradle.RolloutSpec{},
		"RolloutTarget":            cradle.RolloutTarget{},
		"RolloutPhase":             cradle.RolloutPhase{},
		"FailureThreshold":         cradle.FailureThreshold{},
		"MaintenanceWindow":        cradle.MaintenanceWindow{},
		"Rollout":                  cradle.Rollout{},
		"RolloutStatus":            cradle.RolloutStatus{},
		"PhaseStatus":              cradle.PhaseStatus{},
		"RolloutList":              httpapi.RolloutList{},
		"RolloutDevice":            cradle.RolloutDevice{},
		"RolloutDeviceList":        httpapi.RolloutDeviceList{},
		"ApprovalRequest":          httpapi.ApprovalRequest{},
		"DeviceSoftware":           cradle.DeviceSoftware{},
		"DeviceDownload":           cradle.DeviceDownload{},
		"DownloadList":             httpapi.DownloadList{},
	}
	// Inputs may require less than the type always sends (the server
	// fills defaults); outputs must mark every field it always sends.
	checkSchemas(t, doc, types, func(name string) bool {
		return strings.HasSuffix(name, "Create") || strings.HasSuffix(name, "Update") || name == "DeviceTransition"
	})
}

// checkSchemas holds each schema of doc named in types to its Go type:
// its properties are the type's JSON fields and its required list the
// fields without omitempty, but for the schemas mayRequireLess names
// (nil: none), whose required list is not compared.
func checkSchemas(t *testing.T, doc *openAPIDoc, types map[string]any, mayRequireLess func(name string) bool) {
	t.Helper()
	for name, v := range types {
		s, ok := doc.Components.Schemas[name]
		if !ok {
			t.Errorf("schema %s is missing", name)
			continue
		}
		fields, required := jsonFields(reflect.TypeOf(v))
		var props []string
		for p := range s.Properties {
			props = append(props, p)
		}
		sort.Strings(props)
		if diff := cmp.Diff(fields, props); diff != "" {
			t.Errorf("schema %s properties vs the JSON fields of %T (-go +doc):\n%s", name, v, diff)
		}
		if mayRequireLess != nil && mayRequireLess(name) {
			continue
		}
		if diff := cmp.Diff(required, slices.Sorted(slices.Values(s.Required))); diff != "" {
			t.Errorf("schema %s required vs the fields of %T without omitempty (-go +doc):\n%s", name, v, diff)
		}
	}
}

// jsonFields returns the sorted JSON names of t's fields and those of them
// that are always present (no omitempty or omitzero). The fields of an
// embedded struct without a JSON name are its own, as encoding/json has it.
func jsonFields(t reflect.Type) (all, required []string) {
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if f.Anonymous && f.Type.Kind() == reflect.Struct && tag == "" {
			a, r := jsonFields(f.Type)
			all, required = append(all, a...), append(required, r...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		all = append(all, name)
		if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
			required = append(required, name)
		}
	}
	sort.Strings(all)
	sort.Strings(required)
	return all, required
}
