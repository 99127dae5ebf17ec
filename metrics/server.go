package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Health reports whether this node can do its job. Ready returns nil when
// it can, a *DegradedError when it can but the cluster cannot lose another
// member (/readyz: 200 "degraded: <text>"), or an error whose text tells an
// operator why not (for example "no known leader" or "leader, but
// validator tcp://10.0.0.5:26659 not connected"); /readyz serves it as 503
// "not ready: <text>".
type Health interface {
	Ready() error
}

// DegradedError is a Ready answer for a node that does its job while the
// cluster has lost its margin (one more fault stops signing). /readyz
// serves it with 200, so a load balancer or orchestrator keeps the node in
// service, and the body "degraded: <reason>" for people and alerts.
type DegradedError struct{ Reason string }

func (e *DegradedError) Error() string { return "degraded: " + e.Reason }

// Degraded returns a *DegradedError for reason.
func Degraded(reason string) error { return &DegradedError{Reason: reason} }

// HealthFunc adapts a function to Health.
type HealthFunc func() error

// Ready calls f.
func (f HealthFunc) Ready() error { return f() }

// Handler returns the mux for /metrics, /healthz and /readyz, for callers
// that mount it on a server of their own. A nil health always reads ready.
func Handler(m *Metrics, health Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		// Liveness only: answering at all proves the process serves. It
		// must not depend on Raft, or a partitioned node gets restarted
		// by its supervisor instead of rejoining.
		writeText(w, r, http.StatusOK, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		var err error
		if health != nil {
			err = health.Ready()
		}
		var degraded *DegradedError
		if errors.As(err, &degraded) {
			writeText(w, r, http.StatusOK, degraded.Error())
			return
		}
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "not ready") {
				msg = "not ready: " + msg
			}
			writeText(w, r, http.StatusServiceUnavailable, msg)
			return
		}
		writeText(w, r, http.StatusOK, "ready")
	})
	return mux
}

func writeText(w http.ResponseWriter, r *http.Request, code int, body string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	// Probes must see the current state, never a proxy's cached answer.
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if r.Method == http.MethodGet {
		_, _ = io.WriteString(w, body+"\n")
	}
}

// Server is a running metrics and health endpoint.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	log  *slog.Logger
	done chan struct{}
	err  error // set before done is closed
}

// Start binds addr and serves in the background. Binding happens before
// Start returns so that a taken port fails startup loudly instead of
// leaving a node that runs without its probes.
func Start(addr string, m *Metrics, health Health, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("metrics: listen on %s: address already in use (is another kms-ha or exporter bound to it?): %w", addr, err)
		}
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	s := &Server{
		srv: &http.Server{
			Handler:           Handler(m, health),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		log:  log,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.err = fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
		}
	}()
	log.Info("metrics and health endpoint listening", "addr", ln.Addr().String())
	return s, nil
}

// Addr is the bound address, useful when Start was given port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Done is closed when the server has stopped serving.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is why the server stopped on its own; nil after a clean Shutdown.
// Only meaningful once Done is closed.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Shutdown stops accepting connections and waits for in-flight requests
// until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	<-s.done
	return nil
}
