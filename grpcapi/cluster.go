// Package grpcapi serves and calls the kms-ha gRPC services: the Cluster
// service (status, membership) on every node.
package grpcapi

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/internal/logthrottle"
	"github.com/kms-ha/kms-ha/pki"
)

// Raft is what the Cluster API needs of the raft node; *cluster.Node
// implements it. The API authenticates, authorises, forwards and
// translates; every decision about the cluster is the node's.
type Raft interface {
	ID() string
	IsLeader() bool
	IsMember(id string) bool
	// Trusts: id is a member as far as this node knows (see
	// cluster.Node.Trusts).
	Trusts(id string) bool
	// IsVoter: id is a voter of the latest configuration.
	IsVoter(id string) bool
	Leader() (id, apiAddr string)
	Members() ([]cluster.Member, error)
	Stats() cluster.Stats
	LastContact() time.Duration
	// Health is the leader's view of the members; ok is false elsewhere.
	Health() (h cluster.ClusterHealth, ok bool)
	// FSM is the local replica, for reads.
	FSM() *fsm.FSM

	ReadIndex(ctx context.Context) (uint64, error)
	Nudge(ctx context.Context) error
	WaitApplied(ctx context.Context, idx uint64) error

	Join(ctx context.Context, req cluster.JoinRequest) ([]string, error)
	Remove(ctx context.Context, id string) error
	TransferLeadershipTo(id string) error
	Import(ctx context.Context, im fsm.Import) (fsm.ImportResult, error)
}

// ClusterServer implements clusterpb.ClusterServer on a cluster node.
type ClusterServer struct {
	clusterpb.UnimplementedClusterServer
	id     string
	node   nodeRef
	log    *slog.Logger
	dialer Dialer

	// conns are kept per peer API address: a TLS handshake per forwarded
	// call would cost more than the call.
	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn

	// refusals keeps refused callers from flooding the log.
	refusals *logthrottle.Limiter

	// ImportPolicy bounds state imports; set before serving.
	ImportPolicy ImportPolicy

	// BeforeTransfer, if set, runs on the leader before it hands
	// leadership over (the node waits for a quiet moment between heights).
	BeforeTransfer func()
}

// peer calls fn with a client of the node at addr over a cached connection.
func (s *ClusterServer) peer(ctx context.Context, addr string, fn func(clusterpb.ClusterClient) error) error {
	s.connMu.Lock()
	conn, ok := s.conns[addr]
	if !ok {
		var err error
		if conn, err = s.dialer.Dial(addr); err != nil {
			s.connMu.Unlock()
			return err
		}
		if s.conns == nil {
			s.conns = map[string]*grpc.ClientConn{}
		}
		s.conns[addr] = conn
	}
	s.connMu.Unlock()
	return fn(clusterpb.NewClusterClient(conn))
}

// Close releases the connections to other nodes.
func (s *ClusterServer) Close() {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for a, c := range s.conns {
		c.Close()
		delete(s.conns, a)
	}
}

// StateAwaitingJoin is the state a node reports before it runs raft.
const StateAwaitingJoin = "AwaitingJoin"

// NewClusterServer serves node's state and membership. node may be nil
// while the node waits to be admitted; see SetNode.
func NewClusterServer(id string, node Raft, dialer Dialer, log *slog.Logger) *ClusterServer {
	s := &ClusterServer{id: id, log: log, dialer: dialer, refusals: logthrottle.New(10 * time.Second)}
	if node != nil {
		s.node.Store(node)
	}
	return s
}

// SetNode makes the server answer for a raft node that just started.
func (s *ClusterServer) SetNode(n Raft) { s.node.Store(n) }

// nodeRef holds the raft node once it runs.
type nodeRef struct{ p atomic.Pointer[Raft] }

func (r *nodeRef) Store(n Raft) { r.p.Store(&n) }

func (r *nodeRef) Load() Raft {
	if p := r.p.Load(); p != nil {
		return *p
	}
	return nil
}

var errNotMember = status.Error(codes.FailedPrecondition,
	"the node at this address is not a cluster member yet (it waits to be admitted): send joins to a running member's API address")

// Status answers from the local replica: it never needs a quorum, so an
// operator can read any surviving node during an outage. A linearizable
// status waits until this replica has applied everything the leader had
// committed when it confirmed its leadership.
func (s *ClusterServer) Status(ctx context.Context, req *clusterpb.StatusRequest) (*clusterpb.StatusResponse, error) {
	node := s.node.Load()
	if node == nil {
		if req.GetLinearizable() {
			return nil, errNotMember
		}
		return &clusterpb.StatusResponse{NodeId: s.id, State: StateAwaitingJoin}, nil
	}
	if req.GetLinearizable() {
		if err := s.readBarrier(ctx, node); err != nil {
			return nil, err
		}
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
		LastLogIndex:  st.LastIndex,
		LastContact:   st.LastContact,
		LastContactMs: node.LastContact().Milliseconds(),
		Linearizable:  req.GetLinearizable(),
	}
	members, err := node.Members()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "read membership: %v", err)
	}
	resp.Members = membersPB(node, members)
	health, known := node.Health()
	if known {
		setHealth(resp, health)
	} else {
		resp.HealthNote = healthNote(leaderID, leaderAPI, node.IsLeader())
	}
	for id, w := range node.FSM().Watermarks() {
		resp.Chains = append(resp.Chains, watermarkPB(id, w))
	}
	sort.Slice(resp.Chains, func(i, j int) bool { return resp.Chains[i].ChainId < resp.Chains[j].ChainId })
	for id, k := range node.FSM().ChainKeys() {
		resp.Keys = append(resp.Keys, &clusterpb.ChainKey{ChainId: id, KeyType: k.KeyType, PubKey: k.PubKey})
	}
	sort.Slice(resp.Keys, func(i, j int) bool { return resp.Keys[i].ChainId < resp.Keys[j].ChainId })
	return resp, nil
}

func membersPB(node Raft, members []cluster.Member) []*clusterpb.Member {
	var out []*clusterpb.Member
	for _, m := range members {
		role := "follower"
		if m.Leader {
			role = "leader"
		}
		info, _ := node.FSM().Member(m.ID)
		out = append(out, &clusterpb.Member{
			Id: m.ID, RaftAddr: m.RaftAddr, ApiAddr: m.APIAddr, Role: role, Suffrage: m.Suffrage, Level: int32(info.Level),
			Health: "unknown",
		})
	}
	return out
}

// setHealth fills the leader's knowledge of each member into its answer.
func setHealth(resp *clusterpb.StatusResponse, h cluster.ClusterHealth) {
	resp.HealthKnown = true
	resp.FaultTolerance = int32(h.Tolerance())
	resp.UnreachableAfterMs = h.UnreachableAfter.Milliseconds()
	byID := map[string]cluster.MemberHealth{}
	for _, m := range h.Members {
		byID[m.ID] = m
	}
	for _, m := range resp.Members {
		mh, ok := byID[m.Id]
		if !ok {
			continue
		}
		m.Health = "unreachable"
		if mh.Reachable {
			m.Health = "healthy"
		}
		m.Heard, m.AppliedIndex, m.AppliedLag = mh.Heard, mh.AppliedIndex, mh.AppliedLag
		m.LastContactMs = -1
		if mh.Heard {
			m.LastContactMs = mh.LastContact.Milliseconds()
		}
	}
}

// healthNote is a non-leader's answer about its members' health.
func healthNote(leaderID, leaderAPI string, leading bool) string {
	switch {
	case leading:
		return "this node just became leader and has not asked the members yet: ask again in a second"
	case leaderID == "":
		return "only the leader knows whether it hears from each member, and no leader is known"
	}
	return fmt.Sprintf("only the leader knows whether it hears from each member: ask %s (kms-ha status --cluster %s)", leaderID, leaderAPI)
}

func watermarkPB(chainID string, w fsm.Watermark) *clusterpb.ChainWatermark {
	return &clusterpb.ChainWatermark{ChainId: chainID, Height: w.Height, Round: w.Round, Step: int32(w.Step),
		HasSignBytes: len(w.SignBytes) > 0}
}

// readBarrier makes the next local read linearizable: it obtains a read
// index from the leader (which confirms its leadership with a quorum first)
// and waits until this replica has applied it.
func (s *ClusterServer) readBarrier(ctx context.Context, node Raft) error {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	var idx uint64
	if node.IsLeader() {
		i, err := node.ReadIndex(ctx)
		if err != nil {
			return status.Errorf(codes.Unavailable, "linearizable read on %s: %v", node.ID(), err)
		}
		idx = i
	} else {
		leaderID, leaderAPI := node.Leader()
		if leaderAPI == "" {
			return status.Errorf(codes.Unavailable, "linearizable read: %s knows no leader (leader id %q); retry, or read without --linearizable", node.ID(), leaderID)
		}
		readIndex := func(nudge bool) error {
			return s.peer(ctx, leaderAPI, func(c clusterpb.ClusterClient) error {
				r, err := c.ReadIndex(ctx, &clusterpb.ReadIndexRequest{Nudge: nudge})
				if err == nil {
					idx = r.GetIndex()
				}
				return err
			})
		}
		if err := readIndex(false); err != nil {
			return status.Errorf(codes.Unavailable, "linearizable read: leader %s: %v", leaderID, errText(err))
		}
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := node.WaitApplied(wctx, idx)
		cancel()
		if err == nil {
			return nil
		}
		// The cluster is idle and this replica has not heard the latest
		// commit index: have the leader commit an entry that carries it.
		if err := readIndex(true); err != nil {
			return status.Errorf(codes.Unavailable, "linearizable read: leader %s: %v", leaderID, errText(err))
		}
	}
	if err := node.WaitApplied(ctx, idx); err != nil {
		return status.Errorf(codes.Unavailable, "linearizable read: %v", err)
	}
	return nil
}

// readTimeout bounds a linearizable read: a leader that cannot reach a
// quorum cannot confirm anything.
const readTimeout = 3 * time.Second

// ReadIndex is answered by the leader once a quorum confirmed it leads.
func (s *ClusterServer) ReadIndex(ctx context.Context, req *clusterpb.ReadIndexRequest) (*clusterpb.ReadIndexResponse, error) {
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	if req.GetNudge() {
		// A nudge commits an entry: only the members' own linearizable
		// reads ask for one, so a monitoring certificate cannot make the
		// leader write.
		if c, ok := callerOf(ctx); !ok || c.Role != pki.RoleNode || !node.IsVoter(c.Name) {
			return nil, status.Error(codes.PermissionDenied, "only voters may ask the leader to commit an entry (nudge)")
		}
		if err := node.Nudge(ctx); err != nil {
			return nil, status.Errorf(codes.Unavailable, "read index on %s: %v", node.ID(), err)
		}
	}
	idx, err := node.ReadIndex(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "read index on %s: %v", node.ID(), err)
	}
	return &clusterpb.ReadIndexResponse{Index: idx, LeaderId: node.ID()}, nil
}

// forward sends a write to the leader when this node is not the leader. It
// reports handled=false on the leader, which then serves the call itself.
// A request that was already forwarded is never forwarded again, so two
// nodes with stale views cannot bounce it between them.
func forward[T any](ctx context.Context, s *ClusterServer, node Raft, forwarded bool, op string,
	call func(ctx context.Context, c clusterpb.ClusterClient) (T, error),
) (resp T, handled bool, err error) {
	if node.IsLeader() {
		return resp, false, nil
	}
	leaderID, leaderAPI := node.Leader()
	if forwarded {
		return resp, true, status.Errorf(codes.Unavailable, "forwarded %s reached %s, which is not the leader; retry", op, node.ID())
	}
	if leaderAPI == "" {
		return resp, true, status.Errorf(codes.Unavailable, "%s knows no leader (leader id %q) to forward the %s to; retry when the cluster has a leader", node.ID(), leaderID, op)
	}
	s.log.Info("forwarding to the leader", "op", op, "leader", leaderID, "leader_api", leaderAPI)
	fctx := withForwardedCaller(ctx)
	err = s.peer(fctx, leaderAPI, func(c clusterpb.ClusterClient) error {
		var err error
		resp, err = call(fctx, c)
		return err
	})
	return resp, true, err
}

// Join admits the calling node on the leader (the interceptor checked that
// the id is its certificate's), or forwards the request to it once.
func (s *ClusterServer) Join(ctx context.Context, req *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error) {
	if req.GetId() == "" || req.GetRaftAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "join needs the node's id and raft address")
	}
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	fwd := &clusterpb.JoinRequest{Id: req.GetId(), RaftAddr: req.GetRaftAddr(), ApiAddr: req.GetApiAddr(),
		Forwarded: true, Fresh: req.GetFresh(), Level: req.GetLevel()}
	if resp, handled, err := forward(ctx, s, node, req.GetForwarded(), "join",
		func(ctx context.Context, c clusterpb.ClusterClient) (*clusterpb.JoinResponse, error) {
			return c.Join(ctx, fwd)
		}); handled {
		return resp, err
	}
	members, err := node.Join(ctx, cluster.JoinRequest{ID: req.GetId(), RaftAddr: req.GetRaftAddr(), APIAddr: req.GetApiAddr(),
		Fresh: req.GetFresh(), Level: int(req.GetLevel())})
	if err != nil {
		return nil, status.Errorf(leaderCode(err), "%v", err)
	}
	return &clusterpb.JoinResponse{LeaderId: node.ID(), Members: members}, nil
}

// Dialer opens client connections to nodes' API addresses. TLS holds the
// cluster CA and this node's certificate; nil means plaintext, which only
// tests of this package use.
type Dialer struct {
	TLS *tls.Config
}

// Dial opens a client connection to a node's API address.
func (d Dialer) Dial(addr string) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if d.TLS != nil {
		creds = credentials.NewTLS(d.TLS.Clone())
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("grpcapi: dial %s: %w", addr, err)
	}
	return conn, nil
}

func (d Dialer) with(ctx context.Context, addr string, fn func(clusterpb.ClusterClient) error) error {
	conn, err := d.Dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(clusterpb.NewClusterClient(conn))
}

// Probe asks the member id at apiAddr for its raft progress (see
// cluster.ProbeFunc): the leader uses it to promote caught-up non-voters
// and to keep a running member from being replaced.
func (d Dialer) Probe(ctx context.Context, id, apiAddr string) (cluster.PeerReport, error) {
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	var st *clusterpb.StatusResponse
	err := d.Call(apiAddr, timeout, func(ctx context.Context, c clusterpb.ClusterClient) error {
		var err error
		st, err = c.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	if err != nil {
		return cluster.PeerReport{}, err
	}
	if st.GetNodeId() != id {
		return cluster.PeerReport{}, fmt.Errorf("grpcapi: %s answers as %q, not %s", apiAddr, st.GetNodeId(), id)
	}
	return cluster.PeerReport{Running: st.GetState() != StateAwaitingJoin, LastIndex: st.GetLastLogIndex(),
		AppliedIndex: st.GetAppliedIndex(), Leader: st.GetLeaderId(),
		LeaderContact: time.Duration(st.GetLastContactMs()) * time.Millisecond}, nil
}

// CallError is a failed call as the command line shows it. It wraps the
// gRPC status, so callers test status.Code(err), never the message, and
// ErrNotClusterAPI when the address answered as something else.
type CallError struct {
	msg   string
	err   error
	cause error
}

func (e *CallError) Error() string { return e.msg }
func (e *CallError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.err, e.cause}
	}
	return []error{e.err}
}

// Call runs fn against the node at addr with a timeout, turning gRPC
// errors into plain messages for the command line.
func (d Dialer) Call(addr string, timeout time.Duration, fn func(ctx context.Context, c clusterpb.ClusterClient) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := d.with(ctx, addr, func(c clusterpb.ClusterClient) error { return fn(ctx, c) })
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if st.Code() == codes.Unavailable && d.TLS != nil && d.speaksTLSWithoutH2(addr, timeout) {
		return &CallError{msg: fmt.Sprintf("%s looks like a raft port (cluster.raft_addr): it speaks TLS but not gRPC; "+
			"the cluster API is at cluster.api_addr (default port 7101)", addr), err: err, cause: ErrNotClusterAPI}
	}
	return &CallError{msg: callMessage(addr, timeout, st), err: err}
}

func callMessage(addr string, timeout time.Duration, st *status.Status) string {
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		if strings.Contains(msg, "authentication handshake failed") || strings.Contains(msg, "certificate") {
			return fmt.Sprintf("%s: TLS handshake failed: %s (check that both certificates come from the same cluster CA, "+
				"and that the node's certificate lists the host you dial: kms-ha certs issue --host)", addr, msg)
		}
		if strings.Contains(msg, "connection refused") || strings.Contains(msg, "connection error") || strings.Contains(msg, "no such host") {
			return fmt.Sprintf("%s: unavailable: %s (is kms-ha running there?)", addr, msg)
		}
		return fmt.Sprintf("%s: unavailable: %s", addr, msg)
	case codes.DeadlineExceeded:
		return fmt.Sprintf("%s: no answer within %s", addr, timeout)
	case codes.PermissionDenied:
		return fmt.Sprintf("%s: permission denied: %s", addr, msg)
	}
	return fmt.Sprintf("%s: %s", addr, msg)
}

// errText is a gRPC error's message without the status prefix.
func errText(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}
