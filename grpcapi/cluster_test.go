package grpcapi_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/pki"
)

type member struct {
	cfg  cluster.Config
	api  string
	node *cluster.Node
	srv  *grpc.Server
	cs   *grpcapi.ClusterServer
	tls  tlsFiles
	pk   *testPKI
	// policy is the import policy the member serves with.
	policy grpcapi.ImportPolicy
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (m *member) start(t testing.TB) {
	t.Helper()
	var self atomic.Pointer[cluster.Node]
	cfg := m.cfg
	// What node.lead does: record this member's API address while leading.
	cfg.Leading = []func(context.Context){func(ctx context.Context) {
		if n := self.Load(); n != nil {
			_ = n.SetMember(ctx, cfg.NodeID, m.api, fsm.Level)
		}
	}}
	cfg.TLS = &cluster.TLS{Server: m.tls.server, Client: m.tls.client, PeerID: pki.PeerNodeID}
	cfg.Probe = grpcapi.Dialer{TLS: m.tls.client}.Probe
	var err error
	m.node, err = cluster.Open(cfg, fsm.New())
	if err != nil {
		t.Fatal(err)
	}
	self.Store(m.node)
	ln, err := net.Listen("tcp", m.api)
	if err != nil {
		t.Fatal(err)
	}
	m.cs = grpcapi.NewClusterServer(m.cfg.NodeID, m.node, grpcapi.Dialer{TLS: m.tls.client}, m.cfg.Logger)
	m.cs.ImportPolicy = m.policy
	m.srv = m.cs.NewGRPCServer(m.tls.server)
	go m.srv.Serve(ln)
}

func (m *member) stop() {
	m.srv.Stop()
	m.cs.Close()
	m.node.Shutdown()
}

func status(t testing.TB, addr string) *clusterpb.StatusResponse {
	t.Helper()
	var r *clusterpb.StatusResponse
	err := operator.Call(addr, 2*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		var err error
		r, err = c.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func memberSuffrage(m *member, id string) string {
	mem, _ := m.node.Members()
	for _, x := range mem {
		if x.ID == id {
			return x.Suffrage
		}
	}
	return ""
}

func leaderOf(ms []*member) *member {
	for _, m := range ms {
		if m.node.IsLeader() {
			return m
		}
	}
	return nil
}

// TestJoinForwardingAndFullRestart forms a cluster over real TCP with
// bootstrap and joins (one sent to a follower, which forwards it), commits
// watermarks, restarts every node, and checks nothing regressed.
func TestJoinForwardingAndFullRestart(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	var ms []*member
	pk := newPKI(t)
	for _, id := range []string{"n1", "n2", "n3"} {
		raftAddr := freeAddr(t)
		ms = append(ms, &member{api: freeAddr(t), tls: pk.node(t, id), cfg: cluster.Config{
			NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: raftAddr, Logger: log,
		}})
	}
	if err := cluster.Bootstrap(ms[0].cfg, nil); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Bootstrap(ms[0].cfg, nil); err == nil {
		t.Fatal("a second bootstrap was accepted")
	}
	ms[0].start(t)
	defer func() {
		for _, m := range ms {
			if m.node != nil {
				m.stop()
			}
		}
	}()
	waitFor(t, "n1 to lead", func() bool { return ms[0].node.IsLeader() && ms[0].node.FSM().MemberAPIAddr("n1") != "" })

	// What `kms-ha join` does: the node asks with its own certificate,
	// records the answer's members, then runs raft.
	joinAs := func(via string, m *member, fresh bool) error {
		var resp *clusterpb.JoinResponse
		err := grpcapi.Dialer{TLS: m.tls.client}.Call(via, 5*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
			var err error
			resp, err = c.Join(ctx, &clusterpb.JoinRequest{Id: m.cfg.NodeID, RaftAddr: m.cfg.BindAddr, ApiAddr: m.api,
				Fresh: fresh, Level: fsm.Level})
			return err
		})
		if err == nil && fresh {
			err = cluster.MarkJoined(m.cfg, time.Second, resp.GetMembers())
		}
		return err
	}
	// The leader promotes a caught-up non-voter by itself.
	promoted := func(m *member) {
		t.Helper()
		waitFor(t, m.cfg.NodeID+" to be a voter", func() bool { return m.node.Suffrage() == "Voter" })
	}
	// First joins come from empty nodes, as `kms-ha join` detects.
	if err := joinAs(ms[0].api, ms[1], true); err != nil {
		t.Fatal(err)
	}
	if s := memberSuffrage(ms[0], "n2"); s != "Nonvoter" {
		t.Fatalf("a joining node that does not run yet is a %s; it must count towards no quorum", s)
	}
	ms[1].start(t)
	promoted(ms[1])
	waitFor(t, "n2 to learn the leader", func() bool { id, api := ms[1].node.Leader(); return id == "n1" && api != "" })
	// Sent to a follower: forwarded to the leader.
	if err := joinAs(ms[1].api, ms[2], true); err != nil {
		t.Fatalf("join through a follower: %v", err)
	}
	ms[2].start(t)
	promoted(ms[2])
	// A mistaken "fresh" join for a live member (wrong --home) must not
	// remove it.
	if err := joinAs(ms[0].api, ms[2], true); err == nil || !strings.Contains(err.Error(), "refusing to remove") {
		t.Fatalf("fresh join of a running member: %v", err)
	}
	// Joining again is harmless. (A new member learns the leader's API
	// address with the next entries it applies; the CLI retries until then.)
	waitFor(t, "n3 to learn the leader's api address", func() bool { _, a := ms[2].node.Leader(); return a != "" })
	if err := joinAs(ms[2].api, ms[2], false); err != nil {
		t.Fatalf("repeated join: %v", err)
	}
	st := status(t, ms[2].api)
	if len(st.Members) != 3 || st.LeaderId != "n1" {
		t.Fatalf("status on n3: %d members, leader %q", len(st.Members), st.LeaderId)
	}

	ctx := context.Background()
	// The chain needs a watermark before anything is signed: what
	// --allow-fresh-state commits, sent to a follower and forwarded.
	importVia(t, ms[2].api, &clusterpb.ImportStateRequest{ChainId: "c", Source: "fresh"})
	for h := int64(1); h <= 20; h++ {
		d, err := ms[0].node.Reserve(ctx, "c", fsm.HRS{Height: h, Step: fsm.StepPrevote}, []byte{byte(h)})
		if err != nil || d.Outcome != fsm.Allow {
			t.Fatalf("reserve %d: %v %v", h, d.Outcome, err)
		}
	}
	// A follower refuses writes: only the leader may reserve.
	if _, err := ms[1].node.Reserve(ctx, "c", fsm.HRS{Height: 99, Step: fsm.StepPrevote}, []byte{1}); err == nil {
		t.Fatal("a follower reserved a watermark")
	}
	// Follower reads see the replicated watermark.
	waitFor(t, "followers to apply", func() bool {
		return status(t, ms[1].api).GetChains()[0].GetHeight() == 20 && status(t, ms[2].api).GetChains()[0].GetHeight() == 20
	})

	for _, m := range ms {
		m.stop()
		m.node = nil
	}
	for _, m := range ms {
		m.start(t)
	}
	waitFor(t, "a leader after the full restart", func() bool { return leaderOf(ms) != nil })
	l := leaderOf(ms)
	// A new leader's state is complete once its barrier is applied.
	if err := l.node.Raft().Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if w, _ := l.node.FSM().Watermark("c"); w.Height != 20 {
		t.Fatalf("watermark after restart: %s", w.HRS)
	}
	d, err := l.node.Reserve(ctx, "c", fsm.HRS{Height: 19, Step: fsm.StepPrecommit}, []byte{1})
	if err != nil || d.Outcome != fsm.Refuse {
		t.Fatalf("regression after restart: %v %v", d.Outcome, err)
	}
	d, err = l.node.Reserve(ctx, "c", fsm.HRS{Height: 21, Step: fsm.StepPrevote}, []byte{1})
	if err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("progress after restart: %v %v", d.Outcome, err)
	}

	// A member loses its disk and is re-admitted through a follower as a
	// fresh incarnation; it catches up with every watermark.
	victim := ms[2]
	if victim == l {
		victim = ms[1]
	}
	var via *member
	for _, m := range ms {
		if m != l && m != victim {
			via = m
		}
	}
	victim.stop()
	victim.node = nil
	os.RemoveAll(victim.cfg.DataDir)
	if st, _ := cluster.ReadState(victim.cfg, time.Second); st.MayStartRaft() {
		t.Fatal("wiped member may start raft")
	}
	err = joinAs(via.api, victim, true)
	if err != nil {
		t.Fatalf("fresh re-join through a follower: %v", err)
	}
	victim.start(t)
	promoted(victim)
	waitFor(t, "the re-admitted member to catch up", func() bool {
		w, _ := victim.node.FSM().Watermark("c")
		return w.Height == 21
	})
}
