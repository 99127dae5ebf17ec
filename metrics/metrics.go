// Package metrics owns kms-ha's Prometheus registry and instruments and the
// HTTP endpoint that serves /metrics, /healthz and /readyz (server.go).
//
// It imports none of kms-ha's packages. Package node wires it: it passes
// *Metrics to the signer as the signer's Observer, feeds it leadership,
// raft, watermark and validator connection changes, and answers /readyz
// through the Health interface declared here.
//
// Every method is safe on a nil *Metrics and then does nothing, so a node
// without metrics.listen, and tests, can pass nil.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "kmsha"

// Validator connection states accepted by ValidatorState.
const (
	// StateConnecting marks a dial (or accept) attempt; it is counted in
	// kmsha_validator_connection_attempts_total and reads as disconnected.
	StateConnecting = "connecting"
	// StateConnected is the only state exported as 1.
	StateConnected = "connected"
	// StateDisconnected is exported as 0.
	StateDisconnected = "disconnected"
)

// Buckets covers 100µs (a local key sign) to 10s (a Raft commit stuck
// behind an election), roughly three buckets per decade so that the tail of
// a sign does not land in one catch-all bucket.
var Buckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5, 10,
}

// Metrics is the set of kms-ha instruments, registered on a registry of its
// own so that several nodes in one process (tests, the demo) never collide
// on the global one.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	signDuration    *prometheus.HistogramVec
	reserveDuration *prometheus.HistogramVec
	keySignDuration *prometheus.HistogramVec
	refusals        *prometheus.CounterVec
	signatures      *prometheus.CounterVec

	leaderChanges prometheus.Counter
	isLeader      prometheus.Gauge
	raftTerm      prometheus.Gauge
	raftApplied   prometheus.Gauge

	wmHeight *prometheus.GaugeVec
	wmRound  *prometheus.GaugeVec
	wmStep   *prometheus.GaugeVec

	validatorConnected *prometheus.GaugeVec
	validatorAttempts  *prometheus.CounterVec
}

// New builds the instruments on a fresh registry that also carries the Go
// runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		signDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "sign_duration_seconds",
			Help:      "Time to answer a validator's sign request, from receipt to signature.",
			Buckets:   Buckets,
		}, []string{"chain", "step"}),
		reserveDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "reserve_duration_seconds",
			Help:      "Time for a height/round/step reservation to commit through Raft.",
			Buckets:   Buckets,
		}, []string{"chain"}),
		keySignDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "key_sign_duration_seconds",
			Help:      "Time the key backend took to produce a signature.",
			Buckets:   Buckets,
		}, []string{"chain", "backend"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "sign_refusals_total",
			Help:      "Sign requests refused, by reason (regression, conflict, unavailable, invalid, no_state, key, ...).",
		}, []string{"chain", "reason"}),
		signatures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "signatures_total",
			Help:      "Signatures returned to a validator.",
		}, []string{"chain", "step"}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "leader_changes_total",
			Help:      "Raft leadership changes observed by this node.",
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "is_leader",
			Help:      "1 while this node is the Raft leader (the only node that signs).",
		}),
		raftTerm: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "raft_term",
			Help:      "Current Raft term seen by this node.",
		}),
		raftApplied: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "raft_applied_index",
			Help:      "Last Raft log index applied to this node's state machine.",
		}),
		wmHeight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "watermark_height",
			Help:      "Height of the chain's double-sign watermark on this node.",
		}, []string{"chain"}),
		wmRound: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "watermark_round",
			Help:      "Round of the chain's double-sign watermark on this node.",
		}, []string{"chain"}),
		wmStep: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "watermark_step",
			Help:      "Step of the chain's double-sign watermark (1 proposal, 2 prevote, 3 precommit).",
		}, []string{"chain"}),
		validatorConnected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "validator_connected",
			Help:      "1 while the connection to the validator at addr is up.",
		}, []string{"chain", "addr"}),
		validatorAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "validator_connection_attempts_total",
			Help:      "Attempts to connect to the validator at addr.",
		}, []string{"chain", "addr"}),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.signDuration, m.reserveDuration, m.keySignDuration,
		m.refusals, m.signatures,
		m.leaderChanges, m.isLeader, m.raftTerm, m.raftApplied,
		m.wmHeight, m.wmRound, m.wmStep,
		m.validatorConnected, m.validatorAttempts,
	)
	// Built once: promhttp registers its own error counter on the registry,
	// and a second registration would be refused.
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:      reg,
		ErrorHandling: promhttp.ContinueOnError,
	})
	return m
}

// Registry returns the registry, for callers that add instruments of their
// own. It is nil for a nil *Metrics.
func (m *Metrics) Registry() *prometheus.Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// Handler serves the registry in the Prometheus exposition formats. For a
// nil *Metrics it answers 404, so a disabled metrics setup is visible
// rather than an empty page that looks like a broken scrape.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "metrics disabled", http.StatusNotFound)
		})
	}
	return m.handler
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

// Signed counts a signature returned to the validator at step.
func (m *Metrics) Signed(chain, step string) {
	if m == nil {
		return
	}
	m.signatures.WithLabelValues(chain, step).Inc()
}

// LeaderChanged records an observed leadership change and whether this node
// is now the leader.
func (m *Metrics) LeaderChanged(isLeader bool) {
	if m == nil {
		return
	}
	m.leaderChanges.Inc()
	m.isLeader.Set(boolFloat(isLeader))
}

// SetRaft records the current Raft term and applied index.
func (m *Metrics) SetRaft(term, applied uint64) {
	if m == nil {
		return
	}
	m.raftTerm.Set(float64(term))
	m.raftApplied.Set(float64(applied))
}

// SetWatermark records a chain's watermark. Heights beyond 2^53 lose
// precision as a float, which is far past any real chain.
func (m *Metrics) SetWatermark(chain string, h int64, r int32, s int8) {
	if m == nil {
		return
	}
	m.wmHeight.WithLabelValues(chain).Set(float64(h))
	m.wmRound.WithLabelValues(chain).Set(float64(r))
	m.wmStep.WithLabelValues(chain).Set(float64(s))
}

// ValidatorState records the connection state to a validator: one of
// StateConnecting, StateConnected or StateDisconnected. Any other state
// reads as disconnected, so a new state added by a caller can never show a
// dead link as up.
func (m *Metrics) ValidatorState(chain, addr, state string) {
	if m == nil {
		return
	}
	if state == StateConnecting {
		m.validatorAttempts.WithLabelValues(chain, addr).Inc()
	}
	m.validatorConnected.WithLabelValues(chain, addr).Set(boolFloat(state == StateConnected))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
