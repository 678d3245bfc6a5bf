// Package rollout is the rollout engine: pure domain code that decides, for
// one rollout (cradle.Rollout), which devices start updating now, and when
// the rollout moves to its next phase, pauses, aborts or completes. It does
// no I/O and reads time only from an injected cradle.Clock.
//
// A caller (the scheduler, which holds a lease and fences its writes so that
// one server replica drives a rollout at a time) loads an Engine from the
// store (Load), feeds it device reports (Event), asks for a step (Plan),
// tells the devices in Plan.Start to update, and writes Rollout and Changes
// back in one transaction. Device records are only ever appended (a dynamic
// join adds one at the end), so a store that keeps insertion order gives
// Load the order it needs.
//
// Rules, as the engine applies them:
//
//   - Begin puts the target's devices in phases. The canary (first phase)
//     takes Count devices or Percent of the target; each later phase takes
//     devices up to its cumulative Percent; the last reaches 100. An explicit
//     list keeps its order (the first listed are the canaries); a selector's
//     devices are ordered by FNV-1a of rollout ID and serial.
//   - Conflicts: a device is in at most one active (running or paused)
//     rollout. CheckTarget refuses an explicit list naming a device of
//     another active rollout (ECONFLICT) and an empty target (EINVALID); a
//     device a selector brings in while it is in another active rollout is
//     skipped, with the reason "in active rollout <id>", and never started.
//   - Only the current phase starts devices, and only while the rollout is
//     running. A step starts at most RateLimit devices in any 60 seconds
//     (retries included), keeps at most MaxConcurrent devices started or
//     downloading, and starts a device only while a maintenance window is
//     open for it: a window opens at each cron time and lasts its duration,
//     read in its time zone or, device-local, in the zone of the device's
//     "tz" label (falling back to the window's zone). A window that closes does not
//     stop an update that has started.
//   - An attempt fails when the device reports failed or timeout, or has
//     not reported progress for DeviceTimeout (checked by Plan). A failed
//     attempt is retried (the device goes back to pending) while the device
//     has had at most Retries retries; then the device has failed.
//   - When the failures since the start or the last resume reach the
//     failure threshold (Count, or Percent of the devices not skipped,
//     rounded up), the rollout pauses or aborts in the same call, so no
//     device starts after the failure that reached it. Resume accepts the
//     failures so far and counts anew.
//   - A phase ends when none of its devices is pending or updating. If fewer
//     than SuccessThreshold percent of its finished devices succeeded, the
//     rollout pauses; Resume accepts the phase. Otherwise the phase soaks
//     for Soak, then the next phase starts, after an operator's Approve when
//     it asks for one. After the last phase a rollout completes, except a
//     dynamic one, which keeps running: a device that joins goes to the
//     current phase, or the next when the current one has finished, or the
//     last one, which runs again.
//   - Abort is final: no device starts again; reports of devices already
//     updating are still taken but count toward nothing, and Plan still
//     times out the ones silent for DeviceTimeout: that attempt fails for
//     good (no retry), also counting toward nothing.
//
// ParseSpec reads a spec from JSON and ParseWindow compiles a window
// (robfig/cron's five-field syntax and @hourly-style descriptors; @every and
// CRON_TZ are refused in favour of time_zone).
package rollout
