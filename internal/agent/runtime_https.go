package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The HTTPS device API (mTLS with the LDevID).
const (
	pathTelemetry     = "/device/v1/telemetry"
	pathTwin          = "/device/v1/twin"
	pathTwinReported  = "/device/v1/twin/reported"
	pathCommands      = "/device/v1/commands"
	pathCommandResult = "/device/v1/commands/result"
)

// httpsChannel is the fallback channel: telemetry is posted, the twin and
// commands are polled.
type httpsChannel struct {
	r      *Runtime
	base   *url.URL
	tr     *http.Transport
	client *http.Client

	lastDesired []byte // the desired document last handled
	failing     bool   // the last exchange failed (logged once)
}

func newHTTPSChannel(r *Runtime, base *url.URL) *httpsChannel {
	tr := &http.Transport{TLSClientConfig: r.tlsConfig(), ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: r.opts.RequestTimeout, DialContext: r.opts.Dial}
	return &httpsChannel{r: r, base: base, tr: tr, client: &http.Client{Transport: tr, Timeout: r.opts.RequestTimeout}}
}

func (h *httpsChannel) close() { h.tr.CloseIdleConnections() }

// httpError is an answer other than the one expected.
type httpError struct {
	method, path string
	status       int
	body         string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.method, e.path, e.status, http.StatusText(e.status), e.body)
}

// do sends one request and returns the body of a 2xx answer. 400 and
// 413 are errRefused (the payload is at fault).
func (h *httpsChannel) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base.JoinPath(path).String(), rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp.StatusCode, b, nil
	}
	herr := &httpError{method: method, path: path, status: resp.StatusCode, body: strings.TrimSpace(string(b[:min(len(b), 512)]))}
	if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusRequestEntityTooLarge {
		return resp.StatusCode, nil, errRefused{herr}
	}
	return resp.StatusCode, nil, herr
}

// run serves the channel until ctx is done or until (zero: never).
func (h *httpsChannel) run(ctx context.Context, until time.Time) {
	r := h.r
	var deadline <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(until.Sub(r.opts.Now()))
		defer t.Stop()
		deadline = t.C
	}
	poll := time.NewTicker(r.opts.PollInterval)
	defer poll.Stop()
	if r.opts.Twin != nil && r.opts.TwinReported != nil {
		if rep := r.opts.TwinReported(); rep != nil {
			if _, _, err := h.do(ctx, http.MethodPut, pathTwinReported, rep); !notServed(err) {
				h.report("send the reported twin", err)
			}
		}
	}
	h.poll(ctx)
	for {
		err := r.drain(ctx, func(ctx context.Context, p []byte) error {
			_, _, err := h.do(ctx, http.MethodPost, pathTelemetry, p)
			return err
		})
		if ctx.Err() != nil {
			return
		}
		h.report("send telemetry", err)
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-r.renewed:
			h.tr.CloseIdleConnections()
		case <-r.collected:
		case <-poll.C:
			h.poll(ctx)
		}
	}
}

// report logs the first failure of a series and the recovery.
func (h *httpsChannel) report(what string, err error) {
	switch {
	case err != nil && !h.failing:
		h.failing = true
		h.r.opts.Logger.Warn("HTTPS device API failing; telemetry stays in the spool meanwhile", "op", what, "err", err)
	case err != nil:
		h.r.opts.Logger.Debug("HTTPS device API", "op", what, "err", err)
	case h.failing:
		h.failing = false
		h.r.opts.Logger.Info("HTTPS device API working again", "op", what)
	}
}

// poll fetches the desired twin and the pending commands, hands them to
// their functions and sends the replies. A route the server does not
// serve (404) is skipped quietly.
func (h *httpsChannel) poll(ctx context.Context) {
	r := h.r
	if r.opts.Twin != nil {
		status, desired, err := h.do(ctx, http.MethodGet, pathTwin, nil)
		if err == nil && status == http.StatusOK && !bytes.Equal(desired, h.lastDesired) {
			if rep := r.opts.Twin(ctx, desired); rep != nil {
				_, _, err = h.do(ctx, http.MethodPut, pathTwinReported, rep)
			}
			if err == nil {
				h.lastDesired = desired
			}
		}
		if !notServed(err) {
			h.report("twin", err)
		}
	}
	if r.opts.Command != nil {
		_, b, err := h.do(ctx, http.MethodGet, pathCommands, nil)
		if err == nil {
			var pending struct {
				Commands []json.RawMessage `json:"commands"`
			}
			if err = json.Unmarshal(b, &pending); err != nil {
				err = fmt.Errorf("GET %s: %w", pathCommands, err)
			}
			for _, env := range pending.Commands {
				if res := r.opts.Command(ctx, env); res != nil {
					if _, _, err = h.do(ctx, http.MethodPost, pathCommandResult, res); err != nil {
						break
					}
				}
			}
		}
		if !notServed(err) {
			h.report("commands", err)
		}
	}
}

func notServed(err error) bool {
	var he *httpError
	return errors.As(err, &he) && he.status == http.StatusNotFound
}
