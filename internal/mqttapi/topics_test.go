package mqttapi_test

import (
	"strings"
	"testing"

	"cradle"
	"cradle/internal/mqttapi"
)

func TestAllowed(t *testing.T) {
	tests := []struct {
		name, serial, filter string
		subscribe, want      bool
	}{
		{"own telemetry", "SN-1", "cradle/devices/SN-1/telemetry", false, true},
		{"own twin reported", "SN-1", "cradle/devices/SN-1/twin/reported", false, true},
		{"own root", "SN-1", "cradle/devices/SN-1", false, true},
		{"own subtree wildcard", "SN-1", "cradle/devices/SN-1/#", true, true},
		{"own single-level wildcard", "SN-1", "cradle/devices/SN-1/+/desired", true, true},
		{"wildcard in a publish", "SN-1", "cradle/devices/SN-1/#", false, false},
		{"plus in a publish", "SN-1", "cradle/devices/SN-1/+", false, false},
		{"another device", "SN-1", "cradle/devices/SN-2/telemetry", false, false},
		{"own update notices", "SN-1", mqttapi.DeviceTopic("SN-1", mqttapi.TopicUpdate), true, true},
		{"another device's update notices", "SN-1", mqttapi.DeviceTopic("SN-2", mqttapi.TopicUpdate), true, false},
		{"every device's update notices", "SN-1", "cradle/devices/+/update", true, false},
		{"another device subscribe", "SN-1", "cradle/devices/SN-2/#", true, false},
		{"serial prefix of another", "SN-1", "cradle/devices/SN-10/telemetry", false, false},
		{"every device", "SN-1", "cradle/devices/+/commands", true, false},
		{"cradle root", "SN-1", "cradle/#", true, false},
		{"all", "SN-1", "#", true, false},
		{"plus first", "SN-1", "+/devices/SN-1/commands", true, false},
		{"shared subscription", "SN-1", "$share/g/cradle/devices/SN-1/commands", true, false},
		{"sys", "SN-1", "$SYS/#", true, false},
		{"hash not last", "SN-1", "cradle/devices/SN-1/#/x", true, false},
		{"hash inside a level", "SN-1", "cradle/devices/SN-1/a#", true, false},
		{"plus inside a level", "SN-1", "cradle/devices/SN-1/a+", true, false},
		{"NUL", "SN-1", "cradle/devices/SN-1/a\x00", false, false},
		{"invalid UTF-8", "SN-1", "cradle/devices/SN-1/\xff", false, false},
		{"invalid serial", "SN/1", "cradle/devices/SN/1/telemetry", false, false},
		{"wildcard serial", "+", "cradle/devices/+/telemetry", true, false},
		{"empty serial", "", "cradle/devices//telemetry", false, false},
		{"case differs", "SN-1", "Cradle/devices/SN-1/telemetry", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mqttapi.Allowed(tt.serial, tt.filter, tt.subscribe); got != tt.want {
				t.Errorf("Allowed(%q, %q, %v) = %v, want %v", tt.serial, tt.filter, tt.subscribe, got, tt.want)
			}
		})
	}
}

// FuzzAllowed checks that whatever Allowed lets through stays in the
// device's own subtree: the first three levels are literally cradle,
// devices and the serial (so no MQTT match can reach another device), and
// a publish has no wildcard.
func FuzzAllowed(f *testing.F) {
	for _, s := range [][2]string{
		{"SN-1", "cradle/devices/SN-1/telemetry"},
		{"SN-1", "cradle/devices/SN-1/#"},
		{"SN-1", "cradle/devices/+/commands"},
		{"SN-1", "cradle/#"},
		{"SN-1", "+/devices/SN-1/#"},
		{"SN-1", "cradle/devices/SN-1"},
		{"A", "cradle/devices/A/+/+/#"},
		{"SN-1", "$share/x/cradle/devices/SN-1/#"},
	} {
		f.Add(s[0], s[1], true)
		f.Add(s[0], s[1], false)
	}
	f.Fuzz(func(t *testing.T, serial, filter string, subscribe bool) {
		if !mqttapi.Allowed(serial, filter, subscribe) {
			return
		}
		levels := strings.Split(filter, "/")
		if len(levels) < 3 || levels[0] != "cradle" || levels[1] != "devices" || levels[2] != serial {
			t.Fatalf("Allowed(%q, %q) outside the device's subtree", serial, filter)
		}
		if strings.ContainsAny(serial, "/+#") {
			t.Fatalf("Allowed a serial with MQTT separators or wildcards: %q", serial)
		}
		if !subscribe && strings.ContainsAny(filter, "+#") {
			t.Fatalf("Allowed a publish to a wildcard topic %q", filter)
		}
		other := "cradle/devices/" + serial + "x/telemetry"
		if matches(filter, other) {
			t.Fatalf("filter %q allowed for %q matches %q", filter, serial, other)
		}
	})
}

// matches reports whether MQTT topic filter f matches topic name n.
func matches(f, n string) bool {
	fl, nl := strings.Split(f, "/"), strings.Split(n, "/")
	for i, l := range fl {
		if l == "#" {
			return true
		}
		if i >= len(nl) || (l != "+" && l != nl[i]) {
			return false
		}
	}
	return len(fl) == len(nl)
}

func TestPublishRefusesInvalidArguments(t *testing.T) {
	e := newEnv(t, nil)
	tests := []struct {
		name   string
		dev    mqttapi.Device
		suffix string
		qos    byte
	}{
		{"empty suffix", d1("SN-1"), "", 0},
		{"plus in suffix", d1("SN-1"), "+/commands", 0},
		{"hash in suffix", d1("SN-1"), "#", 0},
		{"NUL in suffix", d1("SN-1"), "a\x00b", 0},
		{"QoS 3", d1("SN-1"), mqttapi.TopicCommands, 3},
		{"tenant 0", mqttapi.Device{Serial: "SN-1"}, mqttapi.TopicCommands, 0},
		{"negative tenant", mqttapi.Device{TenantID: -1, Serial: "SN-1"}, mqttapi.TopicCommands, 0},
		{"empty serial", d1(""), mqttapi.TopicCommands, 0},
		{"serial with a slash", d1("SN-1/x"), mqttapi.TopicCommands, 0},
		{"serial with a wildcard", d1("+"), mqttapi.TopicCommands, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.broker.Publish(tt.dev, tt.suffix, []byte("x"), tt.qos)
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Errorf("Publish(%v, %q, qos %d) = %v, want an EINVALID error", tt.dev, tt.suffix, tt.qos, err)
			}
		})
	}
}
