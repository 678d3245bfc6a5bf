package update

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"cradle"
)

// Offer is the server's answer to GET /device/v1/update: the release to
// install in a rollout attempt. It is a hint: what is installed is what
// the signed TUF metadata says about Release.TargetPath.
type Offer struct {
	RolloutID string `json:"rollout_id"`
	Attempt   int    `json:"attempt"`
	Release   struct {
		ID              string `json:"id"`
		Model           string `json:"model"`
		Version         string `json:"version"`
		Kind            string `json:"kind"`
		SecurityCounter uint32 `json:"security_counter"`
		SHA256          string `json:"sha256"`
		Size            int64  `json:"size"`
		TargetPath      string `json:"target_path"`
	} `json:"release"`
	Artifact struct {
		URL    string `json:"url"`
		SHA256 string `json:"sha256"`
		Size   int64  `json:"size"`
	} `json:"artifact"`
	Delta *struct {
		URL        string `json:"url"`
		SHA256     string `json:"sha256"`
		Size       int64  `json:"size"`
		FromSHA256 string `json:"from_sha256"`
	} `json:"delta,omitempty"`
	TUF struct {
		MetadataURL string `json:"metadata_url"`
	} `json:"tuf"`
}

// maxOffer bounds the offer document; a real one is under 2 KiB.
const maxOffer = 64 << 10

// ParseOffer decodes an offer and checks that it names what the updater
// needs: a rollout and attempt, a target path, an artifact URL and a TUF
// metadata URL (absolute http or https URLs).
func ParseOffer(b []byte) (*Offer, error) {
	if len(b) > maxOffer {
		return nil, fmt.Errorf("update: offer is %d bytes, more than %d", len(b), maxOffer)
	}
	var o Offer
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("update: offer: %w", err)
	}
	switch {
	case o.RolloutID == "" || o.Attempt < 1:
		return nil, fmt.Errorf("update: offer names no rollout attempt (rollout_id %q, attempt %d)", o.RolloutID, o.Attempt)
	case o.Release.TargetPath == "":
		return nil, errors.New("update: offer has no release.target_path")
	}
	for name, u := range map[string]string{"artifact.url": o.Artifact.URL, "tuf.metadata_url": o.TUF.MetadataURL} {
		if err := checkURL(u); err != nil {
			return nil, fmt.Errorf("update: offer %s: %w", name, err)
		}
	}
	if o.Delta != nil {
		if err := checkURL(o.Delta.URL); err != nil {
			return nil, fmt.Errorf("update: offer delta.url: %w", err)
		}
	}
	return &o, nil
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return nil
}

// TransientError is a failure worth retrying later unchanged: the server
// could not be reached or answered 5xx or 429. The updater keeps its state
// and tries again; any other failure of a step refuses the update.
type TransientError struct{ Err error }

func (e *TransientError) Error() string { return e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// IsTransient reports whether err is worth retrying: a TransientError,
// or a network failure anywhere in its chain.
func IsTransient(err error) bool {
	var te *TransientError
	var ue *url.Error
	return errors.As(err, &te) || errors.As(err, &ue) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded)
}

// Client speaks the device update API of a cradle server:
// GET /device/v1/update, POST /device/v1/update/status and
// POST /device/v1/software, and downloads artifacts with Range.
type Client struct {
	// ServerURL is the device listener, "https://host:8443".
	ServerURL string
	// HTTP presents the device's LDevID; artifact URLs carry their own
	// signature.
	HTTP *http.Client
}

// Check asks for a pending update for a device running runningSHA256
// (hex; "" when unknown). It returns nil, nil when nothing is pending.
func (c *Client) Check(ctx context.Context, runningSHA256 string) (*Offer, error) {
	u := strings.TrimRight(c.ServerURL, "/") + "/device/v1/update"
	if runningSHA256 != "" {
		u += "?running=" + url.QueryEscape(runningSHA256)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, &TransientError{fmt.Errorf("update: check: %w", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxOffer+1))
	if err != nil {
		return nil, &TransientError{fmt.Errorf("update: check: %w", err)}
	}
	switch {
	case resp.StatusCode == http.StatusNoContent:
		return nil, nil
	case resp.StatusCode == http.StatusOK:
		return ParseOffer(body)
	default:
		return nil, statusError("check", resp, body)
	}
}

// Report sends a report on an attempt.
func (c *Client) Report(ctx context.Context, r cradle.UpdateReport) error {
	return c.post(ctx, "/device/v1/update/status", r)
}

// ReportSoftware tells the server which image the device runs.
func (c *Client) ReportSoftware(ctx context.Context, sha256Hex string) error {
	return c.post(ctx, "/device/v1/software", map[string]string{"sha256": sha256Hex})
}

func (c *Client) post(ctx context.Context, path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.ServerURL, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return &TransientError{fmt.Errorf("update: POST %s: %w", path, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return statusError("POST "+path, resp, body)
	}
	return nil
}

// Download opens rawURL from byte off on. The body starts at off: a
// server that ignores the Range is skipped forward.
func (c *Client) Download(ctx context.Context, rawURL string, off int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, &TransientError{fmt.Errorf("update: download: %w", err)}
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && off > 0:
		var start int64 = -1
		fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start)
		if start != off {
			resp.Body.Close()
			return nil, fmt.Errorf("update: download: asked from byte %d, the server sent Content-Range %q", off, resp.Header.Get("Content-Range"))
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK:
		if off > 0 {
			if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
				resp.Body.Close()
				return nil, &TransientError{fmt.Errorf("update: download: skipping to byte %d: %w", off, err)}
			}
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusForbidden:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, &TransientError{fmt.Errorf("%w: %w", ErrURLRefused, statusError("download", resp, body))}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		return nil, fmt.Errorf("update: download: the server has no byte %d: the artifact is shorter than what was written", off)
	default:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, statusError("download", resp, body)
	}
}

// ErrURLRefused is in the chain of Download's error when the artifact
// server answers 403: the signed download URL expired (or was never
// good). Retrying it cannot help; the updater asks for a fresh offer,
// which carries a newly signed URL. The error is transient too, so a
// caller that cannot renew keeps its state.
var ErrURLRefused = errors.New("update: the download URL was refused")

// statusError makes the error of an unexpected answer: transient for 5xx
// and 429, and for 403 (an expired download URL; a new offer renews it).
func statusError(what string, resp *http.Response, body []byte) error {
	msg := strings.TrimSpace(string(body))
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		msg = e.Message
	}
	err := fmt.Errorf("update: %s: the server answered %s: %s", what, resp.Status, msg)
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusForbidden {
		return &TransientError{err}
	}
	return err
}
