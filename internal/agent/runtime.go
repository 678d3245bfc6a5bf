package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"cradle"
	"cradle/internal/agent/mqtt"
	"cradle/internal/agent/spool"
)

// Device topics (the server's mqttapi topics; the agent cannot import the
// broker's package).
const (
	topicRoot           = "cradle/devices/"
	topicTelemetry      = "telemetry"
	topicTwinReported   = "twin/reported"
	topicTwinDesired    = "twin/desired"
	topicCommands       = "commands"
	topicCommandResults = "commands/result"
	topicUpdate         = "update"
)

// Channels a Runtime uses, as Channel reports them.
const (
	ChannelNone  = ""      // no certificate yet, or between attempts
	ChannelMQTT  = "mqtt"  // connected to the broker
	ChannelHTTPS = "https" // the HTTPS device API, while MQTT cannot connect
)

// maxBatch bounds the telemetry bytes sent in one message.
const maxBatch = 64 << 10

// RuntimeOptions configures NewRuntime.
type RuntimeOptions struct {
	// Serial is the device's serial, which names its topics; required.
	Serial string
	// ServerURL is the device listener ("https://host:8443"); required.
	ServerURL string
	// MQTTAddr is the broker's host:port; "" uses the HTTPS device API
	// only.
	MQTTAddr string
	// MQTTVersion is the MQTT protocol; zero means MQTT 5.
	MQTTVersion mqtt.Version
	// Roots are the trust anchors of the server's certificate; required.
	Roots *x509.CertPool
	// Interval is the telemetry period; zero means one minute.
	Interval time.Duration
	// PollInterval is how often the twin and commands are fetched over
	// HTTPS while MQTT is down; zero means Interval.
	PollInterval time.Duration
	// Collect returns a telemetry payload (cradle.ParseTelemetry's JSON
	// object) at now; nil sends no telemetry.
	Collect func(ctx context.Context, now time.Time) ([]byte, error)
	// Spool keeps telemetry until the server has it; required with
	// Collect.
	Spool *spool.Spool
	// Twin handles a desired document and returns the reported document
	// to send (nil: nothing to send); nil leaves desired documents
	// unhandled.
	Twin func(ctx context.Context, desired []byte) (reported []byte)
	// UpdateNotice is called with each notice on the update topic (the
	// server has an update for the unit); nil leaves the topic
	// unsubscribed. It must not block.
	UpdateNotice func(payload []byte)
	// TwinReported returns the current reported document, sent after each
	// connection (nil or a nil result: nothing).
	TwinReported func() []byte
	// Command handles a command envelope and returns its result (nil:
	// nothing to send); nil leaves commands unhandled.
	Command func(ctx context.Context, envelope []byte) (result []byte)
	// Backoff spaces the attempts to reach the broker; the zero value here
	// means Base 5 s, Max 5 min.
	Backoff Backoff
	// Rand draws the jitter; nil means math/rand/v2's global source.
	Rand interface{ Int64N(int64) int64 }
	// Now is the clock for telemetry times and certificate checks; nil
	// means time.Now.
	Now func() time.Time
	// RequestTimeout bounds each exchange with the server; zero means 30 s.
	RequestTimeout time.Duration
	// Logger receives connection changes and failures; nil discards.
	Logger *slog.Logger
	// Dial makes the TCP connections to the broker and the device API;
	// nil means a net.Dialer. The simulator dials through a link it can
	// pull to take a unit offline.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Runtime keeps a unit's channel to the server once it has an LDevID:
// MQTT to the broker, the HTTPS device API while MQTT cannot connect. It
// sends the collected telemetry through the spool (at least once, oldest
// first), hands desired twin documents and commands to the plugged-in
// functions one at a time, and sends their replies.
type Runtime struct {
	opts RuntimeOptions

	mu   sync.Mutex
	cert *tls.Certificate
	// transport is the one Transport hands out; its idle connections
	// are closed when the certificate changes.
	transport *http.Transport
	haveCh    chan struct{} // closed at the first certificate
	renewed   chan struct{} // a new certificate replaced the old one

	collected chan struct{} // telemetry was spooled
	channel   atomic.Value  // string
	connects  atomic.Int64  // MQTT connections made
	http      *httpsChannel
}

// NewRuntime checks opts and returns a runtime; Run runs it.
func NewRuntime(opts RuntimeOptions) (*Runtime, error) {
	switch {
	case opts.Serial == "":
		return nil, errors.New("agent: runtime: no device serial")
	case opts.Roots == nil:
		return nil, errors.New("agent: runtime: no trust anchors for the server")
	case opts.Collect != nil && opts.Spool == nil:
		return nil, errors.New("agent: runtime: telemetry needs a spool")
	}
	u, err := url.Parse(opts.ServerURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("agent: runtime: server %q is not an https:// URL", opts.ServerURL)
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Minute
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = opts.Interval
	}
	if opts.Backoff.Base <= 0 {
		opts.Backoff.Base = 5 * time.Second
	}
	if opts.Backoff.Max <= 0 {
		opts.Backoff.Max = 5 * time.Minute
	}
	if opts.Rand == nil {
		opts.Rand = globalRand{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Runtime{opts: opts, haveCh: make(chan struct{}), renewed: make(chan struct{}, 1), collected: make(chan struct{}, 1)}
	r.channel.Store(ChannelNone)
	r.http = newHTTPSChannel(r, u)
	return r, nil
}

// SetCertificate gives the runtime the unit's LDevID (with its key and
// chain), at start and after each renewal: a new certificate closes the
// connections made with the old one and connects again.
func (r *Runtime) SetCertificate(c tls.Certificate) {
	if c.Leaf == nil && len(c.Certificate) > 0 {
		c.Leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	r.mu.Lock()
	old := r.cert
	r.cert = &c
	tr := r.transport
	r.mu.Unlock()
	if tr != nil {
		// A kept-alive connection presents the certificate of its
		// handshake (none, before the first): the next request must
		// shake hands again to present this one.
		tr.CloseIdleConnections()
	}
	switch {
	case old == nil:
		close(r.haveCh)
	case len(old.Certificate) == 0 || len(c.Certificate) == 0 || !bytes.Equal(old.Certificate[0], c.Certificate[0]):
		select {
		case r.renewed <- struct{}{}:
		default:
		}
	}
}

// CertNotAfter returns the expiry of the current certificate, zero
// before there is one.
func (r *Runtime) CertNotAfter() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert == nil || r.cert.Leaf == nil {
		return time.Time{}
	}
	return r.cert.Leaf.NotAfter
}

// Reconnects returns how many times the runtime connected to the broker
// again after its first connection.
func (r *Runtime) Reconnects() int64 { return max(r.connects.Load()-1, 0) }

// Channel returns the channel in use: ChannelMQTT, ChannelHTTPS or
// ChannelNone.
func (r *Runtime) Channel() string { return r.channel.Load().(string) }

// Transport returns the HTTP transport to the device listener that
// presents the current LDevID, for exchanges outside the channel (such as
// uploading logs and updates). It is the same transport at each call;
// SetCertificate closes its idle connections, so that no request goes
// out on a connection opened with an older certificate (or none).
func (r *Runtime) Transport() *http.Transport {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.transport == nil {
		r.transport = &http.Transport{TLSClientConfig: r.tlsConfig(), ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second, DialContext: r.opts.Dial}
	}
	return r.transport
}

func (r *Runtime) certificate() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert
}

// tlsConfig presents the current certificate and trusts only Roots.
func (r *Runtime) tlsConfig() *tls.Config {
	return &tls.Config{
		RootCAs:    r.opts.Roots,
		MinVersion: tls.VersionTLS12,
		Time:       r.opts.Now,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := r.certificate(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
	}
}

func (r *Runtime) topic(suffix string) string { return topicRoot + r.opts.Serial + "/" + suffix }

// Run collects telemetry from the start and, once SetCertificate gave a
// certificate, keeps the channel until ctx is done; then it returns nil.
// MQTT connections are retried with Backoff; between attempts the HTTPS
// device API carries telemetry, the twin and commands.
func (r *Runtime) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if r.opts.Collect != nil {
		wg.Go(func() { r.collectLoop(ctx) })
	}
	select {
	case <-ctx.Done():
		return nil
	case <-r.haveCh:
	}
	defer r.http.close()
	failures := 0
	for ctx.Err() == nil {
		var until time.Time // zero: HTTPS for good
		if r.opts.MQTTAddr != "" {
			connected, err := r.runMQTT(ctx)
			r.channel.Store(ChannelNone)
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, errRenewed):
				r.opts.Logger.Info("reconnecting with the renewed certificate")
				failures = 0
				continue
			case connected:
				r.opts.Logger.Warn("MQTT connection lost", "err", err)
				failures = 1
			default:
				failures++
				r.opts.Logger.Warn("MQTT connection failed; using HTTPS meanwhile", "addr", r.opts.MQTTAddr, "err", err, "failures", failures)
			}
			until = r.opts.Now().Add(r.opts.Backoff.Delay(failures, r.opts.Rand))
		}
		r.channel.Store(ChannelHTTPS)
		r.http.run(ctx, until)
		r.channel.Store(ChannelNone)
	}
	return nil
}

// collectLoop spools a telemetry payload every Interval, from now on.
func (r *Runtime) collectLoop(ctx context.Context) {
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	for {
		now := r.opts.Now()
		if b, err := r.opts.Collect(ctx, now); err != nil {
			r.opts.Logger.Warn("telemetry not collected", "err", err)
		} else if err := r.opts.Spool.Append(b); err != nil {
			r.opts.Logger.Error("telemetry not spooled", "err", err)
		} else {
			r.opts.Logger.Debug("telemetry collected", "at", now.UTC().Format(time.RFC3339Nano), "bytes", len(b), "spooled", r.opts.Spool.Stats().Records)
			select {
			case r.collected <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// errRefused marks a payload the server refused for what it is: sending
// it again cannot help.
type errRefused struct{ err error }

func (e errRefused) Error() string { return e.err.Error() }
func (e errRefused) Unwrap() error { return e.err }

var errRenewed = errors.New("agent: certificate renewed")

// drain sends the spooled telemetry, oldest first, in batches (a JSON
// array of payloads), acknowledging each batch sent. A batch the server
// refuses is sent record by record so only the bad records are dropped.
func (r *Runtime) drain(ctx context.Context, send func(ctx context.Context, payload []byte) error) error {
	sp := r.opts.Spool
	if sp == nil {
		return nil
	}
	for ctx.Err() == nil {
		recs, err := sp.Peek(maxBatch)
		if err != nil || len(recs) == 0 {
			return err
		}
		// A payload the server would refuse would take its whole batch
		// down with it (over MQTT, silently): drop it here.
		ids := make([]uint64, 0, len(recs))
		good := recs[:0]
		for _, rec := range recs {
			if _, err := cradle.ParseTelemetry(bytes.NewReader(rec.Data), maxBatch); err != nil {
				r.opts.Logger.Error("spooled telemetry is malformed; dropped", "err", err)
				if err := sp.Ack(rec.ID); err != nil {
					return err
				}
				continue
			}
			good = append(good, rec)
			ids = append(ids, rec.ID)
		}
		if recs = good; len(recs) == 0 {
			continue
		}
		err = send(ctx, batch(recs))
		var refused errRefused
		if errors.As(err, &refused) && len(recs) > 1 {
			for _, rec := range recs {
				if err := send(ctx, rec.Data); errors.As(err, &refused) {
					r.opts.Logger.Error("telemetry refused by the server; dropped", "err", err)
				} else if err != nil {
					return err
				}
				if err := sp.Ack(rec.ID); err != nil {
					return err
				}
			}
			continue
		}
		if errors.As(err, &refused) {
			r.opts.Logger.Error("telemetry refused by the server; dropped", "err", err)
		} else if err != nil {
			return err
		}
		if err := sp.Ack(ids...); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// batch joins payloads into one: a single payload as it is, several as a
// JSON array (which cradle.ParseTelemetry reads as such).
func batch(recs []spool.Record) []byte {
	if len(recs) == 1 {
		return recs[0].Data
	}
	var b bytes.Buffer
	b.WriteByte('[')
	for i, rec := range recs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(rec.Data)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// runMQTT connects to the broker and serves the connection until it ends,
// ctx is done or the certificate is renewed (errRenewed). connected says
// whether the connection was made.
func (r *Runtime) runMQTT(ctx context.Context) (connected bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	conn, err := mqtt.Dial(dctx, mqtt.Options{Addr: r.opts.MQTTAddr, TLS: r.tlsConfig(), Version: r.opts.MQTTVersion, ClientID: "agent", Dial: r.opts.Dial})
	cancel()
	if err != nil {
		return false, err
	}
	ctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stop()
		conn.Close()
		wg.Wait()
	}()
	select { // a renewal while connecting: that connection used the old certificate
	case <-r.renewed:
		return true, errRenewed
	default:
	}
	r.connects.Add(1)
	r.channel.Store(ChannelMQTT)
	r.opts.Logger.Info("MQTT connected", "addr", r.opts.MQTTAddr, "version", r.opts.MQTTVersion.String(), "reconnects", r.Reconnects())
	publish := func(ctx context.Context, suffix string, payload []byte) error {
		pctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
		defer cancel()
		err := conn.Publish(pctx, r.topic(suffix), payload)
		if re := (*mqtt.ReasonError)(nil); errors.As(err, &re) {
			return errRefused{err}
		}
		return err
	}
	var filters []string
	if r.opts.Twin != nil {
		filters = append(filters, r.topic(topicTwinDesired))
	}
	if r.opts.Command != nil {
		filters = append(filters, r.topic(topicCommands))
	}
	if r.opts.UpdateNotice != nil {
		filters = append(filters, r.topic(topicUpdate))
	}
	if len(filters) > 0 {
		sctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
		err := conn.Subscribe(sctx, filters...)
		cancel()
		if err != nil {
			return true, err
		}
	}
	if r.opts.TwinReported != nil {
		if rep := r.opts.TwinReported(); rep != nil {
			if err := publish(ctx, topicTwinReported, rep); err != nil {
				return true, fmt.Errorf("send the reported twin: %w", err)
			}
		}
	}
	wg.Go(func() {
		for {
			m, ok := conn.Next(ctx)
			if !ok {
				return
			}
			suffix, reply := "", []byte(nil)
			switch m.Topic {
			case r.topic(topicTwinDesired):
				suffix, reply = topicTwinReported, r.opts.Twin(ctx, m.Payload)
			case r.topic(topicCommands):
				suffix, reply = topicCommandResults, r.opts.Command(ctx, m.Payload)
			case r.topic(topicUpdate):
				r.opts.UpdateNotice(m.Payload)
				continue
			default:
				r.opts.Logger.Debug("MQTT message on an unknown topic", "topic", m.Topic)
				continue
			}
			if reply == nil {
				continue
			}
			if err := publish(ctx, suffix, reply); err != nil {
				r.opts.Logger.Warn("reply not sent", "topic", r.topic(suffix), "err", err)
			}
		}
	})
	sendTelemetry := func(ctx context.Context, p []byte) error { return publish(ctx, topicTelemetry, p) }
	for {
		if err := r.drain(ctx, sendTelemetry); err != nil && ctx.Err() == nil {
			r.opts.Logger.Warn("telemetry not sent over MQTT", "err", err)
		}
		select {
		case <-ctx.Done():
			return true, nil
		case <-conn.Done():
			return true, conn.Err()
		case <-r.renewed:
			return true, errRenewed
		case <-r.collected:
		}
	}
}

// ChannelParams returns what the channel needs from the factory data:
// the unit's serial and the trust anchors of the server.
func (id *Identity) ChannelParams(ctx context.Context) (serial string, roots *x509.CertPool, err error) {
	f, err := id.readFactory(ctx)
	if err != nil {
		return "", nil, err
	}
	return f.serial, f.roots, nil
}
