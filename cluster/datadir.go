package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// A node that lost its raft data (a wiped disk, a deleted data_dir) must
// not come back as the member it was: it would grant votes and acknowledge
// entries with none of the state it acknowledged before, and a lagging
// candidate could win an election without a watermark the cluster already
// committed. So a node with no raft state runs raft only once it has been
// (re)admitted, and the mark that says so lives inside the raft store
// itself (wal/ or raft.db): whatever deletes the raft state deletes the
// mark with it.
var keyJoined = []byte("kmsha_joined")

// keyNodeID binds a data dir to the node it belongs to: a data dir copied
// from another node carries that node's log and votes, not this one's.
var keyNodeID = []byte("kmsha_node_id")

// keyJoinPeers lists the members named in the answer to this node's join:
// until the leader's first append brings the configuration, they are the
// only nodes this node lets speak raft with it.
var keyJoinPeers = []byte("kmsha_join_peers")

// raft's own stable-store key for the current term.
var keyCurrentTerm = []byte("CurrentTerm")

// LocalState describes a data dir.
type LocalState struct {
	// HasRaftState: raft has a term, log entries or snapshots here.
	HasRaftState bool
	// Joined: a leader admitted this node while it had no state (see Join).
	Joined bool
}

// MayStartRaft reports whether raft may run on this data dir.
func (s LocalState) MayStartRaft() bool { return s.HasRaftState || s.Joined }

// ErrLocked is returned when another process holds the data dir.
var ErrLocked = errors.New("the raft data dir is in use by a running kms-ha node")

// ReadState inspects the data dir without starting raft. lockWait bounds
// how long it waits for a running node's lock.
func ReadState(c Config, lockWait time.Duration) (LocalState, error) {
	c.setDefaults()
	st, err := openStoresWait(&c, lockWait)
	if err != nil {
		return LocalState{}, err
	}
	defer st.Close()
	var s LocalState
	// A key never written reads as raft-boltdb's ErrKeyNotFound, or as
	// empty (0) with no error from raft-wal.
	term, err := st.db.GetUint64(keyCurrentTerm)
	if err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return s, fmt.Errorf("cluster: read %s: %w", c.DataDir, err)
	}
	last, err := st.db.LastIndex()
	if err != nil {
		return s, fmt.Errorf("cluster: read %s: %w", c.DataDir, err)
	}
	snaps, err := st.snaps.List()
	if err != nil {
		return s, fmt.Errorf("cluster: list snapshots in %s: %w", c.DataDir, err)
	}
	if len(snaps) > 0 && term == 0 && last == 0 {
		// The term and the vote are gone but a snapshot is not: the node
		// could vote twice in one term. Refuse rather than guess.
		return s, fmt.Errorf("cluster: %s holds snapshots but no raft log store (term and vote lost); "+
			"move the whole data dir away and re-admit this node with `kms-ha join`", c.DataDir)
	}
	s.HasRaftState = term > 0 || last > 0 || len(snaps) > 0
	if owner, err := st.db.Get(keyNodeID); err == nil && len(owner) > 0 && string(owner) != c.NodeID {
		return s, fmt.Errorf("cluster: %s belongs to node %q, not %q: a data dir must never be copied between nodes; "+
			"move it away and admit this node with `kms-ha join`", c.DataDir, owner, c.NodeID)
	}
	if first, err := st.db.FirstIndex(); err == nil && first > 1 && (len(snaps) == 0 || snaps[0].Index < first-1) {
		// The log was compacted behind a snapshot that is gone: raft
		// cannot rebuild the state and would panic at start.
		return s, fmt.Errorf("cluster: %s: the log starts at index %d but no snapshot covers what came before; "+
			"the snapshots were lost or damaged. Move the data dir away and admit this node again with `kms-ha join`", c.DataDir, first)
	}
	joined, err := st.db.GetUint64(keyJoined)
	if err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return s, fmt.Errorf("cluster: read %s: %w", c.DataDir, err)
	}
	s.Joined = joined == 1
	return s, nil
}

// MarkJoined records that a leader admitted this node (see ReadState), and
// the members its answer named.
func MarkJoined(c Config, lockWait time.Duration, members []string) error {
	c.setDefaults()
	st, err := openStoresWait(&c, lockWait)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.db.Set(keyJoinPeers, []byte(strings.Join(members, "\n"))); err != nil {
		return fmt.Errorf("cluster: record the members that admitted %s: %w", c.DataDir, err)
	}
	if err := st.db.SetUint64(keyJoined, 1); err != nil {
		return fmt.Errorf("cluster: mark %s as joined: %w", c.DataDir, err)
	}
	return bindNodeID(st, &c)
}

func readJoinPeers(st *stores) []string {
	b, err := st.db.Get(keyJoinPeers)
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\n")
}

func bindNodeID(st *stores, c *Config) error {
	if err := st.db.Set(keyNodeID, []byte(c.NodeID)); err != nil {
		return fmt.Errorf("cluster: record the node id in %s: %w", c.DataDir, err)
	}
	return nil
}

func openStoresWait(c *Config, lockWait time.Duration) (*stores, error) {
	prev := c.lockTimeout
	c.lockTimeout = lockWait
	defer func() { c.lockTimeout = prev }()
	st, err := openStores(c)
	if errors.Is(err, ErrLocked) {
		return nil, ErrLocked
	}
	return st, err
}
