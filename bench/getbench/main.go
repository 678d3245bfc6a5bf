// Command getbench measures GET /api/v1/devices/{serial} on a registry of
// one million devices against a baseline in the same run: a bare Go handler
// that returns a constant device document of the same size.
//
//	go run ./bench/getbench -n 1000000 -c 32 -d 10s
//
// The servers run in this process; the load comes from a child process (this
// program again, with -load), so the client's allocations and GC do not land
// on the server. Rounds alternate baseline and Cradle; the table shows the
// median requests/s and p99 latency of each and the ratio.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"sync"
	"time"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
)

type result struct {
	Requests int           `json:"requests"`
	Errors   int           `json:"errors"`
	Seconds  float64       `json:"seconds"`
	P50      time.Duration `json:"p50"`
	P99      time.Duration `json:"p99"`
}

func main() {
	n := flag.Int("n", 1_000_000, "devices in the registry")
	c := flag.Int("c", 32, "concurrent connections")
	d := flag.Duration("d", 10*time.Second, "duration of each round")
	rounds := flag.Int("rounds", 3, "rounds of each, alternating")
	load := flag.String("load", "", "internal: run as the load generator against this URL prefix")
	token := flag.String("token", "", "internal: bearer token for -load")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the server during Cradle's rounds to this file")
	flag.Parse()
	if *load != "" {
		r := generate(*load, *token, *n, *c, *d)
		json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	if err := run(*n, *c, *d, *rounds, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "getbench:", err)
		os.Exit(1)
	}
}

func run(n, c int, d time.Duration, rounds int, cpuProfile string) error {
	dir, err := os.MkdirTemp("", "getbench-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	_, key, _ := ed25519.GenerateKey(nil)
	db, err := sqlstore.Open(context.Background(), filepath.Join(dir, "cradle.db"), sqlstore.Options{AuditKey: key})
	if err != nil {
		return err
	}
	defer db.Close()
	tn, err := sqlstore.NewTenantService(db).CreateTenant(context.Background(), "bench")
	if err != nil {
		return err
	}
	ctx := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(tn.ID, "bench"))
	fmt.Fprintf(os.Stderr, "getbench: importing %d devices…\n", n)
	pr, pw := io.Pipe()
	go func() {
		fmt.Fprintln(pw, "serial,model,hardware_revision,macs,labels")
		for i := range n {
			fmt.Fprintf(pw, "SN-%08d,gw-100,B2,02:00:%02x:%02x:%02x:%02x,site=berlin;batch=%d\n", i, byte(i>>24), byte(i>>16), byte(i>>8), byte(i), i/10000)
		}
		pw.Close()
	}()
	devices := sqlstore.NewDeviceService(db)
	if rep, err := devices.ImportDevices(ctx, cradle.ImportCSV, pr); err != nil || !rep.Committed {
		return fmt.Errorf("import: %v %+v", err, rep)
	}
	_, secret, err := sqlstore.NewTokenService(db).CreateToken(ctx, cradle.TokenCreate{Name: "bench", Role: cradle.RoleOperator})
	if err != nil {
		return err
	}
	sample, err := devices.FindDeviceBySerial(ctx, "SN-00000042")
	if err != nil {
		return err
	}
	doc, _ := json.Marshal(sample)
	doc = append(doc, '\n')

	api := &httpapi.Server{Devices: devices, Tokens: sqlstore.NewTokenService(db), Audit: sqlstore.NewAuditService(db), Ready: db.Ping}
	ours, err := serve(api.Handler())
	if err != nil {
		return err
	}
	bare, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	}))
	if err != nil {
		return err
	}
	var oursR, bareR []result
	for i := range rounds {
		b, err := child(bare+"/api/v1/devices/", "", n, c, d)
		if err != nil {
			return err
		}
		if cpuProfile != "" {
			f, err := os.Create(cpuProfile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
		}
		o, err := child(ours+"/api/v1/devices/", secret, n, c, d)
		if cpuProfile != "" {
			pprof.StopCPUProfile()
			cpuProfile = "" // the first round only
		}
		if err != nil {
			return err
		}
		if o.Errors > 0 || b.Errors > 0 {
			return fmt.Errorf("round %d: %d errors from cradle, %d from the baseline", i+1, o.Errors, b.Errors)
		}
		fmt.Fprintf(os.Stderr, "round %d: baseline %.0f req/s p99 %v; cradle %.0f req/s p99 %v\n", i+1,
			float64(b.Requests)/b.Seconds, b.P99, float64(o.Requests)/o.Seconds, o.P99)
		oursR, bareR = append(oursR, o), append(bareR, b)
	}
	orps, brps := medianRate(oursR), medianRate(bareR)
	op99, bp99 := medianP99(oursR), medianP99(bareR)
	fmt.Printf("GET /api/v1/devices/{serial}, %d devices, %d connections, %v rounds (median of %d)\n", n, c, d, rounds)
	fmt.Printf("%-40s %12s %12s\n", "what", "req/s", "p99")
	fmt.Printf("%-40s %12.0f %12v\n", "cradle (token auth, SQLite lookup)", orps, op99)
	fmt.Printf("%-40s %12.0f %12v\n", "baseline: bare handler, constant JSON", brps, bp99)
	fmt.Printf("%-40s %12.2f   (goal >= 0.50)\n", "ratio of the medians", orps/brps)
	// The machine's speed drifts between rounds; the ratio within each
	// pair of adjacent rounds is steadier.
	ratios := make([]float64, len(oursR))
	for i := range oursR {
		ratios[i] = (float64(oursR[i].Requests) / oursR[i].Seconds) / (float64(bareR[i].Requests) / bareR[i].Seconds)
	}
	sort.Float64s(ratios)
	fmt.Printf("%-40s %12.2f   (min %.2f, max %.2f)\n", "median of the per-round ratios", ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1])
	return nil
}

func serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

func child(prefix, token string, n, c int, d time.Duration) (result, error) {
	cmd := exec.Command(os.Args[0], "-load", prefix, "-token", token, "-n", fmt.Sprint(n), "-c", fmt.Sprint(c), "-d", d.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return result{}, fmt.Errorf("load generator: %w", err)
	}
	var r result
	return r, json.Unmarshal(out, &r)
}

// generate runs c workers with keep-alive connections for d, each asking for
// random serials, and returns the count and latency percentiles.
func generate(prefix, token string, n, c int, d time.Duration) result {
	tr := &http.Transport{MaxIdleConns: c, MaxIdleConnsPerHost: c, MaxConnsPerHost: c}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 1<<16)
			bad := 0
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest("GET", fmt.Sprintf("%sSN-%08d", prefix, rand.IntN(n)), nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					bad++
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !bytes.HasPrefix(body, []byte(`{"serial":"SN-`)) {
					bad++
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := result{Requests: len(lat), Errors: errs, Seconds: el}
	if len(lat) > 0 {
		r.P50, r.P99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}

func medianRate(rs []result) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = float64(r.Requests) / r.Seconds
	}
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

func medianP99(rs []result) time.Duration {
	xs := make([]time.Duration, len(rs))
	for i, r := range rs {
		xs[i] = r.P99
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i] < xs[j] })
	return xs[len(xs)/2].Round(10 * time.Microsecond)
}
