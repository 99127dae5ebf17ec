package cluster

import "time"

// The raft node's defaults, tuned for a LAN. They are defined here, where
// the raft node applies them to a zero Config field, and nowhere else:
// package config fills kms.yaml's cluster section from the same constants.
// election >= heartbeat >= lease, as raft requires.
//
// The heartbeat timeout decides how long a busy machine may keep raft
// silent without an election: a leader that hears no quorum for the lease
// steps down, and followers stand for election once a quorum of them has
// heard nothing for a heartbeat timeout (pre-vote turns away a lone one).
// A leader that crashes does not cost a heartbeat timeout: its followers
// see its connections close and elect a new leader two fifths of a
// heartbeat timeout later (crashwatch.go). A host that vanishes without
// closing them (power loss, a partition) costs one to three heartbeat
// timeouts. Timeouts change how fast a failover is, never what is signed:
// a signature waits for its watermark to commit on a quorum.
const (
	DefaultHeartbeatTimeout   = 500 * time.Millisecond
	DefaultElectionTimeout    = 500 * time.Millisecond
	DefaultLeaderLeaseTimeout = 250 * time.Millisecond
	DefaultCommitTimeout      = 20 * time.Millisecond
	// DefaultApplyTimeout leaves room in the validator's 5 s wait for the
	// key's own latency and the reply.
	DefaultApplyTimeout      = 2 * time.Second
	DefaultSnapshotInterval  = 2 * time.Minute
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotRetain    = 3
)
