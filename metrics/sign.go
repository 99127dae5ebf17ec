package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sign holds the instruments of the sign path, fed by the signer through
// its Observer interface.
type sign struct {
	signDuration    *prometheus.HistogramVec
	reserveDuration *prometheus.HistogramVec
	keySignDuration *prometheus.HistogramVec
	refusals        *prometheus.CounterVec
	signatures      *prometheus.CounterVec

	lastHeight *prometheus.GaugeVec
	lastRound  *prometheus.GaugeVec
	lastTime   *prometheus.GaugeVec
	missed     *prometheus.CounterVec
}

func newSign() sign {
	return sign{
		signDuration: histogramVec("sign_duration_seconds",
			"Time to answer a validator's sign request, from receipt to signature.", "chain", "step"),
		reserveDuration: histogramVec("reserve_duration_seconds",
			"Time for a height/round/step reservation to commit through Raft.", "chain"),
		keySignDuration: histogramVec("key_sign_duration_seconds",
			"Time the key backend took to produce a signature.", "chain", "backend"),
		refusals: counterVec("sign_refusals_total",
			"Sign requests refused, by reason (regression, conflict, unavailable, invalid, no_state, not_leader, key).", "chain", "reason"),
		signatures: counterVec("signatures_total",
			"Signatures returned to a validator.", "chain", "step"),
		lastHeight: gaugeVec("last_signed_height",
			"Height of the latest signature this node returned, per chain and step.", "chain", "step"),
		lastRound: gaugeVec("last_signed_round",
			"Round of the latest signature this node returned, per chain and step.", "chain", "step"),
		lastTime: gaugeVec("last_signature_timestamp_seconds",
			"Unix time of the latest signature this node returned, per chain and step; time() minus it is the age.", "chain", "step"),
		missed: counterVec("missed_votes_total",
			"Prevotes or precommits (step) the validator never asked for: heights skipped between the chain's "+
				"watermark and the next vote signed, as far as the signer can see them.", "chain", "step"),
	}
}

func (s *sign) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.signDuration, s.reserveDuration, s.keySignDuration, s.refusals, s.signatures,
		s.lastHeight, s.lastRound, s.lastTime, s.missed}
}

// ObserveSign records the end-to-end time of a sign request at step
// ("proposal", "prevote" or "precommit").
func (m *Metrics) ObserveSign(chain, step string, d time.Duration) {
	if m == nil {
		return
	}
	m.signDuration.WithLabelValues(chain, step).Observe(d.Seconds())
}

// ObserveReserve records how long a reservation took to commit through Raft.
func (m *Metrics) ObserveReserve(chain string, d time.Duration) {
	if m == nil {
		return
	}
	m.reserveDuration.WithLabelValues(chain).Observe(d.Seconds())
}

// ObserveKeySign records the key backend's signing time.
func (m *Metrics) ObserveKeySign(chain, backend string, d time.Duration) {
	if m == nil {
		return
	}
	m.keySignDuration.WithLabelValues(chain, backend).Observe(d.Seconds())
}

// Refused counts a refused sign request. Reasons should be the stable
// strings of the fsm package (regression, conflict, invalid, ...) or the
// signer's own (unavailable, key), so dashboards can alert on them.
func (m *Metrics) Refused(chain, reason string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(chain, reason).Inc()
}

// Signed counts a signature returned to the validator at step, height and
// round, and records it as the chain's latest at that step.
func (m *Metrics) Signed(chain, step string, height int64, round int32) {
	if m == nil {
		return
	}
	m.signatures.WithLabelValues(chain, step).Inc()
	m.lastHeight.WithLabelValues(chain, step).Set(float64(height))
	m.lastRound.WithLabelValues(chain, step).Set(float64(round))
	m.lastTime.WithLabelValues(chain, step).Set(float64(time.Now().UnixNano()) / 1e9)
	if step != "proposal" {
		// The series exists from the first vote, so rate() and increase()
		// see a zero before the first miss.
		m.missed.WithLabelValues(chain, step)
	}
}

// Missed counts n prevotes or precommits (step) the validator skipped.
func (m *Metrics) Missed(chain, step string, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.missed.WithLabelValues(chain, step).Add(float64(n))
}
