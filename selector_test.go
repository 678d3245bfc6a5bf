package cradle_test

import (
	"strings"
	"testing"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

type req = cradle.LabelRequirement

func TestParseLabelSelector(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []req
		str  string // canonical String(); "" means the same as in
	}{
		{"equals", "env=prod", []req{{Key: "env", Op: "=", Values: []string{"prod"}}}, ""},
		{"double equals", "env==prod", []req{{Key: "env", Op: "=", Values: []string{"prod"}}}, "env=prod"},
		{"not equals", "env!=prod", []req{{Key: "env", Op: "!=", Values: []string{"prod"}}}, ""},
		{"spaces around operator", " env = prod ", []req{{Key: "env", Op: "=", Values: []string{"prod"}}}, "env=prod"},
		{"empty value", "env=", []req{{Key: "env", Op: "=", Values: []string{""}}}, ""},
		{"value with a space", "site=berlin east", []req{{Key: "site", Op: "=", Values: []string{"berlin east"}}}, ""},
		{"unicode value", "city=Zürich", []req{{Key: "city", Op: "=", Values: []string{"Zürich"}}}, ""},
		{"key with prefix", "cradle.io/ring=canary", []req{{Key: "cradle.io/ring", Op: "=", Values: []string{"canary"}}}, ""},
		{"in", "env in (a,b)", []req{{Key: "env", Op: "in", Values: []string{"a", "b"}}}, ""},
		{"in with spaces", "env in ( a , b )", []req{{Key: "env", Op: "in", Values: []string{"a", "b"}}}, "env in (a,b)"},
		{"in without space before list", "env in(a)", []req{{Key: "env", Op: "in", Values: []string{"a"}}}, "env in (a)"},
		{"in drops duplicates", "env in (a,b,a)", []req{{Key: "env", Op: "in", Values: []string{"a", "b"}}}, "env in (a,b)"},
		{"notin", "env notin (dev)", []req{{Key: "env", Op: "notin", Values: []string{"dev"}}}, ""},
		{"exists", "gpu", []req{{Key: "gpu", Op: "exists"}}, ""},
		{"not exists", "!gpu", []req{{Key: "gpu", Op: "!exists"}}, ""},
		{"not exists with space", "! gpu", []req{{Key: "gpu", Op: "!exists"}}, "!gpu"},
		{"several", "env=prod, site in (ber,muc),!legacy,gpu",
			[]req{
				{Key: "env", Op: "=", Values: []string{"prod"}},
				{Key: "site", Op: "in", Values: []string{"ber", "muc"}},
				{Key: "legacy", Op: "!exists"},
				{Key: "gpu", Op: "exists"},
			}, "env=prod,site in (ber,muc),!legacy,gpu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := cradle.ParseLabelSelector(tt.in)
			if err != nil {
				t.Fatalf("ParseLabelSelector(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(&cradle.LabelSelector{Requirements: tt.want}, sel); diff != "" {
				t.Errorf("ParseLabelSelector(%q) (-want +got):\n%s", tt.in, diff)
			}
			wantStr := tt.str
			if wantStr == "" {
				wantStr = tt.in
			}
			if got := sel.String(); got != wantStr {
				t.Errorf("String() = %q, want %q", got, wantStr)
			}
			again, err := cradle.ParseLabelSelector(sel.String())
			if err != nil {
				t.Fatalf("String() %q does not parse: %v", sel.String(), err)
			}
			if diff := cmp.Diff(sel, again); diff != "" {
				t.Errorf("Parse(String()) differs (-first +second):\n%s", diff)
			}
		})
	}
}

func TestParseLabelSelectorErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // the whole message
	}{
		{"empty", "", `invalid label selector "": empty clause`},
		{"blank", "   ", `invalid label selector "   ": empty clause`},
		{"trailing comma", "env=prod,", `invalid label selector "env=prod,": empty clause`},
		{"double comma", "a,,b", `invalid label selector "a,,b": empty clause`},
		{"bad key", "-env=prod", `invalid label selector clause "-env=prod": bad key`},
		{"missing key", "=prod", `invalid label selector clause "=prod": bad key`},
		{"value with =", "a=b=c", `invalid label selector clause "a=b=c": bad value "b=c"`},
		{"value with !", "a=!b", `invalid label selector clause "a=!b": bad value "!b"`},
		{"value with a tab", "a=b\tc", "invalid label selector clause \"a=b\\tc\": bad value \"b\\tc\""},
		{"invalid UTF-8 value", "a=\xff", `invalid label selector clause "a=\xff": bad value "\xff"`},
		{"bad key after !", "!-x", `invalid label selector clause "!-x": bad key after '!'`},
		{"! with =", "!a=b", `invalid label selector clause "!a=b": bad key after '!'`},
		{"not a key", "a.", `invalid label selector clause "a.": not a label key`},
		{"unknown operator", "env like (a)", `invalid label selector clause "env like (a)": expected =, !=, in or notin`},
		{"two words", "env prod", `invalid label selector clause "env prod": expected =, !=, in or notin`},
		{"tab before in", "env\tin (a)", "invalid label selector clause \"env\\tin (a)\": expected =, !=, in or notin"},
		{"missing )", "env in (a,b", `invalid label selector clause "env in (a,b": missing ')'`},
		{"text after )", "env in (a) x", `invalid label selector clause "env in (a) x": missing ')'`},
		{"nested parentheses", "env in ((a))", `invalid label selector clause "env in ((a))": bad value "(a)"`},
		{"unbalanced (", "(a,b", `invalid label selector clause "(a,b": not a label key`},
		{"bad key before in", "-e in (a)", `invalid label selector clause "-e in (a)": bad key`},
		{"too long", strings.Repeat("a", cradle.MaxSelectorLen+1), "label selector longer than 4096 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := cradle.ParseLabelSelector(tt.in)
			if err == nil {
				t.Fatalf("ParseLabelSelector(%q) = %v, want an error", tt.in, sel)
			}
			if code := cradle.ErrorCode(err); code != cradle.EINVALID {
				t.Errorf("code %q, want %q", code, cradle.EINVALID)
			}
			if msg := cradle.ErrorMessage(err); msg != tt.want {
				t.Errorf("message:\n got %s\nwant %s", msg, tt.want)
			}
		})
	}
	t.Run("long clause is cut in the message", func(t *testing.T) {
		_, err := cradle.ParseLabelSelector("env=" + strings.Repeat("(", 1000))
		if msg := cradle.ErrorMessage(err); len(msg) > 600 {
			t.Errorf("message is %d bytes long; the clause should be shortened", len(msg))
		}
	})
	t.Run("at the length limit", func(t *testing.T) {
		s := "k=" + strings.Repeat("v", cradle.MaxLabelValueLen)
		s += strings.Repeat(",k", (cradle.MaxSelectorLen-len(s))/2)
		if len(s) != cradle.MaxSelectorLen {
			t.Fatalf("test selector is %d long", len(s))
		}
		if _, err := cradle.ParseLabelSelector(s); err != nil {
			t.Errorf("a selector of exactly %d characters: %v", cradle.MaxSelectorLen, err)
		}
	})
}

func TestLabelSelectorMatches(t *testing.T) {
	labels := map[string]string{"env": "prod", "site": "ber", "empty": ""}
	tests := []struct {
		sel  string
		want bool
	}{
		{"env=prod", true},
		{"env=dev", false},
		{"missing=prod", false},
		{"empty=", true},
		{"missing=", false},
		{"env!=dev", true},
		{"env!=prod", false},
		{"missing!=prod", true},
		{"env in (dev,prod)", true},
		{"env in (dev,test)", false},
		{"missing in (dev,prod)", false},
		{"empty in (,x)", true},
		{"env notin (dev,test)", true},
		{"env notin (dev,prod)", false},
		{"missing notin (dev)", true},
		{"env", true},
		{"missing", false},
		{"empty", true},
		{"!missing", true},
		{"!env", false},
		{"!empty", false},
		{"env=prod,site=ber", true},
		{"env=prod,site=muc", false},
		{"env=PROD", false}, // values are case sensitive
		{"ENV=prod", false}, // and so are keys
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			sel, err := cradle.ParseLabelSelector(tt.sel)
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.Matches(labels); got != tt.want {
				t.Errorf("%q.Matches(%v) = %v, want %v", tt.sel, labels, got, tt.want)
			}
		})
	}
	t.Run("no labels", func(t *testing.T) {
		for sel, want := range map[string]bool{"!env": true, "env!=x": true, "env notin (x)": true, "env": false, "env=x": false, "env in (x)": false} {
			s, err := cradle.ParseLabelSelector(sel)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Matches(nil); got != want {
				t.Errorf("%q.Matches(nil) = %v, want %v", sel, got, want)
			}
		}
	})
}

// TestLabelSelectorCanonicalLength checks that a selector accepted within
// MaxSelectorLen still parses from its canonical form, which may be longer
// than the input ("k in(v)" is written "k in (v)").
func TestLabelSelectorCanonicalLength(t *testing.T) {
	in := strings.TrimSuffix(strings.Repeat("a in(b),", cradle.MaxSelectorLen/len("a in(b),")), ",")
	sel, err := cradle.ParseLabelSelector(in)
	if err != nil {
		// Refusing such an input is fine too; what is not fine is accepting
		// a selector whose canonical form is then refused.
		return
	}
	if _, err := cradle.ParseLabelSelector(sel.String()); err != nil {
		t.Errorf("input of %d characters was accepted but its canonical form (%d characters) is refused: %v",
			len(in), len(sel.String()), err)
	}
}

func FuzzParseLabelSelector(f *testing.F) {
	for _, s := range []string{
		"env=prod", "env==prod", "env!=prod", "env in (a,b)", "env notin (a, b)", "gpu", "!gpu",
		"env=prod,site in (ber,muc),!legacy", "env=", "env in ()", "env in (,)", "a in(b)", "site=berlin east",
		"", ",", "a,,b", "a=b=c", "!a=b", "(a,b", ")a,b(", "env in ((a))", "env in (a", "a=\xff", "k=\u00a0v\u00a0",
		"cradle.io/ring=canary", "a b c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := cradle.ParseLabelSelector(s)
		if err != nil {
			if code := cradle.ErrorCode(err); code != cradle.EINVALID {
				t.Fatalf("ParseLabelSelector(%.200q): code %q, want %q", s, code, cradle.EINVALID)
			}
			return
		}
		if len(sel.Requirements) == 0 {
			t.Fatalf("ParseLabelSelector(%.200q) returned a selector with no requirements", s)
		}
		for _, r := range sel.Requirements {
			if err := cradle.ValidateLabelKey(r.Key); err != nil {
				t.Fatalf("ParseLabelSelector(%.200q) returned a bad key: %v", s, err)
			}
			n := len(r.Values)
			switch r.Op {
			case cradle.OpEquals, cradle.OpNotEquals:
				if n != 1 {
					t.Fatalf("ParseLabelSelector(%.200q): %s with %d values", s, r.Op, n)
				}
			case cradle.OpIn, cradle.OpNotIn:
				if n == 0 {
					t.Fatalf("ParseLabelSelector(%.200q): %s with no values", s, r.Op)
				}
			case cradle.OpExists, cradle.OpNotExists:
				if n != 0 {
					t.Fatalf("ParseLabelSelector(%.200q): %s with values", s, r.Op)
				}
			default:
				t.Fatalf("ParseLabelSelector(%.200q): unknown operator %q", s, r.Op)
			}
		}
		canon := sel.String()
		again, err := cradle.ParseLabelSelector(canon)
		if err != nil {
			t.Fatalf("ParseLabelSelector(%.200q) = %.200q, which does not parse: %v", s, canon, err)
		}
		if diff := cmp.Diff(sel, again); diff != "" {
			t.Fatalf("ParseLabelSelector(%.200q) = %.200q, which parses differently (-first +second):\n%s", s, canon, diff)
		}
		if again.String() != canon {
			t.Fatalf("String() is not stable: %.200q then %.200q", canon, again.String())
		}
		sel.Matches(map[string]string{"env": "prod", "a": "", "k": "v"})
	})
}
