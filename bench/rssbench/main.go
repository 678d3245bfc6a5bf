// Command rssbench measures the resident memory of a real `cradle serve`
// process with 100,000 devices registered.
//
//	go run ./bench/rssbench -n 100000
//
// It builds cmd/cradle, starts `cradle serve` on 127.0.0.1:0 with a fresh
// data directory, imports the devices through the API, then reads every
// device once and pages through the whole list (so caches and pools are as
// warm as they get), and reports VmRSS and the peak VmHWM from
// /proc/PID/status, after start and after the load. Linux only.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"cradle"
	"cradle/internal/httpapi"
)

func main() {
	n := flag.Int("n", 100_000, "devices to register")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "rssbench:", err)
		os.Exit(1)
	}
}

var (
	tokenRE = regexp.MustCompile(`cradle_[0-9a-f]{16}_[A-Za-z0-9_-]{43}`)
	addrRE  = regexp.MustCompile(`CRADLE_SERVER=(http://127\.0\.0\.1:[0-9]+)`)
)

func run(n int) error {
	dir, err := os.MkdirTemp("", "rssbench-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "cradle")
	build := exec.Command("go", "build", "-o", bin, "./cmd/cradle")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"), "--log-level", "warn")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	tokenC, addrC := make(chan string, 1), make(chan string, 1)
	// The first start prints the admin token and the server's address
	// (as CRADLE_SERVER=…) on stdout.
	go func() {
		s := bufio.NewScanner(stdout)
		var sentToken, sentAddr bool
		for s.Scan() {
			if m := tokenRE.FindString(s.Text()); m != "" && !sentToken {
				tokenC <- m
				sentToken = true
			}
			if m := addrRE.FindStringSubmatch(s.Text()); m != nil && !sentAddr {
				addrC <- m[1]
				sentAddr = true
			}
		}
	}()
	var token, addr string
	for token == "" || addr == "" {
		select {
		case token = <-tokenC:
		case addr = <-addrC:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("cradle serve printed no token or address within 30s")
		}
	}
	idle := rss(cmd.Process.Pid)
	client := httpapi.NewClient(addr, token, nil)

	pr, pw := io.Pipe()
	go func() {
		fmt.Fprintln(pw, "serial,model,hardware_revision,macs,labels")
		for i := range n {
			fmt.Fprintf(pw, "SN-%08d,gw-100,B2,02:00:%02x:%02x:%02x:%02x,site=berlin;batch=%d\n", i, byte(i>>24), byte(i>>16), byte(i>>8), byte(i), i/10000)
		}
		pw.Close()
	}()
	t0 := time.Now()
	rep, err := client.ImportDevices(ctx, cradle.ImportCSV, pr)
	if err != nil || !rep.Committed {
		return fmt.Errorf("import: %v %+v", err, rep)
	}
	importDur := time.Since(t0)
	afterImport := rss(cmd.Process.Pid)

	// Read every device, 8 at a time, and page through the list.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if _, err := client.FindDeviceBySerial(ctx, fmt.Sprintf("SN-%08d", i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	cursor, seen := "", 0
	for {
		page, next, err := client.FindDevices(ctx, cradle.DeviceFilter{Limit: cradle.MaxPageSize, Cursor: cursor})
		if err != nil {
			return err
		}
		seen += len(page)
		if next == "" {
			break
		}
		cursor = next
	}
	if seen != n {
		return fmt.Errorf("listed %d devices, want %d", seen, n)
	}
	loaded := rss(cmd.Process.Pid)
	fmt.Printf("cradle serve with %d devices (import took %v)\n", n, importDur.Round(time.Millisecond))
	// VmRSS counts the database file's pages that the SQLite readers have
	// mapped (RssFile) as well as the process's own memory (RssAnon).
	fmt.Printf("%-44s %10s %10s %10s\n", "moment", "RSS MB", "anon MB", "file MB")
	for _, m := range []struct {
		what string
		s    status
	}{
		{"idle after start (empty registry)", idle},
		{"after importing through the API", afterImport},
		{"after reading every device and listing all", loaded},
	} {
		fmt.Printf("%-44s %10.1f %10.1f %10.1f\n", m.what, m.s.rss, m.s.anon, m.s.file)
	}
	fmt.Printf("%-44s %10.1f   (goal <= 256)\n", "peak (VmHWM)", loaded.hwm)
	return nil
}

// status is the memory of a process, in MB, from /proc/PID/status.
type status struct{ rss, hwm, anon, file float64 }

// rss reads the memory figures of pid.
func rss(pid int) status {
	var st status
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st
	}
	fields := map[string]*float64{"VmRSS:": &st.rss, "VmHWM:": &st.hwm, "RssAnon:": &st.anon, "RssFile:": &st.file}
	for _, line := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(line, "\t")
		if p, known := fields[name]; ok && known {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(rest), "%f", &kb)
			*p = kb / 1024
		}
	}
	return st
}
