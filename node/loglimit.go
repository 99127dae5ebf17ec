package node

import (
	"sync"
	"time"
)

// logLimiter lets one log line per key through per interval and counts
// what it held back, so a flood of refusals cannot flood the log.
type logLimiter struct {
	every time.Duration
	mu    sync.Mutex
	seen  map[string]*limitEntry
}

type limitEntry struct {
	last    time.Time
	dropped int
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, seen: map[string]*limitEntry{}}
}

// allow reports whether to log key now, and how many were held back since.
func (l *logLimiter) allow(key string) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	e := l.seen[key]
	if e == nil {
		if len(l.seen) > 1024 {
			clear(l.seen)
		}
		l.seen[key] = &limitEntry{last: now}
		return 0, true
	}
	if now.Sub(e.last) < l.every {
		e.dropped++
		return 0, false
	}
	n := e.dropped
	e.last, e.dropped = now, 0
	return n, true
}
