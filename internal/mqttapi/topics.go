package mqttapi

import (
	"strings"
	"unicode/utf8"

	"cradle"
)

// TopicRoot is the prefix of every device topic. A device's own subtree is
// TopicRoot + serial, and everything under it:
//
//	cradle/devices/<serial>/telemetry        device → server  telemetry points
//	cradle/devices/<serial>/twin/reported    device → server  reported configuration document
//	cradle/devices/<serial>/twin/desired     server → device  desired configuration document
//	cradle/devices/<serial>/commands         server → device  signed commands
//	cradle/devices/<serial>/commands/result  device → server  command results
//	cradle/devices/<serial>/update           server → device  update notices {"rollout_id", "attempt"}
//
// The direction is a convention of the agent and the server, not an ACL
// rule: a device may publish and subscribe anywhere in its own subtree and
// nowhere else.
const TopicRoot = "cradle/devices/"

// Suffixes of the topics in a device's subtree; see TopicRoot.
const (
	TopicTelemetry      = "telemetry"
	TopicTwinReported   = "twin/reported"
	TopicTwinDesired    = "twin/desired"
	TopicCommands       = "commands"
	TopicCommandResults = "commands/result"
	TopicUpdate         = "update"
)

// DeviceTopic returns the topic suffix in the subtree of device serial,
// e.g. DeviceTopic("SN-1", TopicCommands) is "cradle/devices/SN-1/commands".
func DeviceTopic(serial, suffix string) string {
	return TopicRoot + serial + "/" + suffix
}

// Allowed reports whether device serial may use filter: publish to it
// (subscribe false: filter must be a topic name, without wildcards) or
// subscribe to it (wildcards '+' and '#' allowed where MQTT allows them).
// It allows only TopicRoot+serial and names or filters under it whose
// first three levels are literal, so no wildcard can reach another
// device's subtree ("cradle/#", "+/devices/#", "cradle/devices/+/..." and
// shared subscriptions "$share/..." are all refused). serial must pass
// cradle.ValidateSerial, which keeps '/', '+' and '#' out of it.
func Allowed(serial, filter string, subscribe bool) bool {
	if cradle.ValidateSerial(serial) != nil {
		return false
	}
	own := TopicRoot + serial
	if filter == own {
		return true
	}
	rest, ok := strings.CutPrefix(filter, own+"/")
	if !ok {
		return false
	}
	return validTail(rest, subscribe)
}

// validTail reports whether the levels after a device's own prefix form a
// valid topic name (or, with wildcards, a valid topic filter).
func validTail(s string, wildcards bool) bool {
	if len(s) > 65535 || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return false
	}
	levels := strings.Split(s, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if !wildcards || i != len(levels)-1 {
				return false
			}
		case l == "+":
			if !wildcards {
				return false
			}
		case strings.ContainsAny(l, "+#"):
			return false
		}
	}
	return true
}
