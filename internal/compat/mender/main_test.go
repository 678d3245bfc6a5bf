package mender_test

import (
	"os"
	"testing"

	"cradle/internal/testkit"
)

// TestMain caps fuzz minimization, like the other parsers' packages.
func TestMain(m *testing.M) {
	os.Exit(testkit.FuzzMain(m, "1000x"))
}
