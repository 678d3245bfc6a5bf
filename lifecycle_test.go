package cradle_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with the current output")

// allRoles is every role an actor can have, token roles and the others.
var allRoles = []cradle.Role{
	cradle.RoleAdmin, cradle.RoleOperator, cradle.RoleFactory, cradle.RoleAuditor,
	cradle.RoleDevice, cradle.RoleSystem,
}

// allStates is every lifecycle state, written out here rather than taken
// from cradle.States so that a state added there without a test shows up.
var allStates = []cradle.State{"factory", "provisioned", "deployed", "suspended", "rma", "eol"}

// wantMoves is the lifecycle as ARCHITECTURE.md and the comments in
// lifecycle.go describe it, written independently of cradle.Transitions:
// from → to → the roles that may make the move. Anything absent is refused.
var wantMoves = map[cradle.State]map[cradle.State][]cradle.Role{
	"factory": {
		"provisioned": {"factory", "admin"}, // the station finishes a unit
		"eol":         {"admin"},            // scrapped on the line
	},
	"provisioned": {
		"deployed": {"device", "admin"},   // the device enrolls; an admin marks a brought-over fleet
		"rma":      {"operator", "admin"}, // faulty before it ever ran
		"eol":      {"admin"},
	},
	"deployed": {
		"suspended": {"operator", "admin", "system"}, // by hand or by a security rule
		"rma":       {"operator", "admin"},
		"eol":       {"admin"},
	},
	"suspended": {
		"deployed": {"operator", "admin"}, // release from quarantine; not by a rule
		"rma":      {"operator", "admin"},
		"eol":      {"admin"},
	},
	"rma": {
		"provisioned": {"factory"}, // only through the factory, which re-provisions
		"eol":         {"admin"},
	},
	"eol": {}, // terminal
}

func wantAllowed(from, to cradle.State, role cradle.Role) bool {
	return slices.Contains(wantMoves[from][to], role)
}

func TestStatesList(t *testing.T) {
	if diff := cmp.Diff(allStates, cradle.States); diff != "" {
		t.Errorf("cradle.States differs from the lifecycle in lifecycle order (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]cradle.State{"factory", "provisioned"}, cradle.InitialStates); diff != "" {
		t.Errorf("cradle.InitialStates (-want +got):\n%s", diff)
	}
}

func TestParseState(t *testing.T) {
	for _, s := range allStates {
		got, err := cradle.ParseState(string(s))
		if err != nil || got != s {
			t.Errorf("ParseState(%q) = %q, %v; want %q, nil", s, got, err, s)
		}
	}
	for _, s := range []string{"", "Factory", " factory", "retired", "deleted", "eol "} {
		_, err := cradle.ParseState(s)
		if code := cradle.ErrorCode(err); code != cradle.EINVALID {
			t.Errorf("ParseState(%q): code %q, want %q (err %v)", s, code, cradle.EINVALID, err)
			continue
		}
		msg := cradle.ErrorMessage(err)
		if !strings.Contains(msg, fmt.Sprintf("%q", s)) || !strings.Contains(msg, "factory, provisioned, deployed, suspended, rma, eol") {
			t.Errorf("ParseState(%q) message %q should quote the input and list every valid state", s, msg)
		}
	}
}

// TestTransitionsTableShape checks the table itself: known states and roles,
// no (from, to) pair listed twice (CanTransition would see only the first),
// no empty role list, and no role that lacks the permission to ask.
func TestTransitionsTableShape(t *testing.T) {
	seen := map[[2]cradle.State]bool{}
	for _, tr := range cradle.Transitions {
		if !slices.Contains(allStates, tr.From) || !slices.Contains(allStates, tr.To) {
			t.Errorf("transition %s → %s names an unknown state", tr.From, tr.To)
		}
		if tr.From == tr.To {
			t.Errorf("transition %s → %s goes nowhere", tr.From, tr.To)
		}
		k := [2]cradle.State{tr.From, tr.To}
		if seen[k] {
			t.Errorf("transition %s → %s is listed twice; CanTransition only sees the first", tr.From, tr.To)
		}
		seen[k] = true
		if len(tr.Roles) == 0 {
			t.Errorf("transition %s → %s has no roles", tr.From, tr.To)
		}
		for _, r := range tr.Roles {
			if !slices.Contains(allRoles, r) {
				t.Errorf("transition %s → %s names unknown role %q", tr.From, tr.To, r)
			}
			if !r.Allowed(cradle.PermDeviceTransition) {
				t.Errorf("transition %s → %s is granted to role %s, which lacks %s and can never ask for it",
					tr.From, tr.To, r, cradle.PermDeviceTransition)
			}
		}
	}
}

// TestLifecycleEveryTriple walks every from × to × role and compares
// CanTransition and CheckTransition with the expected table.
func TestLifecycleEveryTriple(t *testing.T) {
	const serial = "SN-0001"
	for _, from := range allStates {
		for _, to := range allStates {
			for _, role := range allRoles {
				want := wantAllowed(from, to, role)
				if got := cradle.CanTransition(from, to, role); got != want {
					t.Errorf("CanTransition(%s, %s, %s) = %v, want %v", from, to, role, got, want)
				}
				err := cradle.CheckTransition(serial, from, to, role)
				if want {
					if err != nil {
						t.Errorf("CheckTransition(%s → %s as %s) = %v, want nil", from, to, role, err)
					}
					continue
				}
				if err == nil {
					t.Errorf("CheckTransition(%s → %s as %s) = nil, want a refusal", from, to, role)
					continue
				}
				if code := cradle.ErrorCode(err); code != cradle.ECONFLICT {
					t.Errorf("CheckTransition(%s → %s as %s): code %q, want %q", from, to, role, code, cradle.ECONFLICT)
				}
				checkRefusal(t, serial, from, to, role, cradle.ErrorMessage(err))
			}
		}
	}
}

var otherMoveRE = regexp.MustCompile(`([a-z]+) \(by ([a-z, ]+)\)`)

// checkRefusal checks that a refusal message names the device and the
// current state, and lists exactly the moves the expected table allows from
// that state: the role's own, and everyone else's with their roles.
func checkRefusal(t *testing.T, serial string, from, to cradle.State, role cradle.Role, msg string) {
	t.Helper()
	where := fmt.Sprintf("%s → %s as %s: %q", from, to, role, msg)
	if !strings.Contains(msg, `"`+serial+`"`) {
		t.Errorf("%s: message does not name the device", where)
	}
	switch {
	case from == "eol":
		if !strings.Contains(msg, "eol") || !strings.Contains(msg, "final") {
			t.Errorf("%s: a refusal from eol must say that eol is final", where)
		}
		return
	case from == to:
		if !strings.Contains(msg, "already in state "+string(from)) {
			t.Errorf("%s: a move to the current state must say the device is already there", where)
		}
		return
	}
	if !strings.Contains(msg, "from "+string(from)+" to "+string(to)+" as "+string(role)) {
		t.Errorf("%s: message does not name the current state, the target and the role", where)
	}

	// The role's own moves.
	var mine []string
	for _, s := range allStates {
		if wantAllowed(from, s, role) {
			mine = append(mine, string(s))
		}
	}
	ownPrefix := "allowed from " + string(from) + " for role " + string(role) + ": "
	if len(mine) == 0 {
		if !strings.Contains(msg, "role "+string(role)+" may not move it from "+string(from)+" at all") {
			t.Errorf("%s: role has no move from %s, message should say so", where, from)
		}
		if strings.Contains(msg, ownPrefix) {
			t.Errorf("%s: message lists own moves for a role that has none", where)
		}
	} else {
		i := strings.Index(msg, ownPrefix)
		if i < 0 {
			t.Errorf("%s: message does not list the role's own moves %v", where, mine)
		} else {
			list, _, _ := strings.Cut(msg[i+len(ownPrefix):], ";")
			got := strings.Split(list, ", ")
			sort.Strings(got)
			sort.Strings(mine)
			if diff := cmp.Diff(mine, got); diff != "" {
				t.Errorf("%s: own moves (-want +got):\n%s", where, diff)
			}
		}
	}

	// Everyone else's moves, with the roles that may make them.
	wantOthers := map[string][]string{}
	for s, roles := range wantMoves[from] {
		if slices.Contains(roles, role) {
			continue
		}
		var rs []string
		for _, r := range roles {
			rs = append(rs, string(r))
		}
		sort.Strings(rs)
		wantOthers[string(s)] = rs
	}
	gotOthers := map[string][]string{}
	if _, rest, ok := strings.Cut(msg, "; other moves from "+string(from)+": "); ok {
		for _, m := range otherMoveRE.FindAllStringSubmatch(rest, -1) {
			rs := strings.Split(m[2], ", ")
			sort.Strings(rs)
			gotOthers[m[1]] = rs
		}
	}
	if diff := cmp.Diff(wantOthers, gotOthers); diff != "" {
		t.Errorf("%s: other moves (-want +got):\n%s", where, diff)
	}
}

func TestEOLIsTerminal(t *testing.T) {
	for _, to := range allStates {
		for _, role := range allRoles {
			if cradle.CanTransition("eol", to, role) {
				t.Errorf("CanTransition(eol, %s, %s) = true; eol is terminal", to, role)
			}
		}
	}
	for _, tr := range cradle.Transitions {
		if tr.From == cradle.StateEOL {
			t.Errorf("cradle.Transitions has a move out of eol: → %s", tr.To)
		}
	}
}

func TestCheckTransitionUnknownTarget(t *testing.T) {
	for _, to := range []cradle.State{"", "retired", "EOL", "deployed "} {
		for _, role := range allRoles {
			err := cradle.CheckTransition("SN-1", cradle.StateDeployed, to, role)
			if code := cradle.ErrorCode(err); code != cradle.EINVALID {
				t.Errorf("CheckTransition(deployed → %q as %s): code %q, want %q (err %v)", to, role, code, cradle.EINVALID, err)
			}
			if cradle.CanTransition(cradle.StateDeployed, to, role) {
				t.Errorf("CanTransition(deployed, %q, %s) = true", to, role)
			}
		}
	}
}

// TestTransitionRefusalsGolden pins the text of every refusal, so that a
// change of wording is reviewed. Refresh with go test -run
// TestTransitionRefusalsGolden -update.
func TestTransitionRefusalsGolden(t *testing.T) {
	var b strings.Builder
	for _, from := range allStates {
		for _, to := range allStates {
			for _, role := range allRoles {
				if err := cradle.CheckTransition("SN-0001", from, to, role); err != nil {
					fmt.Fprintf(&b, "%s -> %s as %s: %v\n", from, to, role, err)
				}
			}
		}
	}
	for _, to := range []cradle.State{"", "retired"} {
		fmt.Fprintf(&b, "deployed -> %q as admin: %v\n", to, cradle.CheckTransition("SN-0001", cradle.StateDeployed, to, cradle.RoleAdmin))
	}
	golden(t, "lifecycle_refusals.golden", b.String())
}

// golden compares got with testdata/name, or rewrites the file with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got); if the change is intended, rerun with -update:\n%s", path, diff)
	}
}
