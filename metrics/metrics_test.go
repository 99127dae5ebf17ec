package metrics

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape fetches url over real HTTP and returns the text exposition as
// series -> value, where series is the name with its labels exactly as
// exposed (labels sorted by name), e.g. `kmsha_signatures_total{chain="c",step="prevote"}`.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Ask for the plain text format so the parser below applies.
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d", url, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("unparsable line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("unparsable value in %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func startServer(t *testing.T, m *Metrics, h Health) *Server {
	t.Helper()
	s, err := Start("127.0.0.1:0", m, h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestScrapeShowsObservations(t *testing.T) {
	m := New()
	m.ObserveSign("chain-a", "prevote", 2*time.Millisecond)
	m.ObserveSign("chain-a", "prevote", 3*time.Millisecond)
	m.ObserveSign("chain-a", "precommit", 20*time.Second) // beyond the last bucket
	m.ObserveReserve("chain-a", 1500*time.Microsecond)
	m.ObserveKeySign("chain-a", "softsign", 150*time.Microsecond)
	m.Refused("chain-a", "regression")
	m.Refused("chain-a", "regression")
	m.Refused("chain-b", "unavailable")
	m.Signed("chain-a", "prevote", 41, 2)
	m.LeaderChanged(false)
	m.LeaderChanged(true)
	m.SetRaft(7, 1234)
	m.SetWatermark("chain-a", 1_000_001, 2, 3)
	m.ValidatorState("chain-a", "tcp://10.0.0.5:26659", StateConnecting)
	m.ValidatorState("chain-a", "tcp://10.0.0.5:26659", StateConnected)
	m.ValidatorState("chain-a", "tcp://10.0.0.6:26659", StateConnecting)
	m.ValidatorState("chain-a", "tcp://10.0.0.6:26659", StateDisconnected)
	m.ValidatorState("chain-a", "tcp://10.0.0.6:26659", StateConnecting)

	s := startServer(t, m, nil)
	got := scrape(t, "http://"+s.Addr()+"/metrics")

	want := map[string]float64{
		`kmsha_sign_duration_seconds_count{chain="chain-a",step="prevote"}`:                       2,
		`kmsha_sign_duration_seconds_sum{chain="chain-a",step="prevote"}`:                         0.005,
		`kmsha_sign_duration_seconds_bucket{chain="chain-a",step="prevote",le="0.001"}`:           0,
		`kmsha_sign_duration_seconds_bucket{chain="chain-a",step="prevote",le="0.0025"}`:          1,
		`kmsha_sign_duration_seconds_bucket{chain="chain-a",step="prevote",le="0.005"}`:           2,
		`kmsha_sign_duration_seconds_bucket{chain="chain-a",step="precommit",le="10"}`:            0,
		`kmsha_sign_duration_seconds_bucket{chain="chain-a",step="precommit",le="+Inf"}`:          1,
		`kmsha_reserve_duration_seconds_count{chain="chain-a"}`:                                   1,
		`kmsha_reserve_duration_seconds_bucket{chain="chain-a",le="0.0025"}`:                      1,
		`kmsha_reserve_duration_seconds_bucket{chain="chain-a",le="0.001"}`:                       0,
		`kmsha_key_sign_duration_seconds_count{backend="softsign",chain="chain-a"}`:               1,
		`kmsha_key_sign_duration_seconds_bucket{backend="softsign",chain="chain-a",le="0.0001"}`:  0,
		`kmsha_key_sign_duration_seconds_bucket{backend="softsign",chain="chain-a",le="0.00025"}`: 1,
		`kmsha_sign_refusals_total{chain="chain-a",reason="regression"}`:                          2,
		`kmsha_sign_refusals_total{chain="chain-b",reason="unavailable"}`:                         1,
		`kmsha_signatures_total{chain="chain-a",step="prevote"}`:                                  1,
		`kmsha_last_signed_height{chain="chain-a",step="prevote"}`:                                41,
		`kmsha_last_signed_round{chain="chain-a",step="prevote"}`:                                 2,
		`kmsha_missed_votes_total{chain="chain-a",step="prevote"}`:                                0,
		`kmsha_leader_changes_total`:                                                              2,
		`kmsha_is_leader`:                                                                         1,
		`kmsha_raft_term`:                                                                         7,
		`kmsha_raft_applied_index`:                                                                1234,
		`kmsha_watermark_height{chain="chain-a"}`:                                                 1_000_001,
		`kmsha_watermark_round{chain="chain-a"}`:                                                  2,
		`kmsha_watermark_step{chain="chain-a"}`:                                                   3,
		`kmsha_validator_connected{addr="tcp://10.0.0.5:26659",chain="chain-a"}`:                  1,
		`kmsha_validator_connected{addr="tcp://10.0.0.6:26659",chain="chain-a"}`:                  0,
		`kmsha_validator_connection_attempts_total{addr="tcp://10.0.0.5:26659",chain="chain-a"}`:  1,
		`kmsha_validator_connection_attempts_total{addr="tcp://10.0.0.6:26659",chain="chain-a"}`:  2,
	}
	for series, v := range want {
		g, ok := got[series]
		if !ok {
			t.Errorf("series %s missing from the scrape", series)
			continue
		}
		if diff := g - v; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("%s = %v, want %v", series, g, v)
		}
	}
	// The registry is our own, but it must still carry the Go and process
	// collectors an operator expects on every exporter.
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing: Go or process collector not registered", name)
		}
	}
}

func TestTwoInstancesDoNotCollide(t *testing.T) {
	// Several nodes in one test process each build their own Metrics; a
	// shared (global) registry would panic on the second registration.
	a, b := New(), New()
	a.Signed("c", "prevote", 1, 0)
	if a.Registry() == b.Registry() {
		t.Fatal("instances share a registry")
	}
	fams, err := b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "kmsha_signatures_total" && len(f.GetMetric()) > 0 {
			t.Fatal("an observation on one instance showed up on the other")
		}
	}
}

func TestNilMetricsIsSafe(t *testing.T) {
	var m *Metrics
	m.ObserveSign("c", "prevote", time.Millisecond)
	m.ObserveReserve("c", time.Millisecond)
	m.ObserveKeySign("c", "softsign", time.Millisecond)
	m.Refused("c", "conflict")
	m.Signed("c", "prevote", 1, 0)
	m.LeaderChanged(true)
	m.SetRaft(1, 2)
	m.SetWatermark("c", 1, 0, 1)
	m.ValidatorState("c", "tcp://x", StateConnected)
	if m.Registry() != nil {
		t.Fatal("nil Metrics returned a registry")
	}

	// The server still serves probes without metrics; /metrics says why
	// it is empty.
	s := startServer(t, nil, nil)
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics with nil Metrics: status %d, want 404", resp.StatusCode)
	}
	if code, _ := get(t, "http://"+s.Addr()+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz with nil Metrics: status %d", code)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestHealthAndReadiness(t *testing.T) {
	var ready error = errors.New("no known leader")
	s := startServer(t, New(), HealthFunc(func() error { return ready }))
	base := "http://" + s.Addr()

	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok" {
		t.Fatalf("/healthz = %d %q, want 200 ok", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: no known leader" {
		t.Fatalf("/readyz = %d %q, want 503 with the reason", code, body)
	}
	ready = errors.New("leader, but validator tcp://10.0.0.5:26659 not connected")
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable ||
		body != "not ready: leader, but validator tcp://10.0.0.5:26659 not connected" {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	// Degraded: still serving (200, a load balancer keeps it), and says why.
	ready = fmt.Errorf("node: %w", Degraded("2 of 3 voters reachable; node3 unreachable"))
	if code, body := get(t, base+"/readyz"); code != http.StatusOK || body != "degraded: 2 of 3 voters reachable; node3 unreachable" {
		t.Fatalf("/readyz = %d %q while degraded, want 200 with the reason", code, body)
	}
	ready = nil
	if code, body := get(t, base+"/readyz"); code != http.StatusOK || body != "ready" {
		t.Fatalf("/readyz = %d %q once ready, want 200 ready", code, body)
	}

	resp, err := http.Post(base+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /readyz = %d, want 405", resp.StatusCode)
	}
}

func TestStartReportsAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Start(ln.Addr().String(), New(), nil, nil)
	if err == nil {
		t.Fatal("Start on a bound address returned nil")
	}
	if !strings.Contains(err.Error(), ln.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("error does not name the address and the cause: %v", err)
	}
}

func TestShutdownStopsServing(t *testing.T) {
	srv, err := Start("127.0.0.1:0", New(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := http.Get("http://" + srv.Addr() + "/healthz"); err == nil {
		t.Fatal("endpoint still answering after shutdown")
	}
}

func BenchmarkObserveSign(b *testing.B) {
	m := New()
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveSign("chain-a", "prevote", time.Millisecond)
		m.Signed("chain-a", "prevote", 41, 2)
	}
}

// TestOperatorMetrics scrapes what the dashboard and alerts read: the
// latest signature per chain and step and its age, missed votes,
// elections, the leader's view of the members and the build.
func TestOperatorMetrics(t *testing.T) {
	m := New()
	before := float64(time.Now().Unix())
	m.Signed("c", "precommit", 10, 0)
	m.Signed("c", "precommit", 14, 1)
	m.Missed("c", "precommit", 3)
	m.Missed("c", "prevote", 0) // nothing to count
	m.SetElections(2)
	m.SetElections(5)
	m.SetElections(5)
	m.SetBuildInfo("v1.2.3")
	m.SetClusterHealth([]MemberHealth{
		{ID: "node1", State: MemberHealthy, LastContactSeconds: 0},
		{ID: "node2", State: MemberHealthy, LastContactSeconds: 0.2, AppliedLag: 1},
		{ID: "node3", State: MemberUnreachable, LastContactSeconds: 12.5, AppliedLag: 40},
		{ID: "node4", State: MemberNonvoter, LastContactSeconds: -1},
	}, 0)
	s := startServer(t, m, nil)
	got := scrape(t, "http://"+s.Addr()+"/metrics")
	want := map[string]float64{
		`kmsha_last_signed_height{chain="c",step="precommit"}`:   14,
		`kmsha_last_signed_round{chain="c",step="precommit"}`:    1,
		`kmsha_missed_votes_total{chain="c",step="precommit"}`:   3,
		`kmsha_raft_elections_total`:                             5,
		`kmsha_build_info{version="v1.2.3"}`:                     1,
		`kmsha_cluster_members{state="healthy"}`:                 2,
		`kmsha_cluster_members{state="unreachable"}`:             1,
		`kmsha_cluster_members{state="nonvoter"}`:                1,
		`kmsha_cluster_fault_tolerance`:                          0,
		`kmsha_raft_member_last_contact_seconds{member="node3"}`: 12.5,
		`kmsha_raft_member_applied_lag{member="node3"}`:          40,
	}
	for series, v := range want {
		if g, ok := got[series]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", series, g, ok, v)
		}
	}
	if _, ok := got[`kmsha_missed_votes_total{chain="c",step="prevote"}`]; ok {
		t.Errorf("a prevote miss series exists without a prevote signed or missed")
	}
	if _, ok := got[`kmsha_raft_member_last_contact_seconds{member="node4"}`]; ok {
		t.Errorf("a member never heard from has a last contact")
	}
	ts := got[`kmsha_last_signature_timestamp_seconds{chain="c",step="precommit"}`]
	if ts < before || ts > float64(time.Now().Unix())+1 {
		t.Errorf("last signature timestamp %v, want now (%v)", ts, before)
	}

	// Leadership lost: a follower cannot know, so the series go away.
	m.SetClusterHealth(nil, 0)
	got = scrape(t, "http://"+s.Addr()+"/metrics")
	for series := range got {
		if strings.HasPrefix(series, "kmsha_cluster_") || strings.HasPrefix(series, "kmsha_raft_member_") {
			t.Errorf("series %s still exported by a follower", series)
		}
	}
}
