package main

import (
	"fmt"
	"os"
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
// in total, as runtime/metrics counts it), it costs CPU for nothing.
//
// The default, 0, is DefaultMemoryLimit unless GOMEMLIMIT is set in the
// environment, which then applies; a negative limit sets none. Measured
// with bench/agentupdatebench (the release binary installing a 256 MiB
// image through cradle serve): 18.3 MiB peak resident with the default,
// 20.3 MiB with no limit, at the same install speed.
type memorySection struct {
	// Limit is the soft limit in bytes (debug.SetMemoryLimit); 0 means
	// the default, negative none.
	Limit int64 `yaml:"limit"`
}

// DefaultMemoryLimit is the agent's soft memory limit when the
// configuration and the environment set none.
const DefaultMemoryLimit = 10 << 20

// minMemoryLimit is the smallest limit accepted: below it the collector
// runs without pause for memory it cannot free (the runtime's own).
const minMemoryLimit = 8 << 20

// check validates the section.
func (m memorySection) check() error {
	if m.Limit > 0 && m.Limit < minMemoryLimit {
		return fmt.Errorf("config: memory.limit %d is below %d bytes (8 MiB), what the Go runtime holds by itself; use -1 for no limit, 0 for the default", m.Limit, minMemoryLimit)
	}
	return nil
}

// apply sets the limit, if any, for the whole process.
func (m memorySection) apply() {
	switch {
	case m.Limit > 0:
		debug.SetMemoryLimit(m.Limit)
	case m.Limit == 0 && os.Getenv("GOMEMLIMIT") == "":
		debug.SetMemoryLimit(DefaultMemoryLimit)
	}
}
