package main

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// window is one measured stretch of load on one system.
type window struct {
	samples []sample
	dur     time.Duration
	// Per process, over the window: CPU seconds, write syscalls, bytes
	// written to storage.
	cpu    []float64
	syscw  []int64
	writeB []int64
	// entries is how far the leader's raft commit index moved.
	entries uint64
}

// measure runs the load on s for d and reads the processes around it.
func measure(ctx context.Context, s *system, spec loadSpec, d time.Duration) window {
	ci0 := s.commitIndex(ctx)
	p0 := s.snapshot()
	t0 := time.Now()
	samples := runAll(s.vals, spec, d)
	w := window{samples: samples, dur: time.Since(t0)}
	p1 := s.snapshot()
	if ci1 := s.commitIndex(ctx); ci1 > ci0 {
		w.entries = ci1 - ci0
	}
	for i := range p0 {
		w.cpu = append(w.cpu, p1[i].cpu-p0[i].cpu)
		w.syscw = append(w.syscw, p1[i].syscw-p0[i].syscw)
		w.writeB = append(w.writeB, p1[i].writeB-p0[i].writeB)
	}
	return w
}

// latencies summarises samples: percentiles of the answered requests,
// and how many failed.
type latencies struct {
	n, errs       int
	refused       int // of errs
	p50, p99, max time.Duration
}

// failed says how many requests failed and how many of them the signer
// refused (the rest lost their connection or timed out).
func (l latencies) failed() string { return fmt.Sprintf("%d (%d)", l.errs, l.refused) }

func summarise(samples []sample) latencies {
	var ok []time.Duration
	l := latencies{}
	for _, s := range samples {
		if s.err {
			l.errs++
			if s.refused {
				l.refused++
			}
			continue
		}
		ok = append(ok, s.lat)
	}
	l.n = len(ok)
	if len(ok) == 0 {
		return l
	}
	slices.Sort(ok)
	l.p50 = ok[len(ok)/2]
	l.p99 = ok[min(len(ok)-1, len(ok)*99/100)]
	l.max = ok[len(ok)-1]
	return l
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
