// Package tuf keeps Cradle's update metadata as a repository of The Update
// Framework (TUF, specification 1.0), built on go-tuf/v2's metadata API, so
// that any TUF client (go-tuf's own updater among them) can check a release
// before it installs it, and a stolen online key cannot push one.
//
// # Roles and keys
//
//   - root: offline keys, k of n (RootSpec). It lists every role's keys
//     and thresholds. Version N+1 must carry a threshold of signatures by
//     the keys of version N and a threshold by its own keys (spec 5.3.4),
//     so a client that trusts root v1 follows every rotation.
//   - targets: the release signing key. It lists each target file with its
//     length, its SHA-256 (the only hash, the artifact store's content
//     address) and a "custom" object (Custom).
//   - snapshot and timestamp: online keys. Snapshot records the targets
//     version (with length and SHA-256); timestamp records the snapshot.
//
// Keys are crypto.Signers from internal/kms (files or PKCS#11), ECDSA P-256
// (scheme ecdsa-sha2-nistp256, signing the SHA-256 of the canonical JSON)
// or Ed25519; other keys are refused. Every role but root has threshold 1.
//
// # Custom target metadata
//
//	{"model": "gw-100", "hardware_revisions": ["a", "b"], "version": "1.4.2",
//	 "security_counter": 7,
//	 "delta_bases": [{"from_sha256": HEX, "patch": "gw-100/1.4.2-from-1.4.1.zst",
//	                  "length": 1234, "hashes": {"sha256": HEX}}]}
//
// Every field but delta_bases is required; unknown fields are refused. A
// delta patch is a target too, carrying the custom metadata of the release
// it produces. A target whose security counter is below that of any target
// of the same model in the repository is refused (a downgrade); the check
// sees the current target set, so the device's own counter (MCUboot's) is
// the last line against a release removed and re-added lower.
//
// # Operations
//
// Init writes version 1 of all four roles. AddTarget and RemoveTarget stage
// changes in memory; Publish signs targets (version+1), then snapshot, then
// timestamp, and refuses while root is expired. Refresh re-signs what
// expires within half of its period (targets 90 days, snapshot 7, timestamp
// 1 by default; root 365 and never refreshed, it is offline). RotateKey
// replaces the targets, snapshot or timestamp key through a new root
// version; RotateRoot replaces the root keys or threshold (or renews root
// with the same keys). Each operation builds all its new metadata, signs
// and checks it, and only then writes; a failure changes nothing in memory.
//
// # Storage
//
// The Store holds the files a TUF client fetches, consistent snapshots on:
// N.root.json for every root version, N.targets.json and N.snapshot.json,
// and root.json, targets.json, snapshot.json and timestamp.json. Versioned
// files are written first and timestamp.json last, each atomically
// (DirStore uses internal/atomicfile), so a client never sees a
// half-published repository. Target files themselves live in the artifact
// store; a client fetches them at TARGETS_URL/TargetURLPath(path, sha256),
// "DIR/HEX.NAME".
package tuf
