package pollcache_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cradle/internal/compat/pollcache"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newCache() (*pollcache.Cache[int], *clock) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return &pollcache.Cache[int]{Now: clk.now}, clk
}

// counter is a read that returns how often it was called.
type counter struct{ n int }

func (c *counter) read() (int, error) {
	c.n++
	return c.n, nil
}

func fill(t *testing.T, c *pollcache.Cache[int], tenant int64, serial string, ttl time.Duration, read func() (int, error)) int {
	t.Helper()
	v, err := c.Fill(tenant, serial, ttl, read)
	if err != nil {
		t.Fatalf("Fill(%d, %q): %v", tenant, serial, err)
	}
	return v
}

func TestFill(t *testing.T) {
	const ttl = 5 * time.Second
	tests := []struct {
		name string
		// run returns the values of successive fills of tenant 1's SN-1,
		// doing what it tests between them.
		run  func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int
		want []int
	}{
		{"kept within the TTL", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			a := fill(t, c, 1, "SN-1", ttl, read)
			clk.advance(ttl - time.Nanosecond)
			return []int{a, fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 1}},
		{"read again once the TTL is over", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			a := fill(t, c, 1, "SN-1", ttl, read)
			clk.advance(ttl)
			b := fill(t, c, 1, "SN-1", ttl, read)
			return []int{a, b, fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 2, 2}},
		{"no TTL keeps nothing", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			return []int{fill(t, c, 1, "SN-1", 0, read), fill(t, c, 1, "SN-1", -time.Second, read), fill(t, c, 1, "SN-1", 0, read)}
		}, []int{1, 2, 3}},
		{"Delete drops", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			a := fill(t, c, 1, "SN-1", ttl, read)
			c.Delete(1, "SN-1")
			return []int{a, fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 2}},
		{"Invalidate drops the named devices", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			a := fill(t, c, 1, "SN-1", ttl, read)
			c.Invalidate(1, []string{"SN-0", "SN-1"})
			return []int{a, fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 2}},
		{"a drop of another device or tenant keeps it", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			a := fill(t, c, 1, "SN-1", ttl, read)
			c.Invalidate(2, []string{"SN-1"})
			c.Delete(1, "SN-2")
			return []int{a, fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 1}},
		{"a reading taken across a drop is not kept", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			a := fill(t, c, 1, "SN-1", ttl, func() (int, error) {
				v, _ := read()
				c.Delete(1, "SN-1") // a report stored while the poll read
				return v, nil
			})
			return []int{a, fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 2}},
		{"an error is returned and not kept", func(t *testing.T, c *pollcache.Cache[int], clk *clock, read func() (int, error)) []int {
			_, err := c.Fill(1, "SN-1", ttl, func() (int, error) { return 0, errors.New("store down") })
			if err == nil || err.Error() != "store down" {
				t.Errorf("Fill with a failing read: %v, want store down", err)
			}
			return []int{fill(t, c, 1, "SN-1", ttl, read), fill(t, c, 1, "SN-1", ttl, read)}
		}, []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, clk := newCache()
			var n counter
			got := tc.run(t, c, clk, n.read)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("readings %v, want %v", got, tc.want)
			}
		})
	}
}

// TestTenantsApart: the same serial in two tenants is two devices.
func TestTenantsApart(t *testing.T) {
	c, _ := newCache()
	a := fill(t, c, 1, "SN-1", time.Second, func() (int, error) { return 10, nil })
	b := fill(t, c, 2, "SN-1", time.Second, func() (int, error) { return 20, nil })
	if a2 := fill(t, c, 1, "SN-1", time.Second, func() (int, error) { return 11, nil }); a != 10 || b != 20 || a2 != 10 {
		t.Fatalf("tenant 1: %d then %d, tenant 2: %d; want 10, 10, 20", a, a2, b)
	}
}

// TestSweep: expired readings are dropped by later stores, so the cache
// holds only the devices that polled lately.
func TestSweep(t *testing.T) {
	const ttl, devices = time.Second, 1000
	c, clk := newCache()
	one := func() (int, error) { return 1, nil }
	for i := range devices {
		fill(t, c, 1, fmt.Sprintf("OLD-%d", i), ttl, one)
	}
	if n := c.Len(); n != devices {
		t.Fatalf("Len after %d devices polled: %d", devices, n)
	}
	clk.advance(2 * ttl)
	for i := range devices {
		fill(t, c, 1, fmt.Sprintf("NEW-%d", i), ttl, one)
	}
	if n := c.Len(); n != devices {
		t.Fatalf("Len after %d other devices polled two TTLs later: %d, want %d (the old ones swept)", devices, n, devices)
	}
	c.Invalidate(1, []string{"NEW-1", "NEW-2"})
	if n := c.Len(); n != devices-2 {
		t.Fatalf("Len after two were invalidated: %d, want %d", n, devices-2)
	}
}

// TestNoStaleAfterDrop races polls against a writer that stores a new
// version, then drops the device: a poll that starts after a drop has
// returned must see at least the version written before it.
func TestNoStaleAfterDrop(t *testing.T) {
	var c pollcache.Cache[int64]
	var stored, dropped atomic.Int64
	read := func() (int64, error) { return stored.Load(), nil }
	const writes, pollers = 2000, 4
	var wg sync.WaitGroup
	var stale atomic.Int64
	done := make(chan struct{})
	for range pollers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				min := dropped.Load()
				v, _ := c.Fill(1, "SN-1", time.Hour, read)
				if v < min {
					stale.Store(v<<32 | min)
				}
			}
		}()
	}
	for i := int64(1); i <= writes; i++ {
		stored.Store(i)
		c.Delete(1, "SN-1")
		dropped.Store(i)
		runtime.Gosched()
	}
	close(done)
	wg.Wait()
	if s := stale.Load(); s != 0 {
		t.Fatalf("a poll after the drop of version %d returned version %d", s&0xffffffff, s>>32)
	}
	if v, _ := c.Fill(1, "SN-1", time.Hour, read); v != writes {
		t.Fatalf("final reading %d, want %d", v, writes)
	}
}
