package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/sqlstore"
)

// buildCradle builds the program into a temporary directory.
func buildCradle(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "cradle")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lines delivers a stream's lines on a channel, and logs them. It never
// blocks the stream: lines nobody waits for are dropped once the buffer is
// full. done is closed when the stream has been read to its end.
func lines(t *testing.T, name string, r io.Reader) (ch <-chan string, done <-chan struct{}) {
	c, d := make(chan string, 1000), make(chan struct{})
	go func() {
		defer close(d)
		defer close(c)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			t.Logf("%s: %s", name, sc.Text())
			select {
			case c <- sc.Text():
			default:
			}
		}
	}()
	return c, d
}

// waitLine returns the first submatch of re in the next lines of ch.
func waitLine(t *testing.T, ctx context.Context, ch <-chan string, re *regexp.Regexp) string {
	t.Helper()
	for {
		select {
		case line, ok := <-ch:
			if !ok {
				t.Fatalf("the stream ended before a line matching %s", re)
			}
			if m := re.FindStringSubmatch(line); m != nil {
				return m[len(m)-1]
			}
		case <-ctx.Done():
			t.Fatalf("no line matching %s: %v", re, ctx.Err())
		}
	}
}

// TestSIGTERMDrainsImport runs the real binary, starts a device import whose
// body arrives slowly, and sends SIGTERM while the body is half sent. The
// import must still complete, the process exit 0, and the store be closed
// cleanly with every row in it.
func TestSIGTERMDrainsImport(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildCradle(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir)
	cmd.Env = append(os.Environ(), "CRADLE_CONFIG=", "CRADLE_STORE=", "CRADLE_LOG_FORMAT=text", "CRADLE_LOG_LEVEL=info")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	outLines, outDone := lines(t, "stdout", stdout)
	errLines, errDone := lines(t, "stderr", stderr)
	go func() {
		// Wait only once both pipes have been read to their end.
		<-outDone
		<-errDone
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	// The first start prints the admin token on stdout; the address is in the log.
	token := waitLine(t, ctx, outLines, regexp.MustCompile(`export CRADLE_TOKEN=(\S+)`))
	addr := waitLine(t, ctx, errLines, regexp.MustCompile(`msg=listening addr=(http://127\.0\.0\.1:\d+)`))

	const rows = 2000
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, addr+"/api/v1/device-imports?format=csv", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "text/csv")
	// With "Expect: 100-continue" the server says when the handler starts
	// reading the body: then the request is in flight for certain.
	req.Header.Set("Expect", "100-continue")
	reading := make(chan struct{})
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got100Continue: func() { close(reading) },
	}))
	hc := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
	type result struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := hc.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: body, err: err}
	}()

	select {
	case <-reading:
	case r := <-done:
		t.Fatalf("the import ended before its body was sent: %d %s %v", r.status, r.body, r.err)
	case <-ctx.Done():
		t.Fatal("the server never started reading the import")
	}
	writeRows := func(from, to int) {
		t.Helper()
		var b strings.Builder
		if from == 1 {
			b.WriteString("serial,model,labels\n")
		}
		for i := from; i <= to; i++ {
			fmt.Fprintf(&b, "DRAIN-%05d,gw-100,batch=drain\n", i)
		}
		if _, err := io.WriteString(pw, b.String()); err != nil {
			t.Fatalf("writing rows %d to %d: %v", from, to, err)
		}
	}
	writeRows(1, rows/2)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Finish the stream only once the server is draining.
	waitLine(t, ctx, errLines, regexp.MustCompile(`msg="shutting down"`))
	// New connections are refused now, or, if one slipped in before the
	// listener closed, told that the server is not ready.
	if resp, err := http.Get(addr + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("GET /readyz while draining: %s, want 503 or a refused connection", resp.Status)
		}
	}
	writeRows(rows/2+1, rows)
	pw.Close()

	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("the import did not finish")
	}
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("import: status %d, body %s, err %v; want 200", r.status, r.body, r.err)
	}
	var rep cradle.ImportReport
	if err := json.Unmarshal(r.body, &rep); err != nil || !rep.Committed || rep.Accepted != rows {
		t.Fatalf("import report %s (%v); want %d rows committed", r.body, err, rows)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("cradle serve exited with %v, want 0", err)
		}
		exited <- nil // for the cleanup
	case <-ctx.Done():
		t.Fatal("cradle serve did not exit after SIGTERM")
	}

	// Closed cleanly: the WAL was checkpointed into the database file.
	if fi, err := os.Stat(filepath.Join(dataDir, "cradle.db-wal")); err == nil && fi.Size() > 0 {
		t.Errorf("cradle.db-wal is %d bytes after shutdown, want it gone or empty", fi.Size())
	}
	key, err := loadAuditKey(filepath.Join(dataDir, auditKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	db, err := sqlstore.Open(ctx, filepath.Join(dataDir, "cradle.db"), sqlstore.Options{AuditKey: key, WitnessPath: filepath.Join(dataDir, "audit-witness.json")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tenant, err := sqlstore.NewTenantService(db).FindTenantByName(ctx, cradle.DefaultTenantName)
	if err != nil {
		t.Fatal(err)
	}
	actx := cradle.NewContextWithActor(ctx, cradle.SystemActor(tenant.ID, "test"))
	sel, _ := cradle.ParseLabelSelector("batch=drain")
	var n int
	f := cradle.DeviceFilter{Selector: sel, Limit: cradle.MaxPageSize}
	for {
		page, next, err := sqlstore.NewDeviceService(db).FindDevices(actx, f)
		if err != nil {
			t.Fatal(err)
		}
		n += len(page)
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if n != rows {
		t.Errorf("%d imported devices in the store after restart, want %d", n, rows)
	}
	chains, err := sqlstore.NewAuditService(db).VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chains {
		if !c.OK {
			t.Errorf("audit chain of tenant %d is broken after shutdown: %+v", c.TenantID, c.Broken)
		}
	}
}
