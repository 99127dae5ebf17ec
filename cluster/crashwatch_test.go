package cluster

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// startThreeTLS starts A, B and C over the real TLS transport with
// heartbeat timeout hb and waits until A leads and B and C follow it.
func startThreeTLS(t *testing.T, hb time.Duration) (A, B, C *tlsMember) {
	t.Helper()
	p := newAuthPKI(t)
	dir := t.TempDir()
	var ms []*tlsMember
	var servers []Server
	for _, id := range []string{"A", "B", "C"} {
		m := &tlsMember{cfg: Config{NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: freeTCP(t), Logger: quiet,
			HeartbeatTimeout: hb, ElectionTimeout: hb, LeaderLeaseTimeout: hb / 2, ApplyTimeout: time.Second,
			TLS: p.tls(t, p.files(t, id, ""))}}
		ms = append(ms, m)
		servers = append(servers, Server{ID: id, Address: m.cfg.BindAddr})
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.stop()
		}
	})
	A, B, C = ms[0], ms[1], ms[2]
	if err := Bootstrap(A.cfg, servers); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*tlsMember{B, C} {
		if err := MarkJoined(m.cfg, time.Second, []string{"A", "B", "C"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range ms {
		m.start(t)
	}
	waitTrue(t, "A to lead", 10*time.Second, func() bool { return A.node.termReady.Load() })
	waitTrue(t, "B and C to follow A", 5*time.Second, func() bool {
		_, lb := B.node.raft.LeaderWithID()
		_, lc := C.node.raft.LeaderWithID()
		return lb == "A" && lc == "A"
	})
	return A, B, C
}

// A leader that dies closes its raft connections; its followers elect a new
// leader two fifths of a heartbeat timeout later (three fifths for the
// second in turn) instead of after one to three heartbeat timeouts.
func TestCrashedLeaderReplacedBeforeHeartbeatTimeout(t *testing.T) {
	const hb = 2 * time.Second
	A, B, C := startThreeTLS(t, hb)
	term := B.node.raft.CurrentTerm()

	// As far as B and C can tell, A's process died: its connections close
	// and nothing more comes from it.
	crashed := time.Now()
	A.stop()
	waitTrue(t, "B or C to lead", hb, func() bool { return B.node.termReady.Load() || C.node.termReady.Load() })
	took := time.Since(crashed)
	if took >= 3*hb/4 {
		t.Fatalf("a new leader after %s; the crash watch should act within about %s", took, 2*hb/5)
	}
	if got := B.node.raft.CurrentTerm(); got != term+1 {
		t.Errorf("term %d -> %d: want one election", term, got)
	}
	t.Logf("new leader %s after %s (heartbeat timeout %s)", map[bool]string{true: "B", false: "C"}[B.node.IsLeader()], took.Round(time.Millisecond), hb)
}

// A live leader whose connections to a follower all close reconnects with
// its next heartbeat: the follower must not start an election.
func TestLiveLeaderLosingItsConnectionsKeepsItsTerm(t *testing.T) {
	const hb = 500 * time.Millisecond
	A, B, _ := startThreeTLS(t, hb)
	term := A.node.raft.CurrentTerm()
	bt := B.node.trans.(*authTransport)
	var seen atomic.Int32
	watch := *bt.gone.Load()
	counted := func(id string) { seen.Add(1); watch(id) }
	bt.gone.Store(&counted)
	for i := 0; i < 5; i++ {
		bt.mu.Lock()
		p := bt.peers["A"]
		bt.mu.Unlock()
		if p == nil {
			t.Fatal("B has no inbound transport for A")
		}
		p.trans.CloseStreams()
		time.Sleep(2 * hb)
	}
	if !A.node.IsLeader() || A.node.raft.CurrentTerm() != term || B.node.raft.CurrentTerm() != term {
		t.Fatalf("after B lost A's connections: A leader %v, term %d (A) %d (B), want %d", A.node.IsLeader(),
			A.node.raft.CurrentTerm(), B.node.raft.CurrentTerm(), term)
	}
	if seen.Load() == 0 {
		t.Fatal("B never saw all of A's connections closed: the test proves nothing")
	}
	t.Logf("B saw A's last connection close %d times and kept following it", seen.Load())
}
