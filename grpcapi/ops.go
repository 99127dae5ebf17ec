package grpcapi

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/internal/backoff"
)

func leaderCode(err error) codes.Code {
	if errors.Is(err, cluster.ErrNotLeader) {
		return codes.Unavailable
	}
	return codes.FailedPrecondition
}

// Remove takes a member out. Removing the leader first hands leadership to
// another voter, so the validators wait for one dial rather than an
// election, and the new leader then removes it.
func (s *ClusterServer) Remove(ctx context.Context, req *clusterpb.RemoveRequest) (*clusterpb.RemoveResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "remove needs the id of the member to remove")
	}
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	fwd := &clusterpb.RemoveRequest{Id: req.GetId(), Forwarded: true}
	if resp, handled, err := forward(ctx, s, node, req.GetForwarded(), "remove",
		func(ctx context.Context, c clusterpb.ClusterClient) (*clusterpb.RemoveResponse, error) {
			return c.Remove(ctx, fwd)
		}); handled {
		return resp, err
	}
	if req.GetId() == node.ID() {
		s.log.Info("removing the leader itself: transferring leadership first", "member", node.ID())
		next, err := s.transfer(ctx, node, "")
		if err != nil {
			return nil, err
		}
		if next == node.ID() {
			return nil, status.Errorf(codes.Unavailable, "leadership came back to %s (the follower that took it refused to lead?); "+
				"see `kms-ha status` and retry", node.ID())
		}
		_, api := node.Leader()
		var resp *clusterpb.RemoveResponse
		fctx := withForwardedCaller(ctx)
		err = s.peer(fctx, api, func(c clusterpb.ClusterClient) error {
			var err error
			resp, err = c.Remove(fctx, fwd)
			return err
		})
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "leadership went to %s, which could not remove %s: %v", next, node.ID(), errText(err))
		}
		return resp, nil
	}
	if err := node.Remove(ctx, req.GetId()); err != nil {
		return nil, status.Errorf(leaderCode(err), "%v", err)
	}
	return &clusterpb.RemoveResponse{LeaderId: node.ID()}, nil
}

// TransferLeadership hands leadership over and answers once another node
// is known as leader.
func (s *ClusterServer) TransferLeadership(ctx context.Context, req *clusterpb.TransferLeadershipRequest) (*clusterpb.TransferLeadershipResponse, error) {
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	fwd := &clusterpb.TransferLeadershipRequest{To: req.GetTo(), Forwarded: true}
	if resp, handled, err := forward(ctx, s, node, req.GetForwarded(), "leadership transfer",
		func(ctx context.Context, c clusterpb.ClusterClient) (*clusterpb.TransferLeadershipResponse, error) {
			return c.TransferLeadership(ctx, fwd)
		}); handled {
		return resp, err
	}
	next, err := s.transfer(ctx, node, req.GetTo())
	if err != nil {
		return nil, err
	}
	return &clusterpb.TransferLeadershipResponse{NewLeaderId: next}, nil
}

func (s *ClusterServer) transfer(ctx context.Context, node Raft, to string) (string, error) {
	if to == node.ID() {
		return to, nil
	}
	if s.BeforeTransfer != nil {
		s.BeforeTransfer()
	}
	term := node.Stats().Term
	if err := node.TransferLeadershipTo(to); err != nil {
		return "", status.Errorf(leaderCode(err), "%v", err)
	}
	// Wait until this node sees the leader of a later term, so that the
	// caller's next request can be forwarded to it. That may be this node
	// again: the target can refuse to lead (a key mismatch) and hand back.
	var lastSeen string
	var settled bool
	var settleAt time.Time
	for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline); {
		if id, api := node.Leader(); id != "" && api != "" && (id != node.ID() || node.Stats().Term > term) {
			// A target that finds it cannot sign (another key) hands
			// leadership on right after its barrier: give it a moment, so
			// the answer names the leader that stays.
			if settled && id == lastSeen {
				s.log.Info("leadership transferred", "from", node.ID(), "to", id, "asked_for", to)
				return id, nil
			}
			if id != lastSeen {
				lastSeen, settled = id, false
				settleAt = time.Now().Add(500 * time.Millisecond)
			} else if time.Now().After(settleAt) {
				settled = true
				continue
			}
		}
		if !backoff.Sleep(ctx, 20*time.Millisecond) {
			return "", status.FromContextError(ctx.Err()).Err()
		}
	}
	return "", status.Errorf(codes.Unavailable, "%s stepped down but no new leader is known yet; check `kms-ha status`", node.ID())
}

// ImportState raises a chain's watermark; it never lowers one.
func (s *ClusterServer) ImportState(ctx context.Context, req *clusterpb.ImportStateRequest) (*clusterpb.ImportStateResponse, error) {
	if req.GetChainId() == "" {
		return nil, status.Error(codes.InvalidArgument, "import needs a chain id")
	}
	if req.GetHeight() < 0 || req.GetRound() < 0 || req.GetStep() < 0 || req.GetStep() > 3 || (req.GetStep() == 0 && req.GetHeight() != 0) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid position height %d round %d step %d (step 1 proposal, 2 prevote, 3 precommit; 0 only at height 0)",
			req.GetHeight(), req.GetRound(), req.GetStep())
	}
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	fwd := &clusterpb.ImportStateRequest{ChainId: req.GetChainId(), Height: req.GetHeight(), Round: req.GetRound(),
		Step: req.GetStep(), SignBytes: req.GetSignBytes(), Source: req.GetSource(), Forwarded: true, Force: req.GetForce()}
	if resp, handled, err := forward(ctx, s, node, req.GetForwarded(), "state import",
		func(ctx context.Context, c clusterpb.ClusterClient) (*clusterpb.ImportStateResponse, error) {
			return c.ImportState(ctx, fwd)
		}); handled {
		return resp, err
	}
	if err := s.checkImport(node, req); err != nil {
		return nil, err
	}
	r, err := node.Import(ctx, fsm.Import{
		ChainID:   req.GetChainId(),
		HRS:       fsm.HRS{Height: req.GetHeight(), Round: req.GetRound(), Step: int8(req.GetStep())},
		SignBytes: req.GetSignBytes(),
		Source:    req.GetSource(),
	})
	if err != nil {
		return nil, status.Errorf(leaderCode(err), "%v", err)
	}
	resp := &clusterpb.ImportStateResponse{Applied: r.Applied, Current: watermarkPB(req.GetChainId(), r.Current)}
	if r.Had {
		resp.Previous = watermarkPB(req.GetChainId(), r.Previous)
	}
	s.log.Info("state import", "chain", req.GetChainId(), "source", req.GetSource(), "applied", r.Applied,
		"requested", fsm.HRS{Height: req.GetHeight(), Round: req.GetRound(), Step: int8(req.GetStep())}.String(),
		"watermark", r.Current.HRS.String())
	return resp, nil
}

// ImportPolicy bounds what the leader imports.
type ImportPolicy struct {
	// Chains the cluster signs for (kms.yaml chains); nil allows any.
	Chains []string
	// MaxJump is how far an import may raise an existing watermark
	// without force; 0 means no limit.
	MaxJump int64
}

// checkImport refuses an import into a chain this cluster does not sign
// for, or one that raises an existing watermark further than the policy
// allows without force: a mistyped height would stop the validator from
// signing until the chain got there, and a watermark is never lowered.
func (s *ClusterServer) checkImport(node Raft, req *clusterpb.ImportStateRequest) error {
	p := s.ImportPolicy
	if p.Chains != nil && !slices.Contains(p.Chains, req.GetChainId()) {
		return status.Errorf(codes.InvalidArgument, "chain %q is not one this cluster signs for (chains in kms.yaml: %s); "+
			"check the chain id: a watermark cannot be removed once imported. Nothing was imported",
			req.GetChainId(), strings.Join(p.Chains, ", "))
	}
	cur, ok := node.FSM().Watermark(req.GetChainId())
	if !ok || p.MaxJump == 0 || req.GetForce() || req.GetHeight()-cur.Height <= p.MaxJump {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition, "chain %s: the import would raise the watermark from height %d to %d, "+
		"%d heights at once (more than cluster.max_import_jump, %d); the validator could not sign until the chain reaches it. "+
		"Check the file; if the height is right, run the import again with --force. Nothing was imported",
		req.GetChainId(), cur.Height, req.GetHeight(), req.GetHeight()-cur.Height, p.MaxJump)
}

// Backup returns the replicated state read linearizably on the leader.
func (s *ClusterServer) Backup(ctx context.Context, req *clusterpb.BackupRequest) (*clusterpb.BackupResponse, error) {
	node := s.node.Load()
	if node == nil {
		return nil, errNotMember
	}
	if resp, handled, err := forward(ctx, s, node, req.GetForwarded(), "backup",
		func(ctx context.Context, c clusterpb.ClusterClient) (*clusterpb.BackupResponse, error) {
			return c.Backup(ctx, &clusterpb.BackupRequest{Forwarded: true})
		}); handled {
		return resp, err
	}
	if err := s.readBarrier(ctx, node); err != nil {
		return nil, err
	}
	idx := node.Stats().AppliedIndex
	data, err := json.MarshalIndent(node.FSM().State(), "", "  ")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode state: %v", err)
	}
	return &clusterpb.BackupResponse{State: data, Index: idx, LeaderId: node.ID()}, nil
}
