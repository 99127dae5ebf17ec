package cluster

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// applyGate holds a node's FSM applies while closed, as a slow disk or a
// paused process would: raft still appends and acknowledges entries, the
// state machine just has not applied them yet.
type applyGate struct {
	mu   sync.Mutex
	held bool
	open chan struct{}
}

func (g *applyGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.held {
		g.held, g.open = true, make(chan struct{})
	}
}

func (g *applyGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held {
		g.held = false
		close(g.open)
	}
}

func (g *applyGate) wait() {
	g.mu.Lock()
	ch := g.open
	held := g.held
	g.mu.Unlock()
	if held {
		<-ch
	}
}

// gatedFSM applies through the gate.
type gatedFSM struct {
	raft.FSM
	gate *applyGate
}

func (g gatedFSM) Apply(l *raft.Log) any {
	g.gate.wait()
	return g.FSM.Apply(l)
}

// leadingView is what a node's leadership callback saw when it ran.
type leadingView struct {
	watermark fsm.Watermark
	applied   uint64
}

// TestNewLeaderServesOnlyAfterBarrier is invariant 3's "only after
// raft.Barrier returned on its new term": a follower whose state machine
// lags (its applies are held) is elected. Until it has applied everything
// the old leader committed, its leadership callbacks (which dial the
// validators) must not run and a linearizable read must be refused with
// ErrNotReady; once the applies go through, the callbacks see the old
// leader's last watermark and the read is answered.
func TestNewLeaderServesOnlyAfterBarrier(t *testing.T) {
	dir := t.TempDir()
	gate := &applyGate{}
	views := make(chan leadingView, 4)
	var ms []*memNode
	var servers []Server
	for _, id := range []string{"a", "b", "c"} {
		m := &memNode{cfg: Config{NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: id, Logger: quiet,
			// Slower than the other tests' timings: leadership must stay
			// put while the test watches c (under -race on a busy machine
			// 100 ms elections flap).
			HeartbeatTimeout: 400 * time.Millisecond, ElectionTimeout: 400 * time.Millisecond,
			LeaderLeaseTimeout: 200 * time.Millisecond, ApplyTimeout: time.Second}}
		ms = append(ms, m)
		servers = append(servers, Server{ID: id, Address: id})
	}
	a, c := ms[0], ms[2]
	c.cfg.WrapFSM = func(f raft.FSM) raft.FSM { return gatedFSM{FSM: f, gate: gate} }
	c.cfg.Leading = []func(context.Context){func(context.Context) {
		// c.node is set before c can win an election (it needs the
		// transfer below).
		w, _ := c.node.FSM().Watermark("x")
		views <- leadingView{watermark: w, applied: c.node.Raft().AppliedIndex()}
	}}
	if err := Bootstrap(a.cfg, servers); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if err := MarkJoined(m.cfg, time.Second, nil); err != nil {
			t.Fatal(err)
		}
		startMem(t, m)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.node.Shutdown()
		}
	})
	// Runs before the shutdowns: a held FSM would keep raft from stopping.
	t.Cleanup(gate.release)
	link(ms...)
	waitLeader(t, a)

	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if err := a.node.SetMember(ctx, id, id+":api", fsm.Level); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.node.Import(ctx, fsm.Import{ChainID: "x", Source: "fresh"}); err != nil {
		t.Fatal(err)
	}

	// From here c acknowledges entries but does not apply them.
	gate.hold()
	const top = 5
	for h := int64(1); h <= top; h++ {
		if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: h, Step: fsm.StepPrecommit}, []byte{byte(h)}); err != nil || d.Outcome != fsm.Allow {
			t.Fatalf("reserve %d on the old leader: %v %v", h, d.Outcome, err)
		}
	}
	committed := a.node.Raft().LastIndex()
	for deadline := time.Now().Add(5 * time.Second); c.node.Raft().LastIndex() < committed; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("c holds log index %d, want %d", c.node.Raft().LastIndex(), committed)
		}
	}
	if w, _ := c.node.FSM().Watermark("x"); w.Height >= top {
		t.Fatalf("c applied height %d although its applies are held: the test proves nothing", w.Height)
	}

	if err := a.node.TransferLeadershipTo("c"); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, c)
	// c leads but has not applied the old term's entries: it must neither
	// serve nor answer a linearizable read.
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		select {
		case v := <-views:
			t.Fatalf("leadership callback ran before the barrier: it saw watermark %s at applied index %d, the old leader committed up to index %d (height %d)",
				v.watermark.HRS, v.applied, committed, top)
		default:
		}
		if !c.node.IsLeader() {
			t.Fatal("c lost leadership during the test")
		}
		if _, err := c.node.ReadIndex(ctx); !errors.Is(err, ErrNotReady) {
			t.Fatalf("ReadIndex on a leader whose term has no committed and applied entry yet: %v, want ErrNotReady", err)
		}
	}

	gate.release()
	select {
	case v := <-views:
		if v.watermark.Height != top || v.applied < committed {
			t.Fatalf("leadership callback saw watermark %s at applied index %d; the old leader committed height %d up to index %d",
				v.watermark.HRS, v.applied, top, committed)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the leadership callback did not run after the applies went through")
	}
	idx, err := c.node.ReadIndex(ctx)
	if err != nil {
		t.Fatalf("ReadIndex after the barrier: %v", err)
	}
	if idx <= committed {
		t.Fatalf("ReadIndex %d does not cover the new term's barrier (old leader's last index %d)", idx, committed)
	}
}
