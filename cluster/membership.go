package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// IsMember reports whether id is a server of the latest configuration.
func (n *Node) IsMember(id string) bool {
	for _, s := range n.gate.servers() {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

// Trusts reports whether the node id is a member as far as this node
// knows: a server of the latest configuration, or, as raft's stream layer
// also accepts, one of the members that admitted this node while it has no
// configuration yet, or one the leader is admitting. Ids vouched for
// (VouchPeers) count for raft only, never here.
func (n *Node) Trusts(id string) bool { return n.gate.trusts(id, false) }

// IsVoter reports whether id is a voter of the latest configuration.
func (n *Node) IsVoter(id string) bool { return n.gate.isVoter(id) }

// VouchPeers lets the nodes in ids speak raft with this node besides its
// configuration's: the members this node knows named them as members. A
// member that missed membership changes while it was down needs this to
// accept appends from a leader its stale configuration does not name;
// raft then brings its configuration up to date. Each call replaces the
// previous set.
func (n *Node) VouchPeers(ids []string) { n.gate.vouch(ids) }

// Leader returns the leader's id and API address as far as this node knows
// (empty when there is no known leader).
func (n *Node) Leader() (id, apiAddr string) {
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return "", ""
	}
	return string(lid), n.fsm.MemberAPIAddr(string(lid))
}

// JoinRequest is a node's request to be admitted, made with its own node
// certificate (the API checks that ID is the certificate's).
type JoinRequest struct {
	ID, RaftAddr, APIAddr string
	// Fresh: the node holds no raft state.
	Fresh bool
	// Level is the command level of the node's binary (see fsm.Level).
	Level int
}

// PeerReport is what a member's API says of it.
type PeerReport struct {
	// Running: it runs raft (it does not wait to be admitted).
	Running bool
	// LastIndex is the last raft index in its log (or its snapshot): the
	// entries a voter would hold for a quorum.
	LastIndex uint64
	// AppliedIndex is the last index its state machine applied.
	AppliedIndex uint64
	// Leader is the leader it follows, and LeaderContact how long ago it
	// last heard from it over raft.
	Leader        string
	LeaderContact time.Duration
}

// ProbeFunc asks the node id at its API address how it is doing; package
// node supplies it (a Cluster API Status call). It must fail unless the
// node that answers is id.
type ProbeFunc func(ctx context.Context, id, apiAddr string) (PeerReport, error)

// Sentinel errors of Join; the API maps them to status codes.
var (
	// ErrTooOld: the joining binary cannot apply entries the log holds.
	ErrTooOld = errors.New("the node runs an older kms-ha than this cluster's log needs")
	// ErrStillRunning: a fresh join names a member that still runs.
	ErrStillRunning = errors.New("a member with this id still runs")
)

// Join admits a node on the leader and records its API address and level.
// It returns the ids of the configuration that admitted it: the node lets
// only those speak raft with it until the leader's first append arrives.
func (n *Node) Join(ctx context.Context, req JoinRequest) ([]string, error) {
	if !n.IsLeader() {
		return nil, ErrNotLeader
	}
	if lv := n.fsm.MaxLevel(); req.Level < lv {
		// Its binary would refuse entries the others applied and diverge.
		return nil, fmt.Errorf("cluster: join %s: %w (level %d, the log needs %d): upgrade it, then join again",
			req.ID, ErrTooOld, req.Level, lv)
	}
	if req.Fresh && n.IsMember(req.ID) {
		if err := n.checkLost(ctx, req); err != nil {
			return nil, err
		}
	}
	if err := n.admit(req.ID, req.RaftAddr, req.Fresh); err != nil {
		return nil, err
	}
	if cur, _ := n.fsm.Member(req.ID); req.APIAddr != "" && (cur.APIAddr != req.APIAddr || cur.Level != req.Level) {
		if err := n.SetMember(ctx, req.ID, req.APIAddr, req.Level); err != nil {
			return nil, err
		}
	}
	var ids []string
	for _, s := range n.gate.servers() {
		ids = append(ids, string(s.ID))
	}
	n.log.Info("join handled", "joiner", req.ID, "raft_addr", req.RaftAddr, "api_addr", req.APIAddr, "fresh", req.Fresh)
	return ids, nil
}

// checkLost refuses to remove a member as a lost incarnation while it
// still answers as a running member at its recorded API address or the
// one it gives now: a mistaken join (a wrong --home, another host) must
// not take a live voter out.
func (n *Node) checkLost(ctx context.Context, req JoinRequest) error {
	if n.cfg.Probe == nil {
		return nil
	}
	rec, _ := n.fsm.Member(req.ID)
	for _, addr := range []string{rec.APIAddr, req.APIAddr} {
		if addr == "" {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		rep, err := n.cfg.Probe(pctx, req.ID, addr)
		cancel()
		if err == nil && rep.Running {
			return fmt.Errorf("cluster: join %s: %w at %s, so it has not lost its state: refusing to remove it; "+
				"check --home and the host you ran join on", req.ID, ErrStillRunning, addr)
		}
	}
	return nil
}

// admit changes the configuration for a join. A node is admitted as a
// non-voter, so that it counts towards no quorum before it runs raft and
// has caught up; the leader promotes it (see promoteCaughtUp). A fresh
// node that is a member already is an earlier incarnation whose
// acknowledged entries and votes were lost with its disk: it is removed
// first, so nothing it once acknowledged can be counted again. Joining
// again as the member one already is changes nothing, or its address.
func (n *Node) admit(id, raftAddr string, fresh bool) error {
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
	defer n.gate.admit(id)()
	if cur != nil && fresh {
		n.log.Warn("member rejoins without its raft state; removing its old incarnation before admitting it again", "member", id)
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, timeout).Error(); err != nil {
			return fmt.Errorf("cluster: remove the old incarnation of %s (a quorum of the remaining members must be up): %w", id, err)
		}
		cur = nil
	}
	switch {
	case cur == nil || (cur.Suffrage != raft.Voter && string(cur.Address) != raftAddr):
		n.joins.forget(raft.ServerAddress(raftAddr))
		if err := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, timeout).Error(); err != nil {
			return fmt.Errorf("cluster: admit %s at %s as non-voter: %w", id, raftAddr, err)
		}
	case cur.Suffrage == raft.Voter && string(cur.Address) != raftAddr:
		// A voter's new address.
		if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, timeout).Error(); err != nil {
			return fmt.Errorf("cluster: move voter %s to %s: %w", id, raftAddr, err)
		}
	}
	return nil
}

// promoteCaughtUp runs on the leader: it makes each non-voter a voter once
// the leader itself sees it caught up (its log holds everything the leader
// had committed when asked), never because a request asks for it.
// A member counts towards quorums only when it holds the state they
// protect.
func (n *Node) promoteCaughtUp(ctx context.Context) {
	if n.cfg.Probe == nil {
		return
	}
	t := time.NewTicker(promoteInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cf := n.raft.GetConfiguration()
		if cf.Error() != nil {
			continue
		}
		for _, s := range cf.Configuration().Servers {
			if s.Suffrage == raft.Nonvoter {
				n.promoteIfCaughtUp(ctx, s, cf.Index())
			}
		}
	}
}

const promoteInterval = 250 * time.Millisecond

func (n *Node) promoteIfCaughtUp(ctx context.Context, s raft.Server, confIndex uint64) {
	api := n.fsm.MemberAPIAddr(string(s.ID))
	if api == "" {
		return
	}
	commit := n.raft.CommitIndex()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	rep, err := n.cfg.Probe(pctx, string(s.ID), api)
	cancel()
	if err != nil || !rep.Running {
		return
	}
	// How far its log reaches is what it answered to this leader's own
	// appends over raft, not what its API says: a node that merely claims
	// to be caught up must never count towards a quorum.
	last, ok := n.obs.lastLog(s.ID, 2*time.Second)
	if !ok || last < commit {
		return
	}
	// prevIndex: the promotion applies only to the configuration seen
	// here, so a removal in between is not undone.
	if err := n.raft.AddVoter(s.ID, s.Address, confIndex, n.cfg.ApplyTimeout).Error(); err != nil {
		n.log.Warn("promoting a caught-up non-voter", "member", s.ID, "err", err)
		return
	}
	n.log.Info("non-voter caught up; promoted to voter", "member", s.ID, "last_index", last, "leader_commit", commit)
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
	LastIndex    uint64
	LastContact  string
}

// Stats returns this node's raft numbers.
func (n *Node) Stats() Stats {
	s := n.raft.Stats()
	var term, commit, last uint64
	fmt.Sscan(s["term"], &term)
	fmt.Sscan(s["commit_index"], &commit)
	fmt.Sscan(s["last_log_index"], &last)
	return Stats{
		State:        n.raft.State().String(),
		Term:         term,
		CommitIndex:  commit,
		AppliedIndex: n.raft.AppliedIndex(),
		LastIndex:    last,
		LastContact:  s["last_contact"],
	}
}
