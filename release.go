package cradle

import (
	"context"
	"io"
	"time"
)

// A release is one update artifact a fleet can install: an MCUboot image
// (checked against the model's image keys when it is uploaded), or a
// foreign artifact (a Mender .mender or a SWUpdate .swu, recognised by its
// container and otherwise kept opaque until the protocols that install
// them), or an opaque file. Its bytes live in the artifact store, named by
// their SHA-256; the record here says what they are. Signing a release puts
// it into the tenant's TUF repository as a target (with a delta patch from
// its predecessor when one pays off); only signed releases can be rolled
// out.
//
// A release's life: uploaded (stored, not in the TUF repository), signed
// (a TUF target), deprecated (still a target and still installable, but no
// new rollout may use it), yanked (removed from the TUF repository; its
// active rollouts are aborted). Yanked is final.
//
// A release may be flagged as remediation (at upload, or later): the only
// kind of update a suspended (quarantined) device is offered. A rollout of
// a remediation release targets suspended devices as well as deployed
// ones; a rollout of any other release skips suspended devices, and a
// device suspended during such a rollout is offered nothing more from it.

// ReleaseKind is what an uploaded artifact is.
type ReleaseKind string

// Release kinds.
const (
	ReleaseMCUboot  ReleaseKind = "mcuboot"  // an MCUboot image (internal/mcuboot)
	ReleaseMender   ReleaseKind = "mender"   // a Mender artifact (.mender, a tar)
	ReleaseSWUpdate ReleaseKind = "swupdate" // a SWUpdate image (.swu, a cpio)
	ReleaseFile     ReleaseKind = "file"     // any other file, opaque
)

// ReleaseKinds lists the kinds in a stable order.
var ReleaseKinds = []ReleaseKind{ReleaseMCUboot, ReleaseMender, ReleaseSWUpdate, ReleaseFile}

// ReleaseState is where a release is in its life.
type ReleaseState string

// Release states.
const (
	ReleaseUploaded   ReleaseState = "uploaded"
	ReleaseSigned     ReleaseState = "signed"
	ReleaseDeprecated ReleaseState = "deprecated"
	ReleaseYanked     ReleaseState = "yanked"
)

// Limits on releases.
const (
	MaxReleaseNotes     = 4096 // bytes
	MaxHardwareRevs     = 32
	DefaultMaxImageSize = 1 << 30 // bytes of one uploaded artifact, unless configured
)

// Release is one uploaded artifact and what it is for.
type Release struct {
	// ID is "rel_" and 20 hex digits, given by the server.
	ID      string `json:"id"`
	Model   string `json:"model"`
	Version string `json:"version"`
	// HardwareRevisions are the board revisions the release runs on;
	// empty means every revision of the model.
	HardwareRevisions []string    `json:"hardware_revisions,omitempty"`
	Kind              ReleaseKind `json:"kind"`
	// SHA256 (hex) and Size name the artifact in the artifact store.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// FileName is the name the artifact was uploaded under; the TUF
	// target path is "<model>/<version>/<file name>".
	FileName string `json:"file_name"`
	// SecurityCounter is the anti-rollback counter: for an MCUboot image
	// the value of its SEC_CNT TLV, otherwise given at upload.
	SecurityCounter uint32       `json:"security_counter"`
	Notes           string       `json:"notes,omitempty"`
	State           ReleaseState `json:"state"`
	// Reason says why the release was deprecated or yanked.
	Reason string `json:"reason,omitempty"`
	// TargetPath is the release's path in the TUF repository once signed.
	TargetPath string `json:"target_path,omitempty"`
	// ImageKey is the fingerprint (SHA-256 of the DER public key, hex) of
	// the image key that signed an MCUboot release.
	ImageKey string `json:"image_key,omitempty"`
	// ArtifactName is the name a foreign artifact gives itself: a Mender
	// artifact's artifact_provides.artifact_name, a .swu's software
	// version ("name version" from sw-description); "" otherwise.
	ArtifactName string `json:"artifact_name,omitempty"`
	// Remediation flags an update that suspended devices may receive
	// (quarantine): see the life of a release above.
	Remediation bool `json:"remediation,omitempty"`
	// Deltas are the patches that turn an earlier release into this one.
	Deltas    []ReleaseDelta `json:"deltas,omitempty"`
	CreatedBy string         `json:"created_by"`
	CreatedAt time.Time      `json:"created_at"`
	SignedAt  time.Time      `json:"signed_at,omitzero"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// ReleaseDelta is a zstd patch (internal/delta) from the artifact of
// release FromRelease (FromSHA256, FromSize) to its release's artifact.
type ReleaseDelta struct {
	FromRelease string `json:"from_release"`
	FromSHA256  string `json:"from_sha256"`
	FromSize    int64  `json:"from_size"`
	// SHA256 and Size name the patch in the artifact store; TargetPath is
	// its path in the TUF repository.
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size"`
	TargetPath string `json:"target_path"`
}

// ReleaseCreate records an artifact already in the artifact store.
type ReleaseCreate struct {
	Model             string
	Version           string
	HardwareRevisions []string
	Kind              ReleaseKind
	SHA256            string
	Size              int64
	FileName          string
	SecurityCounter   uint32
	Notes             string
	ImageKey          string
	ArtifactName      string
	Remediation       bool
}

// ReleaseFilter selects releases.
type ReleaseFilter struct {
	Model string
	State *ReleaseState
	// Limit: 0 means DefaultPageSize; at most MaxPageSize. Newest first.
	Limit int
}

// ImageKey is a public key trusted to sign MCUboot images of one model.
type ImageKey struct {
	// Fingerprint is the SHA-256 of the DER SubjectPublicKeyInfo, hex.
	Fingerprint string `json:"fingerprint"`
	Model       string `json:"model"`
	// PublicKey is the key as PEM ("PUBLIC KEY").
	PublicKey string    `json:"public_key"`
	Name      string    `json:"name,omitempty"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

// ReleaseService keeps release records and image keys. The bytes, the TUF
// repository and delta generation are the OTA service's (internal/ota),
// which calls this in the right order: a record only for bytes already
// stored, signed only once the repository is published.
type ReleaseService interface {
	// CreateRelease records an uploaded artifact in state uploaded. Needs
	// PermReleaseWrite. EINVALID for a bad field, ECONFLICT when the
	// model already has a release of that version, EINVALID ("downgrade")
	// when the security counter is below that of a signed or deprecated
	// release of the model.
	CreateRelease(ctx context.Context, c ReleaseCreate) (*Release, error)
	// FindRelease returns a release of the actor's tenant. Needs
	// PermReleaseRead. ENOTFOUND.
	FindRelease(ctx context.Context, id string) (*Release, error)
	// FindReleases lists releases, newest first. Needs PermReleaseRead.
	FindReleases(ctx context.Context, f ReleaseFilter) ([]*Release, error)
	// MarkReleaseSigned records that the release is a published TUF
	// target at targetPath, with its deltas. Needs PermReleaseWrite.
	// ECONFLICT unless the release is uploaded (or signed: re-signing
	// replaces the deltas).
	MarkReleaseSigned(ctx context.Context, id, targetPath string, deltas []ReleaseDelta) (*Release, error)
	// SetReleaseState deprecates or yanks a release, with a reason.
	// Needs PermReleaseWrite. ECONFLICT for a move the life above does
	// not allow (a yanked release stays yanked).
	SetReleaseState(ctx context.Context, id string, to ReleaseState, reason string) (*Release, error)
	// SetReleaseRemediation flags a release as remediation, or clears the
	// flag; the change is audited ("release.remediation"), setting it to
	// what it is changes nothing. Needs PermReleaseWrite. ECONFLICT for a
	// yanked release. Rollouts already created keep the targets they
	// were created with; what a suspended device is offered follows the
	// flag at once.
	SetReleaseRemediation(ctx context.Context, id string, remediation bool) (*Release, error)
	// ReferencedArtifacts calls fn with the SHA-256 (hex) of every
	// artifact and patch a release of any tenant refers to, for the
	// artifact store's garbage collection. Needs the system role.
	ReferencedArtifacts(ctx context.Context, fn func(sha256 string) error) error

	// AddImageKey trusts a public key (PEM) for the images of a model.
	// Needs PermReleaseWrite. EINVALID for a key that is not ECDSA P-256
	// or Ed25519, ECONFLICT when it is already trusted for another model
	// (one key, one model: that is how a wrong-model image is caught).
	AddImageKey(ctx context.Context, k ImageKey) (*ImageKey, error)
	// FindImageKeys lists the image keys, of one model when model is not
	// empty. Needs PermReleaseRead.
	FindImageKeys(ctx context.Context, model string) ([]*ImageKey, error)
	// RemoveImageKey stops trusting a key. Needs PermReleaseWrite.
	// ENOTFOUND.
	RemoveImageKey(ctx context.Context, fingerprint string) error
	// AuthorizeRelease checks the actor for p before work that starts
	// outside the store (an upload streams its bytes first) and audits a
	// refusal as "<action>.refused" on subject.
	AuthorizeRelease(ctx context.Context, p Permission, action, subject string) (Actor, error)
}

// ReleaseUpload describes an artifact being uploaded.
type ReleaseUpload struct {
	Model             string
	Version           string
	HardwareRevisions []string
	// Kind is what the artifact is; empty means: recognise it (an MCUboot
	// image by its magic, a Mender artifact or a SWUpdate image by its
	// container), else a file.
	Kind     ReleaseKind
	FileName string
	// SHA256 (hex) and Size are what the uploader says it sends; the
	// upload is refused, and nothing stored, when the bytes differ.
	SHA256 string
	Size   int64
	// SecurityCounter is the anti-rollback counter of a foreign artifact
	// or file; for an MCUboot image it is read from the image and, when
	// given, must match it.
	SecurityCounter uint32
	Notes           string
	// Remediation flags the release as one suspended devices may receive.
	Remediation bool
	// Sign signs the release into the TUF repository right after the
	// upload (see ReleasePublisher.SignRelease).
	Sign bool
}

// RepositoryRole is one role of a tenant's TUF repository as published.
type RepositoryRole struct {
	Version int64     `json:"version"`
	Expires time.Time `json:"expires"`
	KeyIDs  []string  `json:"key_ids"`
	// Threshold is how many of KeyIDs must sign.
	Threshold int `json:"threshold"`
}

// RepositoryStatus describes a tenant's TUF repository.
type RepositoryStatus struct {
	Roles   map[string]RepositoryRole `json:"roles"`
	Targets int                       `json:"targets"`
}

// ReleasePublisher takes artifacts in and out of the fleet: it stores the
// bytes (checked against the declared digest and length), checks what they
// are (an MCUboot image against the model's image keys and security
// counter), records the release, and signs it into the tenant's TUF
// repository with a delta from its predecessor when one is worth it. Every
// method does its checks before it changes anything, and a failure leaves
// no record, no target and no unreferenced blob that garbage collection
// would not remove.
type ReleasePublisher interface {
	// UploadRelease needs PermReleaseWrite. EINVALID (metadata, digest or
	// length mismatch, unknown or wrong-model image key, security counter
	// mismatch or downgrade, kind not recognised), ETOOLARGE, ECONFLICT
	// (version exists).
	UploadRelease(ctx context.Context, u ReleaseUpload, body io.Reader) (*Release, error)
	// SignRelease makes an uploaded release a TUF target, with delta
	// patches from its predecessor when they are at most 70% of the image,
	// and publishes the repository. Needs PermReleaseWrite. ECONFLICT
	// (state), EUNAVAILABLE when the tenant has no TUF repository or its
	// online keys are not loaded, EINVALID when root has expired.
	SignRelease(ctx context.Context, id string) (*Release, error)
	// DeprecateRelease keeps a release installable but closes it to new
	// rollouts. Needs PermReleaseWrite.
	DeprecateRelease(ctx context.Context, id, reason string) (*Release, error)
	// YankRelease removes a release (and its patches) from the TUF
	// repository, publishes, marks it yanked and aborts its active
	// rollouts. Needs PermReleaseWrite.
	YankRelease(ctx context.Context, id, reason string) (*Release, error)
	// RepositoryStatus describes the actor's tenant's repository. Needs
	// PermReleaseRead. ENOTFOUND when it has none.
	RepositoryStatus(ctx context.Context) (*RepositoryStatus, error)
}
