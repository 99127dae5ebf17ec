package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The leader's view of the members. hashicorp/raft keeps each follower's
// last contact to itself and reports only heartbeat failures (through
// observers, and only once an RPC failed: one to a paused node blocks
// until the transport's timeout). The leader therefore asks every member's
// API, with the same authenticated probe that promotes non-voters, once
// per healthInterval: the answer carries the member's applied index (raft
// exposes no follower's), and its own raft last contact with this leader.
// A member that answers but hears no appendEntries from this leader (a raft
// path cut while the API works) reads as unreachable as well: the leader's
// contact time is the probe's time minus the member's own contact age.

const healthInterval = time.Second

// MemberHealth is one member as the leader sees it.
type MemberHealth struct {
	ID       string
	Suffrage string
	Leader   bool
	// Heard: the leader has heard from the member this term, LastContact
	// ago.
	Heard       bool
	LastContact time.Duration
	// Reachable: heard from within UnreachableAfter (or the leader took
	// office less than that long ago and has not asked yet).
	Reachable    bool
	AppliedIndex uint64
	// AppliedLag is how many entries the member had yet to apply compared
	// with the leader at the time of its latest answer.
	AppliedLag uint64
}

// ClusterHealth is the leader's view of the cluster.
type ClusterHealth struct {
	Members []MemberHealth
	// Voters, ReachableVoters and Quorum count voters (the leader
	// included).
	Voters, ReachableVoters, Quorum int
	// UnreachableAfter is how long without contact makes a member
	// unreachable.
	UnreachableAfter time.Duration
}

// Tolerance is how many more voters the cluster can lose and keep a
// quorum; 0 means it is degraded: one more fault stops signing.
func (h ClusterHealth) Tolerance() int { return max(h.ReachableVoters-h.Quorum, 0) }

// Unreachable lists the members the leader has not heard from.
func (h ClusterHealth) Unreachable() []MemberHealth {
	var out []MemberHealth
	for _, m := range h.Members {
		if !m.Reachable {
			out = append(out, m)
		}
	}
	return out
}

type peerSeen struct {
	at           time.Time
	applied, lag uint64
}

// memberTracker records the latest contact with each member during one
// term of leadership.
type memberTracker struct {
	mu    sync.Mutex
	since time.Time // zero while not leading
	seen  map[string]peerSeen
}

func (t *memberTracker) start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.since, t.seen = time.Now(), map[string]peerSeen{}
}

func (t *memberTracker) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.since, t.seen = time.Time{}, nil
}

func (t *memberTracker) record(id string, s peerSeen) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen != nil && s.at.After(t.seen[id].at) {
		t.seen[id] = s
	}
}

// unreachableAfter is how long the leader waits without contact before it
// calls a member unreachable: several probe rounds, and never less than
// two election timeouts (a WAN setting).
func (n *Node) unreachableAfter() time.Duration {
	return max(3*healthInterval, 2*n.cfg.ElectionTimeout)
}

// Health returns the leader's view of the members; ok is false on a
// node that is not leading (a follower cannot know).
func (n *Node) Health() (h ClusterHealth, ok bool) {
	cf := n.raft.GetConfiguration()
	if !n.IsLeader() || cf.Error() != nil {
		return ClusterHealth{}, false
	}
	n.health.mu.Lock()
	defer n.health.mu.Unlock()
	if n.health.since.IsZero() {
		return ClusterHealth{}, false
	}
	now := time.Now()
	h.UnreachableAfter = n.unreachableAfter()
	for _, s := range cf.Configuration().Servers {
		m := MemberHealth{ID: string(s.ID), Suffrage: s.Suffrage.String()}
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			m.Leader, m.Heard, m.Reachable, m.AppliedIndex = true, true, true, n.raft.AppliedIndex()
		} else if p, seen := n.health.seen[m.ID]; seen {
			m.Heard, m.LastContact, m.AppliedIndex, m.AppliedLag = true, now.Sub(p.at), p.applied, p.lag
			m.Reachable = m.LastContact <= h.UnreachableAfter
		} else {
			m.Reachable = now.Sub(n.health.since) <= h.UnreachableAfter
		}
		if s.Suffrage == raft.Voter {
			h.Voters++
			if m.Reachable {
				h.ReachableVoters++
			}
		}
		h.Members = append(h.Members, m)
	}
	h.Quorum = h.Voters/2 + 1
	return h, true
}

// trackMembers runs on the leader: it asks every member how it is doing
// once per healthInterval, in parallel, and records the answers.
func (n *Node) trackMembers(ctx context.Context) {
	n.health.start()
	defer n.health.stop()
	if n.cfg.Probe == nil {
		return
	}
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		cf := n.raft.GetConfiguration()
		if cf.Error() == nil {
			var wg sync.WaitGroup
			for _, s := range cf.Configuration().Servers {
				if s.ID == raft.ServerID(n.cfg.NodeID) {
					continue
				}
				wg.Add(1)
				go func() { defer wg.Done(); n.probeMember(ctx, string(s.ID)) }()
			}
			wg.Wait()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Node) probeMember(ctx context.Context, id string) {
	api := n.fsm.MemberAPIAddr(id)
	if api == "" {
		return
	}
	leaderApplied := n.raft.AppliedIndex()
	asked := time.Now()
	pctx, cancel := context.WithTimeout(ctx, healthInterval)
	rep, err := n.cfg.Probe(pctx, id, api)
	cancel()
	// A member that runs but follows no one, or another leader, has not
	// heard from this one.
	if err != nil || !rep.Running || rep.Leader != n.cfg.NodeID {
		return
	}
	var lag uint64
	if leaderApplied > rep.AppliedIndex {
		lag = leaderApplied - rep.AppliedIndex
	}
	// When the leader last heard from it is what raft itself saw: the
	// answer to this leader's latest append (heartbeats included). The
	// member's own report is only the fallback before the first one.
	at := asked.Add(-rep.LeaderContact)
	if seen, ok := n.obs.answeredAt(raft.ServerID(id)); ok {
		at = seen
	}
	n.health.record(id, peerSeen{at: at, applied: rep.AppliedIndex, lag: lag})
}

// Elections is how many elections this node has started (transitions to
// candidate) since it opened.
func (n *Node) Elections() uint64 { return n.elections.Load() }

// countElections counts this node's transitions to candidate, as raft's
// observer reports them, until the node shuts down.
func (n *Node) countElections(r *raft.Raft) {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		st, ok := o.Data.(raft.RaftState)
		return ok && st == raft.Candidate
	})
	r.RegisterObserver(obs)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer r.DeregisterObserver(obs)
		for {
			select {
			case <-n.done:
				return
			case <-ch:
				n.elections.Add(1)
			}
		}
	}()
}
