package hawkbit

import (
	"testing"
	"time"

	"cradle"
)

func TestLRU(t *testing.T) {
	c := newLRU[int, string](3)
	for i := range 3 {
		c.add(i, string(rune('a'+i)), 0)
	}
	if got := c.add(1, "other", 0); got != "b" {
		t.Fatalf("add over a live entry kept %q, want the first value b", got)
	}
	c.get(0) // 0 is now the most recently used: 2 is the oldest
	c.add(3, "d", 0)
	if _, ok := c.get(2); ok || c.len() != 3 {
		t.Fatalf("the least recently used entry stayed: len %d", c.len())
	}
	for k, want := range map[int]string{0: "a", 1: "b", 3: "d"} {
		if v, ok := c.get(k); !ok || v != want {
			t.Errorf("get(%d) = %q, %v; want %q", k, v, ok, want)
		}
	}
	c.remove(0, func(v string) bool { return v == "x" })
	if _, ok := c.get(0); !ok {
		t.Error("remove dropped an entry whose value is not the one given")
	}
	c.remove(0, func(v string) bool { return v == "a" })
	if _, ok := c.get(0); ok {
		t.Error("remove kept the entry")
	}
	c.set(5, "e", time.Nanosecond)
	time.Sleep(time.Millisecond)
	if _, ok := c.get(5); ok {
		t.Error("an expired entry was returned")
	}
	if got := c.add(5, "f", 0); got != "f" {
		t.Errorf("add over an expired entry kept %q", got)
	}
	c.set(5, "g", 0)
	if v, _ := c.get(5); v != "g" {
		t.Errorf("set did not replace: %q", v)
	}
}

// The handler's caches stay within their bounds however many artifacts
// and actions pass.
func TestCachesBounded(t *testing.T) {
	h := &Handler{}
	h.caches.Do(h.makeCaches)
	for i := range maxActions + 100 {
		h.remember(1, &cradle.DDIAction{ID: int64(i), Serial: "SN"}, nil)
	}
	if n := h.actions.len(); n != maxActions {
		t.Errorf("actions cache holds %d entries, want %d", n, maxActions)
	}
	if _, ok := h.actions.get(actionKey{1, maxActions + 99}); !ok {
		t.Error("the newest action was evicted")
	}
	for i := range maxHashes + 10 {
		h.hashes.add(string(rune(i)), &artifactHashes{}, 0)
	}
	if n := h.hashes.len(); n != maxHashes {
		t.Errorf("hashes cache holds %d entries, want %d", n, maxHashes)
	}
}
