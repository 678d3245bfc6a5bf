package main

import (
	"context"
	"log/slog"
	"time"

	"cradle"
	"cradle/internal/ota"
)

// rolloutScheduler is the rollout scheduler of cradle serve (ota.Scheduler)
// running in the background until close.
type rolloutScheduler struct {
	stop context.CancelFunc
	done chan struct{}
}

// startScheduler runs an ota.Scheduler over store every interval.
// notify, when not nil, tells started devices to update (an MQTT push);
// devices that are not told find their update when they next poll.
func startScheduler(interval time.Duration, store cradle.RolloutStore, notify func(context.Context, int64, []string), logger *slog.Logger) *rolloutScheduler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &ota.Scheduler{
		Store:    store,
		Notify:   notify,
		Interval: interval,
		Logger:   logger.With("job", "rollout-scheduler"),
	}
	r := &rolloutScheduler{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := s.Run(ctx); err != nil {
			logger.Error("rollout scheduler", "err", err)
		}
	}()
	return r
}

// close stops the scheduler after the step in progress and gives its lease
// up, so that another replica takes over at once.
func (r *rolloutScheduler) close() {
	r.stop()
	<-r.done
}
