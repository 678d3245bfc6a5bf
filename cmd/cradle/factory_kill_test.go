package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/factory"
	"cradle/internal/httpapi"
)

// TestStationSurvivesSIGKILL runs the real binary as the station, feeds it
// units one by one and kills it with SIGKILL in the middle of the batch.
// The server then goes away; the station, restarted, finishes the batch
// offline from its reserved serials and journals the unit it was killed
// on as interrupted. When the server is back, sync uploads the journal:
// every record arrives once, none is lost, uploading again duplicates
// nothing, and a tampered record is refused.
func TestStationSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	l := newFactoryLine(t, 32, 40) // reserve the whole batch (30 units and spares): the station finishes it offline
	bin := buildCradle(t)
	specs := makeUnits(t, t.TempDir(), 30)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	cmd := exec.CommandContext(ctx, bin, "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648",
		"--firmware", l.release, "--operator", "ada", "--units", "-", "--json")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out, _ := lines(t, "station", stdout)
	unitLine := regexp.MustCompile(`"event":"unit".*"status":"provisioned"`)
	for i := 0; i < 10; i++ {
		fmt.Fprintln(stdin, specs[i])
		waitLine(t, ctx, out, unitLine)
	}
	// Feed five more and kill the station while it works on them.
	for i := 10; i < 15; i++ {
		fmt.Fprintln(stdin, specs[i])
	}
	waitLine(t, ctx, out, unitLine)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	// The server goes away; the station carries on offline.
	l.m.Close()
	var rest []string
	for _, s := range specs {
		d, _ := hw.OpenSimDevice(s)
		f, _ := d.Fuses.Read(ctx)
		if lc, _ := hw.ParseLifecycle(f[hw.FuseLifecycle]); lc == hw.LifecycleFactory {
			rest = append(rest, s)
		}
	}
	if len(rest) < 15 || len(rest) > 20 {
		t.Fatalf("%d units left unprovisioned after the kill", len(rest))
	}
	unitsFile := filepath.Join(t.TempDir(), "units")
	os.WriteFile(unitsFile, []byte(strings.Join(rest, "\n")), 0o644)
	r := cradleCLI(t, "", "factory", "provision", "--dir", l.stationDir, "--batch", "B-2648", "--firmware", l.release,
		"--operator", "ada", "--units", unitsFile, "--json", "--offline")
	evs := parseEvents(t, r.stdout)
	sum := evs[len(evs)-1]
	if sum.OK != len(rest) {
		t.Fatalf("offline run: %+v\n%s", sum, r.stderr)
	}
	// The restart journaled the interrupted units (if the kill caught
	// one mid-way) as failed.
	j, err := factory.OpenJournal(filepath.Join(l.stationDir, factory.JournalFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := j.Records()
	pending := len(j.Pending())
	j.Close()
	bySerial := map[string]int{}
	interrupted := 0
	cut := map[string]bool{}
	for _, rec := range recs {
		bySerial[rec.Record.Serial]++
		if rec.Record.FailedStep == "interrupted" {
			interrupted++
			cut[rec.Record.Serial] = true
		}
	}
	for s, n := range bySerial {
		if n != 1 {
			t.Errorf("serial %s has %d records in the journal", s, n)
		}
	}
	t.Logf("journal: %d records, %d interrupted, %d pending before sync", len(recs), interrupted, pending)

	// The server comes back (on a new port); sync.
	cfg := l.m.Config
	m2 := &Main{Config: cfg, Logger: l.m.Logger}
	if err := m2.Run(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Close() })
	res := ok(t, "factory", "sync", "--dir", l.stationDir, "--server", m2.Addr(), "--json")
	var rep factory.SyncReport
	json.Unmarshal([]byte(res), &rep)
	if rep.Pending != 0 || len(rep.Refused) != 0 || rep.Uploaded+rep.Known != pending {
		t.Fatalf("sync: %+v, want %d pending records uploaded", rep, pending)
	}
	// Again: nothing left to do.
	ok(t, "factory", "sync", "--dir", l.stationDir, "--server", m2.Addr())

	// The server holds exactly the journal's records.
	cl := httpapi.NewClient(m2.Addr(), l.admin, nil)
	var exported strings.Builder
	if err := cl.ExportBatch(ctx, "B-2648", "json", &exported); err != nil {
		t.Fatal(err)
	}
	var onServer []cradle.TraceRecord
	if err := json.Unmarshal([]byte(exported.String()), &onServer); err != nil {
		t.Fatal(err)
	}
	if len(onServer) != len(recs) {
		t.Fatalf("server holds %d records, the journal %d", len(onServer), len(recs))
	}
	ids := map[string]bool{}
	provisioned := 0
	for _, rec := range onServer {
		ids[rec.ID] = true
		if rec.Status == cradle.UnitProvisioned {
			provisioned++
		}
	}
	if len(ids) != len(recs) {
		t.Errorf("duplicate record ids on the server")
	}
	b, err := cl.Batch(ctx, "B-2648")
	if err != nil || b.Provisioned != provisioned || provisioned != len(recs)-interrupted {
		t.Errorf("batch %+v, %d provisioned records", b, provisioned)
	}
	// Every unit whose fuses say provisioned has its provisioned record.
	for _, s := range specs {
		d, _ := hw.OpenSimDevice(s)
		files, locked, _ := d.FactoryData.Read(ctx)
		var info factory.DeviceInfo
		json.Unmarshal(files[factory.FileDeviceInfo], &info)
		if locked && info.Serial != "" && !cut[info.Serial] {
			if dev, err := cl.FindDeviceBySerial(ctx, info.Serial); err != nil || dev.State != cradle.StateProvisioned {
				t.Errorf("unit %s (%s) is locked but not provisioned on the server: %v", s, info.Serial, err)
			}
		}
	}

	// Uploading every record again stores nothing new.
	j, _ = factory.OpenJournal(filepath.Join(l.stationDir, factory.JournalFile), nil)
	defer j.Close()
	station := httpapi.NewClient(m2.Addr(), strings.TrimSpace(readFile(t, filepath.Join(l.stationDir, factory.TokenFile))), nil)
	for _, rec := range j.Records() {
		created, err := station.UploadTrace(ctx, rec.Signed)
		if err != nil || created {
			t.Fatalf("re-upload of %s: created %v, %v", rec.Record.ID, created, err)
		}
	}
	// A tampered record is refused, and nothing is stored.
	tampered := j.Records()[0].Signed
	tampered.Payload = []byte(strings.Replace(string(tampered.Payload), `"operator":"ada"`, `"operator":"eve"`, 1))
	if _, err := station.UploadTrace(ctx, tampered); err == nil || !strings.Contains(cradle.ErrorMessage(err), "signature does not verify") {
		t.Errorf("tampered record: %v", err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
