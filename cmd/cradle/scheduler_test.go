package main

import (
	"database/sql"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cradle/internal/ota"
)

// TestSchedulerJob runs the server: its rollout scheduler takes the lease
// under this process's name, and gives it up when the server closes, so
// that another replica takes over at once.
func TestSchedulerJob(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Listen = t.TempDir(), "127.0.0.1:0"
	cfg.OTA.SchedulerInterval = 20 * time.Millisecond
	m := &Main{Config: cfg}
	if err := m.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	raw, err := sql.Open("sqlite", "file:"+filepath.Join(cfg.DataDir, "cradle.db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	lease := func() (holder string, expires time.Time) {
		var us int64
		err := raw.QueryRow(`SELECT holder, expires_at FROM leases WHERE name = ?`, ota.SchedulerLease).Scan(&holder, &us)
		if err != nil && err != sql.ErrNoRows {
			t.Fatal(err)
		}
		return holder, time.UnixMicro(us)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		holder, expires := lease()
		if strings.Contains(holder, "/"+strconv.Itoa(os.Getpid())+"/") && expires.After(time.Now()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s the scheduler lease is held by %q until %v; want this process", holder, expires)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, expires := lease(); expires.After(time.Now()) {
		t.Errorf("the lease runs until %v after the server closed; want it given up", expires)
	}
}

func TestSchedulerConfig(t *testing.T) {
	c, err := loadConfig("", envMap(map[string]string{"CRADLE_OTA_SCHEDULER_INTERVAL": "250ms"}), nil)
	if err != nil || c.OTA.SchedulerInterval != 250*time.Millisecond {
		t.Errorf("ota.scheduler_interval from the environment: %v, %v", c.OTA.SchedulerInterval, err)
	}
	if c, err := loadConfig("", envMap(nil), map[string]string{"ota-scheduler-interval": "5s"}); err != nil || c.OTA.SchedulerInterval != 5*time.Second {
		t.Errorf("ota.scheduler_interval from the flag: %v, %v", c.OTA.SchedulerInterval, err)
	}
	for _, v := range []string{"0s", "-1s", "2m", "soon"} {
		_, err := loadConfig("", envMap(map[string]string{"CRADLE_OTA_SCHEDULER_INTERVAL": v}), nil)
		if err == nil || !strings.Contains(err.Error(), "ota.scheduler_interval: \""+v+"\" is not a duration from 10ms to 1m") {
			t.Errorf("ota.scheduler_interval %q: %v", v, err)
		}
	}
}
