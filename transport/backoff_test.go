package transport

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffSchedule(t *testing.T) {
	const (
		minD = 200 * time.Millisecond
		maxD = time.Second
	)
	b := newBackoff(minD, maxD)
	b.rand = func() float64 { return 0.5 } // factor exactly 1

	want := []time.Duration{200, 400, 800, 1000, 1000, 1000}
	for i, w := range want {
		if got := b.next(); got != w*time.Millisecond {
			t.Fatalf("step %d: got %v, want %v", i, got, w*time.Millisecond)
		}
	}
	b.reset()
	if got := b.next(); got != minD {
		t.Fatalf("after reset: got %v, want %v", got, minD)
	}
	if got := b.next(); got != 2*minD {
		t.Fatalf("after reset, second step: got %v, want %v", got, 2*minD)
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	const (
		minD = 200 * time.Millisecond
		maxD = time.Second
	)
	// Extremes of the random source.
	b := newBackoff(minD, maxD)
	b.rand = func() float64 { return 0 }
	if got, want := b.next(), 160*time.Millisecond; got != want {
		t.Fatalf("low extreme: got %v, want %v", got, want)
	}
	b = newBackoff(minD, maxD)
	b.rand = func() float64 { return 0.9999999 }
	if got := b.next(); got < 239*time.Millisecond || got > 240*time.Millisecond {
		t.Fatalf("high extreme: got %v, want ~240ms", got)
	}

	// The ceiling holds after jitter: a starting node waits only 3 s.
	r := rand.New(rand.NewPCG(1, 2))
	b = newBackoff(minD, maxD)
	b.rand = r.Float64
	base := minD
	sawBelow, sawAbove := false, false
	for i := 0; i < 2000; i++ {
		if i%10 == 0 {
			b.reset()
			base = minD
		}
		got := b.next()
		lo := time.Duration(float64(base) * 0.8)
		hi := min(time.Duration(float64(base)*1.2), maxD)
		if got < lo || got > hi {
			t.Fatalf("sample %d: %v outside [%v, %v] for base %v", i, got, lo, hi, base)
		}
		if got < base {
			sawBelow = true
		}
		if got > base {
			sawAbove = true
		}
		base = min(2*base, maxD)
	}
	if !sawBelow || !sawAbove {
		t.Fatalf("jitter not applied in both directions (below=%v above=%v)", sawBelow, sawAbove)
	}
}

func TestBackoffMaxBelowMin(t *testing.T) {
	b := newBackoff(time.Second, 100*time.Millisecond)
	b.rand = func() float64 { return 0.5 }
	for i := 0; i < 3; i++ {
		if got := b.next(); got != time.Second {
			t.Fatalf("step %d: got %v, want 1s", i, got)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.DialTimeout != 2*time.Second || o.BackoffMin != 200*time.Millisecond ||
		o.BackoffMax != time.Second || o.ReadTimeout != 10*time.Second ||
		o.WriteTimeout != 5*time.Second || o.MaxFrameSize != 1<<20+64<<10 || o.Logger == nil {
		t.Fatalf("unexpected defaults: %+v", o)
	}
}
