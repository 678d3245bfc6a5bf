// Package cradle holds Cradle's domain: tenants, operator tokens and roles,
// the device registry, the device lifecycle state machine and the
// tamper-evident audit log, together with the service interfaces that
// storage and transports implement.
//
// It imports only the standard library. Implementations live in internal/
// packages, one per dependency (internal/sqlstore for SQL, internal/httpapi
// for HTTP), and only cmd/ wires them together.
//
// Every service method takes the acting party from the context
// (NewContextWithActor). Services authorize the actor themselves, confine it
// to its tenant (another tenant's records are reported as not found), apply
// the domain rules of this package, and write the audit entry for a change in
// the same transaction as the change. Refusals are audited too.
package cradle

import "time"

// Version is the program version, set at build time with
// -ldflags "-X cradle.Version=v1.2.3".
var Version = "dev"

// Clock tells the time. Services take one so that expiry and ordering can be
// tested without sleeping. A nil Clock means the system clock.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns the current time.
func (SystemClock) Now() time.Time { return time.Now() }

// Now returns c.Now(), or the system time when c is nil.
func Now(c Clock) time.Time {
	if c == nil {
		return time.Now()
	}
	return c.Now()
}
