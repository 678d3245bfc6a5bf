package cradle

import (
	"context"
	"time"
)

// A device learns what to install from the update service: the release of
// its started attempt in a rollout, with the delta that fits the image it
// runs. Its reports go to a queue that the rollout scheduler feeds to the
// engine; what it reports running is kept on its record.

// PendingUpdate is what a device should install now.
type PendingUpdate struct {
	RolloutID string            `json:"rollout_id"`
	Attempt   int               `json:"attempt"`
	State     DeviceUpdateState `json:"state"`
	// RolloutState is the rollout's state: running, paused, or aborted (the
	// device's attempt may finish, but a foreign client is told to stop).
	RolloutState RolloutState `json:"rollout_state"`
	Release      Release      `json:"release"`
	// Delta is the patch from the image the device said it runs, when the
	// release has one for exactly that image.
	Delta *ReleaseDelta `json:"delta,omitempty"`
}

// Update report states a device may send.
const (
	UpdateDownloading = "downloading"
	UpdateInstalling  = "installing"
	UpdateSucceeded   = "succeeded"
	UpdateFailed      = "failed"
	UpdateTimedOut    = "timeout"
)

// UpdateReport is a device's report on its attempt.
type UpdateReport struct {
	RolloutID string `json:"rollout_id"`
	Attempt   int    `json:"attempt"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
}

// DeviceSoftware is what a device last said it runs.
type DeviceSoftware struct {
	SHA256 string `json:"sha256"`
	// Version and ReleaseID are filled in when SHA256 is a release's.
	Version    string    `json:"version,omitempty"`
	ReleaseID  string    `json:"release_id,omitempty"`
	ReportedAt time.Time `json:"reported_at"`
}

// DownloadRecord is one response body an artifact download served.
type DownloadRecord struct {
	TenantID int64
	Serial   string
	SHA256   string
	Bytes    int64
	Complete bool
	At       time.Time
}

// DeviceDownload totals a device's downloads of one artifact.
type DeviceDownload struct {
	SHA256    string    `json:"sha256"`
	Bytes     int64     `json:"bytes"`
	Requests  int64     `json:"requests"`
	Completes int64     `json:"completes"`
	FirstAt   time.Time `json:"first_at"`
	LastAt    time.Time `json:"last_at"`
}

// UpdateService is the device's side of updates.
type UpdateService interface {
	// PendingUpdate returns the device's attempt in progress (started,
	// downloading or installing) in a running, paused or aborted
	// rollout, with the delta from runningSHA256 when the release has
	// one. ENOTFOUND when there is none. Needs PermUpdateDevice; a device
	// only for itself (EFORBIDDEN).
	PendingUpdate(ctx context.Context, serial, runningSHA256 string) (*PendingUpdate, error)
	// ReportUpdate queues a report for the rollout's engine and audits
	// it. EINVALID for an unknown state, ENOTFOUND when the device is not
	// in that rollout. Needs PermUpdateDevice; a device only for itself.
	ReportUpdate(ctx context.Context, serial string, r UpdateReport) error
	// ReportSoftware records the image a device runs. Needs
	// PermUpdateDevice; a device only for itself.
	ReportSoftware(ctx context.Context, serial, sha256 string) error
	// FindSoftware returns what a device last reported running. Needs
	// PermDeviceRead. ENOTFOUND when it never reported.
	FindSoftware(ctx context.Context, serial string) (*DeviceSoftware, error)
	// RecordDownloads adds download accounting, in one transaction.
	// Needs the system role.
	RecordDownloads(ctx context.Context, recs []DownloadRecord) error
	// FindDownloads lists a device's download totals. Needs
	// PermDeviceRead.
	FindDownloads(ctx context.Context, serial string) ([]*DeviceDownload, error)
}
