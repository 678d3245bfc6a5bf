package ocsp_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"cradle/internal/pki/ocsp"
)

// TestConcurrentFirstRequests: many requests for an uncached certificate
// make one Source call and get the same pre-signed answer.
func TestConcurrentFirstRequests(t *testing.T) {
	ca := newCA(t, "CA", nil, nil, 1)
	var calls atomic.Int32
	release := make(chan struct{})
	src := ocsp.SourceFunc(func(ctx context.Context, _ *x509.Certificate, _ *big.Int) (ocsp.Status, error) {
		calls.Add(1)
		<-release
		return ocsp.Status{State: ocsp.Good}, nil
	})
	r, err := ocsp.NewResponder(src, []ocsp.Issuer{ca.issuerArg}, ocsp.Options{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	req := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber)}})
	const n = 32
	answers := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { answers[i] = r.Respond(context.Background(), req) })
	}
	close(release)
	wg.Wait()
	if c := calls.Load(); c != 1 {
		t.Errorf("source called %d times, want 1", c)
	}
	for i := range answers {
		if string(answers[i]) != string(answers[0]) {
			t.Fatalf("answer %d differs from answer 0", i)
		}
	}
	check(t, answers[0], ca.leaves[0], ca.cert)
}

// TestInvalidateDuringFill: a revocation that lands while a request is
// asking the Source is not lost: the next request answers revoked.
func TestInvalidateDuringFill(t *testing.T) {
	ca := newCA(t, "CA", nil, nil, 1)
	var mu sync.Mutex
	revoked := false
	entered, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	src := ocsp.SourceFunc(func(ctx context.Context, _ *x509.Certificate, _ *big.Int) (ocsp.Status, error) {
		mu.Lock()
		st := ocsp.Status{State: ocsp.Good}
		if revoked {
			st = ocsp.Status{State: ocsp.Revoked, RevokedAt: t0}
		}
		mu.Unlock()
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-release // the store is read; the answer is on its way
		}
		return st, nil
	})
	r, err := ocsp.NewResponder(src, []ocsp.Issuer{ca.issuerArg}, ocsp.Options{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	req := buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber)}})
	done := make(chan []byte)
	go func() { done <- r.Respond(context.Background(), req) }()
	<-entered
	mu.Lock()
	revoked = true
	mu.Unlock()
	r.Invalidate(ca.cert, ca.leaves[0].SerialNumber)
	close(release)
	if got := check(t, <-done, ca.leaves[0], ca.cert); got.Status != xocsp.Good {
		t.Errorf("in-flight request: status %d, want the good it read", got.Status)
	}
	if got := check(t, r.Respond(context.Background(), req), ca.leaves[0], ca.cert); got.Status != xocsp.Revoked {
		t.Errorf("next request: status %d, want revoked", got.Status)
	}
}

// TestCacheBound: the cache holds at most MaxEntries statuses.
func TestCacheBound(t *testing.T) {
	ca := newCA(t, "CA", nil, nil, 0)
	src := newMemSource()
	clock := &testClock{t: t0}
	r, err := ocsp.NewResponder(src, []ocsp.Issuer{ca.issuerArg}, ocsp.Options{MaxEntries: 3, Clock: clock, Validity: time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	var reqs [][]byte
	for i := range 10 {
		reqs = append(reqs, buildRequest(t, reqSpec{ids: []asn1RV{certID(t, crypto.SHA1, ca.cert, big.NewInt(int64(i+1)))}}))
	}
	for _, q := range reqs {
		r.Respond(context.Background(), q)
	}
	before := src.Calls()
	for _, q := range reqs {
		r.Respond(context.Background(), q)
	}
	// At most 3 of the 10 can still be cached, so at least 7 ask again.
	if again := src.Calls() - before; again < 7 {
		t.Errorf("%d of 10 asked the source again, want at least 7 (cache bounded to 3)", again)
	}
}
