package sim

import (
	"context"
	"errors"
	"net"
	"sync"
)

// ErrOffline is the error of a dial while a device's link is down.
var ErrOffline = errors.New("sim: the device is offline (simulated)")

// link is a device's network: its dials go through it, and taking it down
// closes every connection it made and refuses new ones until it is up
// again, as a cable pulled out would (the peer sees a reset; the device
// sees its reads and writes fail).
type link struct {
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	dialer net.Dialer
}

func newLink() *link { return &link{conns: map[net.Conn]struct{}{}} }

// DialContext dials through the link.
func (l *link) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	l.mu.Lock()
	down := l.down
	l.mu.Unlock()
	if down {
		return nil, &net.OpError{Op: "dial", Net: network, Err: ErrOffline}
	}
	c, err := l.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ErrOffline}
	}
	lc := &linkConn{Conn: c, l: l}
	l.conns[lc] = struct{}{}
	return lc, nil
}

// setDown takes the link down (closing its connections) or up.
func (l *link) setDown(down bool) {
	l.mu.Lock()
	l.down = down
	var open []net.Conn
	if down {
		for c := range l.conns {
			open = append(open, c)
		}
	}
	l.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

type linkConn struct {
	net.Conn
	l    *link
	once sync.Once
}

func (c *linkConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
