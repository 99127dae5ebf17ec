package cluster

import (
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// raft's AppliedIndex is not what the state machine has applied: raft
// raises it as soon as it has queued entries for its FSM goroutine, which
// applies them a moment later. A read that waited for it alone could miss
// the very entries it waited for. applied tracks the state machine itself:
// the index of the last command it applied, or of the snapshot it restored.
type applied struct {
	index atomic.Uint64
	// opened is the index of the snapshot last opened: raft opens the
	// snapshot it restores just before it hands it to the state machine.
	opened atomic.Uint64
}

// raise records that the state machine holds every entry up to i.
func (a *applied) raise(i uint64) {
	for cur := a.index.Load(); i > cur && !a.index.CompareAndSwap(cur, i); cur = a.index.Load() {
	}
}

// appliedFSM is the outermost state machine raft applies to.
type appliedFSM struct {
	raft.FSM
	a *applied
}

func (f appliedFSM) Apply(l *raft.Log) any {
	res := f.FSM.Apply(l)
	f.a.raise(l.Index)
	return res
}

func (f appliedFSM) Restore(rc io.ReadCloser) error {
	err := f.FSM.Restore(rc)
	if err == nil {
		f.a.raise(f.a.opened.Load())
	}
	return err
}

// appliedSnapshots notes the index of each snapshot opened.
type appliedSnapshots struct {
	raft.SnapshotStore
	a *applied
}

func (s appliedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err == nil {
		s.a.opened.Store(meta.Index)
	}
	return meta, rc, err
}

// fsmApplied reports whether the state machine holds every entry up to
// idx: raft has queued them all, and none of those after the last one the
// state machine applied is a command (the others, no-ops, barriers and
// configurations, never reach it).
func (n *Node) fsmApplied(idx uint64) bool {
	if n.raft.AppliedIndex() < idx {
		return false
	}
	done := n.applied.index.Load()
	for i := idx; i > done; i-- {
		var l raft.Log
		if err := n.st.logs.GetLog(i, &l); err != nil {
			// Not in the log: compacted into a snapshot, so applied by now
			// (the next look sees the raised index), or unreadable, which
			// makes the wait fail at its deadline rather than read stale.
			return false
		}
		if l.Type == raft.LogCommand {
			return false
		}
	}
	return true
}
