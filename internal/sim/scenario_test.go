package sim

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	const n = 1000
	tests := []struct {
		name  string
		cfg   RunConfig
		check func(t *testing.T, p [][]window)
	}{
		{"steady", RunConfig{Scenario: Steady, Duration: time.Minute}, func(t *testing.T, p [][]window) {
			for i, w := range p {
				if len(w) != 0 {
					t.Fatalf("device %d goes offline in a steady run: %v", i, w)
				}
			}
		}},
		{"churn", RunConfig{Scenario: Churn, Duration: 10 * time.Minute, ChurnRate: 0.2}, func(t *testing.T, p [][]window) {
			total := 0
			for i, ws := range p {
				for j, w := range ws {
					if w.from < 0 || w.to > 10*time.Minute-churnMargin || w.to-w.from < time.Second || w.to-w.from > 5*time.Second {
						t.Fatalf("device %d: window %v", i, w)
					}
					if j > 0 && w.from <= ws[j-1].to {
						t.Fatalf("device %d: overlapping windows %v", i, ws)
					}
				}
				total += len(ws)
			}
			// 0.2 × 1,000 devices × 10 minutes, less the rare overlaps.
			if total < 1800 || total > 2200 {
				t.Errorf("%d disconnections, want about 2,000", total)
			}
		}},
		{"offline", RunConfig{Scenario: Offline, Duration: 3 * time.Minute, OfflineShare: 0.25, OfflineFor: 30 * time.Second}, func(t *testing.T, p [][]window) {
			off := 0
			for i, ws := range p {
				if len(ws) == 0 {
					continue
				}
				off++
				if len(ws) != 1 || ws[0] != (window{time.Minute, 90 * time.Second}) {
					t.Fatalf("device %d: windows %v", i, ws)
				}
			}
			if off != 250 {
				t.Errorf("%d devices offline, want 250", off)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, plan(c, n))
		})
	}
}

func TestRunConfigRefused(t *testing.T) {
	tests := []struct {
		name string
		cfg  RunConfig
		want string
	}{
		{"no duration", RunConfig{}, "give how long"},
		{"unknown scenario", RunConfig{Scenario: "storm", Duration: time.Minute}, `unknown scenario "storm"`},
		{"churn rate", RunConfig{Scenario: Churn, Duration: time.Minute, ChurnRate: 1.5}, "churn rate 1.5"},
		{"offline share", RunConfig{Duration: time.Minute, OfflineShare: -1}, "offline share -1"},
		{"offline too long", RunConfig{Duration: time.Minute, OfflineFor: 40 * time.Second}, "back before its end"},
		{"interval", RunConfig{Duration: time.Minute, Interval: time.Microsecond}, "below 10ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestLink: taking a link down closes its connections and refuses dials
// until it is up again.
func TestLink(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { buf := make([]byte, 16); c.Read(buf); c.Close() }()
		}
	}()
	l := newLink()
	ctx := context.Background()
	c, err := l.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	l.setDown(true)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read on a connection of a link taken down: %v, want it closed", err)
	}
	if _, err := l.DialContext(ctx, "tcp", ln.Addr().String()); !errors.Is(err, ErrOffline) {
		t.Errorf("dial while down: %v, want ErrOffline", err)
	}
	l.setDown(false)
	c, err = l.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial when up again: %v", err)
	}
	c.Close()
	if len(l.conns) != 0 {
		t.Errorf("%d connections tracked after close", len(l.conns))
	}
}
