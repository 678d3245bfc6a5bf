// Package pollcache keeps, per device, what a foreign device API's poll
// last read of the store (its pending update), for a short time: devices
// poll far more often than their update changes, and the read is the
// costly part of a poll.
//
// A reading is trusted until its TTL runs out or until it is dropped:
// Invalidate when something outside the handler changed the device's
// update (the rollout scheduler started it), Delete when the handler
// itself wrote (the device reported). A reading taken while a drop of its
// device happened is not stored (the store write that caused the drop may
// not have been visible to it), so a drop made after a write is never
// undone by a poll in flight. Expired readings are swept lazily: a store
// into a shard (one of 64) whose last sweep is a TTL old drops its expired
// readings, so a device that stopped polling is forgotten at the next poll
// of a device of its shard, and what is held is bounded by the devices that
// polled lately. What the cache must never hold is a credential: callers
// check tokens on every request.
package pollcache

import (
	"sync"
	"time"
)

// shards spreads devices over locks, so that polls of different devices
// rarely contend and a drop blocks only a store of its shard's readings.
const shards = 64

// Cache maps (tenant id, device serial) to a reading of type V. Its zero
// value is empty and ready; it must not be copied after first use.
type Cache[V any] struct {
	// Now is the clock; nil means time.Now. Set it before first use.
	Now func() time.Time

	shards [shards]shard[V]
}

type key struct {
	tenant int64
	serial string
}

type entry[V any] struct {
	v     V
	until time.Time
}

type shard[V any] struct {
	mu sync.RWMutex
	m  map[key]entry[V]
	// drops counts Invalidate and Delete calls on the shard: a reading
	// taken across one is not stored.
	drops     uint64
	nextSweep time.Time
}

func (c *Cache[V]) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// shard picks the shard of a device (FNV-1a of the serial and tenant).
func (c *Cache[V]) shard(k key) *shard[V] {
	h := uint64(14695981039346656037)
	for i := 0; i < len(k.serial); i++ {
		h = (h ^ uint64(k.serial[i])) * 1099511628211
	}
	h = (h ^ uint64(k.tenant)) * 1099511628211
	return &c.shards[h%shards]
}

// Fill returns the device's reading: the cached one while it is younger
// than ttl, else what read returns, which is then kept for ttl (counted
// from before the read) unless the device's entry was dropped meanwhile.
// An error of read is returned and not kept. A ttl ≤ 0 calls read every
// time and keeps nothing.
func (c *Cache[V]) Fill(tenant int64, serial string, ttl time.Duration, read func() (V, error)) (V, error) {
	if ttl <= 0 {
		return read()
	}
	k := key{tenant, serial}
	sh := c.shard(k)
	start := c.now()
	sh.mu.RLock()
	e, ok := sh.m[k]
	drops := sh.drops
	sh.mu.RUnlock()
	if ok && start.Before(e.until) {
		return e.v, nil
	}
	v, err := read()
	if err != nil {
		return v, err
	}
	sh.mu.Lock()
	if sh.drops == drops {
		if sh.m == nil {
			sh.m = make(map[key]entry[V])
		}
		sh.m[k] = entry[V]{v: v, until: start.Add(ttl)}
		if now := c.now(); !now.Before(sh.nextSweep) {
			for k, e := range sh.m {
				if !now.Before(e.until) {
					delete(sh.m, k)
				}
			}
			sh.nextSweep = now.Add(ttl)
		}
	}
	sh.mu.Unlock()
	return v, nil
}

// Invalidate drops the readings of a tenant's devices: something outside
// the caller's handler changed their updates (the rollout scheduler's
// Notify). Call it after that change is stored.
func (c *Cache[V]) Invalidate(tenant int64, serials []string) {
	for _, s := range serials {
		c.Delete(tenant, s)
	}
}

// Delete drops one device's reading: call it after the handler stored
// what changes it (the device's report), so that no poll in flight keeps
// what it read before.
func (c *Cache[V]) Delete(tenant int64, serial string) {
	k := key{tenant, serial}
	sh := c.shard(k)
	sh.mu.Lock()
	sh.drops++
	delete(sh.m, k)
	sh.mu.Unlock()
}

// Len is the number of readings held, expired ones not yet swept
// included.
func (c *Cache[V]) Len() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}
