package hawkbit_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// newBare serves answer as JSON to every request: the baseline of
// BenchmarkDDIBasePoll, on the same kind of server as the env's.
func newBare(tb testing.TB, answer []byte) *httptest.Server {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
		w.Write(answer)
	}))
	tb.Cleanup(srv.Close)
	return srv
}
