package artifact_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle/internal/artifact"
	"cradle/internal/testkit"
)

// benchSize is the artifact downloaded, a typical Linux update image is
// larger, but 64 MiB is long enough to reach steady throughput.
const benchSize = 64 << 20

type benchBlob struct {
	store  *artifact.Dir
	digest artifact.Digest
	rel    string // the blob's path under store.Root, slash-separated
	url    string // signed path and query for the handler
}

func newBenchBlob(b *testing.B) benchBlob {
	b.Helper()
	s := artifact.NewDir(filepath.Join(b.TempDir(), "artifacts"))
	data := randBytes(b, benchSize)
	in, err := s.Put(context.Background(), bytes.NewReader(data), expect(data))
	if err != nil {
		b.Fatal(err)
	}
	h := in.Digest.String()
	signer, _ := artifact.NewURLSigner(keyA, nil)
	return benchBlob{
		store:  s,
		digest: in.Digest,
		rel:    "sha256/" + h[:2] + "/" + h,
		url:    signer.Sign(artifact.Ticket{Digest: in.Digest, Device: "bench", Expires: time.Now().Add(24 * time.Hour)}),
	}
}

func (bb benchBlob) handler() http.Handler {
	signer, _ := artifact.NewURLSigner(keyA, nil)
	return &artifact.Handler{Store: bb.store, Signer: signer}
}

// download fetches u to the end and returns how long it took.
func download(b *testing.B, c *http.Client, u string, buf []byte) time.Duration {
	start := time.Now()
	resp, err := c.Get(u)
	if err != nil {
		b.Fatal(err)
	}
	// Hide io.Discard's ReadFrom, whose 8 KiB buffer would make the
	// client, not the server, the bottleneck.
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, buf)
	resp.Body.Close()
	if err != nil || n != benchSize || resp.StatusCode != 200 {
		b.Fatalf("GET %s: status %d, %d bytes, %v", u, resp.StatusCode, n, err)
	}
	return time.Since(start)
}

// compare downloads from ours and theirs in turn, b.N times each (the order
// alternating), and reports both throughputs and their ratio.
func compare(b *testing.B, c *http.Client, ours, theirs, name string) {
	buf := make([]byte, 256<<10)
	download(b, c, ours, buf) // warm the connections and the page cache
	download(b, c, theirs, buf)
	var tOurs, tTheirs time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			tOurs += download(b, c, ours, buf)
			tTheirs += download(b, c, theirs, buf)
		} else {
			tTheirs += download(b, c, theirs, buf)
			tOurs += download(b, c, ours, buf)
		}
	}
	mb := float64(b.N) * benchSize / 1e6
	b.ReportMetric(mb/tOurs.Seconds(), "cradle-MB/s")
	b.ReportMetric(mb/tTheirs.Seconds(), name+"-MB/s")
	b.ReportMetric(tTheirs.Seconds()/tOurs.Seconds(), "cradle/"+name)
}

// BenchmarkDownloadHTTP compares the handler over plain HTTP with nginx
// (sendfile on) serving the same file.
func BenchmarkDownloadHTTP(b *testing.B) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		testkit.NeedFile(b, "/usr/sbin/nginx", "nginx (Debian package nginx-light)")
		nginx = "/usr/sbin/nginx"
	}
	bb := newBenchBlob(b)
	srv := httptest.NewServer(bb.handler())
	defer srv.Close()
	base := startNginx(b, nginx, bb.store.Root)
	c := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}}
	compare(b, c, srv.URL+bb.url, base+"/"+bb.rel, "nginx")
}

// BenchmarkDownloadHTTPS compares the handler over TLS with a bare Go TLS
// file server (http.FileServer) serving the same file, same certificate.
func BenchmarkDownloadHTTPS(b *testing.B) {
	bb := newBenchBlob(b)
	ours := httptest.NewTLSServer(bb.handler())
	defer ours.Close()
	theirs := httptest.NewTLSServer(http.FileServer(http.Dir(bb.store.Root)))
	defer theirs.Close()
	c := ours.Client()
	c.Transport.(*http.Transport).DisableCompression = true
	compare(b, c, ours.URL+bb.url, theirs.URL+"/"+bb.rel, "gofileserver")
}

// startNginx runs nginx in the foreground (a child of the test) on a free
// loopback port, serving root, and returns its base URL.
func startNginx(b *testing.B, nginx, root string) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := b.TempDir()
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 100000;
	default_type application/octet-stream;
	server {
		listen %[2]s;
		root %[3]s;
	}
}
`, dir, addr, root)
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(nginx, "-p", dir, "-c", cf, "-e", filepath.Join(dir, "error.log"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	base := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(base + "/nonexistent")
		if err == nil {
			resp.Body.Close()
			return base
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			b.Fatalf("nginx did not start on %s: %v\n%s%s", addr, err, out.String(), strings.TrimSpace(string(log)))
		}
	}
}
