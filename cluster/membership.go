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

// AddVoter adds id at raftAddr as a voter, or does nothing if it is one
// already at that address. It must run on the leader.
func (n *Node) AddVoter(id, raftAddr string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("cluster: add voter %s: %w", id, err)
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == id && string(s.Address) == raftAddr && s.Suffrage == raft.Voter {
			return nil
		}
		if string(s.ID) != id && string(s.Address) == raftAddr {
			return fmt.Errorf("cluster: add voter %s: address %s already belongs to member %s", id, raftAddr, s.ID)
		}
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, n.cfg.ApplyTimeout).Error(); err != nil {
		return fmt.Errorf("cluster: add voter %s at %s: %w", id, raftAddr, err)
	}
	return nil
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
