package spool_test

import (
	"os"
	"testing"

	"cradle/internal/testkit"
)

// TestMain caps fuzz minimization at 100x calls per input: each FuzzScan
// call writes and scans a spool file, and the default (up to 60 s per new
// input) stalls -fuzz runs.
func TestMain(m *testing.M) {
	os.Exit(testkit.FuzzMain(m, "100x"))
}
