// Package coapapi is the device-facing CoAP listener (RFC 7252) over DTLS
// 1.2, for constrained (MCU) devices and clients such as libcoap's
// coap-client: telemetry, the desired configuration and the firmware of
// the pending update, served in blocks (RFC 7959, Block2).
//
// Parties and keys: the server presents the PKI's server TLS certificate
// (the HTTPS device listener's); a device presents its operational
// certificate (LDevID) in the DTLS handshake, which demands a certificate
// but does not judge it. Check (set by the caller, cmd/cradle: the device
// listener's checks) judges the peer's chain on every request, so that a
// refusal can say in words what was wrong: chain, revocation, an IDevID
// where an LDevID is needed (4.01 for the certificate, 4.03 for the
// device's state or kind of certificate), each with a diagnostic payload.
//
// Resources (paths are short: every byte counts on a constrained link):
//
//	POST /t        telemetry, the JSON of the MQTT telemetry topic; 2.04
//	GET  /c        the device's desired configuration document (JSON); 4.04 when none
//	GET  /fw       the artifact of the device's pending update, in blocks; 4.04 when none
//	GET  /fw/info  a small JSON of the pending update; 4.04 when none
//
// Errors carry the code of the cradle error (table coapCode) and its
// message as the diagnostic payload (text/plain). A request body is
// limited to MaxBody: a bigger one answers 4.13.
//
// Revocation: Disconnect closes every DTLS session that presented one of
// the given certificates, at once; the device's next handshake succeeds
// but its requests are refused by Check. Blocks after the first of a
// block-wise response are served by go-coap from the response it keeps
// for the transfer, without a new Check; closing the session drops that
// transfer too.
package coapapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/dtls"
	dtlsServer "github.com/plgd-dev/go-coap/v3/dtls/server"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/net/responsewriter"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"cradle"
)

// DefaultMaxBody is the default limit of a request body (a telemetry
// message), the MQTT payload limit.
const DefaultMaxBody = 256 << 10

// Firmware is a device's pending update as the CoAP resources serve it.
type Firmware struct {
	// Info is served as JSON at /fw/info.
	Info FirmwareInfo
	// Open opens the artifact; the caller closes it.
	Open func(ctx context.Context) (io.ReadSeekCloser, error)
}

// FirmwareInfo is the JSON of GET /fw/info.
type FirmwareInfo struct {
	RolloutID string `json:"rollout_id"`
	Attempt   int    `json:"attempt"`
	ReleaseID string `json:"release_id"`
	Version   string `json:"version"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
}

// Config is what a Server serves. Addr, Certificate and Check are
// required; a nil service answers its resource with 4.04.
type Config struct {
	// Addr is the UDP host:port to listen on.
	Addr string
	// Certificate is the server's certificate with its chain.
	Certificate tls.Certificate
	// Check judges a request's peer chain (leaf first, as presented in
	// the handshake) and returns its device. Its error is a cradle error:
	// EUNAUTHORIZED (4.01) or EFORBIDDEN (4.03) with the reason the
	// device is told; any other error is internal (5.00, logged). path
	// and remote are for the audit of a refusal.
	Check func(ctx context.Context, peer []*x509.Certificate, path string, remote net.Addr) (*cradle.Device, error)
	// Telemetry stores a telemetry body for the device (ctx carries it
	// as the actor).
	Telemetry func(ctx context.Context, dev *cradle.Device, body io.Reader) error
	// Desired returns the device's desired configuration document, nil
	// when it has none.
	Desired func(ctx context.Context, dev *cradle.Device) ([]byte, error)
	// Firmware returns the device's pending update; ENOTFOUND when none.
	Firmware func(ctx context.Context, dev *cradle.Device) (*Firmware, error)
	// MaxBody limits a request body; DefaultMaxBody when zero.
	MaxBody int64
	// Logger receives refusals and failures; nil discards.
	Logger *slog.Logger
}

// Server is the CoAP listener. New makes it, Open listens, Close stops.
type Server struct {
	cfg Config
	srv *dtlsServer.Server
	ln  *coapNet.DTLSListener
	wg  sync.WaitGroup

	mu       sync.Mutex
	sessions map[*udpClient.Conn]*session
	byCert   map[string]map[*udpClient.Conn]bool // leaf serial (cradle.SerialHex) → sessions
}

// session is a DTLS session with the chain its peer presented.
type session struct {
	chain    []*x509.Certificate
	serial   string
	firmware func() // closes the firmware reader of the last GET /fw
}

// New returns a server of cfg; it does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" || cfg.Check == nil || len(cfg.Certificate.Certificate) == 0 {
		return nil, errors.New("coapapi: Addr, Certificate and Check are required")
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, sessions: map[*udpClient.Conn]*session{}, byCert: map[string]map[*udpClient.Conn]bool{}}, nil
}

// Open listens on Addr and serves in the background until Close.
func (s *Server) Open() error {
	ln, err := coapNet.NewDTLSListener("udp", s.cfg.Addr, &piondtls.Config{
		Certificates: []tls.Certificate{s.cfg.Certificate},
		// Demanded, judged per request by Check (so that a refusal is
		// a 4.01 or 4.03 that says why, not a failed handshake).
		ClientAuth:           piondtls.RequireAnyClientCert,
		ExtendedMasterSecret: piondtls.RequestExtendedMasterSecret,
	})
	if err != nil {
		return fmt.Errorf("coapapi: listen on %s: %w", s.cfg.Addr, err)
	}
	s.ln = ln
	s.srv = dtls.NewServer(
		options.WithHandlerFunc(s.serve),
		options.WithOnNewConn(s.onNewConn),
		// The largest body a block-wise request may assemble: the body
		// limit and room for the options.
		options.WithMaxMessageSize(uint32(s.cfg.MaxBody+1024)),
		options.WithBlockwise(true, blockwise.SZX1024, 30*time.Second),
		options.WithDTLSHandshakeTimeout(10*time.Second),
		options.WithInactivityMonitor(5*time.Minute, func(cc *udpClient.Conn) { cc.Close() }),
		options.WithErrors(func(err error) { s.cfg.Logger.Debug("CoAP", "err", err) }),
	)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil {
			s.cfg.Logger.Error("CoAP listener stopped", "err", err)
		}
	}()
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server and closes every session.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	s.srv.Stop()
	s.wg.Wait()
	s.mu.Lock()
	conns := make([]*udpClient.Conn, 0, len(s.sessions))
	for cc := range s.sessions {
		conns = append(conns, cc)
	}
	s.mu.Unlock()
	for _, cc := range conns {
		cc.Close()
	}
	return nil
}

// Sessions counts the open DTLS sessions that presented the certificate
// of serial (cradle.SerialHex).
func (s *Server) Sessions(serial string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byCert[serial])
}

// Disconnect closes at once every DTLS session whose peer presented one of
// the certificates of serials (cradle.SerialHex), and returns how many it
// closed.
func (s *Server) Disconnect(serials ...string) int {
	var conns []*udpClient.Conn
	s.mu.Lock()
	for _, serial := range serials {
		for cc := range s.byCert[serial] {
			conns = append(conns, cc)
		}
	}
	s.mu.Unlock()
	for _, cc := range conns {
		cc.Close()
		s.forget(cc)
	}
	return len(conns)
}

// onNewConn records a session after its handshake, with its peer chain.
func (s *Server) onNewConn(cc *udpClient.Conn) {
	ss := &session{}
	if dc, ok := cc.NetConn().(*piondtls.Conn); ok {
		if st, ok := dc.ConnectionState(); ok {
			for _, der := range st.PeerCertificates {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					ss.chain = nil
					break
				}
				ss.chain = append(ss.chain, c)
			}
		}
	}
	if len(ss.chain) > 0 {
		ss.serial = cradle.SerialHex(ss.chain[0].SerialNumber)
	}
	s.mu.Lock()
	s.sessions[cc] = ss
	if ss.serial != "" {
		if s.byCert[ss.serial] == nil {
			s.byCert[ss.serial] = map[*udpClient.Conn]bool{}
		}
		s.byCert[ss.serial][cc] = true
	}
	s.mu.Unlock()
	cc.AddOnClose(func() { s.forget(cc) })
}

func (s *Server) forget(cc *udpClient.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[cc]
	if ss == nil {
		return
	}
	delete(s.sessions, cc)
	if ss.firmware != nil {
		ss.firmware()
	}
	if m := s.byCert[ss.serial]; m != nil {
		delete(m, cc)
		if len(m) == 0 {
			delete(s.byCert, ss.serial)
		}
	}
}

// serve answers one request (or the first block of one).
func (s *Server) serve(w *responsewriter.ResponseWriter[*udpClient.Conn], r *pool.Message) {
	if r.Code() < codes.GET || r.Code() > codes.IPATCH { // pings, responses: not ours
		return
	}
	cc := w.Conn()
	s.mu.Lock()
	ss := s.sessions[cc]
	s.mu.Unlock()
	ctx := r.Context()
	var body io.Reader
	if b := r.Body(); b != nil {
		body = b
	}
	req, err := parseRequest(r.Code(), r.Options(), body, s.cfg.MaxBody)
	if err != nil {
		s.answer(w, errorResponse(err), "", cc.RemoteAddr())
		return
	}
	if ss == nil || len(ss.chain) == 0 {
		s.answer(w, errorResponse(cradle.Errorf(cradle.EUNAUTHORIZED, "no client certificate: present the device's LDevID")), req.path, cc.RemoteAddr())
		return
	}
	dev, err := s.cfg.Check(ctx, ss.chain, req.path, cc.RemoteAddr())
	if err != nil {
		s.answer(w, errorResponse(err), req.path, cc.RemoteAddr())
		return
	}
	ctx = cradle.NewContextWithActor(ctx, cradle.Actor{TenantID: dev.TenantID, Role: cradle.RoleDevice, Kind: "device", ID: dev.Serial})
	resp := s.handle(ctx, dev, req)
	if resp.close != nil {
		// go-coap keeps the body for the transfer's later blocks, without
		// telling when it is done: the session holds one firmware reader,
		// closed when the session ends or the device starts another
		// download.
		s.mu.Lock()
		prev := ss.firmware
		ss.firmware = resp.close
		s.mu.Unlock()
		if prev != nil {
			prev()
		}
	}
	s.answer(w, resp, req.path, cc.RemoteAddr())
}

// answer writes resp, and logs refusals and failures.
func (s *Server) answer(w *responsewriter.ResponseWriter[*udpClient.Conn], resp response, path string, remote net.Addr) {
	if resp.err != nil {
		if resp.code == codes.InternalServerError {
			s.cfg.Logger.Error("CoAP request failed", "path", path, "remote", remote, "err", resp.err)
		} else {
			s.cfg.Logger.Warn("CoAP request refused", "path", path, "remote", remote, "code", resp.code.String(), "reason", cradle.ErrorMessage(resp.err))
		}
	}
	if err := w.SetResponse(resp.code, resp.format, resp.body); err != nil {
		s.cfg.Logger.Error("CoAP response", "path", path, "err", err)
	}
}

// request is a parsed CoAP request.
type request struct {
	code codes.Code
	path string
	// format is the Content-Format of body; -1 when absent.
	format int
	body   []byte
}

// parseRequest reads what the server looks at in a request: method, path
// (Uri-Path), Content-Format and body (at most maxBody bytes). Errors are
// EINVALID or ETOOLARGE with what was wrong.
func parseRequest(code codes.Code, opts message.Options, body io.Reader, maxBody int64) (request, error) {
	req := request{code: code, format: -1}
	p, err := opts.Path()
	if err != nil {
		if !errors.Is(err, message.ErrOptionNotFound) {
			return req, cradle.Errorf(cradle.EINVALID, "Uri-Path: %v", err)
		}
		p = "/"
	}
	req.path = p
	if cf, err := opts.ContentFormat(); err == nil {
		req.format = int(cf)
	} else if !errors.Is(err, message.ErrOptionNotFound) {
		return req, cradle.Errorf(cradle.EINVALID, "Content-Format: %v", err)
	}
	if qs, err := opts.Queries(); err == nil && len(qs) > 0 {
		return req, cradle.Errorf(cradle.EINVALID, "Uri-Query %q: no resource takes a query", clip(qs[0], 40))
	}
	if body != nil {
		b, err := io.ReadAll(io.LimitReader(body, maxBody+1))
		if err != nil {
			return req, cradle.Errorf(cradle.EINVALID, "reading the body: %v", err)
		}
		if int64(len(b)) > maxBody {
			return req, cradle.Errorf(cradle.ETOOLARGE, "the body is over %d bytes", maxBody)
		}
		req.body = b
	}
	return req, nil
}

// response is an answer before it is written.
type response struct {
	code   codes.Code
	format message.MediaType
	body   io.ReadSeeker
	close  func()
	err    error // a refusal or failure, for the log
}

// errorResponse answers err: its code's CoAP code with its message as the
// diagnostic payload; an internal error says only that.
func errorResponse(err error) response {
	code := coapCode(cradle.ErrorCode(err))
	msg := cradle.ErrorMessage(err)
	if code == codes.InternalServerError {
		msg = "internal error"
	}
	return response{code: code, format: message.TextPlain, body: bytes.NewReader([]byte(msg)), err: err}
}

// coapCode is the transport's table from error codes to CoAP response
// codes.
func coapCode(code string) codes.Code {
	switch code {
	case cradle.EINVALID:
		return codes.BadRequest
	case cradle.EUNAUTHORIZED:
		return codes.Unauthorized
	case cradle.EFORBIDDEN:
		return codes.Forbidden
	case cradle.ENOTFOUND:
		return codes.NotFound
	case cradle.ECONFLICT:
		return codes.Conflict
	case cradle.ETOOLARGE:
		return codes.RequestEntityTooLarge
	case cradle.ENOTIMPLEMENTED:
		return codes.NotImplemented
	case cradle.EUNAVAILABLE:
		return codes.ServiceUnavailable
	default:
		return codes.InternalServerError
	}
}

// resourceMethods are the resources and the method each takes.
var resourceMethods = map[string]codes.Code{"/t": codes.POST, "/c": codes.GET, "/fw": codes.GET, "/fw/info": codes.GET}

// handle routes a request of an authenticated device.
func (s *Server) handle(ctx context.Context, dev *cradle.Device, req request) response {
	want, ok := resourceMethods[req.path]
	if !ok {
		return errorResponse(cradle.Errorf(cradle.ENOTFOUND, "no resource %s: the resources are POST /t, GET /c, GET /fw, GET /fw/info", clip(req.path, 64)))
	}
	if req.code != want {
		return response{code: codes.MethodNotAllowed, format: message.TextPlain,
			body: bytes.NewReader(fmt.Appendf(nil, "%s takes %s only", req.path, want)), err: cradle.Errorf(cradle.EINVALID, "method %s on %s", req.code, req.path)}
	}
	switch req.path {
	case "/t":
		if req.format != -1 && req.format != int(message.AppJSON) {
			return response{code: codes.UnsupportedMediaType, format: message.TextPlain,
				body: bytes.NewReader([]byte("telemetry is JSON: Content-Format 50 (application/json) or none")), err: cradle.Errorf(cradle.EINVALID, "Content-Format %d", req.format)}
		}
		if s.cfg.Telemetry == nil {
			return errorResponse(cradle.Errorf(cradle.ENOTFOUND, "telemetry is not served here"))
		}
		if err := s.cfg.Telemetry(ctx, dev, bytes.NewReader(req.body)); err != nil {
			return errorResponse(err)
		}
		return response{code: codes.Changed, format: message.TextPlain}
	case "/c":
		if s.cfg.Desired == nil {
			return errorResponse(cradle.Errorf(cradle.ENOTFOUND, "configuration is not served here"))
		}
		doc, err := s.cfg.Desired(ctx, dev)
		if err != nil {
			return errorResponse(err)
		}
		if doc == nil {
			return errorResponse(cradle.Errorf(cradle.ENOTFOUND, "device %q has no desired configuration", dev.Serial))
		}
		return response{code: codes.Content, format: message.AppJSON, body: bytes.NewReader(doc)}
	}
	if s.cfg.Firmware == nil {
		return errorResponse(cradle.Errorf(cradle.ENOTFOUND, "firmware is not served here"))
	}
	fw, err := s.cfg.Firmware(ctx, dev)
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return errorResponse(cradle.Errorf(cradle.ENOTFOUND, "device %q has no pending update", dev.Serial))
	}
	if err != nil {
		return errorResponse(err)
	}
	if req.path == "/fw/info" {
		b, err := json.Marshal(fw.Info)
		if err != nil {
			return errorResponse(err)
		}
		return response{code: codes.Content, format: message.AppJSON, body: bytes.NewReader(b)}
	}
	f, err := fw.Open(ctx)
	if err != nil {
		return errorResponse(err)
	}
	var once sync.Once
	return response{code: codes.Content, format: message.AppOctets, body: f, close: func() { once.Do(func() { f.Close() }) }}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
