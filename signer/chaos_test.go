package signer_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

var (
	chaosSeed     = flag.Int64("chaos.seed", 0, "seed of the chaos schedule (0: time-based)")
	chaosDuration = flag.Duration("chaos.duration", 8*time.Second, "how long the chaos test runs")
)

// history records everything the invariants are checked against.
type history struct {
	mu       sync.Mutex
	releases []signer.Release
	// violations found while running (leadership invariant).
	violations []string
	// reserved are the reservations each node's raft committed while it
	// led: a release must be backed by one of its own node.
	reserved map[reservation]bool
}

// reservation is one committed and allowed Reserve, keyed by the node
// whose raft committed it.
type reservation struct {
	node, chain string
	hrs         fsm.HRS
	signBytes   string
}

func (h *history) reserve(r reservation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reserved == nil {
		h.reserved = map[reservation]bool{}
	}
	h.reserved[r] = true
}

// leaderReserver records every reservation the node's cluster.Reserve
// allowed. cluster.Reserve returns a decision only once raft committed the
// entry on this node, which only a leader does: a release without a
// matching record came from a node that answered without leading.
type leaderReserver struct {
	signer.Reserver
	node string
	h    *history
}

func (l leaderReserver) Reserve(ctx context.Context, chainID string, hrs fsm.HRS, sb []byte) (fsm.Decision, error) {
	d, err := l.Reserver.Reserve(ctx, chainID, hrs, sb)
	if err == nil && d.Outcome != fsm.Refuse {
		l.h.reserve(reservation{node: l.node, chain: chainID, hrs: hrs, signBytes: string(d.SignBytes)})
	}
	return d, err
}

func (h *history) release(r signer.Release) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releases = append(h.releases, r)
}

func (h *history) violate(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.violations = append(h.violations, fmt.Sprintf(format, args...))
}

// monotonicFSM wraps the real FSM and checks, on every apply, that no
// chain's watermark moves backwards within one incarnation of a node.
type monotonicFSM struct {
	*fsm.FSM
	node string
	h    *history
}

func (m *monotonicFSM) Apply(l *raft.Log) any {
	before := m.FSM.Watermarks()
	res := m.FSM.Apply(l)
	for id, w := range m.FSM.Watermarks() {
		if w.HRS.Compare(before[id].HRS) < 0 {
			m.h.violate("%s: watermark of %s moved back from %s to %s at index %d", m.node, id, before[id].HRS, w.HRS, l.Index)
		}
	}
	return res
}

type testNode struct {
	id     string
	addr   raft.ServerAddress
	dir    string
	trans  *raft.InmemTransport
	node   *cluster.Node
	fsm    *fsm.FSM
	signer *signer.Signer
	up     bool
	// cut: this node is partitioned from the others.
	cut bool
}

type testCluster struct {
	t     *testing.T
	h     *history
	key   keys.Signer
	nodes []*testNode
	log   *slog.Logger
	mu    sync.Mutex // guards topology changes against the driver
}

var chains = []string{"chain-a", "chain-b"}

func (c *testCluster) cfg(n *testNode) cluster.Config {
	return cluster.Config{
		NodeID: n.id, DataDir: n.dir, BindAddr: string(n.addr),
		HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
		ApplyTimeout: 500 * time.Millisecond,
		// Small thresholds so snapshots and restores happen during the run.
		SnapshotThreshold: 64, SnapshotInterval: 200 * time.Millisecond,
		Logger: c.log.With("node_id", n.id), Transport: n.trans,
		WrapFSM: func(f raft.FSM) raft.FSM {
			return &monotonicFSM{FSM: f.(*fsm.FSM), node: n.id, h: c.h}
		},
	}
}

func (c *testCluster) start(n *testNode) {
	c.t.Helper()
	_, n.trans = raft.NewInmemTransport(n.addr)
	n.fsm = fsm.New()
	// The node is known only once Open returns; its first term starts
	// after an election, and the pointer makes that hand-off race-free.
	var self atomic.Pointer[cluster.Node]
	id := n.id
	cfg := c.cfg(n)
	cfg.Leading = []func(context.Context){func(ctx context.Context) {
		node := self.Load()
		if node == nil {
			c.h.violate("%s: leadership callback ran before the node was open", id)
			return
		}
		go seedCluster(ctx, node, c.nodes)
		leadingCheck(ctx, c.h, id, node)
	}}
	var err error
	n.node, err = cluster.Open(cfg, n.fsm)
	self.Store(n.node)
	if err != nil {
		c.t.Fatalf("open %s: %v", n.id, err)
	}
	n.signer, err = signer.New(signer.Config{
		NodeID: n.id, Reserver: leaderReserver{Reserver: n.node, node: n.id, h: c.h}, State: n.fsm,
		Keys:      map[string]keys.Signer{chains[0]: c.key, chains[1]: c.key},
		Logger:    c.log.With("node_id", n.id),
		OnRelease: c.h.release,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	n.up = true
	c.rewire()
}

// seedCluster registers the members and gives each chain the empty
// watermark once, as a node started with --allow-fresh-state does; until it
// has, requests are refused for want of state.
func seedCluster(ctx context.Context, node *cluster.Node, nodes []*testNode) {
	for _, n := range nodes {
		if _, ok := node.FSM().Member(n.id); !ok {
			if node.SetMember(ctx, n.id, n.id, fsm.Level) != nil {
				return
			}
		}
	}
	for _, ch := range chains {
		if _, ok := node.FSM().Watermark(ch); !ok {
			if _, err := node.Import(ctx, fsm.Import{ChainID: ch, Source: "fresh"}); err != nil {
				return
			}
		}
	}
}

// leadingCheck is invariant 3 at the leadership callback: serving starts
// only on a leader (after Barrier, which cluster guarantees before calling)
// and stops promptly when leadership is lost.
func leadingCheck(ctx context.Context, h *history, id string, node *cluster.Node) {
	if !node.IsLeader() {
		h.violate("%s: leadership callback started on a non-leader", id)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var notLeaderSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if node.IsLeader() {
				notLeaderSince = time.Time{}
				continue
			}
			if notLeaderSince.IsZero() {
				notLeaderSince = time.Now()
			} else if time.Since(notLeaderSince) > time.Second {
				h.violate("%s: still serving validators 1s after losing leadership", id)
				return
			}
		}
	}
}

// rewire connects every pair of running, uncut nodes and disconnects the rest.
func (c *testCluster) rewire() {
	for _, a := range c.nodes {
		if a.trans == nil {
			continue
		}
		a.trans.DisconnectAll()
		for _, b := range c.nodes {
			if a == b || !a.up || !b.up || a.cut || b.cut {
				continue
			}
			a.trans.Connect(b.addr, b.trans)
		}
	}
}

func (c *testCluster) stop(n *testNode) {
	if !n.up {
		return
	}
	n.up = false
	c.rewire()
	if err := n.node.Shutdown(); err != nil {
		c.t.Logf("shutdown %s: %v", n.id, err)
	}
}

func (c *testCluster) leader() *testNode {
	for _, n := range c.nodes {
		if n.up && n.node.IsLeader() {
			return n
		}
	}
	return nil
}

func newTestCluster(t *testing.T, h *history) *testCluster {
	priv := ed25519.GenPrivKey()
	c := &testCluster{t: t, h: h, key: file.New(priv),
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if testing.Verbose() {
		c.log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	var servers []cluster.Server
	for i := 1; i <= 3; i++ {
		n := &testNode{id: fmt.Sprintf("node%d", i), addr: raft.ServerAddress(fmt.Sprintf("node%d", i)),
			dir: filepath.Join(t.TempDir(), fmt.Sprint(i))}
		c.nodes = append(c.nodes, n)
		servers = append(servers, cluster.Server{ID: n.id, Address: string(n.addr)})
	}
	for _, n := range c.nodes {
		if err := cluster.Bootstrap(c.cfg(n), servers); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		c.start(n)
	}
	return c
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// validatorSim plays one CometBFT node driving consensus for a chain. Two
// of them per chain share the key, as a primary and a misconfigured backup
// would, and may ask for different blocks at the same position.
type validatorSim struct {
	chain string
	rng   *rand.Rand
	h     int64
	r     int32
}

func (v *validatorSim) next() []privvalproto.Message {
	// Mostly advance; sometimes start a new round or stay, so requests
	// repeat, race and conflict.
	switch x := v.rng.Intn(10); {
	case x < 6:
		v.h++
		v.r = 0
	case x < 8:
		v.r++
	}
	block := byte(1 + v.rng.Intn(2))
	ts := time.Unix(1_700_000_000+int64(v.rng.Intn(3)), 0).UTC()
	bid := cmtproto.BlockID{Hash: bytes.Repeat([]byte{block}, 32),
		PartSetHeader: cmtproto.PartSetHeader{Total: 1, Hash: bytes.Repeat([]byte{block}, 32)}}
	prop := &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: v.h, Round: v.r, PolRound: -1, BlockID: bid, Timestamp: ts}
	pv := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: v.h, Round: v.r, BlockID: bid, Timestamp: ts}
	pc := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: v.h, Round: v.r, BlockID: bid, Timestamp: ts, Extension: []byte("ext")}
	return []privvalproto.Message{
		{Sum: &privvalproto.Message_SignProposalRequest{SignProposalRequest: &privvalproto.SignProposalRequest{Proposal: prop, ChainId: v.chain}}},
		{Sum: &privvalproto.Message_SignVoteRequest{SignVoteRequest: &privvalproto.SignVoteRequest{Vote: pv, ChainId: v.chain}}},
		{Sum: &privvalproto.Message_SignVoteRequest{SignVoteRequest: &privvalproto.SignVoteRequest{Vote: pc, ChainId: v.chain}}},
	}
}

// TestChaosInvariants runs three real raft nodes (bolt stores, snapshots,
// in-memory transport so links can be cut) under a seeded random schedule
// of leader kills, restarts and partitions, while simulated validators
// send sign requests, and checks DESIGN.md's invariants 1 to 3 over the
// whole history. Reproduce a failure with -chaos.seed.
func TestChaosInvariants(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("chaos seed %d (rerun with -chaos.seed=%d)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	h := &history{}
	c := newTestCluster(t, h)
	defer func() {
		for _, n := range c.nodes {
			c.stop(n)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), *chaosDuration)
	defer cancel()
	var sent, answered, refusedFollower atomic.Int64
	var wg sync.WaitGroup
	for i, ch := range chains {
		for j := 0; j < 2; j++ {
			sim := &validatorSim{chain: ch, rng: rand.New(rand.NewSource(seed + int64(10*i+j)))}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					for _, req := range sim.next() {
						c.mu.Lock()
						var target *testNode
						// Usually the leader (as the transport would), sometimes
						// any node: a follower must never sign.
						if sim.rng.Intn(5) == 0 {
							target = c.nodes[sim.rng.Intn(len(c.nodes))]
						} else {
							target = c.leader()
						}
						var sgn *signer.Signer
						var wasLeader bool
						if target != nil && target.up {
							sgn, wasLeader = target.signer, target.node.IsLeader()
						}
						c.mu.Unlock()
						if sgn == nil {
							time.Sleep(5 * time.Millisecond)
							continue
						}
						sent.Add(1)
						resp := sgn.Handle(ctx, sim.chain, req)
						if respErr(resp) == nil {
							answered.Add(1)
						} else if !wasLeader {
							refusedFollower.Add(1)
						}
					}
				}
			}()
		}
	}

	// The chaos schedule.
	actions := 0
	for ctx.Err() == nil {
		time.Sleep(time.Duration(150+rng.Intn(350)) * time.Millisecond)
		c.mu.Lock()
		switch a := rng.Intn(6); {
		case a <= 1: // kill the leader, bring it back later
			if l := c.leader(); l != nil {
				c.stop(l)
			}
		case a == 2: // partition a random node (maybe the leader)
			n := c.nodes[rng.Intn(len(c.nodes))]
			n.cut = true
			c.rewire()
		case a == 3: // heal every partition
			for _, n := range c.nodes {
				n.cut = false
			}
			c.rewire()
		default: // restart every stopped node
			for _, n := range c.nodes {
				if !n.up {
					c.start(n)
				}
			}
		}
		actions++
		c.mu.Unlock()
	}
	wg.Wait()

	// Heal everything, let the cluster converge, then check.
	c.mu.Lock()
	for _, n := range c.nodes {
		n.cut = false
		if !n.up {
			c.start(n)
		}
	}
	c.rewire()
	c.mu.Unlock()
	waitConverged(t, c)

	t.Logf("%d chaos actions, %d requests, %d signatures released, %d refused on non-leaders",
		actions, sent.Load(), answered.Load(), refusedFollower.Load())
	checkInvariants(t, c, h)
	if answered.Load() < 50 {
		t.Fatalf("only %d signatures in %s: the cluster made too little progress to prove anything", answered.Load(), *chaosDuration)
	}
}

func respErr(m privvalproto.Message) *privvalproto.RemoteSignerError {
	switch r := m.Sum.(type) {
	case *privvalproto.Message_SignedVoteResponse:
		return r.SignedVoteResponse.Error
	case *privvalproto.Message_SignedProposalResponse:
		return r.SignedProposalResponse.Error
	}
	return &privvalproto.RemoteSignerError{Description: "unexpected response"}
}

func waitConverged(t *testing.T, c *testCluster) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var want uint64
	for time.Now().Before(deadline) {
		// Followers learn the commit index from the next append, so each
		// round writes a barrier and checks the index of the round before.
		l := c.leader()
		if l != nil && l.node.Raft().Barrier(time.Second).Error() == nil {
			ok := want > 0
			for _, n := range c.nodes {
				if n.node.Raft().AppliedIndex() < want {
					ok = false
				}
			}
			if ok {
				return
			}
			want = l.node.Raft().AppliedIndex()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("cluster did not converge within 10s after healing")
}

func checkInvariants(t *testing.T, c *testCluster, h *history) {
	t.Helper()
	for _, p := range historyProblems(c, h) {
		t.Error(p)
	}
}

// historyProblems checks DESIGN.md's invariants 1 to 3 over a run's
// history and the nodes' final state, and lists every breach.
func historyProblems(c *testCluster, h *history) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var problems []string
	errorf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	problems = append(problems, h.violations...)
	type pos struct {
		chain string
		hrs   fsm.HRS
	}
	byPos := map[pos][]byte{}
	maxHRS := map[string]fsm.HRS{}
	for _, r := range h.releases {
		p := pos{r.ChainID, r.HRS}
		// Invariant 1: one message per position, whoever signed it. AllowStored
		// signs the stored bytes, so even a timestamp-only retry repeats them.
		if prev, ok := byPos[p]; ok && !bytes.Equal(prev, r.SignBytes) {
			errorf("DOUBLE SIGN: %s %s signed over two different messages", r.ChainID, r.HRS)
		}
		byPos[p] = r.SignBytes
		// Invariant 2 and 3: released only by the node whose raft committed
		// the reservation, as leader; a follower, or a leader that lost its
		// lease, never answers from its local state.
		if !h.reserved[reservation{node: r.NodeID, chain: r.ChainID, hrs: r.HRS, signBytes: string(r.SignBytes)}] {
			errorf("%s released %s %s without a reservation it committed as leader", r.NodeID, r.ChainID, r.HRS)
		}
		if !ed25519.PubKey(c.key.PubKey().Bytes()).VerifySignature(r.SignBytes, r.Signature) {
			errorf("%s %s: released signature does not verify", r.ChainID, r.HRS)
		}
		if r.HRS.Compare(maxHRS[r.ChainID]) > 0 {
			maxHRS[r.ChainID] = r.HRS
		}
	}
	// Invariant 2: every release was reserved by a committed entry, so
	// every replica's final watermark is at or above it, with the same
	// bytes where it stands exactly on a released position.
	for _, n := range c.nodes {
		for _, ch := range chains {
			w, _ := n.fsm.Watermark(ch)
			if w.HRS.Compare(maxHRS[ch]) < 0 {
				errorf("%s: watermark of %s is %s, below the released %s", n.id, ch, w.HRS, maxHRS[ch])
			}
			if b, ok := byPos[pos{ch, w.HRS}]; ok && !bytes.Equal(b, w.SignBytes) {
				errorf("%s: watermark bytes of %s at %s differ from the released signature's", n.id, ch, w.HRS)
			}
		}
	}
	return problems
}
