// Package tokencache remembers, for a short time, what a device token
// stood for, so that a foreign client's every poll does not cost a store
// read for its bearer token.
//
// Only successful checks are kept; a refusal always asks the store again
// (and is audited there). An entry lives at most TTL (DefaultTTL, 250 ms):
// a token revoked, or a device suspended, revoked or decommissioned on
// another replica is refused within that time, well inside the one second
// the revocation promise gives. In this process, Flush drops every entry
// at once; the server calls it on every revocation and lifecycle move.
// Entries are keyed by the SHA-256 of the token string, never the secret
// itself, and the map is swept when it grows, so memory stays bounded by
// the tokens used within one TTL.
package tokencache

import (
	"context"
	"crypto/sha256"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"cradle"
)

// DefaultTTL is how long a successful check is trusted.
const DefaultTTL = 250 * time.Millisecond

// MaxTTL bounds TTL: revocation must cut a device off within a second.
const MaxTTL = time.Second

// sweepAt is the entry count past which a store sweeps expired entries.
const sweepAt = 4096

// Cache wraps a token check. Set Check; the zero TTL is DefaultTTL and a
// nil Now the system clock.
type Cache struct {
	// Check is the store's check (cradle.ProtocolService's
	// AuthenticateDeviceToken).
	Check func(ctx context.Context, secret string) (*cradle.DeviceTokenAuth, error)
	TTL   time.Duration
	Now   func() time.Time

	mu      sync.Mutex
	entries map[[32]byte]entry
	gen     atomic.Uint64 // bumped by Flush: a check begun before is not kept
}

type entry struct {
	auth  cradle.DeviceTokenAuth
	dev   cradle.Device
	until time.Time
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Cache) ttl() time.Duration {
	switch {
	case c.TTL <= 0:
		return DefaultTTL
	case c.TTL > MaxTTL:
		return MaxTTL
	}
	return c.TTL
}

// Authenticate answers from the cache when a check of the same token
// succeeded within TTL, else asks Check. The answer is the caller's own
// copy.
func (c *Cache) Authenticate(ctx context.Context, secret string) (*cradle.DeviceTokenAuth, error) {
	key := sha256.Sum256([]byte(secret))
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.copy(), nil
	}
	gen := c.gen.Load()
	auth, err := c.Check(ctx, secret)
	if err != nil {
		c.mu.Lock()
		delete(c.entries, key)
		c.mu.Unlock()
		return nil, err
	}
	e = entry{auth: *auth, until: now.Add(c.ttl())}
	if auth.Device != nil {
		e.dev = *auth.Device
		e.auth.Device = nil
	}
	c.mu.Lock()
	if c.gen.Load() == gen { // no Flush while the store was asked
		if c.entries == nil {
			c.entries = make(map[[32]byte]entry)
		}
		if len(c.entries) >= sweepAt {
			for k, old := range c.entries {
				if !now.Before(old.until) {
					delete(c.entries, k)
				}
			}
		}
		if len(c.entries) < 4*sweepAt {
			c.entries[key] = e
		}
	}
	c.mu.Unlock()
	return e.copy(), nil
}

// copy returns a fresh answer, so that callers never share one.
func (e entry) copy() *cradle.DeviceTokenAuth {
	a := e.auth
	if e.dev.Serial != "" {
		d := e.dev
		d.MACs = slices.Clone(d.MACs)
		d.Labels = maps.Clone(d.Labels)
		a.Device = &d
	}
	return &a
}

// Flush forgets every entry, and any check in flight: a revocation or a
// lifecycle move happened in this process.
func (c *Cache) Flush() {
	c.gen.Add(1)
	c.mu.Lock()
	clear(c.entries)
	c.mu.Unlock()
}

// Len is the number of entries, expired ones included.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Service is a ProtocolService whose token checks go through a Cache, and
// whose every revocation or admission decision flushes it once the call
// returns, whatever it returned (a failure may still have revoked
// something). A server has one, shared by its device APIs and its operator
// API, so that what an operator revokes there is refused at once.
type Service struct {
	cradle.ProtocolService
	Cache *Cache
}

// Wrap returns p with a token cache of DefaultTTL.
func Wrap(p cradle.ProtocolService) *Service {
	return &Service{ProtocolService: p, Cache: &Cache{Check: p.AuthenticateDeviceToken}}
}

// AuthenticateDeviceToken checks through the cache.
func (s *Service) AuthenticateDeviceToken(ctx context.Context, secret string) (*cradle.DeviceTokenAuth, error) {
	return s.Cache.Authenticate(ctx, secret)
}

// RevokeDeviceToken revokes, then flushes.
func (s *Service) RevokeDeviceToken(ctx context.Context, id string) error {
	defer s.Cache.Flush()
	return s.ProtocolService.RevokeDeviceToken(ctx, id)
}

// RevokeDeviceTokens revokes, then flushes.
func (s *Service) RevokeDeviceTokens(ctx context.Context, serial string) (int, error) {
	defer s.Cache.Flush()
	return s.ProtocolService.RevokeDeviceTokens(ctx, serial)
}

// RejectMenderAuthSet rejects (revoking the set's tokens), then flushes.
func (s *Service) RejectMenderAuthSet(ctx context.Context, id, reason string) (*cradle.MenderAuthSet, error) {
	defer s.Cache.Flush()
	return s.ProtocolService.RejectMenderAuthSet(ctx, id, reason)
}

// AcceptMenderAuthSet accepts (which rejects the device's other set),
// then flushes.
func (s *Service) AcceptMenderAuthSet(ctx context.Context, id string, a cradle.MenderAccept) (*cradle.MenderAuthSet, error) {
	defer s.Cache.Flush()
	return s.ProtocolService.AcceptMenderAuthSet(ctx, id, a)
}
