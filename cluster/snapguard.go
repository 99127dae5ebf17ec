package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// raft persists a snapshot sent by the leader before it asks the state
// machine to restore it. When the state machine refuses one (it would lower
// a watermark, see fsm.FSM.Restore), the snapshot must not stay on disk:
// at the next start raft would restore the newest snapshot into an empty
// state machine, which cannot tell, and the lowered watermarks would come
// back. guardedSnapshots remembers which snapshot was installed and opened
// for restore, so the state machine's refusal can delete exactly that one.
type guardedSnapshots struct {
	raft.SnapshotStore
	dir     string
	created atomic.Pointer[string]
	opened  atomic.Pointer[string]
}

func (g *guardedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport,
) (raft.SnapshotSink, error) {
	s, err := g.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err == nil {
		id := s.ID()
		g.created.Store(&id)
	}
	return s, err
}

func (g *guardedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	g.opened.Store(&id)
	return g.SnapshotStore.Open(id)
}

// discardRefused deletes the snapshot last created and then opened: one
// that was received and refused. It deletes nothing when the two differ
// (a local snapshot was taken in between); refusing again at the next
// install is then the fallback.
func (g *guardedSnapshots) discardRefused() (string, error) {
	c, o := g.created.Load(), g.opened.Load()
	if c == nil || o == nil || *c != *o {
		return "", errors.New("the refused snapshot is not the one last received")
	}
	path := filepath.Join(g.dir, "snapshots", *o)
	if err := os.RemoveAll(path); err != nil {
		return "", fmt.Errorf("remove %s: %w", path, err)
	}
	return path, nil
}

// guardedFSM logs a refused restore and deletes the refused snapshot.
type guardedFSM struct {
	raft.FSM
	snaps *guardedSnapshots
	log   *slog.Logger
}

func (f guardedFSM) Restore(rc io.ReadCloser) error {
	err := f.FSM.Restore(rc)
	if !errors.Is(err, fsm.ErrWouldLower) {
		return err
	}
	f.log.Error("snapshot from the leader refused: it would lower watermarks this node holds; keeping the current state "+
		"(a faulty or hostile member sent it: check the cluster's members and their certificates)", "err", err)
	if path, derr := f.snaps.discardRefused(); derr != nil {
		f.log.Error("the refused snapshot could not be deleted; do not restart this node before it is", "err", derr)
	} else {
		f.log.Warn("refused snapshot deleted", "path", path)
	}
	return err
}
