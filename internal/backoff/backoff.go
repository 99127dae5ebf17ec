// Package backoff is the one way kms-ha waits between attempts: a doubling
// delay with a ceiling and jitter, and waits that end with a context.
//
// The ceiling holds after jitter, unlike most backoff libraries (whose
// maximum caps the base interval, so a jittered delay may exceed it): the
// validator redial must stay under 1 s, since a starting CometBFT node waits
// only 3 s for its signer.
package backoff

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// DefaultJitter spreads the attempts of several nodes (and several chains)
// so that they do not hit a restarting peer in lockstep.
const DefaultJitter = 0.2

// Backoff yields delays: Initial, doubling, capped at Max, each scaled by a
// random factor in [1-jitter, 1+jitter) and then capped at Max again. It is
// not safe for concurrent use; each loop owns one.
type Backoff struct {
	initial, max time.Duration
	jitter       float64
	cur          time.Duration
	rand         func() float64 // in [0,1); tests replace it
}

// New returns a schedule from initial to max with DefaultJitter. A max
// below initial is raised to initial.
func New(initial, max time.Duration) *Backoff {
	if max < initial {
		max = initial
	}
	return &Backoff{initial: initial, max: max, jitter: DefaultJitter, cur: initial, rand: rand.Float64}
}

// Constant returns a schedule that waits about d each time, never more.
func Constant(d time.Duration) *Backoff { return New(d, d) }

// WithJitter sets the jitter fraction (0 for none: a poll of local state
// gains nothing from it) and returns b.
func (b *Backoff) WithJitter(f float64) *Backoff {
	b.jitter = min(max(f, 0), 1)
	return b
}

// Next returns the delay to wait now and advances the schedule.
func (b *Backoff) Next() time.Duration {
	d := b.jittered(b.cur)
	b.cur *= 2
	if b.cur > b.max || b.cur <= 0 {
		b.cur = b.max
	}
	return d
}

// Initial returns a first-step delay without advancing the schedule: a loop
// that is only waiting for permission should, once allowed, act within one
// short step, not after a delay inflated by the time it waited.
func (b *Backoff) Initial() time.Duration { return b.jittered(b.initial) }

// Reset starts the schedule again from its initial delay.
func (b *Backoff) Reset() { b.cur = b.initial }

// JumpToMax makes every following delay the ceiling until Reset: a loop
// that found nothing to do re-checks only now and then.
func (b *Backoff) JumpToMax() { b.cur = b.max }

// Wait sleeps for Next() and reports whether it did; false means ctx ended.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

func (b *Backoff) jittered(d time.Duration) time.Duration {
	j := time.Duration(float64(d) * (1 + b.jitter*(2*b.rand()-1)))
	return min(max(j, 0), b.max)
}

// Sleep waits for d or until ctx ends; it reports whether the full duration
// elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Retry calls fn until it returns nil, waiting b.Next() after each failure.
// When ctx ends first it returns ctx's error joined with fn's last one. It
// calls fn at once; a caller that must wait first calls b.Wait before.
func Retry(ctx context.Context, b *Backoff, fn func() error) error {
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !b.Wait(ctx) {
			return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), err)
		}
	}
}
