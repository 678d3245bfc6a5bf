package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/deviceapi"
	"cradle/internal/mqttapi"
	"cradle/internal/ota"
)

// deviceUpdates is the device side of over-the-air updates on the device
// listener (all routes need the device's LDevID):
//
//	GET  /device/v1/update?running=HEX   what to install now (204: nothing)
//	POST /device/v1/update/status        a cradle.UpdateReport on the attempt
//	POST /device/v1/software             {"sha256": HEX}: the image it runs
//	GET  /device/v1/tuf/{file}           the tenant's TUF metadata
//	GET  /device/v1/tuf/targets/DIR/HEX.NAME  a target of that metadata
//
// and, over MQTT, a notice on cradle/devices/<serial>/update when the
// rollout scheduler starts the device (notify) and when the device
// subscribes while it has an update pending. The update document carries
// signed URLs of the artifacts (see artifacts.go); the TUF routes let a
// TUF client check them first. A target is served only when its digest
// and path are in the device's own tenant's published targets.json, so a
// device cannot read another tenant's blobs by digest.
//
// Quarantine: these routes, and no other route of the device listener, are
// mounted with deviceapi's HandleRemediation, so a suspended device reaches
// them, for a remediation release only. The store offers it nothing else
// (PendingUpdate), refuses its reports on any other rollout and its
// software reports of any other image; the TUF routes serve it only while
// a remediation is pending, and of the targets only that release's image
// and patches. The artifact URLs are signed per offer (and so only for a
// remediation). Telemetry, twin, commands, attestation, MQTT and EST
// (re-enrollment included) stay refused, and the foreign protocols (Mender,
// hawkBit) refuse a suspended device's token.
type deviceUpdates struct {
	svc       cradle.UpdateService
	artifacts *artifact.Handler // the signer and store of the download URLs
	ttl       time.Duration     // lifetime of a signed URL
	urlHost   string            // device.url_host; "" means the request's Host
	dataDir   string
	// tenantName names a tenant (for its TUF repository directory).
	tenantName func(ctx context.Context, id int64) (string, error)
	broker     *mqttapi.Broker // nil without MQTT
	logger     *slog.Logger
	now        func() time.Time

	mu      sync.Mutex
	targets map[string]*tufTargets // by repository directory
}

// tufTargets is a tenant's published targets.json as read at modTime.
type tufTargets struct {
	modTime time.Time
	size    int64
	byPath  map[string]string // target path → SHA-256 hex
}

// Limits of the device's update requests.
const (
	maxUpdateReportBytes = 4096
	maxUpdateReason      = 1024
	maxTUFMetadataBytes  = 64 << 20
)

// routes mounts the HTTPS routes.
func (u *deviceUpdates) routes(l *deviceapi.Server) {
	l.HandleRemediation("GET /device/v1/update", http.HandlerFunc(u.getUpdate))
	l.HandleRemediation("POST /device/v1/update/status", http.HandlerFunc(u.postStatus))
	l.HandleRemediation("POST /device/v1/software", http.HandlerFunc(u.postSoftware))
	l.HandleRemediation("GET /device/v1/tuf/{file}", http.HandlerFunc(u.getMetadata))
	l.HandleRemediation("GET /device/v1/tuf/targets/{path...}", http.HandlerFunc(u.getTarget))
}

// updateDocument is the answer of GET /device/v1/update (documented in
// docs/ARCHITECTURE.md, device channel).
type updateDocument struct {
	RolloutID string         `json:"rollout_id"`
	Attempt   int            `json:"attempt"`
	Release   updateRelease  `json:"release"`
	Artifact  updateArtifact `json:"artifact"`
	Delta     *updateDelta   `json:"delta,omitempty"`
	TUF       updateTUF      `json:"tuf"`
}

type updateRelease struct {
	ID              string             `json:"id"`
	Model           string             `json:"model"`
	Version         string             `json:"version"`
	Kind            cradle.ReleaseKind `json:"kind"`
	SecurityCounter uint32             `json:"security_counter"`
	SHA256          string             `json:"sha256"`
	Size            int64              `json:"size"`
	TargetPath      string             `json:"target_path"`
}

type updateArtifact struct {
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

type updateDelta struct {
	URL        string `json:"url"`
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size"`
	FromSHA256 string `json:"from_sha256"`
}

type updateTUF struct {
	MetadataURL string `json:"metadata_url"`
}

// updateNotice is the MQTT message on a device's update topic.
type updateNotice struct {
	RolloutID string `json:"rollout_id"`
	Attempt   int    `json:"attempt"`
}

func (u *deviceUpdates) fail(w http.ResponseWriter, serial string, err error) {
	if code := cradle.ErrorCode(err); code != cradle.EINTERNAL && code != cradle.ENOTFOUND {
		u.logger.Warn("device update request refused", "device", serial, "err", cradle.ErrorMessage(err))
	}
	writeDeviceError(w, u.logger.With("device", serial), err)
}

// baseURL is where the device reaches this listener: device.url_host, or
// the host it asked for.
func (u *deviceUpdates) baseURL(r *http.Request) string {
	if u.urlHost != "" {
		return "https://" + u.urlHost
	}
	return "https://" + r.Host
}

// parseSHA256Hex checks a digest given by a device: 64 lower-case hex
// digits. what names it in the error.
func parseSHA256Hex(what, s string) error {
	if _, err := artifact.ParseDigest(s); err != nil {
		return cradle.Errorf(cradle.EINVALID, "%s %q is not a SHA-256: give 64 lower-case hex digits", what, clipText(s, 80))
	}
	return nil
}

// clipText shortens s for an error message.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (u *deviceUpdates) getUpdate(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, u.logger, err)
		return
	}
	q := r.URL.Query()
	for k, v := range q {
		if k != "running" || len(v) != 1 {
			u.fail(w, dev.Serial, cradle.Errorf(cradle.EINVALID, "query parameter %q: the only parameter is running=<sha256 of the image the device runs>, once", clipText(k, 40)))
			return
		}
	}
	running := q.Get("running")
	if running != "" {
		if err := parseSHA256Hex("running", running); err != nil {
			u.fail(w, dev.Serial, err)
			return
		}
	}
	p, err := u.svc.PendingUpdate(r.Context(), dev.Serial, running)
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	doc, err := u.document(r, dev, p)
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeDeviceJSON(w, http.StatusOK, doc)
}

// signURL signs a download URL of the artifact sha (of release relID) for
// dev, on the host the device reached, and returns it with its expiry.
func (u *deviceUpdates) signURL(r *http.Request, dev *cradle.Device, relID, sha string) (string, time.Time, error) {
	d, err := artifact.ParseDigest(sha)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("release %s: artifact digest %q: %w", relID, sha, err)
	}
	exp := u.now().Add(u.ttl)
	return u.baseURL(r) + u.artifacts.Signer.Sign(artifact.Ticket{Digest: d, Device: downloadDevice(dev.TenantID, dev.Serial), Expires: exp}), exp, nil
}

// document builds the update document of p for dev, with URLs signed for
// it.
func (u *deviceUpdates) document(r *http.Request, dev *cradle.Device, p *cradle.PendingUpdate) (*updateDocument, error) {
	sign := func(sha string) (string, error) {
		url, _, err := u.signURL(r, dev, p.Release.ID, sha)
		return url, err
	}
	rel := p.Release
	doc := &updateDocument{
		RolloutID: p.RolloutID, Attempt: p.Attempt,
		Release: updateRelease{ID: rel.ID, Model: rel.Model, Version: rel.Version, Kind: rel.Kind, SecurityCounter: rel.SecurityCounter,
			SHA256: rel.SHA256, Size: rel.Size, TargetPath: rel.TargetPath},
		Artifact: updateArtifact{SHA256: rel.SHA256, Size: rel.Size},
		TUF:      updateTUF{MetadataURL: u.baseURL(r) + "/device/v1/tuf/"},
	}
	var err error
	if doc.Artifact.URL, err = sign(rel.SHA256); err != nil {
		return nil, err
	}
	if p.Delta != nil {
		doc.Delta = &updateDelta{SHA256: p.Delta.SHA256, Size: p.Delta.Size, FromSHA256: p.Delta.FromSHA256}
		if doc.Delta.URL, err = sign(p.Delta.SHA256); err != nil {
			return nil, err
		}
	}
	return doc, nil
}

// readDeviceBody reads a small JSON request body, at most limit bytes.
func readDeviceBody(w http.ResponseWriter, r *http.Request, limit int64, what string) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, cradle.Errorf(cradle.ETOOLARGE, "%s is larger than %d bytes", what, limit)
		}
		return nil, cradle.Errorf(cradle.EINVALID, "reading the %s: %v", what, err)
	}
	return body, nil
}

// decodeStrict decodes one JSON object into v: unknown fields and
// trailing data are refused.
func decodeStrict(data []byte, what string, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return cradle.Errorf(cradle.EINVALID, "%s is not valid: %v", what, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return cradle.Errorf(cradle.EINVALID, "%s has data after its JSON object", what)
	}
	return nil
}

// parseUpdateReport reads a device's report on its attempt: a JSON
// cradle.UpdateReport with rollout_id, attempt (at least 1) and state;
// the store checks the state and the rollout.
func parseUpdateReport(data []byte) (cradle.UpdateReport, error) {
	var rep cradle.UpdateReport
	if err := decodeStrict(data, "update report", &rep); err != nil {
		return cradle.UpdateReport{}, err
	}
	switch {
	case rep.RolloutID == "":
		return rep, cradle.Errorf(cradle.EINVALID, "update report: rollout_id is required (from GET /device/v1/update)")
	case len(rep.RolloutID) > 64:
		return rep, cradle.Errorf(cradle.EINVALID, "update report: rollout_id is longer than 64 characters")
	case rep.Attempt < 1:
		return rep, cradle.Errorf(cradle.EINVALID, "update report: attempt %d: give the attempt of GET /device/v1/update (at least 1)", rep.Attempt)
	case rep.State == "":
		return rep, cradle.Errorf(cradle.EINVALID, "update report: state is required: %s, %s, %s, %s or %s",
			cradle.UpdateDownloading, cradle.UpdateInstalling, cradle.UpdateSucceeded, cradle.UpdateFailed, cradle.UpdateTimedOut)
	case len(rep.Reason) > maxUpdateReason:
		return rep, cradle.Errorf(cradle.EINVALID, "update report: reason is longer than %d bytes", maxUpdateReason)
	}
	return rep, nil
}

// parseSoftwareReport reads {"sha256": HEX}.
func parseSoftwareReport(data []byte) (string, error) {
	var rep struct {
		SHA256 string `json:"sha256"`
	}
	if err := decodeStrict(data, "software report", &rep); err != nil {
		return "", err
	}
	if err := parseSHA256Hex("software report: sha256", rep.SHA256); err != nil {
		return "", err
	}
	return rep.SHA256, nil
}

func (u *deviceUpdates) postStatus(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, u.logger, err)
		return
	}
	body, err := readDeviceBody(w, r, maxUpdateReportBytes, "update report")
	if err == nil {
		var rep cradle.UpdateReport
		if rep, err = parseUpdateReport(body); err == nil {
			err = u.svc.ReportUpdate(r.Context(), dev.Serial, rep)
		}
	}
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (u *deviceUpdates) postSoftware(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, u.logger, err)
		return
	}
	body, err := readDeviceBody(w, r, maxUpdateReportBytes, "software report")
	if err == nil {
		var sha string
		if sha, err = parseSoftwareReport(body); err == nil {
			err = u.svc.ReportSoftware(r.Context(), dev.Serial, sha)
		}
	}
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// tufMetadataName matches the metadata files a TUF client fetches with
// consistent snapshots: root.json, N.root.json, targets.json,
// N.targets.json, snapshot.json, N.snapshot.json and timestamp.json.
var tufMetadataName = regexp.MustCompile(`^(?:(?:[1-9][0-9]{0,18}\.)?(?:root|targets|snapshot)|timestamp)\.json$`)

// repositoryDir returns the TUF repository directory of the device's
// tenant.
func (u *deviceUpdates) repositoryDir(ctx context.Context, dev *cradle.Device) (string, error) {
	name, err := u.tenantName(ctx, dev.TenantID)
	if err != nil {
		return "", fmt.Errorf("tenant of device %s: %w", dev.Serial, err)
	}
	if err := cradle.ValidateTenantName(name); err != nil {
		return "", fmt.Errorf("tenant %d: %w", dev.TenantID, err)
	}
	return ota.RepositoryDir(u.dataDir, name), nil
}

// remediation returns the remediation a suspended device may fetch now:
// its pending update, when that is a remediation release (EFORBIDDEN
// otherwise). It returns nil for a device that is not suspended.
func (u *deviceUpdates) remediation(ctx context.Context, dev *cradle.Device) (*cradle.PendingUpdate, error) {
	if dev.State != cradle.StateSuspended {
		return nil, nil
	}
	p, err := u.svc.PendingUpdate(ctx, dev.Serial, "")
	if cradle.ErrorCode(err) == cradle.ENOTFOUND || (err == nil && !p.Release.Remediation) {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "device %q is suspended: it may fetch update metadata and targets only while a remediation update is pending for it", dev.Serial)
	}
	return p, err
}

func (u *deviceUpdates) getMetadata(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err == nil {
		_, err = u.remediation(r.Context(), dev)
	}
	if err != nil {
		writeDeviceError(w, u.logger, err)
		return
	}
	name := r.PathValue("file")
	if !tufMetadataName.MatchString(name) {
		writeDeviceError(w, u.logger, cradle.Errorf(cradle.ENOTFOUND, "no TUF metadata %q: the files are root.json, N.root.json, targets.json, N.targets.json, snapshot.json, N.snapshot.json and timestamp.json", clipText(name, 80)))
		return
	}
	dir, err := u.repositoryDir(r.Context(), dev)
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	f, err := os.Open(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		writeDeviceError(w, u.logger, cradle.Errorf(cradle.ENOTFOUND, "TUF metadata %s not found: the tenant has no such version, or no TUF repository yet", name))
		return
	}
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTUFMetadataBytes+1))
	if err == nil && len(data) > maxTUFMetadataBytes {
		err = fmt.Errorf("TUF metadata %s is over %d bytes", name, maxTUFMetadataBytes)
	}
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(data)
}

// parseTargetURLPath splits what follows /device/v1/tuf/targets/ in a
// consistent-snapshot target URL, "DIR/HEX.NAME" (DIR may be empty, or
// several levels), into the target path "DIR/NAME" and the digest HEX. ok
// is false for anything else, empty or dot segments included.
func parseTargetURLPath(p string) (path string, digest artifact.Digest, ok bool) {
	dir, base := "", p
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		dir, base = p[:i], p[i+1:]
		for _, seg := range strings.Split(dir, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return "", artifact.Digest{}, false
			}
		}
	}
	hexDigest, name, found := strings.Cut(base, ".")
	if !found || name == "" || name == "." || name == ".." {
		return "", artifact.Digest{}, false
	}
	d, err := artifact.ParseDigest(hexDigest)
	if err != nil {
		return "", artifact.Digest{}, false
	}
	if dir != "" {
		name = dir + "/" + name
	}
	return name, d, true
}

// parseTargetsMetadata reads the target paths and SHA-256 digests (hex)
// of a targets.json. Only what access control needs is read; the file is
// the server's own, its signatures are for the device to check.
func parseTargetsMetadata(data []byte) (map[string]string, error) {
	var doc struct {
		Signed struct {
			Type    string `json:"_type"`
			Targets map[string]struct {
				Hashes map[string]string `json:"hashes"`
			} `json:"targets"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("targets metadata: %w", err)
	}
	if doc.Signed.Type != "targets" {
		return nil, fmt.Errorf("targets metadata: _type is %q, want \"targets\"", clipText(doc.Signed.Type, 40))
	}
	out := make(map[string]string, len(doc.Signed.Targets))
	for path, t := range doc.Signed.Targets {
		h := strings.ToLower(t.Hashes["sha256"])
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
			return nil, fmt.Errorf("targets metadata: target %q has no valid sha256", clipText(path, 80))
		}
		out[path] = h
	}
	return out, nil
}

// publishedTargets returns the targets of the repository in dir, read
// again when targets.json changed (a publish replaces it by a rename).
// A repository without targets.json has no targets.
func (u *deviceUpdates) publishedTargets(dir string) (map[string]string, error) {
	file := filepath.Join(dir, "targets.json")
	fi, err := os.Stat(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	c := u.targets[dir]
	u.mu.Unlock()
	if c != nil && c.modTime.Equal(fi.ModTime()) && c.size == fi.Size() {
		return c.byPath, nil
	}
	if fi.Size() > maxTUFMetadataBytes {
		return nil, fmt.Errorf("%s is over %d bytes", file, maxTUFMetadataBytes)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	byPath, err := parseTargetsMetadata(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	u.mu.Lock()
	if u.targets == nil {
		u.targets = map[string]*tufTargets{}
	}
	u.targets[dir] = &tufTargets{modTime: fi.ModTime(), size: fi.Size(), byPath: byPath}
	u.mu.Unlock()
	return byPath, nil
}

func (u *deviceUpdates) getTarget(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	var fix *cradle.PendingUpdate
	if err == nil {
		fix, err = u.remediation(r.Context(), dev)
	}
	if err != nil {
		writeDeviceError(w, u.logger, err)
		return
	}
	path, digest, ok := parseTargetURLPath(r.PathValue("path"))
	if !ok {
		writeDeviceError(w, u.logger, cradle.Errorf(cradle.ENOTFOUND, "no TUF target at %q: target URLs are DIR/SHA256.NAME under /device/v1/tuf/targets/", clipText(r.PathValue("path"), 120)))
		return
	}
	if fix != nil && !remediationTarget(&fix.Release, path) {
		writeDeviceError(w, u.logger, cradle.Errorf(cradle.EFORBIDDEN, "device %q is suspended: of the targets it may fetch only those of remediation release %s", dev.Serial, fix.Release.ID))
		return
	}
	dir, err := u.repositoryDir(r.Context(), dev)
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	targets, err := u.publishedTargets(dir)
	if err != nil {
		u.fail(w, dev.Serial, err)
		return
	}
	if targets[path] != digest.String() {
		writeDeviceError(w, u.logger, cradle.Errorf(cradle.ENOTFOUND, "no TUF target %s with SHA-256 %s in this tenant's published targets", clipText(path, 120), digest))
		return
	}
	u.artifacts.ServeBlob(w, r, digest, downloadDevice(dev.TenantID, dev.Serial))
}

// remediationTarget says whether path is rel's target or one of its
// patches.
func remediationTarget(rel *cradle.Release, path string) bool {
	if path == rel.TargetPath {
		return true
	}
	for _, d := range rel.Deltas {
		if path == d.TargetPath {
			return true
		}
	}
	return false
}

// notify publishes an update notice to each of serials (devices of
// tenantID) that is connected over MQTT and has an update pending; the
// rollout scheduler calls it when it starts devices. The others learn of
// their update when they subscribe or poll GET /device/v1/update.
func (u *deviceUpdates) notify(ctx context.Context, tenantID int64, serials []string) {
	if u.broker == nil {
		return
	}
	for _, serial := range serials {
		if ctx.Err() != nil {
			return
		}
		if u.broker.Sessions(mqttapi.Device{TenantID: tenantID, Serial: serial}) == 0 {
			continue
		}
		u.publish(ctx, tenantID, serial)
	}
}

// publish sends serial its pending update notice, if it has one.
func (u *deviceUpdates) publish(ctx context.Context, tenantID int64, serial string) {
	ctx = cradle.NewContextWithActor(ctx, deviceActor(tenantID, serial))
	p, err := u.svc.PendingUpdate(ctx, serial, "")
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return
	}
	if err != nil {
		u.logger.Error("pending update for an MQTT notice", "device", serial, "err", err)
		return
	}
	msg, err := json.Marshal(updateNotice{RolloutID: p.RolloutID, Attempt: p.Attempt})
	if err != nil {
		u.logger.Error("update notice", "device", serial, "err", err)
		return
	}
	if err := u.broker.Publish(mqttapi.Device{TenantID: tenantID, Serial: serial}, mqttapi.TopicUpdate, msg, 1); err != nil {
		u.logger.Warn("publishing an update notice", "device", serial, "err", err)
	}
}

// onSubscribe sends a device its pending update notice once it subscribed
// to a filter that matches its update topic.
func (u *deviceUpdates) onSubscribe(tenantID int64, serial, filter string) {
	if u.broker != nil && filterMatches(filter, mqttapi.DeviceTopic(serial, mqttapi.TopicUpdate)) {
		u.publish(context.Background(), tenantID, serial)
	}
}
