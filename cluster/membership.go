package cluster

import (
	"fmt"

	"github.com/hashicorp/raft"
)

// Member is one server of the raft configuration as operators see it.
type Member struct {
	ID       string
	RaftAddr string
	APIAddr  string
	Suffrage string
	Leader   bool
}

// Members lists the latest raft configuration with each member's API
// address from the replicated state.
func (n *Node) Members() ([]Member, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("cluster: read configuration: %w", err)
	}
	_, leaderID := n.raft.LeaderWithID()
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{
			ID:       string(s.ID),
			RaftAddr: string(s.Address),
			APIAddr:  n.fsm.MemberAPIAddr(string(s.ID)),
			Suffrage: s.Suffrage.String(),
			Leader:   s.ID == leaderID,
		})
	}
	return out, nil
}

// Leader returns the leader's id and API address as far as this node knows
// (empty when there is no known leader).
func (n *Node) Leader() (id, apiAddr string) {
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return "", ""
	}
	return string(lid), n.fsm.MemberAPIAddr(string(lid))
}

// Admit handles a join on the leader.
//
// A node is admitted as a non-voter, so that it counts towards no quorum
// before it runs raft and has caught up; it then asks for promotion itself
// (promote). fresh says the joining node holds no raft state: if a member
// with that id exists, it is an earlier incarnation whose acknowledged
// entries and votes were lost with its disk, so it is removed first, and
// nothing it once acknowledged can be counted again. Joining again as the
// member one already is changes nothing, or updates its address.
func (n *Node) Admit(id, raftAddr string, fresh, promote bool) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if id == n.cfg.NodeID {
		return fmt.Errorf("cluster: admit %s: that is the leader itself", id)
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("cluster: admit %s: %w", id, err)
	}
	var cur *raft.Server
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) != id && string(s.Address) == raftAddr {
			return fmt.Errorf("cluster: admit %s: address %s already belongs to member %s", id, raftAddr, s.ID)
		}
		if string(s.ID) == id {
			cur = &s
		}
	}
	timeout := n.cfg.ApplyTimeout
	if cur == nil && !fresh {
		// Raft state from outside this cluster (another cluster, a copied
		// or restored dir) would merge a foreign log and foreign votes.
		return fmt.Errorf("cluster: admit %s: it is not a member but holds raft state; a node joins with an empty data dir "+
			"(move %s's data dir away, then run kms-ha join again)", id, id)
	}
	if cur != nil && fresh {
		n.log.Warn("member rejoins without its raft state; removing its old incarnation before admitting it again", "member", id)
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, timeout).Error(); err != nil {
			return fmt.Errorf("cluster: remove the old incarnation of %s (a quorum of the remaining members must be up): %w", id, err)
		}
		cur = nil
	}
	switch {
	case cur == nil || (cur.Suffrage != raft.Voter && !promote && string(cur.Address) != raftAddr):
		if err := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, timeout).Error(); err != nil {
			return fmt.Errorf("cluster: admit %s at %s as non-voter: %w", id, raftAddr, err)
		}
	case cur.Suffrage == raft.Voter && string(cur.Address) == raftAddr:
		return nil
	case cur.Suffrage == raft.Voter || promote:
		// A voter's new address, or a caught-up non-voter's promotion.
		if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, timeout).Error(); err != nil {
			return fmt.Errorf("cluster: make %s at %s a voter: %w", id, raftAddr, err)
		}
	}
	return nil
}

// Suffrage returns this node's suffrage in the latest configuration
// ("Voter", "Nonvoter", "Staging"), or "" if it is not a member.
func (n *Node) Suffrage() string {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return ""
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == n.cfg.NodeID {
			return s.Suffrage.String()
		}
	}
	return ""
}

// Stats are the raft numbers operators ask for.
type Stats struct {
	State        string
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	LastContact  string
}

// Stats returns this node's raft numbers.
func (n *Node) Stats() Stats {
	s := n.raft.Stats()
	var term, commit uint64
	fmt.Sscan(s["term"], &term)
	fmt.Sscan(s["commit_index"], &commit)
	return Stats{
		State:        n.raft.State().String(),
		Term:         term,
		CommitIndex:  commit,
		AppliedIndex: n.raft.AppliedIndex(),
		LastContact:  s["last_contact"],
	}
}
