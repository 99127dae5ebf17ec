package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// ErrLeaderItself is returned when an operation would remove or demote the
// leader: hand leadership over first.
var ErrLeaderItself = errors.New("that node is the leader")

// SetMember records a member's API address and command level.
func (n *Node) SetMember(ctx context.Context, id, apiAddr string, level int) error {
	if _, err := write[struct{}](ctx, n, fsm.CmdSetMember, fsm.SetMember{ID: id, APIAddr: apiAddr, Level: level}); err != nil {
		return fmt.Errorf("cluster: record member %s: %w", id, err)
	}
	return nil
}

// write commits a command at its type's newest version, once every member
// can apply that, and returns the FSM's result.
func write[T any](ctx context.Context, n *Node, t fsm.CommandType, body any) (T, error) {
	var zero T
	if err := n.requireLevel(t); err != nil {
		return zero, err
	}
	data, err := fsm.Encode(t, body)
	if err != nil {
		return zero, err
	}
	return applyAs[T](ctx, n, data)
}

// requireLevel refuses to write a command type some member cannot apply: a
// member that rejects an entry the others applied would diverge from them.
func (n *Node) requireLevel(t fsm.CommandType) error {
	need := fsm.RequiredLevel(t)
	if need == 0 {
		return nil
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("read configuration: %w", err)
	}
	for _, s := range cf.Configuration().Servers {
		m, ok := n.fsm.Member(string(s.ID))
		if !ok || m.Level < need {
			return fmt.Errorf("member %s has not registered support for this operation (it runs an older kms-ha, "+
				"or has not started since it was upgraded): upgrade and start every member, then retry", s.ID)
		}
	}
	return nil
}

// strictReserve reports whether reservations may be written at version 2
// (refuse a chain without a watermark): only once every member registered
// level 1. Until then, during an upgrade from the first release, they are
// written at version 1, which signs a chain without a watermark from zero
// as that release did. Cached for a second: it is on the sign path, and
// levels change only when members are upgraded.
func (n *Node) strictReserve() bool {
	now := time.Now().UnixNano()
	if at := n.levelAt.Load(); at != 0 && now-at < int64(time.Second) {
		return n.levelOK.Load()
	}
	// Once an entry of level 1 was applied, every member had registered
	// level 1 (such entries are written only then) and no older binary may
	// join since: no need to ask the configuration.
	ok := n.fsm.MaxLevel() >= 1 || n.requireLevel(fsm.CmdReserve) == nil
	n.levelOK.Store(ok)
	n.levelAt.Store(now)
	return ok
}

// Import raises a chain's watermark through raft; it never lowers one. The
// result tells whether the watermark moved.
func (n *Node) Import(ctx context.Context, im fsm.Import) (fsm.ImportResult, error) {
	r, err := write[fsm.ImportResult](ctx, n, fsm.CmdImport, im)
	if err != nil {
		return r, fmt.Errorf("cluster: import %s: %w", im.ChainID, err)
	}
	return r, nil
}

// SetChainKey records the public key of a chain unless one is recorded
// already; the result says whether the recorded key is this one.
func (n *Node) SetChainKey(ctx context.Context, k fsm.SetChainKey) (fsm.KeyResult, error) {
	r, err := write[fsm.KeyResult](ctx, n, fsm.CmdSetChainKey, k)
	if err != nil {
		return r, fmt.Errorf("cluster: record key of %s: %w", k.ChainID, err)
	}
	return r, nil
}

// Remove takes a member out of the configuration. The leader cannot remove
// itself here: it transfers leadership first (see TransferLeadership), so
// that the validators never wait for an election.
func (n *Node) Remove(ctx context.Context, id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if id == n.cfg.NodeID {
		return fmt.Errorf("cluster: remove %s: %w; transfer leadership first", id, ErrLeaderItself)
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("cluster: remove %s: %w", id, err)
	}
	found := false
	voters := 0
	for _, s := range cf.Configuration().Servers {
		found = found || string(s.ID) == id
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	if !found {
		return fmt.Errorf("cluster: remove %s: not a member", id)
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, n.timeout(ctx)).Error(); err != nil {
		return fmt.Errorf("cluster: remove %s: %w", id, err)
	}
	// The member record goes too, so nobody forwards to its API address.
	if err := n.SetMember(ctx, id, "", 0); err != nil {
		n.log.Warn("removed member's api address is still recorded", "member", id, "err", err)
	}
	n.log.Info("member removed", "member", id, "voters_before", voters)
	return nil
}

func (n *Node) timeout(ctx context.Context) time.Duration {
	t := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < t {
		t = time.Until(dl)
	}
	return max(t, time.Millisecond)
}

// TransferLeadershipTo hands leadership to the member id, or to the most
// up-to-date follower when id is empty, and waits until this node has
// stepped down.
func (n *Node) TransferLeadershipTo(id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	var f raft.Future
	if id == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		if id == n.cfg.NodeID {
			return fmt.Errorf("cluster: transfer leadership: %s already leads", id)
		}
		addr := ""
		cf := n.raft.GetConfiguration()
		if err := cf.Error(); err != nil {
			return fmt.Errorf("cluster: transfer leadership: %w", err)
		}
		for _, s := range cf.Configuration().Servers {
			if string(s.ID) == id {
				if s.Suffrage != raft.Voter {
					return fmt.Errorf("cluster: transfer leadership: %s is not a voter", id)
				}
				addr = string(s.Address)
			}
		}
		if addr == "" {
			return fmt.Errorf("cluster: transfer leadership: %s is not a member", id)
		}
		f = n.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr))
	}
	if err := f.Error(); err != nil {
		return fmt.Errorf("cluster: transfer leadership: %w", err)
	}
	return nil
}

// ErrNotReady is returned by a linearizable read on a leader that has not
// yet committed an entry of its own term.
var ErrNotReady = errors.New("the leader has not yet committed an entry of its term")

// ReadIndex returns an index that a linearizable read must wait for: the
// leader's commit index, read before it confirms with a quorum that it is
// still leader. Only a leader answers.
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	if !n.IsLeader() {
		return 0, ErrNotLeader
	}
	if !n.termReady.Load() {
		return 0, ErrNotReady
	}
	idx := n.raft.CommitIndex()
	done := make(chan error, 1)
	go func() { done <- n.raft.VerifyLeader().Error() }()
	select {
	case err := <-done:
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return idx, nil
}

// Nudge commits an empty entry, so followers that missed the latest commit
// index (raft pipelines it with the next entry) learn it.
func (n *Node) Nudge(ctx context.Context) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if err := n.raft.Barrier(n.timeout(ctx)).Error(); err != nil {
		return fmt.Errorf("cluster: nudge: %w", err)
	}
	return nil
}

// WaitApplied blocks until the local FSM has applied idx.
func (n *Node) WaitApplied(ctx context.Context, idx uint64) error {
	for delay := 200 * time.Microsecond; n.raft.AppliedIndex() < idx; delay = min(2*delay, 10*time.Millisecond) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: applied index %d, waiting for %d: %w", n.raft.AppliedIndex(), idx, ctx.Err())
		case <-time.After(delay):
		}
	}
	return nil
}

// LastContact is how long ago this node heard from the leader: zero on the
// leader, and since start when it never did.
func (n *Node) LastContact() time.Duration {
	if n.IsLeader() {
		return 0
	}
	lc := n.raft.LastContact()
	if lc.IsZero() {
		return time.Since(n.started)
	}
	return time.Since(lc)
}

// LogMemberAPIs returns the API addresses recorded in this node's own log
// and state, committed or not. A restarted node applies its log only once
// a leader tells it the commit index, so a node the leader cannot reach
// (it moved to a new address) finds the others here to ask for its update.
func (n *Node) LogMemberAPIs() map[string]string {
	out := map[string]string{}
	for id, m := range n.fsm.Members() {
		out[id] = m.APIAddr
	}
	first, err1 := n.st.bolt.FirstIndex()
	last, err2 := n.st.bolt.LastIndex()
	if err1 != nil || err2 != nil {
		return out
	}
	for i := max(first, 1); i <= last; i++ {
		var l raft.Log
		if n.st.bolt.GetLog(i, &l) != nil || l.Type != raft.LogCommand {
			continue
		}
		if t, body, err := fsm.Decode(l.Data); err == nil && t == fsm.CmdSetMember {
			m := body.(fsm.SetMember)
			if m.APIAddr == "" {
				delete(out, m.ID)
			} else {
				out[m.ID] = m.APIAddr
			}
		}
	}
	return out
}
