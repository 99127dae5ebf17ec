package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"go.etcd.io/bbolt"
)

// The log stores a data dir may hold (Config.LogStore).
const (
	// LogStoreWAL is hashicorp/raft-wal, the log store Consul ships: an
	// append writes the entries to a preallocated segment file and syncs
	// that one file, where a bolt commit syncs twice (pages, then meta).
	LogStoreWAL = "wal"
	// LogStoreBolt is raft-boltdb (raft.db), the store of earlier
	// versions.
	LogStoreBolt = "bolt"
)

// The data dir's layout.
const (
	boltFileName = "raft.db"
	// preWALName is raft.db once its content has been copied into the WAL
	// (see migrateToWAL): no older kms-ha opens it under that name.
	preWALName = "raft.db.pre-wal"
	walDirName = "wal"
	walTmpName = "wal.tmp"
)

// ErrStoreConflict is returned when a data dir holds stores that cannot
// both be this node's history, or a store other than the configured one.
var ErrStoreConflict = errors.New("the data dir holds a raft log store other than the configured one")

// logStore is what raft needs of a node's durable store: the log, the
// term and vote (and our own marks, see datadir.go) in one place.
type logStore interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

// openLogStore opens the store c.LogStore names, migrating raft.db into a
// WAL first when needed. The data dir lock must be held.
func openLogStore(c *Config, lockWait time.Duration) (logStore, error) {
	dir := c.DataDir
	switch c.LogStore {
	case LogStoreBolt:
		if exists(filepath.Join(dir, walDirName)) {
			return nil, fmt.Errorf("cluster: %s holds a %s/ log store but cluster.log_store is %q: %w; "+
				"to switch a node's store back, remove the node from the cluster (`kms-ha remove`), move its data dir away "+
				"and admit it again with `kms-ha join`, or set cluster.log_store: wal", dir, walDirName, LogStoreBolt, ErrStoreConflict)
		}
		if exists(filepath.Join(dir, preWALName)) {
			// A move to the WAL stopped after renaming raft.db: opening
			// raft.db here would start an empty store beside the real one,
			// and a raft.db beside it now (an earlier kms-ha created it)
			// may not hold this node's latest state.
			fix := "set cluster.log_store: wal to finish the move"
			if exists(filepath.Join(dir, boltFileName)) {
				fix = "an earlier kms-ha probably ran in between; remove the node from the cluster, move the data dir " +
					"away and admit it again with `kms-ha join`"
			}
			return nil, fmt.Errorf("cluster: %s holds %s from an unfinished move to the WAL but cluster.log_store is %q: %w; %s",
				dir, preWALName, LogStoreBolt, ErrStoreConflict, fix)
		}
		return openBoltStore(filepath.Join(dir, boltFileName), lockWait)
	case LogStoreWAL, "":
		if err := prepareWAL(c, lockWait); err != nil {
			return nil, err
		}
		return openWALStore(c, filepath.Join(dir, walDirName), lockWait)
	default:
		return nil, fmt.Errorf("cluster: unknown log store %q (want %q or %q)", c.LogStore, LogStoreWAL, LogStoreBolt)
	}
}

// openBoltStore opens raft.db. NoSync stays false: a watermark must be on
// disk before a quorum counts it, or a power cut could roll a majority
// back.
func openBoltStore(path string, lockWait time.Duration) (*raftboltdb.BoltStore, error) {
	// bbolt trusts its file: check it first, so damage is an error that
	// says what to do rather than a SIGBUS or a panic (see boltcheck.go).
	err := checkBoltFile(path, filepath.Dir(path), lockWait)
	var bs *raftboltdb.BoltStore
	if err == nil {
		bs, err = raftboltdb.New(raftboltdb.Options{
			Path:        path,
			BoltOptions: boltOptions(lockWait),
		})
	}
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			// Only a kms-ha from before the data dir lock holds raft.db
			// without holding LOCK.
			return nil, lockedError(path)
		}
		return nil, fmt.Errorf("cluster: open %s: %w", path, err)
	}
	return bs, nil
}

// boltOptions open raft.db. NoFreelistSync leaves bbolt's list of free
// pages out of each commit (one page write less per entry, on the sign
// path); bbolt rebuilds it from the pages on open. What a commit makes
// durable is unchanged: the entry's pages, then the meta page, each
// followed by fdatasync. The map freelist keeps that rebuild and each
// allocation cheap.
func boltOptions(lockWait time.Duration) *bbolt.Options {
	return &bbolt.Options{Timeout: lockWait, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}
}

// openWALStore opens (or creates) the WAL in dir. Its meta file is bolt,
// opened by raft-wal without our checks: check it first, as raft.db.
func openWALStore(c *Config, dir string, lockWait time.Duration) (*wal.WAL, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: create %s: %w", dir, err)
	}
	path := filepath.Join(dir, metadb.FileName)
	if err := checkBoltFile(path, c.DataDir, lockWait); err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, lockedError(path)
		}
		return nil, fmt.Errorf("cluster: open %s: %w", path, err)
	}
	size := wal.DefaultSegmentSize
	if c.walSegmentSize > 0 {
		size = c.walSegmentSize
	}
	if err := repairSealedTail(c, dir, size); err != nil {
		return nil, err
	}
	// The meta store is ours to close when Open fails (raft-wal leaves it
	// open, and with it bbolt's lock, which a later open in this process
	// would wait on for ever); once open, the WAL's Close closes it.
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(dir, wal.WithMetaStore(meta), wal.WithSegmentSize(size),
		wal.WithLogger(newHCLogAdapter(c.Logger.With("component", "wal"))))
	if err != nil {
		meta.Close()
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("cluster: open the raft log in %s: %w (the log preallocates segment files of %d MiB: "+
				"free space on the data dir's disk, a few hundred MiB in all)", dir, err, size>>20)
		}
		return nil, fmt.Errorf("cluster: open the raft log in %s: %w", dir, err)
	}
	return w, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error { return syncPath(dir) }

// syncPath fsyncs a directory or a file (Linux syncs either through a
// read-only descriptor).
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cluster: sync %s: %w", path, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster: sync %s: %w", path, err)
	}
	return nil
}
