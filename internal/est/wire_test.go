package est_test

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"cradle/internal/est"
)

func TestParseCertsOnlyRefuses(t *testing.T) {
	p := newPKI(t)
	good, err := est.EncodeCertsOnly([]*x509.Certificate{p.caCert})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := asn1.Marshal(struct {
		T asn1.ObjectIdentifier
		C asn1.RawValue
	}{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}, asn1.RawValue{Class: 2, Tag: 0, IsCompound: true, Bytes: []byte{0x04, 0x00}}})
	// Degenerate SignedData with an empty certificate set.
	noCerts := []byte{0x30, 0x23, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x16,
		0x30, 0x14, 0x02, 0x01, 0x01, 0x31, 0x00, 0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0x31, 0x00}
	tests := []struct {
		name string
		der  []byte
		want string
	}{
		{"empty", nil, "not a CMS content info"},
		{"truncated", good[:len(good)-1], "not a CMS content info"},
		{"trailing bytes", append(append([]byte{}, good...), 0), "trailing bytes"},
		{"a bare certificate", p.caCert.Raw, "not a CMS content info"},
		{"id-data", data, "is not signed data"},
		{"no certificates", noCerts, "no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := est.ParseCertsOnly(tt.der)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := est.EncodeCertsOnly(nil); err == nil {
		t.Fatal("EncodeCertsOnly(nil) succeeded")
	}
}

func TestDecodeCSRForms(t *testing.T) {
	der := newCSR(t, newKey(t), &x509.CertificateRequest{})
	s := base64.StdEncoding.EncodeToString(der)
	var lines strings.Builder
	for i := 0; i < len(s); i += 64 {
		lines.WriteString(s[i:min(i+64, len(s))] + "\r\n")
	}
	for name, body := range map[string]string{
		"one line":        s,
		"CRLF lines":      lines.String(),
		"LF and spaces":   " " + strings.ReplaceAll(lines.String(), "\r\n", "\n\t"),
		"without padding": strings.TrimRight(s, "="),
	} {
		if _, err := est.DecodeCSR([]byte(body)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestClientRFC8951 checks that the client takes base64 without line
// breaks and without a Content-Transfer-Encoding header, and that the
// server sends the header.
func TestClientRFC8951(t *testing.T) {
	p := newPKI(t)
	der, err := est.EncodeCertsOnly([]*x509.Certificate{p.caCert})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/pkcs7-mime")
		w.Write([]byte(base64.StdEncoding.EncodeToString(der)))
	}))
	defer ts.Close()
	c, err := est.NewClient(ts.URL, nil, ts.Client())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := c.CACerts(context.Background())
	if err != nil || len(certs) != 1 || !certs[0].Equal(p.caCert) {
		t.Fatalf("CACerts = %d, %v", len(certs), err)
	}

	srv, _ := startServer(t, p, &testCA{pki: p}, 0, nil)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS(nil)}}).Get(srv.URL + "/.well-known/est/cacerts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Content-Transfer-Encoding"); got != "base64" {
		t.Fatalf("Content-Transfer-Encoding = %q, want base64", got)
	}
}
