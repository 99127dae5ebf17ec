package cluster

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxLoggedSources bounds the sources NewHandshakeErrorLog tracks apart;
// drops from any further source are counted together, so a flood from
// many addresses costs neither unbounded memory nor one line per address.
const maxLoggedSources = 256

// NewHandshakeErrorLog returns a handler for WithHandshakeErrorHandler (or
// Config.OnHandshakeError) that logs refused raft connections on log at
// warning level, at most one line per source per interval: the first
// refusal from a source is logged at once, later ones are counted and
// logged as one line with the count when the interval ends. Every refusal
// is counted in some line, so none goes unreported, but a flood of
// thousands per second stays a line per source per interval. A source is
// an IPv4 address or an IPv6 /64, as for HandshakeLimits.PerSource. Lines
// still due are written by timers, up to one interval after the stream
// layer has closed.
func NewHandshakeErrorLog(log *slog.Logger, interval time.Duration) func(remote net.Addr, err error) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	d := &dropLog{log: log, interval: interval, sources: map[netip.Addr]*dropCount{}}
	return d.drop
}

type dropLog struct {
	log      *slog.Logger
	interval time.Duration

	mu sync.Mutex
	// sources holds each source refused within the last interval; its
	// timer, always armed while it is here, logs what it counted since
	// and removes it once a whole interval passes without a refusal.
	// The zero Addr stands for all sources past maxLoggedSources.
	sources map[netip.Addr]*dropCount
}

type dropCount struct {
	dropped int
	lastErr error
}

func (d *dropLog) drop(remote net.Addr, err error) {
	key := sourceKey(remoteIP(remote))
	d.mu.Lock()
	src, known := d.sources[key]
	if !known && len(d.sources) >= maxLoggedSources {
		key = netip.Addr{}
		src, known = d.sources[key]
	}
	if known {
		src.dropped++
		src.lastErr = err
		d.mu.Unlock()
		return
	}
	d.sources[key] = &dropCount{}
	time.AfterFunc(d.interval, func() { d.flush(key) })
	d.mu.Unlock()
	d.write(key, 1, err)
}

func (d *dropLog) flush(key netip.Addr) {
	d.mu.Lock()
	src := d.sources[key]
	n, err := src.dropped, src.lastErr
	if n == 0 {
		delete(d.sources, key)
		d.mu.Unlock()
		return
	}
	src.dropped, src.lastErr = 0, nil
	time.AfterFunc(d.interval, func() { d.flush(key) })
	d.mu.Unlock()
	d.write(key, n, err)
}

func (d *dropLog) write(key netip.Addr, n int, err error) {
	source := key.String()
	if !key.IsValid() {
		source = "other sources"
	}
	d.log.Warn("raft connections refused before reaching raft (no valid cluster certificate, idle, or over a handshake cap)",
		"source", source, "refused", n, "per", d.interval, "last_err", err)
}
