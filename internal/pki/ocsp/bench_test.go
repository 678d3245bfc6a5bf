package ocsp_test

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"cradle/internal/pki/ocsp"
)

// Run the loopback pair in one invocation to compare them (goal: OCSP
// responses per second at least half of the bare handler's):
//
//	go test -run XXX -bench 'OCSPGET|BareHandler|OCSPvsBare' ./internal/pki/ocsp/
//
// Both serve over a real loopback HTTP/1.1 connection with keep-alive,
// from parallel clients (b.RunParallel, GOMAXPROCS goroutines); the bare
// handler writes a constant byte slice of the same length with the same
// headers the responder sets, so the difference is the responder's own
// work: base64 and request parsing, the cache lookup and the caching
// headers. BenchmarkResponder measures that work in-process, for the
// cached answer and for the answers signed per request (nonce, two
// certificates).

func benchSetup(b *testing.B) (*fixture, []byte) {
	b.Helper()
	f := newFixture(b)
	req := buildRequest(b, reqSpec{ids: []asn1RV{certID(b, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)}})
	return f, req
}

func BenchmarkResponder(b *testing.B) {
	f, _ := benchSetup(b)
	id1 := certID(b, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)
	id2 := certID(b, crypto.SHA1, f.ca.cert, f.ca.leaves[1].SerialNumber)
	nonce := wrapNonce(b, bytes.Repeat([]byte{0x5a}, 16))
	cases := []struct {
		name string
		req  []byte
	}{
		{"cached", buildRequest(b, reqSpec{ids: []asn1RV{id1}})},
		{"nonce", buildRequest(b, reqSpec{ids: []asn1RV{id1}, nonce: nonce})},
		{"two-certs", buildRequest(b, reqSpec{ids: []asn1RV{id1, id2}})},
		{"two-certs-nonce", buildRequest(b, reqSpec{ids: []asn1RV{id1, id2}, nonce: nonce})},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			if p := parseResponse(b, f.r.Respond(ctx, c.req)); p.Status != 0 {
				b.Fatalf("status %d", p.Status)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				f.r.Respond(ctx, c.req)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "resp/s")
		})
	}
}

// loopback runs h on 127.0.0.1:0 and returns its URL and a keep-alive
// client sized for the parallel benchmark.
func loopback(b *testing.B, h http.Handler) (string, *http.Client) {
	b.Helper()
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	return srv.URL, &http.Client{Transport: tr}
}

func runGET(b *testing.B, hc *http.Client, u string, wantLen int) {
	b.Helper()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		for pb.Next() {
			resp, err := hc.Get(u)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.ReadFull(resp.Body, buf)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != wantLen {
				b.Errorf("HTTP %d, %d octets", resp.StatusCode, n)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "resp/s")
}

func BenchmarkOCSPGET(b *testing.B) {
	f, req := benchSetup(b)
	want := f.r.Respond(context.Background(), req)
	base, hc := loopback(b, f.r)
	runGET(b, hc, base+"/pki/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(req)), len(want))
}

// bare returns a handler that writes body with the responder's headers.
func bare(body []byte) http.Handler {
	length := strconv.Itoa(len(body))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Type", ocsp.MediaResponse)
		hd.Set("Content-Length", length)
		w.Write(body)
	})
}

func BenchmarkBareHandler(b *testing.B) {
	f, req := benchSetup(b)
	body := f.r.Respond(context.Background(), req)
	base, hc := loopback(b, bare(body))
	runGET(b, hc, base+"/pki/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(req)), len(body))
}

// BenchmarkOCSPvsBare alternates one GET to the responder and one to the
// bare handler, each over its own keep-alive loopback connection, timing
// them apart: on a loaded machine the two see the same load, so the ratio
// is steadier than that of two separate benchmarks.
func BenchmarkOCSPvsBare(b *testing.B) {
	f, req := benchSetup(b)
	body := f.r.Respond(context.Background(), req)
	path := "/pki/ocsp/" + url.PathEscape(base64.StdEncoding.EncodeToString(req))
	ocspURL, hc1 := loopback(b, f.r)
	bareURL, hc2 := loopback(b, bare(body))
	buf := make([]byte, 4096)
	get := func(hc *http.Client, u string) time.Duration {
		start := time.Now()
		resp, err := hc.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.ReadFull(resp.Body, buf)
		resp.Body.Close()
		if resp.StatusCode != 200 || n != len(body) {
			b.Fatalf("HTTP %d, %d octets", resp.StatusCode, n)
		}
		return time.Since(start)
	}
	var tOCSP, tBare time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		tOCSP += get(hc1, ocspURL+path)
		tBare += get(hc2, bareURL+path)
	}
	ocspRate := float64(b.N) / tOCSP.Seconds()
	bareRate := float64(b.N) / tBare.Seconds()
	b.ReportMetric(ocspRate, "ocsp-resp/s")
	b.ReportMetric(bareRate, "bare-resp/s")
	b.ReportMetric(ocspRate/bareRate, "ratio")
}

// BenchmarkOCSPPOSTNonce is what `openssl ocsp` sends by default: a POST
// with a nonce, signed per request.
func BenchmarkOCSPPOSTNonce(b *testing.B) {
	f, _ := benchSetup(b)
	req := buildRequest(b, reqSpec{ids: []asn1RV{certID(b, crypto.SHA1, f.ca.cert, f.ca.leaves[0].SerialNumber)}, nonce: wrapNonce(b, bytes.Repeat([]byte{0x5a}, 16))})
	want := len(f.r.Respond(context.Background(), req))
	base, hc := loopback(b, f.r)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		for pb.Next() {
			resp, err := hc.Post(base+"/pki/ocsp", ocsp.MediaRequest, bytes.NewReader(req))
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.ReadFull(resp.Body, buf)
			resp.Body.Close()
			// ECDSA signatures vary in length by an octet or two.
			if resp.StatusCode != 200 || n < want-4 || n > want+4 {
				b.Errorf("HTTP %d, %d octets", resp.StatusCode, n)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "resp/s")
}
