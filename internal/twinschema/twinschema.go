// Package twinschema checks configuration documents against a device
// model's JSON Schema, on the server (before a desired document is
// accepted) and on the device (before it is applied), with the same
// library and the same messages on both sides.
//
// Schemas are self-contained: $ref may point inside the schema or to the
// JSON Schema meta-schemas, never to files or URLs, so compiling one reads
// nothing from the machine or the network. A schema without "$schema" is
// read as draft 2020-12. Error messages name the failing place in the
// document as a JSON pointer ("/network/mtu") and what is wrong there.
package twinschema

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"cradle"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Schema is a compiled JSON Schema.
type Schema struct {
	s *jsonschema.Schema
}

const location = "cradle:config-schema.json"

var printer = message.NewPrinter(language.English)

// Compile compiles a schema document. The error is EINVALID and says why.
func Compile(data []byte) (*Schema, error) {
	if len(data) > cradle.MaxSchemaBytes {
		return nil, cradle.Errorf(cradle.ETOOLARGE, "config schema is %d bytes; the limit is %d", len(data), cradle.MaxSchemaBytes)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid config schema: not JSON: %v", err)
	}
	if _, ok := doc.(map[string]any); !ok {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid config schema: it must be a JSON object")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(jsonschema.SchemeURLLoader{}) // no files, no network
	if err := c.AddResource(location, doc); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid config schema: %v", err)
	}
	s, err := c.Compile(location)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "invalid config schema: %s", strings.ReplaceAll(err.Error(), location, "schema"))
	}
	return &Schema{s: s}, nil
}

// Validate checks a parsed configuration (from cradle.ParseConfig). The
// error is EINVALID: "config does not match the schema: at /a/b: …", one
// clause per failing place, at most five.
func (s *Schema) Validate(cfg map[string]any) error {
	err := s.s.Validate(cfg)
	if err == nil {
		return nil
	}
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return cradle.Errorf(cradle.EINVALID, "config does not match the schema: %v", err)
	}
	var leaves []string
	collect(ve, &leaves)
	slices.Sort(leaves)
	leaves = slices.Compact(leaves)
	more := ""
	if len(leaves) > 5 {
		more = fmt.Sprintf("; and %d more", len(leaves)-5)
		leaves = leaves[:5]
	}
	return cradle.Errorf(cradle.EINVALID, "config does not match the schema: %s%s", strings.Join(leaves, "; "), more)
}

// collect gathers the innermost errors: those say what is wrong where.
func collect(e *jsonschema.ValidationError, out *[]string) {
	if len(e.Causes) == 0 {
		*out = append(*out, "at "+pointer(e.InstanceLocation)+": "+e.ErrorKind.LocalizedString(printer))
		return
	}
	for _, c := range e.Causes {
		collect(c, out)
	}
}

func pointer(tokens []string) string {
	if len(tokens) == 0 {
		return "/"
	}
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1"))
	}
	return b.String()
}
