// Package grpcapi serves and calls the kms-ha gRPC services: the Cluster
// service (status, membership) on every node.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

// ClusterServer implements clusterpb.ClusterServer on a cluster node.
type ClusterServer struct {
	clusterpb.UnimplementedClusterServer
	id   string
	node atomic.Pointer[cluster.Node]
	log  *slog.Logger
}

// StateAwaitingJoin is the state a node reports before it runs raft.
const StateAwaitingJoin = "AwaitingJoin"

// NewClusterServer serves node's state and membership. node may be nil
// while the node waits to be admitted; see SetNode.
func NewClusterServer(id string, node *cluster.Node, log *slog.Logger) *ClusterServer {
	s := &ClusterServer{id: id, log: log}
	if node != nil {
		s.node.Store(node)
	}
	return s
}

// SetNode makes the server answer for a raft node that just started.
func (s *ClusterServer) SetNode(n *cluster.Node) { s.node.Store(n) }

var errNotMember = status.Error(codes.FailedPrecondition,
	"the node at this address is not a cluster member yet (it waits to be admitted): send joins to a running member's API address")

// Status answers from the local replica: it never needs a quorum, so an
// operator can read any surviving node during an outage.
func (s *ClusterServer) Status(ctx context.Context, _ *clusterpb.StatusRequest) (*clusterpb.StatusResponse, error) {
	node := s.node.Load()
	if node == nil {
		return &clusterpb.StatusResponse{NodeId: s.id, State: StateAwaitingJoin}, nil
	}
	st := node.Stats()
	leaderID, leaderAPI := node.Leader()
	resp := &clusterpb.StatusResponse{
		NodeId:        node.ID(),
		State:         st.State,
		LeaderId:      leaderID,
		LeaderApiAddr: leaderAPI,
		Term:          st.Term,
		CommitIndex:   st.CommitIndex,
		AppliedIndex:  st.AppliedIndex,
		LastContact:   st.LastContact,
	}
	members, err := node.Members()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "read membership: %v", err)
	}
	for _, m := range members {
		role := "follower"
		if m.Leader {
			role = "leader"
		}
		resp.Members = append(resp.Members, &clusterpb.Member{
			Id: m.ID, RaftAddr: m.RaftAddr, ApiAddr: m.APIAddr, Role: role, Suffrage: m.Suffrage,
		})
	}
	for id, w := range node.FSM().Watermarks() {
		resp.Chains = append(resp.Chains, &clusterpb.ChainWatermark{
			ChainId: id, Height: w.Height, Round: w.Round, Step: int32(w.Step),
		})
	}
	sort.Slice(resp.Chains, func(i, j int) bool { return resp.Chains[i].ChainId < resp.Chains[j].ChainId })
	return resp, nil
}

// Join adds a voter on the leader, or forwards the request to it once.
func (s *ClusterServer) Join(ctx context.Context, req *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error) {
	if req.GetId() == "" || req.GetRaftAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "join needs the node's id and raft address")
	}
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	if !node.IsLeader() {
		leaderID, leaderAPI := node.Leader()
		if req.GetForwarded() {
			return nil, status.Errorf(codes.Unavailable, "forwarded join reached %s, which is not the leader; retry", node.ID())
		}
		if leaderAPI == "" {
			return nil, status.Errorf(codes.Unavailable, "%s knows no leader (leader id %q) to forward the join to; retry when the cluster has a leader", node.ID(), leaderID)
		}
		fwd := &clusterpb.JoinRequest{Id: req.GetId(), RaftAddr: req.GetRaftAddr(), ApiAddr: req.GetApiAddr(),
			Forwarded: true, Fresh: req.GetFresh(), Promote: req.GetPromote()}
		s.log.Info("forwarding join to the leader", "joiner", req.GetId(), "leader", leaderID, "leader_api", leaderAPI)
		var resp *clusterpb.JoinResponse
		err := withClient(ctx, leaderAPI, func(c clusterpb.ClusterClient) error {
			var err error
			resp, err = c.Join(ctx, fwd)
			return err
		})
		if err != nil {
			return nil, err
		}
		return resp, nil
	}
	if req.GetFresh() && req.GetApiAddr() != "" && s.isMember(node, req.GetId()) {
		// About to remove a member as a lost incarnation: make sure it is
		// not a live member that a mistaken join (a wrong --home, another
		// host) claims to be empty.
		if st, err := peerStatus(ctx, req.GetApiAddr()); err == nil && st.GetState() != StateAwaitingJoin {
			return nil, status.Errorf(codes.FailedPrecondition,
				"%s answers at %s as a running member (%s), so it has not lost its state: refusing to remove it; "+
					"check --home and the host you ran join on", req.GetId(), req.GetApiAddr(), st.GetState())
		}
	}
	if err := node.Admit(req.GetId(), req.GetRaftAddr(), req.GetFresh(), req.GetPromote()); err != nil {
		code := codes.FailedPrecondition
		if errors.Is(err, cluster.ErrNotLeader) {
			code = codes.Unavailable
		}
		return nil, status.Errorf(code, "%v", err)
	}
	if req.GetApiAddr() != "" && node.FSM().MemberAPIAddr(req.GetId()) != req.GetApiAddr() {
		if err := node.SetMemberAPI(ctx, req.GetId(), req.GetApiAddr()); err != nil {
			return nil, status.Errorf(codes.Unavailable, "%v", err)
		}
	}
	s.log.Info("join handled", "joiner", req.GetId(), "raft_addr", req.GetRaftAddr(), "api_addr", req.GetApiAddr(), "fresh", req.GetFresh(), "promote", req.GetPromote())
	return &clusterpb.JoinResponse{LeaderId: node.ID()}, nil
}

func (s *ClusterServer) isMember(node *cluster.Node, id string) bool {
	members, err := node.Members()
	if err != nil {
		return true // unknown: be careful
	}
	for _, m := range members {
		if m.ID == id {
			return true
		}
	}
	return false
}

func peerStatus(ctx context.Context, addr string) (*clusterpb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var st *clusterpb.StatusResponse
	err := withClient(ctx, addr, func(c clusterpb.ClusterClient) error {
		var err error
		st, err = c.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	return st, err
}

// Register adds the Cluster service to a gRPC server.
func (s *ClusterServer) Register(g *grpc.Server) { clusterpb.RegisterClusterServer(g, s) }

// Dial opens a client connection to a node's API address.
func Dial(addr string) (*grpc.ClientConn, error) {
	// TODO(issue 3): mutual TLS with the cluster CA; until then the API
	// must only listen on a trusted network.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("grpcapi: dial %s: %w", addr, err)
	}
	return conn, nil
}

func withClient(ctx context.Context, addr string, fn func(clusterpb.ClusterClient) error) error {
	conn, err := Dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(clusterpb.NewClusterClient(conn))
}

// Call runs fn against the node at addr with a timeout, turning gRPC
// errors into plain messages for the command line.
func Call(addr string, timeout time.Duration, fn func(ctx context.Context, c clusterpb.ClusterClient) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := withClient(ctx, addr, func(c clusterpb.ClusterClient) error { return fn(ctx, c) })
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unavailable:
			return fmt.Errorf("%s: unavailable: %s (is kms-ha running there?)", addr, st.Message())
		case codes.DeadlineExceeded:
			return fmt.Errorf("%s: no answer within %s", addr, timeout)
		}
		return fmt.Errorf("%s: %s", addr, st.Message())
	}
	return fmt.Errorf("%s: %w", addr, err)
}
