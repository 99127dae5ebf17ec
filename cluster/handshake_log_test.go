package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
)

// recordHandler keeps the log records it is handed.
type recordHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// refused sums the "refused" counts logged per source, and counts lines.
func (h *recordHandler) refused() (bySource map[string]int64, lines map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	bySource, lines = map[string]int64{}, map[string]int{}
	for _, r := range h.recs {
		var src string
		var n int64
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "source":
				src = a.Value.String()
			case "refused":
				n = a.Value.Int64()
			}
			return true
		})
		bySource[src] += n
		lines[src]++
	}
	return bySource, lines
}

// TestHandshakeErrorLogRateLimitsPerSource: a burst of refusals from one
// source is logged as its first refusal plus one line per interval with
// the count, every refusal is counted in some line, and other sources
// get lines of their own.
func TestHandshakeErrorLogRateLimitsPerSource(t *testing.T) {
	const interval = 300 * time.Millisecond
	h := &recordHandler{}
	report := cluster.NewHandshakeErrorLog(slog.New(h), interval)
	flooder := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}
	other := &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 2}
	errDrop := fmt.Errorf("raft TLS handshake: %w", cluster.ErrTooManyHandshakes)

	start := time.Now()
	for range 1000 {
		report(flooder, errDrop)
	}
	report(other, errors.New("bad certificate"))
	burst := time.Since(start)

	waitFor(t, 10*time.Second, "every refusal counted in a log line", func() bool {
		n, _ := h.refused()
		return n["192.0.2.7"] == 1000 && n["198.51.100.1"] == 1
	})
	_, lines := h.refused()
	// The first refusal at once, then at most one line per interval.
	if max := 2 + int(burst/interval); lines["192.0.2.7"] > max {
		t.Errorf("%d lines for 1000 refusals over %v; want at most %d", lines["192.0.2.7"], burst, max)
	}
	if lines["198.51.100.1"] != 1 {
		t.Errorf("%d lines for one refusal from another source; want 1", lines["198.51.100.1"])
	}
}

// TestHandshakeErrorLogBoundsSources: refusals from more sources than it
// tracks apart are counted together.
func TestHandshakeErrorLogBoundsSources(t *testing.T) {
	h := &recordHandler{}
	report := cluster.NewHandshakeErrorLog(slog.New(h), time.Minute)
	for i := range 1000 {
		report(&net.TCPAddr{IP: net.IPv4(10, 0, byte(i/256), byte(i%256)), Port: 1}, errors.New("x"))
	}
	n, lines := h.refused()
	if len(lines) > 257 {
		t.Errorf("%d sources logged apart; want them bounded", len(lines))
	}
	var total int64
	for _, c := range n {
		total += c
	}
	// Those past the bound are held for the interval's line; the first
	// of them is logged at once.
	if total < 257 {
		t.Errorf("only %d refusals logged at once", total)
	}
}
