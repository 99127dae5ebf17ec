package cluster

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// Recovery describes a data dir offline: what a lost-quorum recovery would
// keep.
type Recovery struct {
	// LastIndex and LastTerm of the local log (or snapshot).
	LastIndex uint64
	LastTerm  uint64
	// Servers is the configuration the log holds now.
	Servers []raft.Server
	// State is the FSM rebuilt from every entry in the local log, committed
	// or not: an uncommitted reservation may already have been signed by a
	// leader that died, so keeping it can only raise a watermark.
	State fsm.State
}

// Inspect rebuilds the state of a stopped node's data dir without changing
// it, so an operator can pick the most up-to-date survivor.
func Inspect(c Config) (Recovery, error) {
	return recoverDir(c, false)
}

// RecoverSingle rewrites a stopped node's raft configuration so that this
// node alone is the cluster: the way out when a quorum is lost for good.
// It is unsafe while any other member could still run with its data: two
// clusters would then lead and sign at once. The caller must have made sure
// the others are stopped and will be wiped before they rejoin.
func RecoverSingle(c Config) (Recovery, error) {
	return recoverDir(c, true)
}

func recoverDir(c Config, write bool) (Recovery, error) {
	c.setDefaults()
	var r Recovery
	ls, err := ReadState(c, 2*time.Second)
	if err != nil {
		return r, err
	}
	if !ls.HasRaftState {
		return r, fmt.Errorf("cluster: recover: %s holds no raft state; there is nothing to recover on this node", c.DataDir)
	}
	st, err := openStoresWait(&c, 2*time.Second)
	if err != nil {
		return r, err
	}
	defer st.Close()

	f := fsm.New()
	// Replay what the node holds: the newest snapshot, then every log entry
	// after it.
	snaps, err := st.snaps.List()
	if err != nil {
		return r, fmt.Errorf("cluster: recover: list snapshots: %w", err)
	}
	var after uint64
	if len(snaps) > 0 {
		meta, rc, err := st.snaps.Open(snaps[0].ID)
		if err != nil {
			return r, fmt.Errorf("cluster: recover: open snapshot %s: %w", snaps[0].ID, err)
		}
		if err := f.Restore(rc); err != nil {
			return r, fmt.Errorf("cluster: recover: snapshot %s: %w", snaps[0].ID, err)
		}
		after, r.LastIndex, r.LastTerm = meta.Index, meta.Index, meta.Term
		r.Servers = meta.Configuration.Servers
	}
	first, _ := st.db.FirstIndex()
	last, _ := st.db.LastIndex()
	for i := max(first, after+1); i <= last && i > 0; i++ {
		var l raft.Log
		if err := st.db.GetLog(i, &l); err != nil {
			return r, fmt.Errorf("cluster: recover: read log entry %d: %w", i, err)
		}
		switch l.Type {
		case raft.LogCommand:
			f.Apply(&l)
		case raft.LogConfiguration:
			r.Servers = raft.DecodeConfiguration(l.Data).Servers
		}
		r.LastIndex, r.LastTerm = l.Index, l.Term
	}
	r.State = f.State()
	if !write {
		return r, nil
	}
	self := raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(c.NodeID), Address: raft.ServerAddress(c.AdvertiseAddr)}
	_, trans := raft.NewInmemTransport(self.Address)
	if err := raft.RecoverCluster(c.raftConfig(), fsm.New(), st.db, st.db, st.snaps, trans,
		raft.Configuration{Servers: []raft.Server{self}}); err != nil {
		return r, fmt.Errorf("cluster: recover: %w", err)
	}
	r.Servers = []raft.Server{self}
	return r, nil
}
