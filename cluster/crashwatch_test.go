package cluster

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
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

// A link to the leader that flaps must cost at most one election per
// window: once per silent leader and term, and once per window overall.
func TestStandLimitOncePerLeaderTermAndWindow(t *testing.T) {
	var l standLimit
	const window = 5 * time.Second
	t0 := time.Now()
	steps := []struct {
		leader string
		term   uint64
		at     time.Duration
		want   bool
	}{
		{"A", 3, 0, true},
		{"A", 3, 2 * window, false}, // same leader and term: never twice
		{"C", 4, window / 2, false}, // another leader, inside the window
		{"C", 4, window + time.Millisecond, true},
		{"B", 5, window + time.Second, false},
	}
	for i, s := range steps {
		if got := l.take(s.leader, s.term, window, t0.Add(s.at)); got != s.want {
			t.Errorf("step %d: stand for %s term %d at +%s = %v, want %v", i, s.leader, s.term, s.at, got, s.want)
		}
	}
}

// A follower gives up its turn only for a known other leader or a sign of
// life, not because the term changed: a lagging follower that stood first
// and lost leaves a higher term and no leader.
func TestShouldStand(t *testing.T) {
	since := time.Now()
	before := since.Add(-time.Second)
	cases := []struct {
		name string
		v    watchView
		want bool
	}{
		{"leader silent", watchView{state: raft.Follower, leader: "A", contact: before}, true},
		{"term raised by a lagging candidate, no leader", watchView{state: raft.Follower, contact: before}, true},
		{"another leader elected", watchView{state: raft.Follower, leader: "C", contact: before}, false},
		{"already candidate", watchView{state: raft.Candidate, contact: before}, false},
		{"already leader", watchView{state: raft.Leader, contact: before}, false},
		{"heartbeat or vote granted since", watchView{state: raft.Follower, leader: "A", contact: since.Add(time.Millisecond)}, false},
		{"leader reconnected", watchView{state: raft.Follower, leader: "A", contact: before, open: 1}, false},
	}
	for _, c := range cases {
		if got := shouldStand(c.v, "A", since); got != c.want {
			t.Errorf("%s: shouldStand = %v, want %v", c.name, got, c.want)
		}
	}
}

// The election request reaches raft only while the follower still has
// reason to stand, checked right before the hand-over, and only when raft
// takes it at once.
func TestTimeoutNowRechecksBeforeInjecting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &authTransport{ctx: ctx, consume: make(chan raft.RPC)}
	got := make(chan raft.RPC, 1)
	go func() {
		for rpc := range tr.consume {
			got <- rpc
			rpc.Respond(&raft.TimeoutNowResponse{}, nil)
		}
	}()
	defer close(tr.consume)

	if sent, err := tr.timeoutNow(func() bool { return false }, time.Second); sent || err != nil {
		t.Fatalf("no longer a silent leader's follower: sent %v err %v, want nothing sent", sent, err)
	}
	select {
	case <-got:
		t.Fatal("raft got TimeoutNow though the check failed")
	case <-time.After(50 * time.Millisecond):
	}
	if sent, err := tr.timeoutNow(func() bool { return true }, time.Second); !sent || err != nil {
		t.Fatalf("still a silent leader's follower: sent %v err %v, want sent", sent, err)
	}
	if rpc := <-got; rpc.Command == nil {
		t.Fatal("raft got an empty RPC")
	}

	busy := &authTransport{ctx: ctx, consume: make(chan raft.RPC)}
	start := time.Now()
	if sent, err := busy.timeoutNow(func() bool { return true }, 30*time.Millisecond); sent || err != nil {
		t.Fatalf("raft never free: sent %v err %v, want a give-up", sent, err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("gave up after %s, want about 30ms", took)
	}
}
