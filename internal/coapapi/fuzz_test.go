package coapapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"cradle"
)

// encode is a CoAP datagram of a request, for the seeds.
func encode(t testing.TB, code codes.Code, path string, format int, payload string, extra ...message.Option) []byte {
	m := message.Message{Token: message.Token{1, 2}, Code: code, MessageID: 7, Type: message.Confirmable, Payload: []byte(payload)}
	buf := make([]byte, 256)
	var err error
	if path != "" {
		if m.Options, _, err = m.Options.SetPath(buf, path); err != nil {
			t.Fatal(err)
		}
	}
	if format >= 0 {
		m.Options, _, _ = m.Options.SetContentFormat(make([]byte, 4), message.MediaType(format))
	}
	m.Options = append(m.Options, extra...)
	out := make([]byte, 2048)
	n, err := coder.DefaultCoder.Encode(m, out)
	if err != nil {
		t.Fatal(err)
	}
	return out[:n]
}

// FuzzRequest feeds CoAP datagrams (as the DTLS session hands them to the
// server) through parseRequest and the resources of an authenticated
// device: nothing panics, a parsed request is answered with a response
// code, every refusal carries a diagnostic, and only well-formed telemetry
// reaches the telemetry service.
func FuzzRequest(f *testing.F) {
	f.Add(encode(f, codes.POST, "/t", 50, `{"metrics":{"health.cpu_pct":42}}`))
	f.Add(encode(f, codes.POST, "/t", -1, `{"metrics":{"a":1},"time":"2026-01-02T03:04:05Z"}`))
	f.Add(encode(f, codes.POST, "/t", 0, `cpu=1`))
	f.Add(encode(f, codes.POST, "/t", 50, `{"metrics":`))
	f.Add(encode(f, codes.GET, "/c", -1, ""))
	f.Add(encode(f, codes.GET, "/fw", -1, "", message.Option{ID: message.Block2, Value: []byte{0x12}}))
	f.Add(encode(f, codes.GET, "/fw/info", -1, ""))
	f.Add(encode(f, codes.GET, "/c", -1, "", message.Option{ID: message.URIQuery, Value: []byte("x=1")}))
	f.Add(encode(f, codes.DELETE, "/fw", -1, ""))
	f.Add(encode(f, codes.GET, "", -1, ""))
	f.Add([]byte{0x40, 0x01, 0x00, 0x07, 0xbf})
	fw := []byte("firmware image")
	s, err := New(Config{Addr: "127.0.0.1:0", Certificate: tls.Certificate{Certificate: [][]byte{{0}}}, MaxBody: 512,
		Check: func(context.Context, []*x509.Certificate, string, net.Addr) (*cradle.Device, error) { return nil, nil },
		Telemetry: func(ctx context.Context, dev *cradle.Device, body io.Reader) error {
			_, err := cradle.ParseTelemetry(body, 512)
			return err
		},
		Desired: func(context.Context, *cradle.Device) ([]byte, error) { return []byte(`{"a":1}`), nil },
		Firmware: func(context.Context, *cradle.Device) (*Firmware, error) {
			return &Firmware{Info: FirmwareInfo{Version: "1"}, Open: func(context.Context) (io.ReadSeekCloser, error) {
				return readSeekNopCloser{bytes.NewReader(fw)}, nil
			}}, nil
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	dev := &cradle.Device{TenantID: 1, Serial: "SN-1", State: cradle.StateDeployed}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m message.Message
		if _, err := coder.DefaultCoder.Decode(data, &m); err != nil {
			return // go-coap drops what it cannot decode
		}
		var body io.Reader
		if len(m.Payload) > 0 {
			body = bytes.NewReader(m.Payload)
		}
		req, err := parseRequest(m.Code, m.Options, body, 512)
		if err != nil {
			if c := cradle.ErrorCode(err); c != cradle.EINVALID && c != cradle.ETOOLARGE {
				t.Fatalf("parseRequest: %v", err)
			}
			return
		}
		resp := s.handle(t.Context(), dev, req)
		if resp.close != nil {
			defer resp.close()
		}
		if resp.code < codes.Created || resp.code == codes.InternalServerError {
			t.Fatalf("%v %q: answered %v (%v)", req.code, req.path, resp.code, resp.err)
		}
		if resp.code >= codes.BadRequest {
			if resp.body == nil {
				t.Fatalf("%v %q: %v without a diagnostic", req.code, req.path, resp.code)
			}
			if b, _ := io.ReadAll(resp.body); len(b) == 0 {
				t.Fatalf("%v %q: %v with an empty diagnostic", req.code, req.path, resp.code)
			}
		}
		if req.path == "/t" && resp.code == codes.Changed {
			if _, err := cradle.ParseTelemetry(bytes.NewReader(req.body), 512); err != nil {
				t.Fatalf("telemetry accepted that does not parse: %v", err)
			}
		}
	})
}

type readSeekNopCloser struct{ *bytes.Reader }

func (readSeekNopCloser) Close() error { return nil }
