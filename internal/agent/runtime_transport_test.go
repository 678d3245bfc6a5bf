package agent_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"cradle/internal/agent"
)

// TestRuntimeTransportFollowsCertificate: a request through the runtime's
// transport before the unit has an LDevID presents none; once
// SetCertificate gave one, the next request presents it, although the
// first connection was kept alive (a reused connection would present
// what its handshake did, i.e. nothing).
func TestRuntimeTransportFollowsCertificate(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			fmt.Fprint(w, "none")
			return
		}
		fmt.Fprint(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	rt, err := agent.NewRuntime(agent.RuntimeOptions{Serial: "SN-1", ServerURL: srv.URL, Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	get := func() string {
		t.Helper()
		resp, err := (&http.Client{Transport: rt.Transport(), Timeout: 10 * time.Second}).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); got != "none" {
		t.Fatalf("before SetCertificate the server saw %q, want no certificate", got)
	}
	for _, cn := range []string{"SN-1 first", "SN-1 renewed"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}, &x509.Certificate{Subject: pkix.Name{CommonName: cn}}, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		rt.SetCertificate(tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})
		if got := get(); got != cn {
			t.Fatalf("after SetCertificate(%s) the server saw %q", cn, got)
		}
	}
}
