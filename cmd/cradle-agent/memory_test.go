package main

import (
	"runtime/debug"
	"testing"
)

// TestMemoryLimit: memory.limit reaches the Go runtime; 0 is the default
// limit unless GOMEMLIMIT is set; a negative limit leaves the runtime's
// own alone.
func TestMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	for _, tc := range []struct {
		name, yaml, env string
		want            int64
	}{
		{"unset", "", "", DefaultMemoryLimit},
		{"zero", "memory: {limit: 0}\n", "", DefaultMemoryLimit},
		{"zero with GOMEMLIMIT", "memory: {limit: 0}\n", "64MiB", before},
		{"none", "memory: {limit: -1}\n", "", before},
		{"16 MiB", "memory: {limit: 16777216}\n", "", 16 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", tc.env)
			debug.SetMemoryLimit(before)
			c, err := parseAgentConfig([]byte("device: d\nstate_dir: s\nserver: https://x\n" + tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			c.Memory.apply()
			if got := debug.SetMemoryLimit(-1); got != tc.want {
				t.Errorf("limit %d, want %d", got, tc.want)
			}
		})
	}
}
