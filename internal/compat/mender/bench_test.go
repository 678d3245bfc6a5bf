package mender_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cradle"
	"cradle/internal/compat/mender"
	"cradle/internal/compat/tokencache"
)

// benchClients is how many requests are in flight at once.
const benchClients = 8

// BenchmarkDeploymentsNext measures POST v2 deployments/next over TLS
// (HTTP/1.1, kept-alive connections, benchClients at once) on a real
// SQLite store, for a device with a pending update (200 with a signed
// URL) and one without (204), against a bare Go handler that answers the
// same bytes on the same kind of server in the same run. It reports both
// rates and their ratio, with the server's default poll cache ("cached")
// and reading the store on every check ("uncached").
func BenchmarkDeploymentsNext(b *testing.B) {
	for _, mode := range []struct {
		name  string
		cache time.Duration
	}{{"cached", 0}, {"uncached", -1}} {
		b.Run(mode.name, func(b *testing.B) {
			// As the server runs it: the poll cache and the token cache
			// (internal/compat/tokencache); uncached reads the store for
			// both on every check.
			benchmarkNext(b, newEnv(b, func(s *mender.Server) {
				s.PollCache = mode.cache
				if mode.cache >= 0 {
					s.Protocols = tokencache.Wrap(s.Protocols)
				}
			}))
		})
	}
}

func benchmarkNext(b *testing.B, e *env) {
	tokPending := e.admitted("02:00:00:00:01:01", "SN-P")
	tokNone := e.admitted("02:00:00:00:01:02", "SN-N")
	rel := e.release("2.0.0", cradle.ReleaseMender, "app-2")
	e.rollout("ro_bench", rel, cradle.RolloutRunning, "SN-P", cradle.DeviceStarted, 1)
	const path = "/api/devices/v2/deployments/device/deployments/next"
	body := []byte(`{"device_provides":{"artifact_name":"r0","device_type":"gw-m","rootfs-image.version":"r0"},"update_control_map":true}` + "\n")
	for _, tc := range []struct {
		name  string
		token string
	}{{"pending", tokPending}, {"none", tokNone}} {
		b.Run(tc.name, func(b *testing.B) {
			client := e.srv.Client()
			client.Transport.(*http.Transport).MaxIdleConnsPerHost = benchClients
			code, answer, _ := e.do("POST", path, tc.token, body)
			if code != http.StatusOK && code != http.StatusNoContent {
				b.Fatalf("next: %d %s", code, answer)
			}
			bare := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if code == http.StatusNoContent {
					w.WriteHeader(code)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Cache-Control", "no-store")
				w.Write(answer)
			}))
			defer bare.Close()
			bareClient := bare.Client()
			bareClient.Transport.(*http.Transport).MaxIdleConnsPerHost = benchClients
			// The two are measured in alternating rounds, so that the
			// load of a shared machine weighs on both alike.
			const rounds = 10
			var oursTime, baseTime time.Duration
			b.ResetTimer()
			for i := range rounds {
				n := b.N/rounds + boolInt(i < b.N%rounds)
				oursTime += timeRequests(b, client, e.srv.URL+path, tc.token, body, code, n)
				b.StopTimer()
				baseTime += timeRequests(b, bareClient, bare.URL+path, "", body, code, n)
				b.StartTimer()
			}
			b.StopTimer()
			ours, base := float64(b.N)/oursTime.Seconds(), float64(b.N)/baseTime.Seconds()
			b.ReportMetric(ours, "req/s")
			b.ReportMetric(base, "bare-req/s")
			b.ReportMetric(ours/base, "ratio")
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// timeRequests sends n requests with benchClients goroutines and returns
// how long they took; every answer must have status want.
func timeRequests(b *testing.B, c *http.Client, url, token string, body []byte, want, n int) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for range benchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := c.Do(req)
				if err != nil {
					failed.Store(err.Error())
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					failed.Store(resp.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		b.Fatalf("%s: %v", url, f)
	}
	return time.Since(start)
}
