package tokencache

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
)

// checker stands for the store: it counts its calls, and refuses the
// tokens in refuse.
type checker struct {
	calls  atomic.Int64
	refuse map[string]bool
	during func() // run inside a check, before it answers
}

func (c *checker) check(_ context.Context, secret string) (*cradle.DeviceTokenAuth, error) {
	c.calls.Add(1)
	if c.during != nil {
		c.during()
	}
	if c.refuse[secret] {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "token revoked")
	}
	return &cradle.DeviceTokenAuth{TenantID: 1, Token: cradle.DeviceToken{ID: "dtk_" + secret},
		Device: &cradle.Device{Serial: "SN-" + secret, Labels: map[string]string{"a": "b"}}}, nil
}

func newCache(c *checker, now *time.Time) *Cache {
	return &Cache{Check: c.check, Now: func() time.Time { return *now }}
}

func TestHitsWithinTTLAndExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	ck := &checker{}
	c := newCache(ck, &now)
	for i := 0; i < 5; i++ {
		a, err := c.Authenticate(t.Context(), "one")
		if err != nil || a.Device.Serial != "SN-one" {
			t.Fatalf("%+v, %v", a, err)
		}
		a.Device.Labels["a"] = "changed" // the caller's own copy
	}
	if n := ck.calls.Load(); n != 1 {
		t.Fatalf("store asked %d times within the TTL, want 1", n)
	}
	if a, _ := c.Authenticate(t.Context(), "one"); a.Device.Labels["a"] != "b" {
		t.Fatalf("a caller's change leaked into the cache: %v", a.Device.Labels)
	}
	now = now.Add(DefaultTTL)
	c.Authenticate(t.Context(), "one")
	if n := ck.calls.Load(); n != 2 {
		t.Fatalf("store asked %d times after the TTL, want 2", n)
	}
}

func TestRefusalsAreNeverKept(t *testing.T) {
	now := time.Unix(1000, 0)
	ck := &checker{refuse: map[string]bool{}}
	c := newCache(ck, &now)
	c.Authenticate(t.Context(), "one")
	ck.refuse["one"] = true
	now = now.Add(DefaultTTL) // expired: asks again and is refused
	for i := 0; i < 3; i++ {
		if _, err := c.Authenticate(t.Context(), "one"); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
			t.Fatalf("revoked token: %v", err)
		}
	}
	if n := ck.calls.Load(); n != 4 {
		t.Fatalf("store asked %d times, want 4 (each refusal asks)", n)
	}
}

func TestFlushDropsEntriesAndChecksInFlight(t *testing.T) {
	now := time.Unix(1000, 0)
	ck := &checker{refuse: map[string]bool{}}
	c := newCache(ck, &now)
	c.Authenticate(t.Context(), "one")
	ck.refuse["one"] = true
	c.Flush()
	if _, err := c.Authenticate(t.Context(), "one"); err == nil {
		t.Fatal("a flushed entry still answered")
	}
	// A check that began before a Flush is not kept.
	ck.refuse["two"] = false
	ck.during = func() { c.Flush() }
	if _, err := c.Authenticate(t.Context(), "two"); err != nil {
		t.Fatal(err)
	}
	ck.during = nil
	before := ck.calls.Load()
	c.Authenticate(t.Context(), "two")
	if ck.calls.Load() != before+1 {
		t.Fatal("an answer read across a Flush was kept")
	}
}

func TestTTLBoundedAndMemoryBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	ck := &checker{}
	c := newCache(ck, &now)
	c.TTL = time.Hour
	c.Authenticate(t.Context(), "one")
	now = now.Add(MaxTTL)
	c.Authenticate(t.Context(), "one")
	if n := ck.calls.Load(); n != 2 {
		t.Fatalf("a TTL over MaxTTL was honoured: %d calls", n)
	}
	for i := 0; i < 3*sweepAt; i++ {
		c.Authenticate(t.Context(), strconv.Itoa(i))
		if i%sweepAt == 0 {
			now = now.Add(MaxTTL) // the earlier ones expire
		}
	}
	if n := c.Len(); n > sweepAt+1 {
		t.Fatalf("%d entries kept; expired ones should have been swept", n)
	}
}

// revoker is the part of a ProtocolService the Service wrapper calls: a
// check and a revocation that refuses the token from then on.
type revoker struct {
	cradle.ProtocolService
	ck *checker
}

func (r *revoker) AuthenticateDeviceToken(ctx context.Context, s string) (*cradle.DeviceTokenAuth, error) {
	return r.ck.check(ctx, s)
}

func (r *revoker) RevokeDeviceTokens(_ context.Context, serial string) (int, error) {
	r.ck.refuse[serial[len("SN-"):]] = true
	return 1, nil
}

func TestServiceRevocationFlushes(t *testing.T) {
	r := &revoker{ck: &checker{refuse: map[string]bool{}}}
	s := Wrap(r)
	s.Cache.TTL = time.Hour // only the flush can make the revocation seen
	if _, err := s.AuthenticateDeviceToken(t.Context(), "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeDeviceTokens(t.Context(), "SN-one"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateDeviceToken(t.Context(), "one"); cradle.ErrorCode(err) != cradle.EUNAUTHORIZED {
		t.Fatalf("a token revoked through the service still answered: %v", err)
	}
}
