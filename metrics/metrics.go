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

	sign
	raftM
	clusterM

	wmHeight *prometheus.GaugeVec
	wmRound  *prometheus.GaugeVec
	wmStep   *prometheus.GaugeVec

	validatorConnected *prometheus.GaugeVec
	validatorAttempts  *prometheus.CounterVec

	buildInfo  *prometheus.GaugeVec
	certExpiry *prometheus.GaugeVec
}

// New builds the instruments on a fresh registry that also carries the Go
// runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg:      reg,
		sign:     newSign(),
		raftM:    newRaft(),
		clusterM: newCluster(),
		wmHeight: gaugeVec("watermark_height",
			"Height of the chain's double-sign watermark on this node.", "chain"),
		wmRound: gaugeVec("watermark_round",
			"Round of the chain's double-sign watermark on this node.", "chain"),
		wmStep: gaugeVec("watermark_step",
			"Step of the chain's double-sign watermark (1 proposal, 2 prevote, 3 precommit).", "chain"),
		validatorConnected: gaugeVec("validator_connected",
			"1 while the connection to the validator at addr is up.", "chain", "addr"),
		validatorAttempts: counterVec("validator_connection_attempts_total",
			"Attempts to connect to the validator at addr.", "chain", "addr"),
		buildInfo: gaugeVec("build_info",
			"Always 1; the version label is the kms-ha version this node runs.", "version"),
		certExpiry: gaugeVec("certificate_expiry_timestamp_seconds",
			"When the certificate expires (Unix seconds): node (cluster.tls_cert), ca (the earliest in cluster.tls_ca), signerservice (grpc.tls_cert).", "cert"),
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(m.sign.collectors()...)
	reg.MustRegister(m.raftM.collectors()...)
	reg.MustRegister(m.clusterM.collectors()...)
	reg.MustRegister(m.wmHeight, m.wmRound, m.wmStep, m.validatorConnected, m.validatorAttempts, m.buildInfo, m.certExpiry)
	// Built once: promhttp registers its own error counter on the registry,
	// and a second registration would be refused.
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:      reg,
		ErrorHandling: promhttp.ContinueOnError,
	})
	return m
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
}

func histogramVec(name, help string, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: Buckets}, labels)
}

// SetBuildInfo exports kmsha_build_info{version} = 1.
func (m *Metrics) SetBuildInfo(version string) {
	if m == nil {
		return
	}
	m.buildInfo.Reset()
	m.buildInfo.WithLabelValues(version).Set(1)
}

// SetCertificateExpiry exports kmsha_certificate_expiry_timestamp_seconds{cert}.
func (m *Metrics) SetCertificateExpiry(cert string, notAfter time.Time) {
	if m == nil {
		return
	}
	m.certExpiry.WithLabelValues(cert).Set(float64(notAfter.Unix()))
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
