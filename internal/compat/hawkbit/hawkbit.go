// Package hawkbit serves hawkBit's Direct Device Integration API (DDI v1)
// to unmodified hawkBit clients (SWUpdate's suricatta, rauc-hawkbit-updater),
// mapped onto Cradle's devices, rollouts and releases.
//
// Paths are /{tenant}/controller/v1/{controllerId}/…; the tenant is the
// Cradle tenant's name, compared without case (hawkBit's "DEFAULT" is
// Cradle's "default"), and the controller id is the device serial. A
// request authenticates with "Authorization: TargetToken <t>" (a token of
// that device), "GatewayToken <t>" (a token of the tenant; the device must
// be registered already, and be a hawkBit device or a provisioned one on
// its first contact: a gateway token never takes over a device of another
// protocol) or the device's client certificate (its LDevID) on the TLS
// connection; then it acts as the device. Refusals: 401 for missing, wrong
// or revoked credentials, 403 for a suspended, RMA or end-of-life device,
// an IDevID or a gateway token used for a device it may not act for.
//
// An action is one attempt of one device in one rollout
// (cradle.ProtocolService.DDIAction); its id is a decimal string below
// 2^31. The base poll offers deploymentBase while the attempt is in flight
// in a running or paused rollout, cancelAction once the rollout is aborted,
// configData while the device has reported no attributes, and installedBase
// for the attempt that installed what the device runs. Feedback maps onto
// update reports (cradle.UpdateService.ReportUpdate): proceeding, download
// and downloaded are progress; closed/success is success (and the release
// becomes the device's software); closed/failure, rejected and canceled are
// failures whose details become the reason and the attempt's log. Feedback
// on an action that is unknown or no longer in flight answers 410, as
// hawkBit does for an inactive one. Artifacts are served at
// softwaremodules/{actionId}/artifacts/{file} (Range supported) with
// "<file>.MD5SUM"; the module id is the action id, so a device fetches only
// what it was offered. MD5 and SHA-1, which DDI clients check and a release
// does not record, are computed from the artifact store once per artifact
// and kept in memory (a bounded cache, as what actions stand for).
package hawkbit

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/compat/pollcache"
)

// DefaultPollingSleep is the polling interval told to devices.
const DefaultPollingSleep = 5 * time.Minute

// DefaultPollCache is how long the base poll trusts what it read of a
// device's update (Handler.PollCache). Invalidate ends it at once when the
// rollout scheduler starts the device, and the device's own feedback when
// it reports; the TTL bounds what else may change meanwhile: an abort
// (the cancelAction link comes up to this late), a timeout, a start by
// another replica's scheduler. Attributes and software are trusted longer:
// only the device changes them, through this handler.
const (
	DefaultPollCache = 5 * time.Second
	attrsTTL         = time.Minute
	softwareTTL      = time.Minute
)

// Invalidate forgets what the base poll read of the devices' updates: the
// rollout scheduler has just started them (its Notify).
func (h *Handler) Invalidate(tenantID int64, serials []string) {
	h.polls.Invalidate(tenantID, serials)
}

// pollCache is the TTL of the base poll's reading; 0 when disabled.
func (h *Handler) pollCache() time.Duration {
	switch {
	case h.PollCache < 0:
		return 0
	case h.PollCache == 0:
		return DefaultPollCache
	}
	return h.PollCache
}

// pollSeen is a cached reading of the device's update: p and a nil when
// it had none.
type pollSeen struct {
	p *cradle.PendingUpdate
	a *cradle.DDIAction
}

// findSoftware is FindSoftware through the cache (nil: none reported, or
// the store failed, which is logged).
func (h *Handler) findSoftware(ctx context.Context, dev *cradle.Device) *cradle.DeviceSoftware {
	sw, err := h.software.Fill(dev.TenantID, dev.Serial, softwareTTL, func() (*cradle.DeviceSoftware, error) {
		sw, err := h.Updates.FindSoftware(system(ctx, dev.TenantID), dev.Serial)
		if cradle.ErrorCode(err) == cradle.ENOTFOUND {
			return nil, nil
		}
		return sw, err
	})
	if err != nil {
		h.logger().Warn("hawkBit base poll: software of the device", "device", dev.Serial, "err", err)
		return nil
	}
	return sw
}

// reportSoftware records what the device runs, and drops what the cache
// held of it.
func (h *Handler) reportSoftware(ctx context.Context, dev *cradle.Device, rel *cradle.Release) error {
	err := h.Updates.ReportSoftware(ctx, dev.Serial, rel.SHA256)
	h.software.Delete(dev.TenantID, dev.Serial)
	return err
}

// Handler serves the DDI API. Set the fields; the zero values of Logger,
// PollingSleep and Now have defaults.
type Handler struct {
	Protocol cradle.ProtocolService
	Updates  cradle.UpdateService
	Devices  cradle.DeviceService
	Rollouts cradle.RolloutService
	Releases cradle.ReleaseService
	// Artifacts reads artifacts (for their MD5 and SHA-1); Blobs serves
	// them with Range.
	Artifacts artifact.Store
	Blobs     *artifact.Handler
	// TenantName names a tenant by id.
	TenantName func(ctx context.Context, id int64) (string, error)
	// CheckPeer checks a client certificate chain presented on the
	// request's TLS connection and returns its device; nil disables
	// certificate authentication. A refusal is a *cradle.Error
	// (EUNAUTHORIZED, EFORBIDDEN) the device is told; any other error is
	// answered 500 "internal error" and logged.
	CheckPeer func(r *http.Request, chain []*x509.Certificate) (*cradle.Device, error)
	// DownloadDevice makes the device name recorded with a download
	// ("<tenant id>/<serial>" on the server); nil records the serial.
	DownloadDevice func(tenantID int64, serial string) string
	PollingSleep   time.Duration
	// PollCache is how long a base poll's reading of the device's pending
	// update is trusted: 0 means DefaultPollCache, a negative value reads
	// the store on every poll. Feedback always reads it afresh.
	PollCache time.Duration
	Logger    *slog.Logger

	// Bounded caches of answers that do not change, made on first use.
	caches        sync.Once
	hashes        *lru[string, *artifactHashes] // sha256 hex → its MD5 and SHA-1
	actions       *lru[actionKey, *actionInfo]  // immutable once made
	installedSeen *lru[actionKey, bool]         // whether the action installed its release

	admit sync.Map // tenant/serial → time of the last AdmitDevice
	// installed remembers the action that installed what a device runs.
	installed sync.Map // installedKey → installedAt
	// Caches of the base poll's reads, per device: its update (until
	// Invalidate or the TTL), whether it has attributes, what it runs.
	// The handler's own writes drop them, after writing.
	polls    pollcache.Cache[pollSeen]
	hasAttrs pollcache.Cache[bool]
	software pollcache.Cache[*cradle.DeviceSoftware]
}

// artifactHashes are an artifact's MD5 and SHA-1, computed once.
type artifactHashes struct {
	once      sync.Once
	md5, sha1 string
	err       error
}

type actionKey struct {
	tenant int64
	id     int64
}

// actionInfo is what an action stands for; it never changes.
type actionInfo struct {
	action  cradle.DDIAction
	release *cradle.Release
}

func (h *Handler) makeCaches() {
	h.hashes = newLRU[string, *artifactHashes](maxHashes)
	h.actions = newLRU[actionKey, *actionInfo](maxActions)
	h.installedSeen = newLRU[actionKey, bool](maxInstalledSeen)
}

// Match reports whether a path is under /{tenant}/controller/v1/.
func Match(path string) bool {
	_, ok, _ := ParsePath(path)
	return ok
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.caches.Do(h.makeCaches)
	rt, ok, err := ParsePath(r.URL.Path)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if err != nil {
		h.fail(w, r, "", err)
		return
	}
	if !methodAllowed(w, r, rt) {
		return
	}
	dev, err := h.authenticate(r, rt)
	if err != nil {
		h.fail(w, r, rt.ControllerID, err)
		return
	}
	ctx := cradle.NewContextWithActor(r.Context(), cradle.Actor{TenantID: dev.TenantID, Role: cradle.RoleDevice, Kind: "device", ID: dev.Serial})
	if r.Header.Get("Authorization") == "" {
		ctx = cradle.NewContextWithOwnCredential(ctx) // its client certificate: the device's own choice of protocol
	}
	if err := h.admitDevice(ctx, dev); err != nil {
		h.fail(w, r, dev.Serial, err)
		return
	}
	r = r.WithContext(ctx)
	switch {
	case rt.Resource == "":
		err = h.getBase(w, r, dev)
	case rt.Resource == "deploymentBase" && !rt.Feedback:
		err = h.getDeployment(w, r, dev, rt.ActionID)
	case rt.Resource == "deploymentBase":
		err = h.postFeedback(w, r, dev, rt.ActionID)
	case rt.Resource == "cancelAction" && !rt.Feedback:
		err = h.getCancel(w, r, dev, rt.ActionID)
	case rt.Resource == "cancelAction":
		err = h.postCancelFeedback(w, r, dev, rt.ActionID)
	case rt.Resource == "configData":
		err = h.putConfigData(w, r, dev)
	case rt.Resource == "installedBase" && rt.ActionID != 0:
		err = h.getInstalled(w, r, dev, rt.ActionID)
	case rt.Resource == "installedBase":
		err = h.putInstalled(w, r, dev)
	case rt.Resource == "softwaremodules":
		err = h.getArtifact(w, r, dev, rt)
	}
	if err != nil {
		h.fail(w, r, dev.Serial, err)
	}
}

// methodAllowed answers 405 for a method the resource does not take.
func methodAllowed(w http.ResponseWriter, r *http.Request, rt Route) bool {
	allow := "GET"
	switch {
	case rt.Feedback:
		allow = "POST"
	case rt.Resource == "configData":
		allow = "PUT"
	case rt.Resource == "installedBase" && rt.ActionID == 0:
		allow = "PUT"
	case rt.Resource == "softwaremodules":
		allow = "GET, HEAD"
	}
	if r.Method == allow || allow == "GET, HEAD" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return true
	}
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, cradle.Error{Code: cradle.EINVALID, Message: r.Method + " is not allowed here: use " + allow})
	return false
}

// system is a system actor of the device's tenant, for the reads a device
// role may not make itself (its own software, a rollout's release).
func system(ctx context.Context, tenant int64) context.Context {
	return cradle.NewContextWithActor(ctx, cradle.SystemActor(tenant, "hawkbit"))
}

// authenticate finds the device the request speaks for and checks that it
// is the URL's controller in the URL's tenant.
func (h *Handler) authenticate(r *http.Request, rt Route) (*cradle.Device, error) {
	ctx := r.Context()
	var dev *cradle.Device
	var tenant int64
	if authz := r.Header.Get("Authorization"); authz != "" {
		scheme, secret, _ := strings.Cut(authz, " ")
		secret = strings.TrimSpace(secret)
		var kind cradle.DeviceTokenKind
		switch {
		case strings.EqualFold(scheme, "TargetToken"):
			kind = cradle.TokenHawkbitTarget
		case strings.EqualFold(scheme, "GatewayToken"):
			kind = cradle.TokenGateway
		default:
			return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "authorization scheme %q is not accepted: send \"TargetToken <token>\" or \"GatewayToken <token>\", or the device's client certificate", clip(scheme, 32))
		}
		auth, err := h.Protocol.AuthenticateDeviceToken(cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "hawkbit")), secret)
		if err != nil {
			return nil, err
		}
		if auth.Token.Kind != kind {
			return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "the token is a %s token, sent as a %s", auth.Token.Kind, scheme)
		}
		tenant = auth.TenantID
		if kind == cradle.TokenHawkbitTarget {
			if auth.Device == nil || auth.Device.Serial != rt.ControllerID {
				return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "the target token is not controller %q's", rt.ControllerID)
			}
			dev = auth.Device
		} else {
			if err := h.checkTenant(ctx, tenant, rt.Tenant); err != nil {
				return nil, err
			}
			d, err := h.Devices.FindDeviceBySerial(system(ctx, tenant), rt.ControllerID)
			if cradle.ErrorCode(err) == cradle.ENOTFOUND {
				return nil, cradle.Errorf(cradle.ENOTFOUND, "controller %q is not registered in tenant %q: register the device first (cradle device create), then poll", rt.ControllerID, rt.Tenant)
			} else if err != nil {
				return nil, err
			}
			if err := gatewayMay(d); err != nil {
				return nil, err
			}
			dev = d
		}
	} else if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && h.CheckPeer != nil {
		d, err := h.CheckPeer(r, r.TLS.PeerCertificates)
		if err != nil {
			return nil, err
		}
		if d.Serial != rt.ControllerID {
			return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "the client certificate is device %q's, not controller %q's", d.Serial, rt.ControllerID)
		}
		dev, tenant = d, d.TenantID
	} else {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "no credentials: send \"Authorization: TargetToken <token>\" (or GatewayToken), or the device's client certificate")
	}
	if dev.TenantID != tenant {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "the credentials are not of device %q's tenant", dev.Serial)
	}
	if err := h.checkTenant(ctx, tenant, rt.Tenant); err != nil {
		return nil, err
	}
	switch dev.State {
	case cradle.StateSuspended, cradle.StateRMA, cradle.StateEOL:
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "device %q is %s: it may not use the device API; an operator must move it back to deployed first", dev.Serial, dev.State)
	}
	return dev, nil
}

// gatewayMay reports whether a gateway token may act for a device: one
// that talks hawkBit already, or one still provisioned that has never
// talked (its first contact admits it as a hawkBit device). A tenant's
// gateway token must not take over a device of the native or Mender API,
// whose protocol AdmitDevice would switch.
func gatewayMay(d *cradle.Device) error {
	p := d.Protocol
	if p == "" {
		p = cradle.ProtocolCradle
	}
	switch {
	case p == cradle.ProtocolHawkbit:
		return nil
	case p == cradle.ProtocolCradle && d.State == cradle.StateProvisioned:
		return nil
	case p == cradle.ProtocolCradle:
		return cradle.Errorf(cradle.EFORBIDDEN, "a gateway token may not act for device %q: it is %s and not a hawkBit device; a gateway token admits only a provisioned device on first contact, or one that talks hawkBit already (use the device's target token or certificate)", d.Serial, d.State)
	}
	return cradle.Errorf(cradle.EFORBIDDEN, "a gateway token may not act for device %q: it talks the %s protocol, not hawkBit", d.Serial, p)
}

// checkTenant compares the URL's tenant with the credentials' tenant.
func (h *Handler) checkTenant(ctx context.Context, id int64, name string) error {
	tn, err := h.TenantName(ctx, id)
	if err != nil {
		return fmt.Errorf("hawkbit: tenant %d: %w", id, err)
	}
	if !strings.EqualFold(tn, name) {
		return cradle.Errorf(cradle.EUNAUTHORIZED, "the credentials are not of tenant %q", name)
	}
	return nil
}

// admitInterval is how often a polling device's protocol and state are
// re-recorded; AdmitDevice writes only on a change, but still reads.
const admitInterval = time.Minute

func (h *Handler) admitDevice(ctx context.Context, dev *cradle.Device) error {
	key := strconv.FormatInt(dev.TenantID, 10) + "/" + dev.Serial
	if dev.Protocol == cradle.ProtocolHawkbit && dev.State == cradle.StateDeployed {
		if t, ok := h.admit.Load(key); ok && time.Since(t.(time.Time)) < admitInterval {
			return nil
		}
	}
	if _, err := h.Protocol.AdmitDevice(ctx, dev.Serial, cradle.ProtocolHawkbit); err != nil {
		return err
	}
	h.admit.Store(key, time.Now())
	return nil
}

// link is a HAL link.
type link struct {
	Href string `json:"href"`
}

type baseDoc struct {
	Config struct {
		Polling struct {
			Sleep string `json:"sleep"`
		} `json:"polling"`
	} `json:"config"`
	Links map[string]link `json:"_links"`
}

// baseURL is the controller's URL as the device reached it.
func baseURL(r *http.Request, dev *cradle.Device) string {
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	rt, _, _ := ParsePath(r.URL.Path)
	return scheme + "://" + r.Host + "/" + rt.Tenant + "/controller/v1/" + dev.Serial
}

func sleepText(d time.Duration) string {
	s := int64(d / time.Second)
	if s < 1 {
		s = 1
	}
	if s > 99*3600+59*60+59 {
		s = 99*3600 + 59*60 + 59
	}
	return fmt.Sprintf("%02d:%02d:%02d", s/3600, s/60%60, s%60)
}

// installable reports whether a DDI client can install a release kind:
// SWUpdate installs .swu images, RAUC its bundles (opaque files here).
func installable(k cradle.ReleaseKind) bool {
	return k == cradle.ReleaseSWUpdate || k == cradle.ReleaseFile
}

// current returns the device's attempt in flight and its action; p is nil
// when it has none.
func (h *Handler) current(ctx context.Context, dev *cradle.Device) (*cradle.PendingUpdate, *cradle.DDIAction, error) {
	seen, err := h.polls.Fill(dev.TenantID, dev.Serial, h.pollCache(), func() (pollSeen, error) {
		p, err := h.Updates.PendingUpdate(ctx, dev.Serial, "")
		if cradle.ErrorCode(err) == cradle.ENOTFOUND {
			return pollSeen{}, nil
		} else if err != nil {
			return pollSeen{}, err
		}
		a, err := h.Protocol.DDIAction(ctx, dev.Serial, p.RolloutID, p.Attempt)
		if err != nil {
			return pollSeen{}, err
		}
		h.remember(dev.TenantID, a, &p.Release)
		return pollSeen{p: p, a: a}, nil
	})
	return seen.p, seen.a, err
}

func (h *Handler) getBase(w http.ResponseWriter, r *http.Request, dev *cradle.Device) error {
	ctx := r.Context()
	var doc baseDoc
	sleep := h.PollingSleep
	if sleep <= 0 {
		sleep = DefaultPollingSleep
	}
	doc.Config.Polling.Sleep = sleepText(sleep)
	doc.Links = map[string]link{}
	base := baseURL(r, dev)
	p, a, err := h.current(ctx, dev)
	if err != nil {
		return err
	}
	switch {
	case p == nil:
	case p.RolloutState == cradle.RolloutAborted:
		doc.Links["cancelAction"] = link{base + "/cancelAction/" + strconv.FormatInt(a.ID, 10)}
	case !installable(p.Release.Kind):
		reason := fmt.Sprintf("release %s is a %s artifact, which a hawkBit DDI client (SWUpdate, RAUC) cannot install: roll out a swupdate or file release to this device", p.Release.ID, p.Release.Kind)
		err := h.Updates.ReportUpdate(ctx, dev.Serial, cradle.UpdateReport{RolloutID: p.RolloutID, Attempt: p.Attempt, State: cradle.UpdateFailed, Reason: reason})
		h.polls.Delete(dev.TenantID, dev.Serial)
		if err != nil {
			return err
		}
		h.logger().Warn("hawkBit device offered a release it cannot install", "device", dev.Serial, "release", p.Release.ID, "kind", p.Release.Kind)
	default:
		doc.Links["deploymentBase"] = link{base + "/deploymentBase/" + strconv.FormatInt(a.ID, 10) + "?c=" + etag(a.ID, p.Release.SHA256)}
	}
	has, err := h.hasAttrs.Fill(dev.TenantID, dev.Serial, attrsTTL, func() (bool, error) {
		attrs, err := h.Protocol.FindDeviceAttributes(ctx, dev.Serial)
		return len(attrs) > 0, err
	})
	if err != nil {
		return err
	}
	if !has {
		doc.Links["configData"] = link{base + "/configData"}
	}
	if id, ok := h.installedAction(ctx, dev); ok {
		doc.Links["installedBase"] = link{base + "/installedBase/" + strconv.FormatInt(id, 10)}
	}
	writeJSON(w, http.StatusOK, &doc)
	return nil
}

// etag is the c parameter of a deploymentBase link: it changes when the
// deployment does, so a client may cache the document.
func etag(id int64, sha string) string {
	f := fnv.New32a()
	f.Write([]byte(strconv.FormatInt(id, 10) + "/" + sha))
	return strconv.FormatInt(int64(f.Sum32()&0x7fffffff), 10)
}

// remember keeps what an action stands for.
func (h *Handler) remember(tenant int64, a *cradle.DDIAction, rel *cradle.Release) *actionInfo {
	return h.actions.add(actionKey{tenant, a.ID}, &actionInfo{action: *a, release: rel}, 0)
}

// action finds one of the device's actions and its release. ENOTFOUND for
// an unknown id or another device's.
func (h *Handler) action(ctx context.Context, dev *cradle.Device, id int64) (*actionInfo, error) {
	if info, ok := h.actions.get(actionKey{dev.TenantID, id}); ok {
		if info.action.Serial == dev.Serial {
			return info, nil
		}
		return nil, cradle.Errorf(cradle.ENOTFOUND, "action %d is not device %q's", id, dev.Serial)
	}
	a, err := h.Protocol.FindDDIAction(ctx, dev.Serial, id)
	if err != nil {
		return nil, err
	}
	sys := system(ctx, dev.TenantID)
	ro, err := h.Rollouts.FindRollout(sys, a.RolloutID)
	if err != nil {
		return nil, fmt.Errorf("hawkbit: rollout of action %d: %w", id, err)
	}
	rel, err := h.Releases.FindRelease(sys, ro.ReleaseID)
	if err != nil {
		return nil, fmt.Errorf("hawkbit: release of action %d: %w", id, err)
	}
	return h.remember(dev.TenantID, a, rel), nil
}

// inFlight reports whether an action is the device's attempt in flight,
// and returns the pending update when it is.
func (h *Handler) inFlight(ctx context.Context, dev *cradle.Device, info *actionInfo) (*cradle.PendingUpdate, error) {
	p, err := h.Updates.PendingUpdate(ctx, dev.Serial, "")
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if p.RolloutID != info.action.RolloutID || p.Attempt != info.action.Attempt {
		return nil, nil
	}
	return p, nil
}

func gone(id int64) error {
	return &statusError{http.StatusGone, cradle.Errorf(cradle.ECONFLICT, "action %d is no longer active", id)}
}

// statusError is an error answered with a status of its own.
type statusError struct {
	status int
	err    *cradle.Error
}

func (e *statusError) Error() string { return e.err.Error() }

type deploymentDoc struct {
	ID         string `json:"id"`
	Deployment struct {
		Download string  `json:"download"`
		Update   string  `json:"update"`
		Chunks   []chunk `json:"chunks"`
	} `json:"deployment"`
}

type chunk struct {
	Part      string         `json:"part"`
	Version   string         `json:"version"`
	Name      string         `json:"name"`
	Artifacts []artifactDesc `json:"artifacts"`
}

type artifactDesc struct {
	Filename string `json:"filename"`
	Hashes   struct {
		SHA1   string `json:"sha1"`
		MD5    string `json:"md5"`
		SHA256 string `json:"sha256"`
	} `json:"hashes"`
	Size  int64           `json:"size"`
	Links map[string]link `json:"_links"`
}

// fileName is the name the artifact is offered under: SWUpdate installs
// only files named *.swu.
func fileName(rel *cradle.Release) string {
	name := rel.FileName
	if name == "" {
		name = rel.Model + "-" + rel.Version
	}
	if rel.Kind == cradle.ReleaseSWUpdate && !strings.HasSuffix(name, ".swu") {
		name += ".swu"
	}
	return name
}

func (h *Handler) deployment(r *http.Request, dev *cradle.Device, info *actionInfo) (*deploymentDoc, error) {
	rel := info.release
	sums, err := h.artifactHashes(r.Context(), rel.SHA256)
	if err != nil {
		return nil, err
	}
	id := strconv.FormatInt(info.action.ID, 10)
	doc := &deploymentDoc{ID: id}
	doc.Deployment.Download, doc.Deployment.Update = "forced", "forced"
	name := rel.ArtifactName
	if name == "" {
		name = rel.Model
	}
	a := artifactDesc{Filename: fileName(rel), Size: rel.Size}
	a.Hashes.SHA1, a.Hashes.MD5, a.Hashes.SHA256 = sums.sha1, sums.md5, rel.SHA256
	dl := baseURL(r, dev) + "/softwaremodules/" + id + "/artifacts/" + a.Filename
	a.Links = map[string]link{"download": {dl}, "download-http": {dl}, "md5sum": {dl + ".MD5SUM"}, "md5sum-http": {dl + ".MD5SUM"}}
	doc.Deployment.Chunks = []chunk{{Part: "os", Version: rel.Version, Name: name, Artifacts: []artifactDesc{a}}}
	return doc, nil
}

func (h *Handler) getDeployment(w http.ResponseWriter, r *http.Request, dev *cradle.Device, id int64) error {
	info, err := h.action(r.Context(), dev, id)
	if err != nil {
		return err
	}
	p, err := h.inFlight(r.Context(), dev, info)
	if err != nil {
		return err
	}
	if p == nil {
		return gone(id)
	}
	if p.RolloutState == cradle.RolloutAborted || !installable(info.release.Kind) {
		// As hawkBit: a canceled action has no deployment.
		return cradle.Errorf(cradle.ENOTFOUND, "action %d is being canceled: fetch cancelAction/%d", id, id)
	}
	doc, err := h.deployment(r, dev, info)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, doc)
	return nil
}

// readBody reads a request body of at most limit bytes (what names it in
// errors) and parses it with parse.
func readBody[T any](r *http.Request, limit int64, what string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	if r.ContentLength > limit {
		return zero, cradle.Errorf(cradle.ETOOLARGE, "%s is %d bytes; at most %d are accepted", what, r.ContentLength, limit)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return zero, cradle.Errorf(cradle.EINVALID, "reading the %s: %v", what, err)
	}
	if int64(len(b)) > limit {
		return zero, cradle.Errorf(cradle.ETOOLARGE, "%s is over %d bytes", what, limit)
	}
	return parse(b)
}

// reason joins a feedback's details into a failure reason.
func reason(prefix string, fb Feedback) string {
	var parts []string
	for _, d := range fb.Details {
		if d = strings.TrimSpace(d); d != "" {
			parts = append(parts, d)
		}
	}
	s := prefix
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, "; ")
	}
	return clip(s, 1024)
}

// feedbackOn reads and parses the feedback a device posts on action id
// and finds the action and the attempt in flight under it: an action not
// found, or no longer in flight, is gone.
func (h *Handler) feedbackOn(r *http.Request, dev *cradle.Device, id int64) (Feedback, *actionInfo, *cradle.PendingUpdate, error) {
	fb, err := readBody(r, MaxFeedbackBody, "feedback", ParseFeedback)
	if err != nil {
		return Feedback{}, nil, nil, err
	}
	info, err := h.action(r.Context(), dev, id)
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return Feedback{}, nil, nil, gone(id)
	} else if err != nil {
		return Feedback{}, nil, nil, err
	}
	p, err := h.inFlight(r.Context(), dev, info)
	if err != nil {
		return Feedback{}, nil, nil, err
	}
	if p == nil {
		return Feedback{}, nil, nil, gone(id)
	}
	return fb, info, p, nil
}

func (h *Handler) postFeedback(w http.ResponseWriter, r *http.Request, dev *cradle.Device, id int64) error {
	ctx := r.Context()
	fb, info, p, err := h.feedbackOn(r, dev, id)
	if err != nil {
		return err
	}
	rep := cradle.UpdateReport{RolloutID: p.RolloutID, Attempt: p.Attempt}
	failed := false
	switch fb.Execution {
	case ExecClosed:
		if fb.Finished == FinishedFailure {
			rep.State, rep.Reason, failed = cradle.UpdateFailed, reason("the device reported failure", fb), true
		} else {
			rep.State = cradle.UpdateSucceeded
		}
	case ExecRejected:
		rep.State, rep.Reason, failed = cradle.UpdateFailed, reason("the device rejected the update", fb), true
	case ExecCanceled:
		rep.State, rep.Reason, failed = cradle.UpdateFailed, reason("the device canceled the update", fb), true
	case ExecDownload:
		rep.State = cradle.UpdateDownloading
	case ExecDownloaded:
		rep.State = cradle.UpdateInstalling
	case ExecProceeding:
		// Progress: downloading until the client says every chunk is
		// done (cnt = of), or once the attempt is installing already.
		rep.State = cradle.UpdateDownloading
		if p.State == cradle.DeviceInstalling || fb.ProgressOf > 0 && fb.ProgressCnt >= fb.ProgressOf {
			rep.State = cradle.UpdateInstalling
		}
	default: // scheduled, resumed: nothing to record
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if failed {
		if err := h.Protocol.StoreUpdateLog(ctx, dev.Serial, p.RolloutID, p.Attempt, clip(strings.Join(fb.Details, "\n"), cradle.MaxUpdateLogBytes-8)); err != nil {
			return err
		}
	}
	err = h.Updates.ReportUpdate(ctx, dev.Serial, rep)
	h.polls.Delete(dev.TenantID, dev.Serial)
	if err != nil {
		return err
	}
	if rep.State == cradle.UpdateSucceeded {
		if err := h.reportSoftware(ctx, dev, info.release); err != nil {
			return err
		}
		h.installed.Store(installedKey{dev.TenantID, dev.Serial}, installedAt{sha256: info.release.SHA256, action: id})
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

type cancelDoc struct {
	ID           string `json:"id"`
	CancelAction struct {
		StopID string `json:"stopId"`
	} `json:"cancelAction"`
}

func (h *Handler) getCancel(w http.ResponseWriter, r *http.Request, dev *cradle.Device, id int64) error {
	info, err := h.action(r.Context(), dev, id)
	if err != nil {
		return err
	}
	p, err := h.inFlight(r.Context(), dev, info)
	if err != nil {
		return err
	}
	if p == nil || p.RolloutState != cradle.RolloutAborted {
		return cradle.Errorf(cradle.ENOTFOUND, "action %d is not being canceled", id)
	}
	var doc cancelDoc
	doc.ID = strconv.FormatInt(id, 10)
	doc.CancelAction.StopID = doc.ID
	writeJSON(w, http.StatusOK, &doc)
	return nil
}

// CanceledReason is the reason an attempt fails with when the device
// acknowledged the cancel of an aborted rollout.
const CanceledReason = "canceled by the server: the rollout was aborted"

func (h *Handler) postCancelFeedback(w http.ResponseWriter, r *http.Request, dev *cradle.Device, id int64) error {
	ctx := r.Context()
	fb, _, p, err := h.feedbackOn(r, dev, id)
	if err != nil {
		return err
	}
	switch fb.Execution {
	case ExecClosed, ExecCanceled:
		if fb.Finished == FinishedFailure {
			// The device could not stop: the attempt goes on and
			// reports its own end.
			break
		}
		err := h.Updates.ReportUpdate(ctx, dev.Serial, cradle.UpdateReport{RolloutID: p.RolloutID, Attempt: p.Attempt, State: cradle.UpdateFailed, Reason: CanceledReason})
		h.polls.Delete(dev.TenantID, dev.Serial)
		if err != nil {
			return err
		}
	case ExecRejected:
		// The device refuses to stop: the attempt stays in flight.
		h.logger().Info("hawkBit device rejected a cancel", "device", dev.Serial, "action", id)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (h *Handler) putConfigData(w http.ResponseWriter, r *http.Request, dev *cradle.Device) error {
	c, err := readBody(r, MaxConfigDataBody, "configData", ParseConfigData)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if c.Mode == ModeRemove {
		names := make([]string, len(c.Data))
		for i, a := range c.Data {
			names[i] = a.Name
		}
		err = h.Protocol.RemoveDeviceAttributes(ctx, dev.Serial, names)
	} else {
		err = h.Protocol.SetDeviceAttributes(ctx, dev.Serial, c.Data, c.Mode == ModeReplace)
	}
	h.hasAttrs.Delete(dev.TenantID, dev.Serial)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// installedAction returns the action that installed the release the
// device runs, when it is known: remembered from the device's success
// feedback, else found once in the release's rollouts (after a restart)
// and remembered, found or not, for that software report.
func (h *Handler) installedAction(ctx context.Context, dev *cradle.Device) (int64, bool) {
	sys := system(ctx, dev.TenantID)
	sw := h.findSoftware(ctx, dev)
	if sw == nil || sw.ReleaseID == "" {
		return 0, false
	}
	key := installedKey{dev.TenantID, dev.Serial}
	if v, ok := h.installed.Load(key); ok {
		if in := v.(installedAt); in.sha256 == sw.SHA256 && (in.action != 0 || in.reported.Equal(sw.ReportedAt)) {
			return in.action, in.action != 0
		}
	}
	in := installedAt{sha256: sw.SHA256, reported: sw.ReportedAt}
	ros, err := h.Rollouts.FindRollouts(sys, cradle.RolloutFilter{ReleaseID: sw.ReleaseID, Limit: 20})
	if err != nil {
		h.logger().Warn("hawkBit base poll: rollouts of the installed release", "device", dev.Serial, "err", err)
		return 0, false
	}
	for _, ro := range ros {
		attempt, ok, err := h.succeededAttempt(sys, ro.ID, dev.Serial)
		if err != nil {
			h.logger().Warn("hawkBit base poll: the device's attempt in a rollout", "device", dev.Serial, "rollout", ro.ID, "err", err)
			continue
		}
		if ok {
			a, err := h.Protocol.DDIAction(ctx, dev.Serial, ro.ID, attempt)
			if err != nil {
				h.logger().Warn("hawkBit base poll: action of the installing attempt", "device", dev.Serial, "rollout", ro.ID, "err", err)
				return 0, false
			}
			in.action = a.ID
			break
		}
	}
	h.installed.Store(key, in)
	return in.action, in.action != 0
}

// installedKey names a device; installedAt is the action that installed
// what it runs (0: none found for that software report).
type installedKey struct {
	tenant int64
	serial string
}

type installedAt struct {
	sha256   string
	reported time.Time
	action   int64
}

// succeededAttempt finds the device's succeeded attempt in a rollout,
// paging through its succeeded devices (a bounded number of pages).
func (h *Handler) succeededAttempt(sys context.Context, rolloutID, serial string) (int, bool, error) {
	succeeded := cradle.DeviceSucceeded
	after := ""
	for range 50 {
		devs, err := h.Rollouts.FindRolloutDevices(sys, rolloutID, cradle.RolloutDeviceFilter{State: &succeeded, After: after, Limit: cradle.MaxPageSize})
		if err != nil {
			return 0, false, err
		}
		for _, d := range devs {
			if d.Serial == serial {
				return d.Attempt, true, nil
			}
		}
		if len(devs) < cradle.MaxPageSize {
			return 0, false, nil
		}
		after = devs[len(devs)-1].Serial
	}
	return 0, false, nil
}

// installedTTL is how long the answer that an action installed nothing
// is trusted: its attempt may still succeed. That it did is kept for good.
const installedTTL = time.Minute

// didInstall reports whether an action's attempt succeeded: at once when
// it installed what the device runs (the base poll's installedAction,
// kept per software report), else from the rollout's records, read at
// most once per action (once per installedTTL while it has not), so
// repeated requests do not page through a large rollout each time.
func (h *Handler) didInstall(ctx context.Context, dev *cradle.Device, info *actionInfo) (bool, error) {
	if id, ok := h.installedAction(ctx, dev); ok && id == info.action.ID {
		return true, nil
	}
	key := actionKey{dev.TenantID, info.action.ID}
	if ok, seen := h.installedSeen.get(key); seen {
		return ok, nil
	}
	attempt, ok, err := h.succeededAttempt(system(ctx, dev.TenantID), info.action.RolloutID, dev.Serial)
	if err != nil {
		return false, fmt.Errorf("hawkbit: devices of rollout %s: %w", info.action.RolloutID, err)
	}
	ok = ok && attempt == info.action.Attempt
	ttl := time.Duration(0)
	if !ok {
		ttl = installedTTL
	}
	h.installedSeen.set(key, ok, ttl)
	return ok, nil
}

func (h *Handler) getInstalled(w http.ResponseWriter, r *http.Request, dev *cradle.Device, id int64) error {
	info, err := h.action(r.Context(), dev, id)
	if err != nil {
		return err
	}
	if ok, err := h.didInstall(r.Context(), dev, info); err != nil {
		return err
	} else if !ok {
		return cradle.Errorf(cradle.ENOTFOUND, "action %d did not install anything (it is in flight, failed or canceled)", id)
	}
	doc, err := h.deployment(r, dev, info)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, doc)
	return nil
}

// putInstalled records what the device says it runs, by the release's
// version (name is the model or the artifact name): 201 when that changed
// what is on record, 200 when not, as hawkBit.
func (h *Handler) putInstalled(w http.ResponseWriter, r *http.Request, dev *cradle.Device) error {
	ib, err := readBody(r, MaxInstalledBaseBody, "installedBase", ParseInstalledBase)
	if err != nil {
		return err
	}
	ctx := r.Context()
	sys := system(ctx, dev.TenantID)
	rels, err := h.Releases.FindReleases(sys, cradle.ReleaseFilter{Model: dev.Model, Limit: cradle.MaxPageSize})
	if err != nil {
		return err
	}
	var rel *cradle.Release
	for _, x := range rels {
		if x.Version == ib.Version && (ib.Name == x.Model || ib.Name == x.ArtifactName || ib.Name == x.FileName) {
			rel = x
			break
		}
	}
	if rel == nil {
		return cradle.Errorf(cradle.ENOTFOUND, "no release %q version %q of model %q: upload it first", clip(ib.Name, 64), clip(ib.Version, 64), dev.Model)
	}
	status := http.StatusCreated
	if sw, err := h.Updates.FindSoftware(sys, dev.Serial); err == nil && sw.SHA256 == rel.SHA256 {
		status = http.StatusOK
	}
	if err := h.reportSoftware(ctx, dev, rel); err != nil {
		return err
	}
	w.WriteHeader(status)
	return nil
}

// artifactHashes returns an artifact's MD5 and SHA-1 (hex), reading it once.
func (h *Handler) artifactHashes(ctx context.Context, sha string) (*artifactHashes, error) {
	ah := h.hashes.add(sha, &artifactHashes{}, 0)
	ah.once.Do(func() {
		ah.err = h.computeHashes(context.WithoutCancel(ctx), sha, ah)
	})
	if ah.err != nil {
		h.hashes.remove(sha, func(v *artifactHashes) bool { return v == ah }) // try again next time
		return nil, ah.err
	}
	return ah, nil
}

func (h *Handler) computeHashes(ctx context.Context, sha string, ah *artifactHashes) error {
	d, err := artifact.ParseDigest(sha)
	if err != nil {
		return fmt.Errorf("hawkbit: release digest: %w", err)
	}
	f, _, err := h.Artifacts.Open(ctx, d)
	if err != nil {
		return fmt.Errorf("hawkbit: artifact %s: %w", sha, err)
	}
	defer f.Close()
	m, s1, s256 := md5.New(), sha1.New(), sha256.New()
	if _, err := io.Copy(io.MultiWriter(m, s1, s256), f); err != nil {
		return fmt.Errorf("hawkbit: reading artifact %s: %w", sha, err)
	}
	if got := hex.EncodeToString(s256.Sum(nil)); got != sha {
		return fmt.Errorf("hawkbit: artifact %s reads as %s: the store is damaged", sha, got)
	}
	ah.md5, ah.sha1 = hex.EncodeToString(m.Sum(nil)), hex.EncodeToString(s1.Sum(nil))
	return nil
}

func (h *Handler) getArtifact(w http.ResponseWriter, r *http.Request, dev *cradle.Device, rt Route) error {
	info, err := h.action(r.Context(), dev, rt.ActionID)
	if err != nil {
		return err
	}
	if rt.FileName != fileName(info.release) {
		return cradle.Errorf(cradle.ENOTFOUND, "software module %d has no artifact %q", rt.ActionID, rt.FileName)
	}
	if rt.MD5SUM {
		sums, err := h.artifactHashes(r.Context(), info.release.SHA256)
		if err != nil {
			return err
		}
		body := sums.md5 + "  " + rt.FileName + "\n"
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			io.WriteString(w, body)
		}
		return nil
	}
	d, err := artifact.ParseDigest(info.release.SHA256)
	if err != nil {
		return fmt.Errorf("hawkbit: release digest: %w", err)
	}
	name := dev.Serial
	if h.DownloadDevice != nil {
		name = h.DownloadDevice(dev.TenantID, dev.Serial)
	}
	w.Header().Set("Content-Disposition", "attachment; filename="+strconv.Quote(rt.FileName))
	h.Blobs.ServeBlob(w, r, d, name)
	return nil
}

func (h *Handler) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

// statusOf maps error codes to HTTP statuses.
func statusOf(code string) int {
	switch code {
	case cradle.EINVALID:
		return http.StatusBadRequest
	case cradle.ENOTFOUND:
		return http.StatusNotFound
	case cradle.ECONFLICT:
		return http.StatusConflict
	case cradle.EUNAUTHORIZED:
		return http.StatusUnauthorized
	case cradle.EFORBIDDEN:
		return http.StatusForbidden
	case cradle.ETOOLARGE:
		return http.StatusRequestEntityTooLarge
	case cradle.EUNAVAILABLE:
		return http.StatusServiceUnavailable
	case cradle.ENOTIMPLEMENTED:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// fail answers an error as {"code","message"}; internal errors are logged
// and not shown.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, serial string, err error) {
	var se *statusError
	status, code, msg := 0, cradle.ErrorCode(err), cradle.ErrorMessage(err)
	if errors.As(err, &se) {
		status, code, msg = se.status, se.err.Code, se.err.Message
	} else {
		status = statusOf(code)
	}
	if status == http.StatusInternalServerError {
		h.logger().Error("hawkBit DDI request failed", "device", serial, "path", r.URL.Path, "err", err)
		code, msg = cradle.EINTERNAL, "internal error"
	} else if status == http.StatusUnauthorized || status == http.StatusForbidden {
		h.logger().Warn("hawkBit DDI request refused", "device", serial, "path", r.URL.Path, "remote", r.RemoteAddr, "status", status, "reason", msg)
	}
	writeJSON(w, status, cradle.Error{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
