package mqttapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/mqttapi"
)

// testCA is a CA private to one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	name string
}

// nextSerial returns a random certificate serial number.
func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

func newCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: dir, name: name}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	return ca
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *testCA) file() string { return filepath.Join(ca.dir, ca.name+".pem") }

// issue signs a leaf: a device certificate whose subject serialNumber is
// serial (like a pki LDevID), or, with server true, a server certificate
// for 127.0.0.1. It writes name.pem and name.key and returns the pair.
func (ca *testCA) issue(t testing.TB, name, serial string, server bool) tls.Certificate {
	t.Helper()
	return ca.issueIn(t, 1, name, serial, server)
}

// issueIn is issue for a device of tenant: the recorder's Check takes the
// tenant id from the subject's organization.
func (ca *testCA) issueIn(t testing.TB, tenant int64, name, serial string, server bool) tls.Certificate {
	t.Helper()
	cert, kder, err := ca.leaf(name, serial, server, strconv.FormatInt(tenant, 10))
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(ca.dir, name+".pem"), "CERTIFICATE", cert.Certificate[0])
	writePEM(t, filepath.Join(ca.dir, name+".key"), "PRIVATE KEY", kder)
	return cert
}

// leaf signs a leaf certificate and returns it with its PKCS#8 key.
// A device certificate's subject organization is org when given.
func (ca *testCA) leaf(name, serial string, server bool, org ...string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: name, SerialNumber: serial, Organization: org},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, kder, err
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// recorder collects what the broker's hooks report.
type recorder struct {
	mu       sync.Mutex
	messages []message
	refusals []refusal
	revoked  map[mqttapi.Device]bool
}

type message struct {
	Device         mqttapi.Device
	Topic, Payload string
}
type refusal struct {
	Device        mqttapi.Device
	Action, Topic string
}

// d1 names device serial of tenant 1, where the certificates of issue are.
func d1(serial string) mqttapi.Device { return mqttapi.Device{TenantID: 1, Serial: serial} }

// check admits the device named by the certificate: the subject's serial
// number, in the tenant of its organization (1 when it has none).
func (r *recorder) check(ctx context.Context, cert *x509.Certificate) (mqttapi.Device, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := d1(cert.Subject.SerialNumber)
	if o := cert.Subject.Organization; len(o) == 1 {
		id, err := strconv.ParseInt(o[0], 10, 64)
		if err != nil {
			return mqttapi.Device{}, err
		}
		d.TenantID = id
	}
	if r.revoked[d] {
		return mqttapi.Device{}, cradle.Errorf(cradle.EFORBIDDEN, "device %v is revoked", d)
	}
	return d, nil
}

func (r *recorder) revoke(d mqttapi.Device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.revoked == nil {
		r.revoked = map[mqttapi.Device]bool{}
	}
	r.revoked[d] = true
}

func (r *recorder) onMessage(d mqttapi.Device, topic string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.messages = append(r.messages, message{d, topic, string(payload)})
}

func (r *recorder) onRefusal(d mqttapi.Device, action, topic string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refusals = append(r.refusals, refusal{d, action, topic})
}

func (r *recorder) Messages() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]message(nil), r.messages...)
}

func (r *recorder) Refusals() []refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]refusal(nil), r.refusals...)
}

// env is a broker on 127.0.0.1:0 with a device CA, two device certificates
// (SN-1, SN-2) and one from a foreign CA (SN-1 too), all as PEM files.
type env struct {
	dir     string
	ca      *testCA
	foreign *testCA
	broker  *mqttapi.Broker
	rec     *recorder
	port    string
}

func newEnv(t testing.TB, tweak func(*mqttapi.Config)) *env {
	t.Helper()
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	foreign := newCA(t, dir, "foreign-ca")
	srv := ca.issue(t, "server", "", true)
	ca.issue(t, "sn1", "SN-1", false)
	ca.issue(t, "sn2", "SN-2", false)
	ca.issue(t, "sn3", "SN-3", false)
	foreign.issue(t, "foreign-sn1", "SN-1", false)
	rec := &recorder{}
	cfg := mqttapi.Config{
		Addr:      "127.0.0.1:0",
		TLS:       &tls.Config{Certificates: []tls.Certificate{srv}, ClientCAs: ca.pool()},
		Check:     rec.check,
		OnMessage: rec.onMessage,
		OnRefusal: rec.onRefusal,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	b, err := mqttapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	_, port, _ := net.SplitHostPort(b.Addr().String())
	return &env{dir: dir, ca: ca, foreign: foreign, broker: b, rec: rec, port: port}
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
