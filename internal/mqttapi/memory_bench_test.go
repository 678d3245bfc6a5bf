package mqttapi_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// loadgenEnv, when set, makes the test binary a load generator instead of
// running tests: "addr dir n" opens n TLS MQTT 3.1.1 connections to addr,
// each with its own device certificate (serial LOAD-<i>) issued from the CA
// in dir, prints "ready", and holds them until stdin closes. Running the
// clients in another process keeps their memory out of the broker's figure.
const loadgenEnv = "CRADLE_MQTTAPI_LOADGEN"

func TestMain(m *testing.M) {
	if spec := os.Getenv(loadgenEnv); spec != "" {
		if err := loadgen(spec); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func loadgen(spec string) error {
	var addr, dir string
	var n int
	if _, err := fmt.Sscan(spec, &addr, &dir, &n); err != nil {
		return fmt.Errorf("parse %q: %w", spec, err)
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	ca := &testCA{cert: caCert, key: caKey, dir: dir, name: "ca"}
	// Source addresses 127.0.0.2, .3, … each hold perAddr connections, so
	// tens of thousands of them do not run out of ephemeral ports.
	const perAddr = 20000
	conns := make([]*tls.Conn, n)
	if err := openConns(conns, func(i int) (*tls.Conn, error) {
		return loadConn(addr, ca, roots, i, net.IPv4(127, 0, 0, byte(2+i/perAddr)))
	}); err != nil {
		return err
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// loadWorkers is how many connections the load generator opens at once.
const loadWorkers = 8

// openConns fills conns with open(i) for each index, loadWorkers at a
// time, and returns the first error; after one, the workers stop opening.
func openConns(conns []*tls.Conn, open func(i int) (*tls.Conn, error)) error {
	errs := make(chan error, loadWorkers)
	next := make(chan int)
	var wg sync.WaitGroup
	for range loadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(i)
				if err != nil {
					errs <- err
					for range next {
					}
					return
				}
				conns[i] = c
			}
		}()
	}
	for i := range conns {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	return <-errs
}

// loadConn opens connection i from local address src: a TLS handshake
// with a fresh device certificate, CONNECT, and CONNACK checked.
func loadConn(addr string, ca *testCA, roots *x509.CertPool, i int, src net.IP) (*tls.Conn, error) {
	cert, _, err := ca.leaf("load", fmt.Sprintf("LOAD-%d", i), false)
	if err != nil {
		return nil, err
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: time.Minute},
		Config: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connection %d from %s: %w", i, src, err)
	}
	c := nc.(*tls.Conn)
	if _, err := c.Write(connectPacket(fmt.Sprintf("load-%d", i))); err != nil {
		c.Close()
		return nil, fmt.Errorf("connection %d: CONNECT: %w", i, err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("connection %d: CONNACK % x: %v", i, ack, err)
	}
	return c, nil
}

// connectPacket is an MQTT 3.1.1 CONNECT with clean session, keepalive 0
// (no deadline: the benchmark holds connections idle) and client id id.
func connectPacket(id string) []byte {
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, byte(len(id) >> 8), byte(len(id))}
	body = append(body, id...)
	p := []byte{0x10}
	for l := len(body); ; {
		b := byte(l % 128)
		l /= 128
		if l > 0 {
			b |= 0x80
		}
		p = append(p, b)
		if l == 0 {
			break
		}
	}
	return append(p, body...)
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, nil, err
	}
	cp, _ := pem.Decode(cb)
	kp, _ := pem.Decode(kb)
	if cp == nil || kp == nil {
		return nil, nil, fmt.Errorf("no PEM in %s", dir)
	}
	cert, err := x509.ParseCertificate(cp.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kp.Bytes)
	return cert, key, err
}

// BenchmarkConnectionMemory measures the broker's memory per connected TLS
// MQTT device: heap in use and goroutine stacks after a GC, and this
// process's VmRSS, before and after N idle devices connect from a separate
// process (so the clients' memory is not counted). N comes from
// CRADLE_MQTTAPI_CONNS, 500 by default; the benchmark raises RLIMIT_NOFILE
// to N plus some, which needs N below the hard limit or CAP_SYS_RESOURCE.
// The devices connect from 127.0.0.2, 127.0.0.3, … (20,000 each) so
// ephemeral ports do not run out. CRADLE_MQTTAPI_HEAPPROFILE names a file
// for a heap profile taken while they are connected. Run it with
// -benchtime 1x; b.N is not used. It reports B/conn for heap, stacks,
// both, and VmRSS, and objects-B/conn, the bytes in live objects alone
// (from the heap profile, sampled every 4 KiB; heap-B/conn counts the
// spans that hold them, fragmentation included):
//
//	CRADLE_MQTTAPI_CONNS=18500 go test -run '^$' -bench ConnectionMemory -benchtime 1x ./internal/mqttapi
func BenchmarkConnectionMemory(b *testing.B) {
	n := 500
	if s := os.Getenv("CRADLE_MQTTAPI_CONNS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatalf("CRADLE_MQTTAPI_CONNS=%q: %v", s, err)
		}
	}
	// Each connection is a descriptor here and one in the load generator,
	// which inherits the limit.
	if err := raiseFileLimit(uint64(n) + 1024); err != nil {
		b.Fatalf("%d connections: %v", n, err)
	}
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = profileRate
	e := newEnv(b, nil)
	der, err := x509.MarshalECPrivateKey(e.ca.key)
	if err != nil {
		b.Fatal(err)
	}
	writePEM(b, filepath.Join(e.dir, "ca.key"), "EC PRIVATE KEY", der)

	before := memNow()
	_, objBefore := clientInUse()
	goroutines := runtime.NumGoroutine()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", loadgenEnv, e.broker.Addr(), e.dir, n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("load generator: %q, %v", line, err)
	}
	connectTime := time.Since(start)
	waitFor(b, 30*time.Second, "sessions", func() bool { return e.broker.Stats().Sessions == n })
	after := memNow()
	_, objAfter := clientInUse()
	objects := float64(objAfter-objBefore) / float64(n)
	b.ReportMetric(objects, "objects-B/conn")

	heap := float64(after.heap-before.heap) / float64(n)
	stack := float64(after.stack-before.stack) / float64(n)
	reportPerConn(b, n, heap, stack, goroutines, connectTime)
	rss := (float64(after.rss) - float64(before.rss)) / float64(n)
	b.ReportMetric(rss, "rss-B/conn")
	b.Logf("%d connections: heap %.0f B/conn (objects %.0f), stacks %.0f B/conn, total %.1f KiB/conn; VmRSS %.1f KiB/conn", n, heap, objects, stack, (heap+stack)/1024, rss/1024)
}

// reportPerConn reports what both memory benchmarks measure of n
// connections: heap and stack bytes per connection and their sum, the
// goroutines started since there were goroutines, and the connect time;
// then it writes a heap profile to CRADLE_MQTTAPI_HEAPPROFILE when set.
func reportPerConn(b *testing.B, n int, heap, stack float64, goroutines int, connectTime time.Duration) {
	b.Helper()
	b.ReportMetric(heap, "heap-B/conn")
	b.ReportMetric(stack, "stack-B/conn")
	b.ReportMetric(heap+stack, "B/conn")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(n), "goroutines/conn")
	b.ReportMetric(float64(connectTime.Microseconds())/float64(n), "µs/connect")
	if p := os.Getenv("CRADLE_MQTTAPI_HEAPPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			b.Fatal(err)
		}
	}
}

// raiseFileLimit raises RLIMIT_NOFILE to at least want, the hard limit
// too when the process may (root).
func raiseFileLimit(want uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= want {
		return nil
	}
	hard := l.Max
	l.Cur, l.Max = want, max(l.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("raise the open file limit to %d (hard limit %d; raising it needs CAP_SYS_RESOURCE): %w", want, hard, err)
	}
	return nil
}

type mem struct{ heap, stack, rss uint64 }

func memNow() mem {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{heap: ms.HeapInuse, stack: ms.StackInuse, rss: vmRSS()}
}

// vmRSS returns this process's resident set size in bytes from
// /proc/self/status, or 0 where there is none.
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
