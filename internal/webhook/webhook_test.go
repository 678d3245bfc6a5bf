package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/webhook"
)

// outbox is an in-memory cradle.FactoryOutbox that, like the store,
// answers only the system role.
type outbox struct {
	mu      sync.Mutex
	entries []*entry
	polled  chan struct{} // receives (without blocking) on every DueFactoryEvents
	done    chan struct{} // receives (without blocking) on every delivered event
}

type entry struct {
	ev        cradle.FactoryEvent
	next      time.Time
	delivered bool
	dead      bool
	lastErr   string
}

var _ cradle.FactoryOutbox = (*outbox)(nil)

func newOutbox() *outbox {
	return &outbox{polled: make(chan struct{}, 1), done: make(chan struct{}, 100)}
}

func (o *outbox) add(evs ...cradle.FactoryEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, ev := range evs {
		ev.ID = int64(len(o.entries) + 1)
		o.entries = append(o.entries, &entry{ev: ev})
	}
}

func (o *outbox) get(id int64) entry {
	o.mu.Lock()
	defer o.mu.Unlock()
	return *o.entries[id-1]
}

func (o *outbox) checkActor(ctx context.Context) error {
	if a, ok := cradle.ActorFromContext(ctx); !ok || a.Role != cradle.RoleSystem {
		return cradle.Errorf(cradle.EFORBIDDEN, "the factory outbox is for the system role")
	}
	return nil
}

func (o *outbox) DueFactoryEvents(ctx context.Context, now time.Time, limit int) ([]*cradle.FactoryEvent, error) {
	select {
	case o.polled <- struct{}{}:
	default:
	}
	if err := o.checkActor(ctx); err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var due []*cradle.FactoryEvent
	for _, e := range o.entries {
		if !e.delivered && !e.dead && !e.next.After(now) && len(due) < limit {
			ev := e.ev
			due = append(due, &ev)
		}
	}
	return due, nil
}

func (o *outbox) FactoryEventDelivered(ctx context.Context, id int64) error {
	if err := o.checkActor(ctx); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.entries[id-1].delivered = true
	select {
	case o.done <- struct{}{}:
	default:
	}
	return nil
}

func (o *outbox) FactoryEventFailed(ctx context.Context, id int64, next time.Time, lastError string) error {
	if err := o.checkActor(ctx); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.entries[id-1]
	e.ev.Attempts++
	e.next, e.lastErr, e.dead = next, lastError, next.IsZero()
	return nil
}

// clock is a fake clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var t0 = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

func systemContext(t *testing.T) context.Context {
	return cradle.NewContextWithActor(t.Context(), cradle.SystemActor(1, "webhook"))
}

// request is what a receiver saw.
type request struct {
	header http.Header
	body   []byte
}

// receiver is an httptest server that records requests and answers with
// respond.
type receiver struct {
	*httptest.Server
	mu  sync.Mutex
	got []request
}

func newReceiver(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, body []byte)) *receiver {
	t.Helper()
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, request{r.Header.Clone(), body})
		rc.mu.Unlock()
		respond(w, r, body)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

func ok(w http.ResponseWriter, _ *http.Request, _ []byte) { w.WriteHeader(http.StatusNoContent) }

func testEvent(serial string) cradle.FactoryEvent {
	data, _ := json.Marshal(map[string]any{"id": "rec-" + serial, "serial": serial, "status": "provisioned", "tests": []any{map[string]any{"name": "boot", "passed": true}}})
	return cradle.FactoryEvent{
		EventID: "rec-" + serial,
		Type:    cradle.EventUnitProvisioned,
		Source:  "/cradle/factory/stations/line-1",
		Subject: serial,
		Time:    time.Date(2026, 11, 24, 16, 59, 58, 123456789, time.FixedZone("CET", 3600)),
		Data:    data,
	}
}

func newDispatcher(url string, ob *outbox, c *clock) *webhook.Dispatcher {
	return &webhook.Dispatcher{URL: url, Outbox: ob, Now: c.Now, Logger: slog.New(slog.DiscardHandler)}
}

func TestDeliverCloudEvent(t *testing.T) {
	type decoded struct {
		encoding binding.Encoding
		id       string
		source   string
		typ      string
		subject  string
		time     time.Time
		dataType string
		data     any
		err      string
	}
	var (
		mu   sync.Mutex
		seen []decoded
	)
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		// Decode the request as the CloudEvents SDK's HTTP binding does.
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		msg := cehttp.NewMessageFromHttpRequest(r)
		d := decoded{encoding: msg.ReadEncoding()}
		ev, err := binding.ToEvent(r.Context(), msg)
		if err == nil {
			err = ev.Validate()
		}
		if err != nil {
			d.err = err.Error()
		} else {
			d.id, d.source, d.typ, d.subject, d.time, d.dataType = ev.ID(), ev.Source(), ev.Type(), ev.Subject(), ev.Time(), ev.DataContentType()
			if err := json.Unmarshal(ev.Data(), &d.data); err != nil {
				d.err = fmt.Sprintf("data is not JSON: %v", err)
			}
		}
		mu.Lock()
		seen = append(seen, d)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})
	ob, c := newOutbox(), &clock{t: t0}
	first, second := testEvent("CR-00001"), testEvent("CR-00002")
	second.Type = cradle.EventUnitFailed
	ob.add(first, second)

	delivered, failed, err := newDispatcher(rc.URL, ob, c).DeliverDue(systemContext(t))
	if err != nil || delivered != 2 || failed != 0 {
		t.Fatalf("DeliverDue = %d, %d, %v; want 2 delivered", delivered, failed, err)
	}
	var want []decoded
	for _, ev := range []cradle.FactoryEvent{first, second} {
		var data any
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatal(err)
		}
		want = append(want, decoded{binding.EncodingStructured, ev.EventID, ev.Source, ev.Type, ev.Subject, ev.Time.UTC(), "application/json", data, ""})
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(want, seen, cmp.AllowUnexported(decoded{})); diff != "" {
		t.Errorf("events as the CloudEvents SDK decodes them, in order (-want +got):\n%s", diff)
	}
	for i, r := range rc.requests() {
		if got := r.header.Get("Content-Type"); got != "application/cloudevents+json; charset=utf-8" {
			t.Errorf("request %d: Content-Type %q", i, got)
		}
		if got := r.header.Get(webhook.AttemptHeader); got != "1" {
			t.Errorf("request %d: %s %q, want 1", i, webhook.AttemptHeader, got)
		}
		if got := r.header.Get(webhook.SignatureHeader); got != "" {
			t.Errorf("request %d: signature %q sent without a secret", i, got)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(r.body, &raw); err != nil {
			t.Fatalf("request %d: body is not a JSON object: %v", i, err)
		}
		if !strings.HasPrefix(string(raw["data"]), "{") || string(raw["specversion"]) != `"1.0"` {
			t.Errorf("request %d: data must be embedded JSON and specversion 1.0: %s", i, r.body)
		}
		if _, err := time.Parse(time.RFC3339, strings.Trim(string(raw["time"]), `"`)); err != nil {
			t.Errorf("request %d: time is not RFC 3339: %v", i, err)
		}
	}
	for id := int64(1); id <= 2; id++ {
		if e := ob.get(id); !e.delivered {
			t.Errorf("event %d not marked delivered", id)
		}
	}
}

func TestStatuses(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		delivered bool
	}{
		{"200", http.StatusOK, true},
		{"201", http.StatusCreated, true},
		{"204", http.StatusNoContent, true},
		{"redirect is not followed", http.StatusFound, false},
		{"400", http.StatusBadRequest, false},
		{"404", http.StatusNotFound, false},
		{"500", http.StatusInternalServerError, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
				if r.URL.Path == "/moved" {
					w.WriteHeader(http.StatusOK)
					return
				}
				if tt.status == http.StatusFound {
					w.Header().Set("Location", "/moved")
				}
				w.WriteHeader(tt.status)
			})
			ob, c := newOutbox(), &clock{t: t0}
			ob.add(testEvent("CR-1"))
			delivered, failed, err := newDispatcher(rc.URL, ob, c).DeliverDue(systemContext(t))
			if err != nil {
				t.Fatal(err)
			}
			if e := ob.get(1); delivered == 1 != tt.delivered || failed == 1 == tt.delivered || e.delivered != tt.delivered {
				t.Fatalf("DeliverDue = %d delivered, %d failed, outbox %+v; want delivered %v", delivered, failed, e, tt.delivered)
			}
			if n := len(rc.requests()); n != 1 {
				t.Errorf("receiver got %d requests, want 1", n)
			}
			if e := ob.get(1); !tt.delivered && !strings.Contains(e.lastErr, strconv.Itoa(tt.status)) {
				t.Errorf("last error %q does not name status %d", e.lastErr, tt.status)
			}
		})
	}
}

// TestBackoff fails every attempt with a 500 and checks each retry's
// schedule on the fake clock, that nothing is sent before it is due, and
// that the event is delivered once the receiver recovers.
func TestBackoff(t *testing.T) {
	var (
		mu      sync.Mutex
		healthy bool
	)
	rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		mu.Lock()
		defer mu.Unlock()
		if healthy {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, "database down\n"+strings.Repeat("x", 1<<20))
	})
	ob, c := newOutbox(), &clock{t: t0}
	ob.add(testEvent("CR-1"))
	d := newDispatcher(rc.URL, ob, c)
	d.MaxBackoff = 8 * time.Second
	ctx := systemContext(t)

	for n, nominal := range []time.Duration{1, 2, 4, 8, 8, 8} {
		nominal *= time.Second
		now := c.Now()
		delivered, failed, err := d.DeliverDue(ctx)
		if err != nil || delivered != 0 || failed != 1 {
			t.Fatalf("attempt %d: DeliverDue = %d, %d, %v; want 1 failed", n+1, delivered, failed, err)
		}
		reqs := rc.requests()
		if len(reqs) != n+1 {
			t.Fatalf("attempt %d: receiver got %d requests", n+1, len(reqs))
		}
		if got := reqs[n].header.Get(webhook.AttemptHeader); got != strconv.Itoa(n+1) {
			t.Errorf("attempt %d: %s %q", n+1, webhook.AttemptHeader, got)
		}
		e := ob.get(1)
		if e.dead || e.ev.Attempts != n+1 {
			t.Fatalf("attempt %d: outbox entry %+v", n+1, e)
		}
		if wait := e.next.Sub(now); wait < nominal/2 || wait > nominal {
			t.Errorf("attempt %d: next attempt in %s, want %s to %s", n+1, wait, nominal/2, nominal)
		}
		if !strings.HasPrefix(e.lastErr, "HTTP 500 Internal Server Error: database down") || len(e.lastErr) > 1100 {
			t.Errorf("attempt %d: last error (%d bytes) %.100q: want the status and a bounded excerpt", n+1, len(e.lastErr), e.lastErr)
		}
		// Not due yet: nothing is sent.
		c.Set(e.next.Add(-time.Millisecond))
		if delivered, failed, err := d.DeliverDue(ctx); err != nil || delivered+failed != 0 {
			t.Fatalf("attempt %d: a pass before the event is due = %d, %d, %v", n+1, delivered, failed, err)
		}
		c.Set(e.next)
	}
	mu.Lock()
	healthy = true
	mu.Unlock()
	if delivered, failed, err := d.DeliverDue(ctx); err != nil || delivered != 1 || failed != 0 {
		t.Fatalf("after recovery: DeliverDue = %d, %d, %v; want 1 delivered", delivered, failed, err)
	}
	if got := rc.requests()[6].header.Get(webhook.AttemptHeader); got != "7" {
		t.Errorf("after recovery: %s %q, want 7", webhook.AttemptHeader, got)
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		retryAfter string
		min, max   time.Duration // of the wait
	}{
		{"503 seconds", http.StatusServiceUnavailable, "120", 120 * time.Second, 120 * time.Second},
		{"429 HTTP date", http.StatusTooManyRequests, t0.Add(300 * time.Second).Format(http.TimeFormat), 300 * time.Second, 300 * time.Second},
		{"capped", http.StatusServiceUnavailable, "86400", time.Hour, time.Hour},
		{"at least the minimum backoff", http.StatusTooManyRequests, "0", time.Second / 2, time.Second},
		{"date in the past", http.StatusServiceUnavailable, t0.Add(-time.Hour).Format(http.TimeFormat), time.Second / 2, time.Second},
		{"garbage", http.StatusServiceUnavailable, "soon", time.Second / 2, time.Second},
		{"ignored on 500", http.StatusInternalServerError, "120", time.Second / 2, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, _ []byte) {
				w.Header().Set("Retry-After", tt.retryAfter)
				w.WriteHeader(tt.status)
			})
			ob, c := newOutbox(), &clock{t: t0}
			ob.add(testEvent("CR-1"))
			if _, failed, err := newDispatcher(rc.URL, ob, c).DeliverDue(systemContext(t)); err != nil || failed != 1 {
				t.Fatalf("DeliverDue = %d failed, %v", failed, err)
			}
			if wait := ob.get(1).next.Sub(t0); wait < tt.min || wait > tt.max {
				t.Errorf("next attempt in %s, want %s to %s", wait, tt.min, tt.max)
			}
		})
	}
}

func TestGiveUp(t *testing.T) {
	rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		http.Error(w, "no such line", http.StatusBadGateway)
	})
	ob, c := newOutbox(), &clock{t: t0}
	ob.add(testEvent("CR-1"))
	bad := testEvent("CR-2")
	bad.Data = []byte(`{"serial":`)
	ob.add(bad)
	d := newDispatcher(rc.URL, ob, c)
	d.MaxAttempts = 3
	ctx := systemContext(t)
	for i := range 3 {
		if _, _, err := d.DeliverDue(ctx); err != nil {
			t.Fatal(err)
		}
		if e := ob.get(1); e.dead != (i == 2) {
			t.Fatalf("after attempt %d: dead = %v", i+1, e.dead)
		}
		if i == 0 {
			if e := ob.get(2); !e.dead || !strings.Contains(e.lastErr, "not JSON") {
				t.Errorf("an event whose data is not JSON must be dead at once: %+v", e)
			}
		}
		c.Set(c.Now().Add(2 * time.Hour))
	}
	e := ob.get(1)
	if !e.next.IsZero() || e.ev.Attempts != 3 || !strings.Contains(e.lastErr, "502") || !strings.Contains(e.lastErr, "no such line") {
		t.Errorf("dead event: %+v", e)
	}
	if delivered, failed, err := d.DeliverDue(ctx); err != nil || delivered+failed != 0 {
		t.Errorf("a pass after give-up = %d, %d, %v; want nothing", delivered, failed, err)
	}
	if n := len(rc.requests()); n != 3 {
		t.Errorf("receiver got %d requests, want 3 (the bad event is never sent)", n)
	}
}

// TestFailureDoesNotBlock: a failed event does not stop the next ones.
func TestFailureDoesNotBlock(t *testing.T) {
	rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, body []byte) {
		if strings.Contains(string(body), `"subject":"CR-1"`) {
			w.WriteHeader(http.StatusUnprocessableEntity)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	ob, c := newOutbox(), &clock{t: t0}
	ob.add(testEvent("CR-1"), testEvent("CR-2"), testEvent("CR-3"))
	delivered, failed, err := newDispatcher(rc.URL, ob, c).DeliverDue(systemContext(t))
	if err != nil || delivered != 2 || failed != 1 {
		t.Fatalf("DeliverDue = %d, %d, %v; want 2 delivered and 1 failed", delivered, failed, err)
	}
	var order []string
	for _, r := range rc.requests() {
		var e struct{ Subject string }
		json.Unmarshal(r.body, &e)
		order = append(order, e.Subject)
	}
	if diff := cmp.Diff([]string{"CR-1", "CR-2", "CR-3"}, order); diff != "" {
		t.Errorf("order of delivery (-want +got):\n%s", diff)
	}
}

func TestSignature(t *testing.T) {
	const secret = "s3cret-shared-with-the-MES"
	rc := newReceiver(t, ok)
	ob, c := newOutbox(), &clock{t: t0}
	ob.add(testEvent("CR-1"))
	d := newDispatcher(rc.URL, ob, c)
	d.Secret = secret
	if delivered, _, err := d.DeliverDue(systemContext(t)); err != nil || delivered != 1 {
		t.Fatalf("DeliverDue = %d, %v", delivered, err)
	}
	r := rc.requests()[0]
	sig := r.header.Get(webhook.SignatureHeader)
	if !strings.HasPrefix(sig, "sha256=") || len(sig) != len("sha256=")+64 {
		t.Fatalf("signature header %q, want sha256=<64 hex digits>", sig)
	}
	tampered := slices.Clone(r.body)
	tampered[len(tampered)-2] ^= 1
	tests := []struct {
		name   string
		body   []byte
		header string
		secret string
		want   bool
	}{
		{"as sent", r.body, sig, secret, true},
		{"upper-case hex", r.body, "sha256=" + strings.ToUpper(strings.TrimPrefix(sig, "sha256=")), secret, true},
		{"tampered body", tampered, sig, secret, false},
		{"other secret", r.body, sig, secret + "x", false},
		{"empty secret", r.body, webhook.Sign(r.body, ""), "", false},
		{"no prefix", r.body, strings.TrimPrefix(sig, "sha256="), secret, false},
		{"sha1 prefix", r.body, "sha1=" + strings.TrimPrefix(sig, "sha256="), secret, false},
		{"not hex", r.body, "sha256=zz", secret, false},
		{"truncated", r.body, sig[:len(sig)-2], secret, false},
		{"empty", r.body, "", secret, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := webhook.VerifySignature(tt.body, tt.header, tt.secret); got != tt.want {
				t.Errorf("VerifySignature = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHangingReceiverIsCutOff(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) }) // runs before rc.Close
	ob, c := newOutbox(), &clock{t: t0}
	ob.add(testEvent("CR-1"), testEvent("CR-2"))
	d := newDispatcher(rc.URL, ob, c)
	d.Client = &http.Client{Timeout: 100 * time.Millisecond}
	start := time.Now()
	delivered, failed, err := d.DeliverDue(systemContext(t))
	if err != nil || delivered != 0 || failed != 2 {
		t.Fatalf("DeliverDue = %d, %d, %v; want 2 failed", delivered, failed, err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("the pass took %s: the client timeout did not cut the receiver off", elapsed)
	}
	if e := ob.get(1); !strings.Contains(e.lastErr, "Timeout") || e.next.IsZero() {
		t.Errorf("outbox entry %+v: want a timeout, retried later", e)
	}
}

func TestNotifyWakesRun(t *testing.T) {
	rc := newReceiver(t, ok)
	ob, c := newOutbox(), &clock{t: t0}
	d := newDispatcher(rc.URL, ob, c)
	d.PollInterval = time.Hour
	ctx, cancel := context.WithCancel(systemContext(t))
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	select { // the first pass, at once
	case <-ob.polled:
	case <-time.After(10 * time.Second):
		t.Fatal("Run made no first pass")
	}
	ob.add(testEvent("CR-1"))
	d.Notify()
	select {
	case <-ob.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Notify did not wake Run (the poll interval is an hour)")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	if e := ob.get(1); !e.delivered {
		t.Errorf("event not delivered: %+v", e)
	}
}

func TestRunKeepsPassingWhileBatchesAreFull(t *testing.T) {
	rc := newReceiver(t, ok)
	ob, c := newOutbox(), &clock{t: t0}
	for i := range 5 {
		ob.add(testEvent(fmt.Sprintf("CR-%d", i)))
	}
	d := newDispatcher(rc.URL, ob, c)
	d.PollInterval, d.Batch = time.Hour, 2
	ctx, cancel := context.WithCancel(systemContext(t))
	defer cancel()
	go d.Run(ctx)
	for i := range 5 {
		select {
		case <-ob.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of 5 events delivered: Run waited a poll interval after a full batch", i)
		}
	}
}

func TestNeedsSystemActor(t *testing.T) {
	ob, c := newOutbox(), &clock{t: t0}
	_, _, err := newDispatcher("http://127.0.0.1:1/", ob, c).DeliverDue(t.Context())
	if cradle.ErrorCode(err) != cradle.EFORBIDDEN {
		t.Errorf("DeliverDue without the system actor = %v, want the outbox's EFORBIDDEN", err)
	}
}

func TestValidate(t *testing.T) {
	ob := newOutbox()
	tests := []struct {
		name string
		d    *webhook.Dispatcher
		want string // in the error; "" for none
	}{
		{"ok", &webhook.Dispatcher{URL: "https://mes.example.com/events", Outbox: ob}, ""},
		{"no url", &webhook.Dispatcher{Outbox: ob}, "webhook url"},
		{"relative", &webhook.Dispatcher{URL: "/events", Outbox: ob}, "webhook url"},
		{"ftp", &webhook.Dispatcher{URL: "ftp://mes.example.com/", Outbox: ob}, "webhook url"},
		{"password redacted", &webhook.Dispatcher{URL: "ftp://u:hunter2@mes/", Outbox: ob}, "xxxxx"},
		{"no outbox", &webhook.Dispatcher{URL: "http://mes/"}, "no outbox"},
		{"negative attempts", &webhook.Dispatcher{URL: "http://mes/", Outbox: ob, MaxAttempts: -1}, "max_attempts"},
		{"min above max", &webhook.Dispatcher{URL: "http://mes/", Outbox: ob, MinBackoff: time.Minute, MaxBackoff: time.Second}, "min_backoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.d.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("Validate = %v, want EINVALID with %q", err, tt.want)
			}
		})
	}
}
