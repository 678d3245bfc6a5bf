package coapapi_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"cradle"
	"cradle/internal/coapapi"
)

// testPKI is a root, the server's certificate and device certificates.
type testPKI struct {
	root    *x509.Certificate
	rootKey *ecdsa.PrivateKey
	roots   *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(root)
	return &testPKI{root: root, rootKey: key, roots: roots}
}

// issue makes a leaf for cn with usage.
func (p *testPKI) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, key.Public(), p.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// fixture is a server whose Check accepts chains under the test root
// unless the leaf's CN is in revoked (4.01) or suspended (4.03), and
// whose services keep what they are given.
type fixture struct {
	pki      *testPKI
	srv      *coapapi.Server
	firmware []byte

	mu        sync.Mutex
	revoked   map[string]bool
	suspended map[string]bool
	telemetry []string
	checked   []string // paths of Check calls
}

func newFixture(t *testing.T, maxBody int64) *fixture {
	t.Helper()
	f := &fixture{pki: newTestPKI(t), revoked: map[string]bool{}, suspended: map[string]bool{}, firmware: make([]byte, 5000+37)}
	rand.Read(f.firmware)
	srv, err := coapapi.New(coapapi.Config{
		Addr:        "127.0.0.1:0",
		Certificate: f.pki.issue(t, "server", x509.ExtKeyUsageServerAuth),
		MaxBody:     maxBody,
		Check: func(ctx context.Context, peer []*x509.Certificate, path string, remote net.Addr) (*cradle.Device, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.checked = append(f.checked, path)
			if _, err := peer[0].Verify(x509.VerifyOptions{Roots: f.pki.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "client certificate not accepted: %v", err)
			}
			cn := peer[0].Subject.CommonName
			switch {
			case f.revoked[cn]:
				return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "client certificate of %s was revoked", cn)
			case f.suspended[cn]:
				return nil, cradle.Errorf(cradle.EFORBIDDEN, "device %q is suspended", cn)
			}
			return &cradle.Device{TenantID: 1, Serial: cn, State: cradle.StateDeployed}, nil
		},
		Telemetry: func(ctx context.Context, dev *cradle.Device, body io.Reader) error {
			if a, ok := cradle.ActorFromContext(ctx); !ok || a.ID != dev.Serial || a.Role != cradle.RoleDevice {
				return errors.New("the device is not the actor")
			}
			pts, err := cradle.ParseTelemetry(body, 1<<20)
			if err != nil {
				return err
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			f.telemetry = append(f.telemetry, dev.Serial+":"+pts[0].Metric)
			return nil
		},
		Desired: func(ctx context.Context, dev *cradle.Device) ([]byte, error) {
			if dev.Serial == "SN-NOCONF" {
				return nil, nil
			}
			return []byte(`{"device":"` + dev.Serial + `","interval_s":30}`), nil
		},
		Firmware: func(ctx context.Context, dev *cradle.Device) (*coapapi.Firmware, error) {
			if dev.Serial == "SN-NOCONF" {
				return nil, cradle.Errorf(cradle.ENOTFOUND, "no pending update")
			}
			return &coapapi.Firmware{Info: coapapi.FirmwareInfo{RolloutID: "ro_1", Attempt: 1, ReleaseID: "rel_1", Version: "1.2.3", Size: int64(len(f.firmware))},
				Open: func(context.Context) (io.ReadSeekCloser, error) { return nopCloser{bytes.NewReader(f.firmware)}, nil }}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	f.srv = srv
	return f
}

// seen returns copies of the telemetry stored and the paths checked.
func (f *fixture) seen() (telemetry, checked []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.telemetry...), append([]string(nil), f.checked...)
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// dial connects a device with cert (none when cert has no leaf), with
// block-wise transfers of 64 bytes.
func (f *fixture) dial(t *testing.T, cert tls.Certificate) *udpClient.Conn {
	t.Helper()
	cfg := &piondtls.Config{RootCAs: f.pki.roots}
	if cert.Leaf != nil {
		cfg.Certificates = []tls.Certificate{cert}
	}
	cc, err := dtls.Dial(f.srv.Addr().String(), cfg, options.WithBlockwise(true, blockwise.SZX64, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// result is a response's code and body.
type result struct {
	code codes.Code
	body string
}

func get(t *testing.T, cc *udpClient.Conn, path string, opts ...message.Option) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cc.Get(ctx, path, opts...)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	b, _ := resp.ReadBody()
	return result{resp.Code(), string(b)}
}

func post(t *testing.T, cc *udpClient.Conn, path string, format message.MediaType, body string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, path, format, strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	b, _ := resp.ReadBody()
	return result{resp.Code(), string(b)}
}

func TestResources(t *testing.T) {
	f := newFixture(t, 2048)
	cc := f.dial(t, f.pki.issue(t, "SN-1", x509.ExtKeyUsageClientAuth))

	if r := post(t, cc, "/t", message.AppJSON, `{"metrics":{"health.cpu_pct":42}}`); r.code != codes.Changed {
		t.Fatalf("POST /t: %v %s", r.code, r.body)
	}
	if tel, _ := f.seen(); len(tel) != 1 || tel[0] != "SN-1:health.cpu_pct" {
		t.Errorf("telemetry stored: %v", tel)
	}
	if r := get(t, cc, "/c"); r.code != codes.Content || r.body != `{"device":"SN-1","interval_s":30}` {
		t.Errorf("GET /c: %v %s", r.code, r.body)
	}
	r := get(t, cc, "/fw") // 64-byte blocks: 79 of them
	if r.code != codes.Content || r.body != string(f.firmware) {
		t.Errorf("GET /fw: %v, %d bytes, identical %v", r.code, len(r.body), r.body == string(f.firmware))
	}
	var info coapapi.FirmwareInfo
	if r := get(t, cc, "/fw/info"); r.code != codes.Content || json.Unmarshal([]byte(r.body), &info) != nil || info.Version != "1.2.3" || info.Size != int64(len(f.firmware)) {
		t.Errorf("GET /fw/info: %v %s", r.code, r.body)
	}

	for _, tc := range []struct {
		name string
		do   func() result
		code codes.Code
		diag string
	}{
		{"unknown resource", func() result { return get(t, cc, "/nope") }, codes.NotFound, "no resource /nope"},
		{"wrong method", func() result { return post(t, cc, "/c", message.AppJSON, "{}") }, codes.MethodNotAllowed, "/c takes GET only"},
		{"malformed telemetry", func() result { return post(t, cc, "/t", message.AppJSON, `{"metrics":`) }, codes.BadRequest, "telemetry"},
		{"telemetry not JSON", func() result { return post(t, cc, "/t", message.TextPlain, `cpu=1`) }, codes.UnsupportedMediaType, "Content-Format 50"},
		{"body over the limit", func() result {
			return post(t, cc, "/t", message.AppJSON, `{"metrics":{"a":1},"pad":"`+strings.Repeat("x", 3000)+`"}`)
		}, codes.RequestEntityTooLarge, "over 2048 bytes"},
		{"query", func() result {
			return get(t, cc, "/c", message.Option{ID: message.URIQuery, Value: []byte("x=1")})
		}, codes.BadRequest, `Uri-Query "x=1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.do()
			if r.code != tc.code || !strings.Contains(r.body, tc.diag) {
				t.Errorf("got %v %q, want %v with %q", r.code, r.body, tc.code, tc.diag)
			}
		})
	}

	none := f.dial(t, f.pki.issue(t, "SN-NOCONF", x509.ExtKeyUsageClientAuth))
	for _, p := range []string{"/c", "/fw", "/fw/info"} {
		if r := get(t, none, p); r.code != codes.NotFound || r.body == "" {
			t.Errorf("GET %s without one: %v %q", p, r.code, r.body)
		}
	}
}

// TestRefusals: every request goes through Check, whose refusals answer
// 4.01 or 4.03 with the reason; a device without a certificate does not
// get through the handshake.
func TestRefusals(t *testing.T) {
	f := newFixture(t, 0)
	cc := f.dial(t, f.pki.issue(t, "SN-2", x509.ExtKeyUsageClientAuth))
	if r := get(t, cc, "/c"); r.code != codes.Content {
		t.Fatalf("GET /c: %v %s", r.code, r.body)
	}
	f.mu.Lock()
	f.suspended["SN-2"] = true
	f.mu.Unlock()
	if r := get(t, cc, "/c"); r.code != codes.Forbidden || !strings.Contains(r.body, "suspended") {
		t.Errorf("suspended: %v %q", r.code, r.body)
	}
	f.mu.Lock()
	f.revoked["SN-2"] = true
	f.mu.Unlock()
	if r := post(t, cc, "/t", message.AppJSON, `{"metrics":{"a":1}}`); r.code != codes.Unauthorized || !strings.Contains(r.body, "revoked") {
		t.Errorf("revoked: %v %q", r.code, r.body)
	}
	tel, checked := f.seen()
	if len(tel) != 0 {
		t.Errorf("refused telemetry stored: %v", tel)
	}
	if got := strings.Join(checked, " "); got != "/c /c /t" {
		t.Errorf("checked paths: %s", got)
	}
	// A server certificate is no client certificate.
	other := f.dial(t, f.pki.issue(t, "SN-3", x509.ExtKeyUsageServerAuth))
	if r := get(t, other, "/c"); r.code != codes.Unauthorized || !strings.Contains(r.body, "not accepted") {
		t.Errorf("server certificate as a client's: %v %q", r.code, r.body)
	}
	// No certificate: the handshake fails, no answer comes.
	if cc, err := dtls.Dial(f.srv.Addr().String(), &piondtls.Config{RootCAs: f.pki.roots}); err == nil {
		defer cc.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if resp, err := cc.Get(ctx, "/c"); err == nil {
			t.Errorf("a client without a certificate was answered: %v", resp.Code())
		}
	}
}

// TestDisconnect: Disconnect closes the sessions of a certificate at
// once, and only those.
func TestDisconnect(t *testing.T) {
	f := newFixture(t, 0)
	a := f.pki.issue(t, "SN-A", x509.ExtKeyUsageClientAuth)
	ca1, ca2 := f.dial(t, a), f.dial(t, a)
	cb := f.dial(t, f.pki.issue(t, "SN-B", x509.ExtKeyUsageClientAuth))
	for _, cc := range []*udpClient.Conn{ca1, ca2, cb} {
		if r := get(t, cc, "/fw/info"); r.code != codes.Content {
			t.Fatalf("GET /fw/info: %v", r.code)
		}
	}
	serial := cradle.SerialHex(a.Leaf.SerialNumber)
	if n := f.srv.Sessions(serial); n != 2 {
		t.Fatalf("sessions of SN-A: %d, want 2", n)
	}
	start := time.Now()
	if n := f.srv.Disconnect(serial); n != 2 {
		t.Errorf("Disconnect closed %d sessions, want 2", n)
	}
	for _, cc := range []*udpClient.Conn{ca1, ca2} {
		select {
		case <-cc.Done():
		case <-time.After(time.Second):
			t.Fatal("a session of SN-A is still open on the client a second after Disconnect")
		}
	}
	t.Logf("Disconnect to both clients closed: %v", time.Since(start))
	if n := f.srv.Sessions(serial); n != 0 {
		t.Errorf("sessions of SN-A after Disconnect: %d", n)
	}
	if r := get(t, cb, "/fw/info"); r.code != codes.Content {
		t.Errorf("SN-B after SN-A's disconnection: %v", r.code)
	}
}
