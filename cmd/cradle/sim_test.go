package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki"
	"cradle/internal/sim"
	"cradle/internal/sqlstore"
)

// simServer is a real server on :0 with a test PKI (file keys), and what
// the simulator needs to set up its line.
type simServer struct {
	m       *Main
	dataDir string
	admin   string
	line    sim.LineConfig
}

func newSimServer(t *testing.T, units int) *simServer {
	t.Helper()
	isolateCLI(t)
	setPassphrase(t, pkiTestPassphrase)
	s := &simServer{dataDir: t.TempDir()}
	ok(t, "pki", "init", "--data-dir", s.dataDir, "--profile", "test", "--org", "Acme", "--hostname", "127.0.0.1")
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.Device.Listen = s.dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.Device.MQTTListen = "127.0.0.1:0"
	var boot strings.Builder
	s.m = &Main{Config: cfg, Stdout: &boot, Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError}))}
	if err := s.m.Run(t.Context()); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { s.m.Close() })
	s.admin = tokenRE.FindStringSubmatch(boot.String())[1]
	h, keys, closeKeys, err := openPKI(t.Context(), s.dataDir, noPrompt(), pki.NameManufacturingCA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeKeys() })
	s.line = sim.LineConfig{API: s.m.Addr(), Token: s.admin, Root: h.Root, ManufacturingCA: h.ManufacturingCA,
		ManufacturingKey: keys[pki.NameManufacturingCA], CommandSigner: h.CommandSigner, Units: units, Org: "Acme"}
	return s
}

func (s *simServer) options() sim.Options {
	return sim.Options{ServerURL: s.m.device.Addr(), MQTTAddr: s.m.device.mqtt.Addr().String()}
}

// TestSimProvisionEnroll: a simulated fleet provisioned by a real station
// line and enrolled over EST against a real server.
func TestSimProvisionEnroll(t *testing.T) {
	n := 20
	if v := os.Getenv("SIM_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	s := newSimServer(t, n)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	line, err := sim.SetUpLine(ctx, dir, s.line)
	if err != nil {
		t.Fatal(err)
	}
	defer line.Close()
	rep, err := sim.Provision(ctx, line, filepath.Join(dir, "fleet"), nil)
	if err != nil || rep.OK != n || rep.Uploaded != n {
		t.Fatalf("provision: %+v, %v", rep, err)
	}
	f, err := sim.Open(ctx, filepath.Join(dir, "fleet"), s.options())
	if err != nil {
		t.Fatal(err)
	}
	er := f.Enroll(ctx, nil)
	if er.Enrolled != n {
		t.Fatalf("enroll: %+v", er)
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(1, "test"))
	devs := sqlstore.NewDeviceService(s.m.db)
	for _, d := range f.Devices {
		got, err := devs.FindDeviceBySerial(sys, d.Serial)
		if err != nil || got.State != cradle.StateDeployed {
			t.Errorf("%s on the server: %v, %v", d.Serial, got, err)
		}
	}
	t.Logf("provision %+v; enroll %+v", rep, er)
}
