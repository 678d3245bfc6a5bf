package ocsp_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	xocsp "golang.org/x/crypto/ocsp"

	"cradle"
	"cradle/internal/pki/ocsp"
)

type fixture struct {
	ca    *testCA
	src   *memSource
	clock *testClock
	r     *ocsp.Responder
}

func newFixture(t testing.TB, cas ...*testCA) *fixture {
	t.Helper()
	if len(cas) == 0 {
		cas = []*testCA{newCA(t, "Device CA 1", nil, nil, 2)}
	}
	f := &fixture{ca: cas[0], src: newMemSource(), clock: &testClock{t: t0}}
	var issuers []ocsp.Issuer
	for _, ca := range cas {
		issuers = append(issuers, ca.issuerArg)
		for _, l := range ca.leaves {
			f.src.Set(ca.cert, l.SerialNumber, ocsp.Status{State: ocsp.Good})
		}
	}
	r, err := ocsp.NewResponder(f.src, issuers, ocsp.Options{Clock: f.clock, Validity: 4 * time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
	return f
}

// check parses a response with golang.org/x/crypto/ocsp for cert,
// verifying its signature, and returns it.
func check(t *testing.T, der []byte, cert, issuer *x509.Certificate) *xocsp.Response {
	t.Helper()
	resp, err := xocsp.ParseResponseForCert(der, cert, issuer)
	if err != nil {
		t.Fatalf("x/crypto/ocsp rejects the response for %s: %v", cert.Subject, err)
	}
	return resp
}

func TestRespondStatuses(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.ca.leaves[0], f.ca.leaves[1]
	req := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, f.ca.cert, l1.SerialNumber), certID(t, crypto.SHA256, f.ca.cert, l2.SerialNumber)}})
	der := f.r.Respond(context.Background(), req)
	for _, l := range []*x509.Certificate{l1, l2} {
		if got := check(t, der, l, f.ca.cert); got.Status != xocsp.Good {
			t.Errorf("%s: status %d, want good", l.Subject.CommonName, got.Status)
		}
	}
	p := parseResponse(t, der)
	if len(p.Singles) != 2 {
		t.Fatalf("%d single responses, want 2", len(p.Singles))
	}
	if !p.Singles[0].ThisUpdate.Equal(t0) || !p.Singles[0].NextUpdate.Equal(t0.Add(4*time.Hour)) {
		t.Errorf("thisUpdate %v nextUpdate %v, want %v and 4h later", p.Singles[0].ThisUpdate, p.Singles[0].NextUpdate, t0)
	}

	// Revoked in the store: the cache still answers good until Invalidate.
	at := t0.Add(-30 * time.Minute)
	f.src.Set(f.ca.cert, l2.SerialNumber, ocsp.Status{State: ocsp.Revoked, RevokedAt: at, Reason: reason(cradle.ReasonKeyCompromise)})
	der = f.r.Respond(context.Background(), req)
	if got := check(t, der, l2, f.ca.cert); got.Status != xocsp.Good {
		t.Errorf("before Invalidate: status %d, want the cached good", got.Status)
	}
	f.r.Invalidate(f.ca.cert, l2.SerialNumber)
	der = f.r.Respond(context.Background(), req)
	got := check(t, der, l2, f.ca.cert)
	if got.Status != xocsp.Revoked || !got.RevokedAt.Equal(at) || got.RevocationReason != xocsp.KeyCompromise {
		t.Errorf("after Invalidate: status %d at %v reason %d, want revoked at %v keyCompromise", got.Status, got.RevokedAt, got.RevocationReason, at)
	}
	if got := check(t, der, l1, f.ca.cert); got.Status != xocsp.Good {
		t.Errorf("leaf 1: status %d, want good", got.Status)
	}
}

func TestRespondOrderAndKinds(t *testing.T) {
	ca := newCA(t, "Device CA 1", nil, nil, 3)
	f := newFixture(t, ca)
	f.src.Set(ca.cert, ca.leaves[1].SerialNumber, ocsp.Status{State: ocsp.Revoked, RevokedAt: t0.Add(-time.Hour)})
	f.src.Set(ca.cert, ca.leaves[2].SerialNumber, ocsp.Status{State: ocsp.Unknown})
	stranger := newCA(t, "Stranger CA", nil, nil, 1)
	ids := []asn1RV{
		certID(t, crypto.SHA1, ca.cert, ca.leaves[2].SerialNumber),
		certID(t, crypto.SHA1, stranger.cert, stranger.leaves[0].SerialNumber),
		certID(t, crypto.SHA256, ca.cert, ca.leaves[1].SerialNumber),
		certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber),
		certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber),
	}
	p := parseResponse(t, f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: ids})))
	var gotIDs [][]byte
	var gotStatus []int
	for _, s := range p.Singles {
		gotIDs = append(gotIDs, s.CertID)
		gotStatus = append(gotStatus, s.Status)
	}
	var wantIDs [][]byte
	for _, id := range ids {
		wantIDs = append(wantIDs, id.FullBytes)
	}
	if diff := cmp.Diff(wantIDs, gotIDs); diff != "" {
		t.Errorf("CertIDs not echoed in order (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{2, 2, 1, 0, 0}, gotStatus); diff != "" {
		t.Errorf("statuses (0 good, 1 revoked, 2 unknown) (-want +got):\n%s", diff)
	}
	// The revoked one has no reason: the Source did not know it.
	got := check(t, f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: ids[2:3]})), ca.leaves[1], ca.cert)
	if got.Status != xocsp.Revoked || got.RevocationReason != xocsp.Unspecified {
		t.Errorf("status %d reason %d, want revoked without reason", got.Status, got.RevocationReason)
	}
}

func TestRespondErrors(t *testing.T) {
	f := newFixture(t)
	stranger := newCA(t, "Stranger CA", nil, nil, 1)
	good := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)}})
	tests := []struct {
		name   string
		req    []byte
		srcErr error
		want   ocsp.ResponseStatus
	}{
		{"garbage", []byte("hello"), nil, ocsp.MalformedRequest},
		{"truncated", good[:len(good)-3], nil, ocsp.MalformedRequest},
		{"no issuer of ours", buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, stranger.cert, stranger.leaves[0].SerialNumber)}}), nil, ocsp.Unauthorized},
		{"source unavailable", good, cradle.Errorf(cradle.EUNAVAILABLE, "store is starting"), ocsp.TryLater},
		{"source fails", good, errors.New("disk on fire"), ocsp.InternalError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.r.InvalidateAll()
			f.src.mu.Lock()
			f.src.err = tt.srcErr
			f.src.mu.Unlock()
			der := f.r.Respond(context.Background(), tt.req)
			if !bytes.Equal(der, ocsp.ErrorResponse(tt.want)) {
				t.Errorf("got % x, want %v (% x)", der, tt.want, ocsp.ErrorResponse(tt.want))
			}
			if p := parseResponse(t, der); p.Status != int(tt.want) {
				t.Errorf("status %d, want %d", p.Status, tt.want)
			}
		})
	}
	// A failure is not cached.
	f.src.mu.Lock()
	f.src.err = nil
	f.src.mu.Unlock()
	if got := check(t, f.r.Respond(context.Background(), good), f.ca.leaves[0], f.ca.cert); got.Status != xocsp.Good {
		t.Errorf("after the source recovered: status %d, want good", got.Status)
	}
}

func TestNonce(t *testing.T) {
	f := newFixture(t)
	id := certID(t, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)
	tests := []struct {
		name  string
		nonce []byte
	}{
		{"openssl style, 16 octets", wrapNonce(t, bytes.Repeat([]byte{0xab}, 16))},
		{"32 octets", wrapNonce(t, bytes.Repeat([]byte{0x01}, 32))},
		{"unwrapped octets echoed as sent", []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der := f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{id}, nonce: tt.nonce}))
			if diff := cmp.Diff(tt.nonce, parseResponse(t, der).Nonce); diff != "" {
				t.Errorf("nonce (-sent +echoed):\n%s", diff)
			}
			check(t, der, f.ca.leaves[0], f.ca.cert)
		})
	}
	// Two requests with different nonces are signed separately.
	a := f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{id}, nonce: wrapNonce(t, []byte("aaaaaaaaaaaaaaaa"))}))
	b := f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{id}, nonce: wrapNonce(t, []byte("bbbbbbbbbbbbbbbb"))}))
	if bytes.Equal(a, b) {
		t.Error("responses to different nonces are identical")
	}
	// Without a nonce, no nonce.
	if n := parseResponse(t, f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{id}}))).Nonce; n != nil {
		t.Errorf("nonce % x in a response to a request without one", n)
	}
}

func TestCache(t *testing.T) {
	f := newFixture(t)
	req := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)}})
	first := f.r.Respond(context.Background(), req)
	for range 5 {
		if again := f.r.Respond(context.Background(), req); !bytes.Equal(first, again) {
			t.Fatal("a repeated request without nonce was answered with a new response, want the pre-signed one")
		}
	}
	if n := f.src.Calls(); n != 1 {
		t.Errorf("source called %d times, want once", n)
	}
	// A nonce request uses the cached status.
	f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)}, nonce: wrapNonce(t, []byte("0123456789abcdef"))}))
	if n := f.src.Calls(); n != 1 {
		t.Errorf("source called %d times after a nonce request, want once", n)
	}

	// Just before half-life: cached. At half-life: refreshed.
	f.clock.Add(2*time.Hour - time.Second)
	if again := f.r.Respond(context.Background(), req); !bytes.Equal(first, again) {
		t.Error("refreshed before half-life")
	}
	f.clock.Add(time.Second)
	fresh := f.r.Respond(context.Background(), req)
	if bytes.Equal(first, fresh) {
		t.Error("not refreshed at half-life")
	}
	if n := f.src.Calls(); n != 2 {
		t.Errorf("source called %d times, want 2", n)
	}
	p := parseResponse(t, fresh)
	if want := t0.Add(2 * time.Hour); !p.Singles[0].ThisUpdate.Equal(want) || !p.ProducedAt.Equal(want) {
		t.Errorf("refreshed thisUpdate %v producedAt %v, want %v", p.Singles[0].ThisUpdate, p.ProducedAt, want)
	}
}

func TestKeyTypes(t *testing.T) {
	tests := []struct {
		name    string
		caKey   crypto.Signer
		respKey crypto.Signer
		sigAlg  x509.SignatureAlgorithm
	}{
		{"P-256", nil, nil, x509.ECDSAWithSHA256},
		{"P-384", ecKey(t, elliptic.P384()), ecKey(t, elliptic.P384()), x509.ECDSAWithSHA384},
		{"Ed25519", ed25519Key(t), ed25519Key(t), x509.PureEd25519},
		{"RSA", rsaKey(t), rsaKey(t), x509.SHA256WithRSA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newCA(t, "CA "+tt.name, tt.caKey, tt.respKey, 1)
			f := newFixture(t, ca)
			for _, nonce := range [][]byte{nil, wrapNonce(t, []byte("0123456789abcdef"))} {
				der := f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA256, ca.cert, ca.leaves[0].SerialNumber)}, nonce: nonce}))
				p := parseResponse(t, der)
				if alg := p.verify(t, ca.resp); alg != tt.sigAlg {
					t.Errorf("signature algorithm %v, want %v", alg, tt.sigAlg)
				}
				if len(p.Certs) != 1 || !bytes.Equal(p.Certs[0], ca.resp.Raw) {
					t.Error("the delegated responder certificate is not the response's one certificate")
				}
				if tt.sigAlg == x509.PureEd25519 {
					continue // x/crypto/ocsp does not know Ed25519
				}
				got := check(t, der, ca.leaves[0], ca.cert)
				if got.SignatureAlgorithm != tt.sigAlg || got.Status != xocsp.Good {
					t.Errorf("x/crypto/ocsp: signature algorithm %v status %d, want %v good", got.SignatureAlgorithm, got.Status, tt.sigAlg)
				}
				if len(got.ResponderKeyHash) != 20 {
					t.Error("responder not named by key")
				}
			}
		})
	}
}

// TestCARotation serves two device CAs side by side.
func TestCARotation(t *testing.T) {
	old, cur := newCA(t, "Device CA 1", nil, nil, 1), newCA(t, "Device CA 2", nil, nil, 1)
	f := newFixture(t, old, cur)
	for _, ca := range []*testCA{old, cur} {
		der := f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber)}}))
		if got := check(t, der, ca.leaves[0], ca.cert); got.Status != xocsp.Good {
			t.Errorf("%s: status %d, want good", ca.cert.Subject.CommonName, got.Status)
		}
	}
	// Both in one request: the first CertID's issuer signs; the other is
	// unknown to that responder.
	der := f.r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{
		certID(t, crypto.SHA1, cur.cert, cur.leaves[0].SerialNumber),
		certID(t, crypto.SHA1, old.cert, old.leaves[0].SerialNumber),
	}}))
	if got := check(t, der, cur.leaves[0], cur.cert); got.Status != xocsp.Good {
		t.Errorf("new CA's leaf: status %d, want good", got.Status)
	}
	if p := parseResponse(t, der); p.Singles[1].Status != 2 {
		t.Errorf("old CA's leaf in a request led by the new CA: status %d, want unknown (2)", p.Singles[1].Status)
	}
	// Invalidate names the issuer.
	f.src.Set(old.cert, old.leaves[0].SerialNumber, ocsp.Status{State: ocsp.Revoked, RevokedAt: t0})
	f.r.Invalidate(cur.cert, old.leaves[0].SerialNumber)
	req := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, old.cert, old.leaves[0].SerialNumber)}})
	if got := check(t, f.r.Respond(context.Background(), req), old.leaves[0], old.cert); got.Status != xocsp.Good {
		t.Errorf("invalidating under the other CA dropped the entry: status %d", got.Status)
	}
	f.r.Invalidate(old.cert, old.leaves[0].SerialNumber)
	if got := check(t, f.r.Respond(context.Background(), req), old.leaves[0], old.cert); got.Status != xocsp.Revoked {
		t.Errorf("status %d, want revoked", got.Status)
	}
}

func TestNewResponderRefuses(t *testing.T) {
	ca := newCA(t, "CA", nil, nil, 1)
	other := newCA(t, "Other CA", nil, nil, 0)
	noEKU := create(t, &x509.Certificate{SerialNumber: nextSerial(), NotBefore: t0, NotAfter: t0.Add(time.Hour)}, ca.cert, ca.respKey.Public(), ca.key)
	tests := []struct {
		name    string
		issuers []ocsp.Issuer
		want    string
	}{
		{"none", nil, "no issuer"},
		{"responder of another CA", []ocsp.Issuer{{Cert: ca.cert, ResponderCert: other.resp, Signer: other.respKey}}, "was not issued by it"},
		{"no OCSPSigning", []ocsp.Issuer{{Cert: ca.cert, ResponderCert: noEKU, Signer: ca.respKey}}, "OCSPSigning"},
		{"wrong key", []ocsp.Issuer{{Cert: ca.cert, ResponderCert: ca.resp, Signer: ca.key}}, "not the responder certificate's"},
		{"twice", []ocsp.Issuer{ca.issuerArg, ca.issuerArg}, "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ocsp.NewResponder(newMemSource(), tt.issuers, ocsp.Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	// The CA may sign its own answers.
	r, err := ocsp.NewResponder(newMemSource(), []ocsp.Issuer{{Cert: ca.cert, ResponderCert: ca.cert, Signer: ca.key}}, ocsp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	der := r.Respond(context.Background(), buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber)}}))
	if got := check(t, der, ca.leaves[0], ca.cert); got.Status != xocsp.Unknown || got.Certificate != nil {
		t.Errorf("CA-signed: status %d, certificate included %v; want unknown, none", got.Status, got.Certificate != nil)
	}
}

func TestHTTP(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(f.r)
	t.Cleanup(srv.Close)
	// Find a serial whose request's base64 holds '/' and '+' so that the
	// path escaping is exercised.
	var req []byte
	for range 2000 {
		s := nextSerial()
		f.src.Set(f.ca.cert, s, ocsp.Status{State: ocsp.Good})
		r := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, f.ca.cert, s)}})
		if b := base64.StdEncoding.EncodeToString(r); strings.Contains(b, "/") && strings.Contains(b, "+") && !strings.Contains(b, "//") {
			req = r
			break
		}
	}
	if req == nil {
		t.Fatal("no request with '/' and '+' in its base64")
	}
	std := base64.StdEncoding.EncodeToString(req)
	tests := []struct {
		name, method, path, ctype string
		body                      []byte
		wantCode                  int
		wantStatus                int
	}{
		{"POST", "POST", "/pki/ocsp", ocsp.MediaRequest, req, 200, 0},
		{"POST other path", "POST", "/", ocsp.MediaRequest, req, 200, 0},
		{"GET escaped std base64", "GET", "/pki/ocsp/" + url.PathEscape(std), "", nil, 200, 0},
		{"GET raw std base64", "GET", "/pki/ocsp/" + std, "", nil, 200, 0},
		{"GET escaped '+' and '/'", "GET", "/pki/ocsp/" + strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(std), "", nil, 200, 0},
		{"GET url base64 unpadded", "GET", "/pki/ocsp/" + base64.RawURLEncoding.EncodeToString(req), "", nil, 200, 0},
		{"GET not base64", "GET", "/pki/ocsp/!!!", "", nil, 200, int(ocsp.MalformedRequest)},
		{"GET empty", "GET", "/pki/ocsp/", "", nil, 200, int(ocsp.MalformedRequest)},
		{"POST garbage", "POST", "/pki/ocsp", ocsp.MediaRequest, []byte{0x30, 0x01}, 200, int(ocsp.MalformedRequest)},
		{"POST too large", "POST", "/pki/ocsp", ocsp.MediaRequest, make([]byte, ocsp.MaxRequestBytes+1), 200, int(ocsp.MalformedRequest)},
		{"PUT", "PUT", "/pki/ocsp", ocsp.MediaRequest, req, 405, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hr, err := http.NewRequest(tt.method, srv.URL+tt.path, bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.ctype != "" {
				hr.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := srv.Client().Do(hr)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("HTTP %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if tt.wantStatus < 0 {
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != ocsp.MediaResponse {
				t.Errorf("Content-Type %q", ct)
			}
			p := parseResponse(t, body)
			if p.Status != tt.wantStatus {
				t.Fatalf("OCSP status %d, want %d", p.Status, tt.wantStatus)
			}
			if p.Status == 0 && p.Singles[0].Status != 0 {
				t.Errorf("cert status %d, want good", p.Singles[0].Status)
			}
			if tt.method == "GET" && p.Status == 0 {
				cc := resp.Header.Get("Cache-Control")
				if cc != "max-age=14400, public, no-transform, must-revalidate" || resp.Header.Get("ETag") == "" ||
					resp.Header.Get("Expires") != t0.Add(4*time.Hour).Format(http.TimeFormat) ||
					resp.Header.Get("Last-Modified") != t0.Format(http.TimeFormat) {
					t.Errorf("caching headers: %v", resp.Header)
				}
			}
		})
	}
}

// TestBehindServeMux: mounted on an http.ServeMux, a GET whose base64 has
// "//" works when percent-escaped, as RFC 5019 asks clients to send it
// (ServeMux cleans, and redirects, only unescaped paths).
func TestBehindServeMux(t *testing.T) {
	f := newFixture(t)
	mux := http.NewServeMux()
	mux.Handle("/pki/ocsp/", f.r)
	mux.Handle("POST /pki/ocsp", f.r)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	var std string
	for range 20000 {
		s := nextSerial()
		r := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, f.ca.cert, s)}})
		if b := base64.StdEncoding.EncodeToString(r); strings.Contains(b, "//") {
			f.src.Set(f.ca.cert, s, ocsp.Status{State: ocsp.Good})
			std = b
			break
		}
	}
	if std == "" {
		t.Fatal("no request with '//' in its base64")
	}
	resp, err := srv.Client().Get(srv.URL + "/pki/ocsp/" + url.PathEscape(std))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if p := parseResponse(t, body); resp.StatusCode != 200 || p.Status != 0 || p.Singles[0].Status != 0 {
		t.Errorf("HTTP %d, OCSP status %d, want 200, successful, good", resp.StatusCode, p.Status)
	}
}
