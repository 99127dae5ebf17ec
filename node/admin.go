package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/internal/backoff"
)

// ErrPeerRunning is returned by Bootstrap when a listed peer already runs.
var ErrPeerRunning = errors.New("a listed peer is already running")

// Bootstrap writes the first raft configuration for a new cluster: this
// node alone, or the listed voters. A listed peer that is already running
// means the cluster exists: a node that lost its data must be re-admitted
// with Join, never bootstrapped back into it, or it would vote without the
// state it once acknowledged.
func Bootstrap(c *config.Config, peers []cluster.Server, log *slog.Logger) error {
	for _, p := range peers {
		if p.ID == c.Cluster.NodeID {
			continue
		}
		if conn, err := net.DialTimeout("tcp", p.Address, 500*time.Millisecond); err == nil {
			conn.Close()
			return fmt.Errorf("node: bootstrap: peer %s at %s: %w", p.ID, p.Address, ErrPeerRunning)
		}
	}
	return cluster.Bootstrap(ClusterConfig(c, log), peers)
}

// JoinOutcome is how an admission ended.
type JoinOutcome int

const (
	// JoinedVoter: the node is a voter.
	JoinedVoter JoinOutcome = iota
	// JoinedNotRunning: admitted; the node must be started to catch up
	// and become a voter.
	JoinedNotRunning
)

// JoinResult describes a successful Join.
type JoinResult struct {
	Outcome JoinOutcome
	Leader  string
	Fresh   bool
}

// Join asks the member at memberAPI to admit the node configured by c,
// retrying while the cluster has no leader, and waits until the node is a
// voter if it is running. A node with no raft state is admitted as a new
// incarnation (see cluster.Node.Admit), and the admission is recorded in
// its data dir so that it may start raft.
func Join(ctx context.Context, c *config.Config, memberAPI string, log *slog.Logger) (JoinResult, error) {
	cc := ClusterConfig(c, log)
	d, err := NewDialer(c, log)
	if err != nil {
		return JoinResult{}, err
	}
	fresh, err := isFresh(ctx, d, c, cc)
	if err != nil {
		return JoinResult{}, err
	}
	req := &clusterpb.JoinRequest{Id: c.Cluster.NodeID, RaftAddr: c.Cluster.AdvertiseAddr, ApiAddr: c.Cluster.APIAddr, Fresh: fresh, Level: fsm.Level}
	var resp *clusterpb.JoinResponse
	for b := backoff.Constant(500 * time.Millisecond); ; {
		err = callCtx(ctx, d, memberAPI, 5*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
			var err error
			resp, err = cl.Join(ctx, req)
			return err
		})
		if err == nil {
			break
		}
		// During an election there is briefly no leader to forward to.
		if status.Code(err) != codes.Unavailable {
			return JoinResult{}, fmt.Errorf("node: join via %s: %w", memberAPI, err)
		}
		if !b.Wait(ctx) {
			return JoinResult{}, fmt.Errorf("node: join via %s: %w; if the cluster has no leader: when it was created with "+
				"`bootstrap --peers`, every listed node must run that same bootstrap and be started, and a majority of the voters must be up",
				memberAPI, err)
		}
	}
	res := JoinResult{Leader: resp.GetLeaderId(), Fresh: fresh}
	if fresh {
		if err := cluster.MarkJoined(cc, 5*time.Second, resp.GetMembers()); err != nil {
			return res, fmt.Errorf("node: admitted, but could not record it in %s (run join again): %w", cc.DataDir, err)
		}
	}
	// An admitted node becomes a voter by itself once it runs and has
	// caught up: wait for that if it runs.
	for b := backoff.Constant(300 * time.Millisecond); ; {
		if isVoter(ctx, d, memberAPI, c.Cluster.NodeID) {
			res.Outcome = JoinedVoter
			return res, nil
		}
		if _, err := localStatus(ctx, d, c); err != nil {
			res.Outcome = JoinedNotRunning
			return res, nil
		}
		if !b.Wait(ctx) {
			return res, fmt.Errorf("node: %s is admitted but not yet a voter; it is still catching up (see its log and `kms-ha status`)", c.Cluster.NodeID)
		}
	}
}

// isFresh tells whether the node holds no raft state. A running member
// holds the data dir's lock; a node waiting for admission only holds it
// briefly when it polls, so on a locked dir ask the node itself.
func isFresh(ctx context.Context, d grpcapi.Dialer, c *config.Config, cc cluster.Config) (bool, error) {
	st, err := cluster.ReadState(cc, 1500*time.Millisecond)
	switch {
	case errors.Is(err, cluster.ErrLocked):
		r, err := localStatus(ctx, d, c)
		return err == nil && r.GetState() == grpcapi.StateAwaitingJoin, nil
	case err != nil:
		return false, err
	}
	return !st.MayStartRaft(), nil
}

func localStatus(ctx context.Context, d grpcapi.Dialer, c *config.Config) (*clusterpb.StatusResponse, error) {
	var r *clusterpb.StatusResponse
	err := callCtx(ctx, d, c.Cluster.APIAddr, time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
		var err error
		r, err = cl.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	return r, err
}

func isVoter(ctx context.Context, d grpcapi.Dialer, memberAPI, id string) bool {
	var st *clusterpb.StatusResponse
	err := callCtx(ctx, d, memberAPI, 3*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
		var err error
		st, err = cl.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	if err != nil {
		return false
	}
	for _, m := range st.GetMembers() {
		if m.GetId() == id && strings.EqualFold(m.GetSuffrage(), "voter") {
			return true
		}
	}
	return false
}

// callCtx is Dialer.Call bounded by ctx as well.
func callCtx(ctx context.Context, d grpcapi.Dialer, addr string, timeout time.Duration, fn func(context.Context, clusterpb.ClusterClient) error) error {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return context.DeadlineExceeded
	}
	return d.Call(addr, timeout, fn)
}

// Leave takes the node configured by c out of the cluster: it hands
// leadership on first if it leads, then asks the leader to remove it. The
// node keeps running as a non-member until it is stopped; its data dir must
// not be used to rejoin (join again with an empty one).
func Leave(ctx context.Context, c *config.Config, log *slog.Logger) (string, error) {
	d, err := NewDialer(c, log)
	if err != nil {
		return "", err
	}
	var leader string
	err = callCtx(ctx, d, c.Cluster.APIAddr, 10*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
		r, err := cl.Remove(ctx, &clusterpb.RemoveRequest{Id: c.Cluster.NodeID})
		if err == nil {
			leader = r.GetLeaderId()
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("node: leave: %w", err)
	}
	return leader, nil
}
