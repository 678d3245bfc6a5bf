package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/sqlstore"
)

// Artifact downloads. Devices fetch update artifacts from the artifact
// store at signed, expiring URLs (internal/artifact): on the device TLS
// listener under /artifacts/, without a client certificate (the signature
// is the credential), and, when device.artifact_listen is set, on a plain
// HTTP listener that serves nothing else (integrity comes from the TUF and
// MCUboot signatures, not the transport). The URL-signing key is
// <data_dir>/artifact-url.key, 32 random bytes made on the first start;
// <data_dir>/artifact-url.key.previous, when present, still verifies (to
// rotate: move the key to .previous, restart, and delete .previous once
// device.artifact_url_ttl has passed). Every response body served is
// accounted per device, in batches, without ever holding up a download.
// A URL outlives the state it was signed in, so each download also asks
// whether its device may still have it (downloadGate: deployed, or
// suspended and the artifact of a remediation release; answers kept a
// second at most): 403 otherwise.

const (
	artifactURLKeyFile = "artifact-url.key"
	artifactsDir       = "artifacts"
)

// openArtifactStore returns the server's artifact store,
// <data_dir>/artifacts, with the upload size limit. The server opens it
// once: the publisher, the garbage collector and the downloads share it
// (its GC lock is per Dir).
func openArtifactStore(cfg Config) *artifact.Dir {
	dir := artifact.NewDir(filepath.Join(cfg.DataDir, artifactsDir))
	dir.MaxSize = cfg.OTA.MaxImageSize
	return dir
}

// loadOrCreateURLSigner reads the URL-signing key (and the previous one,
// if any) from dataDir, creating the key (0600) when there is none.
// created reports whether it did.
func loadOrCreateURLSigner(dataDir string) (s *artifact.URLSigner, created bool, err error) {
	path := filepath.Join(dataDir, artifactURLKeyFile)
	cur, err := readURLKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		cur = make([]byte, artifact.MinKeySize)
		if _, err := rand.Read(cur); err != nil {
			return nil, false, fmt.Errorf("artifact url key: %w", err)
		}
		if err := writeNewFile(path, cur); err != nil {
			return nil, false, fmt.Errorf("artifact url key: %w", err)
		}
		created = true
	} else if err != nil {
		return nil, false, err
	}
	prev, err := readURLKey(path + ".previous")
	if errors.Is(err, fs.ErrNotExist) {
		prev = nil
	} else if err != nil {
		return nil, false, err
	}
	s, err = artifact.NewURLSigner(cur, prev)
	if err != nil {
		return nil, false, fmt.Errorf("artifact url key: %w", err)
	}
	return s, created, nil
}

// readURLKey reads a URL-signing key file: only its owner may read it, and
// it holds at least artifact.MinKeySize bytes. A missing file is an error
// that wraps fs.ErrNotExist.
func readURLKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("artifact url key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("artifact url key: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("artifact url key: %s has permissions %04o, but only its owner may read it; run: chmod 600 %s", path, perm, path)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("artifact url key: %w", err)
	}
	if len(key) < artifact.MinKeySize {
		return nil, fmt.Errorf("artifact url key: %s holds %d bytes, want at least %d random bytes (head -c 32 /dev/urandom > %s)", path, len(key), artifact.MinKeySize, path)
	}
	return key, nil
}

// writeNewFile creates path (0600, failing if it exists) with data, synced.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
	}
	return werr
}

// downloadDevice is the dev parameter of a device's signed URL:
// "<tenant id>/<serial>".
func downloadDevice(tenantID int64, serial string) string {
	return strconv.FormatInt(tenantID, 10) + "/" + serial
}

// parseDownloadDevice splits a dev parameter made by downloadDevice.
func parseDownloadDevice(dev string) (tenantID int64, serial string, ok bool) {
	t, s, found := strings.Cut(dev, "/")
	id, err := strconv.ParseInt(t, 10, 64)
	if !found || err != nil || id <= 0 || strconv.FormatInt(id, 10) != t || cradle.ValidateSerial(s) != nil {
		return 0, "", false
	}
	return id, s, true
}

// Download accounting limits: records wait in a queue of accountQueue;
// the flusher writes at most accountBatch per transaction, every
// accountInterval.
const (
	accountQueue    = 8192
	accountBatch    = 1024
	accountInterval = time.Second
)

// downloadAccounting takes the artifact handler's reports (Account, on the
// request's goroutine; it never blocks: when the queue is full the record
// is dropped and counted) and writes them to the update service in
// batches, every second and at close.
type downloadAccounting struct {
	svc     cradle.UpdateService
	queue   chan cradle.DownloadRecord
	dropped prometheus.Counter
	logger  *slog.Logger
	now     func() time.Time

	mu          sync.Mutex
	droppedSeen int64 // dropped since the last flush, for the log
	stop        chan struct{}
	done        chan struct{}
}

func newDownloadAccounting(svc cradle.UpdateService, metrics prometheus.Registerer, logger *slog.Logger) (*downloadAccounting, error) {
	a := &downloadAccounting{svc: svc, queue: make(chan cradle.DownloadRecord, accountQueue), logger: logger, now: time.Now,
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "cradle_artifact_download_records_dropped_total",
			Help: "Artifact download accounting records dropped because the queue to the store was full."}),
		stop: make(chan struct{}), done: make(chan struct{})}
	if err := metrics.Register(a.dropped); err != nil {
		return nil, fmt.Errorf("serve: download metrics: %w", err)
	}
	return a, nil
}

// Account queues a download for the store; artifact.Handler calls it.
func (a *downloadAccounting) Account(d artifact.Download) {
	tenant, serial, ok := parseDownloadDevice(d.Device)
	if !ok {
		// Signed by this server, so only an older URL format; nothing to
		// charge it to.
		a.logger.Warn("artifact download of an unknown device", "dev", d.Device, "digest", d.Digest)
		return
	}
	rec := cradle.DownloadRecord{TenantID: tenant, Serial: serial, SHA256: d.Digest.String(), Bytes: d.Sent, Complete: d.Complete, At: a.now()}
	select {
	case a.queue <- rec:
	default:
		a.dropped.Inc()
		a.mu.Lock()
		a.droppedSeen++
		a.mu.Unlock()
	}
}

// start runs the flusher until close.
func (a *downloadAccounting) start() {
	go func() {
		defer close(a.done)
		t := time.NewTicker(accountInterval)
		defer t.Stop()
		for {
			select {
			case <-a.stop:
				a.flush()
				return
			case <-t.C:
				a.flush()
			}
		}
	}()
}

// close flushes what is queued and stops the flusher; call it after the
// listeners stopped, so that the last downloads are in.
func (a *downloadAccounting) close() {
	close(a.stop)
	<-a.done
}

// flush writes everything queued now, accountBatch records per
// transaction. A batch the store refuses is logged and lost: accounting
// must not hold up downloads, nor grow without bound.
func (a *downloadAccounting) flush() {
	a.mu.Lock()
	dropped := a.droppedSeen
	a.droppedSeen = 0
	a.mu.Unlock()
	if dropped > 0 {
		a.logger.Warn("artifact download records dropped: the accounting queue was full", "dropped", dropped)
	}
	ctx := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(0, "artifact-downloads"))
	for {
		batch := make([]cradle.DownloadRecord, 0, min(len(a.queue), accountBatch))
	fill:
		for len(batch) < accountBatch {
			select {
			case r := <-a.queue:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		if err := a.svc.RecordDownloads(ctx, batch); err != nil {
			a.logger.Error("recording artifact downloads", "records", len(batch), "err", err)
		}
		if len(batch) < accountBatch {
			return
		}
	}
}

// artifactListener is the plain HTTP listener of device.artifact_listen:
// /artifacts/ and nothing else.
type artifactListener struct {
	ln   net.Listener
	srv  *http.Server
	done chan error
}

func listenArtifacts(ctx context.Context, addr string, h http.Handler, logger *slog.Logger) (*artifactListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve: device.artifact_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/artifacts/", h)
	return &artifactListener{ln: ln, done: make(chan error, 1), srv: &http.Server{
		Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}}, nil
}

// Addr is the listener's base URL.
func (l *artifactListener) Addr() string { return "http://" + l.ln.Addr().String() }

func (l *artifactListener) start() {
	go func() {
		err := l.srv.Serve(l.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		l.done <- err
	}()
}

func (l *artifactListener) shutdown(ctx context.Context) error {
	err := l.srv.Shutdown(ctx)
	if err != nil {
		l.srv.Close()
	}
	if serr := <-l.done; serr != nil && err == nil {
		err = serr
	}
	return err
}

// downloadAccessTTL bounds how long the gate trusts an answer about a
// device: a device suspended, revoked or decommissioned loses its signed
// URLs within it.
const downloadAccessTTL = time.Second

// maxDownloadAccessCache bounds the gate's cache; past it, the cache is
// emptied (answers are a second old at most anyway).
const maxDownloadAccessCache = 65536

// downloadGate serves /artifacts/ (artifact.Handler) only to a device
// that may still download what its signed URL names: the URL outlives
// the state it was signed in (a suspension, a revocation, eol), so each
// download asks the store (DeviceMayDownload: deployed, or suspended and
// the artifact of a remediation release), with answers kept
// downloadAccessTTL. Otherwise 403 with the reason.
type downloadGate struct {
	inner  *artifact.Handler
	may    func(ctx context.Context, serial, sha256 string) (bool, string, error)
	now    func() time.Time
	logger *slog.Logger

	mu    sync.Mutex
	cache map[string]downloadAccess
}

type downloadAccess struct {
	ok     bool
	reason string
	at     time.Time
}

func newDownloadGate(inner *artifact.Handler, devices *sqlstore.DeviceService, logger *slog.Logger) *downloadGate {
	return &downloadGate{inner: inner, may: devices.DeviceMayDownload, now: time.Now, logger: logger, cache: map[string]downloadAccess{}}
}

func (g *downloadGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		g.inner.ServeHTTP(w, r) // 405, as the handler answers it
		return
	}
	now := g.now()
	t, err := g.inner.Signer.Verify(r.URL.Path, r.URL.RawQuery, now)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	tenant, serial, ok := parseDownloadDevice(t.Device)
	if !ok {
		http.Error(w, "this download URL names no device: ask for the update again", http.StatusForbidden)
		return
	}
	key := t.Device + "\x00" + t.Digest.String()
	g.mu.Lock()
	a, hit := g.cache[key]
	g.mu.Unlock()
	if !hit || now.Sub(a.at) >= downloadAccessTTL || now.Before(a.at) {
		ctx := cradle.NewContextWithActor(r.Context(), cradle.SystemActor(tenant, "artifact-downloads"))
		a.ok, a.reason, err = g.may(ctx, serial, t.Digest.String())
		if err != nil {
			g.logger.Error("artifact download: device access", "device", t.Device, "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		a.at = now
		g.mu.Lock()
		if len(g.cache) >= maxDownloadAccessCache {
			clear(g.cache)
		}
		g.cache[key] = a
		g.mu.Unlock()
	}
	if !a.ok {
		http.Error(w, a.reason, http.StatusForbidden)
		return
	}
	g.inner.ServeBlob(w, r, t.Digest, t.Device) // the URL is checked already
}
