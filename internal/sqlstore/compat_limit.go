package sqlstore

import (
	"sync"
	"time"
)

// refusalLimiter keeps refusal audits of one kind of key (a token, an
// auth set, a device) to one a minute per process: a device retrying a
// bad credential every few seconds must not grow the audit log by a row
// each time. It counts the refusals left out, for the next row.
type refusalLimiter struct {
	mu   sync.Mutex
	last map[string]refusalSeen
}

type refusalSeen struct {
	at      time.Time // when the last audited refusal was
	skipped int       // refusals not audited since
}

const (
	refusalAuditEvery = time.Minute
	// maxRefusalKeys bounds the map; when it is full, entries older than
	// refusalAuditEvery go, and if none did, all go (auditing a few more
	// refusals is the safe side).
	maxRefusalKeys = 4096
)

// allow reports whether a refusal of key at now is audited, and how many
// refusals of key were left out since the last audited one.
func (l *refusalLimiter) allow(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[string]refusalSeen{}
	}
	if s, ok := l.last[key]; ok && now.Sub(s.at) < refusalAuditEvery && !now.Before(s.at) {
		s.skipped++
		l.last[key] = s
		return false, 0
	}
	skipped := l.last[key].skipped
	if _, ok := l.last[key]; !ok && len(l.last) >= maxRefusalKeys {
		for k, s := range l.last {
			if now.Sub(s.at) >= refusalAuditEvery || now.Before(s.at) {
				delete(l.last, k)
			}
		}
		if len(l.last) >= maxRefusalKeys {
			clear(l.last)
		}
	}
	l.last[key] = refusalSeen{at: now}
	return true, skipped
}
