package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/internal/backoff"
)

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

// WaitApplied blocks until the local state machine has applied every entry
// up to idx (not only raft's AppliedIndex, see applied).
func (n *Node) WaitApplied(ctx context.Context, idx uint64) error {
	// A poll of local state: no jitter, short first steps (the entry is
	// usually a few hundred microseconds from applied).
	b := backoff.New(200*time.Microsecond, 10*time.Millisecond).WithJitter(0)
	for !n.fsmApplied(idx) {
		if !b.Wait(ctx) {
			return fmt.Errorf("cluster: applied index %d (state machine %d), waiting for %d: %w",
				n.raft.AppliedIndex(), n.applied.index.Load(), idx, ctx.Err())
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
	first, err1 := n.st.db.FirstIndex()
	last, err2 := n.st.db.LastIndex()
	if err1 != nil || err2 != nil {
		return out
	}
	for i := max(first, 1); i <= last; i++ {
		var l raft.Log
		if n.st.db.GetLog(i, &l) != nil || l.Type != raft.LogCommand {
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
