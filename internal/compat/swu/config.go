package swu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"cradle"
)

// Kind is the type of a Value in sw-description.
type Kind int

// The kinds of libconfig values. A group is a set of named settings, a
// list an ordered sequence of any values, an array a sequence of scalars
// of one kind.
const (
	KindString Kind = iota + 1
	KindInt
	KindFloat
	KindBool
	KindGroup
	KindList
	KindArray
)

func (k Kind) String() string {
	switch k {
	case KindString:
		return "string"
	case KindInt:
		return "integer"
	case KindFloat:
		return "float"
	case KindBool:
		return "boolean"
	case KindGroup:
		return "group"
	case KindList:
		return "list"
	case KindArray:
		return "array"
	}
	return "invalid"
}

// Value is one node of a parsed sw-description. Exactly the fields of its
// Kind are set.
type Value struct {
	Kind  Kind
	Str   string
	Int   int64
	Float float64
	Bool  bool
	// Settings holds a group's members in document order.
	Settings []Setting
	// Elems holds the members of a list or array.
	Elems []*Value
}

// Setting is a named member of a group.
type Setting struct {
	Name  string
	Value *Value
}

// Get returns the member name of a group, or nil.
func (v *Value) Get(name string) *Value {
	if v == nil || v.Kind != KindGroup {
		return nil
	}
	for _, s := range v.Settings {
		if s.Name == name {
			return s.Value
		}
	}
	return nil
}

// Limits of what ParseConfig accepts, so that a hostile document cannot
// exhaust the stack or memory.
const (
	maxDepth       = 32
	maxDescription = 1 << 20
)

// ParseConfig parses a sw-description document: libconfig syntax as
// SWUpdate reads it (groups, lists, arrays, strings with escapes and
// adjacent-literal joining, decimal and hex integers, floats, booleans,
// comments in #, // and /* */ style), or its JSON form when the first
// non-blank character is '{'. It is strict: duplicate names in a group,
// arrays mixing kinds, @include directives and anything left over are
// errors (code EINVALID) that name the line.
func ParseConfig(doc []byte) (*Value, error) {
	if len(doc) > maxDescription {
		return nil, cradle.Errorf(cradle.ETOOLARGE, "swu: sw-description is %d bytes, more than the %d allowed", len(doc), maxDescription)
	}
	if t := bytes.TrimLeft(doc, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return parseJSON(doc)
	}
	p := &parser{s: doc, line: 1}
	root := &Value{Kind: KindGroup}
	if err := p.settings(root, 0, 0); err != nil {
		return nil, err
	}
	return root, nil
}

type parser struct {
	s    []byte
	i    int
	line int
}

func (p *parser) errf(format string, args ...any) error {
	return cradle.Errorf(cradle.EINVALID, "swu: sw-description line %d: %s", p.line, fmt.Sprintf(format, args...))
}

// skip passes blanks and comments.
func (p *parser) skip() error {
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '\n':
			p.line++
			p.i++
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			p.i++
		case c == '#' || (c == '/' && p.peek(1) == '/'):
			for p.i < len(p.s) && p.s[p.i] != '\n' {
				p.i++
			}
		case c == '/' && p.peek(1) == '*':
			end := bytes.Index(p.s[p.i+2:], []byte("*/"))
			if end < 0 {
				return p.errf("comment /* is never closed")
			}
			p.line += bytes.Count(p.s[p.i:p.i+2+end], []byte("\n"))
			p.i += end + 4
		default:
			return nil
		}
	}
	return nil
}

func (p *parser) peek(n int) byte {
	if p.i+n < len(p.s) {
		return p.s[p.i+n]
	}
	return 0
}

func isNameStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '*'
}

func isNameChar(c byte) bool {
	return isNameStart(c) || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// settings parses settings into g until close (0 for the end of input).
func (p *parser) settings(g *Value, close byte, depth int) error {
	seen := map[string]bool{}
	for {
		if err := p.skip(); err != nil {
			return err
		}
		if p.i == len(p.s) {
			if close != 0 {
				return p.errf("group is never closed: want %q", close)
			}
			return nil
		}
		c := p.s[p.i]
		if c == close && close != 0 {
			p.i++
			return nil
		}
		if c == '@' {
			return p.errf("@include and other directives are not allowed in sw-description")
		}
		if !isNameStart(c) {
			return p.errf("want a setting name, found %q", c)
		}
		start := p.i
		for p.i < len(p.s) && isNameChar(p.s[p.i]) {
			p.i++
		}
		name := string(p.s[start:p.i])
		if seen[name] {
			return p.errf("setting %q appears twice in one group", name)
		}
		seen[name] = true
		if err := p.skip(); err != nil {
			return err
		}
		if p.i == len(p.s) || (p.s[p.i] != '=' && p.s[p.i] != ':') {
			return p.errf("want '=' or ':' after %q", name)
		}
		p.i++
		v, err := p.value(depth + 1)
		if err != nil {
			return err
		}
		g.Settings = append(g.Settings, Setting{Name: name, Value: v})
		if err := p.skip(); err != nil {
			return err
		}
		if p.i < len(p.s) && (p.s[p.i] == ';' || p.s[p.i] == ',') {
			p.i++
		}
	}
}

func (p *parser) value(depth int) (*Value, error) {
	if depth > maxDepth {
		return nil, p.errf("nested more than %d levels deep", maxDepth)
	}
	if err := p.skip(); err != nil {
		return nil, err
	}
	if p.i == len(p.s) {
		return nil, p.errf("want a value, found the end of the document")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		g := &Value{Kind: KindGroup}
		return g, p.settings(g, '}', depth)
	case c == '(' || c == '[':
		p.i++
		return p.sequence(c, depth)
	case c == '"':
		return p.str()
	default:
		return p.scalar()
	}
}

// sequence parses a list "( … )" or an array "[ … ]"; a trailing comma is
// allowed, as libconfig allows it.
func (p *parser) sequence(open byte, depth int) (*Value, error) {
	v := &Value{Kind: KindList}
	close := byte(')')
	if open == '[' {
		v.Kind, close = KindArray, ']'
	}
	for {
		if err := p.skip(); err != nil {
			return nil, err
		}
		if p.i == len(p.s) {
			return nil, p.errf("%s is never closed: want %q", v.Kind, close)
		}
		if p.s[p.i] == close {
			p.i++
			return v, nil
		}
		e, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if v.Kind == KindArray {
			if e.Kind == KindGroup || e.Kind == KindList || e.Kind == KindArray {
				return nil, p.errf("an array holds only scalars, found a %s", e.Kind)
			}
			if len(v.Elems) > 0 && v.Elems[0].Kind != e.Kind {
				return nil, p.errf("array mixes %s and %s", v.Elems[0].Kind, e.Kind)
			}
		}
		v.Elems = append(v.Elems, e)
		if err := p.skip(); err != nil {
			return nil, err
		}
		if p.i < len(p.s) && p.s[p.i] == ',' {
			p.i++
		} else if p.i < len(p.s) && p.s[p.i] != close {
			return nil, p.errf("want ',' or %q in a %s, found %q", close, v.Kind, p.s[p.i])
		}
	}
}

// str parses one or more adjacent string literals.
func (p *parser) str() (*Value, error) {
	var b strings.Builder
	for {
		p.i++ // opening quote
		for {
			if p.i == len(p.s) {
				return nil, p.errf("string is never closed")
			}
			c := p.s[p.i]
			if c == '"' {
				p.i++
				break
			}
			if c == '\n' {
				return nil, p.errf("newline inside a string")
			}
			if c != '\\' {
				b.WriteByte(c)
				p.i++
				continue
			}
			p.i++
			switch e := p.peek(0); e {
			case '\\', '"':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'f':
				b.WriteByte('\f')
			case 'x':
				if p.i+2 >= len(p.s) {
					return nil, p.errf("\\x needs two hex digits")
				}
				n, err := strconv.ParseUint(string(p.s[p.i+1:p.i+3]), 16, 8)
				if err != nil {
					return nil, p.errf("\\x needs two hex digits")
				}
				b.WriteByte(byte(n))
				p.i += 2
			default:
				return nil, p.errf("unknown escape \\%c in a string", e)
			}
			p.i++
		}
		if err := p.skip(); err != nil {
			return nil, err
		}
		if p.i == len(p.s) || p.s[p.i] != '"' {
			return &Value{Kind: KindString, Str: b.String()}, nil
		}
	}
}

func (p *parser) scalar() (*Value, error) {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '+' || c == '-' || c == '.' || c == '_' {
			p.i++
			continue
		}
		break
	}
	tok := string(p.s[start:p.i])
	if tok == "" {
		return nil, p.errf("want a value, found %q", p.s[start])
	}
	switch strings.ToLower(tok) {
	case "true":
		return &Value{Kind: KindBool, Bool: true}, nil
	case "false":
		return &Value{Kind: KindBool}, nil
	}
	if n, ok := parseInt(tok); ok {
		return &Value{Kind: KindInt, Int: n}, nil
	}
	if strings.ContainsAny(tok, "0123456789") && !strings.ContainsAny(tok, "xX_") {
		if f, err := strconv.ParseFloat(tok, 64); err == nil {
			return &Value{Kind: KindFloat, Float: f}, nil
		}
	}
	return nil, p.errf("%q is not a string, number or boolean (strings need double quotes)", tok)
}

// parseJSON reads the JSON form of sw-description: objects are groups,
// arrays of objects or arrays are lists, arrays of scalars are arrays.
func parseJSON(doc []byte) (*Value, error) {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	v, err := jsonValue(d, 0)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): data after the top-level object")
	}
	return v, nil
}

func jsonErr(err error) error {
	var ce *cradle.Error
	if errors.As(err, &ce) {
		return err
	}
	return cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): %v", err)
}

func jsonValue(d *json.Decoder, depth int) (*Value, error) {
	if depth > maxDepth {
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): nested more than %d levels deep", maxDepth)
	}
	tok, err := d.Token()
	if err != nil {
		return nil, jsonErr(err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			g := &Value{Kind: KindGroup}
			seen := map[string]bool{}
			for d.More() {
				k, err := d.Token()
				if err != nil {
					return nil, jsonErr(err)
				}
				name := k.(string)
				if name == "" || !isNameStart(name[0]) || strings.IndexFunc(name, func(r rune) bool { return r > 0x7f || !isNameChar(byte(r)) }) >= 0 {
					return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): %q is not a valid setting name", name)
				}
				if seen[name] {
					return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): setting %q appears twice in one object", name)
				}
				seen[name] = true
				v, err := jsonValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				g.Settings = append(g.Settings, Setting{Name: name, Value: v})
			}
			if _, err := d.Token(); err != nil {
				return nil, jsonErr(err)
			}
			return g, nil
		case '[':
			v := &Value{Kind: KindArray}
			for d.More() {
				e, err := jsonValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				if e.Kind == KindGroup || e.Kind == KindList || e.Kind == KindArray {
					v.Kind = KindList
				}
				v.Elems = append(v.Elems, e)
			}
			if _, err := d.Token(); err != nil {
				return nil, jsonErr(err)
			}
			if v.Kind == KindArray {
				for _, e := range v.Elems[min(1, len(v.Elems)):] {
					if e.Kind != v.Elems[0].Kind {
						v.Kind = KindList
					}
				}
			}
			return v, nil
		}
	case string:
		return &Value{Kind: KindString, Str: t}, nil
	case bool:
		return &Value{Kind: KindBool, Bool: t}, nil
	case json.Number:
		if n, err := t.Int64(); err == nil {
			return &Value{Kind: KindInt, Int: n}, nil
		}
		f, err := t.Float64()
		if err != nil {
			return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): number %s out of range", t)
		}
		return &Value{Kind: KindFloat, Float: f}, nil
	case nil:
		return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): null is not a libconfig value")
	}
	return nil, cradle.Errorf(cradle.EINVALID, "swu: sw-description (JSON): unexpected %v", tok)
}

// parseInt reads a libconfig integer: decimal or 0x hex, an optional sign,
// an optional L (64-bit) suffix.
func parseInt(tok string) (int64, bool) {
	t := strings.TrimSuffix(strings.TrimSuffix(tok, "L"), "L")
	neg := false
	if t != "" && (t[0] == '-' || t[0] == '+') {
		neg, t = t[0] == '-', t[1:]
	}
	base := 10
	if len(t) > 2 && (t[:2] == "0x" || t[:2] == "0X") {
		base, t = 16, t[2:]
	}
	if t == "" || t[0] == '+' || t[0] == '-' {
		return 0, false
	}
	u, err := strconv.ParseUint(t, base, 64)
	if err != nil {
		return 0, false
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if base == 10 && u > 1<<63-1 {
		return 0, false
	}
	return int64(u), true
}
