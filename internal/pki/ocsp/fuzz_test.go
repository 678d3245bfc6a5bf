package ocsp_test

import (
	"bytes"
	"context"
	"crypto"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"cradle/internal/pki/ocsp"
)

// FuzzParseRequest feeds ParseRequest arbitrary octets, and what it
// accepts to a Responder: neither may panic, the answer must be a DER
// OCSPResponse, and an accepted request keeps its limits.
func FuzzParseRequest(f *testing.F) {
	ca := newCA(f, "CA", nil, nil, 2)
	id1 := certID(f, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber)
	id2 := certID(f, crypto.SHA256, ca.cert, ca.leaves[1].SerialNumber)
	f.Add(buildRequest(f, reqSpec{ids: []asn1RV{id1}}))
	f.Add(buildRequest(f, reqSpec{ids: []asn1RV{id1, id2}, nonce: wrapNonce(f, bytes.Repeat([]byte{9}, 16))}))
	f.Add(buildRequest(f, reqSpec{ids: []asn1RV{id2}, signed: true}))
	f.Add(buildRequest(f, reqSpec{ids: []asn1RV{id1}, version: 1}))
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{})
	// A request made by openssl, when it is installed.
	if bin, err := exec.LookPath("openssl"); err == nil {
		dir := f.TempDir()
		out := filepath.Join(dir, "req.der")
		cmd := exec.Command(bin, "ocsp", "-issuer", writePEM(f, dir, "ca.pem", ca.cert), "-cert", writePEM(f, dir, "l1.pem", ca.leaves[0]), "-cert", writePEM(f, dir, "l2.pem", ca.leaves[1]), "-reqout", out)
		if err := cmd.Run(); err == nil {
			if b, err := os.ReadFile(out); err == nil {
				f.Add(b)
			}
		}
	}
	src := newMemSource()
	src.Set(ca.cert, ca.leaves[0].SerialNumber, ocsp.Status{State: ocsp.Good})
	r, err := ocsp.NewResponder(src, []ocsp.Issuer{ca.issuerArg}, ocsp.Options{Logger: quietLog})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		req, err := ocsp.ParseRequest(der)
		if err == nil {
			if len(req.Certs) == 0 || len(req.Certs) > ocsp.MaxRequestCerts || len(req.Nonce) > ocsp.MaxNonceBytes {
				t.Fatalf("accepted a request out of limits: %d certs, nonce %d", len(req.Certs), len(req.Nonce))
			}
			for _, c := range req.Certs {
				if c.SerialNumber == nil || len(c.Raw) == 0 {
					t.Fatalf("CertID without serial or raw: %+v", c)
				}
			}
		}
		resp := r.Respond(context.Background(), der)
		p := parseResponse(t, resp)
		if err != nil && p.Status != int(ocsp.MalformedRequest) {
			t.Fatalf("ParseRequest refused (%v) but the responder answered status %d", err, p.Status)
		}
		if p.Status == 0 && len(p.Singles) != len(req.Certs) {
			t.Fatalf("%d single responses for %d CertIDs", len(p.Singles), len(req.Certs))
		}
	})
}
