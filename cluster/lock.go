package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockFile guards a data dir as a whole. It is taken before any store is
// opened: raft-wal opens its bolt meta file with no timeout (a second
// process would hang on it), and a migration moves files that a second
// process must not be reading.
const lockFile = "LOCK"

// lockPoll is how often a held lock is tried again while waiting.
const lockPoll = 20 * time.Millisecond

// dirLock is an exclusive flock on <data_dir>/LOCK. The kernel drops it
// when the process dies, so a crash never leaves the dir locked.
type dirLock struct{ f *os.File }

// lockDataDir takes the data dir's lock, waiting up to wait for a running
// process to let go of it.
func lockDataDir(dir string, wait time.Duration) (*dirLock, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s: %w", path, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &dirLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("cluster: lock %s: %w", path, err)
		}
		if !time.Now().Before(deadline) {
			f.Close()
			return nil, lockedError(dir)
		}
		time.Sleep(min(lockPoll, time.Until(deadline)+time.Millisecond))
	}
}

// release drops the lock; closing the file is what releases a flock.
func (l *dirLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// lockedError says that another process holds path (the data dir, or one
// of its files for a kms-ha from before the data dir lock).
func lockedError(path string) error {
	return fmt.Errorf("cluster: open %s: locked by another process (is kms-ha already running with this --home?): %w",
		path, ErrLocked)
}
