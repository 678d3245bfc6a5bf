// Package webhook delivers factory events from the outbox
// (cradle.FactoryOutbox) to an MES system as CloudEvents over HTTP.
//
// # Delivery contract
//
// The server records a factory event in the same transaction as the trace
// record it describes, so an event exists exactly when its record does.
// A Dispatcher then takes due events from the outbox, oldest first, and
// POSTs each, one after the other, to one URL in CloudEvents 1.0
// structured content mode:
//
//	POST <URL>
//	Content-Type: application/cloudevents+json; charset=utf-8
//	X-Cradle-Attempt: 1
//	X-Cradle-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the secret>
//
//	{"specversion":"1.0","id":"…","source":"…","type":"io.cradle.factory.unit.provisioned",
//	 "subject":"<serial>","time":"2026-11-24T17:28:33Z","datacontenttype":"application/json",
//	 "data":{…the trace record…}}
//
// The signature header is sent only when a secret is configured; receivers
// check it with VerifySignature. X-Cradle-Attempt counts the attempts at
// this event, from 1.
//
// Any 2xx answer delivers the event and removes it from the outbox. Any
// other answer (redirects included: the default client does not follow
// them), a transport error or a timeout is a failed attempt: the outbox
// records it with the status and an excerpt of the answer, and schedules
// the event again after an exponential backoff with jitter (see
// Dispatcher.MinBackoff). A 429 or 503 with a Retry-After header (seconds
// or an HTTP date) is retried after that delay instead, bounded by
// MinBackoff and MaxBackoff. After MaxAttempts failed attempts the event is
// dead: the outbox keeps it with its last error and it is not sent again.
// An event that cannot be encoded (a missing id, source or type, or data
// that is not JSON) is dead at once, since no retry would help.
//
// Every event has its own schedule: one failing event does not hold back
// the next ones in a pass, and a receiver that is down sees each due event
// once per backoff step, not once per poll.
//
// Delivery is at least once. An event may arrive twice (the receiver
// answered 2xx but the outbox could not record it, or the answer was lost),
// and events that were retried arrive after later ones: receivers
// deduplicate by the CloudEvents id (the trace record id) and order by
// time.
//
// # Actor
//
// The outbox is for the system role only. The context passed to
// DeliverDue and Run must carry the system actor, e.g.
//
//	ctx = cradle.NewContextWithActor(ctx, cradle.SystemActor(tenantID, "webhook"))
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"cradle"
)

// Defaults of the Dispatcher's zero fields.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultMaxAttempts  = 12
	DefaultMinBackoff   = time.Second
	DefaultMaxBackoff   = time.Hour
	DefaultBatch        = 100
	DefaultPollInterval = 2 * time.Second
)

// Header names.
const (
	SignatureHeader = "X-Cradle-Signature"
	AttemptHeader   = "X-Cradle-Attempt"
)

// ContentType is the media type of a structured-mode CloudEvent in JSON.
const ContentType = "application/cloudevents+json; charset=utf-8"

const (
	maxExcerpt = 512       // bytes of an answer kept in the last error
	maxDrain   = 64 << 10  // bytes of an answer read to reuse the connection
	maxLastErr = 1024      // bytes of a last error handed to the outbox
	maxRetryS  = 100 << 20 // seconds: a larger Retry-After is taken as this
)

// Dispatcher delivers due factory events to one webhook URL. Set its fields
// before first use and do not copy it afterwards; every zero field but URL
// and Outbox has a documented default. Its methods are safe for concurrent
// use; passes do not overlap.
type Dispatcher struct {
	// URL is the receiver, http or https.
	URL string
	// Secret, when set, keys the HMAC-SHA256 signature of every body,
	// sent as "X-Cradle-Signature: sha256=<hex>".
	Secret string
	// Outbox holds the events.
	Outbox cradle.FactoryOutbox
	// Client sends the requests. The default has a 10 s timeout and does
	// not follow redirects.
	Client *http.Client
	// Now is the clock that schedules retries; time.Now by default.
	Now func() time.Time
	// MaxAttempts is the number of failed attempts after which an event
	// is dead; 12 by default.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait after a failed attempt:
	// after the n-th, a random time between half and all of
	// min(MinBackoff·2^(n-1), MaxBackoff). Defaults 1 s and 1 h.
	MinBackoff, MaxBackoff time.Duration
	// Batch is the number of events one pass takes; 100 by default.
	Batch int
	// PollInterval is the time between passes of Run when nothing wakes
	// it; 2 s by default.
	PollInterval time.Duration
	// Logger receives failed attempts, dead events and outbox errors;
	// slog.Default() by default.
	Logger *slog.Logger

	mu       sync.Mutex // held during a pass
	wakeOnce sync.Once
	wake     chan struct{}
}

// Validate checks the configuration; the error is EINVALID and names the
// field.
func (d *Dispatcher) Validate() error {
	u, err := url.Parse(d.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		shown := d.URL
		if err == nil {
			shown = u.Redacted()
		}
		return cradle.Errorf(cradle.EINVALID, "webhook url %q must be an absolute http or https URL, e.g. https://mes.example.com/cradle/events", truncate(shown, 200))
	}
	if d.Outbox == nil {
		return cradle.Errorf(cradle.EINVALID, "webhook dispatcher has no outbox")
	}
	switch {
	case d.MaxAttempts < 0:
		return cradle.Errorf(cradle.EINVALID, "webhook max_attempts %d must not be negative (0 means %d)", d.MaxAttempts, DefaultMaxAttempts)
	case d.Batch < 0:
		return cradle.Errorf(cradle.EINVALID, "webhook batch %d must not be negative (0 means %d)", d.Batch, DefaultBatch)
	case d.MinBackoff < 0 || d.MaxBackoff < 0 || d.PollInterval < 0:
		return cradle.Errorf(cradle.EINVALID, "webhook min_backoff, max_backoff and poll_interval must not be negative (0 means the default)")
	case d.minBackoff() > d.maxBackoff():
		return cradle.Errorf(cradle.EINVALID, "webhook min_backoff %s is above max_backoff %s", d.minBackoff(), d.maxBackoff())
	}
	return nil
}

// Notify wakes Run for a pass now. It never blocks; the server calls it
// after it records an event.
func (d *Dispatcher) Notify() {
	select {
	case d.wakeCh() <- struct{}{}:
	default: // a pass is already pending
	}
}

// Run passes over the outbox every PollInterval, at once after Notify,
// and again at once after a pass that filled a batch, until ctx is done;
// then it returns ctx.Err(). It returns a configuration error at once.
// Outbox errors are logged and the pass is tried again at the next poll.
// ctx must carry the system actor (see the package doc).
func (d *Dispatcher) Run(ctx context.Context) error {
	if err := d.Validate(); err != nil {
		return err
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-d.wakeCh():
		}
		delivered, failed, err := d.deliverDue(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		next := d.pollInterval()
		if err != nil {
			d.logger().Error("webhook pass failed; trying again at the next poll", "err", err, "delivered", delivered, "failed", failed)
		} else if delivered+failed >= d.batch() {
			next = 0 // more may be due
		}
		t.Stop()
		t.Reset(next)
	}
}

// DeliverDue makes one pass: it takes up to Batch due events from the
// outbox and tries each once, in order, recording the outcome in the
// outbox. It returns how many were delivered and how many attempts failed
// (dead events included). The error is a configuration error, an outbox
// error (which ends the pass), or ctx's error if ctx ended the pass; an
// attempt cut short by ctx is not counted as failed.
func (d *Dispatcher) DeliverDue(ctx context.Context) (delivered, failed int, err error) {
	if err := d.Validate(); err != nil {
		return 0, 0, err
	}
	return d.deliverDue(ctx)
}

// deliverDue is DeliverDue on a validated configuration; Run validates
// once, not at every pass.
func (d *Dispatcher) deliverDue(ctx context.Context) (delivered, failed int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	events, err := d.Outbox.DueFactoryEvents(ctx, d.now(), d.batch())
	if err != nil {
		return 0, 0, fmt.Errorf("webhook: due factory events: %w", err)
	}
	for _, ev := range events {
		if err := ctx.Err(); err != nil {
			return delivered, failed, err
		}
		ok, lastErr, retryAfter := d.attempt(ctx, ev)
		if err := ctx.Err(); err != nil && !ok {
			return delivered, failed, err
		}
		if ok {
			if err := d.Outbox.FactoryEventDelivered(ctx, ev.ID); err != nil {
				return delivered, failed, fmt.Errorf("webhook: record delivery of event %s: %w", ev.EventID, err)
			}
			delivered++
			continue
		}
		n := ev.Attempts + 1
		var next time.Time
		switch {
		case retryAfter < 0: // cannot be encoded: dead now
		case n >= d.maxAttempts():
		case retryAfter > 0:
			next = d.now().Add(min(max(retryAfter, d.minBackoff()), d.maxBackoff()))
		default:
			next = d.now().Add(d.backoff(n))
		}
		lastErr = truncate(lastErr, maxLastErr)
		if err := d.Outbox.FactoryEventFailed(ctx, ev.ID, next, lastErr); err != nil {
			return delivered, failed, fmt.Errorf("webhook: record failed attempt at event %s: %w", ev.EventID, err)
		}
		failed++
		if next.IsZero() {
			d.logger().Error("webhook event is dead: not sent again", "event", ev.EventID, "type", ev.Type, "subject", ev.Subject, "attempts", n, "last_error", lastErr)
		} else {
			d.logger().Warn("webhook attempt failed", "event", ev.EventID, "attempt", n, "next", next, "last_error", lastErr)
		}
	}
	return delivered, failed, nil
}

// attempt sends ev once. It reports success, or the reason of the failure
// and a delay: the receiver's Retry-After (0 when none) or -1 when the
// event cannot be encoded and retrying is pointless.
func (d *Dispatcher) attempt(ctx context.Context, ev *cradle.FactoryEvent) (ok bool, lastErr string, retryAfter time.Duration) {
	body, err := Encode(ev)
	if err != nil {
		return false, err.Error(), -1
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Sprintf("build request: %v", err), 0
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("User-Agent", "cradle-webhook/1")
	req.Header.Set(AttemptHeader, strconv.Itoa(ev.Attempts+1))
	if d.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(body, d.Secret))
	}
	resp, err := d.client().Do(req)
	if err != nil {
		return false, err.Error(), 0
	}
	defer resp.Body.Close()
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, maxExcerpt))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return true, "", 0
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), d.now()); ok {
			retryAfter = ra
		}
	}
	msg := "HTTP " + resp.Status
	if s := cleanExcerpt(excerpt); s != "" {
		msg += ": " + s
	}
	return false, msg, retryAfter
}

// event is a CloudEvent in structured JSON mode, fields in the spec's
// order.
type event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
}

// Encode returns the body the Dispatcher sends for ev: a CloudEvents 1.0
// JSON event whose data is ev.Data embedded as JSON. It is EINVALID when
// ev lacks an id, source, type or time, or its data is not JSON.
func Encode(ev *cradle.FactoryEvent) ([]byte, error) {
	if ev.EventID == "" || ev.Source == "" || ev.Type == "" || ev.Time.IsZero() {
		return nil, cradle.Errorf(cradle.EINVALID, "factory event %d lacks an id, source, type or time: it cannot be sent as a CloudEvent", ev.ID)
	}
	e := event{
		SpecVersion: "1.0",
		ID:          ev.EventID,
		Source:      ev.Source,
		Type:        ev.Type,
		Subject:     ev.Subject,
		Time:        ev.Time.UTC().Format(time.RFC3339Nano),
	}
	if len(ev.Data) > 0 {
		if !json.Valid(ev.Data) {
			return nil, cradle.Errorf(cradle.EINVALID, "factory event %s: data is not JSON", truncate(ev.EventID, 80))
		}
		e.DataContentType = "application/json"
		e.Data = ev.Data
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "factory event %s: %v", truncate(ev.EventID, 80), err)
	}
	return b, nil
}

// Sign returns the signature header value of body: "sha256=" and the hex
// HMAC-SHA256 of body keyed with secret.
func Sign(body []byte, secret string) string {
	return "sha256=" + hex.EncodeToString(mac(body, secret))
}

// mac is the HMAC-SHA256 of body keyed with secret.
func mac(body []byte, secret string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return m.Sum(nil)
}

// VerifySignature reports whether header (the X-Cradle-Signature value)
// is the signature of body with secret. The comparison is constant-time;
// an empty secret verifies nothing.
func VerifySignature(body []byte, header, secret string) bool {
	if secret == "" {
		return false
	}
	h, ok := strings.CutPrefix(strings.TrimSpace(header), "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(h)
	if err != nil {
		return false
	}
	return hmac.Equal(got, mac(body, secret))
}

// parseRetryAfter reads a Retry-After value (RFC 9110 section 10.2.3):
// delay-seconds or an HTTP date, relative to now. A date in the past is a
// zero delay; an absurd number of seconds is taken as maxRetryS.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		for i := 0; i < len(v); i++ {
			if v[i] < '0' || v[i] > '9' {
				return 0, false
			}
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > maxRetryS {
			n = maxRetryS // only overflow is possible here: all digits
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}

// backoff returns the wait after the n-th failed attempt.
func (d *Dispatcher) backoff(n int) time.Duration {
	b, limit := d.minBackoff(), d.maxBackoff()
	for i := 1; i < n && b < limit; i++ {
		b *= 2
	}
	b = min(b, limit)
	half := b / 2
	return half + rand.N(b-half+1)
}

func (d *Dispatcher) wakeCh() chan struct{} {
	d.wakeOnce.Do(func() { d.wake = make(chan struct{}, 1) })
	return d.wake
}

var defaultClient = &http.Client{
	Timeout: DefaultTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

func (d *Dispatcher) client() *http.Client {
	if d.Client != nil {
		return d.Client
	}
	return defaultClient
}

func (d *Dispatcher) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Dispatcher) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

func (d *Dispatcher) maxAttempts() int { return orDefault(d.MaxAttempts, DefaultMaxAttempts) }
func (d *Dispatcher) batch() int       { return orDefault(d.Batch, DefaultBatch) }
func (d *Dispatcher) minBackoff() time.Duration {
	return orDefault(d.MinBackoff, DefaultMinBackoff)
}
func (d *Dispatcher) maxBackoff() time.Duration {
	return orDefault(d.MaxBackoff, DefaultMaxBackoff)
}
func (d *Dispatcher) pollInterval() time.Duration {
	return orDefault(d.PollInterval, DefaultPollInterval)
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// cleanExcerpt makes an answer's start fit for a log line: valid UTF-8,
// control characters as spaces, trimmed.
func cleanExcerpt(b []byte) string {
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
