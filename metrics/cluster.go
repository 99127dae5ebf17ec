package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Member states of kmsha_cluster_members.
const (
	// MemberHealthy: a voter the leader heard from recently (the leader
	// counts itself).
	MemberHealthy = "healthy"
	// MemberUnreachable: a voter or non-voter the leader has not heard
	// from within the unreachable threshold.
	MemberUnreachable = "unreachable"
	// MemberNonvoter: a reachable non-voter (joining, catching up).
	MemberNonvoter = "nonvoter"
)

// raftM holds the instruments read off this node's raft state.
type raftM struct {
	leaderChanges prometheus.Counter
	elections     prometheus.Counter
	isLeader      prometheus.Gauge
	raftTerm      prometheus.Gauge
	raftApplied   prometheus.Gauge

	mu            sync.Mutex
	electionsSeen uint64
}

func newRaft() raftM {
	return raftM{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "leader_changes_total",
			Help: "Raft leadership changes observed by this node."}),
		elections: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "raft_elections_total",
			Help: "Elections this node started (its transitions to candidate)."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "is_leader",
			Help: "1 while this node is the Raft leader (the only node that signs)."}),
		raftTerm: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "raft_term",
			Help: "Current Raft term seen by this node."}),
		raftApplied: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "raft_applied_index",
			Help: "Last Raft log index applied to this node's state machine."}),
	}
}

func (r *raftM) collectors() []prometheus.Collector {
	return []prometheus.Collector{r.leaderChanges, r.elections, r.isLeader, r.raftTerm, r.raftApplied}
}

// clusterM holds what the leader knows of the other members; a follower
// exports none of it (it cannot know).
type clusterM struct {
	members     *prometheus.GaugeVec
	tolerance   *prometheus.GaugeVec
	lastContact *prometheus.GaugeVec
	appliedLag  *prometheus.GaugeVec

	mu  sync.Mutex
	ids map[string]bool // members with series
}

func newCluster() clusterM {
	return clusterM{
		members: gaugeVec("cluster_members",
			"Members by state as the leader sees them (healthy, unreachable, nonvoter); exported by the leader only.", "state"),
		tolerance: gaugeVec("cluster_fault_tolerance",
			"Voters the cluster can still lose and keep a quorum (0: degraded); exported by the leader only."),
		lastContact: gaugeVec("raft_member_last_contact_seconds",
			"Seconds since the leader last heard from each member (raft contact); exported by the leader only.", "member"),
		appliedLag: gaugeVec("raft_member_applied_lag",
			"Raft entries the member has yet to apply compared with the leader; exported by the leader only.", "member"),
	}
}

func (c *clusterM) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.members, c.tolerance, c.lastContact, c.appliedLag}
}

// LeaderChanged records an observed leadership change and whether this node
// is now the leader.
func (m *Metrics) LeaderChanged(isLeader bool) {
	if m == nil {
		return
	}
	m.leaderChanges.Inc()
	m.isLeader.Set(boolFloat(isLeader))
}

// SetRaft records the current Raft term and applied index.
func (m *Metrics) SetRaft(term, applied uint64) {
	if m == nil {
		return
	}
	m.raftTerm.Set(float64(term))
	m.raftApplied.Set(float64(applied))
}

// SetElections records the number of elections this node has started
// since it started; the counter grows by the difference.
func (m *Metrics) SetElections(total uint64) {
	if m == nil {
		return
	}
	m.raftM.mu.Lock()
	defer m.raftM.mu.Unlock()
	if total > m.electionsSeen {
		m.elections.Add(float64(total - m.electionsSeen))
		m.electionsSeen = total
	}
}

// MemberHealth is one member as the leader sees it.
type MemberHealth struct {
	ID string
	// State is MemberHealthy, MemberUnreachable or MemberNonvoter.
	State string
	// LastContactSeconds is how long ago the leader heard from it; negative
	// when it never did this term.
	LastContactSeconds float64
	AppliedLag         uint64
}

// SetClusterHealth records the leader's view of the members and how many
// voters the cluster can still lose. A nil members (this node is not the
// leader) removes every series: a follower cannot know. Series are set in
// place and only stale ones deleted, so a scrape never sees a gap.
func (m *Metrics) SetClusterHealth(members []MemberHealth, tolerance int) {
	if m == nil {
		return
	}
	c := &m.clusterM
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	if members == nil {
		c.members.Reset()
		c.tolerance.Reset()
	} else {
		count := map[string]float64{MemberHealthy: 0, MemberUnreachable: 0, MemberNonvoter: 0}
		for _, mh := range members {
			count[mh.State]++
			seen[mh.ID] = true
			if mh.LastContactSeconds >= 0 {
				c.lastContact.WithLabelValues(mh.ID).Set(mh.LastContactSeconds)
			} else {
				c.lastContact.DeleteLabelValues(mh.ID)
			}
			c.appliedLag.WithLabelValues(mh.ID).Set(float64(mh.AppliedLag))
		}
		for st, n := range count {
			c.members.WithLabelValues(st).Set(n)
		}
		c.tolerance.WithLabelValues().Set(float64(tolerance))
	}
	for id := range c.ids {
		if !seen[id] {
			c.lastContact.DeleteLabelValues(id)
			c.appliedLag.DeleteLabelValues(id)
		}
	}
	c.ids = seen
}
