package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"cradle"
)

// The release routes: streaming uploads, the release records and their
// life (sign, deprecate, yank), the image keys MCUboot images are checked
// against, and the state of the tenant's TUF repository. Bytes, checks and
// the repository are the publisher's (Server.Publisher); records and keys
// are the release service's (Server.Releases).
//
// An upload's body is the raw artifact, never JSON: it streams to the
// publisher, which stores it only when its length and SHA-256 are what the
// query said, and which applies its own size limit (ETOOLARGE), not
// MaxBodyBytes. The length must be known up front (Content-Length): a
// chunked upload is refused with 411, before a byte is stored.

// ReleaseList lists releases, newest first.
type ReleaseList struct {
	Releases []*cradle.Release `json:"releases"`
}

// ReasonRequest is the body of the routes that record why (deprecate,
// yank, pause, abort).
type ReasonRequest struct {
	Reason string `json:"reason"`
}

// RemediationRequest is the body of POST /api/v1/releases/{id}/remediation:
// whether the release is a remediation, the only kind of update a
// suspended device receives.
type RemediationRequest struct {
	Remediation *bool `json:"remediation"`
}

// ImageKeyCreate is the body of POST /api/v1/image-keys: a PEM public key
// ("PUBLIC KEY", ECDSA P-256 or Ed25519) trusted for one model's images.
type ImageKeyCreate struct {
	Model     string `json:"model"`
	PublicKey string `json:"public_key"`
	Name      string `json:"name,omitempty"`
}

// ImageKeyList lists image keys.
type ImageKeyList struct {
	Keys []*cradle.ImageKey `json:"keys"`
}

// errNoRepository answers the publisher's routes on a server without one.
var errNoRepository = cradle.Errorf(cradle.EUNAVAILABLE, "no TUF repository: run cradle release repo init")

func (s *Server) releases() (cradle.ReleaseService, error) {
	if s.Releases == nil {
		return nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "releases are not available on this server")
	}
	return s.Releases, nil
}

func (s *Server) publisher() (cradle.ReleasePublisher, error) {
	if s.Publisher == nil {
		return nil, errNoRepository
	}
	return s.Publisher, nil
}

// uploadParams are the query parameters of an upload; hardware_revision
// may repeat, the others are given at most once.
var uploadParams = []string{"model", "version", "hardware_revision", "kind", "file_name", "sha256", "security_counter", "notes", "sign", "remediation"}

// releaseUpload reads the upload metadata of a request's query.
func releaseUpload(r *http.Request) (cradle.ReleaseUpload, error) {
	var u cradle.ReleaseUpload
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return u, cradle.Errorf(cradle.EINVALID, "malformed query string: %v", err)
	}
	for k, v := range q {
		if !slices.Contains(uploadParams, k) {
			return u, cradle.Errorf(cradle.EINVALID, "unknown query parameter %q; an upload takes %s", truncate(k, 100), strings.Join(uploadParams, ", "))
		}
		if len(v) > 1 && k != "hardware_revision" {
			return u, cradle.Errorf(cradle.EINVALID, "query parameter %q is given %d times; give it once", k, len(v))
		}
	}
	u.Model, u.Version, u.FileName, u.SHA256, u.Notes = q.Get("model"), q.Get("version"), q.Get("file_name"), q.Get("sha256"), q.Get("notes")
	u.HardwareRevisions = q["hardware_revision"]
	if len(u.HardwareRevisions) > cradle.MaxHardwareRevs {
		return u, cradle.Errorf(cradle.EINVALID, "%d hardware revisions: at most %d", len(u.HardwareRevisions), cradle.MaxHardwareRevs)
	}
	if u.SHA256 == "" {
		return u, cradle.Errorf(cradle.EINVALID, "query parameter sha256 is required: the SHA-256 (hex) of the artifact, which the server checks")
	}
	if v, ok := q["kind"]; ok {
		u.Kind = cradle.ReleaseKind(v[0])
		if !slices.Contains(cradle.ReleaseKinds, u.Kind) {
			return u, cradle.Errorf(cradle.EINVALID, "unknown release kind %q; use %s, or leave kind out to have the artifact recognised", truncate(v[0], 40), kindList())
		}
	}
	if v, ok := q["security_counter"]; ok {
		n, err := strconv.ParseUint(v[0], 10, 32)
		if err != nil {
			return u, cradle.Errorf(cradle.EINVALID, "query parameter security_counter=%q is not an integer from 0 to %d", truncate(v[0], 40), uint32(1<<32-1))
		}
		u.SecurityCounter = uint32(n)
	}
	for name, dst := range map[string]*bool{"sign": &u.Sign, "remediation": &u.Remediation} {
		if v, ok := q[name]; ok {
			switch v[0] {
			case "true":
				*dst = true
			case "false":
			default:
				return u, cradle.Errorf(cradle.EINVALID, "query parameter %s=%q: use true or false", name, truncate(v[0], 40))
			}
		}
	}
	return u, nil
}

func kindList() string {
	parts := make([]string, len(cradle.ReleaseKinds))
	for i, k := range cradle.ReleaseKinds {
		parts[i] = string(k)
	}
	return strings.Join(parts, ", ")
}

func (s *Server) uploadRelease(w http.ResponseWriter, r *http.Request) {
	pub, err := s.publisher()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	u, err := releaseUpload(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if r.ContentLength < 0 {
		s.writeErrorStatus(w, r, http.StatusLengthRequired, &cradle.Error{Code: cradle.EINVALID,
			Message: "an upload needs a Content-Length: send the artifact as the body with its length, not chunked"})
		return
	}
	u.Size = r.ContentLength
	rel, err := pub.UploadRelease(r.Context(), u, r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", releasePath(rel.ID))
	s.writeJSON(w, r, http.StatusCreated, rel)
}

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request) {
	svc, err := s.releases()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "model", "state", "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := cradle.ReleaseFilter{Model: q.Get("model")}
	if v, ok := q["state"]; ok {
		st := cradle.ReleaseState(v[0])
		if !slices.Contains(releaseStates, st) {
			s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "unknown release state %q; use uploaded, signed, deprecated or yanked", truncate(v[0], 40)))
			return
		}
		f.State = &st
	}
	if f.Limit, err = intParam(q, "limit"); err != nil {
		s.writeError(w, r, err)
		return
	}
	rs, err := svc.FindReleases(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if rs == nil {
		rs = []*cradle.Release{}
	}
	s.writeJSON(w, r, http.StatusOK, ReleaseList{Releases: rs})
}

var releaseStates = []cradle.ReleaseState{cradle.ReleaseUploaded, cradle.ReleaseSigned, cradle.ReleaseDeprecated, cradle.ReleaseYanked}

func (s *Server) getRelease(w http.ResponseWriter, r *http.Request) {
	svc, err := s.releases()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rel, err := svc.FindRelease(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, rel)
}

// decodeOptional reads an optional JSON body into v: none (an empty
// body), or a strict JSON document of at most MaxBodyBytes.
func (s *Server) decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	if err := noQuery(r); err != nil {
		return err
	}
	if r.ContentLength > s.MaxBodyBytes {
		return tooLarge(s.MaxBodyBytes)
	}
	data, err := io.ReadAll(&limitedBody{r: http.MaxBytesReader(w, r.Body, s.MaxBodyBytes)})
	if err != nil {
		if cradle.ErrorCode(err) == cradle.ETOOLARGE {
			return err
		}
		return cradle.Errorf(cradle.EINVALID, "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return cradle.Errorf(cradle.EINVALID, "the body must be JSON, sent with Content-Type application/json, not %q", truncate(ct, 100))
		}
	}
	return cradle.DecodeStrictJSON(data, v)
}

func (s *Server) signRelease(w http.ResponseWriter, r *http.Request) {
	pub, err := s.publisher()
	if err == nil {
		err = s.decodeOptional(w, r, &struct{}{})
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rel, err := pub.SignRelease(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, rel)
}

func (s *Server) deprecateRelease(w http.ResponseWriter, r *http.Request) {
	s.releaseStateChange(w, r, cradle.ReleasePublisher.DeprecateRelease)
}

func (s *Server) yankRelease(w http.ResponseWriter, r *http.Request) {
	s.releaseStateChange(w, r, cradle.ReleasePublisher.YankRelease)
}

func (s *Server) releaseStateChange(w http.ResponseWriter, r *http.Request, change func(cradle.ReleasePublisher, context.Context, string, string) (*cradle.Release, error)) {
	pub, err := s.publisher()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req ReasonRequest
	if err := s.decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	rel, err := change(pub, r.Context(), r.PathValue("id"), req.Reason)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, rel)
}

func (s *Server) setReleaseRemediation(w http.ResponseWriter, r *http.Request) {
	svc, err := s.releases()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req RemediationRequest
	if err := s.decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Remediation == nil {
		s.writeError(w, r, cradle.Errorf(cradle.EINVALID, "remediation is required: true to flag the release as an update suspended devices receive, false to clear the flag"))
		return
	}
	rel, err := svc.SetReleaseRemediation(r.Context(), r.PathValue("id"), *req.Remediation)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, rel)
}

func (s *Server) repositoryStatus(w http.ResponseWriter, r *http.Request) {
	pub, err := s.publisher()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := pub.RepositoryStatus(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, st)
}

func (s *Server) listImageKeys(w http.ResponseWriter, r *http.Request) {
	svc, err := s.releases()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := query(r, "model")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ks, err := svc.FindImageKeys(r.Context(), q.Get("model"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ks == nil {
		ks = []*cradle.ImageKey{}
	}
	s.writeJSON(w, r, http.StatusOK, ImageKeyList{Keys: ks})
}

func (s *Server) addImageKey(w http.ResponseWriter, r *http.Request) {
	svc, err := s.releases()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var c ImageKeyCreate
	if err := s.decode(w, r, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	k, err := svc.AddImageKey(r.Context(), cradle.ImageKey{Model: c.Model, PublicKey: c.PublicKey, Name: c.Name})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/image-keys/"+url.PathEscape(k.Fingerprint))
	s.writeJSON(w, r, http.StatusCreated, k)
}

func (s *Server) removeImageKey(w http.ResponseWriter, r *http.Request) {
	svc, err := s.releases()
	if err == nil {
		err = noQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := svc.RemoveImageKey(r.Context(), r.PathValue("fingerprint")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Client methods. The client implements cradle.ReleasePublisher, and of
// cradle.ReleaseService what an operator may call.

var _ cradle.ReleasePublisher = (*Client)(nil)

func releasePath(id string) string { return "/api/v1/releases/" + url.PathEscape(id) }

// uploadQuery is the query of an upload for u, the inverse of the
// server's releaseUpload.
func uploadQuery(u cradle.ReleaseUpload) url.Values {
	q := url.Values{"model": {u.Model}, "version": {u.Version}, "sha256": {u.SHA256}}
	if u.FileName != "" {
		q.Set("file_name", u.FileName)
	}
	for _, hw := range u.HardwareRevisions {
		q.Add("hardware_revision", hw)
	}
	if u.Kind != "" {
		q.Set("kind", string(u.Kind))
	}
	if u.SecurityCounter != 0 {
		q.Set("security_counter", strconv.FormatUint(uint64(u.SecurityCounter), 10))
	}
	if u.Notes != "" {
		q.Set("notes", u.Notes)
	}
	if u.Sign {
		q.Set("sign", "true")
	}
	if u.Remediation {
		q.Set("remediation", "true")
	}
	return q
}

// UploadRelease implements cradle.ReleasePublisher: it streams u.Size
// bytes of body to the server, which checks them against u.SHA256.
func (c *Client) UploadRelease(ctx context.Context, u cradle.ReleaseUpload, body io.Reader) (*cradle.Release, error) {
	if u.Size < 0 {
		return nil, fmt.Errorf("httpapi: upload size %d is negative", u.Size)
	}
	var rel cradle.Release
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	if err := c.do(ctx, http.MethodPost, withQuery("/api/v1/releases", uploadQuery(u)), hdr, &sizedBody{r: body, n: u.Size}, &rel); err != nil {
		return nil, err
	}
	return &rel, nil
}

// sizedBody is a request body of a known length, which roundTrip sends as
// the Content-Length.
type sizedBody struct {
	r io.Reader
	n int64
}

func (b *sizedBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *sizedBody) Close() error               { return nil }

// FindRelease returns a release.
func (c *Client) FindRelease(ctx context.Context, id string) (*cradle.Release, error) {
	return getJSON[cradle.Release](ctx, c, releasePath(id))
}

// FindReleases lists releases, newest first.
func (c *Client) FindReleases(ctx context.Context, f cradle.ReleaseFilter) ([]*cradle.Release, error) {
	q := url.Values{}
	if f.Model != "" {
		q.Set("model", f.Model)
	}
	if f.State != nil {
		q.Set("state", string(*f.State))
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l ReleaseList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/releases", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Releases, nil
}

// SignRelease implements cradle.ReleasePublisher.
func (c *Client) SignRelease(ctx context.Context, id string) (*cradle.Release, error) {
	var rel cradle.Release
	if err := c.do(ctx, http.MethodPost, releasePath(id)+"/sign", nil, nil, &rel); err != nil {
		return nil, err
	}
	return &rel, nil
}

// DeprecateRelease implements cradle.ReleasePublisher.
func (c *Client) DeprecateRelease(ctx context.Context, id, reason string) (*cradle.Release, error) {
	return sendJSON[cradle.Release](ctx, c, http.MethodPost, releasePath(id)+"/deprecate", ReasonRequest{Reason: reason})
}

// YankRelease implements cradle.ReleasePublisher.
func (c *Client) YankRelease(ctx context.Context, id, reason string) (*cradle.Release, error) {
	return sendJSON[cradle.Release](ctx, c, http.MethodPost, releasePath(id)+"/yank", ReasonRequest{Reason: reason})
}

// SetReleaseRemediation flags a release as remediation, or clears the
// flag.
func (c *Client) SetReleaseRemediation(ctx context.Context, id string, remediation bool) (*cradle.Release, error) {
	return sendJSON[cradle.Release](ctx, c, http.MethodPost, releasePath(id)+"/remediation", RemediationRequest{Remediation: &remediation})
}

// RepositoryStatus implements cradle.ReleasePublisher.
func (c *Client) RepositoryStatus(ctx context.Context) (*cradle.RepositoryStatus, error) {
	return getJSON[cradle.RepositoryStatus](ctx, c, "/api/v1/tuf")
}

// AddImageKey trusts a PEM public key for the images of a model.
func (c *Client) AddImageKey(ctx context.Context, k cradle.ImageKey) (*cradle.ImageKey, error) {
	return sendJSON[cradle.ImageKey](ctx, c, http.MethodPost, "/api/v1/image-keys", ImageKeyCreate{Model: k.Model, PublicKey: k.PublicKey, Name: k.Name})
}

// FindImageKeys lists the image keys, of one model when model is not
// empty.
func (c *Client) FindImageKeys(ctx context.Context, model string) ([]*cradle.ImageKey, error) {
	q := url.Values{}
	if model != "" {
		q.Set("model", model)
	}
	var l ImageKeyList
	if err := c.do(ctx, http.MethodGet, withQuery("/api/v1/image-keys", q), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Keys, nil
}

// RemoveImageKey stops trusting an image key.
func (c *Client) RemoveImageKey(ctx context.Context, fingerprint string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/image-keys/"+url.PathEscape(fingerprint), nil, nil, nil)
}
