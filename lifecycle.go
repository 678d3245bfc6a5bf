package cradle

import (
	"slices"
	"sort"
	"strings"
	"time"
)

// State is a device's lifecycle state.
type State string

// Lifecycle states, in the order a device meets them.
const (
	StateFactory     State = "factory"     // a unit on the line: serial reserved, no identity yet
	StateProvisioned State = "provisioned" // identity injected, fuses set, first firmware written
	StateDeployed    State = "deployed"    // enrolled with the operational PKI, in service
	StateSuspended   State = "suspended"   // quarantined: remediation only
	StateRMA         State = "rma"         // returned for repair: operational credentials revoked
	StateEOL         State = "eol"         // decommissioned (only through DecommissionService); terminal
)

// States lists every state in lifecycle order.
var States = []State{StateFactory, StateProvisioned, StateDeployed, StateSuspended, StateRMA, StateEOL}

// InitialStates are the states a device may be created or imported in:
// a unit starting on the line, or an already provisioned unit whose factory
// records are brought over from elsewhere.
var InitialStates = []State{StateFactory, StateProvisioned}

// ParseState returns the state named s, or EINVALID listing the valid ones.
func ParseState(s string) (State, error) {
	st := State(s)
	if slices.Contains(States, st) {
		return st, nil
	}
	return "", Errorf(EINVALID, "unknown lifecycle state %q; valid states: %s", s, joinStates(States))
}

// Transition is one allowed move of the lifecycle: a device in From may be
// moved to To by an actor holding one of Roles.
type Transition struct {
	From  State
	To    State
	Roles []Role
}

// Transitions is the lifecycle table. Anything not listed is refused. It is
// the single source of truth; the tests walk every (from, to, role) triple.
var Transitions = []Transition{
	// The factory station finishes a unit.
	{StateFactory, StateProvisioned, []Role{RoleFactory, RoleAdmin}},
	// Units scrapped on the line, or before deployment. Every move to
	// eol goes through decommissioning (DecommissionService), which
	// revokes the device's credentials and sends the signed wipe; the
	// plain TransitionDevice refuses it.
	{StateFactory, StateEOL, []Role{RoleAdmin}},
	// The device enrolls itself with its IDevID; an admin may mark a
	// brought-over fleet as deployed.
	{StateProvisioned, StateDeployed, []Role{RoleDevice, RoleAdmin}},
	// A unit found faulty before it ever ran goes back for repair.
	{StateProvisioned, StateRMA, []Role{RoleOperator, RoleAdmin}},
	{StateProvisioned, StateEOL, []Role{RoleAdmin}},
	// Quarantine, by hand or by a security rule, and release from it.
	{StateDeployed, StateSuspended, []Role{RoleOperator, RoleAdmin, RoleSystem}},
	{StateSuspended, StateDeployed, []Role{RoleOperator, RoleAdmin}},
	// Return for repair.
	{StateDeployed, StateRMA, []Role{RoleOperator, RoleAdmin}},
	{StateSuspended, StateRMA, []Role{RoleOperator, RoleAdmin}},
	// An RMA unit leaves only through the factory, which re-provisions it.
	{StateRMA, StateProvisioned, []Role{RoleFactory}},
	// Decommissioning (DecommissionService only, as above).
	{StateDeployed, StateEOL, []Role{RoleAdmin}},
	{StateSuspended, StateEOL, []Role{RoleAdmin}},
	{StateRMA, StateEOL, []Role{RoleAdmin}},
}

// CanTransition reports whether role may move a device from one state to
// another.
func CanTransition(from, to State, role Role) bool {
	for _, t := range Transitions {
		if t.From == from && t.To == to {
			return slices.Contains(t.Roles, role)
		}
	}
	return false
}

// CheckTransition returns nil when role may move a device from one state to
// another. Otherwise it returns an ECONFLICT error that names the current
// state and the moves that are allowed from it (those of this role first).
func CheckTransition(serial string, from, to State, role Role) error {
	if _, err := ParseState(string(to)); err != nil {
		return err
	}
	if CanTransition(from, to, role) {
		return nil
	}
	if from == StateEOL {
		return Errorf(ECONFLICT, "device %q is in state eol, which is final: no transition leaves it", serial)
	}
	if from == to {
		return Errorf(ECONFLICT, "device %q is already in state %s", serial, from)
	}
	var mine []State
	var others []string
	for _, t := range Transitions {
		if t.From != from {
			continue
		}
		if slices.Contains(t.Roles, role) {
			mine = append(mine, t.To)
		} else {
			rs := make([]string, len(t.Roles))
			for i, r := range t.Roles {
				rs[i] = string(r)
			}
			others = append(others, string(t.To)+" (by "+strings.Join(rs, ", ")+")")
		}
	}
	msg := "cannot move device " + quote(serial) + " from " + string(from) + " to " + string(to) + " as " + string(role) + "; "
	if len(mine) == 0 {
		msg += "role " + string(role) + " may not move it from " + string(from) + " at all"
	} else {
		msg += "allowed from " + string(from) + " for role " + string(role) + ": " + joinStates(mine)
	}
	if len(others) > 0 {
		sort.Strings(others)
		msg += "; other moves from " + string(from) + ": " + strings.Join(others, ", ")
	}
	return &Error{Code: ECONFLICT, Message: msg}
}

// StateChange is one recorded lifecycle transition of a device.
type StateChange struct {
	Seq    int64     `json:"seq"` // 1 for the creation, then increasing per device
	From   State     `json:"from,omitempty"`
	To     State     `json:"to"`
	Actor  string    `json:"actor"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// MaxReasonLen bounds the free-text reason of a transition.
const MaxReasonLen = 1024

func joinStates(ss []State) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return strings.Join(out, ", ")
}

func quote(s string) string { return "\"" + s + "\"" }
