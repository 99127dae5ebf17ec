package harness

import (
	"context"
	"sync"
	"time"
)

// ChainMonitor watches the chain in the background for the whole test, so
// that a stall is caught even while the test is busy elsewhere (restarting a
// node, waiting for Raft to catch up) and not only inside WaitHeight.
type ChainMonitor struct {
	mu          sync.Mutex
	firstSeen   map[int64]time.Time
	last        int64
	lastChange  time.Time
	maxGap      time.Duration
	maxGapAfter int64
	cancel      context.CancelFunc
	done        chan struct{}
}

// Monitor starts polling the node's height every interval.
func (n *CometNode) Monitor(ctx context.Context, interval time.Duration) *ChainMonitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &ChainMonitor{
		firstSeen:  map[int64]time.Time{},
		last:       -1,
		lastChange: time.Now(),
		cancel:     cancel,
		done:       make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if h, err := n.Height(ctx); err == nil {
				m.observe(h, time.Now())
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *ChainMonitor) observe(h int64, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h <= m.last {
		return
	}
	if m.last >= 1 {
		if gap := now.Sub(m.lastChange); gap > m.maxGap {
			m.maxGap, m.maxGapAfter = gap, m.last
		}
	}
	for x := m.last + 1; x <= h; x++ {
		if x >= 1 {
			m.firstSeen[x] = now
		}
	}
	m.last, m.lastChange = h, now
}

// MaxGap is the longest time the chain went without a new block since its
// first block, including the time since the latest block, and the height
// after which that gap started.
func (m *ChainMonitor) MaxGap() (time.Duration, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gap, after := m.maxGap, m.maxGapAfter
	if m.last >= 1 {
		if cur := time.Since(m.lastChange); cur > gap {
			gap, after = cur, m.last
		}
	}
	return gap, after
}

// FirstSeen is when the monitor first saw height h committed.
func (m *ChainMonitor) FirstSeen(h int64) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.firstSeen[h]
	return t, ok
}

// Stop ends the polling.
func (m *ChainMonitor) Stop() {
	m.cancel()
	<-m.done
}
