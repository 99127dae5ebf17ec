package grpcapi_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

type liar struct {
	clusterpb.UnimplementedClusterServer
	id string
}

func (l liar) Status(context.Context, *clusterpb.StatusRequest) (*clusterpb.StatusResponse, error) {
	return &clusterpb.StatusResponse{NodeId: l.id, State: "Follower", LastLogIndex: 1 << 40}, nil
}

// Any node certificate can admit itself as a non-voter, with an API address
// it controls that answers the leader's probe with a made-up log index. It
// must not be promoted: the leader promotes on what the node answered to
// its own appends over raft, and nothing listens at the ghost's raft
// address. (Found by review; before the fix the ghost became a voter, and
// one honest node down then halted the cluster.)
func TestLyingProbeDoesNotPromote(t *testing.T) {
	ms := startCluster(t, "a", "b", "c")
	pk := ms[0].pk
	ghost := pk.node(t, "ghost")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(ghost.server)))
	clusterpb.RegisterClusterServer(srv, liar{id: "ghost"})
	go srv.Serve(ln)
	defer srv.Stop()

	l := leaderOf(ms)
	var f *member
	for _, m := range ms {
		if m != l {
			f = m
			break
		}
	}
	d := grpcapi.Dialer{TLS: ghost.client}
	err := d.Call(f.api, 10*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.Join(ctx, &clusterpb.JoinRequest{Id: "ghost", RaftAddr: freeAddr(t), ApiAddr: ln.Addr().String(), Fresh: true, Level: fsm.Level})
		return err
	})
	if err != nil {
		t.Fatalf("ghost joining as itself: %v", err)
	}
	waitFor(t, "ghost to be admitted", func() bool { return memberSuffrage(l, "ghost") == "Nonvoter" })
	time.Sleep(2 * time.Second) // eight rounds of the leader's promotion check
	if s := memberSuffrage(l, "ghost"); s != "Nonvoter" {
		t.Fatalf("ghost, which holds no log, is a %s", s)
	}
	// One honest follower goes down: the two others still elect and commit.
	f.stop()
	f.node = nil
	waitFor(t, "a leader among the two remaining voters", func() bool {
		for _, m := range ms {
			if m.node != nil && m.node.IsLeader() {
				return m.node.Raft().Barrier(time.Second).Error() == nil
			}
		}
		return false
	})
}
