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

// ErrLeaderItself is returned when an operation would remove or demote the
// leader: hand leadership over first.
var ErrLeaderItself = errors.New("that node is the leader")

// ErrNotLeader is returned by writes on a node that is not the leader.
var ErrNotLeader = errors.New("not the leader")

// ErrNotCommitted is returned by a write that this node could not see
// committed: it did not commit within the apply timeout (no quorum
// answered in time, or this process was paused), the caller's context
// ended first, raft did not take the entry in time (a full queue) or shut
// down. The entry may still commit later; nothing was decided for the
// caller, who may retry. The cause stays in the chain (errors.Is with
// context.DeadlineExceeded, raft.ErrEnqueueTimeout, ...).
var ErrNotCommitted = errors.New("not committed")

// notCommitted types a write that failed before this node saw it commit.
func notCommitted(cause error) error {
	return fmt.Errorf("%w: %w", ErrNotCommitted, cause)
}

// Reserve commits a reservation of hrs for chainID through raft and returns
// the FSM's decision once the entry is committed by a quorum and applied.
// It never waits longer than the apply timeout or ctx allows; on error
// nothing may be signed.
func (n *Node) Reserve(ctx context.Context, chainID string, hrs fsm.HRS, signBytes []byte) (fsm.Decision, error) {
	strict := n.strictReserve()
	if !strict {
		// A version 1 entry would sign a chain without a watermark from
		// zero. The leader's state is complete (it serves only after its
		// barrier), so it applies the FSM's rule itself, as the FSM does
		// for version 2 entries.
		if d, refused := n.fsm.StateRefusal(chainID); refused {
			d.Detail += " (but not every member has registered a kms-ha version that can import one yet: upgrade and start every member first)"
			return d, nil
		}
	}
	data, err := fsm.EncodeReserve(fsm.Reserve{ChainID: chainID, HRS: hrs, SignBytes: signBytes, NeedState: strict})
	if err != nil {
		return fsm.Decision{}, fmt.Errorf("cluster: reserve %s %s: %w", chainID, hrs, err)
	}
	d, err := applyAs[fsm.Decision](ctx, n, data)
	if err != nil {
		return d, fmt.Errorf("cluster: reserve %s %s: %w", chainID, hrs, err)
	}
	return d, nil
}

// applyAs commits data through raft and returns the FSM's result for it as
// a T (each command type has one result type, see fsm.FSM.Apply). An
// entry the FSM refused to decode is an error.
func applyAs[T any](ctx context.Context, n *Node, data []byte) (T, error) {
	var zero T
	res, err := n.apply(ctx, data)
	if err != nil {
		return zero, err
	}
	if r, ok := res.(T); ok {
		return r, nil
	}
	if e, ok := res.(error); ok {
		return zero, e
	}
	return zero, fmt.Errorf("unexpected result %T from the state machine", res)
}

func (n *Node) apply(ctx context.Context, data []byte) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, notCommitted(err)
	}
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return nil, notCommitted(context.DeadlineExceeded)
	}
	deadline := time.Now().Add(timeout)
	for {
		if n.raft.State() != raft.Leader {
			return nil, ErrNotLeader
		}
		res, err := n.applyOnce(ctx, data, time.Until(deadline))
		// During a leadership transfer raft refuses new entries at once.
		// The transfer ends within an election timeout, with this node a
		// follower (then ErrNotLeader) or still leader (then the entry goes
		// through): wait for either rather than fail the validator's vote.
		if !errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return res, err
		}
		if !backoff.Sleep(ctx, 10*time.Millisecond) {
			return nil, notCommitted(ctx.Err())
		}
		if time.Until(deadline) <= 0 {
			return nil, fmt.Errorf("%w: a leadership transfer is still in progress", ErrNotLeader)
		}
	}
}

func (n *Node) applyOnce(ctx context.Context, data []byte, timeout time.Duration) (any, error) {
	f := n.raft.Apply(data, timeout)
	errCh := make(chan error, 1)
	go func() { errCh <- f.Error() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	// Every way out but a committed entry is typed ErrNotLeader or
	// ErrNotCommitted: the signer drops the validator's connection on
	// those so that CometBFT retries, where an error answer would lose the
	// vote for good. The timer and ctx.Done fire together when the timeout
	// was cut to ctx's deadline; either way is ErrNotCommitted.
	select {
	case err := <-errCh:
		if err != nil {
			return nil, futureError(err)
		}
		return f.Response(), nil
	case <-timer.C:
		// The entry may still commit later; that only moves the watermark
		// up, and nothing was signed for it.
		return nil, fmt.Errorf("%w within %s (is a quorum reachable?)", ErrNotCommitted, timeout)
	case <-ctx.Done():
		return nil, notCommitted(ctx.Err())
	}
}

// futureError types the error of an apply future: raft reports it for an
// entry this node did not see committed.
func futureError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return err // apply waits for the transfer to end
	default:
		// A full queue (ErrEnqueueTimeout), a shutdown, a restore, a
		// failed log write (raft steps down then).
		return notCommitted(err)
	}
}

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

// RecordSignature commits the signature about to be released at a chain's
// watermark and returns the one the cluster holds there (the first one
// recorded wins). It refuses, as every write of a new type, while some
// member's binary cannot apply it.
func (n *Node) RecordSignature(ctx context.Context, r fsm.RecordSignature) (fsm.RecordResult, error) {
	// Once a level 2 entry was applied no older member may join: skip
	// reading the configuration on the sign path.
	if n.fsm.MaxLevel() < fsm.RequiredLevel(fsm.CmdRecordSignature) {
		if err := n.requireLevel(fsm.CmdRecordSignature); err != nil {
			return fsm.RecordResult{}, fmt.Errorf("cluster: record signature of %s %s: %w", r.ChainID, r.HRS, err)
		}
	}
	data, err := fsm.Encode(fsm.CmdRecordSignature, r)
	if err != nil {
		return fsm.RecordResult{}, err
	}
	res, err := applyAs[fsm.RecordResult](ctx, n, data)
	if err != nil {
		return res, fmt.Errorf("cluster: record signature of %s %s: %w", r.ChainID, r.HRS, err)
	}
	return res, nil
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

// TransferLeadership hands leadership to an up-to-date follower.
func (n *Node) TransferLeadership() error { return n.TransferLeadershipTo("") }
