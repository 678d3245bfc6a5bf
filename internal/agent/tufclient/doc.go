// Package tufclient is the agent's client of The Update Framework (TUF,
// specification 1.0): before the agent downloads an update it proves,
// from metadata signed by the server's TUF repository (internal/tuf), that
// the target is the one the release keys signed, for this device, and not
// older than what it runs.
//
// # Trust and parties
//
// The device trusts one root metadata file from the factory
// (Options.TrustedRoot). Everything else comes from the device's server at
// the update offer's tuf.metadata_url ("https://HOST/device/v1/tuf/"),
// fetched with the agent's mTLS client: N.root.json, timestamp.json,
// N.snapshot.json and N.targets.json (consistent snapshots). The server
// and the network are not trusted; only the keys root lists are.
//
// # Workflow (Refresh)
//
//  1. Root: N+1.root.json for as long as the server has one, each signed
//     by a threshold of the previous root's keys and of its own, with
//     version exactly N+1; so a device offline across any number of
//     rotations follows them. The final root must not be expired. When
//     the timestamp or snapshot keys changed, the trusted timestamp and
//     snapshot are dropped (fast-forward recovery).
//  2. Timestamp: signed by the timestamp key, version not below the
//     trusted one, the snapshot version it names not below the trusted
//     one, not expired.
//  3. Snapshot: length and SHA-256 as the timestamp records, signed, no
//     targets version below the trusted snapshot's, version equal to the
//     timestamp's record, not expired.
//  4. Targets: length and SHA-256 as the snapshot records, signed by the
//     targets key of the final root (a retired key no longer counts),
//     version equal to the snapshot's record, not expired.
//
// The checks themselves are go-tuf/v2's trusted metadata set
// (metadata/trustedmetadata); this package fetches, bounds, persists and
// names the refusals. It does not use go-tuf's updater: the updater
// brings its own HTTP retry and cache layout and is no smaller in the
// agent, while fetching here goes through the caller's client with a
// length cap per file and each refusal is typed for the server.
//
// # Refusals
//
// Every refusal is an *Error whose Attack names the attack it defends
// against: rollback, freeze (expired metadata), mix-and-match (metadata
// that does not match the record above it), arbitrary-software (a missing
// or wrong signature, a retired key), endless-data (more bytes than the
// recorded length or the size limit, or an endless root chain),
// malformed-metadata, and for Select wrong-hardware and
// lower-security-counter. The agent reports Error.Error() to the server as
// the reason of the failed update. Network failures are plain errors.
//
// # State
//
// Dir keeps root.json, timestamp.json, snapshot.json and targets.json,
// each replaced atomically as soon as it is accepted, so that what the
// device has seen is the floor for every later update, across failures
// and reboots. A trusted file that still matches the record above it is
// not fetched again.
//
// # Targets (Lookup, Select)
//
// Lookup gives a target's length, SHA-256, custom metadata (tuf.Custom)
// and URL; Select also checks the model, that the hardware revisions list
// the device's revision or "*", and that the security counter is at least
// the device's. The download itself (streaming, never more than Length,
// hash checked before the image is marked bootable) is the updater's.
package tufclient
