package transport

import (
	"math/rand/v2"
	"time"
)

// jitterFraction spreads redials of several signers (and several chains) so
// they do not hit a restarting node in lockstep.
const jitterFraction = 0.2

// backoff yields redial delays: min, doubling, capped at max, each with
// ±jitterFraction applied. The cap is applied after jitter so the delay never
// exceeds max; a starting node only waits 3 s for its signer.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
	rand     func() float64 // in [0,1); injectable for tests
}

func newBackoff(minD, maxD time.Duration) *backoff {
	if maxD < minD {
		maxD = minD
	}
	return &backoff{min: minD, max: maxD, cur: minD, rand: rand.Float64}
}

// next returns the delay to wait now and advances the schedule.
func (b *backoff) next() time.Duration {
	d := b.jitter(b.cur)
	b.cur *= 2
	if b.cur > b.max || b.cur <= 0 {
		b.cur = b.max
	}
	return d
}

func (b *backoff) reset() { b.cur = b.min }

// jitter returns d scaled by a random factor in [1-jitterFraction,
// 1+jitterFraction), capped at max.
func (b *backoff) jitter(d time.Duration) time.Duration {
	f := 1 + jitterFraction*(2*b.rand()-1)
	j := time.Duration(float64(d) * f)
	if j > b.max {
		j = b.max
	}
	if j < 0 {
		j = 0
	}
	return j
}
