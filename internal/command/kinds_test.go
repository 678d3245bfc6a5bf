package command_test

import (
	"testing"

	"cradle"
	"cradle/internal/command"
)

// TestKindsMatchDomain: the kinds the server issues (package cradle) are
// the kinds a device knows, in the same order.
func TestKindsMatchDomain(t *testing.T) {
	if len(cradle.CommandKinds) != len(command.Kinds) {
		t.Fatalf("cradle.CommandKinds %v, command.Kinds %v", cradle.CommandKinds, command.Kinds)
	}
	for i, k := range command.Kinds {
		if string(cradle.CommandKinds[i]) != string(k) {
			t.Errorf("kind %d: cradle %q, command %q", i, cradle.CommandKinds[i], k)
		}
	}
}
