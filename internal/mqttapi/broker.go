// Package mqttapi is the server's embedded MQTT broker for devices, built on
// mochi-mqtt: MQTT 3.1.1 and 5 over TLS with client certificates.
//
// Parties and trust: a device connects with its LDevID; the TLS layer
// requires a client certificate that chains to one of the device CAs the
// server gives (Config.TLS.ClientCAs), so a client without a certificate, or
// with one from another CA, never gets to send an MQTT packet. The caller's
// Config.Check then decides on the verified certificate (revocation, device
// state) and names the device: its tenant and serial. The MQTT username and
// password are ignored.
// A refused device gets CONNACK "not authorized" (0x87 in MQTT 5, 0x05 in
// 3.1.1).
//
// Tenants: serials are unique per tenant only, so two tenants may each have
// a device SN-1, both connected, both using cradle/devices/SN-1/... . The
// broker keeps them apart by namespacing every topic of a device session
// inside mochi: a hook on each packet read from a device prefixes its
// PUBLISH topic, SUBSCRIBE and UNSUBSCRIBE filters (and its will topic) with
// "tenants/<tenant id>/", and mochi's packet-encode hook strips that prefix
// from each PUBLISH written to the device, so devices see only the topics of
// TopicRoot. Every topic is prefixed, whatever it is (except those starting
// with '$', which mochi and the ACL refuse as they are), so a device that
// writes "tenants/8/..." itself lands in "tenants/7/tenants/8/..." and is
// refused. The server publishes with Publish, which names the device's
// tenant and serial; MQTT client identifiers, live sessions, Disconnect,
// Sessions and every callback carry the tenant too. Rewriting topics keeps
// mochi's own delivery (QoS 1 and 2 in-flight tracking, resends, persistent
// sessions), which writing to a client's connection directly would have to
// redo; mochi offers no per-client publish.
//
// Topics and ACL: a device publishes and subscribes only in its own
// subtree, TopicRoot+serial (see TopicRoot for the layout and Allowed for
// the rule), inside its tenant's namespace. Anything else is refused, with reason "not authorized" where
// the protocol has one (a QoS 1/2 PUBACK or PUBREC in MQTT 5, the SUBACK
// entry in both; a refused QoS 1/2 publish in 3.1.1 closes the connection, as
// mochi does, and a QoS 0 one is dropped) and reported to Config.OnRefusal.
// Will messages must also name the device's own subtree, or the connection
// is refused. Retained messages and topic aliases from devices are not
// offered. MQTT client identifiers are namespaced by tenant and serial
// inside the broker, so a device can never take over another device's
// session, in its tenant or another.
//
// Revocation: Disconnect closes every live session of a device at once. A
// session is registered before Check runs, so a device whose Check passed
// just before its revocation is still found by the Disconnect that follows;
// since the tenant is not known before Check, such a pending session is
// registered under the certificate's serial alone, and Disconnect of
// (tenant, serial) also closes the pending sessions of that serial in any
// tenant: a device of another tenant with the same serial that was being
// checked at that very moment is refused once and connects again.
//
// Payloads: a device publish larger than Config.MaxPayload is rejected (MQTT
// 5: reason "implementation specific error" with a reason string; 3.1.1:
// acknowledged and dropped), counted in Stats, and the connection is kept;
// packets beyond MaxPayload plus 64 KiB close the connection before they
// are read whole.
package mqttapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"cradle"
)

// Defaults of Config's zero values.
const (
	DefaultAddr           = ":8883"
	DefaultMaxPayload     = 256 << 10
	DefaultConnectTimeout = 10 * time.Second
	DefaultCheckTimeout   = 5 * time.Second
	// DefaultSessionExpiry bounds how long a disconnected persistent
	// session (clean start false) keeps its subscriptions and queue.
	DefaultSessionExpiry = time.Hour
)

// Refusal actions passed to Config.OnRefusal.
const (
	ActionPublish   = "publish"
	ActionSubscribe = "subscribe"
	ActionWill      = "will"
)

// Device names a device: serials are unique within a tenant only.
type Device struct {
	TenantID int64
	Serial   string
}

// String returns "tenant/serial", for logs.
func (d Device) String() string { return strconv.FormatInt(d.TenantID, 10) + "/" + d.Serial }

// Config configures a Broker. Check and TLS are required; every other zero
// value has the default documented on its field.
type Config struct {
	// Addr is the TCP address to listen on; DefaultAddr when empty.
	Addr string
	// TLS holds the server certificate (Certificates or GetCertificate) and,
	// in ClientCAs, the device CAs. The broker uses a clone with ClientAuth
	// set to tls.RequireAndVerifyClientCert and at least TLS 1.2.
	TLS *tls.Config
	// Check decides whether the device holding cert (already verified
	// against TLS.ClientCAs) may connect, and returns the device: its
	// tenant id, which must be positive, and its serial, which must pass
	// cradle.ValidateSerial. An error refuses the connection with "not
	// authorized". ctx ends after CheckTimeout or when the broker closes.
	Check func(ctx context.Context, cert *x509.Certificate) (Device, error)
	// OnMessage, when set, receives every publish a device makes in its
	// own subtree, synchronously on that device's connection (a slow
	// OnMessage slows that device only). payload must not be modified; it
	// may be kept. topic is as the device wrote it, under TopicRoot.
	OnMessage func(dev Device, topic string, payload []byte)
	// OnRefusal, when set, is told of every publish, subscription or will
	// refused by the ACL; action is one of the Action constants and topic
	// is as the device wrote it.
	OnRefusal func(dev Device, action, topic string)
	// OnSubscribe, when set, is told of each topic filter a device
	// subscribed to and was granted, after the SUBACK: the moment to send
	// it what it waits for (its desired configuration, pending commands).
	// It runs on the device's connection; filter is as the device wrote it.
	OnSubscribe func(dev Device, filter string)
	// MaxPayload is the largest payload a device may publish, in bytes;
	// DefaultMaxPayload when zero.
	MaxPayload int
	// ConnectTimeout bounds the TLS handshake and the CONNECT packet;
	// DefaultConnectTimeout when zero.
	ConnectTimeout time.Duration
	// CheckTimeout bounds one call of Check; DefaultCheckTimeout when zero.
	CheckTimeout time.Duration
	// SessionExpiry caps the session expiry a client may ask for;
	// DefaultSessionExpiry when zero.
	SessionExpiry time.Duration
	// Logger receives the broker's and mochi's logs; none when nil.
	Logger *slog.Logger
}

// Stats are counters since Open.
type Stats struct {
	// Sessions is the number of live device sessions.
	Sessions int
	// Refused counts connections refused by Check or by their will topic.
	Refused uint64
	// Denied counts publishes and subscriptions refused by the ACL.
	Denied uint64
	// Oversize counts publishes rejected for a payload over MaxPayload.
	Oversize uint64
	// Messages counts publishes passed to OnMessage.
	Messages uint64
}

// Broker is the embedded MQTT broker. Create it with New, start it with
// Open, stop it with Close.
type Broker struct {
	cfg    Config
	tls    *tls.Config
	log    *slog.Logger
	server *mqtt.Server
	ln     net.Listener
	// listen replaces net.Listen when set (tests: connections without
	// file descriptors).
	listen func(network, addr string) (net.Listener, error)
	ctx    context.Context
	cancel context.CancelFunc

	mu sync.Mutex
	// sessions maps a device to its live clients; tenant 0 holds the
	// sessions pending Check, by certificate serial.
	sessions map[Device]map[*mqtt.Client]struct{}

	refused, denied, oversize, messages atomic.Uint64
	closed                              atomic.Bool
}

// New validates cfg and returns a Broker; it does no I/O.
func New(cfg Config) (*Broker, error) {
	if cfg.Check == nil {
		return nil, errors.New("mqttapi: Config.Check is required: it decides which devices may connect")
	}
	if cfg.TLS == nil || (len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil) {
		return nil, errors.New("mqttapi: Config.TLS must hold the server certificate")
	}
	if cfg.TLS.ClientCAs == nil {
		return nil, errors.New("mqttapi: Config.TLS.ClientCAs must hold the device CAs")
	}
	if cfg.MaxPayload < 0 {
		return nil, fmt.Errorf("mqttapi: Config.MaxPayload %d is negative", cfg.MaxPayload)
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.MaxPayload == 0 {
		cfg.MaxPayload = DefaultMaxPayload
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = DefaultSessionExpiry
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := cfg.TLS.Clone()
	t.ClientAuth = tls.RequireAndVerifyClientCert
	if t.MinVersion < tls.VersionTLS12 {
		t.MinVersion = tls.VersionTLS12
	}
	return &Broker{cfg: cfg, tls: t, log: log, sessions: map[Device]map[*mqtt.Client]struct{}{}}, nil
}

// Open listens on Config.Addr and starts serving.
func (b *Broker) Open() error {
	if b.server != nil {
		return errors.New("mqttapi: broker already opened")
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(b.cfg.MaxPayload) + 64<<10
	caps.MaximumSessionExpiryInterval = uint32(b.cfg.SessionExpiry / time.Second)
	// One outbound slot per pointer: the default 8192 costs 64 KiB per
	// connection; devices get few messages from the server.
	caps.MaximumClientWritesPending = 64
	caps.MaximumInflight = 64
	caps.ReceiveMaximum = 64
	caps.TopicAliasMaximum = 0
	caps.RetainAvailable = 0
	caps.SharedSubAvailable = 0
	caps.MinimumProtocolVersion = 4 // 3.1.1 and 5
	b.server = mqtt.New(&mqtt.Options{
		Capabilities:            caps,
		ClientNetReadBufferSize: 1024,
		// The write buffer is only used while packets queue up.
		ClientNetWriteBufferSize: 1024,
		InlineClient:             true,
		Logger:                   b.log,
		SysTopicResendInterval:   3600,
	})
	if err := b.server.AddHook(&hook{b: b}, nil); err != nil {
		return fmt.Errorf("mqttapi: add hook: %w", err)
	}
	listen := b.listen
	if listen == nil {
		listen = net.Listen
	}
	ln, err := listen("tcp", b.cfg.Addr)
	if err != nil {
		return fmt.Errorf("mqttapi: listen on %s: %w", b.cfg.Addr, err)
	}
	b.ln = ln
	b.ctx, b.cancel = context.WithCancel(context.Background())
	l := listeners.NewNet("devices", &tlsListener{Listener: ln, tls: b.tls, timeout: b.cfg.ConnectTimeout, log: b.log})
	if err := b.server.AddListener(l); err != nil {
		ln.Close()
		return fmt.Errorf("mqttapi: add listener: %w", err)
	}
	if err := b.server.Serve(); err != nil {
		ln.Close()
		return fmt.Errorf("mqttapi: serve: %w", err)
	}
	return nil
}

// Addr returns the address the broker listens on, or nil before Open.
func (b *Broker) Addr() net.Addr {
	if b.ln == nil {
		return nil
	}
	return b.ln.Addr()
}

// Publish sends payload to the sessions of device dev subscribed to its
// topic DeviceTopic(dev.Serial, suffix), at most at qos (0, 1 or 2; each
// subscriber gets the lower of qos and its own). No device of another
// tenant receives it, whatever its serial. It returns an EINVALID error for
// a tenant id that is not positive, a serial that does not pass
// cradle.ValidateSerial, a suffix that does not make a valid topic name
// (empty, wildcards) or a qos above 2.
func (b *Broker) Publish(dev Device, suffix string, payload []byte, qos byte) error {
	if b.server == nil || b.closed.Load() {
		return errors.New("mqttapi: publish on a broker that is not open")
	}
	if err := validDevice(dev); err != nil {
		return err
	}
	if suffix == "" || !validTail(suffix, false) {
		return cradle.Errorf(cradle.EINVALID, "invalid MQTT topic suffix %q: want levels without wildcards, such as %s", clip(suffix), TopicCommands)
	}
	if qos > 2 {
		return cradle.Errorf(cradle.EINVALID, "invalid MQTT QoS %d: want 0, 1 or 2", qos)
	}
	topic := DeviceTopic(dev.Serial, suffix)
	if err := b.server.Publish(namespace(dev.TenantID)+topic, payload, false, qos); err != nil {
		return fmt.Errorf("mqttapi: publish to %s in tenant %d: %w", topic, dev.TenantID, err)
	}
	return nil
}

// validDevice returns an EINVALID error unless dev has a positive tenant
// id and a valid serial.
func validDevice(dev Device) error {
	if dev.TenantID <= 0 {
		return cradle.Errorf(cradle.EINVALID, "invalid tenant id %d for device %q: want a positive id", dev.TenantID, clip(dev.Serial))
	}
	return cradle.ValidateSerial(dev.Serial)
}

// namespace returns the prefix of every topic of tenant id's devices
// inside the broker.
func namespace(tenantID int64) string {
	return "tenants/" + strconv.FormatInt(tenantID, 10) + "/"
}

// Sessions returns the number of live sessions of device dev.
func (b *Broker) Sessions(dev Device) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return countLive(b.sessions[dev])
}

// countLive counts the clients of m that are not closed.
func countLive(m map[*mqtt.Client]struct{}) int {
	n := 0
	for cl := range m {
		if !cl.Closed() {
			n++
		}
	}
	return n
}

// Disconnect closes every live session of device dev at once (an MQTT 5
// client first gets DISCONNECT "not authorized"), and the sessions of
// dev.Serial still pending Check in any tenant, and returns how many it
// closed; it logs nothing, the caller knows why. It does not wait for slow peers: a write that does not finish
// within 100 ms is abandoned and the connection closed. Call it after the
// state Check consults has changed, so the device cannot come back.
func (b *Broker) Disconnect(dev Device) int {
	b.mu.Lock()
	var live []*mqtt.Client
	for _, d := range []Device{dev, {Serial: dev.Serial}} {
		for cl := range b.sessions[d] {
			if !cl.Closed() {
				live = append(live, cl)
			}
		}
		delete(b.sessions, d)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, cl := range live {
		wg.Go(func() {
			if cl.Properties.ProtocolVersion == 5 {
				_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_ = b.server.DisconnectClient(cl, packets.ErrNotAuthorized)
			}
			cl.Stop(packets.ErrNotAuthorized)
		})
	}
	wg.Wait()
	return len(live)
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	b.mu.Lock()
	n := 0
	for _, m := range b.sessions {
		n += countLive(m)
	}
	b.mu.Unlock()
	return Stats{
		Sessions: n,
		Refused:  b.refused.Load(),
		Denied:   b.denied.Load(),
		Oversize: b.oversize.Load(),
		Messages: b.messages.Load(),
	}
}

// Close stops listening, closes every connection and waits for their
// goroutines, or until ctx ends.
func (b *Broker) Close(ctx context.Context) error {
	if b.server == nil || !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.cancel()
	done := make(chan struct{})
	go func() {
		_ = b.server.Close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqttapi: close: %w", ctx.Err())
	}
}

// register records cl as a live session of dev, dropping entries of
// sessions that ended without OnDisconnect.
func (b *Broker) register(dev Device, cl *mqtt.Client) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.sessions[dev]
	if m == nil {
		m = map[*mqtt.Client]struct{}{}
		b.sessions[dev] = m
	}
	for old := range m {
		if old.Closed() {
			delete(m, old)
		}
	}
	m[cl] = struct{}{}
}

func (b *Broker) unregister(dev Device, cl *mqtt.Client) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if m := b.sessions[dev]; m != nil {
		delete(m, cl)
		if len(m) == 0 {
			delete(b.sessions, dev)
		}
	}
}

func (b *Broker) refuse(dev Device, action, topic string) {
	b.denied.Add(1)
	b.log.Info("mqtt refused", "tenant", dev.TenantID, "serial", dev.Serial, "action", action, "topic", clip(topic))
	if b.cfg.OnRefusal != nil {
		b.cfg.OnRefusal(dev, action, topic)
	}
}

// deviceOf returns the device a client was admitted as: its broker-side
// client ID is tenant id + "/" + serial + "/" + the client's own
// identifier, set by OnConnect once Check passed.
func deviceOf(cl *mqtt.Client) (Device, bool) {
	if cl.Net.Inline {
		return Device{}, false
	}
	t, rest, ok := strings.Cut(cl.ID, "/")
	if !ok {
		return Device{}, false
	}
	serial, _, ok := strings.Cut(rest, "/")
	id, err := strconv.ParseInt(t, 10, 64)
	if !ok || err != nil || id <= 0 {
		return Device{}, false
	}
	return Device{TenantID: id, Serial: serial}, true
}

// inward returns topic (or filter) of a device in its tenant's namespace:
// every topic is prefixed except empty ones and those starting with '$',
// which mochi and the ACL refuse as they are.
func inward(dev Device, topic string) string {
	if topic == "" || strings.HasPrefix(topic, "$") {
		return topic
	}
	return namespace(dev.TenantID) + topic
}

// outward returns a topic of the broker as device dev wrote it, and
// whether it was in dev's tenant namespace.
func outward(dev Device, topic string) (string, bool) {
	return strings.CutPrefix(topic, namespace(dev.TenantID))
}

// hook carries the broker's authentication, ACL and message handling into
// mochi.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "cradle-devices" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnSubscribed, mqtt.OnDisconnect,
		mqtt.OnPacketRead, mqtt.OnPacketEncode:
		return true
	}
	return false
}

// errRefused ends a connection whose CONNACK refusal was already sent.
var errRefused = errors.New("mqttapi: connection refused")

// OnConnect authenticates the device from its client certificate, renames
// its client ID into the device's namespace, and checks its will topic and
// moves it into the tenant's namespace.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return h.deny(cl, Device{}, "no TLS connection")
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return h.deny(cl, Device{}, "no client certificate")
	}
	cert := st.PeerCertificates[0]
	// Registered before Check, so that a Disconnect following a
	// revocation that Check did not yet see still finds this session.
	// The tenant is not known yet: pending sessions are kept under
	// tenant 0 (see the package doc).
	pending := Device{Serial: cert.Subject.SerialNumber}
	if cradle.ValidateSerial(pending.Serial) == nil {
		b.register(pending, cl)
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CheckTimeout)
	dev, err := b.cfg.Check(ctx, cert)
	cancel()
	if err == nil {
		err = validDevice(dev)
	}
	if err != nil {
		b.unregister(pending, cl)
		return h.deny(cl, pending, err.Error())
	}
	b.unregister(pending, cl)
	b.register(dev, cl)
	if cl.Properties.Will.Flag != 0 {
		if !Allowed(dev.Serial, cl.Properties.Will.TopicName, false) {
			b.unregister(dev, cl)
			b.refuse(dev, ActionWill, cl.Properties.Will.TopicName)
			return h.deny(cl, dev, "will topic outside the device's own topics")
		}
		cl.Properties.Will.TopicName = inward(dev, cl.Properties.Will.TopicName)
	}
	cl.ID = strconv.FormatInt(dev.TenantID, 10) + "/" + dev.Serial + "/" + cl.ID
	if cl.Closed() { // Disconnect ran while Check did
		return errRefused
	}
	return nil
}

// deny sends CONNACK "not authorized" and ends the connection.
func (h *hook) deny(cl *mqtt.Client, dev Device, why string) error {
	h.b.refused.Add(1)
	h.b.log.Info("mqtt connection refused", "tenant", dev.TenantID, "serial", dev.Serial, "remote", cl.Net.Remote, "reason", why)
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = packets.ErrNotAuthorized.Code
		ack.Properties.ReasonString = packets.ErrNotAuthorized.Reason
	} else {
		ack.ReasonCode = packets.Err3NotAuthorized.Code
	}
	_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = cl.WritePacket(ack)
	return errRefused
}

// OnConnectAuthenticate admits every client OnConnect let through; the
// username and password play no part.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, ok := deviceOf(cl)
	return ok
}

// OnPacketRead moves the topic of a device's PUBLISH and the filters of
// its SUBSCRIBE and UNSUBSCRIBE into its tenant's namespace, before mochi
// validates and routes them.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	dev, ok := deviceOf(cl)
	if !ok {
		return pk, nil
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		pk.TopicName = inward(dev, pk.TopicName)
	case packets.Subscribe, packets.Unsubscribe:
		pk.Filters = slices.Clone(pk.Filters)
		for i := range pk.Filters {
			pk.Filters[i].Filter = inward(dev, pk.Filters[i].Filter)
		}
	}
	return pk, nil
}

// OnPacketEncode takes the tenant's namespace off the topic of a PUBLISH
// written to a device, so it sees the topic it subscribed to.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish {
		return pk
	}
	if dev, ok := deviceOf(cl); ok {
		if t, ok := outward(dev, pk.TopicName); ok {
			pk.TopicName = t
		}
	}
	return pk
}

// OnACLCheck applies Allowed, inside the device's tenant namespace, to
// publishes (write), subscriptions and deliveries to the device.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	dev, ok := deviceOf(cl)
	if !ok {
		return false
	}
	t, ok := outward(dev, topic)
	if ok && Allowed(dev.Serial, t, !write) {
		return true
	}
	action := ActionSubscribe
	if write {
		action = ActionPublish
	}
	h.b.refuse(dev, action, t)
	return false
}

// OnPublish enforces MaxPayload and hands device messages to OnMessage.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	dev, ok := deviceOf(cl)
	if !ok {
		return pk, nil // the server's own Publish
	}
	topic, _ := outward(dev, pk.TopicName) // OnACLCheck allowed it: in the namespace
	b := h.b
	if len(pk.Payload) > b.cfg.MaxPayload {
		b.oversize.Add(1)
		b.log.Info("mqtt payload too large", "tenant", dev.TenantID, "serial", dev.Serial, "topic", topic, "bytes", len(pk.Payload), "max", b.cfg.MaxPayload)
		if pk.FixedHeader.Qos > 0 {
			ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
			if pk.FixedHeader.Qos == 2 {
				ack.FixedHeader.Type = packets.Pubrec
			}
			if cl.Properties.ProtocolVersion == 5 {
				ack.ReasonCode = packets.ErrImplementationSpecificError.Code
				ack.Properties.ReasonString = fmt.Sprintf("payload of %d bytes is larger than the %d allowed", len(pk.Payload), b.cfg.MaxPayload)
			}
			_ = cl.WritePacket(ack)
		}
		return pk, packets.ErrRejectPacket
	}
	if b.cfg.OnMessage != nil {
		b.messages.Add(1)
		b.cfg.OnMessage(dev, topic, pk.Payload)
	}
	return pk, nil
}

// OnSubscribed tells OnSubscribe of each filter granted.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	dev, ok := deviceOf(cl)
	if !ok || h.b.cfg.OnSubscribe == nil {
		return
	}
	for i, f := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] <= 2 { // a granted QoS
			if filter, ok := outward(dev, f.Filter); ok {
				h.b.cfg.OnSubscribe(dev, filter)
			}
		}
	}
}

// OnDisconnect forgets the session.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if dev, ok := deviceOf(cl); ok {
		h.b.unregister(dev, cl)
	}
}

// tlsListener wraps accepted connections in TLS with a deadline for the
// handshake and CONNECT (mochi sets the keepalive deadline after CONNECT),
// and keeps accepting through temporary errors such as running out of file
// descriptors, where mochi would stop serving.
type tlsListener struct {
	net.Listener
	tls     *tls.Config
	timeout time.Duration
	log     *slog.Logger
}

func (l *tlsListener) Accept() (net.Conn, error) {
	delay := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(l.timeout))
			return tls.Server(c, l.tls), nil
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		l.log.Warn("mqtt accept failed; retrying", "error", err, "retry_in", delay)
		time.Sleep(delay)
		delay = min(2*delay, time.Second)
	}
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("?")))
}
