package ocsp_test

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki/ocsp"
	"cradle/internal/testkit"
)

// opensslOCSP runs `openssl ocsp` with args and returns its stdout and
// stderr together.
func opensslOCSP(t *testing.T, args ...string) string {
	t.Helper()
	bin := testkit.NeedProgram(t, "openssl")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"ocsp"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl ocsp %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type interop struct {
	dir      string
	ca       *testCA
	src      *memSource
	r        *ocsp.Responder
	url      string
	caPEM    string
	leafPEMs []string
}

func newInterop(t *testing.T, caKey, respKey crypto.Signer) *interop {
	t.Helper()
	testkit.NeedProgram(t, "openssl")
	ca := newCA(t, "Device CA 1", caKey, respKey, 2)
	src := newMemSource()
	for _, l := range ca.leaves {
		src.Set(ca.cert, l.SerialNumber, ocsp.Status{State: ocsp.Good})
	}
	// The real clock: openssl checks thisUpdate and nextUpdate against it.
	r, err := ocsp.NewResponder(src, []ocsp.Issuer{ca.issuerArg}, ocsp.Options{Validity: time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r) // 127.0.0.1:0
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	in := &interop{dir: dir, ca: ca, src: src, r: r, url: srv.URL + "/pki/ocsp", caPEM: writePEM(t, dir, "CA.pem", ca.cert)}
	for i, l := range ca.leaves {
		in.leafPEMs = append(in.leafPEMs, writePEM(t, dir, "leaf"+string(rune('1'+i))+".pem", l))
	}
	return in
}

// mustContain fails unless out has every one of want, and none of bad.
func mustContain(t *testing.T, out string, want []string, bad []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("openssl output lacks %q:\n%s", w, out)
		}
	}
	for _, b := range bad {
		if strings.Contains(out, b) {
			t.Errorf("openssl output has %q:\n%s", b, out)
		}
	}
}

// TestOpenSSL drives `openssl ocsp` against the responder over loopback
// HTTP: two certificates in one request, with and without a nonce, SHA-1
// and SHA-256 CertIDs, good and then revoked after the source changes and
// Invalidate is called.
func TestOpenSSL(t *testing.T) {
	in := newInterop(t, nil, nil)
	l1, l2 := in.leafPEMs[0], in.leafPEMs[1]
	base := []string{"-issuer", in.caPEM, "-CAfile", in.caPEM, "-url", in.url, "-resp_text"}
	noWarn := []string{"WARNING", "verify error", "Response Verify Failure"}

	tests := []struct {
		name  string
		extra []string
		want  []string
	}{
		{"nonce by default", []string{"-cert", l1, "-cert", l2}, []string{"Response verify OK", l1 + ": good", l2 + ": good", "OCSP Nonce"}},
		{"explicit nonce", []string{"-nonce", "-cert", l1, "-cert", l2}, []string{"Response verify OK", l1 + ": good", l2 + ": good", "OCSP Nonce"}},
		{"no nonce", []string{"-no_nonce", "-cert", l1, "-cert", l2}, []string{"Response verify OK", l1 + ": good", l2 + ": good"}},
		{"SHA-256 CertIDs", []string{"-sha256", "-cert", l1, "-cert", l2}, []string{"Response verify OK", l1 + ": good", l2 + ": good", "Hash Algorithm: sha256"}},
		{"one certificate, cached answer", []string{"-no_nonce", "-cert", l1}, []string{"Response verify OK", l1 + ": good", "Responder Id: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := opensslOCSP(t, append(append([]string{}, base...), tt.extra...)...)
			mustContain(t, out, tt.want, noWarn)
			if os.Getenv("OCSP_SHOW") != "" {
				t.Log(out)
			}
		})
	}

	// The warning check can fail: a responder that drops the nonce (here,
	// one that answers with a response to the request without it) makes
	// openssl warn.
	t.Run("control: nonce dropped", func(t *testing.T) {
		reqFile := filepath.Join(in.dir, "req-nonce.der")
		opensslOCSP(t, "-issuer", in.caPEM, "-cert", l1, "-no_nonce", "-reqout", reqFile)
		der, err := os.ReadFile(reqFile)
		if err != nil {
			t.Fatal(err)
		}
		fixed := in.r.Respond(context.Background(), der)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ocsp.MediaResponse)
			w.Write(fixed)
		}))
		defer srv.Close()
		out := opensslOCSP(t, "-issuer", in.caPEM, "-CAfile", in.caPEM, "-url", srv.URL, "-cert", l1)
		mustContain(t, out, []string{"WARNING: no nonce in response", l1 + ": good"}, nil)
	})

	// Revoke leaf 2: the store first, then Invalidate, as revocation does.
	in.src.Set(in.ca.cert, in.ca.leaves[1].SerialNumber, ocsp.Status{State: ocsp.Revoked, RevokedAt: time.Now().Add(-time.Minute), Reason: reason(cradle.ReasonKeyCompromise)})
	in.r.Invalidate(in.ca.cert, in.ca.leaves[1].SerialNumber)
	for _, extra := range [][]string{{"-cert", l1, "-cert", l2}, {"-no_nonce", "-cert", l2}} {
		out := opensslOCSP(t, append(append([]string{}, base...), extra...)...)
		want := []string{"Response verify OK", l2 + ": revoked", "Reason: keyCompromise", "Revocation Time:"}
		if len(extra) == 4 {
			want = append(want, l1+": good")
		}
		mustContain(t, out, want, noWarn)
	}
}

// TestOpenSSLKeyTypes has openssl verify responses signed with each kind
// of responder key.
func TestOpenSSLKeyTypes(t *testing.T) {
	tests := []struct {
		name         string
		caKey, rKey  crypto.Signer
		wantSigAlgIn string
	}{
		{"P-384", ecKey(t, elliptic.P384()), ecKey(t, elliptic.P384()), "ecdsa-with-SHA384"},
		{"Ed25519", ed25519Key(t), ed25519Key(t), "ED25519"},
		{"RSA", rsaKey(t), rsaKey(t), "sha256WithRSAEncryption"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := newInterop(t, tt.caKey, tt.rKey)
			out := opensslOCSP(t, "-issuer", in.caPEM, "-CAfile", in.caPEM, "-url", in.url, "-resp_text", "-cert", in.leafPEMs[0], "-cert", in.leafPEMs[1])
			mustContain(t, out, []string{"Response verify OK", in.leafPEMs[0] + ": good", in.leafPEMs[1] + ": good", tt.wantSigAlgIn}, []string{"WARNING"})
		})
	}
}

// TestOpenSSLGET sends openssl's own request by GET (base64 in the path,
// escaped) and has openssl verify the answer.
func TestOpenSSLGET(t *testing.T) {
	in := newInterop(t, nil, nil)
	reqFile := filepath.Join(in.dir, "req.der")
	opensslOCSP(t, "-issuer", in.caPEM, "-cert", in.leafPEMs[0], "-no_nonce", "-reqout", reqFile)
	der, err := os.ReadFile(reqFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		url.PathEscape(base64.StdEncoding.EncodeToString(der)),
		base64.RawURLEncoding.EncodeToString(der),
	} {
		resp, err := http.Get(in.url + "/" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ocsp.MediaResponse {
			t.Fatalf("GET: %s %q", resp.Status, resp.Header.Get("Content-Type"))
		}
		respFile := filepath.Join(in.dir, "resp.der")
		if err := os.WriteFile(respFile, body, 0o600); err != nil {
			t.Fatal(err)
		}
		out := opensslOCSP(t, "-respin", respFile, "-issuer", in.caPEM, "-cert", in.leafPEMs[0], "-CAfile", in.caPEM, "-no_nonce")
		mustContain(t, out, []string{"Response verify OK", in.leafPEMs[0] + ": good"}, []string{"WARNING"})
	}
	// And openssl reads our request as we do: same serial.
	req, err := ocsp.ParseRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Certs) != 1 || req.Certs[0].SerialNumber.Cmp(in.ca.leaves[0].SerialNumber) != 0 || req.Certs[0].HashAlgorithm != crypto.SHA1 {
		t.Errorf("parsed openssl's request as %+v", req.Certs)
	}
}
