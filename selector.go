package cradle

import (
	"slices"
	"strings"
)

// LabelSelector selects devices by their labels, in the syntax Kubernetes
// made familiar: requirements separated by commas, all of which must hold.
//
//	env=prod          key equals value ("==" works too)
//	env!=prod         key is absent or has another value
//	env in (a,b)      key has one of the values
//	env notin (a,b)   key is absent or has none of the values
//	env               key is present
//	!env              key is absent
type LabelSelector struct {
	Requirements []LabelRequirement
}

// Selector operators.
const (
	OpEquals    = "="
	OpNotEquals = "!="
	OpIn        = "in"
	OpNotIn     = "notin"
	OpExists    = "exists"
	OpNotExists = "!exists"
)

// LabelRequirement is one clause of a LabelSelector.
type LabelRequirement struct {
	Key    string
	Op     string   // one of the Op constants
	Values []string // one for = and !=, one or more for in and notin, none otherwise
}

// MaxSelectorLen bounds the text of a label selector.
const MaxSelectorLen = 4096

// ParseLabelSelector parses a selector. The error is EINVALID and points at
// the offending clause.
func ParseLabelSelector(s string) (*LabelSelector, error) {
	if len(s) > MaxSelectorLen {
		return nil, Errorf(EINVALID, "label selector longer than %d characters", MaxSelectorLen)
	}
	sel := &LabelSelector{}
	for _, clause := range splitClauses(s) {
		clause = strings.TrimSpace(clause)
		if clause == "" {
			return nil, Errorf(EINVALID, "invalid label selector %q: empty clause", truncate(s, 200))
		}
		req, err := parseRequirement(clause)
		if err != nil {
			return nil, err
		}
		sel.Requirements = append(sel.Requirements, req)
	}
	if len(sel.Requirements) == 0 {
		return nil, Errorf(EINVALID, "empty label selector")
	}
	// The canonical form can be longer than the input ("k in(v)" becomes
	// "k in (v)"). Refuse what could not be parsed back from String().
	if n := len(sel.String()); n > MaxSelectorLen {
		return nil, Errorf(EINVALID, "label selector longer than %d characters when written canonically (%d)", MaxSelectorLen, n)
	}
	return sel, nil
}

// splitClauses splits on commas outside parentheses.
func splitClauses(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

func parseRequirement(c string) (LabelRequirement, error) {
	bad := func(why string) (LabelRequirement, error) {
		return LabelRequirement{}, Errorf(EINVALID, "invalid label selector clause %q: %s", truncate(c, 200), why)
	}
	if strings.HasPrefix(c, "!") {
		k := strings.TrimSpace(c[1:])
		if err := ValidateLabelKey(k); err != nil {
			return bad("bad key after '!'")
		}
		return LabelRequirement{Key: k, Op: OpNotExists}, nil
	}
	if i := strings.Index(c, "!="); i >= 0 {
		return keyValue(c, c[:i], c[i+2:], OpNotEquals)
	}
	if i := strings.Index(c, "=="); i >= 0 {
		return keyValue(c, c[:i], c[i+2:], OpEquals)
	}
	if i := strings.Index(c, "="); i >= 0 {
		return keyValue(c, c[:i], c[i+1:], OpEquals)
	}
	fields := strings.Fields(c)
	if len(fields) == 1 {
		if err := ValidateLabelKey(fields[0]); err != nil {
			return bad("not a label key")
		}
		return LabelRequirement{Key: fields[0], Op: OpExists}, nil
	}
	// key in (v1, v2) / key notin (v1, v2)
	key, rest, _ := strings.Cut(c, " ")
	rest = strings.TrimSpace(rest)
	op, list, _ := strings.Cut(rest, "(")
	op = strings.TrimSpace(op)
	if op != OpIn && op != OpNotIn {
		return bad("expected =, !=, in or notin")
	}
	if err := ValidateLabelKey(key); err != nil {
		return bad("bad key")
	}
	list = strings.TrimSpace(list)
	if !strings.HasSuffix(list, ")") {
		return bad("missing ')'")
	}
	var values []string
	for _, v := range strings.Split(strings.TrimSuffix(list, ")"), ",") {
		v = strings.TrimSpace(v)
		if err := checkSelectorValue(v); err != nil {
			return bad(ErrorMessage(err))
		}
		if !slices.Contains(values, v) {
			values = append(values, v)
		}
	}
	return LabelRequirement{Key: key, Op: op, Values: values}, nil
}

func keyValue(c, k, v, op string) (LabelRequirement, error) {
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	if err := ValidateLabelKey(k); err != nil {
		return LabelRequirement{}, Errorf(EINVALID, "invalid label selector clause %q: bad key", truncate(c, 200))
	}
	if err := checkSelectorValue(v); err != nil {
		return LabelRequirement{}, Errorf(EINVALID, "invalid label selector clause %q: %s", truncate(c, 200), ErrorMessage(err))
	}
	return LabelRequirement{Key: k, Op: op, Values: []string{v}}, nil
}

func checkSelectorValue(v string) error {
	if len(v) > MaxLabelValueLen || !isPrintable(v) || strings.ContainsAny(v, "(),=!") {
		return Errorf(EINVALID, "bad value %q", truncate(v, 80))
	}
	return nil
}

// Matches reports whether labels satisfy every requirement.
func (s *LabelSelector) Matches(labels map[string]string) bool {
	for _, r := range s.Requirements {
		v, ok := labels[r.Key]
		var m bool
		switch r.Op {
		case OpEquals:
			m = ok && v == r.Values[0]
		case OpNotEquals:
			m = !ok || v != r.Values[0]
		case OpIn:
			m = ok && slices.Contains(r.Values, v)
		case OpNotIn:
			m = !ok || !slices.Contains(r.Values, v)
		case OpExists:
			m = ok
		case OpNotExists:
			m = !ok
		}
		if !m {
			return false
		}
	}
	return true
}

// String returns the selector in canonical syntax.
func (s *LabelSelector) String() string {
	parts := make([]string, len(s.Requirements))
	for i, r := range s.Requirements {
		switch r.Op {
		case OpEquals, OpNotEquals:
			parts[i] = r.Key + r.Op + r.Values[0]
		case OpIn, OpNotIn:
			parts[i] = r.Key + " " + r.Op + " (" + strings.Join(r.Values, ",") + ")"
		case OpExists:
			parts[i] = r.Key
		case OpNotExists:
			parts[i] = "!" + r.Key
		}
	}
	return strings.Join(parts, ",")
}
