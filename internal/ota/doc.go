// Package ota is Cradle's over-the-air update service: it takes release
// artifacts in, signs them into each tenant's TUF repository (with delta
// patches), removes them again, collects unreferenced artifacts, and
// drives rollouts (the scheduler, scheduler*.go).
//
// # Parties and keys
//
//   - Image keys (cradle.ImageKey, one model each) sign MCUboot images
//     outside the server, with imgtool or `cradle release sign-image`; the
//     server only checks them. A device's MCUboot checks them again at boot.
//   - A tenant's TUF root keys (k of n) are offline: `cradle release repo
//     init` makes them and tells the operator to move them away; they are
//     needed only to rotate keys (`repo rotate-key`, `repo rotate-root`).
//   - The online keys (targets, snapshot, timestamp) sign releases in and
//     out and refresh expiring metadata. keys.json names them by kms URI
//     (files encrypted with the PKI passphrase, or pkcs11: keys in an HSM).
//
// # Layout
//
//	<data_dir>/tuf/<tenant>/repository/  the TUF metadata (tuf.DirStore), served to devices
//	<data_dir>/tuf/<tenant>/keys.json    role → key URI for targets, snapshot, timestamp (0600)
//	<data_dir>/tuf/<tenant>/lock         flock taken by every operation
//	<data_dir>/tuf/<tenant>/keys/        the file keys made by repo init and rotate-key (0700)
//	<data_dir>/artifacts/                the artifact store (artifact.Dir)
//
// Every operation on a repository (Repos.Do) takes the tenant's exclusive
// flock and re-opens the repository from disk, so the local CLI, the server
// and replicas sharing the data directory never interleave, and a change
// staged by a failed operation is never published by a later one.
//
// # Releases
//
// UploadRelease authorizes and checks the metadata before it reads a byte;
// the artifact store keeps the bytes only when digest and length are the
// declared ones. The stored bytes are then recognised (Sniff) or checked
// against the declared kind (CheckKind): an MCUboot image must verify
// against the image keys of its model (an image signed by a key of another
// model, or by an unknown key, is refused naming the key) and its security
// counter is its protected SEC_CNT (0 when absent); a Mender artifact is a
// tar whose first entry "version" says {"format":"mender","version":3}; a
// SWUpdate image is a new-ASCII cpio whose first entry is "sw-description".
// Both are then parsed whole, streaming from the artifact store
// (internal/compat/menderartifact, internal/compat/swu): a malformed one is
// refused with the parser's message; a Mender artifact's device types must
// include the release's model; a SWUpdate image's hardware-compatibility,
// when present, must list each of the release's hardware revisions (exactly,
// or by a "#RE:" regular expression), see CheckHardwareCompatibility.
// Their signatures are not required (devices check them) and not recorded.
// The record comes last
// (cradle.ReleaseService.CreateRelease, which refuses a downgrade below a
// signed release's counter). A refusal after the bytes were stored leaves
// an unreferenced blob that CollectGarbage removes after its grace period.
//
// SignRelease finds the predecessor (the signed or deprecated release of
// the same model and kind with the highest security counter, newest on a
// tie), makes a zstd patch from it (internal/delta) when both images are
// at most 256 MiB and keeps it when it is at most 70% of the image, stores
// it, and adds two targets: the patch at
// "<model>/<version>/<file>.from-<from version>.zst" and the release at
// "<model>/<version>/<file>", whose custom metadata lists the patch as a
// delta base. A release that names no hardware revision is published with
// the revision "*" (AllHardwareRevisions), meaning every revision: TUF
// custom metadata must list at least one. Publish signs targets, snapshot
// and timestamp; only then is the release recorded as signed. An expired
// root refuses signing and yanking with the command that renews it.
//
// YankRelease removes the release's targets and publishes, records the
// release as yanked and aborts its running and paused rollouts.
//
// # Failure modes
//
// Nothing is published unless every step before Publish succeeded. The
// record is written after the repository, so a failure between the two
// leaves the repository ahead of the record; repeating the operation
// finishes it. Unreferenced blobs (refused uploads, patches of a failed
// signing) are removed by CollectGarbage after the grace period.
package ota
