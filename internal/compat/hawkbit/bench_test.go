package hawkbit_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"cradle/internal/compat/tokencache"
)

// BenchmarkDDIBasePoll measures the base poll (GET
// /{tenant}/controller/v1/{id} with a target token) on a real SQLite
// store, alternating a device with a deployment in flight and one without,
// against a bare Go handler answering the same JSON on the same kind of
// server (TLS, keep-alive, one client), interleaved in the same loop. It
// reports both rates and their ratio, with the handler's default poll
// cache ("cached") and reading the store on every poll ("uncached").
func BenchmarkDDIBasePoll(b *testing.B) {
	e := newEnv(b)
	pending := e.device("SN-PENDING", map[string]string{"hb": "bench"})
	idle := e.device("SN-IDLE", nil)
	e.base(b, "SN-PENDING", pending)
	e.base(b, "SN-IDLE", idle)
	e.rollout("bench")
	resp := e.do("GET", "/default/controller/v1/SN-PENDING", pending, "")
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(answer) < 100 {
		b.Fatalf("base poll: %s %s", resp.Status, answer)
	}
	bare := newBare(b, answer)
	poll := func(c *http.Client, url, token string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "TargetToken "+token)
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("poll: %s", resp.Status)
		}
	}
	for _, mode := range []struct {
		name  string
		cache time.Duration
	}{{"cached", 0}, {"uncached", -1}} {
		b.Run(mode.name, func(b *testing.B) {
			// As the server runs it: the poll cache and the token cache
			// (internal/compat/tokencache); uncached reads the store for
			// both on every poll.
			e.handler.PollCache = mode.cache
			e.handler.Protocol = e.protocol
			if mode.cache >= 0 {
				e.handler.Protocol = tokencache.Wrap(e.protocol)
			}
			client, bareClient := e.srv.Client(), bare.Client()
			var ours, theirs time.Duration
			for i := 0; b.Loop(); i++ {
				serial, token := "SN-PENDING", pending
				if i%2 == 1 {
					serial, token = "SN-IDLE", idle
				}
				t0 := time.Now()
				poll(client, e.srv.URL+"/default/controller/v1/"+serial, token)
				t1 := time.Now()
				poll(bareClient, bare.URL+"/default/controller/v1/"+serial, token)
				ours += t1.Sub(t0)
				theirs += time.Since(t1)
			}
			n := float64(b.N)
			b.ReportMetric(n/ours.Seconds(), "cradle-polls/s")
			b.ReportMetric(n/theirs.Seconds(), "bare-polls/s")
			b.ReportMetric(theirs.Seconds()/ours.Seconds(), "ratio")
		})
	}
}
