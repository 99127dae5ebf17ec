package cluster

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// seed registers every member at this binary's level and gives each chain
// the empty watermark, as a started cluster with --allow-fresh-state does.
func seed(t *testing.T, leader *Node, members []string, chains ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range members {
		if err := leader.SetMember(ctx, id, id+":api", fsm.Level); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range chains {
		if _, err := leader.Import(ctx, fsm.Import{ChainID: c, Source: "fresh"}); err != nil {
			t.Fatal(err)
		}
	}
}

// startThree starts a, b and c in memory, a leading; configure, if given,
// adjusts each node's config first.
func startThree(t *testing.T, configure ...func(*Config)) []*memNode {
	t.Helper()
	dir := t.TempDir()
	var ms []*memNode
	var servers []Server
	for _, id := range []string{"a", "b", "c"} {
		m := &memNode{cfg: Config{NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: id, Logger: quiet,
			HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond,
			LeaderLeaseTimeout: 125 * time.Millisecond, ApplyTimeout: 500 * time.Millisecond}}
		for _, c := range configure {
			c(&m.cfg)
		}
		ms = append(ms, m)
		servers = append(servers, Server{ID: id, Address: id})
	}
	if err := Bootstrap(ms[0].cfg, servers); err != nil {
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
			if m.node != nil {
				m.node.Shutdown()
			}
		}
	})
	link(ms...)
	waitLeader(t, ms[0])
	return ms
}

func leaderOf(t *testing.T, ms []*memNode) *memNode {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, m := range ms {
			if m.node != nil && m.node.IsLeader() && m.node.termReady.Load() {
				return m
			}
		}
	}
	t.Fatal("no leader")
	return nil
}

func TestTransferRemoveAndLevels(t *testing.T) {
	ms := startThree(t)
	a := ms[0]
	ctx := context.Background()
	// Import needs every member to have registered its level.
	if _, err := a.node.Import(ctx, fsm.Import{ChainID: "x"}); err == nil || !strings.Contains(err.Error(), "has not registered") {
		t.Fatalf("import with unregistered members: %v", err)
	}
	seed(t, a.node, []string{"a", "b", "c"}, "x")

	if err := a.node.TransferLeadershipTo("c"); err != nil {
		t.Fatal(err)
	}
	c := leaderOf(t, ms)
	if c.cfg.NodeID != "c" {
		t.Fatalf("leadership went to %s, want c", c.cfg.NodeID)
	}
	if err := c.node.Remove(ctx, "c"); !errors.Is(err, ErrLeaderItself) {
		t.Fatalf("leader removing itself: %v", err)
	}
	if err := a.node.Remove(ctx, "b"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower removing: %v", err)
	}
	if err := c.node.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	members, _ := c.node.Members()
	if len(members) != 2 {
		t.Fatalf("members after remove: %+v", members)
	}
	if _, ok := c.node.FSM().Member("b"); ok {
		t.Fatal("removed member's record kept")
	}
	if err := c.node.Remove(ctx, "b"); err == nil {
		t.Fatal("removing a non-member succeeded")
	}
	// Two voters left: both are needed, and the cluster still commits.
	if d, err := c.node.Reserve(ctx, "x", fsm.HRS{Height: 1, Step: fsm.StepPrevote}, []byte{1}); err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("reserve after remove: %v %v", d.Outcome, err)
	}
}

func TestReadIndexOnlyOnConfirmedLeader(t *testing.T) {
	ms := startThree(t)
	a := ms[0]
	ctx := context.Background()
	seed(t, a.node, []string{"a", "b", "c"}, "x")
	if _, err := ms[1].node.ReadIndex(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower read index: %v", err)
	}
	d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: 5, Step: fsm.StepPrevote}, []byte{1})
	if err != nil || d.Outcome != fsm.Allow {
		t.Fatal(err)
	}
	idx, err := a.node.ReadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A follower that waits for the index sees the write.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := ms[1].node.WaitApplied(wctx, idx); err != nil {
		t.Fatal(err)
	}
	if w, _ := ms[1].node.FSM().Watermark("x"); w.Height != 5 {
		t.Fatalf("follower after WaitApplied: %s", w.HRS)
	}
	// A leader cut off from its quorum cannot confirm it leads.
	a.trans.DisconnectAll()
	ms[1].trans.Disconnect("a")
	ms[2].trans.Disconnect("a")
	// Answers already on their way when the link was cut (a pipelined
	// append) may still arrive and count as a contact made before the cut;
	// the cut-off leader is the one a heartbeat interval later.
	time.Sleep(2 * a.cfg.HeartbeatTimeout)
	rctx, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := a.node.ReadIndex(rctx); err == nil {
		t.Fatal("an isolated leader confirmed a linearizable read")
	}
}

// slowFSM delays every apply while slow is set, as a loaded or paused
// replica does.
type slowFSM struct {
	raft.FSM
	slow *atomic.Bool
}

func (s slowFSM) Apply(l *raft.Log) any {
	if s.slow.Load() {
		time.Sleep(100 * time.Millisecond)
	}
	return s.FSM.Apply(l)
}

// TestWaitAppliedWaitsForTheStateMachine: raft counts an entry as applied
// once it has queued it for the state machine, so a read that waited only
// for raft's applied index could still miss it (the 1 in 70 failure of
// TestReadIndexOnlyOnConfirmedLeader). With b's state machine slowed down
// that race is certain.
func TestWaitAppliedWaitsForTheStateMachine(t *testing.T) {
	var slow atomic.Bool
	ms := startThree(t, func(c *Config) {
		if c.NodeID == "b" {
			c.WrapFSM = func(f raft.FSM) raft.FSM { return slowFSM{FSM: f, slow: &slow} }
		}
	})
	a, b := ms[0], ms[1]
	ctx := context.Background()
	seed(t, a.node, []string{"a", "b", "c"}, "x")
	slow.Store(true)
	for h := int64(1); h <= 3; h++ {
		if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: h, Step: fsm.StepPrevote}, []byte{byte(h)}); err != nil || d.Outcome != fsm.Allow {
			t.Fatalf("reserve %d: %v %v", h, d.Outcome, err)
		}
	}
	idx, err := a.node.ReadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// b learns the commit index with the next heartbeat or entry.
	if err := a.node.Nudge(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.node.WaitApplied(wctx, idx); err != nil {
		t.Fatal(err)
	}
	if w, _ := b.node.FSM().Watermark("x"); w.Height != 3 {
		t.Fatalf("b after WaitApplied(%d): %s (raft's applied index %d)", idx, w.HRS, b.node.raft.AppliedIndex())
	}
}

// TestWaitAppliedAfterRestoringASnapshot: a node restarted from a
// snapshot holds everything up to the snapshot's index, though its state
// machine applied none of those entries one by one.
func TestWaitAppliedAfterRestoringASnapshot(t *testing.T) {
	ms := startThree(t)
	a, b := ms[0], ms[1]
	ctx := context.Background()
	seed(t, a.node, []string{"a", "b", "c"}, "x")
	for h := int64(1); h <= 5; h++ {
		if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: h, Step: fsm.StepPrevote}, []byte{byte(h)}); err != nil || d.Outcome != fsm.Allow {
			t.Fatalf("reserve %d: %v %v", h, d.Outcome, err)
		}
	}
	idx, err := a.node.ReadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.node.Nudge(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.node.WaitApplied(wctx, idx); err != nil {
		t.Fatal(err)
	}
	if err := b.node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	b.node.Shutdown()
	// b restarts alone: it restores its snapshot and hears from no leader.
	startMem(t, b)
	if w, _ := b.node.FSM().Watermark("x"); w.Height != 5 {
		t.Fatalf("b restored %s", w.HRS)
	}
	rctx, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if err := b.node.WaitApplied(rctx, b.node.raft.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverSingleKeepsWatermarks(t *testing.T) {
	ms := startThree(t)
	a := ms[0]
	ctx := context.Background()
	seed(t, a.node, []string{"a", "b", "c"}, "x")
	for h := int64(1); h <= 20; h++ {
		if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: h, Step: fsm.StepPrevote}, []byte{byte(h)}); err != nil || d.Outcome != fsm.Allow {
			t.Fatalf("reserve %d: %v", h, err)
		}
	}
	if err := a.node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	for h := int64(21); h <= 25; h++ {
		a.node.Reserve(ctx, "x", fsm.HRS{Height: h, Step: fsm.StepPrevote}, []byte{byte(h)})
	}
	// b and c are lost for good.
	for _, m := range ms {
		m.node.Shutdown()
		m.node = nil
	}
	ins, err := Inspect(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if w := ins.State.Chains["x"]; w.Height != 25 || len(ins.Servers) != 3 {
		t.Fatalf("inspect: watermark %s, %d servers", w.HRS, len(ins.Servers))
	}
	rec, err := RecoverSingle(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Servers) != 1 || rec.State.Chains["x"].Height != 25 {
		t.Fatalf("recover: %+v", rec)
	}
	startMem(t, a)
	waitLeader(t, a)
	w, _ := a.node.FSM().Watermark("x")
	if w.Height != 25 {
		t.Fatalf("after recovery the watermark is %s, want height 25", w.HRS)
	}
	if d, _ := a.node.Reserve(ctx, "x", fsm.HRS{Height: 25, Step: fsm.StepPrevote}, []byte{99}); d.Outcome != fsm.Refuse {
		t.Fatal("recovered node allowed a conflicting signature")
	}
	if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: 26, Step: fsm.StepPrevote}, []byte{26}); err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("recovered single node does not commit: %v", err)
	}
}

// TestReserveWaitsOutAFailedTransfer: while a leadership transfer is in
// progress raft refuses new entries; a reservation waits for the outcome
// instead of failing the validator's vote (which CometBFT never retries).
func TestReserveWaitsOutAFailedTransfer(t *testing.T) {
	ms := startThree(t)
	a := ms[0]
	ctx := context.Background()
	seed(t, a.node, []string{"a", "b", "c"}, "x")
	// c cannot be reached, so a transfer to it runs until it times out.
	a.trans.Disconnect("c")
	ms[1].trans.Disconnect("c")
	ms[2].trans.DisconnectAll()
	done := make(chan error, 1)
	go func() { done <- a.node.TransferLeadershipTo("c") }()
	time.Sleep(20 * time.Millisecond)
	d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: 1, Step: fsm.StepPrevote}, []byte{1})
	if err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("reserve during a transfer: %v %v", d.Outcome, err)
	}
	if err := <-done; err == nil {
		t.Fatal("the transfer to an unreachable node succeeded")
	}
}

// TestReserveBeforeEveryMemberRegistered: until every member registered
// level 1 the leader writes version 1 reservations (what members of the
// first release can apply), but it still refuses a chain without a
// watermark itself; afterwards it writes version 2.
func TestReserveBeforeEveryMemberRegistered(t *testing.T) {
	ms := startThree(t)
	a := ms[0]
	ctx := context.Background()
	if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: 1, Step: fsm.StepPrevote}, []byte{1}); err != nil || d.Reason != fsm.ReasonNoState {
		t.Fatalf("unregistered members, no watermark: %v %v", d.Outcome, err)
	}
	if a.node.FSM().MaxLevel() != 0 {
		t.Fatal("a refused local check wrote an entry")
	}
	seed(t, a.node, []string{"a", "b", "c"}, "x")
	if d, err := a.node.Reserve(ctx, "x", fsm.HRS{Height: 1, Step: fsm.StepPrevote}, []byte{1}); err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("after import: %v %v", d.Outcome, err)
	}
	if a.node.FSM().MaxLevel() != 1 {
		t.Fatalf("max level %d, want 1", a.node.FSM().MaxLevel())
	}
}
