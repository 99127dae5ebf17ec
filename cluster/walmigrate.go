package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/migrate"
)

// prepareWAL brings a data dir to the WAL layout before the WAL opens:
// it finishes or redoes a migration a crash interrupted, migrates a
// raft.db left by an earlier version, and refuses a dir whose stores
// could hold two different histories. The data dir lock must be held.
//
// The migration's order (see migrateToWAL) keeps one complete store
// under a name that some version opens at every moment, and makes raft.db
// disappear before wal/ appears: a kms-ha from before the WAL that starts
// in between finds no raft.db and no join mark and will not run raft,
// rather than run on a term and vote that this node has since moved past.
func prepareWAL(c *Config, lockWait time.Duration) error {
	dir := c.DataDir
	boltPath := filepath.Join(dir, boltFileName)
	prePath := filepath.Join(dir, preWALName)
	walPath := filepath.Join(dir, walDirName)
	hasBolt := exists(boltPath)
	if hasBolt && exists(walPath) {
		if err := removeEmptyBolt(c, boltPath, lockWait); err != nil {
			return err
		}
		hasBolt = false
	}
	switch hasPre := exists(prePath); {
	case exists(walPath) && hasPre:
		// A crash after step c: the WAL is complete and in place.
		if err := os.Remove(prePath); err != nil {
			return fmt.Errorf("cluster: finish the move to the WAL: remove %s: %w", prePath, err)
		}
		return syncDir(dir)
	case exists(walPath):
		return nil
	case hasBolt && hasPre:
		return fmt.Errorf("cluster: %s holds %s, and %s from an unfinished move to the WAL: %w; an earlier kms-ha "+
			"probably ran in between. Remove the node from the cluster, move the data dir away and admit it again "+
			"with `kms-ha join`", dir, boltFileName, preWALName, ErrStoreConflict)
	case hasPre:
		// A crash between steps b and c: redo the copy from the renamed
		// file; any wal.tmp/ may be partial.
		return migrateToWAL(c, prePath, lockWait)
	case hasBolt:
		return migrateToWAL(c, boltPath, lockWait)
	}
	return nil
}

// removeEmptyBolt deals with a raft.db beside wal/. An older kms-ha
// started on the data dir after the move to the WAL finds no raft.db and
// creates an empty one: that one holds nothing and is removed. Any other
// may hold a term, a vote or entries the WAL lacks (this node ran an
// older version again, admitted anew), or the WAL may hold what it
// lacks: neither store can be trusted to be this node's latest state.
func removeEmptyBolt(c *Config, path string, lockWait time.Duration) error {
	bs, err := openBoltStore(path, lockWait)
	if err != nil {
		return err
	}
	term, err := boltStable{bs}.GetUint64(keyCurrentTerm)
	var last, joined uint64
	if err == nil {
		last, err = bs.LastIndex()
	}
	if err == nil {
		joined, err = boltStable{bs}.GetUint64(keyJoined)
	}
	if cerr := bs.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster: read %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if term != 0 || last != 0 || joined != 0 {
		return fmt.Errorf("cluster: %s holds both %s/ (this version's log store) and a %s with raft state (term %d, "+
			"last log index %d), which an earlier version wrote after the upgrade: %w; neither can be trusted to hold "+
			"this node's latest term and vote. Remove the node from the cluster (`kms-ha remove` on another member), "+
			"move the data dir away and admit it again with `kms-ha join`", dir, walDirName, boltFileName, term, last,
			ErrStoreConflict)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("cluster: remove the empty %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	c.Logger.Warn("removed an empty raft.db beside the WAL (an earlier kms-ha created it when it looked at this data dir)",
		"path", path)
	return nil
}

// migration is what one migration copied, for the log: entries first to
// last, after skipping the indexes before a gap.
type migration struct {
	first, last, skipped uint64
}

// migrateToWAL copies the bolt store at src into a new WAL and puts the
// WAL in raft.db's place:
//
//	a. copy logs and stable keys into a fresh wal.tmp/, synced;
//	b. rename raft.db to raft.db.pre-wal (skipped when src is that already);
//	c. rename wal.tmp/ to wal/;
//	d. remove raft.db.pre-wal;
//
// each rename made durable by a sync of the data dir before the next.
func migrateToWAL(c *Config, src string, lockWait time.Duration) error {
	dir := c.DataDir
	start := time.Now()
	tmp := filepath.Join(dir, walTmpName)
	m, bs, err := copyToWAL(c, src, tmp, lockWait)
	if err != nil {
		return err
	}
	pre := filepath.Join(dir, preWALName)
	if err := renameHeld(src, pre, bs); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, walDirName)); err != nil {
		return fmt.Errorf("cluster: migrate to the WAL: rename %s: %w", tmp, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := os.Remove(pre); err != nil {
		return fmt.Errorf("cluster: migrate to the WAL: remove %s: %w", pre, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	entries := uint64(0)
	if m.last > 0 {
		entries = m.last - m.first + 1
	}
	c.Logger.Info("raft log store migrated from raft.db to the WAL", "data_dir", dir, "entries", entries,
		"first_index", m.first, "last_index", m.last, "indexes_skipped_before_a_gap", m.skipped,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// renameHeld is step b: src renamed to pre and the rename made durable
// while bs, the store open on src, still holds bbolt's lock on the file.
// A kms-ha from before the data dir LOCK waits on that lock: released
// any earlier, it could open raft.db and write a term or vote there that
// the copy in the WAL does not hold.
func renameHeld(src, pre string, bs io.Closer) error {
	var err error
	if src != pre {
		if err = os.Rename(src, pre); err != nil {
			err = fmt.Errorf("cluster: migrate to the WAL: rename %s: %w", src, err)
		} else {
			err = syncDir(filepath.Dir(pre))
		}
	}
	if cerr := bs.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("cluster: migrate to the WAL: close %s: %w", pre, cerr)
	}
	return err
}

// copyToWAL is step a: the bolt store at src copied into a fresh WAL at
// tmp, every file in it synced. It returns the bolt store still open, for
// renameHeld.
func copyToWAL(c *Config, src, tmp string, lockWait time.Duration) (migration, io.Closer, error) {
	bs, err := openBoltStore(src, lockWait)
	if err != nil {
		return migration{}, nil, err
	}
	m, err := copyFromBolt(c, bs, src, tmp, lockWait)
	if err != nil {
		bs.Close()
		return m, nil, err
	}
	return m, bs, nil
}

// copyFromBolt is copyToWAL's work on the open store; bs stays open.
func copyFromBolt(c *Config, bs *raftboltdb.BoltStore, src, tmp string, lockWait time.Duration) (migration, error) {
	var m migration
	var err error
	if m.first, err = bs.FirstIndex(); err == nil {
		m.last, err = bs.LastIndex()
	}
	if err != nil {
		return m, fmt.Errorf("cluster: migrate to the WAL: read %s: %w", src, err)
	}
	if err := skipToTail(c, bs, &m); err != nil {
		return m, err
	}
	if err := os.RemoveAll(tmp); err != nil {
		return m, fmt.Errorf("cluster: migrate to the WAL: remove a stale %s: %w", tmp, err)
	}
	w, err := openWALStore(c, tmp, lockWait)
	if err != nil {
		return m, err
	}
	err = copyStores(w, logsFrom{LogStore: bs, first: m.first}, bs, m.last)
	if cerr := w.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("cluster: migrate to the WAL: close %s: %w", tmp, cerr)
	}
	if err != nil {
		return m, err
	}
	if err := syncTree(tmp); err != nil {
		return m, err
	}
	return m, nil
}

// copyStores copies the log (if any) and every stable key raft and
// kms-ha write.
func copyStores(w *wal.WAL, logs raft.LogStore, bs *raftboltdb.BoltStore, last uint64) error {
	ctx := context.Background()
	// CopyLogs reads from FirstIndex to LastIndex: on an empty log that
	// is entry 0, which does not exist.
	if last > 0 {
		if err := migrate.CopyLogs(ctx, w, logs, 1<<20, nil); err != nil {
			return fmt.Errorf("cluster: migrate to the WAL: copy the log: %w", err)
		}
	}
	// raft-boltdb and raft-wal encode SetUint64 differently: int keys go
	// through GetUint64/SetUint64, byte keys through Get/Set.
	err := migrate.CopyStable(ctx, w, boltStable{bs},
		[][]byte{keyNodeID, keyJoinPeers}, [][]byte{keyJoined}, nil)
	if err != nil {
		return fmt.Errorf("cluster: migrate to the WAL: copy the term, vote and marks: %w", err)
	}
	return nil
}

// skipToTail moves m.first past the last gap in bs's log. raft-boltdb is
// not a monotonic store: a follower that installs a snapshot far ahead of
// its log keeps its old entries (raft compacts only beyond TrailingLogs)
// and appends after the snapshot, leaving a gap that raft-wal cannot hold.
// The entries before it are covered by that snapshot, and raft never reads
// them; a data dir with a gap and no snapshot covering it is refused here,
// before anything moves.
func skipToTail(c *Config, bs raft.LogStore, m *migration) error {
	if m.last == 0 {
		return nil
	}
	tail := m.first
	for i := m.last; i > m.first; i-- {
		var l raft.Log
		err := bs.GetLog(i-1, &l)
		if errors.Is(err, raft.ErrLogNotFound) {
			tail = i
			break
		}
		if err != nil {
			return fmt.Errorf("cluster: migrate to the WAL: read log entry %d: %w", i-1, err)
		}
	}
	if tail == m.first {
		return nil
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(c.DataDir, c.SnapshotRetain,
		newHCLogAdapter(c.Logger.With("component", "snapshots")))
	var list []*raft.SnapshotMeta
	if err == nil {
		list, err = snaps.List()
	}
	if err != nil {
		return fmt.Errorf("cluster: migrate to the WAL: list snapshots in %s: %w", c.DataDir, err)
	}
	if len(list) == 0 || list[0].Index < tail-1 {
		return fmt.Errorf("cluster: migrate to the WAL: the log in %s has a gap before entry %d that no snapshot covers; "+
			"move the data dir away and admit this node again with `kms-ha join`", c.DataDir, tail)
	}
	m.skipped, m.first = tail-m.first, tail
	return nil
}

// logsFrom is a log store read from first on.
type logsFrom struct {
	raft.LogStore
	first uint64
}

func (l logsFrom) FirstIndex() (uint64, error) { return l.first, nil }

// boltStable reads a missing key as raft-wal does (empty, 0) instead of
// raft-boltdb's ErrKeyNotFound, so that a key never written (no vote yet,
// not joined) copies as absent rather than failing the copy.
type boltStable struct{ raft.StableStore }

func (b boltStable) Get(k []byte) ([]byte, error) {
	v, err := b.StableStore.Get(k)
	if errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return nil, nil
	}
	return v, err
}

func (b boltStable) GetUint64(k []byte) (uint64, error) {
	v, err := b.StableStore.GetUint64(k)
	if errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return 0, nil
	}
	return v, err
}

// syncTree syncs every file in dir, then dir: raft-wal syncs what it
// counts on, but a migration must not depend on which of its files that
// covers.
func syncTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cluster: sync %s: %w", dir, err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if err := syncPath(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return syncDir(dir)
}
