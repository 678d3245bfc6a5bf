package tufclient_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cradle/internal/agent/tufclient"
)

// fileTransport answers GETs from a repository directory, with one file
// replaced: the network of a fuzz run, without sockets.
type fileTransport struct {
	dir      string
	name     string
	data     []byte
	notFound map[string]bool
}

func (f fileTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	name := req.URL.Path[strings.LastIndexByte(req.URL.Path, '/')+1:]
	body, err := os.ReadFile(filepath.Join(f.dir, name))
	if name == f.name {
		body, err = f.data, nil
	}
	resp := &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Header: http.Header{}, Request: req}
	if err != nil {
		resp.StatusCode, resp.Status, body = http.StatusNotFound, "404 Not Found", nil
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}

// FuzzRefresh serves fuzzed bytes as one metadata file of a real
// repository: Refresh must never panic, and every failure must be a typed
// refusal (the network here cannot fail).
func FuzzRefresh(f *testing.F) {
	r := newRepo(f)
	r.publish("gw/1.bin", 1)
	names := []string{"2.root.json", "timestamp.json", "2.snapshot.json", "2.targets.json"}
	for i, n := range names[1:] {
		f.Add(uint8(i+1), r.read(n))
	}
	f.Add(uint8(0), r.root1)
	f.Add(uint8(1), []byte(`{"signed":{"_type":"timestamp","version":9,"expires":"2999-01-01T00:00:00Z","spec_version":"1.0.31","meta":{}},"signatures":[]}`))
	f.Add(uint8(2), []byte(`{"signed":{"_type":"snapshot"}}`))
	f.Add(uint8(3), []byte(`null`))
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		tr := fileTransport{dir: r.dir, name: names[int(which)%len(names)], data: data}
		c, err := tufclient.Open(tufclient.Options{Dir: t.TempDir(), MetadataURL: "https://device.example/device/v1/tuf/",
			HTTPClient: &http.Client{Transport: tr}, TrustedRoot: r.root1, Now: r.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Refresh(ctx)
		var e *tufclient.Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("untyped failure: %v", err)
		}
		if err == nil {
			if _, err := c.Lookup("gw/1.bin"); err != nil {
				t.Fatalf("refresh succeeded but the target is gone: %v", err)
			}
		}
	})
}
