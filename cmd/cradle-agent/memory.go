package main

import (
	"fmt"
	"runtime/debug"
)

// memorySection is the `memory:` part of agent.yaml: how the Go runtime
// holds the agent's memory on a small device.
//
// At idle the agent's live heap is under 1 MB; most of its resident
// memory is the mapped binary and libc (file pages, which a kernel with
// large page-cache folios maps whole) and the runtime's own fixed
// overhead. A soft limit makes the garbage collector work harder as the
// agent's memory nears it, so it bounds peaks (a burst of spooled
// telemetry, a large desired document) without failing an allocation; set
// too low, below what the runtime itself needs (about 8 MB of Go memory
// in total, as runtime/metrics counts it), it costs CPU for nothing. The
// default, 0, leaves the Go runtime's own: GOMEMLIMIT and GOGC from the
// environment apply, and no limit without them.
type memorySection struct {
	// Limit is the soft limit in bytes (debug.SetMemoryLimit); 0 sets
	// none.
	Limit int64 `yaml:"limit"`
}

// minMemoryLimit is the smallest limit accepted: below it the collector
// runs without pause for memory it cannot free (the runtime's own).
const minMemoryLimit = 8 << 20

// check validates the section.
func (m memorySection) check() error {
	if m.Limit != 0 && m.Limit < minMemoryLimit {
		return fmt.Errorf("config: memory.limit %d is below %d bytes (8 MiB), what the Go runtime holds by itself; use 0 for no limit", m.Limit, minMemoryLimit)
	}
	return nil
}

// apply sets the limit, if any, for the whole process.
func (m memorySection) apply() {
	if m.Limit > 0 {
		debug.SetMemoryLimit(m.Limit)
	}
}
