package mqttapi_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
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
	conns := make([]*tls.Conn, 0, n)
	for i := range n {
		cert, _, err := ca.leaf("load", fmt.Sprintf("LOAD-%d", i), false)
		if err != nil {
			return err
		}
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if _, err := c.Write(connectPacket(fmt.Sprintf("load-%d", i))); err != nil {
			return fmt.Errorf("connection %d: CONNECT: %w", i, err)
		}
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
			return fmt.Errorf("connection %d: CONNACK % x: %v", i, ack, err)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
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
// MQTT device: heap in use and goroutine stacks after a GC, before and
// after N idle devices connect from a separate process (N from
// CRADLE_MQTTAPI_CONNS, 500 by default; the file descriptor limit bounds
// it); CRADLE_MQTTAPI_HEAPPROFILE names a file for a heap profile taken
// while they are connected. Run it with -benchtime 1x. It reports B/conn for heap, stacks and both; b.N is not used.
func BenchmarkConnectionMemory(b *testing.B) {
	n := 500
	if s := os.Getenv("CRADLE_MQTTAPI_CONNS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatalf("CRADLE_MQTTAPI_CONNS=%q: %v", s, err)
		}
	}
	e := newEnv(b, nil)
	der, err := x509.MarshalECPrivateKey(e.ca.key)
	if err != nil {
		b.Fatal(err)
	}
	writePEM(b, filepath.Join(e.dir, "ca.key"), "EC PRIVATE KEY", der)

	before := memNow()
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

	heap := float64(after.heap-before.heap) / float64(n)
	stack := float64(after.stack-before.stack) / float64(n)
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
	b.Logf("%d connections: heap %.0f B/conn, stacks %.0f B/conn, total %.1f KiB/conn", n, heap, stack, (heap+stack)/1024)
}

type mem struct{ heap, stack uint64 }

func memNow() mem {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{heap: ms.HeapInuse, stack: ms.StackInuse}
}
