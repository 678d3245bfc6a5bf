package hawkbit

import (
	"container/list"
	"sync"
	"time"
)

// Bounds of the handler's caches of immutable answers: past them the
// least recently used entry goes, so memory stays bounded however many
// actions and artifacts a long-lived process sees.
const (
	maxActions       = 16384 // action → its attempt and release (a few hundred bytes each)
	maxHashes        = 1024  // artifact → its MD5 and SHA-1
	maxInstalledSeen = 4096  // action → whether it installed its release
)

// lru is a bounded map with least-recently-used eviction and an optional
// expiry per entry; safe for concurrent use. The zero value is not usable:
// make one with newLRU.
type lru[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recently used; of *lruEntry[K, V]
	items map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key   K
	val   V
	until time.Time // zero: no expiry
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, order: list.New(), items: make(map[K]*list.Element)}
}

// get returns the key's value unless it is absent or expired.
func (c *lru[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.items[k]
	if !ok {
		return zero, false
	}
	e := el.Value.(*lruEntry[K, V])
	if !e.until.IsZero() && !time.Now().Before(e.until) {
		c.order.Remove(el)
		delete(c.items, k)
		return zero, false
	}
	c.order.MoveToFront(el)
	return e.val, true
}

// add stores v under k unless a live value is there already, and returns
// the value kept; ttl 0 keeps it until it is evicted.
func (c *lru[K, V]) add(k K, v V, ttl time.Duration) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		e := el.Value.(*lruEntry[K, V])
		if e.until.IsZero() || time.Now().Before(e.until) {
			c.order.MoveToFront(el)
			return e.val
		}
		c.order.Remove(el)
		delete(c.items, k)
	}
	c.insert(k, v, ttl)
	return v
}

// set stores v under k, replacing what is there.
func (c *lru[K, V]) set(k K, v V, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.order.Remove(el)
		delete(c.items, k)
	}
	c.insert(k, v, ttl)
}

func (c *lru[K, V]) insert(k K, v V, ttl time.Duration) {
	e := &lruEntry[K, V]{key: k, val: v}
	if ttl > 0 {
		e.until = time.Now().Add(ttl)
	}
	c.items[k] = c.order.PushFront(e)
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(*lruEntry[K, V]).key)
	}
}

// remove drops k when its value is still v (compared by the caller's eq),
// so that a newer value stored meanwhile stays.
func (c *lru[K, V]) remove(k K, eq func(V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok && eq(el.Value.(*lruEntry[K, V]).val) {
		c.order.Remove(el)
		delete(c.items, k)
	}
}

// len is the number of entries, expired ones included until touched.
func (c *lru[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
