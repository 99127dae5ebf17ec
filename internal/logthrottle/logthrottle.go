// Package logthrottle keeps a flood of similar events from flooding the
// log: one line per key per interval, with a count of what was held back.
package logthrottle

import (
	"sync"
	"time"
)

// Limiter lets one log line per key through per interval and counts what
// it held back. It tracks at most 1024 keys; past that it starts afresh.
type Limiter struct {
	every time.Duration
	mu    sync.Mutex
	seen  map[string]*limitEntry
}

type limitEntry struct {
	last    time.Time
	dropped int
}

// New returns a Limiter that lets a key through once per every.
func New(every time.Duration) *Limiter {
	return &Limiter{every: every, seen: map[string]*limitEntry{}}
}

// Allow reports whether to log key now, and how many were held back since
// it last did.
func (l *Limiter) Allow(key string) (int, bool) {
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
