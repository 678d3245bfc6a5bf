package swu_test

import (
	"os"
	"testing"

	"cradle/internal/testkit"
)

// TestMain caps fuzz minimization at 1000x calls per input: the seeds are
// kilobytes, and the default (up to 60 s per new input) stalls -fuzz runs.
func TestMain(m *testing.M) {
	os.Exit(testkit.FuzzMain(m, "1000x"))
}
