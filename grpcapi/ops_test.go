package grpcapi_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

func startCluster(t *testing.T, ids ...string) []*member {
	t.Helper()
	pk := newPKI(t)
	dir := t.TempDir()
	var ms []*member
	var servers []cluster.Server
	for _, id := range ids {
		m := &member{api: freeAddr(t), tls: pk.node(t, id), pk: pk, cfg: cluster.Config{
			NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: freeAddr(t), Logger: quietLog,
		}}
		ms = append(ms, m)
		servers = append(servers, cluster.Server{ID: id, Address: m.cfg.BindAddr})
	}
	for _, m := range ms {
		if err := cluster.Bootstrap(m.cfg, servers); err != nil {
			t.Fatal(err)
		}
		m.start(t)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			if m.node != nil {
				m.stop()
			}
		}
	})
	waitFor(t, "a leader", func() bool { return leaderOf(ms) != nil })
	l := leaderOf(ms)
	for _, m := range ms {
		if err := l.node.SetMember(context.Background(), m.cfg.NodeID, m.api, fsm.Level); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range ms {
		waitFor(t, m.cfg.NodeID+" to know the leader's api", func() bool { _, a := m.node.Leader(); return a != "" })
	}
	return ms
}

func call(addr string, fn func(ctx context.Context, c clusterpb.ClusterClient) error) error {
	return operator.Call(addr, 10*time.Second, fn)
}

func TestWritesThroughFollowersAndLinearizableReads(t *testing.T) {
	ms := startCluster(t, "a", "b", "c")
	l := leaderOf(ms)
	var f []*member
	for _, m := range ms {
		if m != l {
			f = append(f, m)
		}
	}
	// An import sent to a follower is forwarded; a linearizable read on the
	// other follower sees it at once, even on an idle cluster.
	r := importVia(t, f[0].api, &clusterpb.ImportStateRequest{ChainId: "x", Height: 100, Round: 0, Step: 3, Source: "cometbft"})
	if !r.GetApplied() || r.GetCurrent().GetHeight() != 100 {
		t.Fatalf("import: %v", r)
	}
	var st *clusterpb.StatusResponse
	if err := call(f[1].api, func(ctx context.Context, c clusterpb.ClusterClient) error {
		var err error
		st, err = c.Status(ctx, &clusterpb.StatusRequest{Linearizable: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !st.GetLinearizable() || len(st.GetChains()) != 1 || st.GetChains()[0].GetHeight() != 100 || st.GetNodeId() != f[1].cfg.NodeID {
		t.Fatalf("linearizable follower read: %v", st)
	}
	// An older binary (level 0: it would refuse the import just applied)
	// may no longer join.
	old := grpcapi.Dialer{TLS: f[0].pk.node(t, "old").client}
	if err := old.Call(f[0].api, 10*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.Join(ctx, &clusterpb.JoinRequest{Id: "old", RaftAddr: "127.0.0.1:1", Fresh: true})
		return err
	}); err == nil || !strings.Contains(err.Error(), "older kms-ha") {
		t.Fatalf("join of a level-0 node: %v", err)
	}
	// Never lowered: a lower import is reported as not applied.
	r = importVia(t, f[1].api, &clusterpb.ImportStateRequest{ChainId: "x", Height: 99, Step: 3, Source: "cometbft"})
	if r.GetApplied() || r.GetCurrent().GetHeight() != 100 {
		t.Fatalf("lower import: %v", r)
	}
	// Invalid positions are refused before they reach raft.
	if err := call(f[0].api, func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.ImportState(ctx, &clusterpb.ImportStateRequest{ChainId: "x", Height: 5, Step: 0})
		return err
	}); err == nil || !strings.Contains(err.Error(), "invalid position") {
		t.Fatalf("invalid import: %v", err)
	}

	// Transfer, asked of a follower, to a named node.
	to := f[1].cfg.NodeID
	if err := call(f[0].api, func(ctx context.Context, c clusterpb.ClusterClient) error {
		r, err := c.TransferLeadership(ctx, &clusterpb.TransferLeadershipRequest{To: to})
		if err == nil && r.GetNewLeaderId() != to {
			t.Errorf("new leader %s, want %s", r.GetNewLeaderId(), to)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, to+" to lead", func() bool { return f[1].node.IsLeader() })

	// Removing the leader itself: it hands leadership over first, then the
	// new leader removes it.
	if err := call(f[0].api, func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.Remove(ctx, &clusterpb.RemoveRequest{Id: to})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two members and a new leader", func() bool {
		mem, _ := f[0].node.Members()
		id, _ := f[0].node.Leader()
		return len(mem) == 2 && id != "" && id != to
	})
	// The two remaining members still commit.
	r = importVia(t, f[0].api, &clusterpb.ImportStateRequest{ChainId: "x", Height: 200, Step: 1, Source: "cometbft"})
	if !r.GetApplied() {
		t.Fatalf("import after remove: %v", r)
	}
	var b *clusterpb.BackupResponse
	if err := call(f[0].api, func(ctx context.Context, c clusterpb.ClusterClient) error {
		var err error
		b, err = c.Backup(ctx, &clusterpb.BackupRequest{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s, err := fsm.DecodeState(b.GetState())
	if err != nil || s.Chains["x"].Height != 200 {
		t.Fatalf("backup: %v %+v", err, s)
	}
}

// An import into a chain the cluster does not sign for, or one that would
// raise a watermark by more than max_import_jump heights, is refused
// without --force; the refusal says what to do.
func TestImportGuards(t *testing.T) {
	ms := startCluster(t, "a", "b", "c")
	for _, m := range ms {
		m.stop()
		m.node = nil
		m.policy = grpcapi.ImportPolicy{Chains: []string{"x"}, MaxJump: 1000}
		m.start(t)
	}
	waitFor(t, "a leader", func() bool { return leaderOf(ms) != nil })
	for _, m := range ms {
		waitFor(t, m.cfg.NodeID+" to know the leader's api", func() bool { _, a := m.node.Leader(); return a != "" })
	}
	var f *member
	for _, m := range ms {
		if m != leaderOf(ms) {
			f = m
		}
	}
	importErr := func(req *clusterpb.ImportStateRequest) error {
		return call(f.api, func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.ImportState(ctx, req)
			return err
		})
	}
	if err := importErr(&clusterpb.ImportStateRequest{ChainId: "cosmoshub-4", Height: 10, Step: 1}); err == nil ||
		!strings.Contains(err.Error(), "not one this cluster signs for") {
		t.Fatalf("import into an unknown chain: %v", err)
	}
	// A chain without a watermark takes any height: a migration.
	importVia(t, f.api, &clusterpb.ImportStateRequest{ChainId: "x", Height: 5_000_000, Step: 3, Source: "cometbft"})
	if err := importErr(&clusterpb.ImportStateRequest{ChainId: "x", Height: 5_001_001, Step: 1}); err == nil ||
		!strings.Contains(err.Error(), "--force") {
		t.Fatalf("a jump of 1001 heights: %v", err)
	}
	r := importVia(t, f.api, &clusterpb.ImportStateRequest{ChainId: "x", Height: 5_001_000, Step: 1})
	if !r.GetApplied() {
		t.Fatalf("a jump of 1000 heights: %v", r)
	}
	r = importVia(t, f.api, &clusterpb.ImportStateRequest{ChainId: "x", Height: 50_000_000, Step: 1, Force: true})
	if !r.GetApplied() || r.GetCurrent().GetHeight() != 50_000_000 {
		t.Fatalf("a forced jump: %v", r)
	}
}
