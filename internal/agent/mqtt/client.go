// Package mqtt is the agent's small MQTT client: MQTT 3.1.1 or 5 over TLS,
// clean sessions, QoS 1 both ways, no credentials (the broker knows the
// device by its client certificate), no will, no retained messages.
//
// It is hand-written because the agent has a size budget (8 MB stripped):
// the Eclipse Paho clients cost 730 KB (paho.mqtt.golang, 3.1.1) and
// 790 KB (paho.golang, 5) of a stripped binary, this one a few tens.
//
// A Conn runs one goroutine that reads packets: it answers a PUBLISH with
// PUBACK once the message is queued for Next, completes the Publish and
// Subscribe calls waiting for their acknowledgement, and ends the
// connection on a malformed packet, a server DISCONNECT or a missed
// keep-alive. Sessions are clean: what the device must not miss (its
// desired twin, pending commands) the server sends again when the device
// subscribes (mqttapi's OnSubscribe).
package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Version is the MQTT protocol level.
type Version byte

// Protocol versions.
const (
	V311 Version = 4 // MQTT 3.1.1
	V5   Version = 5 // MQTT 5
)

// String returns "3.1.1" or "5".
func (v Version) String() string {
	if v == V311 {
		return "3.1.1"
	}
	return "5"
}

// ParseVersion reads "3.1.1" (or "4") and "5"; "" is 5.
func ParseVersion(s string) (Version, error) {
	switch s {
	case "", "5":
		return V5, nil
	case "3.1.1", "4":
		return V311, nil
	}
	return 0, fmt.Errorf("mqtt: protocol version %q: use 5 or 3.1.1", s)
}

// Options configures Dial.
type Options struct {
	// Addr is the broker's host:port.
	Addr string
	// TLS is the client's TLS configuration (client certificate, roots);
	// required.
	TLS *tls.Config
	// Version is the protocol; zero means V5.
	Version Version
	// ClientID identifies the session; the broker may rename it.
	ClientID string
	// KeepAlive is the keep-alive interval; zero means 60 s.
	KeepAlive time.Duration
	// MaxPacket bounds inbound packets; zero means 1 MiB.
	MaxPacket int
	// Dial makes the TCP connection; nil means a net.Dialer. The
	// simulator (internal/sim) dials through a link it can pull.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// dialTLS dials opts.Addr (through opts.Dial when set) and completes the
// TLS handshake.
func dialTLS(ctx context.Context, opts Options) (net.Conn, error) {
	dial := opts.Dial
	if dial == nil {
		dial = new(net.Dialer).DialContext
	}
	raw, err := dial(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, err
	}
	cfg := opts.TLS
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(opts.Addr)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

// Message is a PUBLISH received from the broker.
type Message struct {
	Topic   string
	Payload []byte
}

// maxQueued bounds the messages received but not yet taken from Messages;
// a server sending more ends the connection.
const maxQueued = 256

// Conn is a connection to the broker. Its methods are safe for
// concurrent use.
type Conn struct {
	opts Options
	nc   net.Conn

	wmu sync.Mutex // serializes writes

	mu      sync.Mutex
	nextID  uint16
	pending map[uint16]chan ack
	queue   []Message
	err     error

	notify chan struct{} // a message was queued
	done   chan struct{} // closed when the connection ends
	pong   chan struct{}
}

// ErrClosed is the error of a Conn closed by Close.
var ErrClosed = errors.New("mqtt: connection closed")

// ReasonError is a refusal by the broker: a CONNACK, PUBACK or SUBACK
// reason code of 0x80 or more (MQTT 5) or a CONNACK return code (3.1.1).
type ReasonError struct {
	Packet string // CONNACK, PUBACK, SUBACK or DISCONNECT
	Code   byte
	Reason string // the broker's reason string, if it sent one
}

func (e *ReasonError) Error() string {
	s := fmt.Sprintf("%s reason code 0x%02x (%s)", e.Packet, e.Code, codeName(e.Code))
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

func codeName(c byte) string {
	switch c {
	case 0x01, 0x84:
		return "unacceptable protocol version"
	case 0x02, 0x85:
		return "client identifier not valid"
	case 0x03, 0x88:
		return "server unavailable"
	case 0x04, 0x86:
		return "bad user name or password"
	case 0x05, 0x87:
		return "not authorized"
	case 0x80:
		return "unspecified error"
	case 0x83:
		return "implementation specific error"
	case 0x8B:
		return "server shutting down"
	case 0x8E:
		return "session taken over"
	case 0x97:
		return "quota exceeded"
	case 0x9C:
		return "use another server"
	}
	return "refused"
}

// Dial connects to the broker over TLS and completes the MQTT handshake
// within ctx. A refusal by the broker is a *ReasonError.
func Dial(ctx context.Context, opts Options) (*Conn, error) {
	if opts.TLS == nil {
		return nil, errors.New("mqtt: no TLS configuration")
	}
	if opts.Version == 0 {
		opts.Version = V5
	}
	if opts.Version != V5 && opts.Version != V311 {
		return nil, fmt.Errorf("mqtt: protocol level %d: use 4 (3.1.1) or 5", opts.Version)
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = time.Minute
	}
	if opts.MaxPacket <= 0 {
		opts.MaxPacket = 1 << 20
	}
	nc, err := dialTLS(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	br := bufio.NewReader(nc)
	ka := uint16(min(opts.KeepAlive/time.Second, 65535))
	if _, err := nc.Write(connectPacket(opts.Version, opts.ClientID, ka).encode()); err != nil {
		nc.Close()
		return nil, fmt.Errorf("mqtt: send CONNECT: %w", err)
	}
	p, err := readPacket(br, opts.MaxPacket)
	if err == nil && p.typ != typeConnack {
		err = fmt.Errorf("mqtt: broker answered CONNECT with packet type %d", p.typ)
	}
	var a ack
	if err == nil {
		a, err = parseAck(opts.Version, typeConnack, p.body)
	}
	if err == nil && a.codes[0] != 0 {
		err = &ReasonError{Packet: "CONNACK", Code: a.codes[0], Reason: a.reason}
	}
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("mqtt: connect: %w", ctx.Err())
		}
		return nil, fmt.Errorf("mqtt: connect: %w", err)
	}
	if !stop() {
		nc.Close()
		return nil, fmt.Errorf("mqtt: connect: %w", ctx.Err())
	}
	nc.SetDeadline(time.Time{})
	c := &Conn{opts: opts, nc: nc, pending: map[uint16]chan ack{}, notify: make(chan struct{}, 1),
		done: make(chan struct{}), pong: make(chan struct{}, 1)}
	go c.read(br)
	go c.keepAlive()
	return c, nil
}

// Done is closed when the connection ends; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (ErrClosed after Close), or nil
// while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close sends DISCONNECT and closes the connection.
func (c *Conn) Close() error {
	c.wmu.Lock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.nc.Write(packet{typ: typeDisconnect}.encode())
	c.wmu.Unlock()
	c.end(ErrClosed)
	return nil
}

// end records the first cause and closes the connection.
func (c *Conn) end(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.mu.Unlock()
	c.nc.Close()
	close(c.done)
}

// Next returns the oldest message received and not yet taken, waiting
// for one until ctx is done or the connection ends (then ok is false).
// Messages still queued when the connection ends are returned first.
func (c *Conn) Next(ctx context.Context) (m Message, ok bool) {
	for {
		c.mu.Lock()
		if len(c.queue) > 0 {
			m = c.queue[0]
			c.queue = c.queue[1:]
			c.mu.Unlock()
			return m, true
		}
		c.mu.Unlock()
		select {
		case <-c.notify:
		case <-c.done:
			c.mu.Lock()
			n := len(c.queue)
			c.mu.Unlock()
			if n == 0 {
				return Message{}, false
			}
		case <-ctx.Done():
			return Message{}, false
		}
	}
}

func (c *Conn) write(p packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(c.opts.KeepAlive))
	_, err := c.nc.Write(p.encode())
	if err != nil {
		c.end(fmt.Errorf("mqtt: write: %w", err))
	}
	return err
}

// exchange sends the packet made with a fresh packet ID and waits for
// its acknowledgement.
func (c *Conn) exchange(ctx context.Context, build func(id uint16) packet) (ack, error) {
	ch := make(chan ack, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return ack{}, err
	}
	var id uint16
	for {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, busy := c.pending[c.nextID]; !busy {
			id = c.nextID
			break
		}
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if err := c.write(build(id)); err != nil {
		return ack{}, fmt.Errorf("mqtt: %w", err)
	}
	select {
	case a := <-ch:
		return a, nil
	case <-c.done:
		return ack{}, c.Err()
	case <-ctx.Done():
		return ack{}, ctx.Err()
	}
}

// Publish sends payload to topic with QoS 1 and waits for the broker's
// PUBACK. A refusal (MQTT 5 reason code 0x80 or more) is a *ReasonError.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte) error {
	a, err := c.exchange(ctx, func(id uint16) packet { return publishPacket(c.opts.Version, topic, id, payload) })
	if err != nil {
		return err
	}
	if a.codes[0] >= 0x80 {
		return fmt.Errorf("mqtt: publish to %s: %w", topic, &ReasonError{Packet: "PUBACK", Code: a.codes[0], Reason: a.reason})
	}
	return nil
}

// Subscribe subscribes to filters with QoS 1 and waits for the SUBACK. A
// filter refused is a *ReasonError.
func (c *Conn) Subscribe(ctx context.Context, filters ...string) error {
	a, err := c.exchange(ctx, func(id uint16) packet { return subscribePacket(c.opts.Version, id, filters) })
	if err != nil {
		return err
	}
	if len(a.codes) != len(filters) {
		return fmt.Errorf("mqtt: SUBACK has %d return codes for %d filters", len(a.codes), len(filters))
	}
	for i, code := range a.codes {
		if code >= 0x80 {
			return fmt.Errorf("mqtt: subscribe %q: %w", filters[i], &ReasonError{Packet: "SUBACK", Code: code, Reason: a.reason})
		}
	}
	return nil
}

// read is the connection's reader goroutine.
func (c *Conn) read(br *bufio.Reader) {
	for {
		c.nc.SetReadDeadline(time.Now().Add(c.opts.KeepAlive * 3 / 2))
		p, err := readPacket(br, c.opts.MaxPacket)
		if err != nil {
			c.end(fmt.Errorf("mqtt: read: %w", err))
			return
		}
		if err := c.handle(p); err != nil {
			c.end(err)
			return
		}
	}
}

func (c *Conn) handle(p packet) error {
	v := c.opts.Version
	switch p.typ {
	case typePublish:
		m, err := parsePublish(v, p.flags, p.body)
		if err != nil {
			return err
		}
		if m.qos == 2 {
			return errors.New("mqtt: the broker sent QoS 2, which was not asked for")
		}
		c.mu.Lock()
		if len(c.queue) >= maxQueued {
			c.mu.Unlock()
			return fmt.Errorf("mqtt: more than %d messages waiting to be handled", maxQueued)
		}
		c.queue = append(c.queue, Message{Topic: m.topic, Payload: m.payload})
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default:
		}
		if m.qos == 1 {
			return c.write(pubackPacket(v, m.id))
		}
		return nil
	case typePuback, typeSuback:
		a, err := parseAck(v, p.typ, p.body)
		if err != nil {
			return err
		}
		c.mu.Lock()
		ch := c.pending[a.id]
		c.mu.Unlock()
		if ch != nil {
			ch <- a
		}
		return nil
	case typePingresp:
		select {
		case c.pong <- struct{}{}:
		default:
		}
		return nil
	case typeDisconnect:
		a, err := parseAck(v, p.typ, p.body)
		if err != nil {
			return err
		}
		return &ReasonError{Packet: "DISCONNECT", Code: a.codes[0], Reason: a.reason}
	}
	return fmt.Errorf("mqtt: unexpected packet type %d from the broker", p.typ)
}

// keepAlive pings the broker every KeepAlive and ends the connection when
// a ping goes unanswered for another KeepAlive.
func (c *Conn) keepAlive() {
	t := time.NewTicker(c.opts.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if c.write(packet{typ: typePingreq}) != nil {
			return
		}
		select {
		case <-c.done:
			return
		case <-c.pong:
		case <-time.After(c.opts.KeepAlive):
			c.end(errors.New("mqtt: the broker did not answer a ping"))
			return
		}
	}
}
