package mqttapi_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle/internal/mqttapi"
)

// BenchmarkConnectionMemoryInProcess measures the broker's memory per
// connected TLS MQTT device at a scale the file descriptor limit forbids
// to BenchmarkConnectionMemory: N devices (CRADLE_MQTTAPI_CONNS, 50,000 by
// default) connect over in-memory pipes (net.Pipe) from the same process.
// The broker is the real one, with its TLS listener, mochi and hooks; only
// the socket is a pipe. The clients' memory is taken out exactly: the
// benchmark samples allocations (runtime.MemProfileRate = 4096), and the
// bytes still in use that were allocated under pipeClient (the client's
// TLS connection, its certificate and key, the pipe itself), scaled as
// pprof scales them, are subtracted from the heap's growth. Clients hold no goroutine once
// connected, so the stack growth is the broker's. Fragmentation of the
// heap is left to the broker; objects-B/conn is the broker's bytes in
// live objects alone, from the same profile. CRADLE_MQTTAPI_HEAPPROFILE names a file for
// a heap profile. Run it with -benchtime 1x:
//
//	go test -run '^$' -bench ConnectionMemoryInProcess -benchtime 1x ./internal/mqttapi
func BenchmarkConnectionMemoryInProcess(b *testing.B) {
	n := 50_000
	if s := os.Getenv("CRADLE_MQTTAPI_CONNS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatalf("CRADLE_MQTTAPI_CONNS=%q: %v", s, err)
		}
	}
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = profileRate

	dir := b.TempDir()
	ca := newCA(b, dir, "ca")
	srv := ca.issue(b, "server", "", true)
	rec := &recorder{}
	pl := newPipeListener()
	br, err := mqttapi.New(mqttapi.Config{
		Addr:      "pipe",
		TLS:       &tls.Config{Certificates: []tls.Certificate{srv}, ClientCAs: ca.pool()},
		Check:     rec.check,
		OnMessage: rec.onMessage,
		OnRefusal: rec.onRefusal,
		// Handshakes queue behind each other on a busy machine.
		ConnectTimeout: time.Minute,
	})
	if err != nil {
		b.Fatal(err)
	}
	mqttapi.UseListener(br, pl)
	if err := br.Open(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := br.Close(ctx); err != nil {
			b.Error(err)
		}
	}()

	conns := make([]*tls.Conn, n)
	defer func() {
		// Before the broker closes: its goodbye writes would block on
		// pipes nobody reads.
		for _, c := range conns {
			if c != nil {
				c.NetConn().Close()
			}
		}
	}()
	before := memNow()
	clientBefore, allBefore := clientInUse()
	goroutines := runtime.NumGoroutine()
	roots := ca.pool()
	start := time.Now()
	if err := openConns(conns, func(i int) (*tls.Conn, error) { return pipeClient(pl, ca, roots, i) }); err != nil {
		b.Fatal(err)
	}
	connectTime := time.Since(start)
	waitFor(b, time.Minute, "sessions", func() bool { return br.Stats().Sessions == n })
	after := memNow()
	clientAfter, allAfter := clientInUse()
	client := clientAfter - clientBefore
	objects := float64(allAfter-allBefore-client) / float64(n)

	heap := (float64(after.heap) - float64(before.heap) - float64(client)) / float64(n)
	stack := (float64(after.stack) - float64(before.stack)) / float64(n)
	reportPerConn(b, n, heap, stack, goroutines, connectTime)
	b.ReportMetric(objects, "objects-B/conn")
	b.ReportMetric(float64(client)/float64(n), "client-B/conn")
	b.Logf("%d connections: broker heap %.0f B/conn (objects %.0f), stacks %.0f B/conn, total %.1f KiB/conn (clients' %.0f B/conn taken out)",
		n, heap, objects, stack, (heap+stack)/1024, float64(client)/float64(n))
	runtime.KeepAlive(conns)
}

// profileRate is the heap profile's sampling rate during the benchmark:
// one sample per 4 KiB allocated on average, estimates within a fraction
// of a percent at thousands of connections, without the cost of
// recording every allocation.
const profileRate = 4096

// pipeClient connects device i through pl: a TLS handshake with a fresh
// device certificate, CONNECT, and CONNACK checked. Everything it
// allocates is the client's (see clientInUse).
func pipeClient(pl *pipeListener, ca *testCA, roots *x509.CertPool, i int) (*tls.Conn, error) {
	cert, _, err := ca.leaf("load", fmt.Sprintf("LOAD-%d", i), false)
	if err != nil {
		return nil, err
	}
	cc, sc := net.Pipe()
	if err := pl.deliver(sc); err != nil {
		return nil, err
	}
	c := tls.Client(cc, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
	if err := c.Handshake(); err != nil {
		return nil, fmt.Errorf("connection %d: %w", i, err)
	}
	if _, err := c.Write(connectPacket(fmt.Sprintf("load-%d", i))); err != nil {
		return nil, fmt.Errorf("connection %d: CONNECT: %w", i, err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		return nil, fmt.Errorf("connection %d: CONNACK % x: %v", i, ack, err)
	}
	return c, nil
}

// clientInUse returns the bytes in use, as of the last GC, that were
// allocated with pipeClient on the stack, and all bytes in use, estimated from the heap
// profile's samples the way pprof scales them.
func clientInUse() (client, all int64) {
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+1024)
	}
	var c, a float64
	for _, r := range recs {
		if r.AllocObjects == 0 || r.InUseObjects() == 0 {
			continue
		}
		// A sample stands for 1/(1-e^(-size/rate)) objects.
		size := float64(r.AllocBytes) / float64(r.AllocObjects)
		bytes := float64(r.InUseBytes()) / (1 - math.Exp(-size/float64(runtime.MemProfileRate)))
		a += bytes
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasSuffix(f.Function, "mqttapi_test.pipeClient") {
				c += bytes
				break
			}
			if !more {
				break
			}
		}
	}
	return int64(c), int64(a)
}

// pipeListener is a net.Listener whose connections are the server ends of
// net.Pipe pairs made by pipeClient.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) deliver(c net.Conn) error {
	select {
	case l.conns <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }
