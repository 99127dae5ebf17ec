package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/internal/backoff"
)

// A node's membership, from its side, goes through three states; the
// policy (who may join, when a non-voter is promoted, removing a lost
// incarnation, address updates) is the leader's, in package cluster.
//
//   - waiting: no raft state. The node serves its API (status says
//     AwaitingJoin) and does not run raft until `kms-ha join` has had a
//     member admit it and recorded that, with the members that admitted
//     it, in the raft store (awaitAdmission). The record lives in the
//     raft store (wal/ or raft.db) so that whatever wipes the raft state
//     wipes it too.
//   - non-voter: raft runs; the leader replicates to it and promotes it
//     once it sees its log caught up. It counts towards no quorum.
//   - voter: a full member. register keeps its entry (raft address, API
//     address, command level) current, through any member, so a node
//     restarted on a new address updates itself.

// awaitAdmission blocks until raft may run on this data dir: at once for
// a member, or, for a node with no raft state, once `kms-ha join` has had
// it admitted (see cluster.ReadState for why an empty node must not run
// raft before that).
func (n *Node) awaitAdmission(ctx context.Context) error {
	cc := ClusterConfig(n.cfg, n.log)
	warned := false
	// A poll of the local data dir: no peer to spread the load for, so
	// no jitter.
	b := backoff.Constant(250 * time.Millisecond).WithJitter(0)
	for {
		st, err := cluster.ReadState(cc, 2*time.Second)
		if err != nil && !errors.Is(err, cluster.ErrLocked) {
			return err
		}
		if err == nil && st.MayStartRaft() {
			if warned {
				n.log.Info("admitted to the cluster; starting raft")
			}
			return nil
		}
		if !warned {
			warned = true
			n.log.Warn(AwaitingJoinHint(n.cfg.Home))
		}
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// AwaitingJoinHint is what a node with no raft state tells its operator.
// It cannot know whether other members run, so it names both ways out: a
// first node that was started without bootstrap, and a node to be added.
func AwaitingJoinHint(home string) string {
	if home == "" {
		home = "HOME"
	}
	return fmt.Sprintf("no raft state: this node runs no raft until it is bootstrapped or admitted. "+
		"If this is the first node of a new cluster, stop it and run `kms-ha bootstrap --home %s`, then start it; "+
		"otherwise run `kms-ha join --home %s --cluster MEMBER_API_ADDR` from another shell", home, home)
}

// register keeps this node's entry current: its raft address (a node
// restarted with a new advertise address updates it without anyone wiping
// raft data), its API address and its command level. The leader records
// its own in lead.
func (n *Node) register(ctx context.Context) {
	cl := n.cluster.Load()
	self := n.cfg.Cluster.NodeID
	for b := backoff.New(300*time.Millisecond, 5*time.Second); b.Wait(ctx); {
		if cl.IsLeader() {
			continue
		}
		if cl.LastContact() > staleAfter {
			n.learnMembers(ctx, cl)
		} else {
			// A leader reaches this node again: its configuration is
			// current, and no one is trusted beyond it.
			cl.VouchPeers(nil)
		}
		m, _ := cl.FSM().Member(self)
		addrOK := false
		members, err := cl.Members()
		if err != nil {
			continue
		}
		for _, mm := range members {
			if mm.ID == self {
				addrOK = mm.RaftAddr == n.cfg.Cluster.AdvertiseAddr
			}
		}
		if len(members) > 0 && !slices.ContainsFunc(members, func(mm cluster.Member) bool { return mm.ID == self }) {
			continue // removed, or not yet in the configuration: not ours to fix
		}
		if addrOK && m.APIAddr == n.cfg.Cluster.APIAddr && m.Level == fsm.Level {
			b.JumpToMax() // re-check now and then: a leader may change
			continue
		}
		req := &clusterpb.JoinRequest{Id: self, RaftAddr: n.cfg.Cluster.AdvertiseAddr, ApiAddr: n.cfg.Cluster.APIAddr, Level: fsm.Level}
		// The leader may not reach this node at its old address, so try
		// every member's API: any of them forwards to the leader.
		var targets []string
		if _, api := cl.Leader(); api != "" {
			targets = append(targets, api)
		}
		for id, api := range cl.LogMemberAPIs() {
			if id != self && api != "" && !slices.Contains(targets, api) {
				targets = append(targets, api)
			}
		}
		for _, t := range targets {
			err := n.dialer.Call(t, 3*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
				_, err := c.Join(ctx, req)
				return err
			})
			if err == nil {
				if !addrOK {
					n.log.Info("updated this node's raft address in the cluster", "advertise_addr", n.cfg.Cluster.AdvertiseAddr)
				}
				break
			}
			n.log.Warn("could not update this node's entry in the cluster yet", "via", t, "err", err)
		}
	}
}

// staleAfter is how long without a leader's contact before a member asks
// the others who the members are now.
const staleAfter = 5 * time.Second

// learnMembers asks the members this node knows for the configuration as
// they see it. A member that was down while others were added (and one of
// those now leads) would otherwise refuse the new leader's appends, since
// its own stale configuration does not name it, and never catch up. Only
// the voters of this node's own configuration are asked, over mutual TLS,
// and the set is dropped as soon as a leader reaches this node again.
func (n *Node) learnMembers(ctx context.Context, cl *cluster.Node) {
	var ids []string
	for id, api := range cl.LogMemberAPIs() {
		if id == n.cfg.Cluster.NodeID || api == "" || !cl.IsVoter(id) {
			continue
		}
		var st *clusterpb.StatusResponse
		err := n.dialer.Call(api, time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
			var err error
			st, err = c.Status(ctx, &clusterpb.StatusRequest{})
			return err
		})
		if err != nil || st.GetNodeId() != id || st.GetLeaderId() == "" {
			continue
		}
		for _, m := range st.GetMembers() {
			ids = append(ids, m.GetId())
		}
	}
	if len(ids) > 0 {
		cl.VouchPeers(ids)
	}
}
