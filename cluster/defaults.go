package cluster

import "time"

// The raft node's defaults, tuned for a LAN. They are defined here, where
// the raft node applies them to a zero Config field, and nowhere else:
// package config fills kms.yaml's cluster section from the same constants.
// election >= heartbeat >= lease, as raft requires.
//
// The heartbeat timeout decides a failover: followers notice a dead leader
// between one and three heartbeat timeouts after its last message, and an
// election needs a quorum of them to have noticed (raft's pre-vote and
// leader stickiness refuse a candidate while a follower still hears the
// leader). 150 ms puts the election at about 300 ms, under the 200 ms a
// CometBFT node itself spends dropping its dead signer connection after
// its next request (docs/performance.md, "Failover"). It is still 15 of
// the leader's heartbeats (sent every tenth of the timeout), and pre-vote
// keeps one follower's late timeout from changing the term. Timeouts
// change how fast a failover is, never what is signed: a signature waits
// for its watermark to commit on a quorum.
const (
	DefaultHeartbeatTimeout   = 150 * time.Millisecond
	DefaultElectionTimeout    = 150 * time.Millisecond
	DefaultLeaderLeaseTimeout = 100 * time.Millisecond
	DefaultCommitTimeout      = 20 * time.Millisecond
	// DefaultApplyTimeout leaves room in the validator's 5 s wait for the
	// key's own latency and the reply.
	DefaultApplyTimeout      = 2 * time.Second
	DefaultSnapshotInterval  = 2 * time.Minute
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotRetain    = 3
)
