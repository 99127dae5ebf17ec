package cluster

import "time"

// The raft node's defaults, tuned for a LAN. They are defined here, where
// the raft node applies them to a zero Config field, and nowhere else:
// package config fills kms.yaml's cluster section from the same constants.
// election >= heartbeat >= lease, as raft requires.
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
