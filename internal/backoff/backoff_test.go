package backoff

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

const (
	minD = 200 * time.Millisecond
	maxD = time.Second
)

// exact makes every jitter factor exactly 1.
func exact(b *Backoff) *Backoff {
	b.rand = func() float64 { return 0.5 }
	return b
}

func TestSchedule(t *testing.T) {
	b := exact(New(minD, maxD))
	want := []time.Duration{200, 400, 800, 1000, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Fatalf("step %d: got %v, want %v", i, got, w*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.Next(); got != minD {
		t.Fatalf("after reset: got %v, want %v", got, minD)
	}
	if got := b.Next(); got != 2*minD {
		t.Fatalf("after reset, second step: got %v, want %v", got, 2*minD)
	}
}

func TestJumpToMaxAndInitial(t *testing.T) {
	b := exact(New(300*time.Millisecond, 5*time.Second))
	b.Next()
	b.JumpToMax()
	for i := 0; i < 2; i++ {
		if got := b.Next(); got != 5*time.Second {
			t.Fatalf("after JumpToMax step %d: got %v, want 5s", i, got)
		}
	}
	if got := b.Initial(); got != 300*time.Millisecond {
		t.Fatalf("Initial: got %v, want 300ms", got)
	}
	if got := b.Next(); got != 5*time.Second {
		t.Fatalf("Initial advanced the schedule: got %v, want 5s", got)
	}
	b.Reset()
	if got := b.Next(); got != 300*time.Millisecond {
		t.Fatalf("after Reset: got %v, want 300ms", got)
	}
}

func TestJitterBounds(t *testing.T) {
	// Extremes of the random source.
	b := New(minD, maxD)
	b.rand = func() float64 { return 0 }
	if got, want := b.Next(), 160*time.Millisecond; got != want {
		t.Fatalf("low extreme: got %v, want %v", got, want)
	}
	b = New(minD, maxD)
	b.rand = func() float64 { return 0.9999999 }
	if got := b.Next(); got < 239*time.Millisecond || got > 240*time.Millisecond {
		t.Fatalf("high extreme: got %v, want ~240ms", got)
	}

	// The ceiling holds after jitter: a starting node waits only 3 s.
	r := rand.New(rand.NewPCG(1, 2))
	b = New(minD, maxD)
	b.rand = r.Float64
	base := minD
	sawBelow, sawAbove := false, false
	for i := 0; i < 2000; i++ {
		if i%10 == 0 {
			b.Reset()
			base = minD
		}
		got := b.Next()
		lo := time.Duration(float64(base) * 0.8)
		hi := min(time.Duration(float64(base)*1.2), maxD)
		if got < lo || got > hi {
			t.Fatalf("sample %d: %v outside [%v, %v] for base %v", i, got, lo, hi, base)
		}
		sawBelow = sawBelow || got < base
		sawAbove = sawAbove || got > base
		base = min(2*base, maxD)
	}
	if !sawBelow || !sawAbove {
		t.Fatalf("jitter not applied in both directions (below=%v above=%v)", sawBelow, sawAbove)
	}
}

func TestMaxBelowMin(t *testing.T) {
	b := exact(New(time.Second, 100*time.Millisecond))
	for i := 0; i < 3; i++ {
		if got := b.Next(); got != time.Second {
			t.Fatalf("step %d: got %v, want 1s", i, got)
		}
	}
}

func TestConstantNeverExceedsItsDelay(t *testing.T) {
	b := Constant(250 * time.Millisecond)
	for i := 0; i < 1000; i++ {
		if got := b.Next(); got < 200*time.Millisecond || got > 250*time.Millisecond {
			t.Fatalf("sample %d: %v outside [200ms, 250ms]", i, got)
		}
	}
	b = Constant(250 * time.Millisecond).WithJitter(0)
	b.rand = func() float64 { return 0 }
	if got := b.Next(); got != 250*time.Millisecond {
		t.Fatalf("without jitter: got %v, want 250ms", got)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep on a live context reported it was cut short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Minute) {
		t.Fatal("Sleep on a done context reported the full wait")
	}
	if time.Since(start) > time.Second {
		t.Fatal("Sleep did not return promptly on a done context")
	}
}

func TestRetry(t *testing.T) {
	calls := 0
	err := Retry(context.Background(), New(time.Millisecond, 2*time.Millisecond), func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("got err=%v after %d calls, want nil after 3", err, calls)
	}
}

func TestRetryStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	errLast := errors.New("still down")
	err := Retry(ctx, Constant(5*time.Millisecond), func() error { return errLast })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errLast) {
		t.Fatalf("got %v, want the context's error and the last attempt's", err)
	}
}
