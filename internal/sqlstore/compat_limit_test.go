package sqlstore

import (
	"fmt"
	"testing"
	"time"
)

// TestRefusalLimiter: one audit a minute per key, counting the ones left
// out; the map stays bounded, dropping stale keys first.
func TestRefusalLimiter(t *testing.T) {
	var l refusalLimiter
	t0 := time.Unix(1e9, 0)
	if ok, n := l.allow("a", t0); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := range 3 {
		if ok, _ := l.allow("a", t0.Add(time.Duration(i+1)*time.Second)); ok {
			t.Fatal("a second refusal within a minute is audited")
		}
	}
	if ok, _ := l.allow("b", t0); !ok {
		t.Fatal("another key is held back")
	}
	if ok, n := l.allow("a", t0.Add(time.Minute)); !ok || n != 3 {
		t.Fatalf("a minute later: %v %d, want true 3", ok, n)
	}
	// Filling the map drops the stale keys first; full of fresh keys, a
	// new key clears it.
	for i := range maxRefusalKeys {
		l.allow(fmt.Sprint("k", i), t0.Add(time.Hour))
	}
	_, hasA := l.last["a"]
	if _, hasB := l.last["b"]; hasA || hasB || len(l.last) > maxRefusalKeys {
		t.Fatalf("%d keys kept (stale a: %v, b: %v), at most %d", len(l.last), hasA, hasB, maxRefusalKeys)
	}
	if ok, _ := l.allow("new", t0.Add(time.Hour)); !ok || len(l.last) != 1 {
		t.Fatalf("a new key on a full map: %v, %d keys", ok, len(l.last))
	}
}
