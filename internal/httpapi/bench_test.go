package httpapi_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkGetDevice serves GET /api/v1/devices/{serial} in-process, token
// authentication and SQLite lookup included, over 100,000 devices. It is
// for profiling the route; bench/getbench measures it over the network
// against a baseline.
func BenchmarkGetDevice(b *testing.B) {
	const n = 100_000
	e := newHandlerEnv(b, n)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("GET", fmt.Sprintf("/api/v1/devices/SN-%d", rand.IntN(n)), nil)
			req.Header.Set("Authorization", "Bearer "+e.token)
			rec := httptest.NewRecorder()
			e.handler.ServeHTTP(rec, req)
			if rec.Code != 200 {
				b.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
		}
	})
}

// BenchmarkBareHandler is the baseline of BenchmarkGetDevice: a handler
// that writes a constant device document, through the same test harness.
func BenchmarkBareHandler(b *testing.B) {
	doc := []byte(`{"serial":"SN-42","macs":["02:00:5e:00:00:2a"],"model":"gw-100","labels":{"batch":"0","site":"berlin"},"state":"factory","created_at":"2026-03-01T09:00:00Z","updated_at":"2026-03-01T09:00:00Z","state_changed_at":"2026-03-01T09:00:00Z"}` + "\n")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("GET", fmt.Sprintf("/api/v1/devices/SN-%d", rand.IntN(100)), nil)
			req.Header.Set("Authorization", "Bearer x")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
		}
	})
}
