package cradle_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// importRule is one dependency rule of ARCHITECTURE.md. Later work adds rows
// to importRules rather than new code.
type importRule struct {
	name     string   // the rule as a person states it
	packages []string // patterns (go list syntax: "x/..." is x and below, "..." matches anything) of the packages it binds
	except   []string // patterns of packages exempt from it
	// transitive checks every package the bound package depends on,
	// directly or not (its Deps), instead of its direct imports.
	transitive bool
	forbid     []string // patterns of forbidden imports
	stdlibOnly bool     // every import must be in the standard library
}

var importRules = []importRule{
	{
		name:       "package cradle imports only the standard library",
		packages:   []string{"cradle"},
		stdlibOnly: true,
	},
	{
		name:       "the agent holds no SQL driver, broker, console, store or operator API",
		packages:   []string{"cradle/cmd/cradle-agent", "cradle/internal/agent/..."},
		transitive: true,
		forbid: []string{
			"modernc.org/sqlite/...", "github.com/jackc/pgx/...", "github.com/lib/pq/...", "github.com/mattn/go-sqlite3/...",
			"github.com/mochi-mqtt/...", "...mqttapi...",
			"cradle/internal/console/...", "cradle/internal/sqlstore/...", "cradle/internal/httpapi/...",
		},
	},
	{
		name:       "only cmd/ wires: no internal package but sqlstore itself uses sqlstore",
		packages:   []string{"cradle/internal/..."},
		except:     []string{"cradle/internal/sqlstore/..."},
		transitive: true,
		forbid:     []string{"cradle/internal/sqlstore/..."},
	},
}

// listedPackage is the part of `go list -json` output the rules read.
type listedPackage struct {
	ImportPath     string
	Name           string
	Dir            string
	Standard       bool
	GoFiles        []string
	CgoFiles       []string
	IgnoredGoFiles []string
	Imports        []string
	Deps           []string
	Module         *struct {
		Path string
		Main bool
	}
	Error *struct{ Err string }
}

func (p *listedPackage) inMainModule() bool { return p.Module != nil && p.Module.Main }

// goList lists every package of the module and everything they depend on.
func goList(t *testing.T) []*listedPackage {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the repository rules need the go tool to list packages, and it is not on PATH: %v", err)
	}
	cmd := exec.Command(goTool, "list", "-e", "-json", "-deps", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -e -json -deps ./...: %v\n%s", err, stderr.Bytes())
	}
	var pkgs []*listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(listedPackage)
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// matchPattern reports whether path matches a go list pattern, in which
// "..." matches any string and a trailing "/..." also matches the empty
// string ("x/..." matches x itself).
func matchPattern(pattern, path string) bool {
	re := strings.ReplaceAll(regexp.QuoteMeta(pattern), `\.\.\.`, `.*`)
	if strings.HasSuffix(re, `/.*`) {
		re = strings.TrimSuffix(re, `/.*`) + `(/.*)?`
	}
	return regexp.MustCompile(`^` + re + `$`).MatchString(path)
}

func matchAny(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return matchPattern(p, path) })
}

// bound reports whether rule r binds package path.
func (r importRule) bound(path string) bool {
	return matchAny(r.packages, path) && !matchAny(r.except, path)
}

// checkImportRules returns one line per broken rule and package, naming the
// chain of imports that leads to the forbidden one.
func checkImportRules(pkgs []*listedPackage, rules []importRule) []string {
	byPath := map[string]*listedPackage{}
	for _, p := range pkgs {
		byPath[p.ImportPath] = p
	}
	var out []string
	for _, r := range rules {
		for _, p := range pkgs {
			if !p.inMainModule() || !r.bound(p.ImportPath) {
				continue
			}
			deps := p.Imports
			if r.transitive {
				deps = p.Deps
			}
			for _, d := range deps {
				bad := matchAny(r.forbid, d)
				if r.stdlibOnly {
					dp, ok := byPath[d]
					bad = bad || !ok || !dp.Standard
				}
				if bad {
					out = append(out, fmt.Sprintf("%s: %s imports %s", r.name, p.ImportPath, importChain(byPath, p.ImportPath, d)))
				}
			}
		}
	}
	return out
}

// importChain returns the shortest chain of imports from one package to
// another, such as "a → b → c".
func importChain(byPath map[string]*listedPackage, from, to string) string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == to {
			var chain []string
			for c := to; c != ""; c = prev[c] {
				chain = append(chain, c)
			}
			slices.Reverse(chain)
			if len(chain) == 2 {
				return to
			}
			return to + " (via " + strings.Join(chain, " → ") + ")"
		}
		if p, ok := byPath[cur]; ok {
			for _, imp := range p.Imports {
				if _, seen := prev[imp]; !seen {
					prev[imp] = cur
					queue = append(queue, imp)
				}
			}
		}
	}
	return to
}

// checkPackageDocs returns one line per package of the main module that does
// not have exactly one package doc comment, or whose doc does not start
// "Package <name>" (commands are exempt from the wording).
func checkPackageDocs(pkgs []*listedPackage) ([]string, error) {
	var out []string
	for _, p := range pkgs {
		if !p.inMainModule() {
			continue
		}
		files := slices.Concat(p.GoFiles, p.CgoFiles, p.IgnoredGoFiles)
		var withDoc []string
		var doc string
		parsed := 0
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.ImportPath, err)
			}
			if f.Name.Name != p.Name {
				continue // e.g. a //go:build ignore generator in package main
			}
			parsed++
			if f.Doc != nil {
				withDoc = append(withDoc, name)
				doc = f.Doc.Text()
			}
		}
		switch {
		case parsed == 0:
			// A directory with only test files is not a package to document.
		case len(withDoc) == 0:
			out = append(out, fmt.Sprintf("%s has no package doc comment; add one (\"// Package %s …\") to one file", p.ImportPath, p.Name))
		case len(withDoc) > 1:
			sort.Strings(withDoc)
			out = append(out, fmt.Sprintf("%s has %d package doc comments (%s); keep one", p.ImportPath, len(withDoc), strings.Join(withDoc, ", ")))
		case p.Name != "main" && !strings.HasPrefix(doc, "Package "+p.Name+" "):
			out = append(out, fmt.Sprintf("%s: package doc in %s should start \"Package %s \"", p.ImportPath, withDoc[0], p.Name))
		}
	}
	return out, nil
}

// TestRepoRules checks the repository-wide rules on whatever packages exist.
func TestRepoRules(t *testing.T) {
	pkgs := goList(t)
	var mine []string
	for _, p := range pkgs {
		if p.inMainModule() {
			mine = append(mine, p.ImportPath)
			if p.Error != nil {
				t.Logf("go list: %s: %s", p.ImportPath, p.Error.Err)
			}
		}
	}
	if !slices.Contains(mine, "cradle") {
		t.Fatalf("go list did not find package cradle among %v; the rules below would check nothing", mine)
	}
	t.Logf("module packages: %s", strings.Join(mine, " "))

	t.Run("package docs", func(t *testing.T) {
		bad, err := checkPackageDocs(pkgs)
		if err != nil {
			t.Fatal(err)
		}
		if len(bad) > 0 {
			t.Errorf("packages without exactly one package doc comment:\n\t%s", strings.Join(bad, "\n\t"))
		}
	})
	t.Run("imports", func(t *testing.T) {
		for _, r := range importRules {
			for _, pat := range r.packages {
				if !slices.ContainsFunc(mine, func(p string) bool { return matchPattern(pat, p) && r.bound(p) }) {
					t.Logf("rule %q: no package matches %s yet", r.name, pat)
				}
			}
		}
		if bad := checkImportRules(pkgs, importRules); len(bad) > 0 {
			t.Errorf("dependency rules broken:\n\t%s", strings.Join(bad, "\n\t"))
		}
	})
}

// fakeGraph returns listed packages for a made-up module: imports maps each
// package to its direct imports; packages starting with "cradle" are in the
// main module, those without a dot in the first element are standard.
func fakeGraph(imports map[string][]string) []*listedPackage {
	var pkgs []*listedPackage
	for path := range imports {
		p := &listedPackage{ImportPath: path, Imports: imports[path]}
		first, _, _ := strings.Cut(path, "/")
		p.Standard = !strings.Contains(first, ".") && first != "cradle"
		if first == "cradle" {
			p.Module = &struct {
				Path string
				Main bool
			}{"cradle", true}
		}
		seen := map[string]bool{}
		var walk func(string)
		walk = func(q string) {
			for _, d := range imports[q] {
				if !seen[d] {
					seen[d] = true
					walk(d)
				}
			}
		}
		walk(path)
		for d := range seen {
			p.Deps = append(p.Deps, d)
		}
		sort.Strings(p.Deps)
		pkgs = append(pkgs, p)
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].ImportPath < pkgs[j].ImportPath })
	return pkgs
}

// TestImportRulesCatchViolations runs the rule checker on a made-up module
// that breaks every rule, so that TestRepoRules cannot pass by checking
// nothing.
func TestImportRulesCatchViolations(t *testing.T) {
	pkgs := fakeGraph(map[string][]string{
		"cradle":                             {"context", "github.com/google/uuid"},
		"cradle/cmd/cradle-agent":            {"cradle", "cradle/internal/agent"},
		"cradle/cmd/cradle":                  {"cradle/internal/sqlstore", "cradle/internal/httpapi", "cradle/internal/mqttapi"},
		"cradle/internal/agent":              {"cradle", "cradle/internal/agent/hw", "net/http"},
		"cradle/internal/agent/hw":           {"github.com/mattn/go-sqlite3"},
		"cradle/internal/ota":                {"cradle/internal/sqlstore/storetest"},
		"cradle/internal/httpapi":            {"cradle"},
		"cradle/internal/mqttapi":            {"github.com/mochi-mqtt/server/v2"},
		"cradle/internal/sqlstore":           {"cradle", "modernc.org/sqlite", "database/sql"},
		"cradle/internal/sqlstore/storetest": {"cradle/internal/sqlstore"},
		"context":                            nil,
		"net/http":                           {"context"},
		"database/sql":                       {"context"},
		"github.com/google/uuid":             nil,
		"github.com/mattn/go-sqlite3":        {"database/sql"},
		"github.com/mochi-mqtt/server/v2":    nil,
		"modernc.org/sqlite":                 {"database/sql", "modernc.org/sqlite/lib"},
		"modernc.org/sqlite/lib":             nil,
	})
	got := checkImportRules(pkgs, importRules)
	want := []string{
		"package cradle imports only the standard library: cradle imports github.com/google/uuid",
		"the agent holds no SQL driver, broker, console, store or operator API: cradle/cmd/cradle-agent imports github.com/mattn/go-sqlite3 (via cradle/cmd/cradle-agent → cradle/internal/agent → cradle/internal/agent/hw → github.com/mattn/go-sqlite3)",
		"the agent holds no SQL driver, broker, console, store or operator API: cradle/internal/agent imports github.com/mattn/go-sqlite3 (via cradle/internal/agent → cradle/internal/agent/hw → github.com/mattn/go-sqlite3)",
		"the agent holds no SQL driver, broker, console, store or operator API: cradle/internal/agent/hw imports github.com/mattn/go-sqlite3",
		"only cmd/ wires: no internal package but sqlstore itself uses sqlstore: cradle/internal/ota imports cradle/internal/sqlstore (via cradle/internal/ota → cradle/internal/sqlstore/storetest → cradle/internal/sqlstore)",
		"only cmd/ wires: no internal package but sqlstore itself uses sqlstore: cradle/internal/ota imports cradle/internal/sqlstore/storetest",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("violations (-want +got):\n%s", diff)
	}

	for _, tt := range []struct {
		pattern, path string
		want          bool
	}{
		{"cradle", "cradle", true},
		{"cradle", "cradle/internal", false},
		{"cradle/internal/sqlstore/...", "cradle/internal/sqlstore", true},
		{"cradle/internal/sqlstore/...", "cradle/internal/sqlstore/storetest", true},
		{"cradle/internal/sqlstore/...", "cradle/internal/sqlstorex", false},
		{"github.com/jackc/pgx/...", "github.com/jackc/pgx/v5/stdlib", true},
		{"...mqttapi...", "cradle/internal/mqttapi/acl", true},
		{"...mqttapi...", "cradle/internal/mqtt", false},
	} {
		if got := matchPattern(tt.pattern, tt.path); got != tt.want {
			t.Errorf("matchPattern(%q, %q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

// TestPackageDocCheckCatchesViolations runs the doc checker on packages
// written to a temporary directory.
func TestPackageDocCheckCatchesViolations(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"good/a.go":          "// Package good does things.\npackage good\n",
		"good/b.go":          "package good\n",
		"none/a.go":          "// Not a doc: a blank line follows.\n\npackage none\n",
		"two/a.go":           "// Package two is documented here.\npackage two\n",
		"two/b.go":           "// Package two is documented here too.\npackage two\n",
		"two/gen.go":         "//go:build ignore\n\n// Command gen is a generator of another package.\npackage main\n",
		"worded/a.go":        "// This package has the wrong opening.\npackage worded\n",
		"cmd/x/main.go":      "// X is a command; commands may word their doc freely.\npackage main\n",
		"testonly/x_test.go": "// Package testonly_test has only tests.\npackage testonly_test\n",
	}
	for name, src := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	main := &struct {
		Path string
		Main bool
	}{"cradle", true}
	pkgs := []*listedPackage{
		{ImportPath: "cradle/good", Name: "good", Dir: filepath.Join(dir, "good"), GoFiles: []string{"a.go", "b.go"}, Module: main},
		{ImportPath: "cradle/none", Name: "none", Dir: filepath.Join(dir, "none"), GoFiles: []string{"a.go"}, Module: main},
		{ImportPath: "cradle/two", Name: "two", Dir: filepath.Join(dir, "two"), GoFiles: []string{"a.go"}, IgnoredGoFiles: []string{"b.go", "gen.go"}, Module: main},
		{ImportPath: "cradle/worded", Name: "worded", Dir: filepath.Join(dir, "worded"), GoFiles: []string{"a.go"}, Module: main},
		{ImportPath: "cradle/cmd/x", Name: "main", Dir: filepath.Join(dir, "cmd/x"), GoFiles: []string{"main.go"}, Module: main},
		{ImportPath: "cradle/testonly", Dir: filepath.Join(dir, "testonly"), IgnoredGoFiles: []string{"x_test.go"}, Module: main},
		{ImportPath: "example.com/other", Name: "other", Dir: filepath.Join(dir, "none"), GoFiles: []string{"a.go"}},
	}
	got, err := checkPackageDocs(pkgs)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`cradle/none has no package doc comment; add one ("// Package none …") to one file`,
		"cradle/two has 2 package doc comments (a.go, b.go); keep one",
		`cradle/worded: package doc in a.go should start "Package worded "`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("doc check (-want +got):\n%s", diff)
	}
}
