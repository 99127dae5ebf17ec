package grpcapi_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

func codeOf(err error) codes.Code { return grpcstatus.Code(err) }

// Who may call what, tried against a running 3-node cluster as the
// reviewer of issue 9 did: an operator may manage, a read-only operator
// and a non-member's node certificate may not, a non-member may join only
// as itself and never promote anyone.
func TestClusterAPIAuthorisesByRole(t *testing.T) {
	ms := startCluster(t, "a", "b", "c")
	pk := ms[0].pk
	l := leaderOf(ms)
	var f []*member
	for _, m := range ms {
		if m != l {
			f = append(f, m)
		}
	}
	reader := pk.operator(t, "monitoring", true)
	stranger := grpcapi.Dialer{TLS: pk.node(t, "ghost").client}
	callAs := func(d grpcapi.Dialer, addr string, fn func(ctx context.Context, c clusterpb.ClusterClient) error) error {
		return d.Call(addr, 10*time.Second, fn)
	}
	status := func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.Status(ctx, &clusterpb.StatusRequest{})
		return err
	}
	remove := func(id string) func(ctx context.Context, c clusterpb.ClusterClient) error {
		return func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Remove(ctx, &clusterpb.RemoveRequest{Id: id})
			return err
		}
	}
	transfer := func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.TransferLeadership(ctx, &clusterpb.TransferLeadershipRequest{})
		return err
	}
	imp := func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.ImportState(ctx, &clusterpb.ImportStateRequest{ChainId: "x", Height: 10, Step: 1})
		return err
	}

	// Reads: operators, read-only operators, members. Not a non-member.
	for name, d := range map[string]grpcapi.Dialer{"operator": operator, "read-only operator": reader, "member": {TLS: f[0].tls.client}} {
		if err := callAs(d, f[1].api, status); err != nil {
			t.Errorf("%s cannot read: %v", name, err)
		}
	}
	if err := callAs(stranger, f[1].api, status); codeOf(err) != codes.PermissionDenied {
		t.Errorf("a non-member's node certificate read the status: %v", err)
	}

	// Writes, sent to a follower (forwarded) and to the leader: refused to
	// the read-only operator and the non-member.
	for name, d := range map[string]grpcapi.Dialer{"read-only operator": reader, "non-member node": stranger} {
		for _, addr := range []string{f[0].api, l.api} {
			for op, fn := range map[string]func(context.Context, clusterpb.ClusterClient) error{
				"remove": remove(f[1].cfg.NodeID), "transfer": transfer, "import": imp,
			} {
				if err := callAs(d, addr, fn); codeOf(err) != codes.PermissionDenied {
					t.Errorf("%s: %s via %s: %v, want PermissionDenied", name, op, addr, err)
				}
			}
		}
	}
	if mem, _ := l.node.Members(); len(mem) != 3 || !l.node.IsLeader() {
		t.Fatalf("a refused caller changed the cluster: %d members, leader %v", len(mem), l.node.IsLeader())
	}

	// A non-member may ask to join only as itself.
	for _, id := range []string{"a", "intruder"} {
		err := callAs(stranger, l.api, func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Join(ctx, &clusterpb.JoinRequest{Id: id, RaftAddr: "127.0.0.1:1", Fresh: true})
			return err
		})
		if codeOf(err) != codes.PermissionDenied {
			t.Errorf("ghost joined as %s: %v", id, err)
		}
	}
	// The reviewer's attack: join "ghost" (nothing listens there), then ask
	// for promotion. The join admits a non-voter; the promote flag is
	// ignored and the leader never sees ghost caught up.
	for _, promote := range []bool{false, true} {
		err := callAs(stranger, f[0].api, func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Join(ctx, &clusterpb.JoinRequest{Id: "ghost", RaftAddr: "127.0.0.1:9", Fresh: !promote, Promote: promote, Level: 99})
			return err
		})
		if err != nil {
			t.Fatalf("ghost joining as itself (promote %v): %v", promote, err)
		}
	}
	time.Sleep(time.Second) // four rounds of the leader's promotion check
	if s := memberSuffrage(l, "ghost"); s != "Nonvoter" {
		t.Fatalf("ghost is a %s; a node that never caught up must stay a non-voter", s)
	}
	if err := l.node.Raft().Barrier(5 * time.Second).Error(); err != nil {
		t.Fatalf("the cluster stopped committing with ghost admitted: %v", err)
	}

	// Forwarded identities: only members may forward, and the leader
	// authorises the identity forwarded, not the forwarder.
	asReader := metadata.AppendToOutgoingContext(context.Background(), "kms-ha-caller", "read-only operator monitoring")
	err := callAs(grpcapi.Dialer{TLS: f[0].tls.client}, l.api, func(_ context.Context, c clusterpb.ClusterClient) error {
		ctx, cancel := context.WithTimeout(asReader, 5*time.Second)
		defer cancel()
		_, err := c.Remove(ctx, &clusterpb.RemoveRequest{Id: "ghost"})
		return err
	})
	if codeOf(err) != codes.PermissionDenied {
		t.Errorf("a member forwarding for a read-only operator removed a member: %v", err)
	}
	asOperator := metadata.AppendToOutgoingContext(context.Background(), "kms-ha-caller", "operator alice")
	// (ghost is a member now; another non-member tries.)
	err = callAs(grpcapi.Dialer{TLS: pk.node(t, "outsider").client}, l.api, func(_ context.Context, c clusterpb.ClusterClient) error {
		ctx, cancel := context.WithTimeout(asOperator, 5*time.Second)
		defer cancel()
		_, err := c.Remove(ctx, &clusterpb.RemoveRequest{Id: "ghost"})
		return err
	})
	if codeOf(err) != codes.PermissionDenied {
		t.Errorf("a non-member forwarding as an operator removed a member: %v", err)
	}

	// An operator manages: remove ghost (through a follower), transfer.
	if err := callAs(operator, f[0].api, remove("ghost")); err != nil {
		t.Fatalf("operator remove: %v", err)
	}
	if err := callAs(operator, f[1].api, transfer); err != nil {
		t.Fatalf("operator transfer: %v", err)
	}
	waitFor(t, "a new leader", func() bool { n := leaderOf(ms); return n != nil && n != l })
	// A removed member's certificate no longer reads.
	if err := callAs(operator, f[0].api, remove(l.cfg.NodeID)); err != nil {
		t.Fatalf("operator remove of the old leader: %v", err)
	}
	removed := grpcapi.Dialer{TLS: l.tls.client}
	waitFor(t, "the removal to reach "+f[1].cfg.NodeID, func() bool {
		return codeOf(callAs(removed, f[1].api, status)) == codes.PermissionDenied
	})
}
